"""Per-token structure from the chains of an LLC estimate: ``susceptibilities`` and ``bif`` (Bayesian influence).

Both run the one sampler (``estimate_llc_many`` with ``observe=``): the susceptibilities, per-token LLC
contributions and influence matrices come from the same draws as the component's λ̂, never a second pass. The
formulas and their sign and scale conventions are in `response.py`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rllc._errors import RllcError
from rllc.llc import response
from rllc.llc.estimator import LLCResult, _describe, estimate_llc, estimate_llc_many
from rllc.llc.observe import Observe


def _component_name(component: Any) -> str:
    return _describe(component) or "full"


def _tokens_of(data: Any) -> np.ndarray | None:
    t = data[0] if isinstance(data, (tuple, list)) and data and isinstance(data[0], torch.Tensor) else data
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else None


@dataclass(frozen=True, eq=False)
class SusceptibilityResult:
    """Susceptibilities and per-token LLC contributions of components to probe data sets, from one run's chains.

    Keys: ``components`` (canonical names; "full" for the whole model) and ``probes`` (their names).

    Attributes:
        per_token[c][p]: (n_seq, T−1) χ_i (``response.susceptibility``); mean[c][p] its mean over tokens,
            se[c][p] the standard error of that mean over chains.
        standardized[c][p]: (n_seq, T−1) r_i = −Corr(φ, ℓ_i) (``response.standardized_susceptibility``): χ_i's
            token-dependent part without the token's own posterior spread, the score that ranks tokens.
        contributions[c][p]: (n_seq, T−1) nβ(E[ℓ_i] − ℓ_i(w*)); its mean is the data-refined λ̂ on probe p.
        tokens[p]: (n_seq, n_ctx) the probe's tokens (None for non-token data).
        llc[c]: the component's ``LLCResult`` (λ̂ on the sampling data, same chains).
        sampling: the probe used as L (None: φ itself); reference: "component" or "full" (see response.py).
    """

    components: list[str]
    probes: list[str]
    per_token: dict[str, dict[str, np.ndarray]]
    mean: dict[str, dict[str, float]]
    se: dict[str, dict[str, float]]
    contributions: dict[str, dict[str, np.ndarray]]
    tokens: dict[str, np.ndarray | None]
    llc: dict[str, LLCResult]
    sampling: str | None = None
    reference: str = "component"
    per_token_se: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    standardized: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (no per-token arrays; those are ``arrays()``)."""
        from rllc.llc.diagnostics import _num

        return {
            "components": self.components, "probes": self.probes, "sampling": self.sampling,
            "reference": self.reference,
            "mean": {c: {p: _num(v) for p, v in d.items()} for c, d in self.mean.items()},
            "se": {c: {p: _num(v) for p, v in d.items()} for c, d in self.se.items()},
            "contribution_mean": {c: {p: _num(float(np.mean(v))) for p, v in d.items()}
                                  for c, d in self.contributions.items()},
            "llc": {c: {"mean": _num(r.mean), "std": _num(r.std), "valid": r.valid} for c, r in self.llc.items()},
            "config": next(iter(self.llc.values())).config.to_dict() if self.llc else None,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """Per-token arrays by flat name, for safetensors: "susceptibility/<component>/<probe>",
        "susceptibility_se/…", "susceptibility_std/…" (standardised), "contribution/…" and "tokens/<probe>"."""
        out: dict[str, np.ndarray] = {}
        for c in self.components:
            for p in self.probes:
                out[f"susceptibility/{c}/{p}"] = np.ascontiguousarray(self.per_token[c][p])
                out[f"contribution/{c}/{p}"] = np.ascontiguousarray(self.contributions[c][p])
                if c in self.per_token_se:
                    out[f"susceptibility_se/{c}/{p}"] = np.ascontiguousarray(self.per_token_se[c][p])
                if c in self.standardized:
                    out[f"susceptibility_std/{c}/{p}"] = np.ascontiguousarray(self.standardized[c][p])
        for p, t in self.tokens.items():
            if t is not None:
                out[f"tokens/{p}"] = np.ascontiguousarray(t)
        return out


def _check_probes(probes: Any) -> dict[str, Any]:
    if not isinstance(probes, Mapping) or not probes:
        raise RllcError("probes must be a non-empty mapping name -> data, e.g. {'code': tokens (n_seq, n_ctx)}")
    return dict(probes)


def susceptibilities(model: nn.Module, data: Any, components: Any = None, *, probes: Mapping[str, Any],
                     sampling: str | None = None, reference: str = "component", paired: bool = True,
                     **sampler: Any) -> SusceptibilityResult:
    """Per-token susceptibilities and LLC contributions of components to probe data sets, with each component's
    λ̂ from the same chains.

    Args:
        model: the model at w* (any model ``estimate_llc`` takes).
        data: the sampling data (the posterior's L_n), as for ``estimate_llc``.
        components: one component (None: the whole model; "1:6"; a union) or a list of them (e.g.
            ``rllc.heads(model.cfg)``).
        probes: name → fixed data set (token tensor (n_seq, n_ctx), or any data form).
        sampling: the name of one of ``probes`` holding a sample of the sampling distribution, used as L in
            χ_i = −Cov(φ, ℓ_i − L); None: L = φ + const (``rllc.llc.response``).
        reference: "component" (centre on each component's own posterior: χ = −Cov) or "full" (devinterp 2.0.1's
            centring on the full model's posterior means; the full model is then sampled too, same call).
        paired: paired differences for φ (default True, unlike the paper's estimator: far less minibatch noise
            in φ; False is the paper's λ̂).
        **sampler: ``estimate_llc`` keywords (config, epsilon, nbeta, gamma, chains, draws, batch_size, seed,
            loss_fn, batched, device, progress, per_sample_loss).

    Returns:
        A ``SusceptibilityResult``.
    """
    probes = _check_probes(probes)
    if sampling is not None and sampling not in probes:
        raise RllcError(f"sampling probe {sampling!r} is not one of the probes {sorted(probes)}")
    if reference not in ("component", "full"):
        raise RllcError(f"reference must be 'component' or 'full', got {reference!r}")
    comps = list(components) if isinstance(components, (list, tuple)) else [components]
    if not comps:
        raise RllcError("components is empty; pass a component, a list of them, or None for the whole model")
    names = [_component_name(c) for c in comps]
    run = list(comps)
    if reference == "full" and "full" not in names:
        run.append(None)
    per_sample_loss = sampler.pop("per_sample_loss", None)
    obs = Observe(per_sample_loss=per_sample_loss, probes=probes)
    results = estimate_llc_many(model, data, run, observe=obs, paired=paired, **sampler)
    by_name = {_component_name(c): r for c, r in zip(run, results)}
    ref = by_name["full"].observed if reference == "full" else None
    nbeta = results[0].config.nbeta
    per_token, mean, se, contrib, pt_se, std = {}, {}, {}, {}, {}, {}
    for name in names:
        ob = by_name[name].observed
        per_token[name], mean[name], se[name], contrib[name], pt_se[name], std[name] = {}, {}, {}, {}, {}, {}
        for p in probes:
            chains = response.susceptibility_chains(ob, p, sampling=sampling, reference=ref)
            per_token[name][p] = chains.mean(axis=0)
            pt_se[name][p] = response.standard_error(chains)
            mean[name][p] = float(per_token[name][p].mean())
            se[name][p] = response.standard_error(chains.reshape(len(chains), -1).mean(axis=1))
            contrib[name][p] = response.token_contributions(ob, p, nbeta)
            std[name][p] = response.standardized_susceptibility(ob, p)
    return SusceptibilityResult(components=names, probes=list(probes), per_token=per_token, mean=mean, se=se,
                                contributions=contrib, tokens={p: _tokens_of(d) for p, d in probes.items()},
                                llc={n: by_name[n] for n in names}, sampling=sampling, reference=reference,
                                per_token_se=pt_se, standardized=std)


@dataclass(frozen=True, eq=False)
class BIFResult:
    """Bayesian influence between the samples (tokens) of one probe under a component's local posterior.

    Attributes:
        covariance, correlation: (N, N) Cov(ℓ_i, ℓ_j) (chains × draws stacked, ddof 1) and its correlation;
            N = n_seq·(T−1) tokens (``level="token"``, row-major over ``shape``) or n_seq sequences.
        shape: the per-sample loss shape (n_seq, T−1); level: "token" or "sequence".
        tokens: (n_seq, n_ctx) the probe's tokens (None for non-token data).
        llc: the component's ``LLCResult`` from the same chains.
    """

    covariance: np.ndarray
    correlation: np.ndarray
    shape: tuple[int, ...]
    level: str
    tokens: np.ndarray | None
    llc: LLCResult

    def index(self, query: int | tuple[int, ...]) -> int:
        """A flat index of the matrix from an int or a (sequence, position) pair (token level)."""
        n = len(self.correlation)
        if isinstance(query, tuple):
            dims = self.shape if self.level == "token" else self.shape[:1]
            try:
                return int(np.ravel_multi_index(query, dims))
            except ValueError:
                raise RllcError(f"query {query} is outside the probe's shape {dims}") from None
        if not 0 <= int(query) < n:
            raise RllcError(f"query index {query} is outside 0..{n - 1}")
        return int(query)

    def position(self, index: int) -> tuple[int, ...]:
        """(sequence, position) of a flat token index ((sequence,) at sequence level)."""
        return tuple(int(i) for i in np.unravel_index(index, self.shape if self.level == "token" else self.shape[:1]))

    def top(self, query: int | tuple[int, ...], k: int = 10, kind: str = "correlation") -> list[tuple[int, float]]:
        """The k strongest influencers of ``query`` (largest positive entry of its row, the query itself left out):
        [(flat index, value)], strongest first. ``kind``: "correlation" or "covariance"."""
        i = self.index(query)
        row = (self.correlation if kind == "correlation" else self.covariance)[i].copy()
        row[i] = np.nan
        order = [j for j in np.argsort(-np.nan_to_num(row, nan=-np.inf)) if np.isfinite(row[j])]
        return [(int(j), float(row[j])) for j in order[:k]]


def bif(model: nn.Module, data: Any, probe: Any, component: Any = None, *, level: str = "token",
        **sampler: Any) -> BIFResult:
    """The Bayesian influence matrix between the samples (tokens) of ``probe`` under the local posterior of
    ``component``, streamed: memory O(N²), no trace of the draws kept.

    Args:
        model, data: as for ``estimate_llc`` (data is the sampling data of the posterior).
        probe: the fixed data set whose samples influence each other (token tensor (n_seq, n_ctx) or any data).
        component: what moves (None: the whole model).
        level: "token" (N = n_seq·(T−1)) or "sequence" (N = n_seq, the mean loss of each sequence).
        **sampler: ``estimate_llc`` keywords (and ``per_sample_loss``).

    Returns:
        A ``BIFResult``.
    """
    if level not in ("token", "sequence"):
        raise RllcError(f"level must be 'token' or 'sequence', got {level!r}")
    obs = Observe(per_sample_loss=sampler.pop("per_sample_loss", None), probes={"probe": probe}, cross=["probe"],
                  cross_level=level)
    res = estimate_llc(model, data, component=component, observe=obs, **sampler)
    pm = res.observed.probe("probe")
    return BIFResult(covariance=response.influence(res.observed, "probe", "covariance"),
                     correlation=response.influence(res.observed, "probe", "correlation"), shape=pm.shape,
                     level=level, tokens=_tokens_of(probe), llc=res)
