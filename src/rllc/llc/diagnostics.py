"""Chain diagnostics: split-R-hat and bulk effective sample size (Vehtari, Gelman, Simpson, Carpenter, Bürkner
2021, "Rank-normalization, folding, and localization: an improved R-hat"), the burn-in the traces suggest (MSER,
White 1997), late-trace drift and the bias of a chain too short to have settled, divergence — and the messages a
user acts on."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri


@dataclass(frozen=True, eq=False)
class Diagnostics:
    """What the chains say about their own reliability.

    Attributes:
        slopes: (C,) least-squares slope of each chain's loss trace over its last half, in loss per draw
            (NaN for a diverged chain).
        drift: nβ × mean slope × (draws/2): how far the λ̂ trace still moved over the last half, in λ units.
        rhat: split-R-hat of the loss traces over the surviving chains, rank-normalised, the larger of bulk and
            tail (folded) R-hat (Vehtari et al. 2021; NaN with fewer than 4 draws). Below 1.01 is their threshold.
        ess: bulk effective sample size of the draws of all surviving chains together (rank-normalised split
            chains, Geyer's initial monotone sequence; Vehtari et al. 2021).
        ess_per_chain: (C,) the same for each chain alone (NaN for a diverged chain).
        burn_in: the number of leading draws the traces suggest discarding (MSER on the across-chain mean
            trace, at most half the draws; White 1997).
        bias: nβ × (mean of all draws − mean of the second half), averaged over surviving chains: when the trace
            is still rising (``converged`` False) an estimate of how far λ̂ sits below the level the chains were
            reaching (positive: still falling, λ̂ above it); ``bias_se`` its standard error across chains.
        diverged: indices of chains that diverged (stopped early).
        diverged_at: the step at which each of those chains diverged.
        converged: False when the late-trace drift is significant across chains and larger than 5% of |λ̂|, when
            no chain survived, or with fewer than 4 draws per chain (nothing to judge convergence by).
        negative: True when the mean estimate is below zero (w* is not a local minimum of the sampled loss).
        messages: human-readable warnings, one per problem.
    """

    slopes: np.ndarray
    drift: float
    rhat: float
    ess: float
    ess_per_chain: np.ndarray
    burn_in: int
    bias: float
    bias_se: float
    diverged: tuple[int, ...]
    diverged_at: tuple[int, ...]
    converged: bool
    negative: bool
    messages: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "slopes": [_num(x) for x in self.slopes],
            "drift": _num(self.drift),
            "rhat": _num(self.rhat),
            "ess": _num(self.ess),
            "ess_per_chain": [_num(x) for x in self.ess_per_chain],
            "burn_in": int(self.burn_in),
            "bias": _num(self.bias),
            "bias_se": _num(self.bias_se),
            "diverged": list(self.diverged),
            "diverged_at": list(self.diverged_at),
            "converged": self.converged,
            "negative": self.negative,
            "messages": list(self.messages),
        }


def _num(x: float) -> float | None:
    """A JSON-safe float: NaN/inf become None."""
    x = float(x)
    return x if math.isfinite(x) else None


def late_slopes(trace: np.ndarray) -> np.ndarray:
    """Per-chain least-squares slope over the last half of ``trace`` (C, K), in units per draw; NaN rows stay NaN."""
    k = trace.shape[1]
    half = trace[:, k // 2 :]
    if half.shape[1] < 2:
        return np.zeros(trace.shape[0])
    x = np.arange(half.shape[1], dtype=float)
    x -= x.mean()
    return ((half - half.mean(axis=1, keepdims=True)) * x).sum(axis=1) / (x**2).sum()


def rhat(trace: np.ndarray) -> float:
    """Split-R-hat of ``trace`` (C, K) over chains without NaNs: max of rank-normalised bulk and folded-tail R-hat
    (Vehtari et al. 2021, eq. 4 on split chains). NaN with fewer than 4 draws or no spread."""
    ok = trace[np.isfinite(trace).all(axis=1)]
    if ok.shape[0] < 1 or ok.shape[1] < 4:
        return float("nan")
    split = _split(ok)
    bulk = _rhat_basic(_rank_normalise(split))
    tail = _rhat_basic(_rank_normalise(np.abs(split - np.median(split))))
    return float(np.nanmax([bulk, tail])) if np.isfinite([bulk, tail]).any() else float("nan")


def ess_bulk(trace: np.ndarray) -> float:
    """Bulk effective sample size of ``trace`` (C, K) over chains without NaNs (Vehtari et al. 2021: rank-
    normalised split chains, multi-chain autocorrelation, Geyer's initial monotone sequence). NaN if < 4 draws."""
    ok = trace[np.isfinite(trace).all(axis=1)]
    if ok.shape[0] < 1 or ok.shape[1] < 4:
        return float("nan")
    return _ess(_rank_normalise(_split(ok)))


def ess_per_chain(trace: np.ndarray) -> np.ndarray:
    """(C,) bulk ESS of each chain alone (NaN for a chain with NaNs)."""
    return np.array([ess_bulk(row[None]) if np.isfinite(row).all() else np.nan for row in trace])


def _split(x: np.ndarray) -> np.ndarray:
    """(C, K) → (2C, K//2): each chain's first and second half (the middle draw dropped when K is odd)."""
    h = x.shape[1] // 2
    return np.concatenate([x[:, :h], x[:, x.shape[1] - h:]], axis=0)


def _rank_normalise(x: np.ndarray) -> np.ndarray:
    """Normal scores of the pooled ranks (average ranks for ties): Φ⁻¹((r − 3/8)/(S + 1/4))."""
    from scipy.stats import rankdata

    r = rankdata(x, method="average").reshape(x.shape)
    return ndtri((r - 0.375) / (x.size + 0.25))


def _rhat_basic(x: np.ndarray) -> float:
    m, n = x.shape
    if m < 2:
        return float("nan")
    w = x.var(axis=1, ddof=1).mean()
    b = n * x.mean(axis=1).var(ddof=1)
    if not w > 0:
        return float("nan")
    return float(math.sqrt(((n - 1) / n * w + b / n) / w))


def _ess(x: np.ndarray) -> float:
    """ESS of chains x (M, N) (Vehtari et al. 2021 eq. 10–11, Geyer's initial monotone positive sequence)."""
    m, n = x.shape
    centred = x - x.mean(axis=1, keepdims=True)
    f = np.fft.rfft(centred, n=2 * n, axis=1)
    acov = np.fft.irfft(f * np.conj(f), axis=1)[:, :n] / n  # (M, N) biased autocovariance per chain
    chain_var = acov[:, 0] * n / (n - 1.0)
    w = chain_var.mean()
    var_plus = w * (n - 1.0) / n + (x.mean(axis=1).var(ddof=1) if m > 1 else 0.0)
    if not var_plus > 0:
        return float("nan")
    rho = 1.0 - (w - acov.mean(axis=0)) / var_plus  # (N,) ρ̂_t, ρ̂_0 = 1
    rho[0] = 1.0
    # Geyer: sum pairs P_k = ρ_2k + ρ_2k+1 while positive, made monotone non-increasing
    total, prev = 0.0, np.inf
    for k in range(0, n - 1, 2):
        p = rho[k] + rho[k + 1]
        if p <= 0:
            break
        p = min(p, prev)
        total += p
        prev = p
    tau = -1.0 + 2.0 * total
    tau = max(tau, 1.0 / math.log10(m * n)) if m * n > 1 else tau  # the cap Stan uses for antithetic chains
    return float(m * n / tau)


def mser_burn_in(trace: np.ndarray) -> int:
    """MSER burn-in (White 1997) of the across-chain mean of ``trace`` (C, K): the d ≤ K/2 minimising
    Σ_{i≥d} (x_i − mean_{≥d})² / (K − d)². 0 when the trace is flat from the start."""
    ok = trace[np.isfinite(trace).all(axis=1)]
    if ok.shape[0] == 0 or ok.shape[1] < 4:
        return 0
    x = ok.mean(axis=0)
    k = len(x)
    scores = [((x[d:] - x[d:].mean()) ** 2).sum() / (k - d) ** 2 for d in range(k // 2 + 1)]
    return int(np.argmin(scores))


# Split-R-hat halves each chain and needs two draws per half to form a within-half variance.
_MIN_DRAWS = 4


def diagnose(
    trace: np.ndarray, per_chain: np.ndarray, diverged_at: np.ndarray, nbeta: float, mean: float
) -> Diagnostics:
    """Diagnostics for one estimate.

    Args:
        trace: (C, K) draw losses (paired estimates: minus the loss at w* on the same minibatch), NaN after a
            chain diverged.
        per_chain: (C,) λ̂ per chain, NaN for diverged chains.
        diverged_at: (C,) step at which each chain diverged, −1 for chains that did not.
        nbeta: nβ.
        mean: λ̂ averaged over surviving chains.
    """
    dead = np.flatnonzero(diverged_at >= 0)
    alive = diverged_at < 0
    slopes = late_slopes(np.where(alive[:, None], trace, np.nan))
    k = trace.shape[1]
    live_slopes = slopes[alive]
    messages: list[str] = []
    drift = float(nbeta * live_slopes.mean() * (k / 2)) if live_slopes.size else float("nan")
    converged = True
    if live_slopes.size >= 2:
        se = nbeta * live_slopes.std(ddof=1) / math.sqrt(live_slopes.size) * (k / 2)
        if abs(drift) > 3 * se and abs(drift) > 0.05 * max(abs(mean), 1e-12):
            converged = False
            messages.append(f"λ̂ trace still drifts by {drift:+.3g} over the last half of the draws; "
                            "use more draws, a burn-in, or a larger ε")
    live_trace = np.where(alive[:, None], trace, np.nan)
    r = rhat(live_trace)
    ess = ess_bulk(live_trace)
    per = ess_per_chain(live_trace)
    burn = mser_burn_in(live_trace)
    if not alive.any():
        converged = False  # no chain left: nothing converged (R-hat is NaN)
    elif k < _MIN_DRAWS:  # split-R-hat, ESS and the drift test are undefined: convergence cannot be judged
        converged = False
        messages.append(f"only {k} draw{'s' if k != 1 else ''} per chain: too few to judge convergence (split-R-hat "
                        f"and ESS need at least {_MIN_DRAWS}); use more draws")
    bias = bias_se = float("nan")
    if live_slopes.size and k >= 4:
        live = trace[alive]
        d = nbeta * (live.mean(axis=1) - live[:, k // 2:].mean(axis=1))  # (C_live,)
        bias = float(d.mean())
        bias_se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size >= 2 else float("nan")
        if not converged:
            way = ("low", "higher") if bias <= 0 else ("high", "lower")
            messages.append(f"λ̂ is probably {way[0]} by about {abs(bias):.3g} (± {bias_se:.2g}): the second half of the "
                            f"draws averages that much {way[1]}; the traces suggest a burn-in of {burn} draws")
    if np.isfinite(r) and r > 1.01 and converged:
        messages.append(f"split-R-hat {r:.3f} > 1.01: the chains disagree; run longer or more chains")
    if dead.size:
        messages.append(f"{dead.size} of {trace.shape[0]} chains diverged (chains {dead.tolist()}); "
                        "use a smaller epsilon or a larger gamma")
    negative = bool(np.isfinite(mean) and mean < 0)
    if negative:
        messages.append(f"λ̂ = {mean:.4g} is negative: the chains found lower loss than at w* (w* is not a local "
                        "minimum); train longer, or use a larger gamma or a smaller nbeta")
    elif np.any(per_chain[alive] < 0):
        messages.append(f"{int(np.sum(per_chain[alive] < 0))} chain(s) gave a negative λ̂")
    return Diagnostics(
        slopes=slopes, drift=drift, rhat=r, ess=ess, ess_per_chain=per, burn_in=burn, bias=bias, bias_se=bias_se,
        diverged=tuple(int(i) for i in dead),
        diverged_at=tuple(int(diverged_at[i]) for i in dead), converged=converged, negative=negative,
        messages=tuple(messages),
    )
