"""Bad input, table-driven: every command a hostile user might type, run in-process through `rllc.cli.main`.

Each bad case must end in a clear error: exit status ≠ 0, no traceback, one `rllc: error:` line on stderr (argparse's
usage line before it is allowed), and the case directory (run directory, reference run, output folder) byte for
byte as it was. Each "works" case is valid input that used to be refused or to fail (a small corpus, a read-only run
read into another folder, resuming after a torn log line) and must succeed.

A failing case says which kind of failure it is, first word of the message: TRACEBACK (an exception escaped),
ACCEPTED (exit 0 on bad input), UNCLEAR (exit ≠ 0 but not one clear line), DAMAGED (files changed). Count them with
`python -m pytest tests/test_bad_inputs.py -q -rf | grep -c TRACEBACK` and so on.

Read-only directories: files and folders lose their write bits; as root (who ignores them) the command runs with
the effective uid of `nobody`, which does not.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import stat
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from rllc.cli import main

# Every sampler-running case uses these (seconds, not minutes, if a bad value were wrongly accepted).
FAST = ["--chains", "2", "--draws", "4", "--batch-size", "4", "--n-samples", "16"]
# A seconds-long training run; {cli} was made by exactly this command (so these flags resume it).
TRAIN = ["--data", "{tiny}", "--steps", "20", "--batch-size", "4", "--layers", "1", "--vocab-size", "300",
         "--checkpoints", "every:5", "--quiet"]


@dataclass
class Case:
    """argv is formatted with {run} (a private copy of the tiny run, with results), {ref} (a second copy), {cli} (a
    run trained by `rllc train --out {cli} TRAIN`), {out} (an empty writable folder), {new} (a path that does not
    exist yet), {small} (a 40 KB one-document text file), {tiny} (a 40-file corpus), {dir} (the case directory)."""

    id: str
    argv: list[str]
    expect: str = "error"  # "error" or "works"
    setup: Callable[[dict[str, Path]], None] | None = None
    readonly: bool = False  # make {run} read-only before the command
    patch: Callable[[pytest.MonkeyPatch], None] | None = None  # e.g. a full disk
    match: str = ""  # a substring of the error line (or, for "works", of stdout)
    check: Callable[[dict[str, Path]], None] | None = None  # extra checks for "works"


# --------------------------------------------------------------------------------------------- setups and patches


def _write(rel: str, text: str) -> Callable[[dict[str, Path]], None]:
    def f(p: dict[str, Path]) -> None:
        (p["run"] / rel).write_text(text)
    return f


def _truncate(rel: str, keep: int) -> Callable[[dict[str, Path]], None]:
    def f(p: dict[str, Path]) -> None:
        path = p["run"] / rel
        path.write_bytes(path.read_bytes()[:keep])
    return f


def _swap_tokenizer(p: dict[str, Path]) -> None:
    shutil.copy(p["other_tokenizer"], p["run"] / "tokenizer.json")


def _swap_cli_tokenizer(p: dict[str, Path]) -> None:
    shutil.copy(p["other_tokenizer"], p["cli"] / "tokenizer.json")


def _swap_ref_tokenizer(p: dict[str, Path]) -> None:
    shutil.copy(p["other_tokenizer"], p["ref"] / "tokenizer.json")


def _other_tokenizer_id(p: dict[str, Path]) -> None:
    meta = json.loads((p["run"] / "checkpoints" / "step_0000040.json").read_text())
    (p["run"] / "checkpoints" / "step_0000040.json").write_text(json.dumps({**meta, "tokenizer_id": "0123456789abcdef"}))


def _oov_cache(p: dict[str, Path]) -> None:
    for b in (p["run"] / "data").glob("*.bin"):
        a = np.memmap(b, dtype=np.uint16, mode="r+")
        a[::7] = 60000  # ids far beyond the 300-token vocabulary
        a.flush()
        del a


def _torn_metrics(p: dict[str, Path]) -> None:
    for f in (p["cli"] / "checkpoints").glob("step_0000020.*"):  # killed while writing the log after step 15
        f.unlink()
    lines = (p["cli"] / "metrics.jsonl").read_text().splitlines()
    (p["cli"] / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:9])


def _delete_last_checkpoint(p: dict[str, Path]) -> None:
    for f in (p["cli"] / "checkpoints").glob("step_0000020.*"):
        f.unlink()


def _garbage_store(p: dict[str, Path]) -> None:
    (p["run"] / "results.sqlite").write_bytes(b"this is not a database" * 100)


def _drop_configs(p: dict[str, Path]) -> None:
    with contextlib.closing(sqlite3.connect(p["run"] / "results.sqlite")) as con:
        con.execute("DROP TABLE configs")
        con.commit()


def _full_disk_files(mp: pytest.MonkeyPatch) -> None:
    """Every file rllc writes through Python's open/os.fdopen, safetensors or SQLite fails with ENOSPC."""
    import builtins

    import safetensors.torch

    from rllc.pipeline import store
    from rllc.train import checkpoints

    real_open, real_fdopen, real_save = builtins.open, os.fdopen, safetensors.torch.save_file

    def full_open(file, mode="r", *a, **k):  # noqa: ANN001, ANN202
        if any(c in mode for c in "wax+") and str(file) != os.devnull:
            return real_open("/dev/full", "wb" if "b" in mode else "w")
        return real_open(file, mode, *a, **k)

    def full_fdopen(fd, mode="r", *a, **k):  # noqa: ANN001, ANN202
        if any(c in mode for c in "wax+"):
            os.close(fd)
            return real_open("/dev/full", "wb" if "b" in mode else "w")
        return real_fdopen(fd, mode, *a, **k)

    class FullConnection:
        def __init__(self, con: sqlite3.Connection) -> None:
            self._con = con

        def __getattr__(self, name):  # noqa: ANN001, ANN204
            return getattr(self._con, name)

        def __enter__(self):  # noqa: ANN204
            self._con.__enter__()
            return self

        def __exit__(self, *exc):  # noqa: ANN002, ANN204
            return self._con.__exit__(*exc)

        def _full(self, *a, **k):  # noqa: ANN002, ANN003, ANN202
            raise sqlite3.OperationalError("database or disk is full")

        executemany = _full

        def execute(self, sql, *a):  # noqa: ANN001, ANN202
            if sql.lstrip().upper().startswith(("INSERT", "CREATE", "UPDATE")):
                self._full()
            return self._con.execute(sql, *a)

    from rllc.pipeline import driver as sweep_module

    mp.setattr(sweep_module, "_FULL_DISK_WAIT_S", 0.0, raising=False)
    mp.setattr("rllc.train.loop.FULL_DISK_WAIT_S", 0.0, raising=False)
    real_connect = store.ResultStore._connect
    mp.setattr(builtins, "open", full_open)
    mp.setattr(os, "fdopen", full_fdopen)
    mp.setattr(checkpoints, "save_file", lambda t, f, metadata=None: real_save(t, "/dev/full", metadata))
    mp.setattr(store.ResultStore, "_connect", lambda self, *a, **k: FullConnection(real_connect(self, *a, **k)))


