"""Observables recorded at every draw, streamed into bounded accumulators.

An observable is a per-sample (for language models per-token) loss ``fn(model, batch) -> (B, ...)`` evaluated at
the chain's current weights, on the draw's own minibatch and/or on a fixed evaluation set. What the later
estimators need is moments under the local posterior, per chain: the mean of each observed loss, its variance,
and its covariance with the chain's own (minibatch-mean) loss — per-token LLC contributions are nβ(E[ℓ_i] −
ℓ_i(w*)), susceptibilities are covariances of an observable with the loss, and Bayesian influence functions
(Kreer et al. 2025) are covariances between per-sample losses. So the driver keeps Welling-style running sums, not
the draws: memory is O(chains × observed values), whatever the number of draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Observe:
    """What to record at every draw (the ``observe=`` argument of ``estimate_llc``).

    Attributes:
        per_sample_loss: ``fn(model, batch) -> tensor (B, ...)`` of per-sample (per-token) losses; e.g.
            ``rllc.llc.losses.per_token_loss``.
        eval_data: a fixed evaluation set (same forms as ``data``) evaluated at every draw; None skips it.
        minibatch: also record the per-sample losses on the draw's own minibatch (their running mean and variance
            per chain: minibatch samples differ per draw, so no per-sample covariance is kept for them).
    """

    per_sample_loss: Callable[[nn.Module, Any], torch.Tensor]
    eval_data: Any = None
    minibatch: bool = False


class Moments:
    """Running mean, variance and covariance with a scalar, over draws, for C chains × N values (float64).

    ``update(x (C, N), y (C,))`` adds one draw; memory is 3·C·N + 2·C numbers whatever the number of draws.
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
    def cov_with_loss(self) -> np.ndarray:
        """(C, N) sample covariance (ddof 1) of each value with the chain's own draw loss."""
        return self.cxy / max(self.count - 1, 1)

    def nbytes(self) -> int:
        return self.mean.nbytes + self.m2.nbytes + self.cxy.nbytes + self.mean_y.nbytes + self.m2_y.nbytes


@dataclass(frozen=True, eq=False)
class Observed:
    """Moments of the observed per-sample losses of one component, per chain.

    Attributes:
        draws: draws accumulated.
        eval_mean, eval_var, eval_cov: (C, N) mean, variance and covariance with the chain's draw loss of each
            per-sample loss on the evaluation set (N = its number of observed values, flattened), or None.
        eval_at_anchor: (N,) the same losses at w* (for per-sample LLC contributions nβ(mean − at_anchor)).
        minibatch_mean, minibatch_var: (C,) running mean and variance over draws of the per-sample losses on the
            draw's own minibatch, or None.
    """

    draws: int
    eval_mean: np.ndarray | None
    eval_var: np.ndarray | None
    eval_cov: np.ndarray | None
    eval_at_anchor: np.ndarray | None
    minibatch_mean: np.ndarray | None
    minibatch_var: np.ndarray | None
