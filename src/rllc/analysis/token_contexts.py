"""Tokens in context (the paper's Appendix B.1–B.5): what a head is for, read off the predictions it matters to.

For a head: mean-ablate it over N sequences, rank every (sequence, position) — a *token in context*, predicting
tokens[t + 1] from tokens[:t + 1] — by the per-token loss increase, keep the top k with the head's clean attention
row, and classify each serially (the first rule that applies wins):
  induction    [A][B] … [A] → [B]: tokens[t] == tokens[i], tokens[t + 1] == tokens[i + 1] for some i < t, with the
               head's maximum attention on the second [A] (position t) or on a first [B] (position i + 1);
  dyck         the next token's first bracket character closes the innermost open bracket/quote, and everything
               between is validly nested (character level, so BPE tokens such as "([" or ")," count: the paper's
               split constructions); a quote mark opens or closes by its neighbouring characters, and an
               apostrophe inside a word ("don't", "John's") is no quote (B.3);
  skip_ngram   with m the max-attention position, m < t - 1 and (tokens[m], tokens[t], tokens[t + 1]) recurs in at
               least two of the head's tokens in context with different middles;
  ngram        the span tokens[m .. t + 1] recurs in at least two of the head's tokens in context;
  unexplained  otherwise.
A head's class is the pattern explaining the largest share of its tokens in context.
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from rllc._errors import RllcError
from rllc.model.adapters import adapt
from rllc.analysis.ablation import Head, ablation_hooks, head_z_means, per_token_loss
from rllc.model.transformer import Transformer

CLASSES: tuple[str, ...] = ("induction", "dyck", "skip_ngram", "ngram", "unexplained")
_PAIRS = {")": "(", "]": "[", "}": "{"}
_QUOTES = ('"', "'")


@dataclass(frozen=True)
class TokensInContextConfig:
    """How many tokens in context to collect. Defaults are scaled for CPU; `paper()` gives Appendix B's values.

    The n-gram and skip n-gram classes depend on top_k (a pattern must recur among a head's top k), so shares at
    different scales are not comparable; every summary prints the counts and k beside the fractions.
    """

    n_samples: int = 256  # sequences the head is mean-ablated over (paper: 100,000)
    top_k: int = 100  # tokens in context kept per head (paper: 1,000)
    batch_size: int = 64
    seed: int = 0

    @classmethod
    def paper(cls) -> TokensInContextConfig:
        return cls(n_samples=100_000, top_k=1_000)


@dataclass(frozen=True)
class BracketVocab:
    """The bracket and quote characters inside each token: `chars[i]` for token id i ("" for most tokens).

    `texts` (each token's decoded text, when known) lets a quote mark be read as opening or closing from the
    characters around it (Appendix B.3); without it quotes are symmetric and any quote closes an open one.
    """

    chars: tuple[str, ...]
    texts: tuple[str, ...] | None = None

    @classmethod
    def from_tokenizer(cls, tokenizer, *, quotes: bool = True) -> BracketVocab:  # noqa: ANN102
        """From a Hugging Face tokenizer: every token's decoded text, keeping ()[]{} (and quotes if asked)."""
        return cls.from_strings([tokenizer.decode([i]) for i in range(tokenizer.get_vocab_size())], quotes=quotes)

    @classmethod
    def from_strings(cls, strings: Sequence[str], *, quotes: bool = True) -> BracketVocab:
        """From each token's text (index = token id), keeping ()[]{} and, if asked, double and single quotes."""
        keep = set("()[]{}") | (set(_QUOTES) if quotes else set())
        return cls(tuple("".join(c for c in s if c in keep) for s in strings), tuple(strings))

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple[int, int]], vocab_size: int) -> BracketVocab:
        """From (open id, close id) pairs such as a SyntheticConfig's `brackets` (up to three pairs)."""
        if len(pairs) > 3:
            raise RllcError(f"from_pairs supports up to three bracket pairs, got {len(pairs)}")
        chars = [""] * vocab_size
        for (o, c), (co, cc) in zip(pairs, ("()", "[]", "{}")):
            chars[o], chars[c] = co, cc
        return cls(tuple(chars))


