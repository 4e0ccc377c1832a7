"""Token caches, window/synthetic/mixture datasets, and the data-spec mini-language.

Data spec grammar: comma-separated parts ``SOURCE[*WEIGHT]``. SOURCE is ``code``, ``prose``, ``synthetic``,
``synthetic.FAMILY``, ``pretrain`` (= ``DEFAULT_PRETRAIN``), or a user text source (directory, glob, file,
``FILE.jsonl[:FIELD]``, ``hf:NAME[:CONFIG][/SPLIT]``). Weights default to 1 and are normalised to sum to 1.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import Dataset

from rllc._errors import RllcError, is_writable, writing
from rllc.data.corpora import BUILTIN_SOURCES, is_user_source, iter_documents, source_fingerprint
from rllc.data.synthetic import FAMILIES, SyntheticBatch, SyntheticConfig, generate_indices, generate_one
from rllc.data.tokenizer import bracket_ids, eos_id, n_special_tokens, tokenizer_id

DEFAULT_PRETRAIN = "prose*0.35,code*0.15,synthetic.repeat*0.5"
VAL_FRACTION = 0.05
SYNTHETIC_LENGTH = 100_000
CACHE_VERSION = 1
# Fewer documents than this: the validation split is the stream's last tokens (within a document), since a
# hash over a handful of documents may put all of them, or none, in validation.
MIN_DOCS_FOR_DOC_SPLIT = 20
_ENCODE_BATCH_DOCS = 256
_ENCODE_BATCH_CHARS = 4 << 20
_VAL_SEED_SALT = 0x7A11D


# ----------------------------------------------------------------------------------------------------- caches


def is_val_doc(index: int) -> bool:
    """Return True if document ``index`` belongs to the validation split (hash-based, seed-independent, ~5%)."""
    digest = hashlib.blake2b(index.to_bytes(8, "little"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 10_000 < VAL_FRACTION * 10_000


def cache_paths(source: str, tokenizer: Tokenizer, cache_dir: str | Path) -> tuple[Path, Path]:
    """Return the (``.bin``, ``.json``) cache paths of ``source`` tokenised by ``tokenizer``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", source).strip("_")[:60] or "source"
    stem = f"{safe}-{tokenizer_id(tokenizer)}-{source_fingerprint(source)}"
    cache_dir = Path(cache_dir)
    return cache_dir / f"{stem}.bin", cache_dir / f"{stem}.json"


def _read_meta(bin_path: Path, meta_path: Path) -> dict | None:
    """The sidecar is written last, so a cache counts only if it exists, parses and matches the .bin size."""
    try:
        meta = json.loads(meta_path.read_text())
        ok = meta.get("version") == CACHE_VERSION and bin_path.stat().st_size == 2 * meta["n_tokens"]
        # caches of tiny corpora written before the split within documents existed are rebuilt
        ok = ok and (meta["n_docs"] >= MIN_DOCS_FOR_DOC_SPLIT or meta.get("split_by") == "tokens")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return meta if ok else None


