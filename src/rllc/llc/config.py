"""The sampler configuration: one frozen dataclass of plain types, stored with every LLC result."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from rllc._errors import RllcError


def _setting_value(name: str, value: Any, default: float | str) -> float | str:
    """A kernel setting as its default's type: a string for word settings, a float for numbers."""
    if isinstance(default, str):
        if not isinstance(value, str):
            raise RllcError(f"sampler setting {name} must be a word (default {default!r}), got {value!r}")
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RllcError(f"sampler setting {name} must be a number (default {default!r}), got {value!r}") from None


@dataclass(frozen=True)
class SamplerConfig:
    """Sampler hyperparameters for one LLC estimate.

    Defaults are the paper's: every rLLC figure in Wang et al. (2024) uses the same sampler, released as
    ``figures/*/llc.yaml`` in github.com/timaeus-research/paper-rllcs-2024 (ε 0.001, nβ 30, γ 200, 4 chains,
    200 draws, no burn-in, 1 step between draws, batch 32, L_n(w*) from 16 batches, noise level 1).

    ``nbeta`` is the *product* nβ that multiplies the mean loss in the posterior exp(−nβ L_n(w)); it is not β.
    Watanabe's WBIC temperature is β = 1/log n, i.e. nβ = n / log n for a data set of n samples; the paper fixes
    nβ = 30 instead (an effective sample size), independent of how many tokens the data set holds.
    """

    epsilon: float = 1e-3  # ε, SGLD step size (noise variance per step)
    nbeta: float = 30.0  # nβ, inverse temperature × sample size (the product)
    gamma: float = 200.0  # γ, localisation strength
    chains: int = 4
    draws: int = 200  # recorded losses per chain
    burn_in: int = 0  # steps before the first draw
    steps_per_draw: int = 1
    batch_size: int = 32  # samples per chain per step; >= the data size means full batch
    init_batches: int = 16  # minibatches averaged for L_n(w*) (1 when full batch)
    seed: int = 0
    divergence_threshold: float = 1000.0  # a chain diverges once nβ(L − L*) > max(this, 2·d_moving) or non-finite
    # Paired differences: each draw's minibatch loss at w minus the loss at w* on the same minibatch. Same
    # expectation as subtracting L_n(w*), far less variance: minibatch noise cancels, and so does the error of the
    # 16-batch L_n(w*) that every chain shares. Costs one extra forward per draw, shared by all components of an
    # `estimate_llc_many` call; sweeps turn it on. False (default) is the paper's and devinterp's estimator.
    paired: bool = False
    # The kernel (`rllc.llc.kernels`): "sgld" (the paper's) or "rmsprop_sgld" (Hitchcock & Hoogland 2025), and its
    # own settings as (name, value) pairs — e.g. (("alpha", 0.99), ("eps", 0.1)) — completed from the kernel's
    # defaults, so the hash records every value the kernel used. A dict is accepted and stored sorted.
    sampler: str = "sgld"
    sampler_settings: tuple[tuple[str, float | str], ...] = ()

    def __post_init__(self) -> None:
        from rllc.llc.kernels import get_kernel

        kernel = get_kernel(self.sampler) if isinstance(self.sampler, str) else None
        if kernel is None:
            raise RllcError(f"sampler config: sampler must be a kernel name, got {self.sampler!r}")
        given = dict(self.sampler_settings.items() if isinstance(self.sampler_settings, dict)
                     else self.sampler_settings)
        unknown = set(given) - set(kernel.DEFAULTS)
        if unknown:
            known = ", ".join(sorted(kernel.DEFAULTS)) or "none"
            raise RllcError(f"sampler {self.sampler!r} has no setting(s) {sorted(unknown)}; its settings: {known}")
        merged = {k: _setting_value(k, given.get(k, v), v) for k, v in kernel.DEFAULTS.items()}
        try:
            kernel.hyper(1.0, 1.0, 1.0, merged)
        except ValueError as e:
            raise RllcError(f"sampler {self.sampler!r}: {e}") from None
        object.__setattr__(self, "sampler_settings", tuple(sorted(merged.items())))
        for f in ("epsilon", "nbeta", "gamma", "divergence_threshold"):  # 30 and 30.0 must hash alike
            v = getattr(self, f)
            if isinstance(v, int) and not isinstance(v, bool):
                object.__setattr__(self, f, float(v))
        for f in ("epsilon", "nbeta", "divergence_threshold"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and v > 0 and (math.isfinite(v) or f == "divergence_threshold")):
                raise RllcError(f"sampler config: {f} must be a positive finite number, got {v!r}")
        if not (isinstance(self.gamma, (int, float)) and 0 <= self.gamma < math.inf):
            raise RllcError(f"sampler config: gamma must be a finite number >= 0, got {self.gamma!r}")
        for f in ("chains", "draws", "steps_per_draw", "batch_size", "init_batches"):
            v = getattr(self, f)
            if not (isinstance(v, int) and v >= 1):
                raise RllcError(f"sampler config: {f} must be a positive integer, got {v!r}")
        if not (isinstance(self.burn_in, int) and self.burn_in >= 0):
            raise RllcError(f"sampler config: burn_in must be a non-negative integer, got {self.burn_in!r}")
        if not isinstance(self.seed, int):
            raise RllcError(f"sampler config: seed must be an integer, got {self.seed!r}")

    @property
    def total_steps(self) -> int:
        """SGLD steps per chain: burn-in, then one draw every ``steps_per_draw`` steps."""
        return self.burn_in + self.draws * self.steps_per_draw

    def is_draw(self, t: int) -> bool:
        """Whether SGLD step ``t`` (0-based) records a draw: after burn-in, every ``steps_per_draw`` steps."""
        return t >= self.burn_in and (t - self.burn_in) % self.steps_per_draw == 0

    def divergence_limit(self, d_moving: int) -> float:
        """The largest nβ(L − L(w*)) a chain moving ``d_moving`` coordinates may reach before it counts as diverged:
        max(``divergence_threshold``, 2·d_moving); a chain at equilibrium averages nβ(L − L(w*)) ≈ λ ≤ d_moving/2."""
        return max(self.divergence_threshold, 2.0 * d_moving)

    def diverged(self, loss: float, init_loss: float, limit: float) -> bool:
        """Whether a chain whose minibatch loss is ``loss`` has diverged: non-finite, or nβ(loss − L(w*)) > limit."""
        return not math.isfinite(loss) or self.nbeta * (loss - init_loss) > limit

    def settings(self) -> dict[str, float | str]:
        """The kernel's own settings, name → value (complete: defaults filled in)."""
        return dict(self.sampler_settings)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sampler_settings"] = self.settings()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SamplerConfig:
        d = dict(d)
        if isinstance(d.get("sampler_settings"), dict):
            d["sampler_settings"] = tuple(sorted(d["sampler_settings"].items()))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise RllcError(f"sampler config has unknown fields {sorted(unknown)}; was it written by a newer rllc?")
        return cls(**d)

    def replace(self, **changes: Any) -> SamplerConfig:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise RllcError(f"unknown sampler setting(s) {sorted(unknown)}; known: {sorted(known)}")
        if "sampler" in changes and "sampler_settings" not in changes and changes["sampler"] != self.sampler:
            changes["sampler_settings"] = ()  # another kernel: its own defaults
        return dataclasses.replace(self, **changes)

    def hash_dict(self) -> dict[str, Any]:
        """``to_dict()`` as hashed: the kernel fields are left out for plain SGLD, so configs (and sweeps) written
        before kernels existed keep their keys."""
        d = {k: (float(v) if isinstance(v, float) else v) for k, v in self.to_dict().items()}
        if d["sampler"] == "sgld" and not d["sampler_settings"]:
            del d["sampler"], d["sampler_settings"]
        return d

    def config_hash(self) -> str:
        """A stable 12-hex-digit key: sha256 of the sorted-key JSON of ``hash_dict()`` (floats as floats)."""
        d = self.hash_dict()
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]
