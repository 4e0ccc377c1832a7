"""Loss functions ``loss_fn(model, batch) -> scalar mean loss`` for the LLC estimator.

A loss function sees one minibatch (leading dim = samples) and the model whose weights the sampler has set;
it must be written with ordinary torch ops so that ``torch.func`` can vmap and differentiate through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rllc._errors import RllcError
from rllc.model.adapters import forward_logits
from rllc.train.loop import token_cross_entropy

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def _tokens(batch: Any) -> torch.Tensor:
    """The token tensor of a batch: the batch itself, or the first element of a tuple/list."""
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    if isinstance(batch, dict):
        if "tokens" not in batch:
            raise RllcError(f"batch dict has keys {sorted(batch)}; next_token_loss needs a 'tokens' entry")
        batch = batch["tokens"]
    if not isinstance(batch, torch.Tensor) or batch.dim() != 2:
        shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise RllcError(f"next_token_loss needs token batches of shape (B, T), got {shape}; pass loss_fn= for other data")
    return batch


def next_token_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Mean next-token cross-entropy: position t predicts token t+1.

    Args:
        model: maps tokens (B, T) to logits (B, T, V), or to an output with `.logits` (Hugging Face).
        batch: tokens (B, T) long, or a tuple whose first element is that tensor.

    Returns:
        Scalar: mean over the B·(T−1) predicted positions.
    """
    tokens = _tokens(batch)  # (B, T)
    return token_cross_entropy(forward_logits(model, tokens), tokens)


def _next_token_per_sample(model: nn.Module, batch: Any) -> torch.Tensor:
    """(B,) each window's mean next-token cross-entropy: every window has T−1 predicted positions, so their mean
    is ``next_token_loss`` of the batch."""
    tokens = _tokens(batch)
    return token_cross_entropy(forward_logits(model, tokens), tokens, per_token=True).mean(1)


next_token_loss._rllc_per_sample = _next_token_per_sample


def per_sample_form(loss_fn: LossFn) -> Callable[[nn.Module, Any], torch.Tensor] | None:
    """For a loss that is the mean of per-sample losses (``next_token_loss``, ``soft_target_loss``): the function
    ``(model, batch) -> (B,)`` of those losses, whose mean is ``loss_fn(model, batch)``; None for any other loss
    (nothing is assumed about a user's loss)."""
    return getattr(loss_fn, "_rllc_per_sample", None)


def per_token_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Per-token next-token cross-entropy (B, T−1) — the observable for per-token LLC contributions
    (``Observe(per_sample_loss=per_token_loss, ...)``); its mean is ``next_token_loss``."""
    tokens = _tokens(batch)  # (B, T)
    return token_cross_entropy(forward_logits(model, tokens), tokens, per_token=True)


def soft_target_loss(reference_model: nn.Module) -> LossFn:
    """Cross-entropy against a reference model's next-token distributions (Wang et al. 2024, App. F.3 eq. 11).

    The data supply contexts only; the targets are the reference's predictive distributions on the same
    contexts (the model as data generator). The reference runs under ``no_grad``. Inside the batched sampler its
    input does not depend on the sampled weights, so ``vmap`` evaluates it once per minibatch, not once per
    component — that is the per-batch cache.

    Args:
        reference_model: maps tokens (B, T) to logits (B, T, V) with the same vocabulary as the sampled model.

    Returns:
        ``loss_fn(model, batch)``: mean over B·(T−1) positions of −Σ_v p_ref(v | x_≤t) log p_model(v | x_≤t).
        At model == reference it equals the reference's mean next-token entropy.
    """
    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        tokens = _tokens(batch)  # (B, T)
        with torch.no_grad():
            ref_logp = F.log_softmax(forward_logits(reference_model, tokens)[:, :-1], dim=-1)  # (B, T-1, V)
        logp = F.log_softmax(forward_logits(model, tokens)[:, :-1], dim=-1)  # (B, T-1, V)
        return -(ref_logp.exp() * logp).sum(-1).mean()

    def per_sample(model: nn.Module, batch: Any) -> torch.Tensor:  # (B,): each window's mean, T−1 positions each
        tokens = _tokens(batch)
        with torch.no_grad():
            ref_logp = F.log_softmax(forward_logits(reference_model, tokens)[:, :-1], dim=-1)
        logp = F.log_softmax(forward_logits(model, tokens)[:, :-1], dim=-1)
        return -(ref_logp.exp() * logp).sum(-1).mean(-1)

    loss_fn._rllc_per_sample = per_sample
    loss_fn._rllc_reference = reference_model  # marks this loss for the per-head sampler (heads.py)
    return loss_fn
