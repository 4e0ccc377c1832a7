"""Jobs, tasks and plans: what a measure over checkpoints will compute, and what the store already holds.

A *job* is one (run, checkpoint, measure family, component, data set, settings hash); it writes the store rows its
family's registry line names for that component. Jobs of one (run, checkpoint, family, data set, settings) form a
*task*: a worker loads the checkpoint and the data once and computes every component of the task together. A
*plan* is a list of tasks plus the keys already stored; `plan.pending` are the tasks (trimmed to their missing
components) still to run. Planning reads the stores but writes nothing: only the driver writes (`driver.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rllc._errors import RllcError
from rllc.pipeline.measures import measure
from rllc.pipeline.store import ResultStore

Key = tuple[int, str, str, str, str]  # (step, component, data, measure, settings hash): a store row


@dataclass(frozen=True)
class Job:
    """One component of one task: e.g. the LLC of head "1:0" at step 40 on "code" under settings `settings_hash`."""

    run_dir: str
    step: int
    family: str
    component: str
    data: str
    settings_hash: str
    rows: tuple[tuple[str, str], ...] = ()  # (measure, settings hash) of each row; () : the family's `writes`

    def keys(self) -> list[Key]:
        """The store rows this job writes."""
        rows = self.rows or tuple((m, self.settings_hash) for m in measure(self.family).writes(self.component))
        return [(self.step, self.component, self.data, m, h) for m, h in rows]

    def key(self, chash: str | None = None) -> Key:
        """The job's first (for most families, only) row key."""
        return self.keys()[0]


@dataclass(frozen=True)
class Task:
    """The jobs of one (run, checkpoint, family, data set, settings): what a worker needs, small and picklable.

    Attributes:
        data: the data set's store key (`data.data_key`); spec: what the worker resolves (often the same).
        components: component names ("a+b" a union; "l:h" heads; "0:0->1:1" head pairs for composition).
        settings: the family's settings as plain JSON types (hashed into `config_hash` where they change values).
        options: how to run (e.g. batch_components, threads): never change a value, never hashed.
    """

    run_dir: str
    step: int
    family: str
    data: str
    components: tuple[str, ...]
    settings: dict[str, Any]
    config_hash: str
    spec: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def data_spec(self) -> str:
        return self.spec or self.data

    @property
    def jobs(self) -> list[Job]:
        m = measure(self.family)
        return [Job(self.run_dir, self.step, self.family, c, self.data, self.config_hash,
                    m.rows(c, self.settings, self.config_hash) if m.keys is not None else ())
                for c in self.components]

    @property
    def config(self) -> dict[str, Any]:  # the name sweeps have always used for the settings
        return self.settings

    def only(self, components: Sequence[str]) -> Task:
        return self if tuple(components) == self.components else replace(self, components=tuple(components))


@dataclass
class Plan:
    """Tasks to run, the settings to record for each hash, and which keys the stores held when planned."""

    tasks: list[Task] = field(default_factory=list)  # every task, pending and done
    done: set[tuple[str, Key]] = field(default_factory=set)  # (run_dir, key) already stored
    configs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (run_dir, hash) -> settings

    def __add__(self, other: Plan) -> Plan:
        return Plan(self.tasks + other.tasks, self.done | other.done, {**self.configs, **other.configs})

    @property
    def jobs(self) -> list[Job]:
        return [j for t in self.tasks for j in t.jobs]

    @property
    def run_dirs(self) -> list[Path]:
        return sorted({Path(t.run_dir) for t in self.tasks})

    @property
    def config_hash(self) -> str:
        """The settings hash of a single-settings plan (e.g. one sweep)."""
        hashes = sorted({t.config_hash for t in self.tasks}) or sorted({h for _, h in self.configs})
        if len(hashes) != 1:
            raise RllcError(f"this plan has {len(hashes)} settings hashes; read them from plan.tasks")
        return hashes[0]

    def pending_task(self, task: Task, done: set[tuple[str, Key]]) -> Task | None:
        """`task` without the components whose every row is in `done` (None when nothing is left)."""
        left = [j.component for j in task.jobs if not all((task.run_dir, k) in done for k in j.keys())]
        return task.only(left) if left else None

    @property
    def pending(self) -> list[Task]:
        return [t for t in (self.pending_task(t, self.done) for t in self.tasks) if t is not None]


def run_dirs(run_dir: str | Path | Iterable[str | Path]) -> list[Path]:
    """Absolute run directories from one path or several."""
    dirs = [run_dir] if isinstance(run_dir, (str, Path)) else list(run_dir)
    if not dirs:
        raise RllcError("no run directory given")
    return [Path(d).absolute() for d in dirs]


def require_writable(run_dir: str | Path) -> None:
    """Fail at once, before any planning or work, if the run's results store cannot be written."""
    from rllc._errors import is_writable, read_only_error

    if not is_writable(run_dir):
        raise read_only_error(Path(run_dir), "cannot store results")


def stored_keys(run_dir: str | Path) -> set[tuple[str, Key]]:
    """Every key in a run's store, tagged with the run directory (nothing if the store does not exist yet)."""
    from rllc.pipeline.store import STORE_NAME

    if not (Path(run_dir) / STORE_NAME).exists():
        return set()
    return {(str(run_dir), k) for k in ResultStore(run_dir).done_keys()}


def plan_family(run_dir: str | Path, family: str, *, steps: Sequence[int], components: Sequence[str],
                data: Sequence[tuple[str, str]], settings: dict[str, Any], config_hash: str,
                record: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
                done: set[tuple[str, Key]] | None = None) -> Plan:
    """The tasks of one family at `steps` × `data` of one run: one task per (step, data set).

    Args:
        data: (store key, resolvable spec) pairs, from `data.data_key`.
        settings: what the worker computes with; config_hash: the hash of the part that decides values.
        record: what the store's configs table records for the hash (default `settings`).
        done: the run's stored keys, if already read (default: read them).
    """
    measure(family)  # an unknown family fails here, not in a worker
    d = str(Path(run_dir).absolute())
    tasks = [Task(d, int(step), family, key, tuple(components), settings, config_hash, spec if spec != key else "",
                  dict(options or {}))
             for step in steps for key, spec in data]
    return Plan(tasks, stored_keys(d) if done is None else done, {(d, config_hash): record or settings})