def _exported(p: dict[str, Path]) -> None:
    assert (p["out"] / "results.csv").stat().st_size > 0


def _reported(p: dict[str, Path]) -> None:
    assert "<html" in (p["out"] / "r.html").read_text()[:500].lower()


def _trained(p: dict[str, Path]) -> None:
    from rllc.train import load_run

    run = load_run(p["new"])
    assert run.steps[-1] == 20 and run.metadata(20)["val_loss"] > 0


def _resumed(p: dict[str, Path]) -> None:
    from rllc.train import load_run

    run = load_run(p["cli"])
    assert run.steps == [0, 5, 10, 15, 20]
    logged = [json.loads(x)["step"] for x in (p["cli"] / "metrics.jsonl").read_text().splitlines()]
    assert logged == sorted(set(logged)) and logged[-1] == 20


# ------------------------------------------------------------------------------------------------------ the table

R = "{run}"
CASES = [
    # --- not a run, missing files, bad JSON ------------------------------------------------------------------
    Case("info-missing-dir", ["info", "{dir}/nope"], match="not an rllc run directory"),
    Case("info-empty-dir", ["info", "{out}"], match="not an rllc run directory"),
    Case("report-not-a-run", ["report", "{out}", "--out", "{dir}/r.html"], match="run"),
    Case("export-not-a-run", ["export", "{out}", "--out", "{out}"], match="results store"),
    Case("run-json-truncated", ["info", R], setup=_truncate("run.json", 30), match="run.json"),
    Case("run-json-list", ["info", R], setup=_write("run.json", "[1, 2, 3]"), match="run.json"),
    Case("run-json-string", ["llc", R, *FAST], setup=_write("run.json", '"hello"'), match="run.json"),
    Case("run-json-wrong-format", ["info", R], setup=_write("run.json", '{"format": "x"}'), match="format"),
    Case("run-json-bad-field", ["info", R], setup=_write("run.json", json.dumps(
        {"format": "rllc-run/1", "model": {"n_layers": "two"}, "train": {}})), match="run.json"),
    Case("ckpt-json-list", ["info", R], setup=_write("checkpoints/step_0000040.json", "[1,2,3]"),
         match="step_0000040.json"),
    Case("ckpt-json-truncated", ["info", R], setup=_truncate("checkpoints/step_0000040.json", 10),
         match="step_0000040.json"),
    Case("ckpt-weights-truncated", ["llc", R, "--step", "40", *FAST],
         setup=_truncate("checkpoints/step_0000040.safetensors", 100), match="step_0000040.safetensors"),
    Case("tokenizer-corrupt", ["llc", R, *FAST], setup=_write("tokenizer.json", "{not json"), match="tokenizer"),
    Case("tokenizer-swapped-llc", ["llc", R, *FAST], setup=_swap_tokenizer, match="tokenizer"),
    Case("tokenizer-swapped-sweep", ["sweep", R, "--components", "0:0", "--steps", "last", *FAST, "--quiet"],
         setup=_swap_tokenizer, match="tokenizer"),
    Case("tokenizer-swapped-ref", ["sweep", R, "--components", "0:0", "--steps", "last", "--data",
                                   "model:{ref}@last", *FAST, "--quiet"], setup=_swap_ref_tokenizer,
         match="tokenizer"),
    Case("tokenizer-swapped-train", ["train", "--out", "{cli}", *TRAIN], setup=_swap_cli_tokenizer,
         match="tokenizer"),
    Case("garbage-store-export", ["export", R, "--out", "{out}"], setup=_garbage_store, match="results.sqlite"),
    Case("garbage-store-plot", ["plot", R, "--out", "{out}"], setup=_garbage_store, match="results.sqlite"),
    Case("garbage-store-report", ["report", R, "--out", "{out}/r.html"], setup=_garbage_store,
         match="results.sqlite"),
    Case("oov-cache", ["llc", R, *FAST, "--quiet"], setup=_oov_cache, match="data"),
    # --- train arguments: validated before anything is written ----------------------------------------------
    Case("train-steps-0", ["train", "--out", "{new}", *TRAIN, "--steps", "0"], match="steps"),
    Case("train-steps-negative", ["train", "--out", "{new}", *TRAIN, "--steps", "-5"], match="steps"),
    Case("train-batch-0", ["train", "--out", "{new}", *TRAIN, "--batch-size", "0"], match="batch"),
    Case("train-lr-nan", ["train", "--out", "{new}", *TRAIN, "--lr", "nan"], match="lr"),
    Case("train-lr-inf", ["train", "--out", "{new}", *TRAIN, "--lr", "inf"], match="lr"),
    Case("train-lr-negative", ["train", "--out", "{new}", *TRAIN, "--lr", "-1"], match="lr"),
    Case("train-lr-text", ["train", "--out", "{new}", *TRAIN, "--lr", "fast"], match="--lr"),
    Case("train-checkpoints-every-0", ["train", "--out", "{new}", *TRAIN, "--checkpoints", "every:0"],
         match="every:0"),
    Case("train-checkpoints-foo", ["train", "--out", "{new}", *TRAIN, "--checkpoints", "foo"], match="foo"),
    Case("train-checkpoints-beyond", ["train", "--out", "{new}", *TRAIN, "--checkpoints", "5,500"], match="500"),
    Case("train-data-missing", ["train", "--out", "{new}", *TRAIN, "--data", "{dir}/nope.txt"], match="nope.txt"),
    Case("train-data-unknown", ["train", "--out", "{new}", *TRAIN, "--data", "wikipedia"], match="wikipedia"),
    Case("train-data-bad-weight", ["train", "--out", "{new}", *TRAIN, "--data", "prose*-1"], match="weight"),
    Case("train-data-empty-file", ["train", "--out", "{new}", *TRAIN, "--data", "{dir}/empty.txt"],
         match="empty.txt"),
    Case("train-vocab-small", ["train", "--out", "{new}", *TRAIN, "--vocab-size", "100"], match="vocab"),
    Case("train-vocab-huge", ["train", "--out", "{new}", *TRAIN, "--vocab-size", "70000"], match="vocab"),
    Case("train-vocab-unreachable", ["train", "--out", "{new}", *TRAIN, "--data", "{small}",
                                     "--vocab-size", "8000"], match="vocab"),
    Case("train-layers-negative", ["train", "--out", "{new}", *TRAIN, "--layers", "-1"], match="layers"),
    Case("train-preset-unknown", ["train", "--out", "{new}", "--preset", "gpu"], match="preset"),
    Case("train-cuda-missing", ["train", "--out", "{new}", *TRAIN, "--device", "cuda"], match="CUDA"),
    Case("train-seeds-bad", ["train", "--out", "{new}", *TRAIN, "--seeds", "1,a"], match="seeds"),
    Case("train-other-config", ["train", "--out", R, *TRAIN], match="different config"),
    Case("train-out-is-file", ["train", "--out", "{small}", *TRAIN], match="small.txt"),
    Case("train-full-disk", ["train", "--out", "{new}", *TRAIN], patch=_full_disk_files, match="disk full"),
    # --- llc / calibrate ---------------------------------------------------------------------------------------
    Case("llc-step-missing", ["llc", R, "--step", "7", *FAST], match="nearest is 10"),
    Case("llc-component-unknown", ["llc", R, "--component", "5:0", *FAST], match="5:0"),
    Case("llc-data-missing", ["llc", R, "--data", "{dir}/nope.jsonl", *FAST], match="nope.jsonl"),
    Case("llc-epsilon-inf", ["llc", R, "--epsilon", "inf", *FAST], match="epsilon"),
    Case("llc-epsilon-nan", ["llc", R, "--epsilon", "nan", *FAST], match="epsilon"),
    Case("llc-epsilon-0", ["llc", R, "--epsilon", "0", *FAST], match="epsilon"),
    Case("llc-nbeta-inf", ["llc", R, "--nbeta", "inf", *FAST], match="nbeta"),
    Case("llc-gamma-inf", ["llc", R, "--gamma", "inf", *FAST], match="gamma"),
    Case("llc-gamma-negative", ["llc", R, "--gamma", "-1", *FAST], match="gamma"),
    Case("llc-chains-0", ["llc", R, "--chains", "0", "--draws", "4", "--n-samples", "16"], match="chains"),
    Case("llc-draws-0", ["llc", R, "--draws", "0", "--chains", "2", "--n-samples", "16"], match="draws"),
    Case("llc-n-samples-0", ["llc", R, "--chains", "2", "--draws", "4", "--n-samples", "0"], match="n-samples"),
    Case("calibrate-epsilons-text", ["calibrate", R, "--epsilons", "a,b", *FAST], match="epsilons"),
    Case("calibrate-epsilons-inf", ["calibrate", R, "--epsilons", "inf", *FAST, "--plot", "{out}/c.png"],
         match="inf"),
    # --- sweep ------------------------------------------------------------------------------------------------
    Case("sweep-component-unknown", ["sweep", R, "--components", "9:9", *FAST], match="9:9"),
    Case("sweep-component-empty-union", ["sweep", R, "--components", "0:0+", "--steps", "last", *FAST],
         match="0:0+"),
    Case("sweep-components-empty", ["sweep", R, "--components", ",", *FAST], match="components"),
    Case("sweep-steps-missing", ["sweep", R, "--steps", "999", *FAST], match="999"),
    Case("sweep-steps-every-0", ["sweep", R, "--steps", "every:0", *FAST], match="every:0"),
    Case("sweep-steps-foo", ["sweep", R, "--steps", "foo", *FAST], match="foo"),
    Case("sweep-epsilon-inf", ["sweep", R, "--components", "0:0", "--steps", "last", *FAST, "--epsilon", "inf"],
         match="epsilon"),
    Case("sweep-nbeta-inf", ["sweep", R, "--components", "0:0", "--steps", "last", *FAST, "--nbeta", "inf"],
         match="nbeta"),
    Case("sweep-workers-0", ["sweep", R, "--executor", "pool", "--workers", "0", "--components", "0:0",
                             "--steps", "last", *FAST], match="workers"),
    Case("sweep-workers-negative", ["sweep", R, "--executor", "pool", "--workers", "-2", *FAST], match="workers"),
    Case("sweep-address-with-pool", ["sweep", R, "--executor", "pool", "--address", "auto", *FAST],
         match="address"),
    Case("sweep-ref-missing", ["sweep", R, "--data", "model:{dir}/nope@last", *FAST], match="nope"),
    Case("sweep-ref-bad-step", ["sweep", R, "--data", "model:{ref}@999", *FAST], match="999"),
    Case("sweep-ref-step-text", ["sweep", R, "--data", "model:{ref}@x", *FAST], match="'x'"),
    Case("sweep-data-missing", ["sweep", R, "--data", "{dir}/nope.txt", *FAST], match="nope.txt"),
    Case("sweep-data-unknown", ["sweep", R, "--data", "wikipedia", *FAST], match="wikipedia"),
    Case("sweep-data-bad-jsonl", ["sweep", R, "--data", "{small}.jsonl", *FAST], match="jsonl"),
    Case("hessian-data-missing", ["hessian", R, "--data", "{dir}/nope.txt", "--quiet"], match="nope.txt"),
    Case("hessian-component-unknown", ["hessian", R, "--components", "7:7", "--quiet"], match="7:7"),
    Case("ckpt-from-other-run", ["llc", R, "--step", "40", *FAST], setup=_other_tokenizer_id,
         match="tokenizer"),
    Case("calibrate-plot-dir-missing", ["calibrate", R, "--epsilons", "1e-3", *FAST, "--plot", "{small}/c.png"],
         match="small.txt is a file"),
    Case("sweep-data-twice", ["sweep", R, "--data", "code,code", *FAST], match="twice"),
    Case("sweep-executor-unknown", ["sweep", R, "--executor", "slurm", *FAST], match="executor"),
    Case("sweep-full-disk", ["sweep", R, "--components", "0:0", "--steps", "last", *FAST, "--quiet"],
         patch=_full_disk_files, match="full"),
    # --- susceptibilities (rllc susceptibility, rllc sweep --probes) -----------------------------------------
    Case("sus-probes-missing", ["susceptibility", R, *FAST], match="--probes"),
    Case("sus-probe-unknown", ["susceptibility", R, "--probes", "wikipedia", *FAST], match="wikipedia"),
    Case("sus-probe-path-missing", ["susceptibility", R, "--probes", "{dir}/nope.txt", *FAST], match="nope.txt"),
    Case("sus-probe-twice", ["susceptibility", R, "--probes", "code,code", *FAST], match="twice"),
    Case("sus-probe-empty", ["susceptibility", R, "--probes", ",", *FAST], match="no probe"),
    Case("sus-probe-model", ["susceptibility", R, "--probes", "model:{ref}@last", *FAST], match="not a probe"),
    Case("sus-probe-samples-0", ["susceptibility", R, "--probes", "code", "--probe-samples", "0", *FAST],
         match="positive integer"),
    Case("sus-probe-split", ["susceptibility", R, "--probes", "code", "--probe-split", "test", *FAST],
         match="probe-split"),
    Case("sus-component-unknown", ["susceptibility", R, "--probes", "code", "--components", "9:9", *FAST],
         match="9:9"),
    Case("sus-steps-missing", ["susceptibility", R, "--probes", "code", "--steps", "999", *FAST], match="999"),
    Case("sus-sweep-probe-unknown", ["sweep", R, "--probes", "wikipedia", *FAST], match="wikipedia"),
    Case("ro-susceptibility", ["susceptibility", R, "--probes", "code", "--components", "0:0", "--steps", "last",
                               *FAST, "--quiet"], readonly=True, match="read-only"),
    # --- other commands -----------------------------------------------------------------------------------------
    Case("heads-step-missing", ["heads", R, "--steps", "999", "--quiet"], match="999"),
    Case("hessian-measure-unknown", ["hessian", R, "--measure", "det"], match="measure"),
    Case("hessian-steps-missing", ["hessian", R, "--steps", "999", "--quiet"], match="999"),
    Case("export-format-unknown", ["export", R, "--out", "{out}", "--formats", "xml"], match="xml"),
    Case("export-full-disk", ["export", R, "--out", "{out}", "--formats", "csv"], patch=_full_disk_files,
         match="disk full"),
    Case("plot-no-store", ["plot", "{ref}", "--out", "{out}"], setup=lambda p: (p["ref"] / "results.sqlite").unlink(),
         match="results store"),
    # --- found by the s15 audit of the measure commands ----------------------------------------------------------
    Case("sweep-steps-empty", ["sweep", R, "--components", "0:0", "--steps", "", *FAST], match="no step given"),
    Case("heads-steps-empty", ["heads", R, "--steps", ",", "--quiet"], match="no step given"),
    Case("hessian-steps-empty", ["hessian", R, "--steps", "", "--quiet"], match="no step given"),
    Case("hessian-range-three", ["hessian", R, "--measure", "rank", "--range=1,2,3", "--quiet"], match="range"),
    Case("hessian-range-reversed", ["hessian", R, "--measure", "rank", "--range=6000,-1000", "--quiet"],
         match="a < b"),
    Case("export-out-is-file", ["export", R, "--out", "{small}", "--formats", "csv"], match="small.txt is a file"),
    Case("calibrate-plot-is-dir", ["calibrate", R, "--epsilons", "1e-3", "--nbetas", "10", *FAST, "--plot", "{out}"],
         match="is a folder"),
    Case("calibrate-plot-bare-name", ["calibrate", R, "--epsilons", "1e-3", "--nbetas", "10", *FAST, "--plot",
                                      "{out}/traces"], expect="works", match="loss traces",
         check=lambda p: (p["out"] / "traces").is_file() and not (p["out"] / "traces.png").exists() or
         pytest.fail(f"the traces went elsewhere than the path printed: {sorted(os.listdir(p['out']))}")),
    Case("store-without-configs-export", ["export", R, "--out", "{out}", "--formats", "csv"], setup=_drop_configs,
         match="results.sqlite"),
    Case("store-without-configs-plot", ["plot", R, "--out", "{out}"], setup=_drop_configs, match="results.sqlite"),
    Case("plot-config-hash-empty", ["plot", R, "--out", "{out}", "--config-hash", ""], match="its config hashes"),
    Case("plot-config-hash-unknown", ["plot", R, "--out", "{out}", "--config-hash", "deadbeef"],
         match="its config hashes"),
    # --- read-only run directory: writers say so, readers work into --out elsewhere ---------------------------
    Case("ro-sweep", ["sweep", R, "--components", "0:0", "--steps", "last", *FAST, "--quiet"], readonly=True,
         match="read-only"),
    Case("ro-llc-new-data", ["llc", R, "--data", "{dir}/extra.txt", *FAST, "--quiet"], expect="works",
         readonly=True, match="λ̂"),
    Case("ro-heads", ["heads", R, "--steps", "40", "--quiet"], readonly=True, match="read-only"),
    Case("ro-hessian", ["hessian", R, "--steps", "last", "--quiet"], readonly=True, match="read-only"),
    Case("ro-calibrate", ["calibrate", R, "--epsilons", "1e-3", "--nbetas", "10", *FAST, "--quiet"],
         readonly=True, match="read-only"),
    Case("ro-plot-default-out", ["plot", R], readonly=True, match="read-only"),
    Case("ro-report-default-out", ["report", R], readonly=True, match="read-only"),
    Case("ro-train-resume", ["train", "--out", "{cli}", *TRAIN], readonly=True, setup=_delete_last_checkpoint,
         match="read-only"),
    Case("ro-export-default-out", ["export", R], readonly=True, match="read-only"),
    Case("ro-export-elsewhere", ["export", R, "--out", "{out}", "--formats", "csv"], expect="works", readonly=True,
         check=_exported),
    Case("ro-report-elsewhere", ["report", R, "--out", "{out}/r.html"], expect="works", readonly=True,
         check=_reported),
    Case("ro-plot-elsewhere", ["plot", R, "--out", "{out}"], expect="works", readonly=True),
    Case("ro-info", ["info", R], expect="works", readonly=True, match="checkpoints"),
    # --- valid input that used to be refused or to fail -----------------------------------------------------
    Case("small-single-file-corpus", ["train", "--out", "{new}", *TRAIN, "--data", "{small}"], expect="works",
         check=_trained),
    Case("small-corpus-llc", ["llc", R, "--data", "{small}", *FAST, "--quiet"], expect="works", match="λ̂"),
    Case("torn-metrics-resume", ["train", "--out", "{cli}", *TRAIN], expect="works", setup=_torn_metrics,
         check=_resumed),
    Case("resume-after-deleting-last-checkpoint", ["train", "--out", "{cli}", *TRAIN], expect="works",
         setup=_delete_last_checkpoint, check=_resumed),
]


