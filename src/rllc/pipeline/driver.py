"""The driver: announce a plan and its measured cost, run its pending tasks on an executor, and write every row.

One writer: workers return rows; only this process writes them, one transaction per task (INSERT OR IGNORE on
the row key), so `kill -9` loses at most the tasks in flight and a rerun computes exactly the missing jobs. Just
before a task is handed out the driver re-reads the store and drops what a concurrent run finished meanwhile.

The cost estimate is measured, not guessed: before starting, the driver runs, in this process, the first pending
task of each (family, data set, components) with its unit of work scaled to 2 and to 4 units (draws, probes), and
fits seconds = fixed + per_unit × units; a family without a scalable unit (or a task of 4 units or fewer) has its
first task run in full (its rows are kept). The plan, the fitted costs and the estimate are printed together right
after this probe, before the rest of the work starts (so a bad checkpoint the probe meets is the only line
printed), and one progress bar counts units of work across all tasks (draws inside a task when tasks run
in-process), with an ETA.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from rllc._errors import DiskFullError
from rllc.pipeline.jobs import Plan, Task
from rllc.pipeline.measures import measure
from rllc.pipeline.store import ResultRow, ResultStore, load_results
from rllc.pipeline.worker import run_task

Say = Callable[[str], None]
# A full disk: the driver holds the computed rows, retries after every task, and this often at the end.
_FULL_DISK_RETRIES = 6
_FULL_DISK_WAIT_S = 10.0


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def format_seconds(s: float) -> str:
    """'42 s', '7.5 min', '2.3 h'."""
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min" if s < 5400 else f"{s / 3600:.1f} h"


# ------------------------------------------------------------------------------------------------ results


@dataclass
class RunResult:
    """What a run of a plan did (every command's summary has this first line).

    Attributes:
        planned: jobs in the plan; skipped: already stored before it started; computed: jobs computed now;
            rows: store rows written now (several per job for head measures); estimate_s: the announced
            duration (None when not estimated); wall_s: the measured one. table: a summary per (run, data,
            component, measure) or the command's own table.
    """

    run_dirs: list[Path]
    planned: int
    skipped: int
    computed: int
    rows: int
    wall_s: float
    estimate_s: float | None = None
    config_hashes: list[str] = field(default_factory=list)
    table: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def config_hash(self) -> str:
        return self.config_hashes[0] if len(self.config_hashes) == 1 else ",".join(self.config_hashes)

    def headline(self) -> str:
        est = f", estimated {format_seconds(self.estimate_s)}" if self.estimate_s is not None else ""
        return (f"{self.planned} jobs planned, {self.skipped} already stored, {self.computed} computed "
                f"({self.rows} rows) in {format_seconds(self.wall_s)}{est} (settings {self.config_hash})")

    def __str__(self) -> str:
        return self.headline() + ("\n" + self.table.to_string(index=False, float_format=lambda x: f"{x:.3g}")
                                  if len(self.table) else "")


def summary_table(run_dirs: Sequence[Path], measures: Sequence[str], hashes: Sequence[str]) -> pd.DataFrame:
    """One row per (run, data, component, measure) of these settings: checkpoints done, invalid values, the value
    at the first and the last step."""
    cols = ["run", "data", "component", "measure", "steps", "invalid", "first", "last"]
    df = load_results(list(run_dirs)) if run_dirs else pd.DataFrame()
    if df.empty:
        return pd.DataFrame(columns=cols)
    df = df[df.measure.isin(measures) & df.config_hash.isin(hashes)]
    if df.empty:
        return pd.DataFrame(columns=cols)
    g = df.sort_values("step").groupby(["run", "data", "component", "measure"], sort=False)
    out = g.agg(steps=("step", "size"), invalid=("valid", lambda v: int((~v).sum())),
                first=("value", "first"), last=("value", "last")).reset_index()
    return out.sort_values(["run", "data", "measure", "component"]).reset_index(drop=True)[cols]


# ------------------------------------------------------------------------------------------------ the estimate


@dataclass
class Cost:
    """Measured seconds of one task of a (family, data set): fixed + per_unit × units, per component."""

    fixed: float
    per_unit: float
    unit: str
    components: int

    def seconds(self, task: Task) -> float:
        m = measure(task.family)
        units = m.units(task.settings) if m.units else 0
        return (self.fixed + self.per_unit * units) * len(task.components) / self.components


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def probe_costs(pending: Sequence[Task], task_fn: Callable[[Task], list[ResultRow]]
                ) -> tuple[dict[tuple[str, str], Cost], list[tuple[Task, list[ResultRow]]]]:
    """Measure one task of every (family, data set, components) in this process (see the module docstring).

    Returns:
        (costs, finished): the fitted costs, and the (task, rows) of unscalable tasks run in full.
    """
    costs: dict[tuple[str, str, tuple[str, ...]], Cost] = {}
    finished: list[tuple[Task, list[ResultRow]]] = []
    for task in pending:
        if cost_of(costs, task) is not None:
            continue
        group = (task.family, task.data, task.components)
        m = measure(task.family)
        if m.scale is None or m.units(task.settings) <= 4:  # nothing to scale down: the task itself is the probe
            t, rows = _timed(lambda: task_fn(task))
            finished.append((task, rows))
            costs[group] = Cost(t, 0.0, "", len(task.components))  # (a task of few units: fixed cost only)
            continue
        t2, _ = _timed(lambda: task_fn(replace(task, settings=m.scale(task.settings, 2))))
        t4, _ = _timed(lambda: task_fn(replace(task, settings=m.scale(task.settings, 4))))
        per = max(t4 - t2, 0.0) / 2
        if per == 0.0:  # timer noise on a very cheap task: charge all the time to the units
            per = t4 / 4
        costs[group] = Cost(max(t2 - 2 * per, 0.0), per, m.unit, len(task.components))
    return costs, finished


def cost_of(costs: dict[tuple[str, str, tuple[str, ...]], Cost], task: Task) -> Cost | None:
    """The probe that measured this task's (family, data set, components), or one of a superset of them."""
    if (task.family, task.data, task.components) in costs:
        return costs[(task.family, task.data, task.components)]
    return next((c for (f, d, comps), c in costs.items()
                 if f == task.family and d == task.data and set(task.components) <= set(comps)), None)


def describe(plan: Plan, pending: Sequence[Task]) -> list[str]:
    """The plan in a few lines: jobs per family, checkpoints, components and data sets, and what is stored."""
    lines = []
    by_family: dict[str, list[Task]] = {}
    for t in plan.tasks:
        by_family.setdefault(t.family, []).append(t)
    todo = Counter(t.family for t in pending for _ in t.components)
    for fam, tasks in by_family.items():
        steps = sorted({t.step for t in tasks})
        data = sorted({t.data for t in tasks})
        comps = sorted({c for t in tasks for c in t.components})
        n_jobs = sum(len(t.components) for t in tasks)
        shown = ", ".join(comps[:6]) + (f", … ({len(comps)})" if len(comps) > 6 else "")
        lines.append(f"plan: {fam}: {n_jobs} jobs = {len(steps)} checkpoints ({steps[0]}..{steps[-1]}) × "
                     f"{len(data)} data set(s) ({', '.join(d[:40] for d in data)}) × components [{shown}]; "
                     f"{n_jobs - todo[fam]} stored, {todo[fam]} to compute")
    return lines


# ------------------------------------------------------------------------------------------------ running


def _parallelism(executor: Any) -> int:
    return max(1, int(getattr(executor, "workers", None) or 1))


def run_plan(plan: Plan, executor: Any = None, *, progress: bool = True,
             task_fn: Callable[[Task], list[ResultRow]] = run_task, say: Say | None = None,
             estimate: bool | None = None, table: Callable[[Plan], pd.DataFrame] | None = None) -> RunResult:
    """Run a plan's pending tasks; the calling process writes every row.

    Args:
        plan: from a planner (`rllc.sweep.plan_sweep`, `rllc.analysis.over_training.plan_heads`,
            `rllc.analysis.hessian_sweep.plan_hessian`, or their sum).
        executor: an executor from `rllc.pipeline.executors` (default in-process); a RayExecutor not yet
            started starts locally with its temp directory inside the first run directory. Not closed here.
        progress: a progress bar over units of work (draws, probes, tasks) with an ETA.
        task_fn: the worker function (default `run_task`; tests wrap it to inject failures).
        say: where the plan and the estimate are printed (default: stderr when `progress`, else nowhere).
        estimate: measure the cost before starting (default: when `progress`).
        table: the summary table for the result (default: `summary_table` of the plan's measures).

    Returns:
        A `RunResult`.
    """
    from rllc.pipeline.executors import InProcessExecutor, RayExecutor

    t0 = time.perf_counter()
    say = say or (_stderr if progress else (lambda line: None))
    estimate = progress if estimate is None else estimate
    run_dirs = plan.run_dirs
    stores = {str(d): ResultStore(d) for d in run_dirs}
    for (d, h), settings in plan.configs.items():
        if d in stores:
            stores[d].put_config(h, settings)
    pending = plan.pending
    planned = len(plan.jobs)
    todo = sum(len(t.components) for t in pending)
    executor = executor or InProcessExecutor()
    in_process = isinstance(executor, InProcessExecutor)
    computed = rows_written = 0

    held: list[tuple[Task, list[ResultRow]]] = []  # computed, not yet stored (the disk was full)

    def store_held() -> None:
        nonlocal computed, rows_written
        while held:
            task, rows = held[0]
            n = stores[task.run_dir].put_many(rows)  # DiskFullError leaves it held
            held.pop(0)
            rows_written += n
            # jobs whose rows were written now (exact when a job is one row, or when all or none were new)
            computed += round(n * len(task.components) / len(rows)) if rows else 0

    def write(task: Task, rows: list[ResultRow]) -> None:
        held.append((task, rows))
        try:
            store_held()
        except DiskFullError as e:  # keep computing; every later task retries the write
            say(f"rllc: {e}; {sum(len(r) for _, r in held)} results held in memory, retried after the next task")

    # The plan is printed with its measured cost, after the probe: a bad checkpoint or data set found by the probe
    # is then the only line the user sees.
    plan_lines = describe(plan, pending) if todo else []
    estimate_s = None
    if estimate and pending:
        costs, finished = probe_costs(pending, task_fn)
        for task, rows in finished:
            write(task, rows)
        probe_s = time.perf_counter() - t0
        rest = [t for t in pending if all(t is not f for f, _ in finished)]
        serial = sum(cost_of(costs, t).seconds(t) for t in rest)
        estimate_s = probe_s + serial / _parallelism(executor)
        for line in plan_lines:
            say(line)
        for (fam, data, comps), c in costs.items():
            unit = (f"{c.per_unit:.3g} s per {c.unit} + {c.fixed:.2g} s per task" if c.unit
                    else f"{c.fixed:.3g} s per task (its first task, measured)")
            say(f"cost: {fam} on {data[:40]}, {len(comps)} component(s): {unit}")
        par = f" on {_parallelism(executor)} workers" if _parallelism(executor) > 1 else ""
        say(f"estimate: {format_seconds(estimate_s)}{par} for {len(pending)} tasks "
            f"(the probe took {format_seconds(probe_s)})")
        pending = rest
    else:
        for line in plan_lines:
            say(line)

    bar = None
    if progress and pending:
        from tqdm.auto import tqdm

        units = {measure(t.family).unit or "task" for t in pending}
        bar = tqdm(total=sum(measure(t.family).work(t) for t in pending), desc=plan_label(plan),
                   unit=units.pop() if len(units) == 1 else "unit", dynamic_ncols=True)

    credited: dict[int, int] = {}  # id(task) -> units already shown for it (in-process progress)

    def advance(task: Task, n: int) -> None:
        if bar is not None:
            credited[id(task)] = credited.get(id(task), 0) + n
            bar.update(n)

    def fresh(tasks: list[Task]) -> Iterator[Task]:
        for t in tasks:
            left = plan.pending_task(t, {(t.run_dir, k) for k in stores[t.run_dir].done_keys()})
            if left is None:
                if bar is not None:
                    bar.update(measure(t.family).work(t))
                continue
            if bar is not None and left is not t:
                bar.update(measure(t.family).work(t) - measure(t.family).work(left))
            yield left

    def call(task: Task) -> list[ResultRow]:
        if in_process and task_fn is run_task:
            return run_task(task, partial(advance, task))
        return task_fn(task)

    if isinstance(executor, RayExecutor) and run_dirs:
        executor.start(run_dirs[0])
    try:
        for task, rows in executor.map(call if in_process else task_fn, fresh(pending)):
            write(task, rows)
            if bar is not None:
                bar.update(max(measure(task.family).work(task) - credited.pop(id(task), 0), 0))
                last = next((r for r in rows if r.value is not None), None)
                if last is not None:
                    bar.set_postfix_str(f"step {task.step} {task.data[:20]} {last.component} "
                                        f"{last.measure}={last.value:.3g}")
        for attempt in range(_FULL_DISK_RETRIES + 1):
            try:
                store_held()
                break
            except DiskFullError as e:
                if attempt == _FULL_DISK_RETRIES:
                    n = sum(len(r) for _, r in held)
                    raise DiskFullError(f"{e}. {n} computed results could not be stored and are lost; "
                                        f"{rows_written} were stored. After freeing space the same command "
                                        "computes only those") from None
                _stderr(f"rllc: {e}; {sum(len(r) for _, r in held)} results held in memory: retrying in "
                        f"{_FULL_DISK_WAIT_S:g} s (free space now)")
                time.sleep(_FULL_DISK_WAIT_S)
    finally:
        if bar is not None:
            bar.close()
    # The settings of the result are those of each job's first row (a susceptibility job's rLLC row is keyed by
    # the plain sweep's hash, so a sweep given probes reports the sweep's settings); the table shows every row.
    jobs = plan.jobs
    hashes = sorted({j.key()[4] for j in jobs})
    keys = {k for j in jobs for k in j.keys()}
    measures, all_hashes = sorted({k[3] for k in keys}), sorted({k[4] for k in keys})
    tab = table(plan) if table is not None else summary_table(run_dirs, measures, all_hashes)
    return RunResult(run_dirs, planned, planned - todo, computed, rows_written, time.perf_counter() - t0,
                     estimate_s, hashes, tab)


def run_with(plan: Plan, executor: str | Any = "inprocess", *, address: str | None = None,
             workers: int | None = None, progress: bool = True, **kw: Any) -> RunResult:
    """`run_plan` on an executor given by name (made and closed here) or as an object (left open)."""
    from rllc.pipeline.executors import make_executor

    if not isinstance(executor, str):
        return run_plan(plan, executor, progress=progress, **kw)
    ex = make_executor(executor, address=address, workers=workers)
    try:
        return run_plan(plan, ex, progress=progress, **kw)
    finally:
        ex.close()


def plan_label(plan: Plan) -> str:
    fams = sorted({t.family for t in plan.tasks})
    return fams[0] if len(fams) == 1 else f"{len(fams)} measures"
