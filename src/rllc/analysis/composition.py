"""Q-, K- and V-composition scores between heads of two layers (Elhage et al. 2021; the paper's Appendix F.4).

With row-vector conventions (a head reads x and writes x W_OV), for a sender head s and a receiver head r:
    W_OV = W_V W_O (d_model, d_model),   W_QK = W_Q W_K^T (d_model, d_model)
    Q-composition = |W_OV^s W_QK^r|_F / (|W_OV^s|_F |W_QK^r|_F)
    K-composition = |W_OV^s (W_QK^r)^T|_F / (|W_OV^s|_F |W_QK^r|_F)
    V-composition = |W_OV^s W_OV^r|_F / (|W_OV^s|_F |W_OV^r|_F)
Each block's LayerNorm scale is folded into the matrices that read from it (diag(w) W), as TransformerLens's
`fold_ln` does; LayerNorm's centring and normalisation are ignored. The baseline is the same score for
Gaussian matrices of the same shapes (Elhage et al. 2021): scores near it mean no composition.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd
import torch

from rllc._errors import RllcError
from rllc.model.adapters import adapt
from rllc.model.transformer import Transformer

Mode = Literal["q", "k", "v"]
MODES: tuple[str, ...] = ("q", "k", "v")


def _folded(model: Transformer, layer: int) -> dict[str, torch.Tensor]:
    a = adapt(model)
    weights, w = a.head_weights(layer), a.ln_weight(layer)
    return {n: weights[n] * (w[None, :, None] if n != "W_O" else 1.0) for n in ("W_Q", "W_K", "W_V", "W_O")}


def _score(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """|left @ right|_F / (|left|_F |right|_F) for batches left (A, 1, D, D), right (1, B, D, D): (A, B)."""
    num = torch.linalg.matrix_norm(left @ right)
    den = torch.linalg.matrix_norm(left) * torch.linalg.matrix_norm(right)
    return torch.where(den > 0, num / den.clamp_min(1e-30), torch.full_like(num, float("nan")))


@torch.no_grad()
def composition_scores(model: Transformer, mode: Mode, *, sender_layer: int = 0, receiver_layer: int = 1
                       ) -> torch.Tensor:
    """Composition score of every (sender head, receiver head) pair: (n_heads, n_heads), [sender, receiver].

    Args:
        mode: "q", "k" or "v".
        sender_layer, receiver_layer: sender_layer < receiver_layer.
    Returns:
        Scores in [0, 1]; NaN for a head with an all-zero matrix.
    """
    model = adapt(model)  # rllc, TransformerLens or Hugging Face: cfg, hooks, logits
    if mode not in MODES:
        raise RllcError(f"unknown composition mode {mode!r}; use 'q', 'k' or 'v'")
    if not 0 <= sender_layer < receiver_layer < model.cfg.n_layers:
        raise RllcError(f"composition needs 0 <= sender layer < receiver layer < {model.cfg.n_layers}, "
                        f"got {sender_layer} -> {receiver_layer}")
    s, r = _folded(model, sender_layer), _folded(model, receiver_layer)
    left = (s["W_V"] @ s["W_O"])[:, None]  # (H, 1, D, D)
    return _score(left, _right(r, mode)[None])


def _right(w: dict[str, torch.Tensor], mode: str) -> torch.Tensor:
    if mode == "q":
        return w["W_Q"] @ w["W_K"].transpose(-1, -2)  # (H, D, D)
    if mode == "k":
        return w["W_K"] @ w["W_Q"].transpose(-1, -2)  # (W_Q W_K^T)^T
    return w["W_V"] @ w["W_O"]


def composition_baseline(d_model: int, d_head: int, mode: Mode, *, n: int = 200, seed: int = 0
                         ) -> tuple[float, float]:
    """Mean and std of the composition score of `n` pairs of Gaussian heads with these shapes."""
    gen = torch.Generator().manual_seed(seed)
    g = lambda *shape: torch.randn(n, *shape, generator=gen)  # noqa: E731
    sender = {"W_V": g(d_model, d_head), "W_O": g(d_head, d_model)}
    receiver = {"W_Q": g(d_model, d_head), "W_K": g(d_model, d_head), "W_V": g(d_model, d_head),
                "W_O": g(d_head, d_model)}
    scores = _score((sender["W_V"] @ sender["W_O"])[:, None], _right(receiver, mode)[:, None]).squeeze(1)  # (n,)
    return float(scores.mean()), float(scores.std())


def composition_table(model: Transformer, *, baseline_samples: int = 200, seed: int = 0) -> pd.DataFrame:
    """Every mode and every pair of heads in consecutive-or-later layers, long form.

    Returns:
        Rows: sender ("l:h"), receiver, component ("l:h->l':h'"), mode ("q"/"k"/"v"), measure
        ("q_composition", ...), score, baseline, baseline_std.
    """
    model = adapt(model)  # rllc, TransformerLens or Hugging Face: cfg, hooks, logits
    cfg = model.cfg
    rows = []
    for mode in MODES:
        base, std = composition_baseline(cfg.d_model, cfg.d_head, mode, n=baseline_samples, seed=seed)
        for ls in range(cfg.n_layers):
            for lr in range(ls + 1, cfg.n_layers):
                s = composition_scores(model, mode, sender_layer=ls, receiver_layer=lr)
                for i in range(cfg.n_heads):
                    for j in range(cfg.n_heads):
                        rows.append({"sender": f"{ls}:{i}", "receiver": f"{lr}:{j}",
                                     "component": f"{ls}:{i}->{lr}:{j}", "mode": mode,
                                     "measure": f"{mode}_composition", "score": float(s[i, j]),
                                     "baseline": base, "baseline_std": std})
    return pd.DataFrame(rows)