# ---------------------------------------------------------------------------------------------------- the harness


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _set_writable(root: Path, writable: bool) -> None:
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        mode = p.stat().st_mode
        mode = (mode | stat.S_IWUSR) if writable else (mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        p.chmod(mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH | (0o555 if p.is_dir() else 0))


@contextlib.contextmanager
def _without_root():
    """Run as `nobody` (effective uid) if we are root, so that missing write bits are enforced."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def run_cli(argv: list[str]) -> tuple[int | None, str, str, str]:
    """(exit status or None if an exception escaped, stdout, stderr, traceback text)."""
    out, err = io.StringIO(), io.StringIO()
    tb = ""
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - the point is to catch what escaped
            rc, tb = None, traceback.format_exc()
    return rc, out.getvalue(), err.getvalue(), tb


@pytest.fixture(scope="module")
def base(tiny_run, tiny_text, tmp_path_factory):
    """A copy of the tiny run with a few results stored, a tokenizer of the same size trained on other text,
    and a small one-document corpus."""
    from rllc.data import iter_documents, save_tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("bad")
    run = root / "run"
    shutil.copytree(tiny_run.path, run, ignore=shutil.ignore_patterns("results.sqlite*", ".ray", "plots", "heads"))
    assert main(["sweep", str(run), "--components", "0:0,all", "--steps", "0,40", *FAST, "--quiet"]) == 0
    assert main(["train", "--out", str(root / "cli"), *[a.format(tiny=tiny_text) for a in TRAIN]]) == 0
    code = "".join(d for _, d in zip(range(40), iter_documents("code")))[:200_000]
    save_tokenizer(train_tokenizer([code], tiny_run.tokenizer.get_vocab_size()), root / "other_tokenizer.json")
    import gzip

    from rllc.data.corpora import prose_path

    text = gzip.open(prose_path(), "rt", encoding="utf-8").read(200_000)[150_000:190_000]  # 40 KB, one document
    (root / "small.txt").write_text(text)
    return root


@pytest.fixture
def case_dir(base):
    d = Path(tempfile.mkdtemp(prefix="rllc-bad-"))
    d.chmod(0o755)  # nobody must reach the run directory in read-only cases
    yield d
    _set_writable(d, True)
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, base: Path, case_dir: Path, tiny_text: Path, monkeypatch) -> None:
    paths = {"dir": case_dir, "run": case_dir / "run", "ref": case_dir / "ref", "cli": case_dir / "cli",
             "out": case_dir / "out", "new": case_dir / "new", "small": case_dir / "small.txt", "tiny": tiny_text,
             "other_tokenizer": base / "other_tokenizer.json"}
    shutil.copytree(base / "run", paths["run"])
    shutil.copytree(base / "run", paths["ref"])
    shutil.copytree(base / "cli", paths["cli"])
    shutil.copy(base / "small.txt", paths["small"])
    (case_dir / "empty.txt").write_text("")
    (case_dir / "extra.txt").write_text((base / "small.txt").read_text()[:20_000])
    paths["out"].mkdir()
    paths["out"].chmod(0o777)
    if case.setup:
        case.setup(paths)
    if case.readonly:
        _set_writable(paths["cli" if "{cli}" in " ".join(case.argv) else "run"], False)
    argv = [a.format(**{k: str(v) for k, v in paths.items()}) for a in case.argv]
    before = _snapshot(case_dir)
    # Everything a command imports lazily, imported now (as nobody, the shared venv may be unreadable).
    import matplotlib.pyplot  # noqa: F401

    import rllc.analysis.hessian_sweep  # noqa: F401
    import rllc.report.curves  # noqa: F401
    import rllc.report.html  # noqa: F401
    import rllc.sweep  # noqa: F401
    import rllc.workflows  # noqa: F401

    with monkeypatch.context() as mp:
        if case.patch:
            case.patch(mp)
        with _without_root() if case.readonly else contextlib.nullcontext():
            rc, out, err, tb = run_cli(argv)
    lines = [x for x in err.strip().splitlines() if x.strip()]
    if case.expect == "works":
        assert rc == 0 and not tb, f"FAILED to work (rc {rc}): {err.strip()[-800:]}{tb[-1500:]}"
        assert case.match in out, f"FAILED output lacks {case.match!r}: {out[-500:]}"
        if case.check:
            case.check(paths)
        return
    assert not tb and "Traceback" not in err, f"TRACEBACK {tb[-1500:] or err[-1500:]}"
    assert rc not in (0, None), f"ACCEPTED: {argv} exited 0; stdout: {out[-300:]!r}"
    # argparse's own errors: the (wrapped, indented) usage, then one error line
    usage_ok = lines[:1] and lines[0].startswith("usage: ") and all(x.startswith(" ") for x in lines[1:-1])
    clear = lines and lines[-1].startswith("rllc") and "error:" in lines[-1] and (len(lines) == 1 or usage_ok)
    assert clear and case.match in lines[-1], f"UNCLEAR (rc {rc}): {err.strip()[-800:]!r}"
    after = _snapshot(case_dir)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"DAMAGED: {changed[:8]} after {lines[-1]!r}"


# ------------------------------------------------------------------------------- the fixes, one unit test each


def test_training_is_bitwise_reproducible_at_two_threads(tiny_text, tmp_path):
    """The same command twice at 2 threads gives the same checkpoints (W_E[tokens]'s backward did not: its
    rows were summed in a thread-dependent order; max |Δw| 7e-3 after 200 steps of the cpu preset)."""
    import torch
    from safetensors.torch import load_file

    from rllc.train import train_model
    from tests.conftest import tiny_configs

    torch.set_num_threads(2)
    cfgs = tiny_configs(tiny_text, d_model=64, d_head=16, n_ctx=64, batch_size=32, steps=4, checkpoints="every:4")
    runs = [train_model(*cfgs, tmp_path / f"r{i}", progress=False) for i in range(2)]
    a, b = (load_file(str(r.checkpoint_path(4))) for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_embedding_gradient_is_deterministic_at_two_threads():
    import torch

    from rllc.model import ModelConfig, Transformer

    torch.set_num_threads(2)
    model = Transformer(ModelConfig(n_layers=1, n_heads=2, d_model=64, d_head=16, n_ctx=64, d_vocab=300), seed=0)
    tokens = torch.randint(0, 300, (32, 64), generator=torch.Generator().manual_seed(0))
    grads = []
    for _ in range(5):
        model.zero_grad()
        model(tokens).square().mean().backward()
        grads.append(model.embed.W_E.grad.clone())
    assert all(torch.equal(grads[0], g) for g in grads[1:])


def test_a_worker_dies_with_its_parent():
    """PR_SET_PDEATHSIG (or the watchdog): a child armed with die_with_parent outlives a kill -9 of its parent by
    well under a second."""
    import subprocess
    import sys
    import time

    code = ("import os, sys, time\n"
            "from rllc.pipeline.executors import die_with_parent\n"
            "parent = os.getpid()\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    die_with_parent(parent)\n"
            "    time.sleep(60)\n"
            "    os._exit(0)\n"
            "print(pid, flush=True)\n"
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    child = int(proc.stdout.readline())
    time.sleep(0.3)  # let the child arm the signal
    assert _alive(child)
    proc.kill()
    proc.wait()
    assert _gone_within(child, 5.0)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # a zombie has died
    except FileNotFoundError:
        return False


def _gone_within(pid: int, seconds: float) -> bool:
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_kill_minus_nine_of_a_pool_sweep_driver_leaves_no_worker():
    import signal
    import subprocess
    import sys

    code = ("import time\n"
            "from rllc.pipeline.executors import PoolExecutor\n"
            "ex = PoolExecutor(2)\n"
            "pool = ex._ensure()\n"
            "futs = [pool.submit(time.sleep, 120) for _ in range(2)]\n"
            "while len(pool._processes) < 2: time.sleep(0.1)\n"
            "time.sleep(1.0)\n"
            "from multiprocessing import resource_tracker\n"
            "tracker = resource_tracker._resource_tracker._pid\n"
            "print(*pool._processes, *([tracker] if tracker else []), flush=True)\n"
            "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    workers = [int(x) for x in proc.stdout.readline().split()]  # the 2 workers (and the resource tracker)
    assert len(workers) >= 2 and all(_alive(w) for w in workers)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # A worker still importing torch arms its signal only when its initializer runs (then sees its parent gone and
    # exits); the tracker exits when the last worker closes its pipe. ~12 s on a loaded 2-core machine.
    gone = [_gone_within(w, 60.0) for w in workers]
    for w, g in zip(workers, gone):
        if not g:
            os.kill(w, signal.SIGKILL)  # do not leak them into the rest of the suite
    assert all(gone)


def test_sweep_holds_results_while_the_disk_is_full(run_dir, monkeypatch):
    """A full disk at write time: the rows stay in memory, later tasks retry, and all are stored once it frees."""
    from rllc._errors import DiskFullError
    from rllc.sweep import ResultStore, SweepConfig, load_results, plan_sweep, run_plan
    from rllc.pipeline import driver as sweep_module

    cfg = SweepConfig(SweepConfig().sampler.replace(chains=2, draws=4, batch_size=4, init_batches=1), 16)
    plan = plan_sweep(run_dir, components="0:0", steps="0,10,20", config=cfg)
    real, fails = ResultStore.put_many, iter([True, True, True, False])  # full for the first 3 writes

    def put_many(self, rows):  # noqa: ANN001, ANN202
        if next(fails, False):
            raise DiskFullError("disk full writing results store (simulated)")
        return real(self, rows)

    monkeypatch.setattr(ResultStore, "put_many", put_many)
    monkeypatch.setattr(sweep_module, "_FULL_DISK_WAIT_S", 0.0)
    result = run_plan(plan, progress=False)
    assert result.computed == 3 and sorted(load_results(run_dir).step) == [0, 10, 20]


def test_sweep_gives_up_on_a_disk_that_stays_full(run_dir, monkeypatch):
    from rllc._errors import DiskFullError
    from rllc.sweep import ResultStore, SweepConfig, plan_sweep, run_plan
    from rllc.pipeline import driver as sweep_module

    cfg = SweepConfig(SweepConfig().sampler.replace(chains=2, draws=4, batch_size=4, init_batches=1), 16)
    plan = plan_sweep(run_dir, components="0:0", steps="0,10", config=cfg)

    def full(self, rows):  # noqa: ANN001, ANN202
        raise DiskFullError("disk full writing results store (simulated)")

    monkeypatch.setattr(ResultStore, "put_many", full)
    monkeypatch.setattr(sweep_module, "_FULL_DISK_WAIT_S", 0.0)
    with pytest.raises(DiskFullError, match="2 computed results could not be stored"):
        run_plan(plan, progress=False)


def test_a_truncated_array_file_is_named(tmp_path):
    # `rllc report` printed "could not be drawn (SafetensorError: Error while deserializing header: ...)" for a
    # truncated per-token array file, without saying which file.
    from rllc import RllcError
    from rllc.pipeline.store import ResultRow, ResultStore

    store = ResultStore(tmp_path)
    row = ResultRow(40, "0:0", "pretrain", "susceptibility:code", "abc", 1.0, arrays={"chi": np.arange(3.0)})
    store.put(row)
    np.testing.assert_array_equal(store.arrays(row.key)["chi"], np.arange(3.0))
    path = tmp_path / store.extra(row.key)["arrays"]
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(RllcError, match=f"array file {re.escape(str(path))} .* truncated or corrupted"):
        store.arrays(row.key)


def test_fully_diverged_estimate_is_not_converged():
    from rllc.llc.diagnostics import diagnose

    trace = np.full((3, 10), np.nan)
    d = diagnose(trace, np.full(3, np.nan), np.array([2, 3, 1]), nbeta=30.0, mean=float("nan"))
    assert not d.converged and np.isnan(d.rhat) and d.diverged == (0, 1, 2)


def test_tokenizer_identity_is_checked_by_load_run(tiny_run, tmp_path):
    from rllc import RllcError
    from rllc.data import iter_documents, save_tokenizer, train_tokenizer
    from rllc.train import load_run

    run = tmp_path / "r"
    shutil.copytree(tiny_run.path, run, ignore=shutil.ignore_patterns("data", "results.sqlite*", "heads", "plots"))
    other = train_tokenizer([d for _, d in zip(range(30), iter_documents("code"))], 300)
    assert other.get_vocab_size() == 300  # same size: only the identity tells them apart
    save_tokenizer(other, run / "tokenizer.json")
    with pytest.raises(RllcError, match="not the tokenizer this run was trained with"):
        load_run(run).tokenizer  # noqa: B018


def test_torn_metrics_line_is_tolerated_and_repaired(tmp_path):
    from rllc import RllcError
    from rllc.train.checkpoints import read_jsonl

    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 5, "train_loss": 1.0}\n{"step": 10, "train_lo')
    assert read_jsonl(p) == [{"step": 5, "train_loss": 1.0}]
    read_jsonl(p, repair=True)
    assert p.read_text() == '{"step": 5, "train_loss": 1.0}\n'
    p.write_text('{"step": 5, "tr\n{"step": 10, "train_loss": 1.0}\n')  # damage before the end is not a tear
    with pytest.raises(RllcError, match="line 1"):
        read_jsonl(p)


def test_training_holds_a_checkpoint_while_the_disk_is_full(tiny_text, tmp_path, monkeypatch, capsys):
    """Two failed writes of the same checkpoint, then space: training goes on, the checkpoints equal those of a
    run that never met a full disk."""
    import torch
    from safetensors.torch import load_file

    from rllc._errors import DiskFullError
    from rllc.train import loop, train_model
    from tests.conftest import tiny_configs

    cfgs = tiny_configs(tiny_text, steps=20)
    clean = train_model(*cfgs, tmp_path / "clean", progress=False)
    real, fails = loop.save_tensors, iter([False, False, True, True])  # step 0: weights, state; step 10 fails twice

    def save_tensors(path, tensors, meta=None):  # noqa: ANN001, ANN202
        if next(fails, False):
            raise DiskFullError(f"disk full writing checkpoint {path} (simulated)")
        return real(path, tensors, meta)

    monkeypatch.setattr(loop, "save_tensors", save_tensors)
    monkeypatch.setattr(loop, "FULL_DISK_WAIT_S", 0.0)
    full = train_model(*cfgs, tmp_path / "full", progress=False)
    assert full.steps == clean.steps == [0, 10, 20]
    assert capsys.readouterr().err.count("step 10 is held in memory") == 2
    for s in full.steps:
        a, b = load_file(str(full.checkpoint_path(s))), load_file(str(clean.checkpoint_path(s)))
        assert all(torch.equal(a[k], b[k]) for k in a)
