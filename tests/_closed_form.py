"""Closed-form learning coefficients and the toy models that have them (shared by tests and the benchmark table)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def aoyagi_watanabe(M: int, H: int, N: int, r: int) -> tuple[float, int]:
    """(λ, multiplicity m) of reduced-rank regression y = B A x, A: H×M, B: N×H, true rank r (Aoyagi & Watanabe 2005)."""
    if N + r <= M + H and M + r <= N + H and H + r <= M + N:  # case 1
        s = 2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2
        return ((s + 1) / 8, 2) if (M + H + N + r) % 2 else (s / 8, 1)
    if M + H < N + r:  # case 2
        return (H * M - H * r + N * r) / 2, 1
    if N + H < M + r:  # case 3
        return (H * N - H * r + M * r) / 2, 1
    return M * N / 2, 1  # case 4: M + N < H + r


def aw_case(M: int, H: int, N: int, r: int) -> str:
    if N + r <= M + H and M + r <= N + H and H + r <= M + N:
        return "1 odd" if (M + H + N + r) % 2 else "1 even"
    return "2" if M + H < N + r else ("3" if N + H < M + r else "4")


class Packed(nn.Module):
    """Independent toy problems in one module; loss = Σ_q K_q(w_q), so moving only problem q's weights samples K_q.

    Problems: ("rrr", M, H, N, r) → K = ½‖BA − C0‖²_F (whitened inputs), w* = balanced rank-r factorisation
    (A[:r,:r] = B[:r,:r] = I, extra directions at zero); ("sum", c, ks) → K = Σ_i c_i w_i^{2k_i};
    ("prod", c, ks) → K = c Π_i w_i^{2k_i}; w* = 0 for both.
    """

    def __init__(self, problems: list[tuple]) -> None:
        super().__init__()
        self.problems = problems
        for q, p in enumerate(problems):
            if p[0] == "rrr":
                _, M, H, N, r = p
                A, B = torch.zeros(H, M, dtype=torch.float64), torch.zeros(N, H, dtype=torch.float64)
                A[:r, :r] = torch.eye(r)
                B[:r, :r] = torch.eye(r)
                self.register_parameter(f"p{q}_A", nn.Parameter(A))
                self.register_parameter(f"p{q}_B", nn.Parameter(B))
                C0 = torch.zeros(N, M, dtype=torch.float64)
                C0[:r, :r] = torch.eye(r)
                self.register_buffer(f"p{q}_C0", C0)
            else:
                self.register_parameter(f"p{q}_w", nn.Parameter(torch.zeros(len(p[2]), dtype=torch.float64)))

    def term(self, q: int) -> torch.Tensor:
        p = self.problems[q]
        if p[0] == "rrr":
            d = getattr(self, f"p{q}_B") @ getattr(self, f"p{q}_A") - getattr(self, f"p{q}_C0")
            return 0.5 * (d**2).sum()
        w, ks = getattr(self, f"p{q}_w"), p[2]
        powers = torch.stack([w[i] ** (2 * k) for i, k in enumerate(ks)])
        c = torch.as_tensor(p[1], dtype=w.dtype)
        return (c * powers).sum() if p[0] == "sum" else c * powers.prod()

    def loss(self) -> torch.Tensor:
        return sum(self.term(q) for q in range(len(self.problems)))

    def component(self, q: int) -> dict[str, torch.Tensor]:
        return {n: torch.ones_like(t, dtype=torch.bool) for n, t in self.named_parameters() if n.startswith(f"p{q}_")}


def packed_loss(model: Packed, batch) -> torch.Tensor:
    return model.loss()


def quad_1d(c: float, k: int, nbeta: float, gamma: float) -> float:
    """Exact E[nβ c w^{2k}] under p(w) ∝ exp(−nβ c w^{2k} − γ w²/2), by a fine grid."""
    s = min((nbeta * c) ** (-1 / (2 * k)), 1 / math.sqrt(gamma) if gamma > 0 else math.inf)
    w = np.linspace(-12 * s, 12 * s, 400_001)
    e = nbeta * c * w ** (2 * k)
    p = np.exp(-e - gamma * w**2 / 2)
    return float((e * p).sum() / p.sum())


def quad_prod_2d(c: float, k1: int, k2: int, nbeta: float, gamma: float, n: int = 4001) -> float:
    """Exact E[nβ c w1^{2k1} w2^{2k2}] under ∝ exp(−nβ K − γ|w|²/2), on a grid refined near the axes."""
    half = np.sinh(np.linspace(0, np.arcsinh(9 / math.sqrt(gamma) * 1e3), n // 2 + 1)) / 1e3  # dense near 0
    g = np.concatenate([-half[:0:-1], half])
    dw = np.gradient(g)
    w1, w2 = np.meshgrid(g, g, indexing="ij")
    e = nbeta * c * w1 ** (2 * k1) * w2 ** (2 * k2)
    p = np.exp(-e - gamma * (w1**2 + w2**2) / 2) * dw[:, None] * dw[None, :]
    return float((e * p).sum() / p.sum())
