"""Behavioural attention scores of every head (Olsson et al. 2022; Hoogland et al. 2024).

Each function takes a model and tokens and returns a tensor (n_layers, n_heads) of scores in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from rllc.model.transformer import Transformer


@torch.no_grad()
def attention_patterns(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """Attention patterns of every head: (n_layers, B, n_heads, T_q, T_k) for tokens (B, T)."""
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names)
    return torch.stack([cache[n] for n in names])


def _diagonal_score(patterns: torch.Tensor, offset: int) -> torch.Tensor:
    """Mean attention from query i to key i - offset over all valid i: (L, B, H, T, T) -> (L, H)."""
    diag = torch.diagonal(patterns, offset=-offset, dim1=-2, dim2=-1)  # (L, B, H, T - offset)
    return diag.mean(dim=(1, 3))


def previous_token_scores(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """Mean attention to position i-1 on the given text: (n_layers, n_heads). tokens (B, T)."""
    return _diagonal_score(attention_patterns(model, tokens), 1)


def current_token_scores(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """Mean attention to position i itself: (n_layers, n_heads). tokens (B, T)."""
    return _diagonal_score(attention_patterns(model, tokens), 0)


def repeated_random_tokens(
    n: int, period: int, n_ctx: int, vocab: int, *, low: int = 1, seed: int = 0
) -> torch.Tensor:
    """Sequences of a random span of `period` tokens repeated to fill up to n_ctx: (n, (n_ctx // period) * period)."""
    gen = torch.Generator().manual_seed(seed)
    span = torch.randint(low, vocab, (n, period), generator=gen)
    return span.repeat(1, max(2, n_ctx // period))[:, : max(2 * period, (n_ctx // period) * period)]


def induction_scores(
    model: Transformer, *, periods: Sequence[int] | None = None, n: int = 32, seed: int = 0
) -> torch.Tensor:
    """Mean attention from each repeated token to the token after its previous occurrence: (n_layers, n_heads).

    Measured on random tokens repeated with several periods (default: four between n_ctx/8 and n_ctx/2), so a
    head that attends a fixed offset back cannot score high: only matching on content does.
    """
    cfg = model.cfg
    if periods is None:
        periods = sorted({max(2, cfg.n_ctx // k) for k in (8, 5, 3, 2)})
    scores = []
    for i, p in enumerate(periods):
        toks = repeated_random_tokens(n, p, cfg.n_ctx, cfg.d_vocab, seed=seed + i)
        pat = attention_patterns(model, toks)  # (L, B, H, T, T)
        scores.append(_induction_from_patterns(pat, p))
    return torch.stack(scores).mean(0)


def _induction_from_patterns(patterns: torch.Tensor, period: int) -> torch.Tensor:
    """Attention from query i >= period to key i - period + 1, averaged: (L, B, H, T, T) -> (L, H)."""
    diag = torch.diagonal(patterns, offset=-(period - 1), dim1=-2, dim2=-1)  # query i = key + period - 1
    return diag[..., 1:].mean(dim=(1, 3))  # drop query period-1, which sits in the first copy


def head_score_table(model: Transformer, text_tokens: torch.Tensor, *, seed: int = 0) -> pd.DataFrame:
    """One row per head: layer, head, component, prev_token_score, current_token_score, induction_score."""
    pats = attention_patterns(model, text_tokens)
    prev, cur = _diagonal_score(pats, 1), _diagonal_score(pats, 0)
    ind = induction_scores(model, seed=seed)
    rows = [
        {"layer": l, "head": h, "component": f"{l}:{h}", "prev_token_score": float(prev[l, h]),
         "current_token_score": float(cur[l, h]), "induction_score": float(ind[l, h])}
        for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)
    ]
    return pd.DataFrame(rows)


def text_part(spec: str) -> str:
    """The natural-text parts of a data spec (synthetic parts dropped); "prose" if it has none."""
    from rllc.data import parse_data_spec

    parts = [p for p in parse_data_spec(spec).parts if not p.is_synthetic]
    return ",".join(f"{p.source}*{p.weight:g}" for p in parts) or "prose"


def head_scores_over_training(
    run, steps: Sequence[int] | None = None, *, text: str | None = None, n_text: int = 64, seed: int = 0
) -> pd.DataFrame:
    """Head scores at every checkpoint of a run: long-form rows (step, layer, head, component, scores...).

    Args:
        run: a Run or a run directory.
        steps: checkpoint steps (default: all).
        text: data spec of the held-out text for the previous/current-token scores (its validation split);
            default: the text parts of the run's training data.
        n_text: number of text windows.
    """
    from rllc.train.run import Run, load_run

    run = run if isinstance(run, Run) else load_run(run)
    data = run.dataset(text or text_part(run.config.train.data), split="val")
    tokens = data.sample_batch(n_text, torch.Generator().manual_seed(seed))
    tables = []
    for step in steps if steps is not None else run.steps:
        t = head_score_table(run.model_at(step), tokens, seed=seed)
        t.insert(0, "step", step)
        tables.append(t)
    return pd.concat(tables, ignore_index=True)
