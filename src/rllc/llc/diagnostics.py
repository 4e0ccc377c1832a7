"""Chain diagnostics: late-trace slope, R-hat, divergence — and the messages a user acts on."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Diagnostics:
    """What the chains say about their own reliability.

    Attributes:
        slopes: (C,) least-squares slope of each chain's loss trace over its last half, in loss per draw
            (NaN for a diverged chain).
        drift: nβ × mean slope × (draws/2): how far the λ̂ trace still moved over the last half, in λ units.
        rhat: Gelman–Rubin R-hat of the loss traces across the surviving chains (NaN with fewer than 2).
        diverged: indices of chains that diverged (stopped early).
        diverged_at: the step at which each of those chains diverged.
        converged: False when the late-trace drift is significant across chains and larger than 5% of |λ̂|.
        negative: True when the mean estimate is below zero (w* is not a local minimum of the sampled loss).
        messages: human-readable warnings, one per problem.
    """

    slopes: np.ndarray
    drift: float
    rhat: float
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
    """Gelman–Rubin potential scale reduction of ``trace`` (C, K) over chains without NaNs (NaN if < 2 chains)."""
    ok = trace[np.isfinite(trace).all(axis=1)]
    c, k = ok.shape
    if c < 2 or k < 2:
        return float("nan")
    within = ok.var(axis=1, ddof=1).mean()
    between = k * ok.mean(axis=1).var(ddof=1)
    if within <= 0:
        return float("nan")
    pooled = (k - 1) / k * within + between / k
    return float(math.sqrt(pooled / within))


def diagnose(
    trace: np.ndarray, per_chain: np.ndarray, diverged_at: np.ndarray, nbeta: float, mean: float
) -> Diagnostics:
    """Diagnostics for one estimate.

    Args:
        trace: (C, K) draw losses, NaN after a chain diverged.
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
    r = rhat(np.where(alive[:, None], trace, np.nan))
    if not alive.any():
        converged = False  # no chain left: nothing converged (R-hat is NaN)
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
        slopes=slopes, drift=drift, rhat=r, diverged=tuple(int(i) for i in dead),
        diverged_at=tuple(int(diverged_at[i]) for i in dead), converged=converged, negative=negative,
        messages=tuple(messages),
    )
