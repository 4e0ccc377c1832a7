"""Zero, mean and resample ablation of attention heads (the paper's Appendix E.1).

A head is ablated by replacing its `hook_z` slice (B, T, d_head), the input of its W_O, so its output becomes
the replacement times W_O[h]: zero (nothing), mean (its mean z over the data) or resample (its z on another
sequence of the same batch). The ablation score of a head is the mean next-token loss after ablation minus before,
on the same tokens the means were taken over.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pandas as pd
import torch

from rllc._errors import RllcError
from rllc.model.adapters import adapt
from rllc.model.transformer import Transformer
from rllc.train.loop import token_cross_entropy

AblationKind = Literal["zero", "mean", "resample"]
KINDS: tuple[str, ...] = ("zero", "mean", "resample")
Head = tuple[int, int]


@torch.no_grad()
def per_token_loss(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of predicting tokens[:, t + 1] at every position t: (B, T - 1). tokens (B, T)."""
    model = adapt(model)  # rllc, TransformerLens or Hugging Face: cfg, hooks, logits
    return token_cross_entropy(model(tokens), tokens, per_token=True)  # (B, T - 1)


@torch.no_grad()
def head_z_means(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """Mean of every head's z over batch and positions: (n_layers, n_heads, d_head). tokens (B, T)."""
    model = adapt(model)  # rllc, TransformerLens or Hugging Face: cfg, hooks, logits
    names = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names)
    return torch.stack([cache[n].mean(dim=(0, 1)) for n in names])  # (L, H, E)


def resample_permutation(batch: int, seed: int) -> torch.Tensor:
    """A permutation of range(batch) with no fixed point (for batch > 1): sequence b takes z from perm[b]."""
    if batch < 2:
        raise RllcError("resample ablation needs at least 2 sequences to swap head outputs between")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(batch, generator=gen)
    out = torch.empty_like(perm)
    out[perm] = torch.roll(perm, -1)  # perm[i] -> perm[i + 1]: one cycle through the batch, no fixed point
    return out


def ablation_hooks(
    heads: Sequence[Head], kind: AblationKind, *, means: torch.Tensor | None = None,
    perm: torch.Tensor | None = None,
) -> list[tuple[str, object]]:
    """Hooks for `model.hooks(...)` that ablate the given heads' z.

    Args:
        heads: (layer, head) pairs.
        kind: "zero", "mean" (needs `means` (L, H, E) from `head_z_means`) or "resample" (needs `perm` (B,)).
    Returns:
        [(hook name, fn)] pairs, one per layer involved.
    """
    if kind not in KINDS:
        raise RllcError(f"unknown ablation {kind!r}; use one of {', '.join(KINDS)}")
    if kind == "mean" and means is None:
        raise RllcError("mean ablation needs the head means (rllc.analysis.head_z_means)")
    if kind == "resample" and perm is None:
        raise RllcError("resample ablation needs a permutation (rllc.analysis.resample_permutation)")
    by_layer: dict[int, list[int]] = {}
    for l, h in heads:
        by_layer.setdefault(l, []).append(h)

    def make(layer: int, hs: list[int]):  # noqa: ANN202
        def fn(z: torch.Tensor, name: str) -> torch.Tensor:  # z (B, T, H, E)
            z = z.clone()
            if kind == "zero":
                z[:, :, hs] = 0.0
            elif kind == "mean":
                z[:, :, hs] = means[layer, hs].to(z)
            else:
                z[:, :, hs] = z[perm][:, :, hs]
            return z
        return fn

    return [(f"blocks.{l}.attn.hook_z", make(l, hs)) for l, hs in by_layer.items()]


@torch.no_grad()
def ablated_per_token_loss(
    model: Transformer, tokens: torch.Tensor, heads: Sequence[Head], kind: AblationKind = "mean", *,
    means: torch.Tensor | None = None, seed: int = 0,
) -> torch.Tensor:
    """Per-token loss (B, T - 1) with the given heads ablated together; means default to those of `tokens`."""
    model = adapt(model)  # rllc, TransformerLens or Hugging Face: cfg, hooks, logits
    if kind == "mean" and means is None:
        means = head_z_means(model, tokens)
    perm = resample_permutation(tokens.shape[0], seed) if kind == "resample" else None
    with model.hooks(ablation_hooks(heads, kind, means=means, perm=perm)):
        return per_token_loss(model, tokens)


@torch.no_grad()
def per_token_ablation_effects(
    model: Transformer, tokens: torch.Tensor, heads: Sequence[Head], kind: AblationKind = "mean", *,
    means: torch.Tensor | None = None, seed: int = 0,
) -> torch.Tensor:
    """Per-token loss with each head ablated alone minus the clean loss: (len(heads), B, T - 1). tokens (B, T);
    means (L, H, E) default to those of `tokens` (pass the sampling data's to ablate probes as the LLC sees them)."""
    model = adapt(model)  # rllc, TransformerLens or Hugging Face: cfg, hooks, logits
    clean = per_token_loss(model, tokens)  # (B, T - 1)
    if kind == "mean" and means is None:
        means = head_z_means(model, tokens)
    return torch.stack([ablated_per_token_loss(model, tokens, [h], kind, means=means, seed=seed) - clean
                        for h in heads])


@torch.no_grad()
def ablation_scores(model: Transformer, tokens: torch.Tensor, kind: AblationKind = "mean", *, seed: int = 0
                    ) -> torch.Tensor:
    """Loss after ablating each head alone minus the clean loss: (n_layers, n_heads). tokens (B, T)."""
    model = adapt(model)  # rllc, TransformerLens or Hugging Face: cfg, hooks, logits
    cfg = model.cfg
    clean = per_token_loss(model, tokens).mean()
    means = head_z_means(model, tokens) if kind == "mean" else None
    out = torch.zeros(cfg.n_layers, cfg.n_heads)
    for l in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            out[l, h] = ablated_per_token_loss(model, tokens, [(l, h)], kind, means=means, seed=seed).mean() - clean
    return out


def ablation_table(model: Transformer, tokens: torch.Tensor, kinds: Sequence[str] = KINDS, *, seed: int = 0
                   ) -> pd.DataFrame:
    """One row per head: layer, head, component, and `ablation_{kind}` for each kind."""
    model = adapt(model)  # rllc, TransformerLens or Hugging Face: cfg, hooks, logits
    cfg = model.cfg
    scores = {k: ablation_scores(model, tokens, k, seed=seed) for k in kinds}
    return pd.DataFrame([{"layer": l, "head": h, "component": f"{l}:{h}",
                          **{f"ablation_{k}": float(s[l, h]) for k, s in scores.items()}}
                         for l in range(cfg.n_layers) for h in range(cfg.n_heads)])
