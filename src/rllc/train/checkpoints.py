"""Checkpoint files: TransformerLens-keyed safetensors weights plus JSON metadata, written atomically.

A checkpoint exists when its JSON exists: the weights are written first, the JSON last (each via a temporary
file and `os.replace`), so a run killed mid-write never leaves a checkpoint that is later trusted. Nothing here
unpickles: weights are safetensors, metadata and resume scalars are JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from rllc._errors import RllcError, writing
from rllc.model.config import ModelConfig
from rllc.model.transformer import Transformer


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with writing(path, needed=len(data)), open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors atomically."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    try:
        with writing(path, needed=sum(v.nbytes for v in tensors.values()), what="checkpoint"):
            save_file(tensors, str(tmp), metadata=meta)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def load_tensors(path: Path, *, with_metadata: bool = False):  # noqa: ANN201
    """Load a safetensors file (and its string metadata if asked); a bad file is a one-line RllcError."""
    if not path.is_file():
        raise RllcError(f"checkpoint file {path} does not exist")
    try:
        if not with_metadata:
            return load_file(str(path))
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, (f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise RllcError(f"checkpoint file {path} is truncated or corrupted ({e}); delete it and re-run") from None


def read_json(path: Path, what: str = "file", expect: type = dict) -> Any:
    """The JSON in `path`, which must be a `expect` (an object by default); RllcError naming the file otherwise."""
    if not path.is_file():
        raise RllcError(f"{what} {path} does not exist")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RllcError(f"{what} {path} is not valid JSON ({e}); it may be truncated") from None
    if not isinstance(obj, expect):
        raise RllcError(f"{what} {path} holds a JSON {type(obj).__name__}, not an {expect.__name__}; it was "
                        "overwritten by something else: restore it or delete it and re-run")
    return obj


def read_jsonl(path: Path, what: str = "log", *, repair: bool = False) -> list[dict[str, Any]]:
    """The JSON objects of a line-per-record log. A torn last line (a kill or a full disk mid-write) is dropped,
    and with `repair` cut from the file; a bad line elsewhere is an RllcError."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    rows, good_bytes = [], 0
    for i, line in enumerate(lines):
        if not line.strip():
            good_bytes += len(line) + 1
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError:
            if i == len(lines) - 1 or all(not x.strip() for x in lines[i + 1:]):  # the last record: torn
                if repair:
                    with writing(path), open(path, "r+b") as f:
                        f.truncate(good_bytes)
                return rows
            raise RllcError(f"{what} {path} line {i + 1} is not a JSON object; delete that line and re-run") \
                from None
        rows.append(row)
        good_bytes += len(line) + 1
    return rows


def check_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig, source: Path | str) -> None:
    """Raise an RllcError unless `state` has exactly the keys and shapes of a model built from `cfg`."""
    expected = {k: tuple(v.shape) for k, v in Transformer(cfg, seed=None).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items() if k in expected or not k.endswith((".mask", ".IGNORE"))}
    if got != expected:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        shape = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        detail = "; ".join(
            s for s in (
                f"missing {missing[:3]}" if missing else "",
                f"unexpected {extra[:3]}" if extra else "",
                f"shape of {shape[0]} is {got[shape[0]]}, expected {expected[shape[0]]}" if shape else "",
            ) if s
        )
        raise RllcError(f"checkpoint {source} is from another architecture ({detail}); check the run's config")


def load_model(path: Path, cfg: ModelConfig, device: str | torch.device = "cpu") -> Transformer:
    """Build a Transformer from `cfg` and load the safetensors weights at `path` into it."""
    state = load_tensors(path)
    check_state_dict(state, cfg, path)
    model = Transformer(cfg, seed=None)
    model.load_state_dict({k: v for k, v in state.items() if not k.endswith((".mask", ".IGNORE"))})
    return model.to(device)
