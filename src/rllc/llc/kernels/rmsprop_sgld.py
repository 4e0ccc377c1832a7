"""RMSProp-preconditioned SGLD (Li, Chen, Carlson, Carin 2016), as devinterp's ``SGMCMC.rmsprop_sgld``.

    V_t = α V_{t−1} + (1 − α) g_t ⊙ g_t,         V_0 = 0,  g_t = ∇L̂_m(w_t) (the minibatch mean loss only)
                                                 (for t < T_a; V_t = V_{T_a} after: see ``adapt`` below)
    G_t = 1 / (sqrt(V_t) + ϵ)                    (elementwise; ϵ the stabiliser, not the step size ε)
    Δw  = (ε/2) · G_t ⊙ (−nβ g_t − γ (w_t − w*)) + sqrt(ε · G_t) ⊙ N(0, 1)

Sources: devinterp (timaeus-research/devinterp, ``optim/sgmcmc.py`` ``SGMCMC.rmsprop_sgld`` and
``optim/preconditioner.py`` ``RMSpropPreconditioner``; read for this file, not copied): the squared-gradient
average is updated *before* the step from ``p.grad`` — the gradient of the minibatch mean loss, not multiplied by
nβ and without the localisation term — with no bias correction, and the same G multiplies the gradient term, the
localisation term (it *is* preconditioned) and the noise (as sqrt G). Hitchcock & Hoogland (2025, "From Global to
Local: A Scalable Benchmark for Local Posterior Sampling", arXiv 2507.21449) found this sampler the most faithful
to the local posterior geometry up to O(100M) parameters; other implementations cite their App. D.3 for the same
separation (statistics from the loss gradient only, preconditioner on the whole drift) — we checked devinterp's
code, not that appendix. Defaults α = 0.99, ϵ = 0.1 are devinterp's.

Where it differs from devinterp, and why: with ``adapt="burnin"`` (the default) V is updated only during the first
``adapt_fraction`` (default ½, rounded up) of the burn-in — or the first ``warmup`` = 100 steps, ~1/(1 − α), when
burn-in is 0 (those steps are then also draws) — and then frozen, so every later step is SGLD with a constant
diagonal preconditioner, whose stationary law is the target. The rest of the burn-in lets the chains relax under
that exact law: while V adapts the chains are drawn towards the biased law below, and along flat directions they
relax from it slowly (the product w1²w2⁴ of the closed-form suite read +6% with V adapting over the whole burn-in,
its draws still falling, 0.207 → 0.172 over four windows; −0.5%, −1.2%, −2.6% ± 1.8% with V frozen after
10%, ⅓, ½ of it).
``adapt="always"`` is devinterp's update step for step: G follows the chain and no Γ(w) = ∇·G correction term is
added, so the stationary density is ≈ e^(−U)/G, not e^(−U), and λ̂ reads high on the closed-form suite (+5–14% on
regular and RRR cases, +74% on a normal-crossing product); frozen, every closed-form case passes at SGLD's
tolerances (docs/llc.md, "RMSProp-SGLD on the closed-form suite").
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

NAME = "rmsprop_sgld"
# adapt: "burnin" (default) — V adapts during the first ``adapt_fraction`` of burn-in (or the first ``warmup`` steps
# when burn-in is 0), then is frozen, so every later step is SGLD with one constant diagonal preconditioner, whose
# stationary law is exact; "always" — V follows the chain at every step, devinterp's update, biased (module docstring).
ADAPT = ("burnin", "always")
DEFAULTS: dict[str, float | str] = {"adapt": "burnin", "adapt_fraction": 0.5, "alpha": 0.99, "eps": 0.1,
                                    "warmup": 100.0}


class Hyper(NamedTuple):
    epsilon: float
    nbeta: float
    gamma: float
    alpha: float  # decay of the squared-gradient average
    eps: float  # stabiliser ϵ in G = 1/(sqrt(V) + ϵ)
    adapt_steps: float  # V is updated on steps t < adapt_steps, frozen after (inf: always, devinterp's)


class State(NamedTuple):
    position: torch.Tensor  # (C, d)
    square_avg: torch.Tensor  # (C, d) V
    t: int = 0  # steps taken


class Info(NamedTuple):
    precondition: torch.Tensor  # (C,) mean of G over the coordinates: the effective step is ε·G


def hyper(epsilon: float, nbeta: float, gamma: float, settings: dict[str, float | str], burn_in: int = 0) -> Hyper:
    """The kernel's hyperparameters; ``burn_in`` (steps before the first draw) sets the adaptation window:
    ceil(adapt_fraction · burn_in) steps, or ``warmup`` steps when burn-in is 0, or all of them (adapt="always")."""
    if settings["adapt"] not in ADAPT:
        raise ValueError(f"adapt must be one of {', '.join(ADAPT)}, got {settings['adapt']!r}")
    if not (settings["warmup"] >= 0 and float(settings["warmup"]).is_integer()):
        raise ValueError(f"warmup must be a whole number of steps >= 0, got {settings['warmup']}")
    if not 0.0 < settings["adapt_fraction"] <= 1.0:
        raise ValueError(f"adapt_fraction must be in (0, 1], got {settings['adapt_fraction']}")
    if not 0.0 <= settings["alpha"] < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {settings['alpha']}")
    if not settings["eps"] > 0.0:
        raise ValueError(f"eps must be > 0, got {settings['eps']}")
    if settings["adapt"] == "always":
        window = math.inf
    elif burn_in > 0:
        window = float(math.ceil(settings["adapt_fraction"] * burn_in))
    else:
        window = float(settings["warmup"])
    return Hyper(epsilon, nbeta, gamma, float(settings["alpha"]), float(settings["eps"]), window)


def init(position: torch.Tensor) -> State:
    return State(position, torch.zeros_like(position))


def step(state: State, grad: torch.Tensor, noise: torch.Tensor, anchor: torch.Tensor, mask: torch.Tensor | None,
         h: Hyper) -> tuple[State, Info]:
    """One RMSProp-SGLD update of the chains' positions (C, d); ``mask`` (C, 1) or None selects moving chains."""
    w, v = state.position, state.square_avg
    v_new = torch.addcmul(v * h.alpha, grad, grad, value=1.0 - h.alpha) if state.t < h.adapt_steps else v
    g = 1.0 / (v_new.sqrt() + h.eps)
    drift = -h.nbeta * grad - h.gamma * (w - anchor)
    moved = w + (0.5 * h.epsilon) * g * drift + (h.epsilon * g).sqrt() * noise
    if mask is not None:
        moved, v_new = torch.where(mask, moved, w), torch.where(mask, v_new, v)
    return State(moved, v_new, state.t + 1), Info(g.mean(dim=-1))