def quote_role(before: str, after: str) -> str | None:
    """Whether a quote mark between the characters `before` and `after` ("" at either end of the text) opens,
    closes, or is no quote at all (Appendix B.3: decided by its neighbours).

    Returns:
        "open" (start/space/opening bracket before, a non-space after), "close" (a non-space before, a space,
        punctuation or the end after), or None: an apostrophe inside a word ("don't", "John's": letters or digits
        on both sides) or a mark with space on both sides.
    """
    b_word, a_word = before.isalnum(), after.isalnum()
    if b_word and a_word:
        return None
    b_space = before == "" or before.isspace() or before in "([{"
    a_space = after == "" or after.isspace()
    if b_space and not a_space:
        return "open"
    if not b_space and (a_space or not a_word):
        return "close"
    return None


def _bracket_events(seq: Sequence[int], brackets: BracketVocab) -> list[list[tuple[str, str]]]:
    """Per token of `seq`, its bracket characters with their role: (char, "open" | "close" | "quote")."""
    chars = [brackets.chars[t] if t < len(brackets.chars) else "" for t in seq]
    if brackets.texts is None:
        return [[(c, "quote" if c in _QUOTES else ("open" if c in "([{" else "close")) for c in cs] for cs in chars]
    texts = [brackets.texts[t] if t < len(brackets.texts) else "" for t in seq]
    full = "".join(texts)
    out, offset = [], 0
    for text in texts:
        ev = []
        for j, c in enumerate(text):
            i = offset + j
            if c in _QUOTES:
                role = quote_role(full[i - 1] if i > 0 else "", full[i + 1] if i + 1 < len(full) else "")
                if role is not None:
                    ev.append((c, role))
            elif c in "([{":
                ev.append((c, "open"))
            elif c in _PAIRS:
                ev.append((c, "close"))
        out.append(ev)
        offset += len(text)
    return out


def dyck_openers(seq: Sequence[int], brackets: BracketVocab) -> list[int]:
    """For every position t, the position of the bracket that tokens[t + 1] validly closes, else -1: len(seq).

    Character-level stack over the decoded brackets and quotes; a quote opens or closes by its neighbouring
    characters when the token texts are known (`quote_role`; an apostrophe inside a word is no quote). A
    mismatched closing bracket empties the stack (nothing before it can be validly closed across it); an
    unmatched closing quote is skipped.
    """
    out = [-1] * len(seq)
    stack: list[tuple[str, int]] = []
    for t, events in enumerate(_bracket_events(seq, brackets)):
        if t > 0 and events:  # does this token's first bracket character close the innermost open one?
            c, role = events[0]
            if role != "open" and stack and stack[-1][0] == _PAIRS.get(c, c):
                out[t - 1] = stack[-1][1]
        for c, role in events:
            if role == "open" or (role == "quote" and not (stack and stack[-1][0] == c)):
                stack.append((c, t))
            elif stack and stack[-1][0] == _PAIRS.get(c, c):
                stack.pop()
            elif c not in _QUOTES:  # a stray closing quote (e.g. the possessive "dogs'") breaks nothing
                stack.clear()
    return out


# The paper's skip n-gram families (App. B.4), recognised from the token texts: (first word, predicted word) pairs of
# correlative constructions, the particles of phrasal verbs, and what the head attends for post-quotation,
# post-parenthetical and abbreviation patterns.
_CORRELATIVES = {("more", "than"), ("less", "than"), ("rather", "than"), ("fewer", "than"), ("either", "or"),
                 ("whether", "or"), ("neither", "nor"), ("both", "and"), ("between", "and"), ("not", "but"),
                 ("as", "as"), ("so", "that"), ("such", "that"), ("the", "the")}
_PARTICLES = {"up", "out", "off", "down", "over", "back", "away", "around", "through", "along", "apart", "aside"}
SKIP_KINDS: tuple[str, ...] = ("post-quotation", "post-parenthetical", "correlative", "abbreviation",
                               "phrasal verb", "other")


