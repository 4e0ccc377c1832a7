"""The results store: one SQLite file per run directory, one row per measured quantity.

A row is keyed by (step, component, data, measure, config_hash): writing the same key twice keeps the first row
(INSERT OR IGNORE), so a resumed or repeated sweep never duplicates work, and changing a hyperparameter changes
the hash and makes new rows instead of overwriting. SQLite's WAL mode and a busy timeout let two sweeps write to
one store at once without corrupting it.

Per-token arrays (a susceptibility's χ per probe token) are too large for a row: a row may carry `arrays`, which
the store writes as one safetensors file under `RUN_DIR/arrays/` (never a pickle) before inserting the row, whose
`extra["arrays"]` then names the file (relative to the run directory). A file is written only for a row not yet
stored, atomically (temporary file, then rename), so a killed writer leaves no half file, and a rerun that
recomputes the row rewrites the same file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rllc._errors import RllcError, check_writable, is_writable, read_only_error, writing

STORE_NAME = "results.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    step INTEGER NOT NULL,
    component TEXT NOT NULL,
    data TEXT NOT NULL,
    measure TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    value REAL,
    std REAL,
    valid INTEGER NOT NULL,
    extra TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (step, component, data, measure, config_hash)
);
CREATE TABLE IF NOT EXISTS configs (config_hash TEXT PRIMARY KEY, config TEXT NOT NULL);
"""
COLUMNS = ["run", "step", "component", "data", "measure", "value", "std", "valid", "config_hash"]


