"""Named text sources: built-in corpora (``code``, ``prose``) and user corpora given as paths or ``hf:`` specs.

Every source is a deterministic stream of documents (``str``). Nothing is downloaded: ``code`` reads the running
interpreter's standard library, ``prose`` reads text shipped in this package, and ``hf:`` specs need a local
Hugging Face cache when offline.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import importlib.resources
import json
import os
import re
import sysconfig
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from rllc._errors import RllcError

PROSE_FILE = "prose.txt.gz"
PROSE_SEP = "\f"
TEXT_SUFFIXES = (".txt", ".md", ".py")
# Files larger than this are split into pieces at blank lines, so a single huge file never sits in memory whole.
MAX_DOC_CHARS = 1 << 16  # larger files are cut so one file still gives a train/validation split
_CHUNK_CHARS = 1 << 14
_TEST_DIRS = frozenset({"test", "tests", "idle_test"})
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
_GLOB_CHARS = re.compile(r"[*?\[]")
_JSONL_FIELD = re.compile(r"^(?P<path>.+\.jsonl):(?P<field>[A-Za-z_][\w.-]*)$")
HF_INSTALL_HINT = (
    'install the optional extra with `pip install "rllc[hf]"`; offline, HF_DATASETS_OFFLINE=1 needs the dataset '
    "already in the local Hugging Face cache"
)


def stdlib_python_files(include_tests: bool = False) -> list[Path]:
    """Return the sorted ``*.py`` paths of this interpreter's standard library (``site-packages`` excluded).

    Args:
        include_tests: keep files under ``test``/``tests``/``idle_test`` directories (about 19 MB more).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Prune in place so os.walk never descends into skipped trees; sort for a deterministic order.
        dirnames[:] = sorted(
            d for d in dirnames if d not in _SKIP_DIRS and (include_tests or d not in _TEST_DIRS)
        )
        files.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    return sorted(files)


def _iter_code() -> Iterator[str]:
    for path in stdlib_python_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a few stdlib files use legacy encodings or are unreadable; skipping keeps the order stable
        if text.strip():
            yield text


def prose_path() -> Path:
    """Return the path of the bundled prose corpus (``rllc/data/prose/prose.txt.gz``)."""
    path = Path(str(importlib.resources.files("rllc.data").joinpath("prose", PROSE_FILE)))
    if not path.is_file():
        raise RllcError(f"bundled prose corpus missing at {path}; reinstall rllc (package data data/prose/*)")
    return path


def _iter_prose() -> Iterator[str]:
    with gzip.open(prose_path(), "rt", encoding="utf-8") as f:
        text = f.read()  # 3.7 MB: small enough to read whole
    for doc in text.split(PROSE_SEP):
        if doc.strip():
            yield doc


BUILTIN_SOURCES: dict[str, Callable[[], Iterator[str]]] = {"code": _iter_code, "prose": _iter_prose}


def is_user_source(spec: str) -> bool:
    """Return True when ``spec`` names a path, glob, ``.jsonl`` file or ``hf:`` dataset rather than a built-in."""
    return (
        spec.startswith("hf:")
        or "/" in spec
        or os.sep in spec
        or bool(_GLOB_CHARS.search(spec))
        or spec.endswith((".jsonl", *TEXT_SUFFIXES))
        or bool(_JSONL_FIELD.match(spec))
        or os.path.exists(spec)
    )


def iter_documents(name: str) -> Iterator[str]:
    """Yield the documents of a text source, in a deterministic order.

    Args:
        name: ``code``, ``prose``, a directory (recursive ``*.txt``/``*.md``/``*.py``), a glob, a text file,
            ``FILE.jsonl`` (field ``text``) or ``FILE.jsonl:FIELD``, or ``hf:NAME[:CONFIG][/SPLIT]``.
    Returns:
        An iterator of non-empty document strings. Errors (missing path, empty source, bad JSONL) are raised
        as :class:`RllcError` when the iterator is first advanced or, for paths, immediately.
    """
    if name in BUILTIN_SOURCES:
        return BUILTIN_SOURCES[name]()
    if name.startswith("hf:"):
        return _iter_hf(name)
    m = _JSONL_FIELD.match(name)
    if m:
        return _iter_jsonl(Path(m["path"]), m["field"])
    if name.endswith(".jsonl"):
        return _iter_jsonl(Path(name), "text")
    files = resolve_files(name)
    return _iter_text_files(files, strict=len(files) == 1 and Path(name).is_file())


def resolve_files(spec: str) -> list[Path]:
    """Return the sorted files a path/glob spec stands for; RllcError naming ``spec`` if missing or empty."""
    if _GLOB_CHARS.search(spec) and not os.path.exists(spec):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not files:
            raise RllcError(f"glob {spec!r} matches no files; check the pattern (quote it in the shell)")
        return files
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise RllcError(f"directory {spec} has no *.txt, *.md or *.py files; point at a directory of text")
        return files
    if path.is_file():
        return [path]
    valid = ", ".join(sorted(BUILTIN_SOURCES))
    raise RllcError(f"text source {spec!r} not found: no such file or directory (built-in sources: {valid})")


