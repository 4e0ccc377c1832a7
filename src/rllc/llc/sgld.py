"""The SGLD step — a short pure function of tensors, checkable by hand against the update rule — and the random
streams its chains draw from.

Convention (devinterp's; Wang et al. 2024 eq. 2–3 and the released `llc.yaml` configs)::

    Δw = (ε/2) · (−nβ ∇L̂_m(w) − γ (w − w*)) + N(0, ε)

so the chain targets the localised tempered posterior ∝ exp(−nβ L_n(w) − (γ/2)‖w − w*‖²).
The Gaussian term has *variance* ε: it is sqrt(ε) times a standard normal draw. (BlackJAX writes the same
sampler with step size ε' = ε/2, i.e. drift ε'·∇log p and noise variance 2ε'.)
"""

from __future__ import annotations

import math

import numpy as np
import torch


def sgld_step(
    params: torch.Tensor,
    grads: torch.Tensor,
    noise: torch.Tensor,
    anchor: torch.Tensor,
    mask: torch.Tensor | None,
    epsilon: float,
    nbeta: float,
    gamma: float,
) -> torch.Tensor:
    """One SGLD update ``w ← w + (ε/2)(−nβ g − γ(w − w*)) + sqrt(ε)·ξ`` on the coordinates ``mask`` selects.

    Args:
        params: current weights w, any shape S (a leading chain axis is fine).
        grads: ∇L̂_m(w), the gradient of the minibatch *mean* loss, same shape as ``params``.
        noise: ξ, standard normal draws broadcastable to S; this function scales them by sqrt(ε).
        anchor: w*, the localisation centre, broadcastable to S.
        mask: bool tensor broadcastable to S; True marks a coordinate that moves. Coordinates where it is False
            get no drift, no noise and no localisation: they are returned bitwise unchanged. None moves all.
        epsilon: ε, the step size.
        nbeta: nβ, the inverse temperature times the sample size (one number; see ``SamplerConfig``).
        gamma: γ, the localisation strength.

    Returns:
        The new weights, shape S (a new tensor; inputs are not modified).
    """
    drift = -nbeta * grads - gamma * (params - anchor)
    moved = params + (0.5 * epsilon) * drift + math.sqrt(epsilon) * noise
    if mask is None:
        return moved
    return torch.where(mask, moved, params)


class ChainStreams:
    """The random streams of one estimate, spawned from its seed: chain c's minibatch generator, shared by every
    component (so all components of an estimate see the same minibatches), and component q, chain c's noise
    generator. The reference loop and the per-head sampler both draw from these, which makes them the same chains.

    Args:
        seed: the sampler's seed.
        chains: chains per component.
        n_components: components of the whole estimate (q runs over 0 … n_components − 1).
    """

    def __init__(self, seed: int, chains: int, n_components: int) -> None:
        self._seeds = np.random.SeedSequence(seed).spawn(1 + chains + n_components * chains)
        self._chains = chains

    def batches(self, chain: int) -> torch.Generator:
        """The minibatch generator of ``chain``."""
        return _generator(self._seeds[1 + chain])

    def noise(self, component: int, chain: int) -> torch.Generator:
        """The noise generator of (``component``, ``chain``)."""
        return _generator(self._seeds[1 + self._chains + component * self._chains + chain])


def _generator(seed: np.random.SeedSequence) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed.generate_state(1)[0]))
