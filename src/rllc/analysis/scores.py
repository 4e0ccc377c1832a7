"""Behavioural attention scores of every head (Olsson et al. 2022; Hoogland et al. 2024).

Each function takes a model and tokens and returns a tensor (n_layers, n_heads) of scores in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from rllc._errors import RllcError
from rllc.model.adapters import adapt
from rllc.model.transformer import Transformer


@torch.no_grad()
def attention_patterns(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """Attention patterns of every head: (n_layers, B, n_heads, T_q, T_k) for tokens (B, T)."""
    model = adapt(model)  # rllc, TransformerLens or Hugging Face: cfg, hooks, logits
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
    """Mean attention from each repeated token to the tokens after its earlier occurrences: (n_layers, n_heads).

    Measured on random tokens repeated with several periods (default: four between n_ctx/8 and n_ctx/2), so a
    head that attends a fixed offset back cannot score high: only matching on content does. A query in the k-th
    copy has k−1 earlier occurrences; the score sums its attention over all of their successors.
    """
    model = adapt(model)  # rllc, TransformerLens or Hugging Face: cfg, hooks, logits
    cfg = model.cfg
    if periods is None:
        periods = sorted({max(2, cfg.n_ctx // k) for k in (8, 5, 3, 2)})
    scores = []
    for i, p in enumerate(periods):
        toks = repeated_random_tokens(n, p, cfg.n_ctx, cfg.d_vocab, seed=seed + i)
        scores.append(induction_from_patterns(attention_patterns(model, toks), toks))
    return torch.stack(scores).mean(0)


def induction_targets(tokens: torch.Tensor) -> torch.Tensor:
    """Boolean (B, T_q, T_k): key j follows an earlier occurrence of the query's token (tokens[j-1] == tokens[i])."""
    prev = torch.cat([torch.full_like(tokens[:, :1], -1), tokens[:, :-1]], dim=1)  # (B, T): token before each key
    T = tokens.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril(-1)  # key j < query i (j = i would be the query itself)
    return (tokens[:, :, None] == prev[:, None, :]) & causal


