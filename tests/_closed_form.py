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


def rrr_exact(M: int, H: int, N: int, r: int, nbeta: float, gamma: float, samples: int = 400_000,
              seed: int = 0, anchored: bool = False, scales: tuple[float, ...] = (1.0,)) -> tuple[float, float]:
    """Exact finite-nβ E[nβK] for K = ½‖BA − C0‖²_F under p ∝ exp(−nβK − γ/2(‖A − A₀‖² + ‖B − B₀‖²)), and the ESS.

    A₀ = B₀ = 0, or with ``anchored`` the balanced rank-r point w* of `PaddedRRR` (A₀[:r, :r] = B₀[:r, :r] = I):
    the localised posterior the sampler targets. An independent check of the sampler (no SGLD, no autograd): given
    A, K is quadratic in B, so each row b_i of B is Gaussian with precision P = nβAAᵀ + γI and mean
    μ_i = P⁻¹(nβAc_i + γb₀_i); E[nβK | A] = Σ_i ½nβ(tr(AAᵀP⁻¹) + ‖Aᵀμ_i − c_i‖²) and the marginal weight of A is
    Π_i det(P)^(−1/2) exp(½h_iᵀP⁻¹h_i), h_i = nβAc_i + γb₀_i. The integral over A is importance-sampled from an
    equal mixture of N(A₀, s²/γ) over s in ``scales`` ((1,): the prior). Reliable when the returned effective
    sample size is large (~60% of ``samples`` for (2, 3, 2, 2); singular cases with r ≥ 1 and H > r have
    heavy-tailed weights under the prior — the mixture (1, 0.3) lifts (3, 3, 3, 1)'s ESS ~10×).
    """
    rng = np.random.default_rng(seed)
    C = np.zeros((N, M))
    C[:r, :r] = np.eye(r)
    A0, B0 = np.zeros((H, M)), np.zeros((N, H))
    if anchored:
        A0[:r, :r], B0[:r, :r] = np.eye(r), np.eye(r)
    sc = np.asarray(scales, dtype=float) / math.sqrt(gamma)
    pick = rng.integers(len(sc), size=samples)
    A = A0 + rng.standard_normal((samples, H, M)) * sc[pick][:, None, None]
    d2 = ((A - A0) ** 2).sum((1, 2))
    # log prior − log proposal (common constants dropped)
    logw = -0.5 * gamma * d2 - np.logaddexp.reduce(-0.5 * d2[:, None] / sc**2 - H * M * np.log(sc), axis=1)
    AAt = A @ A.transpose(0, 2, 1)
    P = nbeta * AAt + gamma * np.eye(H)
    Pinv = np.linalg.inv(P)
    logdet = np.linalg.slogdet(P)[1]
    tr = np.einsum("sij,sji->s", AAt, Pinv)
    e = np.zeros(samples)
    for c, b0 in zip(C, B0):
        h = nbeta * (A @ c) + gamma * b0
        mu = np.einsum("shk,sk->sh", Pinv, h)
        logw += -0.5 * logdet + 0.5 * (h * mu).sum(1)
        e += 0.5 * nbeta * (tr + ((np.einsum("shm,sh->sm", A, mu) - c) ** 2).sum(1))
    w = np.exp(logw - logw.max())
    return float((w * e).sum() / w.sum()), float(w.sum() ** 2 / (w**2).sum())


class PaddedRRR(nn.Module):
    """Several reduced-rank regressions in two padded tensors, so one step is one batched matmul.

    A: (Q, H_max, M_max), B: (Q, N_max, H_max); problem q uses A[q, :H, :M] and B[q, :N, :H], the padding stays
    at zero (it is outside every component's mask, so the sampler never moves it). Loss Σ_q s_q·½‖B_q A_q − C0_q‖²_F
    (whitened inputs); at w* (balanced rank-r factorisation, extra directions zero) every term is exactly 0, so
    moving only problem q's coordinates samples problem q alone. A config is (M, H, N, r) or (M, H, N, r, s): the
    loss scale s (default 1) leaves λ unchanged and makes problem q see an effective nβ·s, so problems that need a
    smaller nβ (relative to the step size) can share one sampler with the others.
    """

    def __init__(self, configs: list[tuple]) -> None:
        super().__init__()
        self.configs = [tuple(c[:4]) for c in configs]
        self.register_buffer("scale", torch.tensor([float(c[4]) if len(c) > 4 else 1.0 for c in configs],
                                                   dtype=torch.float64).view(-1, 1, 1))
        configs = self.configs
        q = len(configs)
        Mm, Hm, Nm = (max(c[i] for c in configs) for i in range(3))
        A = torch.zeros(q, Hm, Mm, dtype=torch.float64)
        B = torch.zeros(q, Nm, Hm, dtype=torch.float64)
        C0 = torch.zeros(q, Nm, Mm, dtype=torch.float64)
        for i, (_, _, _, r) in enumerate(configs):
            A[i, :r, :r] = B[i, :r, :r] = C0[i, :r, :r] = torch.eye(r, dtype=torch.float64)
        self.A, self.B = nn.Parameter(A), nn.Parameter(B)
        self.register_buffer("C0", C0)

    def loss(self) -> torch.Tensor:
        return 0.5 * (self.scale * (self.B @ self.A - self.C0) ** 2).sum()

    def component(self, q: int) -> dict[str, torch.Tensor]:
        M, H, N, _ = self.configs[q]
        a, b = torch.zeros_like(self.A, dtype=torch.bool), torch.zeros_like(self.B, dtype=torch.bool)
        a[q, :H, :M] = True
        b[q, :N, :H] = True
        return {"A": a, "B": b}


class Product(nn.Module):
    """K(w) = c Π_i w_i^{2k_i}, w* = 0, in one vectorised expression."""

    def __init__(self, c: float, ks: tuple[int, ...]) -> None:
        super().__init__()
        self.c = c
        self.register_buffer("k2", 2.0 * torch.tensor(ks, dtype=torch.float64))
        self.w = nn.Parameter(torch.zeros(len(ks), dtype=torch.float64))

    def loss(self) -> torch.Tensor:
        return self.c * (self.w**self.k2).prod()


def module_loss(model: nn.Module, batch) -> torch.Tensor:
    return model.loss()


def quad_prod_k1(c: float, k2: int, nbeta: float, gamma: float) -> float:
    """Exact E[nβ c w1² w2^{2k2}] under ∝ exp(−nβ K − γ|w|²/2), reduced to one dimension.

    Given w2, w1 is Gaussian with precision a(w2) = 2nβc w2^{2k2} + γ, so E[nβK | w2] = nβc w2^{2k2}/a(w2) and
    w2 has marginal density ∝ exp(−γ w2²/2) a(w2)^{−1/2}: a 1-D integral on a fine grid.
    """
    w = np.linspace(-14 / math.sqrt(gamma), 14 / math.sqrt(gamma), 2_000_001)
    x = nbeta * c * w ** (2 * k2)
    a = 2 * x + gamma
    p = np.exp(-gamma * w**2 / 2) / np.sqrt(a)
    return float((p * x / a).sum() / p.sum())
