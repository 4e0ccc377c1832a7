"""Automatic head types from behavioural scores and tokens in context, and their validation on synthetic data.

`label_heads` labels each head previous-token, current-token, induction, or multigram (dyck, skip-n-gram,
n-gram) with the evidence behind the label and a confidence. `synthetic_ground_truth` measures, for every head,
which of the synthetic generator's planted patterns its ablation hurts most, and `label_agreement` compares the
labels with it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd
import torch

from rllc.model.adapters import adapt
from rllc.analysis.ablation import ablated_per_token_loss, head_z_means, per_token_loss
from rllc.analysis.token_contexts import BracketVocab, TokensInContextConfig, tokens_in_context
from rllc.data.synthetic import Pattern, SyntheticConfig, generate
from rllc.model.transformer import Transformer

HEAD_TYPES: tuple[str, ...] = ("previous-token", "current-token", "induction", "dyck", "skip-n-gram", "n-gram",
                               "unlabelled")
MULTIGRAM = ("dyck", "skip-n-gram", "n-gram")
_TIC_TO_TYPE = {"induction": "induction", "dyck": "dyck", "skip_ngram": "skip-n-gram", "ngram": "n-gram"}


@dataclass(frozen=True)
class HeadTypeThresholds:
    """Evidence needed for each label: attention scores in [0, 1], and when a head is too weak to type at all."""

    prev_token: float = 0.3  # uniform attention over 64 positions gives ~0.07
    current_token: float = 0.3
    induction: float = 0.3
    dead: float = 1e-3  # nats: a head whose mean ablation raises no token's loss by more than this is dead
    min_explained: int = 5  # fewer explained tokens in context than this: too few to type the head


def label_heads(scores: pd.DataFrame, tic_summary: pd.DataFrame | None = None,
                thresholds: HeadTypeThresholds = HeadTypeThresholds()) -> pd.DataFrame:
    """Give every head a type (the paper's taxonomy, Appendix B.1), or "unlabelled" with the reason.

    Attention scores decide first: of previous-token, current-token and induction, each whose score passes its
    threshold is a candidate and the strongest (score / threshold) wins. Any other head is typed from its tokens in
    context, by the pattern that explains the most *in a relative sense*: its share of the head's tokens in
    context divided by that pattern's mean share over all heads in `tic_summary` (so a pattern common to every head,
    such as n-grams, does not swamp a rarer one the head is unusually rich in). Induction found this way is
    "induction"; Dyck, skip n-gram and n-gram are the multigram subtypes. A head is "unlabelled" only when it is
    dead (mean ablation raises no token's loss by more than `thresholds.dead`), when fewer than
    `thresholds.min_explained` of its tokens in context are explained, or when no tokens in context were computed;
    the evidence column says which.

    Args:
        scores: one row per head with component, prev_token_score, current_token_score, induction_score
            (`head_score_table`; extra columns are kept).
        tic_summary: `tokens_in_context_summary` rows (component, n, frac_*, max_loss_increase), optional.
    Returns:
        `scores` plus columns label (one of HEAD_TYPES), family ("multigram" for dyck/skip-n-gram/n-gram, else
        the label), confidence (the winning score, or the winning pattern's share of tokens in context),
        evidence (a readable string: every passing score, or the shares and relative shares, or the reason).
    """
    tic = tic_summary.set_index("component") if tic_summary is not None and len(tic_summary) else None
    classes = list(_TIC_TO_TYPE)
    mean_share = {c: float(tic[f"frac_{c}"].mean()) for c in classes} if tic is not None else {}
    out = []
    for _, r in scores.iterrows():
        cands = []
        for label, col, thr in (("previous-token", "prev_token_score", thresholds.prev_token),
                                ("current-token", "current_token_score", thresholds.current_token),
                                ("induction", "induction_score", thresholds.induction)):
            v = float(r[col])
            if v >= thr:
                cands.append((label, v / thr, v, f"{col} {v:.2f} >= {thr:g}"))
        if cands:
            label, _, conf, _ = max(cands, key=lambda c: c[1])
            evidence = "; ".join(c[3] for c in sorted(cands, key=lambda c: -c[1]))
        elif tic is None or r.component not in tic.index:
            label, conf = "unlabelled", 0.0
            evidence = "no attention score above its threshold and no tokens in context computed for this head"
        else:
            label, conf, evidence = _label_from_tokens_in_context(tic.loc[r.component], mean_share, thresholds)
        out.append({**r.to_dict(), "label": label, "family": "multigram" if label in MULTIGRAM else label,
                    "confidence": conf, "evidence": evidence})
    return pd.DataFrame(out)


def _label_from_tokens_in_context(t: pd.Series, mean_share: dict[str, float],
                                  thresholds: HeadTypeThresholds) -> tuple[str, float, str]:
    n = int(t.n)
    if "max_loss_increase" in t and float(t.max_loss_increase) < thresholds.dead:
        return "unlabelled", 0.0, (f"dead head: mean-ablating it raises no token's loss by more than "
                                   f"{float(t.max_loss_increase):.1e} nats (< {thresholds.dead:g})")
    explained = round(n * (1 - float(t.frac_unexplained)))
    if explained < thresholds.min_explained:
        return "unlabelled", 0.0, (f"too few tokens in context explained: {explained} of {n} "
                                   f"(< {thresholds.min_explained})")
    rel = {c: float(t[f"frac_{c}"]) / mean_share[c] if mean_share[c] > 0 else 0.0 for c in _TIC_TO_TYPE}
    best = max(rel, key=lambda c: (rel[c], float(t[f"frac_{c}"])))
    label = _TIC_TO_TYPE[best]
    share = float(t[f"frac_{best}"])
    parts = [f"no attention score above its threshold; top {n} tokens in context: "
             + ", ".join(f"{c} {float(t[f'frac_{c}']):.0%} ({round(float(t[f'frac_{c}']) * n)} of {n}; "
                         f"{rel[c]:.2f}× the heads' mean)" for c in _TIC_TO_TYPE)]
    if label in MULTIGRAM and "unique_multigrams" in t:
        parts.append(f"{int(t.unique_multigrams)} unique multigrams")
    return label, share, "; ".join(parts)


# Which planted pattern a head of each type should matter most to. Previous-token heads serve induction (and
# trigram) prediction; current-token heads serve n-gram prediction.
EXPECTED_PATTERNS: dict[str, tuple[str, ...]] = {
    "induction": ("INDUCTION",), "previous-token": ("INDUCTION", "NGRAM"), "current-token": ("NGRAM",),
    "dyck": ("DYCK",), "skip-n-gram": ("SKIPGRAM",), "n-gram": ("NGRAM",),
}
_PATTERNS = ("NGRAM", "SKIPGRAM", "INDUCTION", "DYCK")


@torch.no_grad()
def synthetic_ground_truth(model: Transformer, config: SyntheticConfig, *, n: int = 128, seed: int = 0,
                           min_increase: float = 0.02) -> pd.DataFrame:
    """Per head, the mean-ablation loss increase on the positions of each planted pattern.

    Args:
        config: the synthetic generator the model is evaluated on (its ids must fit the model's vocabulary).
        n: sequences of length n_ctx.
        min_increase: a head whose largest increase is below this (nats) gets gt_pattern "none".
    Returns:
        One row per head: component, inc_NGRAM, inc_SKIPGRAM, inc_INDUCTION, inc_DYCK (NaN where the pattern
        does not occur), n_{pattern}, gt_pattern (the pattern with the largest increase).
    """
    model = adapt(model)  # rllc, TransformerLens or Hugging Face: cfg, hooks, logits
    cfg = model.cfg
    batch = generate(config, n, cfg.n_ctx, seed=seed)
    tokens, labels = batch.tokens, batch.labels[:, :-1]
    means = head_z_means(model, tokens)
    clean = per_token_loss(model, tokens)
    rows = []
    for l in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            inc = ablated_per_token_loss(model, tokens, [(l, h)], "mean", means=means) - clean  # (B, T - 1)
            row = {"component": f"{l}:{h}"}
            for p in _PATTERNS:
                mask = (labels & int(Pattern[p])) > 0
                row[f"n_{p}"] = int(mask.sum())
                row[f"inc_{p}"] = float(inc[mask].mean()) if mask.any() else float("nan")
            vals = {p: row[f"inc_{p}"] for p in _PATTERNS if row[f"n_{p}"]}
            best = max(vals, key=vals.get) if vals else None
            row["gt_pattern"] = best if best is not None and vals[best] >= min_increase else "none"
            rows.append(row)
    return pd.DataFrame(rows)


def label_agreement(labels: pd.DataFrame, ground_truth: pd.DataFrame) -> tuple[float, pd.DataFrame]:
    """Agreement of head labels with the synthetic ground truth.

    A labelled head agrees when its gt_pattern is one of EXPECTED_PATTERNS[label]. Left out: unlabelled heads,
    heads with gt_pattern "none", and heads whose expected patterns were not planted in the data at all (the
    ground truth cannot judge them, e.g. a current-token head on data without n-grams).
    Returns:
        (fraction of compared heads that agree (NaN if none), rows component, label, gt_pattern, agrees).
    """
    m = labels[["component", "label"]].merge(ground_truth, on="component")
    planted = [any(r.get(f"n_{p}", 0) > 0 for p in EXPECTED_PATTERNS.get(r["label"], ())) for _, r in m.iterrows()]
    m = m[(m.label != "unlabelled") & (m.gt_pattern != "none") & pd.Series(planted, index=m.index, dtype=bool)]
    m = m[["component", "label", "gt_pattern"]].copy()
    m["agrees"] = [g in EXPECTED_PATTERNS.get(lab, ()) for lab, g in zip(m.label, m.gt_pattern)]
    return (float(m.agrees.mean()) if len(m) else float("nan")), m.reset_index(drop=True)


_CLASS_PATTERN = {"induction": Pattern.INDUCTION, "dyck": Pattern.DYCK, "skip_ngram": Pattern.SKIPGRAM,
                  "ngram": Pattern.NGRAM}


def tokens_in_context_agreement(model: Transformer, config: SyntheticConfig, *,
                                tic: TokensInContextConfig = TokensInContextConfig(), seed: int = 0
                                ) -> tuple[float, pd.DataFrame]:
    """How often the tokens-in-context classifier names the pattern the generator planted at that position.

    Runs `tokens_in_context` for every head on synthetic samples and checks each explained token in context
    against the generator's label bits at (sequence, position).
    Returns:
        (fraction of explained tokens in context whose class matches, per-class rows label, n, agree_fraction).
    """
    model = adapt(model)  # rllc, TransformerLens or Hugging Face: cfg, hooks, logits
    batch = generate(config, tic.n_samples, model.cfg.n_ctx, seed=seed)
    tic = dataclasses.replace(tic, seed=seed)
    ex = tokens_in_context(model, batch.tokens, config=tic,
                           brackets=BracketVocab.from_pairs(config.brackets, model.cfg.d_vocab))
    truth = batch.labels[torch.tensor(ex.seq.tolist()), torch.tensor(ex.pos.tolist())]
    ex = ex[ex.label != "unexplained"].assign(truth=truth[(ex.label != "unexplained").to_numpy()].numpy())
    ex["agrees"] = [(int(t) & int(_CLASS_PATTERN[c])) > 0 for c, t in zip(ex.label, ex.truth)]
    per_class = ex.groupby("label").agrees.agg(["size", "mean"]).reset_index()
    per_class.columns = ["label", "n", "agree_fraction"]
    return (float(ex.agrees.mean()) if len(ex) else float("nan")), per_class