def _iter_text_files(files: list[Path], strict: bool) -> Iterator[str]:
    n_docs = 0
    for path in files:
        try:
            for doc in _iter_file_docs(path):
                n_docs += 1
                yield doc
        except UnicodeDecodeError as exc:
            if strict:
                raise RllcError(f"{path} is not UTF-8 text ({exc.reason}); convert it to UTF-8") from None
            warnings.warn(f"skipping {path}: not UTF-8 text", stacklevel=2)
    if n_docs == 0:
        where = files[0] if len(files) == 1 else f"{files[0].parent} ({len(files)} files)"
        raise RllcError(f"text source {where} is empty; give files with some text in them")


def _iter_file_docs(path: Path) -> Iterator[str]:
    """One document per file; files over MAX_DOC_CHARS (64 KB) come out in ~16 KB pieces cut at blank lines."""
    if path.stat().st_size <= MAX_DOC_CHARS:
        text = path.read_text(encoding="utf-8")
        if text.strip():
            yield text
        return
    piece: list[str] = []
    size = 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            piece.append(line)
            size += len(line)
            if size >= _CHUNK_CHARS and not line.strip():
                yield "".join(piece)
                piece, size = [], 0
            elif size >= 4 * _CHUNK_CHARS:  # no blank line for a long stretch: cut at a line end anyway
                yield "".join(piece)
                piece, size = [], 0
    if "".join(piece).strip():
        yield "".join(piece)


def _iter_jsonl(path: Path, field: str) -> Iterator[str]:
    if not path.is_file():
        raise RllcError(f"JSONL file {path} not found; check the path")
    return _jsonl_docs(path, field)


def _jsonl_docs(path: Path, field: str) -> Iterator[str]:
    n_docs = 0
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RllcError(f"{path}:{lineno} is not valid JSON ({exc.msg}); one JSON object per line") from None
            if not isinstance(record, dict) or field not in record:
                keys = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise RllcError(
                    f"{path}:{lineno} has no field {field!r} (has {keys}); pick one with {path}:FIELD"
                )
            text = record[field]
            if not isinstance(text, str):
                raise RllcError(f"{path}:{lineno} field {field!r} is {type(text).__name__}, not a string")
            if text.strip():
                n_docs += 1
                yield text
    if n_docs == 0:
        raise RllcError(f"JSONL file {path} has no non-empty {field!r} values")


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """Split ``hf:NAME[:CONFIG][/SPLIT]`` into (name, config, split); split defaults to ``train``.

    NAME may be ``owner/name``; a split without a config is then written ``hf:owner/name/SPLIT``.
    """
    body = spec.removeprefix("hf:")
    if not body:
        raise RllcError(f"empty Hugging Face spec {spec!r}; write hf:NAME[:CONFIG][/SPLIT]")
    name, _, config = body.partition(":")
    split = "train"
    if config:
        config, _, s = config.partition("/")
        split = s or split
    else:
        parts = name.split("/")
        if len(parts) == 3:
            name, split = "/".join(parts[:2]), parts[2]
    return name, (config or None), split


def _iter_hf(spec: str) -> Iterator[str]:
    name, config, split = parse_hf_spec(spec)
    try:
        import datasets  # optional extra
    except ImportError:
        raise RllcError(f"{spec}: Hugging Face `datasets` is not installed; {HF_INSTALL_HINT}") from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # network, missing cache, bad name: all fixable by the user
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RllcError(f"{spec}: could not load dataset ({msg}); {HF_INSTALL_HINT}") from None
    if "text" not in ds.column_names:
        raise RllcError(f"{spec}: dataset has no 'text' column (columns: {ds.column_names})")
    # Batched iteration streams from the memory-mapped Arrow table instead of materialising the whole column.
    return (t for rows in ds.iter(batch_size=1000) for t in rows["text"] if isinstance(t, str) and t.strip())


def source_fingerprint(name: str) -> str:
    """Return a 16-hex-digit fingerprint that changes when the source's content (or its files) change.

    Built-ins hash the interpreter's stdlib file list with sizes and mtimes (``code``) or the prose file bytes;
    paths hash (relative path, size, mtime) of every file; ``hf:`` specs hash the spec itself.
    """
    h = hashlib.sha256(name.encode())
    if name == "code":
        h.update(sysconfig.get_paths()["stdlib"].encode())
        for p in stdlib_python_files():
            st = p.stat()
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    elif name == "prose":
        h.update(prose_path().read_bytes())
    elif name.startswith("hf:"):
        pass
    else:
        m = _JSONL_FIELD.match(name)
        files = [Path(m["path"])] if m else resolve_files(name)
        for p in files:
            try:
                st = p.stat()
            except FileNotFoundError:
                raise RllcError(f"text source file {p} not found; check the path") from None
            h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def source_names() -> list[str]:
    """Return the names of the built-in text sources."""
    return sorted(BUILTIN_SOURCES)