def skip_ngram_kind(attended: str, current: str, predicted: str) -> str:
    """Which of the paper's skip n-gram families a skip n-gram [attended] … [current] → [predicted] belongs to.

    Args:
        attended, current, predicted: the decoded texts of tokens[m], tokens[t], tokens[t + 1].
    Returns:
        "post-quotation" (the head attends a quote mark), "post-parenthetical" (a parenthesis), "correlative"
        (e.g. more … than, either … or, neither … nor), "abbreviation" (a letter or two and a full stop, e.g. the
        "e" of "e.g."), "phrasal verb" (a word … a particle such as up/out/off), else "other".
    """
    a, c, p = attended.strip().lower(), current.strip().lower(), predicted.strip().lower()
    if any(q in attended for q in ('"', "“", "”", "'")):
        return "post-quotation"
    if any(b in attended for b in "()"):
        return "post-parenthetical"
    if (a, p) in _CORRELATIVES:
        return "correlative"
    if (a.isalpha() and len(a) <= 2 and "." in current + predicted) or (len(a) >= 2 and a[-1] == "." and
                                                                      a[:-1].isalpha() and len(a) <= 4):
        return "abbreviation"
    if a.isalpha() and p in _PARTICLES:
        return "phrasal verb"
    return "other"


def classify_tokens_in_context(
    seqs: Sequence[Sequence[int]], positions: Sequence[int], max_attn: Sequence[int], brackets: BracketVocab | None
) -> tuple[list[str], list[tuple]]:
    """Classify a head's tokens in context serially (induction → dyck → skip_ngram → ngram → unexplained).

    Args:
        seqs: token sequences (each at least t + 2 long); positions: t of each; max_attn: the head's
            max-attention key position m <= t of each.
        brackets: bracket vocabulary (None: no Dyck class).
    Returns:
        (labels, pattern keys): a label from CLASSES and a hashable key naming the pattern (e.g. the n-gram).
    """
    seqs = [list(map(int, s)) for s in seqs]
    spans = [tuple(s[m:t + 2]) for s, t, m in zip(seqs, positions, max_attn)]
    skips = [(s[m], s[t], s[t + 1]) if m < t - 1 else None for s, t, m in zip(seqs, positions, max_attn)]
    span_count = Counter(spans)
    middles: dict[tuple, set] = defaultdict(set)
    for key, span in zip(skips, spans):
        if key is not None:
            middles[key].add(span[1:-2])
    skip_count = Counter(k for k in skips if k is not None)
    labels, keys = [], []
    for s, t, m, span, skip in zip(seqs, positions, max_attn, spans, skips):
        firsts = [i for i in range(t) if s[i] == s[t] and s[i + 1] == s[t + 1]]
        if firsts and (m == t or any(m == i + 1 for i in firsts)):
            labels.append("induction"), keys.append((s[t], s[t + 1]))
        elif brackets is not None and (o := dyck_openers(s[:t + 2], brackets)[t]) >= 0:
            labels.append("dyck"), keys.append((s[o], s[t + 1]))
        elif skip is not None and skip_count[skip] >= 2 and len(middles[skip]) >= 2:
            labels.append("skip_ngram"), keys.append(skip)
        elif span_count[span] >= 2:
            labels.append("ngram"), keys.append(span)
        else:
            labels.append("unexplained"), keys.append(())
    return labels, keys


def _batches(data, config: TokensInContextConfig):  # noqa: ANN202
    """Yield token batches: slices of a tensor, or draws from a dataset's `sample_batch`."""
    if isinstance(data, torch.Tensor):
        for i in range(0, min(len(data), config.n_samples), config.batch_size):
            yield data[i:min(i + config.batch_size, config.n_samples)]
        return
    gen = torch.Generator().manual_seed(config.seed)
    for i in range(0, config.n_samples, config.batch_size):
        yield data.sample_batch(min(config.batch_size, config.n_samples - i), gen)