def induction_from_patterns(patterns: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Induction score from patterns (L, B, H, T, T) on tokens (B, T): (L, H), averaged over queries with a target."""
    target = induction_targets(tokens).to(patterns.dtype)  # (B, T, T)
    has = target.sum(-1) > 0  # (B, T) queries whose token occurred before
    mass = (patterns * target[None, :, None]).sum(-1)  # (L, B, H, T)
    return (mass * has[None, :, None]).sum(dim=(1, 3)) / has.sum()


def head_score_table(model: Transformer, text_tokens: torch.Tensor, *, seed: int = 0) -> pd.DataFrame:
    """One row per head: layer, head, component, prev_token_score, current_token_score, induction_score."""
    model = adapt(model)  # rllc, TransformerLens or Hugging Face: cfg, hooks, logits
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


def single_token_matching_tokens(n: int, n_ctx: int, vocab: int, *, low: int = 1, copy_prob: float = 0.25,
                           seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random sequences where single tokens of the first half recur in the second half, never with their successor.

    Returns:
        tokens (n, n_ctx) and target (n, n_ctx): for a recurring token at query j, the key position i + 1 after its
        earlier occurrence i; -1 elsewhere. Tokens are drawn without replacement and each recurs at most once,
        never next to another recurrence, so every match is unique and no two-token prefix ever repeats.
    """
    gen = torch.Generator().manual_seed(seed)
    half = n_ctx // 2
    if vocab - low < n_ctx:
        raise RllcError(f"single-token matching needs a vocabulary of at least n_ctx + {low} tokens (got {vocab})")
    tokens = torch.stack([torch.randperm(vocab - low, generator=gen)[:n_ctx] + low for _ in range(n)])  # (n, T)
    target = torch.full((n, n_ctx), -1, dtype=torch.long)
    copy = (torch.rand(n, n_ctx, generator=gen) < copy_prob).tolist()
    for b in range(n):
        sources = torch.randperm(max(1, half - 1), generator=gen).tolist()  # each first-half token recurs once
        for j in range(half + 1, n_ctx):
            # No two copies side by side, so neither the token before nor the one after a copy ever recurs.
            if copy[b][j] and sources and target[b, j - 1] < 0:
                i = sources.pop()
                tokens[b, j] = tokens[b, i]
                target[b, j] = i + 1
    return tokens, target


def single_token_matching_scores(model: Transformer, *, n: int = 32, seed: int = 0) -> torch.Tensor:
    """Single-token matching score (rllc's probe, not Olsson et al.'s prefix matching): attention from a token to
    the token after its earlier occurrence when only that single token recurs (`single_token_matching_tokens`),
    so no previous-token context helps; a head must match on the current token alone.

    Returns (n_layers, n_heads): mean attention to the target key.
    """
    model = adapt(model)  # rllc, TransformerLens or Hugging Face: cfg, hooks, logits
    cfg = model.cfg
    tokens, target = single_token_matching_tokens(n, cfg.n_ctx, cfg.d_vocab, seed=seed)
    pats = attention_patterns(model, tokens)  # (L, B, H, T, T)
    b, q = (target >= 0).nonzero(as_tuple=True)
    if len(b) == 0:
        raise RllcError(f"no recurring tokens drawn for the single-token matching score; raise n (got {n})")
    pats = pats.permute(0, 2, 1, 3, 4)  # (L, H, B, T, T)
    return pats[..., b, q, target[b, q]].mean(-1)  # (L, H)


def prefix_matching_scores(model: Transformer, *, n: int = 32, seed: int = 0) -> torch.Tensor:
    """Prefix-matching score (Olsson et al. 2022): on a random sequence repeated twice, the mean attention from each
    token of the second copy to the token after its occurrence in the first copy (key i − P + 1 for query i ≥ P,
    period P = n_ctx // 2).

    Returns (n_layers, n_heads) in [0, 1]. (`induction_scores` averages the same target over several periods.)
    """
    cfg = model.cfg
    P = max(2, cfg.n_ctx // 2)
    toks = repeated_random_tokens(n, P, cfg.n_ctx, cfg.d_vocab, seed=seed)  # (n, 2P)
    pats = attention_patterns(model, toks)  # (L, B, H, T, T)
    q = torch.arange(P, toks.shape[1])
    return pats[..., q, q - P + 1].mean(dim=(1, 3))  # (L, H)


def icl_positions(n_ctx: int) -> tuple[int, int]:
    """(late, early) positions of the ICL score: the paper's tokens 500 and 50 of n_ctx 1024 scaled to n_ctx.

    late = round(n_ctx * 500 / 1024), early = round(n_ctx * 50 / 1024) (at least 1), both capped at n_ctx - 2,
    the last position with a next token. n_ctx 64 gives (31, 3).
    """
    late = min(n_ctx - 2, round(n_ctx * 500 / 1024))
    early = min(late, max(1, round(n_ctx * 50 / 1024)))
    return late, early


def icl_score(per_token_loss: torch.Tensor) -> float:
    """ICL score (Olsson et al. 2022) from per-token losses (B, T - 1): mean loss at `late` minus at `early`.

    Position t is the loss of predicting token t + 1; positions come from `icl_positions(T)` (the paper's tokens 500
    and 50 of 1024, i.e. 31 and 3 at n_ctx 64). It measures how much the loss falls from early to late context;
    negative means the model predicts later tokens better, i.e. it learns in context.
    """
    return icl_score_se(per_token_loss)[0]


def icl_score_se(per_token_loss: torch.Tensor) -> tuple[float, float]:
    """`icl_score` and its standard error over windows: (mean, std / sqrt(B)) of the per-window differences
    loss[b, late] − loss[b, early] (NaN standard error for one window)."""
    late, early = icl_positions(per_token_loss.shape[1] + 1)
    d = (per_token_loss[:, late] - per_token_loss[:, early]).double()  # (B,)
    se = float(d.std(unbiased=True) / d.numel() ** 0.5) if d.numel() > 1 else float("nan")
    return float(d.mean()), se
