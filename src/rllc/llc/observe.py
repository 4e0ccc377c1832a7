"""Observables recorded at every draw, streamed into bounded accumulators.

An observable is a per-sample (for language models per-token) loss ``fn(model, batch) -> (B, ...)`` evaluated at
the chain's current weights on fixed *probe* data sets (and, if asked, on the draw's own minibatch). What the
estimators of `response.py` need is moments under the local posterior, per chain: the mean of each observed loss,
its variance, and its covariance with φ, the chain's loss shift — per-token LLC contributions are nβ(E[ℓ_i] −
ℓ_i(w*)), susceptibilities are covariances of φ with ℓ_i − L, and Bayesian influence functions (Kreer et al. 2025)
are covariances between per-sample losses (the ``cross`` moments). So the driver keeps Welford-style running sums,
not the draws: memory is O(chains × observed values) (O(values²) for a cross-moment), whatever the number of draws.

φ is the chain's *paired* loss shift L_B(w) − L_B(w*) on the draw's own minibatch B when the sampler pairs
(``paired=True``), L(w) − L(w*) when it runs full batch, and L_B(w) − L_n(w*) otherwise: its chain mean times nβ
is the chain's λ̂.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rllc._errors import RllcError


@dataclass(frozen=True)
class Observe:
    """What to record at every draw (the ``observe=`` argument of ``estimate_llc``).

    Attributes:
        per_sample_loss: ``fn(model, batch) -> tensor (B, ...)`` of per-sample (per-token) losses; None (default)
            is the per-token next-token loss ``rllc.llc.losses.per_token_loss`` (B, T−1).
        probes: name → a fixed data set (token tensor (n_seq, n_ctx), or any form ``estimate_llc`` accepts as
            ``data``) whose per-sample losses are evaluated at every draw, batched over chains, without gradients.
        minibatch: also record the mean per-sample loss on the draw's own minibatch (running mean and variance
            per chain; minibatch samples differ per draw, so nothing per sample is kept for them).
        cross: names of probes whose per-sample cross-moments (N × N, N = that probe's observed values) are
            streamed too — the Bayesian influence function needs them. O(N²) memory each.
        cross_level: "token" (N = every per-sample value, e.g. n_seq·(T−1) tokens) or "sequence" (N = n_seq, the
            mean over each sample's values: devinterp's ``correlation_method="sequence"``).
        eval_data: an alias kept for older code: the probe named "eval".
        batched: evaluate the probes for every component × chain in one forward (default); False evaluates one
            weight set at a time (the reference, for checks — same moments up to float rounding).
    """

    per_sample_loss: Callable[[nn.Module, Any], torch.Tensor] | None = None
    probes: Mapping[str, Any] = field(default_factory=dict)
    minibatch: bool = False
    cross: Sequence[str] = ()
    cross_level: str = "token"
    eval_data: Any = None
    batched: bool = True

    def resolved_probes(self) -> dict[str, Any]:
        """The probes by name (``eval_data`` as "eval"), checked: one-line errors for bad names and options."""
        if not isinstance(self.probes, Mapping):
            raise RllcError(f"observe probes must be a mapping name -> data, got {type(self.probes).__name__}")
        probes = dict(self.probes)
        if self.eval_data is not None:
            if "eval" in probes:
                raise RllcError("observe: eval_data is the probe named 'eval'; pass one of them, not both")
            probes["eval"] = self.eval_data
        for name in probes:
            if not isinstance(name, str) or not name:
                raise RllcError(f"observe probe names must be non-empty strings, got {name!r}")
        cross = [self.cross] if isinstance(self.cross, str) else list(self.cross)
        unknown = [c for c in cross if c not in probes]
        if unknown:
            raise RllcError(f"observe cross names {unknown} are not probes; probes: {sorted(probes) or 'none'}")
        if self.cross_level not in ("token", "sequence"):
            raise RllcError(f"observe cross_level must be 'token' or 'sequence', got {self.cross_level!r}")
        if self.per_sample_loss is not None and not callable(self.per_sample_loss):
            raise RllcError("observe per_sample_loss must be callable as fn(model, batch) -> (B, ...) losses")
        return probes

    def cross_names(self) -> list[str]:
        return [self.cross] if isinstance(self.cross, str) else list(self.cross)


class Moments:
    """Running mean, variance and covariance with a scalar, over draws, for C chains × N values (float64).

    ``update(x (C, N), y (C,))`` adds one draw; memory is 3·C·N + 2·C numbers whatever the number of draws. A chain
    whose values turn NaN (it diverged) keeps NaN moments.
    """

    def __init__(self, chains: int, n: int) -> None:
        self.count = 0
        self.mean = np.zeros((chains, n))
        self.m2 = np.zeros((chains, n))  # Σ (x − mean)²
        self.cxy = np.zeros((chains, n))  # Σ (x − mean_x)(y − mean_y)
        self.mean_y = np.zeros(chains)
        self.m2_y = np.zeros(chains)

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        self.count += 1
        k = self.count
        dx = x - self.mean
        dy = y - self.mean_y
        self.mean += dx / k
        self.mean_y += dy / k
        self.m2 += dx * (x - self.mean)
        self.m2_y += dy * (y - self.mean_y)
        self.cxy += dx * (y - self.mean_y)[:, None]

    @property
    def var(self) -> np.ndarray:
        """(C, N) sample variance (ddof 1) over draws."""
        return self.m2 / max(self.count - 1, 1)

    @property
    def var_y(self) -> np.ndarray:
        """(C,) sample variance (ddof 1) of the scalar over draws."""
        return self.m2_y / max(self.count - 1, 1)

    @property
    def cov_with_loss(self) -> np.ndarray:
        """(C, N) sample covariance (ddof 1) of each value with the chain's scalar (φ)."""
        return self.cxy / max(self.count - 1, 1)

    def nbytes(self) -> int:
        return self.mean.nbytes + self.m2.nbytes + self.cxy.nbytes + self.mean_y.nbytes + self.m2_y.nbytes

    @classmethod
    def join(cls, parts: Sequence["Moments"]) -> "Moments":
        """The moments of disjoint groups of chains over the same draws, as one accumulator (chains in order)."""
        if len({p.count for p in parts}) != 1:
            raise ValueError("Moments.join: the parts must have recorded the same number of draws")
        out = cls(0, parts[0].mean.shape[1])
        out.count = parts[0].count
        for a in ("mean", "m2", "cxy", "mean_y", "m2_y"):
            setattr(out, a, np.concatenate([getattr(p, a) for p in parts]))
        return out


class CrossMoments:
    """The running N × N co-moment of values pooled over every (chain, draw) observation (float64).

    ``update(x (C, N))`` adds one draw of every chain whose row is finite (a diverged chain stops contributing):
    Chan et al.'s pairwise update of the pooled mean and Σ (x − mean)(x − mean)ᵀ, a rank-C product per draw.
    Memory is N² + N numbers whatever the number of draws; ``covariance`` is devinterp 2.0.1's ``bif`` "stack"
    pooling (chains × draws as one sample, ddof 1).
    """

    def __init__(self, n: int) -> None:
        self.count = 0
        self.mean = np.zeros(n)
        self.m2 = np.zeros((n, n))

    def update(self, x: np.ndarray) -> None:
        x = x[np.isfinite(x).all(axis=1)]
        m = len(x)
        if m == 0:
            return
        b = x.mean(axis=0)
        xc = x - b
        n_new = self.count + m
        delta = b - self.mean
        self.m2 += xc.T @ xc
        self.m2 += np.outer(delta, delta) * (self.count * m / n_new)
        self.mean += delta * (m / n_new)
        self.count = n_new

    @property
    def covariance(self) -> np.ndarray:
        """(N, N) pooled sample covariance (ddof 1)."""
        return self.m2 / max(self.count - 1, 1)

    def nbytes(self) -> int:
        return self.mean.nbytes + self.m2.nbytes

    @classmethod
    def pool(cls, parts: Sequence["CrossMoments"]) -> "CrossMoments":
        """The co-moment of the union of the parts' observations (Chan et al.'s pairwise merge)."""
        out = cls(parts[0].mean.size)
        for p in parts:
            n_new = out.count + p.count
            if p.count == 0:
                continue
            delta = p.mean - out.mean
            out.m2 += p.m2 + np.outer(delta, delta) * (out.count * p.count / n_new)
            out.mean += delta * (p.count / n_new)
            out.count = n_new
        return out


@dataclass(frozen=True, eq=False)
class ProbeMoments:
    """Moments of one probe's per-sample losses under one component's local posterior.

    Attributes:
        shape: the per-sample loss's shape on the whole probe, e.g. (n_seq, T−1) for per-token losses; the
            arrays below hold it flattened (N = prod(shape) values).
        mean, var, cov_phi: (C, N) per chain over draws: mean, variance (ddof 1), covariance with φ (ddof 1).
        at_anchor: (N,) the values at w*.
        cross: (N_x, N_x) pooled covariance over chains × draws (ddof 1) of the values (``cross_level="token"``:
            N_x = N) or of the per-sample means (``"sequence"``: N_x = shape[0]); None unless asked (``cross``).
        cross_count: observations pooled into ``cross`` (chains × draws that stayed finite).
        cross_level: "token" or "sequence".
    """

    shape: tuple[int, ...]
    mean: np.ndarray
    var: np.ndarray
    cov_phi: np.ndarray
    at_anchor: np.ndarray
    cross: np.ndarray | None = None
    cross_count: int = 0
    cross_level: str = "token"


@dataclass(frozen=True, eq=False)
class Observed:
    """What one component's chains recorded (``LLCResult.observed``).

    Attributes:
        draws: draws accumulated per chain.
        phi_mean, phi_var: (C,) mean and variance (ddof 1) over draws of φ, the chain's loss shift (module
            docstring); NaN for a diverged chain. nβ · phi_mean is the chain's λ̂.
        paired: whether φ is paired (L_B(w) − L_B(w*)) or full batch, i.e. free of the noise of L_n(w*).
        full_batch: whether φ is free of minibatch noise (the sampler ran full batch).
        probes: name → ``ProbeMoments``.
        minibatch_mean, minibatch_var: (C,) running mean and variance over draws of the mean per-sample loss on
            the draw's own minibatch, or None.
    """

    draws: int
    phi_mean: np.ndarray
    phi_var: np.ndarray
    paired: bool
    full_batch: bool
    probes: dict[str, ProbeMoments]
    minibatch_mean: np.ndarray | None = None
    minibatch_var: np.ndarray | None = None

    def probe(self, name: str) -> ProbeMoments:
        """The moments of probe ``name``; a one-line error naming the recorded probes otherwise."""
        if name not in self.probes:
            raise RllcError(f"probe {name!r} was not observed; observed probes: {sorted(self.probes) or 'none'}")
        return self.probes[name]

    # Older names (one probe named "eval"): kept so code written against the first observables API still reads.
    @property
    def eval_mean(self) -> np.ndarray | None:
        return self.probes["eval"].mean if "eval" in self.probes else None

    @property
    def eval_var(self) -> np.ndarray | None:
        return self.probes["eval"].var if "eval" in self.probes else None

    @property
    def eval_cov(self) -> np.ndarray | None:
        return self.probes["eval"].cov_phi if "eval" in self.probes else None

    @property
    def eval_at_anchor(self) -> np.ndarray | None:
        return self.probes["eval"].at_anchor if "eval" in self.probes else None