def config_hash(config: dict[str, Any]) -> str:
    """A stable 12-hex-digit hash of a JSON-serialisable config (keys sorted)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x)}")


@dataclass(frozen=True)
class ResultRow:
    """One measured quantity: e.g. measure "llc" of component "1:6" on data "code" at step 2000.

    `extra` holds what does not fit a column (per-chain values, diagnostics, compact loss traces) as JSON.
    """

    step: int
    component: str
    data: str
    measure: str
    config_hash: str
    value: float | None
    std: float | None = None
    valid: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def key(self) -> tuple[int, str, str, str, str]:
        return (self.step, self.component, self.data, self.measure, self.config_hash)


class ResultStore:
    """The SQLite results store of a run directory (`RUN_DIR/results.sqlite`).

    Args:
        run_dir: the run directory.
        readonly: open for reading only (what `export`, `plot` and `report` need): works in a read-only run
            directory. A writable store in a read-only directory is refused at once, before any work is done.
    """

    def __init__(self, run_dir: str | Path, *, readonly: bool = False) -> None:
        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise RllcError(f"{self.run_dir} is not a directory; results live inside a run directory")
        self.path = self.run_dir / STORE_NAME
        self.readonly = readonly
        if not readonly and not is_writable(self.run_dir):
            raise read_only_error(self.run_dir, "cannot store results")
        try:
            with self._db() as con:
                if readonly:
                    con.execute("SELECT count(*) FROM results").fetchone()
                    con.execute("SELECT count(*) FROM configs").fetchone()  # every reader also reads the configs
                else:
                    with writing(self.path, what="results store"):
                        con.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise RllcError(f"results store {self.path} is not a valid SQLite file ({e}); move it aside") from None

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A connection for one transaction, closed at once (an unclosed one keeps -wal/-shm files around)."""
        con = self._connect()
        try:
            with con:
                yield con
        finally:
            con.close()

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            if not self.path.is_file():
                raise RllcError(f"{self.run_dir} has no results store ({STORE_NAME}); run `rllc sweep "
                                f"{self.run_dir}` first")
            uri = self.path.absolute().as_uri()
            if is_writable(self.run_dir):  # a plain connection: it cleans up its -wal/-shm files when closed
                return sqlite3.connect(self.path, timeout=60.0)
            # SQLite's WAL readers need a -shm file next to the store; in a read-only folder without one the
            # store must be read as immutable (safe: nothing can be writing it there).
            if (self.path.parent / (STORE_NAME + "-wal")).exists():
                return sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=60.0)
            return sqlite3.connect(f"{uri}?immutable=1", uri=True)
        con = sqlite3.connect(self.path, timeout=60.0)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    def put_config(self, chash: str, config: dict[str, Any]) -> None:
        """Record the config behind a hash (once)."""
        with writing(self.path, what="results store"), self._db() as con:
            con.execute("INSERT OR IGNORE INTO configs VALUES (?, ?)", (chash, json.dumps(config, sort_keys=True)))

    def put_many(self, rows: Iterable[ResultRow]) -> int:
        """Insert rows in one transaction; rows whose key exists are ignored. Returns the number inserted.

        A row's `arrays` are written first, as a safetensors file its `extra["arrays"]` names (rows already stored
        keep their file)."""
        now = time.time()
        rows = list(rows)
        if any(r.arrays for r in rows):
            stored = self.done_keys()
            rows = [self._write_arrays(r) if r.arrays and r.key not in stored else r for r in rows]
        values = [(r.step, r.component, r.data, r.measure, r.config_hash,
                   None if r.value is None else float(r.value), None if r.std is None else float(r.std),
                   int(bool(r.valid)), json.dumps(r.extra, default=_jsonable), now) for r in rows]
        with writing(self.path, needed=sum(len(v[8]) + 100 for v in values), what="results store"), \
                self._db() as con:
            before = con.total_changes
            con.executemany("INSERT OR IGNORE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
            return con.total_changes - before

    def _write_arrays(self, row: ResultRow) -> ResultRow:
        """Write a row's arrays as `arrays/MEASURE_FAMILY/HASH/step_S/NAME.safetensors`; return the row naming it."""
        from dataclasses import replace

        from safetensors.numpy import save_file

        ident = hashlib.sha256(json.dumps([row.component, row.data, row.measure]).encode()).hexdigest()[:16]
        rel = Path("arrays") / row.measure.split(":")[0] / row.config_hash / f"step_{row.step:07d}" / \
            f"{ident}.safetensors"
        path = self.run_dir / rel
        tensors = {k: np.ascontiguousarray(v) for k, v in row.arrays.items()}
        meta = {"step": str(row.step), "component": row.component, "data": row.data, "measure": row.measure,
                "config_hash": row.config_hash}
        with writing(path, needed=sum(a.nbytes for a in tensors.values()) + 4096, what="array file"):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            try:
                save_file(tensors, str(tmp), metadata=meta)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        return replace(row, extra={**row.extra, "arrays": rel.as_posix()}, arrays={})

    def arrays(self, key: tuple[int, str, str, str, str]) -> dict[str, np.ndarray]:
        """The per-token arrays stored with one row (empty if it has none)."""
        from safetensors.numpy import load_file

        rel = self.extra(key).get("arrays")
        if not rel:
            return {}
        path = self.run_dir / rel
        if not path.is_file():
            raise RllcError(f"{path} (the arrays of {key}) is missing; delete the row's results or rerun the measure "
                            "in a copy of the run")
        try:
            return load_file(str(path))
        except Exception as e:  # SafetensorError (not an OSError), or an OSError reading it
            raise RllcError(f"array file {path} (the arrays of {key}) is truncated or corrupted ({e}); delete the "
                            "row's results or rerun the measure in a copy of the run") from None

    def put(self, row: ResultRow) -> bool:
        return self.put_many([row]) == 1

    def done_keys(self, measure: str | None = None) -> set[tuple[int, str, str, str, str]]:
        """Keys already stored (optionally for one measure)."""
        q = "SELECT step, component, data, measure, config_hash FROM results"
        with self._db() as con:
            rows = con.execute(q + (" WHERE measure = ?" if measure else ""), (measure,) if measure else ()).fetchall()
        return {tuple(r) for r in rows}

    def extra(self, key: tuple[int, str, str, str, str]) -> dict[str, Any]:
        """The JSON extras of one row."""
        with self._db() as con:
            r = con.execute("SELECT extra FROM results WHERE step=? AND component=? AND data=? AND measure=? "
                            "AND config_hash=?", key).fetchone()
        if r is None:
            raise RllcError(f"no result stored for {key}")
        return json.loads(r[0])

    def configs(self) -> dict[str, dict[str, Any]]:
        with self._db() as con:
            return {h: json.loads(c) for h, c in con.execute("SELECT config_hash, config FROM configs")}

    def frame(self, *, with_extra: bool = False) -> pd.DataFrame:
        """All rows as a tidy long-form DataFrame (columns COLUMNS, plus `extra` dicts if asked)."""
        cols = "step, component, data, measure, value, std, valid, config_hash" + (", extra" if with_extra else "")
        with self._db() as con:
            df = pd.read_sql_query(f"SELECT {cols} FROM results ORDER BY measure, data, component, step", con)
        df.insert(0, "run", self.run_dir.name)
        df["valid"] = df["valid"].astype(bool)
        if with_extra:
            df["extra"] = df["extra"].map(json.loads)
        return df


def load_results(run_dir: str | Path | Iterable[str | Path], *, with_extra: bool = False) -> pd.DataFrame:
    """Every stored result of one or several runs as one long-form DataFrame.

    Returns:
        Rows (run, step, component, data, measure, value, std, valid, config_hash): measure is "llc" for LLC
        estimates, and the head scores and Hessian measures land in the same table under their own names.
    """
    dirs = [run_dir] if isinstance(run_dir, (str, Path)) else list(run_dir)
    frames = []
    for d in dirs:
        if not (Path(d) / STORE_NAME).exists():
            raise RllcError(f"{d} has no results store ({STORE_NAME}); run `rllc sweep {d}` first")
        frames.append(ResultStore(d, readonly=True).frame(with_extra=with_extra))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def export_results(run_dir: str | Path | Iterable[str | Path], out: str | Path | None = None, *,
                   formats: Iterable[str] = ("csv", "parquet")) -> list[Path]:
    """Write every stored result as `results.csv` and `results.parquet` (long form, columns COLUMNS plus the
    sampler settings of each config hash as `cfg_*` columns).

    Args:
        run_dir: one run directory or several (their rows are concatenated, column `run` tells them apart).
        out: output directory (default: the (first) run directory).
        formats: any of "csv", "parquet" (Parquet needs pyarrow: pip install 'rllc[export]').

    Returns:
        The paths written.
    """
    dirs = [run_dir] if isinstance(run_dir, (str, Path)) else list(run_dir)
    df = load_results(dirs)
    cfgs: dict[str, dict[str, Any]] = {}
    for d in dirs:
        cfgs |= ResultStore(d, readonly=True).configs()
    flat = {h: _flatten(c) for h, c in cfgs.items()}
    keys = sorted({k for c in flat.values() for k in c})
    for k in keys:
        df["cfg_" + k] = df["config_hash"].map(lambda h, k=k: flat.get(h, {}).get(k))
    out_dir = Path(out) if out is not None else Path(dirs[0])
    formats = list(formats)
    if unknown := [f for f in formats if f not in ("csv", "parquet")]:
        raise RllcError(f"unknown export format {unknown[0]!r}; choose csv or parquet")
    if "parquet" in formats:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise RllcError("Parquet export needs pyarrow: pip install 'rllc[export]' (or pass formats=['csv'])") \
                from None
    check_writable(out_dir, "cannot export; pass --out a writable folder")  # also: --out names a file
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        p = out_dir / f"results.{fmt}"
        tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")  # a full disk leaves the old export, never half a new one
        try:
            with writing(p, what="export"):
                df.to_csv(tmp, index=False) if fmt == "csv" else df.to_parquet(tmp, index=False)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, p)
        written.append(p)
    return written


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out
