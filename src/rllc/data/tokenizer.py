"""Byte-level BPE tokeniser (Hugging Face ``tokenizers``): train, save, load, fingerprint.

Every one of the 256 byte tokens is in the vocabulary, so any text round-trips exactly:
``tok.decode(tok.encode(text).ids) == text``. The end-of-text token ``<|endoftext|>`` has id 0.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from rllc._errors import RllcError

EOS_TOKEN = "<|endoftext|>"
BRACKET_PAIRS = ("()", "[]", "{}")


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 5000, *, special_tokens: tuple[str, ...] = (EOS_TOKEN,)
) -> Tokenizer:
    """Train a byte-level BPE tokeniser.

    Args:
        texts: training documents (streamed; never held all at once by this function).
        vocab_size: final vocabulary size including the 256 byte tokens and the special tokens.
        special_tokens: added first, so ``<|endoftext|>`` gets id 0.
    Returns:
        A ``tokenizers.Tokenizer`` whose ``decode(encode(s).ids)`` returns ``s`` for any string.
    """
    minimum = 256 + len(special_tokens)
    if vocab_size < minimum:
        raise RllcError(f"vocab_size={vocab_size} is below {minimum} (256 bytes + special tokens); raise it")
    if vocab_size > 65536:
        raise RllcError(f"vocab_size={vocab_size} exceeds 65536; token caches store uint16 ids")
    tok = Tokenizer(models.BPE())
    # No regex-free splitting and no prefix space: the pre-tokeniser must not alter the text, only split it.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, path: str | Path) -> Path:
    """Write ``tok`` as JSON to ``path`` (parent directories created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokeniser JSON written by :func:`save_tokenizer`; RllcError if missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise RllcError(f"tokenizer file {path} not found; train one first or fix the path")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises a bare Exception for any parse error
        raise RllcError(f"tokenizer file {path} is corrupt ({str(exc).splitlines()[0]}); retrain it") from None


def tokenizer_id(tok: Tokenizer) -> str:
    """Return the first 16 hex digits of the sha256 of the tokeniser's JSON (its provenance id)."""
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()[:16]


def eos_id(tok: Tokenizer) -> int:
    """Return the id of ``<|endoftext|>``; RllcError if the tokeniser lacks it."""
    i = tok.token_to_id(EOS_TOKEN)
    if i is None:
        raise RllcError(f"tokenizer has no {EOS_TOKEN!r} token; train it with rllc.data.train_tokenizer")
    return i


def n_special_tokens(tok: Tokenizer) -> int:
    """Return 1 + the largest special-token id (ids below it are never used as synthetic tokens)."""
    specials = [i for i, t in tok.get_added_tokens_decoder().items() if t.special]
    return max(specials) + 1 if specials else 0


def bracket_ids(tok: Tokenizer) -> tuple[tuple[int, int], ...]:
    """Return the (open, close) token ids of ``()``, ``[]`` and ``{}`` (single byte tokens, always present)."""
    pairs = []
    for pair in BRACKET_PAIRS:
        ids = (tok.token_to_id(pair[0]), tok.token_to_id(pair[1]))
        if None in ids:
            raise RllcError(f"tokenizer lacks bracket tokens {pair!r}; use a byte-level tokenizer")
        pairs.append(ids)
    return tuple(pairs)
