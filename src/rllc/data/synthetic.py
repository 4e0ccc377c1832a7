"""Seeded synthetic token streams with per-position pattern labels.

Each sequence is drawn from one *family* (``ngram``, ``skipgram``, ``induction``, ``repeat``, ``dyck``). Label
convention: ``labels[t]`` flags the prediction made **at** position ``t``, i.e. of ``tokens[t + 1]`` (the same
alignment as next-token logits), so ``labels[:, -1]`` is always 0. Flags are :class:`Pattern` bits.

Two seeds are involved: ``SyntheticConfig.seed`` fixes the "world" (n-gram transition tables, skip-gram rules),
and the ``seed`` given to :func:`generate` picks the samples. Sample ``i`` depends only on
``(seed, i)`` (via ``numpy.random.SeedSequence``), so datasets can index samples without storing them.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field

import numpy as np
import torch

from rllc._errors import RllcError

FAMILIES: tuple[str, ...] = ("ngram", "skipgram", "induction", "repeat", "dyck")
_MASK64 = (1 << 64) - 1
_TRIGRAM_HASH = 1_000_003


class Pattern(enum.IntFlag):
    """Bit flags for ``SyntheticBatch.labels``: which pattern explains the next-token prediction."""

    NONE = 0
    NGRAM = 1  # next token drawn from the sparse bigram/trigram table of the current context
    SKIPGRAM = 2  # current token B with an earlier A: next token is the rule's C
    INDUCTION = 4  # current token occurred earlier; next token equals the token that followed it
    DYCK = 8  # next token closes the innermost open bracket
    REPEAT = 16  # inside a periodic sequence (set together with INDUCTION)
    NESTED = 32  # with DYCK: the bracket being closed sits inside another open bracket


@dataclass(frozen=True)
class SyntheticConfig:
    """What the synthetic generator produces.

    Attributes:
        families: family names to draw from (subset of ``FAMILIES``).
        weights: sampling weight per family (same length as ``families``); None means uniform.
        vocab_size: token ids are drawn from ``[low, vocab_size)``.
        low: smallest id used (ids below it, e.g. EOS, never appear).
        period_range: inclusive (min, max) span length P of the ``repeat`` family.
        bracket_ids: (open, close) id pairs for ``dyck``; None means ``(low, low+1), (low+2, low+3), (low+4,
            low+5)``. Bracket ids appear only in ``dyck`` samples.
        seed: fixes the n-gram tables and skip-gram rules (the data distribution), not the samples.
        ngram_branching: successors per n-gram context (Zipf-weighted).
        zipf_exponent: exponent s of the successor weights ``1 / rank**s``.
        ngram_noise: probability that an n-gram step is replaced by a uniform token (labelled 0).
        n_skip_rules: number of ``A … B -> C`` rules; four A's share each B.
        skip_gap: inclusive (min, max) distance from A to B.
        induction_spans: copied span lengths for the ``induction`` family.
        dyck_nested_fraction: share of ``dyck`` samples that nest brackets (the rest are sequential).
        dyck_max_depth: maximum nesting depth of nested ``dyck`` samples.
    """

    families: tuple[str, ...] = FAMILIES
    weights: tuple[float, ...] | None = None
    vocab_size: int = 5000
    low: int = 1
    period_range: tuple[int, int] = (8, 32)
    bracket_ids: tuple[tuple[int, int], ...] | None = None
    seed: int = 0
    ngram_branching: int = 8
    zipf_exponent: float = 1.2
    ngram_noise: float = 0.1
    n_skip_rules: int = 32
    skip_gap: tuple[int, int] = (2, 16)
    induction_spans: tuple[int, ...] = (2, 4, 8, 16)
    dyck_nested_fraction: float = 0.5
    dyck_max_depth: int = 8

    def __post_init__(self) -> None:
        # Accept lists from callers but store tuples so the config stays hashable (it keys a cache).
        if isinstance(self.families, str):
            object.__setattr__(self, "families", (self.families,))
        for name in ("families", "weights", "period_range", "skip_gap", "induction_spans"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if self.bracket_ids is not None:
            object.__setattr__(self, "bracket_ids", tuple((int(a), int(b)) for a, b in self.bracket_ids))
        bad = [f for f in self.families if f not in FAMILIES]
        if bad or not self.families:
            raise RllcError(f"unknown synthetic family {bad or '(none)'}; valid: {', '.join(FAMILIES)}")
        if self.weights is not None and (
            len(self.weights) != len(self.families) or min(self.weights) < 0 or sum(self.weights) <= 0
        ):
            raise RllcError(f"synthetic weights {self.weights} must be >= 0, sum > 0, one per family {self.families}")
        lo, hi = self.period_range
        if not 1 <= lo <= hi:
            raise RllcError(f"period_range {self.period_range} must satisfy 1 <= min <= max")
        if not 1 <= self.skip_gap[0] <= self.skip_gap[1]:
            raise RllcError(f"skip_gap {self.skip_gap} must satisfy 1 <= min <= max")
        if not self.induction_spans or min(self.induction_spans) < 2:
            raise RllcError(f"induction_spans {self.induction_spans} must be non-empty, each >= 2")
        if self.low < 0 or self.vocab_size - self.low < 2 * self.n_skip_rules + self.n_skip_rules // 4 + 32:
            raise RllcError(
                f"synthetic vocab [low={self.low}, vocab_size={self.vocab_size}) is too small; "
                f"need at least {2 * self.n_skip_rules + self.n_skip_rules // 4 + 32} ids"
            )
        for a, b in self.brackets:
            if not (self.low <= a < self.vocab_size and self.low <= b < self.vocab_size) or a == b:
                raise RllcError(f"bracket ids {(a, b)} must be distinct and in [{self.low}, {self.vocab_size})")

    @property
    def brackets(self) -> tuple[tuple[int, int], ...]:
        """Resolved (open, close) id pairs."""
        if self.bracket_ids is not None:
            return self.bracket_ids
        return tuple((self.low + 2 * k, self.low + 2 * k + 1) for k in range(3))

    @property
    def family_probs(self) -> np.ndarray:
        """Normalised family probabilities, shape (len(families),)."""
        w = np.ones(len(self.families)) if self.weights is None else np.asarray(self.weights, dtype=float)
        return w / w.sum()


@dataclass(frozen=True)
class SyntheticBatch:
    """Synthetic samples. tokens: int64 (N, n_ctx); labels: int32 (N, n_ctx) of Pattern bits; family: int64 (N,)
    index into ``FAMILIES``."""

    tokens: torch.Tensor
    labels: torch.Tensor
    family: torch.Tensor


@dataclass(frozen=True)
class PatternTables:
    """The fixed "world" of a config: n-gram successor tables, skip-gram rules and token pools.

    Attributes:
        bigram: (vocab_size, K) successors of each token, most likely first.
        trigram: (vocab_size, K) successors of hashed context rows (see :func:`ngram_successors`).
        zipf_cdf: (K,) cumulative successor probabilities.
        skip_a, skip_b, skip_c: (n_rules,) rule tokens: A … B -> C.
        pool: ids usable as ordinary tokens (``[low, vocab_size)`` minus brackets).
        skip_noise: ``pool`` minus all skip-gram rule tokens.
    """

    bigram: np.ndarray
    trigram: np.ndarray
    zipf_cdf: np.ndarray
    skip_a: np.ndarray
    skip_b: np.ndarray
    skip_c: np.ndarray
    pool: np.ndarray
    skip_noise: np.ndarray
    bigram_rows: list = field(repr=False)
    trigram_rows: list = field(repr=False)


@functools.lru_cache(maxsize=16)
def pattern_tables(config: SyntheticConfig) -> PatternTables:
    """Build (once per config) the n-gram tables and skip-gram rules fixed by ``config.seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed & _MASK64, 0x5EED]))
    bracket_set = {i for pair in config.brackets for i in pair}
    pool = np.array([i for i in range(config.low, config.vocab_size) if i not in bracket_set], dtype=np.int64)
    k = config.ngram_branching
    # Sparse random transitions: each context gets k successors, ranked for the Zipf weights (a rare repeated
    # successor just merges two ranks' probability, which is harmless).
    bigram = pool[rng.integers(0, len(pool), (config.vocab_size, k))]
    trigram = pool[rng.integers(0, len(pool), (config.vocab_size, k))]
    weights = 1.0 / np.arange(1, k + 1) ** config.zipf_exponent
    cdf = np.cumsum(weights / weights.sum())
    cdf[-1] = 1.0
    n_rules = config.n_skip_rules
    n_b = max(1, n_rules // 4)
    # A's, B's and C's are disjoint and kept out of the noise so every planted rule is unambiguous.
    rule_tokens = rng.choice(pool, size=2 * n_rules + n_b, replace=False)
    skip_a, skip_c, b_tokens = rule_tokens[:n_rules], rule_tokens[n_rules:2 * n_rules], rule_tokens[2 * n_rules:]
    skip_b = b_tokens[np.arange(n_rules) % n_b]
    skip_noise = np.setdiff1d(pool, rule_tokens)
    return PatternTables(bigram, trigram, cdf, skip_a, skip_b, skip_c, pool, skip_noise,
                         bigram.tolist(), trigram.tolist())


def trigram_row(prev: int, cur: int, vocab_size: int) -> int:
    """Row of ``PatternTables.trigram`` used for context (prev, cur)."""
    return (prev * _TRIGRAM_HASH + cur) % vocab_size


def ngram_successors(tables: PatternTables, prev: int | None, cur: int, vocab_size: int) -> set[int]:
    """Tokens the n-gram family can emit after ``cur`` (bigram) or after ``(prev, cur)`` (trigram)."""
    out = set(tables.bigram_rows[cur])
    if prev is not None:
        out |= set(tables.trigram_rows[trigram_row(prev, cur, vocab_size)])
    return out


def _gen_ngram(cfg: SyntheticConfig, t: PatternTables, rng: np.random.Generator, n: int):
    order = int(rng.integers(2, 4))
    ranks = np.searchsorted(t.zipf_cdf, rng.random(n), side="right").tolist()
    noisy = (rng.random(n) < cfg.ngram_noise).tolist()
    noise_tok = t.pool[rng.integers(0, len(t.pool), n)].tolist()
    toks = [noise_tok[0]]
    labels = np.zeros(n, dtype=np.int32)
    flag = int(Pattern.NGRAM)
    # Sequential by nature (each step depends on the last); plain lists keep the loop fast.
    for i in range(1, n):
        if noisy[i]:
            toks.append(noise_tok[i])
            continue
        if order == 3 and i >= 2:
            row = t.trigram_rows[(toks[i - 2] * _TRIGRAM_HASH + toks[i - 1]) % cfg.vocab_size]
        else:
            row = t.bigram_rows[toks[i - 1]]
        toks.append(row[ranks[i]])
        labels[i - 1] = flag
    return np.asarray(toks, dtype=np.int64), labels


def _gen_skipgram(cfg: SyntheticConfig, t: PatternTables, rng: np.random.Generator, n: int):
    toks = t.skip_noise[rng.integers(0, len(t.skip_noise), n)]
    labels = np.zeros(n, dtype=np.int32)
    gmin, gmax = cfg.skip_gap
    pos = int(rng.integers(0, 4))
    # Instances are planted left to right without overlap, so the most recent A before each B is its own A.
    while True:
        gap = int(rng.integers(gmin, gmax + 1))
        if pos + gap + 1 >= n:
            break
        r = int(rng.integers(0, len(t.skip_a)))
        toks[pos], toks[pos + gap], toks[pos + gap + 1] = t.skip_a[r], t.skip_b[r], t.skip_c[r]
        labels[pos + gap] = Pattern.SKIPGRAM
        pos += gap + 2 + int(rng.integers(0, 8))
    return toks, labels


def _gen_induction(cfg: SyntheticConfig, t: PatternTables, rng: np.random.Generator, n: int):
    toks = t.pool[rng.integers(0, len(t.pool), n)]
    labels = np.zeros(n, dtype=np.int32)
    used = np.zeros(n, dtype=bool)
    spans = np.asarray(cfg.induction_spans)
    for _ in range(max(1, n // 16)):
        span = int(spans[rng.integers(0, len(spans))])
        if 2 * span > n:
            continue
        src = int(rng.integers(0, n - 2 * span + 1))
        dst = int(rng.integers(src + span, n - span + 1))
        # Copies never touch an earlier source or destination, so every planted copy stays intact.
        if used[src:src + span].any() or used[dst:dst + span].any():
            continue
        toks[dst:dst + span] = toks[src:src + span]
        used[src:src + span] = used[dst:dst + span] = True
        labels[dst:dst + span - 1] |= int(Pattern.INDUCTION)
    return toks, labels


def _gen_repeat(cfg: SyntheticConfig, t: PatternTables, rng: np.random.Generator, n: int):
    lo, hi = cfg.period_range
    period = min(int(rng.integers(lo, hi + 1)), max(1, n // 2))
    # Distinct tokens inside the span make every copy unambiguous for an induction head.
    span = rng.choice(t.pool, size=period, replace=period > len(t.pool))
    toks = np.resize(span, n).astype(np.int64)
    labels = np.zeros(n, dtype=np.int32)
    labels[period:n - 1] = Pattern.INDUCTION | Pattern.REPEAT
    return toks, labels


def _gen_dyck(cfg: SyntheticConfig, t: PatternTables, rng: np.random.Generator, n: int, nested: bool):
    pairs = cfg.brackets
    filler = t.pool[rng.integers(0, len(t.pool), n)].tolist()
    kinds = rng.integers(0, len(pairs), n).tolist()
    coins = rng.random(n).tolist()
    max_depth = cfg.dyck_max_depth if nested else 1
    toks: list[int] = []
    labels = np.zeros(n, dtype=np.int32)
    stack: list[int] = []
    for i in range(n):
        c = coins[i]
        can_open = len(stack) < max_depth and n - i > len(stack) + 1  # leave room to close
        if stack and (n - i <= len(stack) or c < 0.25):
            kind = stack.pop()
            toks.append(pairs[kind][1])
            if i > 0:
                labels[i - 1] = Pattern.DYCK | (Pattern.NESTED if stack else 0)
        elif can_open and 0.25 <= c < 0.5:
            stack.append(kinds[i])
            toks.append(pairs[kinds[i]][0])
        else:
            toks.append(filler[i])
    return np.asarray(toks, dtype=np.int64), labels


def generate_one(config: SyntheticConfig, index: int, n_ctx: int, *, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Generate sample ``index`` of the stream ``seed``.

    Returns:
        (tokens int64 (n_ctx,), labels int32 (n_ctx,), family index into ``FAMILIES``).
    """
    if n_ctx < 2:
        raise RllcError(f"n_ctx={n_ctx} too short for synthetic sequences; use n_ctx >= 2")
    tables = pattern_tables(config)
    rng = np.random.default_rng(np.random.SeedSequence([seed & _MASK64, index & _MASK64]))
    fam = config.families[int(rng.choice(len(config.families), p=config.family_probs))]
    if fam == "ngram":
        toks, labels = _gen_ngram(config, tables, rng, n_ctx)
    elif fam == "skipgram":
        toks, labels = _gen_skipgram(config, tables, rng, n_ctx)
    elif fam == "induction":
        toks, labels = _gen_induction(config, tables, rng, n_ctx)
    elif fam == "repeat":
        toks, labels = _gen_repeat(config, tables, rng, n_ctx)
    else:
        toks, labels = _gen_dyck(config, tables, rng, n_ctx, nested=bool(rng.random() < config.dyck_nested_fraction))
    return toks, labels, FAMILIES.index(fam)


def generate(config: SyntheticConfig, n_sequences: int, n_ctx: int, *, seed: int, start: int = 0) -> SyntheticBatch:
    """Generate samples ``start .. start + n_sequences - 1`` of the stream ``seed``.

    Returns:
        SyntheticBatch with tokens (n_sequences, n_ctx) int64, labels (n_sequences, n_ctx) int32, family (N,).
    """
    return generate_indices(config, range(start, start + n_sequences), n_ctx, seed=seed)


def generate_indices(config: SyntheticConfig, indices, n_ctx: int, *, seed: int) -> SyntheticBatch:
    """Generate the samples with the given indices (any iterable of ints); shapes as in :func:`generate`."""
    rows = [generate_one(config, int(i), n_ctx, seed=seed) for i in indices]
    if not rows:
        empty = torch.zeros((0, n_ctx), dtype=torch.int64)
        return SyntheticBatch(empty, empty.to(torch.int32), torch.zeros(0, dtype=torch.int64))
    return SyntheticBatch(
        tokens=torch.from_numpy(np.stack([r[0] for r in rows])),
        labels=torch.from_numpy(np.stack([r[1] for r in rows])),
        family=torch.tensor([r[2] for r in rows], dtype=torch.int64),
    )