@torch.no_grad()
def tokens_in_context(
    model: Transformer, data, heads: Sequence[Head] | None = None, *,
    config: TokensInContextConfig = TokensInContextConfig(), brackets: BracketVocab | None = None,
    means: torch.Tensor | None = None,
) -> pd.DataFrame:
    """Each head's top-k tokens in context by mean-ablation loss increase, with attention and class.

    Args:
        data: tokens (N, T) or a dataset with `sample_batch(B, generator)`; `config.n_samples` sequences are used.
        heads: (layer, head) pairs (default: all).
        brackets: bracket vocabulary for the Dyck class (None: no Dyck class).
        means: head z means (L, H, E) for the ablation (default: over all `config.n_samples` sequences).
    Returns:
        One row per token in context: component, layer, head, rank, seq (index of the sequence among those drawn),
        loss_increase, pos, max_attn, label, pattern (key as a string), skip_kind (`skip_ngram_kind` of a skip
        n-gram when the token texts are known, else ""), tokens (list[int], the sequence up to pos + 1), attention (list[float] over keys 0..pos).
    """
    model = adapt(model)  # rllc, TransformerLens or Hugging Face: cfg, hooks, logits
    cfg = model.cfg
    heads = list(heads) if heads is not None else [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    batches = list(_batches(data, config)) if means is None else None
    if means is None:
        # Means over every sample, then a second pass for the ablations (tokens of N sequences are cheap to hold).
        total = sum(head_z_means(model, b) * len(b) for b in batches)
        means = total / sum(len(b) for b in batches)
    top: dict[Head, tuple[torch.Tensor, ...]] = {}
    seen = 0
    for batch in batches if batches is not None else _batches(data, config):
        B, T = batch.shape
        clean = per_token_loss(model, batch)  # (B, T - 1)
        seq_idx = torch.arange(seen, seen + B).repeat_interleave(T - 1)  # (B * (T - 1),)
        pos = torch.arange(T - 1).repeat(B)
        seen += B
        for head in heads:
            with model.hooks(ablation_hooks([head], "mean", means=means)):
                inc = (per_token_loss(model, batch) - clean).flatten()  # (B * (T - 1),)
            cand = (inc, batch.repeat_interleave(T - 1, dim=0), seq_idx, pos)
            if head in top:
                cand = tuple(torch.cat([a, b]) for a, b in zip(top[head], cand))
            keep = torch.topk(cand[0], min(config.top_k, len(cand[0]))).indices
            top[head] = tuple(c[keep] for c in cand)
    if not top:
        raise RllcError("tokens_in_context got no data; pass at least one sequence")
    frames = []
    for (l, h), (inc, seqs, seq_idx, pos) in top.items():
        _, cache = model.run_with_cache(seqs, [f"blocks.{l}.attn.hook_pattern"])
        rows = cache[f"blocks.{l}.attn.hook_pattern"][torch.arange(len(pos)), h, pos]  # (k, T)
        max_attn = rows.argmax(-1)
        labels, keys = classify_tokens_in_context(seqs.tolist(), pos.tolist(), max_attn.tolist(), brackets)
        texts = brackets.texts if brackets is not None else None
        kinds = [skip_ngram_kind(*(texts[int(s[i])] if int(s[i]) < len(texts) else "" for i in (m, p, p + 1)))
                 if lab == "skip_ngram" and texts is not None else ""
                 for lab, s, m, p in zip(labels, seqs, max_attn.tolist(), pos.tolist())]
        frames.append(pd.DataFrame({
            "component": f"{l}:{h}", "layer": l, "head": h, "rank": np.arange(len(pos)), "seq": seq_idx.numpy(),
            "loss_increase": inc.numpy(), "pos": pos.numpy(), "max_attn": max_attn.numpy(), "label": labels,
            "pattern": [" ".join(map(str, k)) for k in keys], "skip_kind": kinds,
            "tokens": [s[:p + 2].tolist() for s, p in zip(seqs, pos.tolist())],
            "attention": [r[:p + 1].tolist() for r, p in zip(rows, pos.tolist())],
        }))
    return pd.concat(frames, ignore_index=True)


def tokens_in_context_summary(examples: pd.DataFrame) -> pd.DataFrame:
    """Per head: fraction and number of unique patterns of each class, the unique multigrams, and the class.

    Returns:
        One row per component: n, count_{class}, frac_{class} and unique_{class} for each class (the n-gram and
        skip n-gram counts depend on k = n: a pattern counts when it recurs among the head's top k), unique_multigrams (unique
        skip n-grams + n-grams), skip_kinds (counts of the paper's skip n-gram families, "" without texts),
        max_loss_increase (nats, the head's largest ablation effect), and tic_class (the
        class with the largest share, "unexplained" excluded unless nothing else occurs).
    """
    rows = []
    for comp, g in examples.groupby("component", sort=False):
        row = {"component": comp, "n": len(g), "max_loss_increase": float(g.loss_increase.max())}
        for c in CLASSES:
            row[f"count_{c}"] = int((g.label == c).sum())
            row[f"frac_{c}"] = float((g.label == c).mean())
            row[f"unique_{c}"] = int(g.pattern[g.label == c].nunique()) if c != "unexplained" else 0
        row["unique_multigrams"] = row["unique_skip_ngram"] + row["unique_ngram"]
        kinds = g.skip_kind[g.label == "skip_ngram"] if "skip_kind" in g else pd.Series([], dtype=str)
        kinds = kinds[kinds != ""].value_counts()
        row["skip_kinds"] = ", ".join(f"{k} {n}" for k, n in kinds.items())
        explained = {c: row[f"frac_{c}"] for c in CLASSES[:-1]}
        best = max(explained, key=explained.get)
        row["tic_class"] = best if explained[best] > 0 else "unexplained"
        rows.append(row)
    return pd.DataFrame(rows)


def render_tokens_in_context_html(
    examples: pd.DataFrame, path: str | Path, decode: Callable[[int], str], *, per_head: int = 20, title: str = ""
) -> Path:
    """Write an HTML page: per head, its class fractions and top examples, each context with the head's
    attention as red highlight and the token to predict boxed after an arrow."""
    path = Path(path)
    summary = tokens_in_context_summary(examples).set_index("component")
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title or 'tokens in context')}</title>",
             "<style>body{font-family:sans-serif;font-size:13px} .ex{font-family:monospace;white-space:pre-wrap;"
             "margin:4px 0;padding:4px;border-bottom:1px solid #ddd} .nx{border:1px solid #000;padding:0 2px}"
             " .lab{color:#fff;background:#555;padding:0 4px;margin-right:6px;border-radius:3px}</style>",
             f"<h1>{html.escape(title or 'tokens in context')}</h1>"]
    for comp, g in examples.groupby("component", sort=False):
        s = summary.loc[comp]
        fracs = ", ".join(f"{c} {s[f'frac_{c}']:.0%} ({int(s[f'count_{c}'])} of {int(s.n)})" for c in CLASSES)
        kinds = f"; skip n-grams by family: {html.escape(s.skip_kinds)}" if s.skip_kinds else ""
        parts.append(f"<h2>head {comp}: {s.tic_class}</h2><p>top {int(s.n)} tokens in context: {fracs}; "
                     f"{int(s.unique_multigrams)} unique multigrams{kinds}</p>")
        for _, r in g.head(per_head).iterrows():
            att = np.asarray(r.attention)
            scale = att.max() if att.max() > 0 else 1.0
            toks = "".join(f"<span style='background:rgba(255,0,0,{a / scale:.2f})' title='{a:.3f}'>"
                           f"{html.escape(decode(t))}</span>" for t, a in zip(r.tokens[:-1], att))
            parts.append(f"<div class='ex'><span class='lab'>{r.label}</span>{toks} → "
                         f"<span class='nx'>{html.escape(decode(r.tokens[-1]))}</span>"
                         f" <small>(+{r.loss_increase:.2f} nats)</small></div>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