def _val_tokens(n: int) -> int:
    """Validation tokens cut from the end of a small corpus of n tokens: 5%, but at least min(n/4, 1024)."""
    return max(math.ceil(VAL_FRACTION * n), min(n // 4, 1024)) if n >= 2 else 0


def _remove_orphans(cache_dir: Path) -> None:
    """Delete temporary files left by tokenisations that were killed (their process is gone)."""
    for tmp in cache_dir.glob(".tmp-*"):
        m = re.match(r"\.tmp-(\d+)-", tmp.name)
        if m:
            try:
                os.kill(int(m.group(1)), 0)
                continue  # its writer still runs
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        elif time.time() - tmp.stat().st_mtime < 24 * 3600:  # an older rllc's name without a pid: a day's grace
            continue
        tmp.unlink(missing_ok=True)


def _batches(docs: Iterator[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    chars = 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc)
        if len(batch) >= _ENCODE_BATCH_DOCS or chars >= _ENCODE_BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _write_cache(source: str, tokenizer: Tokenizer, bin_path: Path, meta_path: Path) -> dict:
    with writing(bin_path, what="token cache"):
        return _write_cache_files(source, tokenizer, bin_path, meta_path)


def _write_cache_files(source: str, tokenizer: Tokenizer, bin_path: Path, meta_path: Path) -> dict:
    eos = eos_id(tokenizer)
    counts = {"train": [0, 0], "val": [0, 0]}  # [n_tokens, n_docs]
    last_train_doc: np.ndarray | None = None
    split_by = "documents"
    prefix = f".tmp-{os.getpid()}-"  # the pid tells a later run whether the writer is still alive
    fd_t, tmp_train = tempfile.mkstemp(dir=bin_path.parent, prefix=prefix, suffix=".train")
    fd_v, tmp_val = tempfile.mkstemp(dir=bin_path.parent, prefix=prefix, suffix=".val")
    try:
        with os.fdopen(fd_t, "wb") as ft, os.fdopen(fd_v, "wb") as fv:
            index = 0
            for batch in _batches(iter_documents(source)):
                for enc in tokenizer.encode_batch(batch, add_special_tokens=False):
                    ids = np.empty(len(enc.ids) + 1, dtype=np.uint16)
                    ids[:-1] = enc.ids
                    ids[-1] = eos  # EOS after every document separates documents in the stream
                    split = "val" if is_val_doc(index) else "train"
                    (fv if split == "val" else ft).write(ids.tobytes())
                    counts[split][0] += len(ids)
                    counts[split][1] += 1
                    if split == "train":
                        last_train_doc = ids
                    index += 1
            n_docs = counts["train"][1] + counts["val"][1]
            if 0 < n_docs < MIN_DOCS_FOR_DOC_SPLIT:
                # Too few documents to split by document: the last tokens of the stream are the validation split.
                ft.flush()
                fv.flush()
                stream = np.concatenate([np.fromfile(t, dtype=np.uint16) for t in (tmp_train, tmp_val)])
                k = _val_tokens(len(stream))
                ft.seek(0)
                ft.truncate(0)
                ft.write(stream[: len(stream) - k].tobytes())
                fv.seek(0)
                fv.truncate(0)
                fv.write(stream[len(stream) - k :].tobytes())
                counts = {"train": [len(stream) - k, n_docs], "val": [k, 1]}  # the last document is split
                split_by = "tokens"
            elif counts["val"][1] == 0 and counts["train"][1] >= 2:
                # Tiny corpora can miss the 5% draw entirely: move the last training document to validation.
                ft.flush()
                ft.truncate(2 * (counts["train"][0] - len(last_train_doc)))
                fv.write(last_train_doc.tobytes())
                counts["train"] = [counts["train"][0] - len(last_train_doc), counts["train"][1] - 1]
                counts["val"] = [len(last_train_doc), 1]
            ft.seek(0, os.SEEK_END)
            fv.flush()
            with open(tmp_val, "rb") as src:
                while chunk := src.read(1 << 24):
                    ft.write(chunk)
            ft.flush()
            os.fsync(ft.fileno())
        if counts["train"][1] + counts["val"][1] == 0:
            raise RllcError(f"text source {source!r} has no documents; give a non-empty corpus")
        meta = {
            "version": CACHE_VERSION,
            "source": source,
            "tokenizer_id": tokenizer_id(tokenizer),
            "source_fingerprint": source_fingerprint(source),
            "vocab_size": tokenizer.get_vocab_size(),
            "eos_id": eos,
            "n_tokens": counts["train"][0] + counts["val"][0],
            "n_docs": n_docs,
            "train": {"offset": 0, "n_tokens": counts["train"][0], "n_docs": counts["train"][1]},
            "val": {"offset": counts["train"][0], "n_tokens": counts["val"][0], "n_docs": counts["val"][1]},
            "val_fraction": VAL_FRACTION,
            "split_by": split_by,
        }
        os.chmod(tmp_train, 0o644)  # mkstemp makes 0600 files; caches may be shared between users
        os.replace(tmp_train, bin_path)
        fd_m, tmp_meta = tempfile.mkstemp(dir=bin_path.parent, prefix=prefix, suffix=".json")
        with os.fdopen(fd_m, "w") as fm:
            json.dump(meta, fm, indent=1)
        os.chmod(tmp_meta, 0o644)
        os.replace(tmp_meta, meta_path)
        return meta
    finally:
        for tmp in (tmp_train, tmp_val):
            if os.path.exists(tmp):
                os.unlink(tmp)


def tokenize_to_cache(
    source: str, tokenizer: Tokenizer, cache_dir: str | Path, *, split: str = "train"
) -> np.memmap:
    """Tokenise a text source once into a uint16 cache and return one split of it as a read-only memmap.

    The cache is ``{cache_dir}/{source}-{tokenizer_id}-{fingerprint}.bin`` (train tokens, then validation
    tokens) plus a ``.json`` sidecar (n_tokens, n_docs, offsets of each split, source, tokenizer id). Documents
    are streamed, encoded in batches and separated by EOS; ~5% of documents (by a hash of their index) form the
    validation split. Both files are written via temp file + ``os.replace``; an existing valid cache is reused.

    Args:
        source: a text source name or path spec (see :func:`rllc.data.iter_documents`).
        split: ``"train"`` or ``"val"``.
    Returns:
        uint16 memmap, shape (n_tokens_of_split,).
    """
    if split not in ("train", "val"):
        raise RllcError(f"split {split!r} must be 'train' or 'val'")
    if tokenizer.get_vocab_size() > 65536:
        raise RllcError(f"tokenizer vocab size {tokenizer.get_vocab_size()} > 65536 does not fit uint16 caches")
    cache_dir = Path(cache_dir)
    bin_path, meta_path = cache_paths(source, tokenizer, cache_dir)
    meta = _read_meta(bin_path, meta_path)
    if meta is None:
        if not is_writable(cache_dir):
            # A read-only run directory: tokenise into a private temporary folder (removed at exit), so that
            # commands that only read still work.
            cache_dir = _private_cache_dir()
            bin_path, meta_path = cache_paths(source, tokenizer, cache_dir)
            meta = _read_meta(bin_path, meta_path)
        else:
            with writing(cache_dir, what="token cache folder"):
                cache_dir.mkdir(parents=True, exist_ok=True)
            _remove_orphans(cache_dir)
        meta = meta or _write_cache(source, tokenizer, bin_path, meta_path)
    part = meta[split]
    if part["n_tokens"] == 0:
        return np.zeros(0, dtype=np.uint16)  # np.memmap refuses empty files/ranges
    return np.memmap(bin_path, dtype=np.uint16, mode="r", offset=2 * part["offset"], shape=(part["n_tokens"],))


_PRIVATE_CACHE: list[Path] = []


def _private_cache_dir() -> Path:
    if not _PRIVATE_CACHE:
        import atexit
        import shutil

        _PRIVATE_CACHE.append(Path(tempfile.mkdtemp(prefix="rllc-cache-")))
        atexit.register(shutil.rmtree, _PRIVATE_CACHE[0], True)
    return _PRIVATE_CACHE[0]


def cache_metadata(source: str, tokenizer: Tokenizer, cache_dir: str | Path) -> dict:
    """Return the sidecar metadata of a cache built by :func:`tokenize_to_cache` (building it if needed)."""
    tokenize_to_cache(source, tokenizer, cache_dir)
    return json.loads(cache_paths(source, tokenizer, cache_dir)[1].read_text())


# --------------------------------------------------------------------------------------------------- datasets


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 0:
        raise RllcError(f"batch_size={batch_size} must be >= 0")


class WindowDataset(Dataset):
    """Non-overlapping windows of ``n_ctx`` tokens (stride ``n_ctx``) over a token stream.

    Args:
        tokens: 1-D integer array (e.g. a uint16 memmap from :func:`tokenize_to_cache`).
        n_ctx: window length.
        name: used in error messages.
        vocab_size: if given, every sampled batch is checked to hold ids below it (a damaged cache file).
    """

    def __init__(self, tokens: np.ndarray, n_ctx: int, *, name: str = "token stream",
                 vocab_size: int | None = None) -> None:
        if n_ctx < 1:
            raise RllcError(f"n_ctx={n_ctx} must be >= 1")
        if len(tokens) < n_ctx:
            raise RllcError(
                f"{name} has {len(tokens)} tokens, fewer than n_ctx={n_ctx}; use a bigger corpus or smaller n_ctx"
            )
        self.tokens, self.n_ctx, self.name, self.vocab_size = tokens, n_ctx, name, vocab_size

    def __getstate__(self) -> dict:
        # Pickling a memmap copies its data; DataLoader workers (spawn) would each get a full copy. A memmap
        # opened straight from a file (its base is the mmap itself, not a slice) is re-opened by reference.
        state = dict(self.__dict__)
        t = self.tokens
        if isinstance(t, np.memmap) and isinstance(t.base, mmap.mmap) and t.filename:
            state["tokens"] = ("memmap", t.filename, t.offset, t.shape, t.dtype.str)
        return state

    def __setstate__(self, state: dict) -> None:
        t = state["tokens"]
        if isinstance(t, tuple) and t[0] == "memmap":
            _, filename, offset, shape, dtype = t
            state["tokens"] = np.memmap(filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape)
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.tokens) // self.n_ctx

    def __getitem__(self, index: int) -> torch.Tensor:
        """Return window ``index`` as int64, shape (n_ctx,)."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"window {index} out of range for {n} windows")
        start = (index % n) * self.n_ctx
        return torch.from_numpy(np.asarray(self.tokens[start:start + self.n_ctx], dtype=np.int64))

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Return ``batch_size`` windows drawn uniformly with replacement; int64 (B, n_ctx)."""
        _check_batch_size(batch_size)
        idx = torch.randint(len(self), (batch_size,), generator=generator).numpy()
        # One fancy-index gather from the memmap instead of B separate slices.
        rows = (idx[:, None] * self.n_ctx + np.arange(self.n_ctx)[None, :])
        ids = np.asarray(self.tokens[rows.ravel()], dtype=np.int64).reshape(batch_size, self.n_ctx)
        if self.vocab_size is not None and ids.size and ids.max() >= self.vocab_size:
            where = getattr(self.tokens, "filename", None) or self.name
            raise RllcError(f"token cache {where} holds id {int(ids.max())}, beyond the tokenizer's "
                            f"{self.vocab_size} tokens: the cache is damaged; delete it (and its .json) and re-run")
        return torch.from_numpy(ids)


class SyntheticDataset(Dataset):
    """Indexable view of a synthetic stream: item ``i`` is generated on demand from ``(seed, i)``.

    Args:
        config: what to generate.
        n_ctx: sequence length.
        length: number of distinct samples exposed (``__len__``).
        seed: stream seed (sample selection; the distribution is fixed by ``config.seed``).
    """

    def __init__(self, config: SyntheticConfig, n_ctx: int, *, length: int = SYNTHETIC_LENGTH, seed: int = 0) -> None:
        if length < 1:
            raise RllcError(f"synthetic dataset length={length} must be >= 1")
        if n_ctx < 2:
            raise RllcError(f"n_ctx={n_ctx} too short for synthetic sequences; use n_ctx >= 2")
        self.config, self.n_ctx, self.length, self.seed = config, n_ctx, length, seed

    def __len__(self) -> int:
        return self.length

    def _check(self, index: int) -> int:
        if not -self.length <= index < self.length:
            raise IndexError(f"sample {index} out of range for {self.length} samples")
        return index % self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        """Return sample ``index``'s tokens, int64 (n_ctx,)."""
        return torch.from_numpy(generate_one(self.config, self._check(index), self.n_ctx, seed=self.seed)[0])

    def labels(self, index: int) -> torch.Tensor:
        """Return sample ``index``'s Pattern labels, int32 (n_ctx,)."""
        return torch.from_numpy(generate_one(self.config, self._check(index), self.n_ctx, seed=self.seed)[1])

    def batch(self, indices) -> SyntheticBatch:
        """Return tokens, labels and families of the given sample indices as a SyntheticBatch."""
        return generate_indices(self.config, [self._check(int(i)) for i in indices], self.n_ctx, seed=self.seed)

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Return ``batch_size`` samples drawn uniformly with replacement; int64 (B, n_ctx)."""
        return self.sample_labelled(batch_size, generator).tokens

    def sample_labelled(self, batch_size: int, generator: torch.Generator) -> SyntheticBatch:
        """The samples ``sample_batch`` draws with the same generator state, with their Pattern labels."""
        _check_batch_size(batch_size)
        idx = torch.randint(self.length, (batch_size,), generator=generator).tolist()
        return self.batch(idx)


class MixtureDataset(Dataset):
    """Weighted mixture of datasets that all yield int64 (n_ctx,) items.

    ``sample_batch`` takes ``w_i * B`` rows (rounded to sum to B, see :meth:`batch_counts`) from component i,
    concatenated in component order. Indexing interleaves components in weight proportion (a fixed
    largest-remainder schedule), so shuffled ``DataLoader`` iteration also sees the mixture's proportions;
    ``__len__`` is large enough that every item of every component is reachable.
    """

    _CYCLE = 1000

    def __init__(self, components: list[Dataset], weights: list[float], names: list[str] | None = None) -> None:
        if not components or len(components) != len(weights):
            raise RllcError(f"mixture needs one weight per component (got {len(components)} and {len(weights)})")
        w = np.asarray(weights, dtype=float)
        if (w <= 0).any() or not np.isfinite(w).all():
            raise RllcError(f"mixture weights {list(weights)} must be positive and finite")
        self.components = list(components)
        self.weights = (w / w.sum()).tolist()
        self.names = list(names) if names else [f"component{i}" for i in range(len(components))]
        self.n_ctx = getattr(components[0], "n_ctx", None)
        # Largest-remainder schedule over a cycle: slot j goes to the component furthest behind its quota.
        taken = np.zeros(len(w))
        self._slot_comp = np.empty(self._CYCLE, dtype=np.int64)
        self._slot_rank = np.empty(self._CYCLE, dtype=np.int64)
        for j in range(self._CYCLE):
            k = int(np.argmax(np.asarray(self.weights) * (j + 1) - taken))
            self._slot_comp[j], self._slot_rank[j] = k, taken[k]
            taken[k] += 1
        self._per_cycle = taken.astype(np.int64)
        cycles = max(math.ceil(len(c) / self._per_cycle[k]) if self._per_cycle[k] else 1
                     for k, c in enumerate(self.components))
        self._length = cycles * self._CYCLE

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> torch.Tensor:
        """Return item ``index`` (from the component the schedule assigns it), int64 (n_ctx,)."""
        if not -self._length <= index < self._length:
            raise IndexError(f"item {index} out of range for {self._length} items")
        index %= self._length
        cycle, slot = divmod(index, self._CYCLE)
        k = int(self._slot_comp[slot])
        local = cycle * int(self._per_cycle[k]) + int(self._slot_rank[slot])
        return self.components[k][local % len(self.components[k])]

    def batch_counts(self, batch_size: int) -> list[int]:
        """Return rows per component in a batch of ``batch_size``: each ``w_i * B`` rounded so they sum to B.

        Largest-remainder rounding: floors first, then the leftover rows go to the largest fractional parts
        (ties to the larger weight), so a weight-0.5 component gets exactly B/2 rows for even B.
        """
        _check_batch_size(batch_size)
        exact = np.asarray(self.weights) * batch_size
        counts = np.floor(exact + 1e-9).astype(np.int64)
        order = sorted(range(len(counts)), key=lambda k: (-(exact[k] - counts[k]), -self.weights[k], k))
        for k in order[: batch_size - int(counts.sum())]:
            counts[k] += 1
        return counts.tolist()

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Return a batch with each component's share of rows, concatenated in component order; int64 (B, n_ctx)."""
        parts = [c.sample_batch(n, generator) for c, n in zip(self.components, self.batch_counts(batch_size)) if n]
        return torch.cat(parts) if parts else torch.zeros((0, self.n_ctx or 0), dtype=torch.int64)


# -------------------------------------------------------------------------------------------------- data specs


@dataclass(frozen=True)
class DataPart:
    """One part of a data spec: a source name/path and its normalised weight."""

    source: str
    weight: float

    @property
    def is_synthetic(self) -> bool:
        """True for ``synthetic`` and ``synthetic.FAMILY`` parts."""
        return self.source == "synthetic" or self.source.startswith("synthetic.")


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec: parts with weights summing to 1."""

    parts: tuple[DataPart, ...]

    def __str__(self) -> str:
        return ",".join(f"{p.source}*{p.weight:g}" for p in self.parts)


def valid_source_names() -> list[str]:
    """Return every named source accepted in a data spec (paths and ``hf:`` specs are accepted too)."""
    return [*sorted(BUILTIN_SOURCES), "synthetic", *(f"synthetic.{f}" for f in FAMILIES), "pretrain"]


def _split_weight(part: str, spec: str) -> tuple[str, float]:
    # Globs also use '*', so a trailing '*X' is a weight only when X parses as a number.
    head, star, tail = part.rpartition("*")
    if star:
        try:
            weight = float(tail)
        except ValueError:
            return part, 1.0
        if not math.isfinite(weight) or weight <= 0:
            raise RllcError(f"weight {tail!r} in data spec {spec!r} must be a positive number")
        return head.strip(), weight
    return part, 1.0


def parse_data_spec(spec: str) -> DataSpec:
    """Parse ``SOURCE[*WEIGHT],...`` into a DataSpec with normalised weights (``pretrain`` expanded).

    Raises RllcError for empty specs, bad weights and unknown source names (listing the valid names).
    """
    raw: list[tuple[str, float]] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            raise RllcError(f"empty part in data spec {spec!r}; write SOURCE[*WEIGHT],...")
        source, weight = _split_weight(part, spec)
        if source == "pretrain":
            raw.extend((p.source, p.weight * weight) for p in parse_data_spec(DEFAULT_PRETRAIN).parts)
            continue
        if source.startswith("synthetic.") and source.split(".", 1)[1] not in FAMILIES:
            raise RllcError(f"unknown synthetic family {source!r}; valid: {', '.join(valid_source_names())}")
        if source not in valid_source_names() and not is_user_source(source):
            raise RllcError(
                f"unknown data source {source!r}; valid names: {', '.join(valid_source_names())}, "
                "or a directory, glob, .txt/.md/.py file, FILE.jsonl[:FIELD] or hf:NAME[:CONFIG][/SPLIT]"
            )
        raw.append((source, weight))
    total = sum(w for _, w in raw)
    return DataSpec(tuple(DataPart(s, w / total) for s, w in raw))


def synthetic_config_for(source: str, tokenizer: Tokenizer, *, seed: int = 0) -> SyntheticConfig:
    """Return the SyntheticConfig of a ``synthetic[.FAMILY]`` part for this tokenizer's vocabulary."""
    families = FAMILIES if source == "synthetic" else (source.split(".", 1)[1],)
    return SyntheticConfig(
        families=families,
        vocab_size=tokenizer.get_vocab_size(),
        low=max(1, n_special_tokens(tokenizer)),
        bracket_ids=bracket_ids(tokenizer),
        seed=seed,
    )


def _build_part(part: DataPart, tokenizer: Tokenizer, n_ctx: int, cache_dir: Path, split: str, seed: int,
                synthetic_length: int) -> Dataset:
    if part.is_synthetic:
        config = synthetic_config_for(part.source, tokenizer, seed=seed)
        # Validation draws a different sample stream from the same distribution.
        stream = seed if split == "train" else seed ^ _VAL_SEED_SALT
        length = synthetic_length if split == "train" else max(1, synthetic_length // 20)
        return SyntheticDataset(config, n_ctx, length=length, seed=stream)
    tokens = tokenize_to_cache(part.source, tokenizer, cache_dir, split=split)
    return WindowDataset(tokens, n_ctx, name=f"{part.source} ({split} split)", vocab_size=tokenizer.get_vocab_size())


def build_dataset(
    spec: str | DataSpec,
    tokenizer: Tokenizer,
    *,
    n_ctx: int,
    cache_dir: str | Path,
    split: str = "train",
    seed: int = 0,
    synthetic_length: int = SYNTHETIC_LENGTH,
) -> Dataset:
    """Build the dataset a data spec describes.

    Args:
        spec: data spec string or parsed DataSpec.
        tokenizer: used for text sources (cached under ``cache_dir``) and to size synthetic vocabularies.
        n_ctx: sequence length of every item.
        split: ``"train"`` or ``"val"`` (document-level split for text; a separate sample stream for synthetic).
        seed: synthetic distribution and stream seed.
        synthetic_length: ``len()`` of synthetic train components (validation gets 1/20 of it).
    Returns:
        A WindowDataset or SyntheticDataset for a single part, else a MixtureDataset. Every one has
        ``sample_batch(batch_size, generator) -> LongTensor (B, n_ctx)``.
    """
    if split not in ("train", "val"):
        raise RllcError(f"split {split!r} must be 'train' or 'val'")
    parsed = parse_data_spec(spec) if isinstance(spec, str) else spec
    parts = [_build_part(p, tokenizer, n_ctx, Path(cache_dir), split, seed, synthetic_length) for p in parsed.parts]
    if len(parts) == 1:
        return parts[0]
    return MixtureDataset(parts, [p.weight for p in parsed.parts], [p.source for p in parsed.parts])


def corpus_texts_for_tokenizer(spec: str | DataSpec, max_chars: int = 20_000_000) -> Iterator[str]:
    """Yield the documents of a spec's text parts (synthetic parts skipped) for BPE training.

    Each text part contributes at most ``max_chars * its share of the text weight`` characters (the last
    document is cut to fit). RllcError if the spec has no text parts.
    """
    parsed = parse_data_spec(spec) if isinstance(spec, str) else spec
    texts = [p for p in parsed.parts if not p.is_synthetic]
    if not texts:
        raise RllcError(f"data spec {str(parsed)!r} has no text sources to train a tokenizer on; add e.g. prose")
    total = sum(p.weight for p in texts)
    for part in texts:
        budget = int(max_chars * part.weight / total)
        for doc in iter_documents(part.source):
            if budget <= 0:
                break
            yield doc[:budget]
            budget -= len(doc)
