"""Sweeps: an LLC for every checkpoint × component × data set of one or several runs, resumable and exact.

A *job* is one estimate, keyed in the results store by (step, component, data, "llc", config hash). Jobs that
share a checkpoint and a data set form one *task*: a worker loads the checkpoint and samples the data once and
estimates every component of the task together (`estimate_llc_many`: the heads share minibatches and run as one
batched computation). The driver plans the jobs, skips those the store already holds, hands tasks to an executor
(`executors.py`), and alone writes the rows, one transaction per task. Killing a sweep loses at most the tasks
in flight; running it again computes exactly the missing jobs.

The config hash covers the sampler settings and how the data are sampled (n_samples, split, sample seed), so
changing any of them makes new rows and never overwrites old ones.
"""

from __future__ import annotations

import base64
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rllc._errors import DiskFullError, RllcError
from rllc.llc.config import SamplerConfig
from rllc.sweep.refs import check_data_spec, split_data_specs
from rllc.sweep.store import ResultRow, ResultStore, config_hash

MEASURE = "llc"
# A full disk at the end of a sweep: the driver holds the computed rows and retries this often before giving up.
_FULL_DISK_RETRIES = 6
_FULL_DISK_WAIT_S = 10.0


# ------------------------------------------------------------------------------------------------ planning


@dataclass(frozen=True)
class SweepConfig:
    """Everything that decides the value of an estimate besides (run, step, component, data): hashed into the
    store key.

    Attributes:
        sampler: the SGLD settings.
        n_samples: token windows drawn from each data set (the n of L_n).
        sample_seed: seed of that draw.
        split: "train" (the paper's L_n) or "val".
    """

    # Sweeps default to paired differences: the w* forward is shared by every head of a task (see SamplerConfig).
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(paired=True))
    n_samples: int = 2048
    sample_seed: int = 0
    split: str = "train"

    def __post_init__(self) -> None:
        if not isinstance(self.n_samples, int) or self.n_samples < 1:
            raise RllcError(f"n_samples must be a positive integer, got {self.n_samples!r}")
        if self.split not in ("train", "val"):
            raise RllcError(f"split must be 'train' or 'val', got {self.split!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.to_dict(), "n_samples": self.n_samples, "sample_seed": self.sample_seed,
                "split": self.split}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepConfig:
        return cls(SamplerConfig.from_dict(d["sampler"]), d["n_samples"], d["sample_seed"], d["split"])

    def config_hash(self) -> str:
        return config_hash({**self.to_dict(), "sampler": self.sampler.hash_dict()})  # plain SGLD: pre-kernel keys


@dataclass(frozen=True)
class Job:
    """One estimate: the LLC of `component` at checkpoint `step` of `run_dir` on data set `data`."""

    run_dir: str
    step: int
    component: str
    data: str

    def key(self, chash: str) -> tuple[int, str, str, str, str]:
        return (self.step, self.component, self.data, MEASURE, chash)


@dataclass(frozen=True)
class Task:
    """The jobs of one (run, checkpoint, data set): what a worker needs, all small and picklable.

    Attributes:
        components: component names; "a+b" is the union of a and b.
        config: SweepConfig.to_dict() (plain types, so a task pickles cheaply and hashes identically anywhere).
        batch_components: estimate the components together (`estimate_llc_many`) or one by one.
        threads: torch threads in the worker (None: leave as is).
    """

    run_dir: str
    step: int
    data: str
    components: tuple[str, ...]
    config: dict[str, Any]
    config_hash: str
    batch_components: bool = True
    threads: int | None = None

    @property
    def jobs(self) -> list[Job]:
        return [Job(self.run_dir, self.step, c, self.data) for c in self.components]


def select_steps(spec: str | Sequence[int] | None, available: Sequence[int], where: str = "the run") -> list[int]:
    """Checkpoint steps from a spec.

    Args:
        spec: "all" (or None), "last", "every:N" (checkpoints at multiples of N), "log:N" (N checkpoints spread
            evenly on a log step axis, always with the first and last), "S1,S2,..." or a list of ints.
        available: the run's checkpoint steps.
    """
    avail = sorted(available)
    if not avail:
        raise RllcError(f"{where} has no checkpoints; train it first")
    if spec is None or spec == "all":
        return avail
    if isinstance(spec, str):
        s = spec.strip()
        if s == "last":
            return [avail[-1]]
        if s.startswith(("every:", "log:")):
            kind, _, n = s.partition(":")
            try:
                k = int(n)
            except ValueError:
                k = 0
            if k < 1:
                raise RllcError(f"bad step spec {spec!r}; use {kind}:N with a positive integer N")
            if kind == "every":
                out = [x for x in avail if x % k == 0]
                if not out:
                    raise RllcError(f"no checkpoint of {where} is a multiple of {k}; see `rllc info`")
                return out
            if k >= len(avail):
                return avail
            pos = np.log1p(np.asarray(avail, dtype=float))  # log(1 + step): step 0 has a place
            targets = np.linspace(pos[0], pos[-1], k)
            chosen = {avail[int(np.argmin(np.abs(pos - t)))] for t in targets}
            # nearest-checkpoint collisions at the dense start: top up with the most isolated remaining steps
            while len(chosen) < k:
                rest = [x for x in avail if x not in chosen]
                cl = np.log1p(sorted(chosen))
                gap = [np.min(np.abs(cl - np.log1p(x))) for x in rest]
                chosen.add(rest[int(np.argmax(gap))])
            return sorted(chosen)
        try:
            steps = [int(x) for x in s.split(",") if x.strip()]
        except ValueError:
            raise RllcError(f"bad step spec {spec!r}; use all, last, every:N, log:N or S1,S2,...") from None
    else:
        steps = [int(x) for x in spec]
    missing = [x for x in steps if x not in set(avail)]
    if missing:
        near = min(avail, key=lambda a: abs(a - missing[0]))
        raise RllcError(f"{where} has no checkpoint at step {missing[0]}; nearest is {near} (see `rllc info`)")
    return sorted(set(steps))


def expand_components(spec: str | Sequence[str], model_cfg) -> list[str]:  # noqa: ANN001
    """Canonical component names from a spec: a comma-separated string or list; "heads" expands to every head
    "l:h"; "a+b" names the union of a and b as one component. Names are checked against the model."""
    from rllc.model import heads
    from rllc.model.components import Component

    parts = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec) if p.strip()]
    if not parts:
        raise RllcError("no components given; try --components heads,all")
    out: list[str] = []
    for p in parts:
        if any(not x.strip() for x in p.split("+")):
            raise RllcError(f"component {p!r} has an empty part; write a union as a+b (e.g. 0:0+0:1)")
        for name in (heads(model_cfg) if p == "heads" else [p]):
            name = Component.parse(name, model_cfg).name  # raises RllcError for unknown names
            if name not in out:
                out.append(name)
    return out


def _is_head(name: str) -> bool:
    from rllc.model.components import Component

    return Component.parse(name).is_head


@dataclass
class Plan:
    """The jobs of a sweep, grouped into tasks, and which of them the stores already hold."""

    config: SweepConfig
    tasks: list[Task]  # every task (pending and done), in run, step, data order
    done: set[tuple[str, tuple]]  # (run_dir, key) already stored when planned

    @property
    def config_hash(self) -> str:
        return self.config.config_hash()

    @property
    def jobs(self) -> list[Job]:
        return [j for t in self.tasks for j in t.jobs]

    def pending_task(self, task: Task, done: set[tuple[str, tuple]]) -> Task | None:
        """`task` with the components already in `done` removed (None if nothing is left)."""
        left = tuple(c for c in task.components
                     if (task.run_dir, (task.step, c, task.data, MEASURE, task.config_hash)) not in done)
        if not left:
            return None
        return task if left == task.components else Task(task.run_dir, task.step, task.data, left, task.config,
                                                         task.config_hash, task.batch_components, task.threads)

    @property
    def pending(self) -> list[Task]:
        return [t for t in (self.pending_task(t, self.done) for t in self.tasks) if t is not None]


def _run_dirs(run_dir: str | Path | Iterable[str | Path]) -> list[Path]:
    dirs = [run_dir] if isinstance(run_dir, (str, Path)) else list(run_dir)
    if not dirs:
        raise RllcError("no run directory given")
    return [Path(d).absolute() for d in dirs]


def plan_sweep(run_dir: str | Path | Iterable[str | Path], *, components: str | Sequence[str] = "heads,all",
               data: str | Sequence[str] = "pretrain", steps: str | Sequence[int] | None = "all",
               config: SweepConfig | None = None, batch_components: bool = True) -> Plan:
    """Plan a sweep without running it (validates every name; loads no weights and tokenises nothing).

    Args:
        run_dir: a run directory or several (e.g. the seeds of `rllc train --seeds`); each keeps its own store.
        components, data, steps: see `run_sweep`.
        config: the SweepConfig (sampler and data sampling).

    Returns:
        A `Plan`; `plan.pending` lists the tasks still to compute.
    """
    from rllc.train import load_run

    config = config or SweepConfig()
    chash = config.config_hash()
    data_specs = split_data_specs(data)
    tasks: list[Task] = []
    done: set[tuple[str, tuple]] = set()
    for d in _run_dirs(run_dir):
        run = load_run(d)
        comps = expand_components(components, run.config.model)
        for spec in data_specs:
            check_data_spec(run, spec)
        store = ResultStore(d)
        store.put_config(chash, config.to_dict())
        done |= {(str(d), k) for k in store.done_keys(MEASURE) if k[4] == chash}
        for step in select_steps(steps, run.steps, str(d)):
            for spec in data_specs:
                tasks.append(Task(str(d), step, spec, tuple(comps), config.to_dict(), chash, batch_components))
    return Plan(config, tasks, done)


# ------------------------------------------------------------------------------------------------ the worker


_CACHE: dict[str, Any] = {}  # per process: the last run, checkpoint and a few samples (a worker's tasks repeat them)


def _cached(key: tuple, make: Callable[[], Any], slot: str, keep: int = 1) -> Any:
    entries = _CACHE.setdefault(slot, {})
    if key not in entries:
        while len(entries) >= keep:
            entries.pop(next(iter(entries)))
        entries[key] = make()
    return entries[key]


def encode_trace(trace: np.ndarray) -> dict[str, Any]:
    """A (C, draws) loss trace as compact JSON: little-endian float32, base64 (NaN kept)."""
    a = np.ascontiguousarray(trace, dtype="<f4")
    return {"shape": list(a.shape), "f32": base64.b64encode(a.tobytes()).decode()}


def decode_trace(enc: dict[str, Any]) -> np.ndarray:
    """Inverse of `encode_trace`: a float64 array of the stored shape."""
    return np.frombuffer(base64.b64decode(enc["f32"]), dtype="<f4").astype(np.float64).reshape(enc["shape"])


def _row(task: Task, component: str, res, wall_s: float) -> ResultRow:  # noqa: ANN001 - LLCResult
    def num(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    extra = {"per_chain": [num(x) for x in res.per_chain], "init_loss": num(res.init_loss),
             "diagnostics": res.diagnostics.to_dict(), "loss_trace": encode_trace(res.loss_trace),
             "wall_s": round(wall_s, 4)}
    return ResultRow(task.step, component, task.data, MEASURE, task.config_hash, num(res.mean), num(res.std),
                     bool(res.valid), extra)


def run_task(task: Task) -> list[ResultRow]:
    """Estimate every component of one (run, checkpoint, data set) task; runs in a worker.

    Loads the checkpoint and draws the samples (cached per process), then estimates the heads together and the
    other components together, every call with the same sampler seed so that chain c sees the same minibatches
    in every component.

    Returns:
        One ResultRow per component, in `task.components` order.
    """
    import torch

    from rllc.llc import estimate_llc_many
    from rllc.sweep.refs import resolve_data
    from rllc.train import load_run

    if task.threads:
        torch.set_num_threads(task.threads)
    cfg = SweepConfig.from_dict(task.config)
    run = _cached((task.run_dir,), lambda: load_run(task.run_dir), "run")
    model = _cached((task.run_dir, task.step), lambda: run.model_at(task.step), "model")
    tokens, loss_fn = _cached((task.run_dir, task.data, cfg.n_samples, cfg.sample_seed, cfg.split),
                              lambda: resolve_data(run, task.data, cfg.n_samples, seed=cfg.sample_seed,
                                                   split=cfg.split), "data", keep=4)
    head_comps = [c for c in task.components if _is_head(c)]
    groups = [head_comps, [c for c in task.components if not _is_head(c)]]
    if not task.batch_components:
        groups = [[c] for c in task.components]
    rows: dict[str, ResultRow] = {}
    for group in groups:
        if not group:
            continue
        t0 = time.perf_counter()
        results = estimate_llc_many(model, tokens, list(group), loss_fn=loss_fn,
                                    config=cfg.sampler)
        wall = (time.perf_counter() - t0) / len(group)
        for c, res in zip(group, results):
            rows[c] = _row(task, c, res, wall)
    return [rows[c] for c in task.components]


# ------------------------------------------------------------------------------------------------ the driver


@dataclass
class SweepResult:
    """What a sweep did.

    Attributes:
        planned: jobs in the sweep; skipped: already in the store before it started; computed: rows written now
            (fewer than planned − skipped only if a concurrent sweep wrote some first).
        config_hash: the store key of these settings. wall_s: seconds. table: the summary (see `summary_table`).
    """

    run_dirs: list[Path]
    config_hash: str
    planned: int
    skipped: int
    computed: int
    wall_s: float
    table: pd.DataFrame

    def __str__(self) -> str:
        head = (f"{self.planned} jobs planned, {self.skipped} already stored, {self.computed} computed in "
                f"{self.wall_s:.0f} s (config {self.config_hash})")
        return head + ("\n" + self.table.to_string(index=False, float_format=lambda x: f"{x:.3g}")
                       if len(self.table) else "")


def summary_table(run_dirs: Sequence[Path], chash: str) -> pd.DataFrame:
    """One row per (run, data, component): checkpoints done, invalid estimates, λ̂ at the first and last step."""
    from rllc.sweep.store import load_results

    df = load_results(list(run_dirs))
    df = df[(df.measure == MEASURE) & (df.config_hash == chash)]
    if df.empty:
        return pd.DataFrame(columns=["run", "data", "component", "steps", "invalid", "llc_first", "llc_last"])
    df = df.sort_values("step")
    g = df.groupby(["run", "data", "component"], sort=False)
    out = g.agg(steps=("step", "size"), invalid=("valid", lambda v: int((~v).sum())),
                llc_first=("value", "first"), llc_last=("value", "last")).reset_index()
    return out.sort_values(["run", "data", "component"]).reset_index(drop=True)


def run_plan(plan: Plan, executor=None, *, progress: bool = True,  # noqa: ANN001
             task_fn: Callable[[Task], list[ResultRow]] = run_task) -> SweepResult:
    """Execute a plan's pending tasks; the calling process writes every row.

    Args:
        plan: from `plan_sweep`.
        executor: an executor from `executors.py` (default in-process); a RayExecutor not yet started starts
            locally with its temp directory inside the first run directory. Not closed here.
        task_fn: the worker function (default `run_task`; tests wrap it to inject failures).
    """
    from rllc.sweep.executors import InProcessExecutor, RayExecutor

    t0 = time.perf_counter()
    run_dirs = sorted({Path(t.run_dir) for t in plan.tasks})
    stores = {str(d): ResultStore(d) for d in run_dirs}
    chash = plan.config_hash
    pending = plan.pending
    todo = sum(len(t.components) for t in pending)
    skipped = len(plan.jobs) - todo
    executor = executor or InProcessExecutor()
    if isinstance(executor, RayExecutor) and run_dirs:
        executor.start(run_dirs[0])
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=todo, desc="sweep", unit="job", dynamic_ncols=True)

    def fresh(tasks: list[Task]) -> Iterator[Task]:
        # Just before a task is handed out, drop what a concurrent sweep has finished since planning.
        for t in tasks:
            done = {(t.run_dir, k) for k in stores[t.run_dir].done_keys(MEASURE) if k[4] == chash}
            left = plan.pending_task(t, done)
            if left is None:
                if bar is not None:
                    bar.update(len(t.components))
                continue
            if bar is not None and len(left.components) < len(t.components):
                bar.update(len(t.components) - len(left.components))
            yield left

    computed = 0
    held: list[tuple[Task, list[ResultRow]]] = []  # computed, not yet stored (the disk was full)

    def store_held() -> None:
        nonlocal computed
        while held:
            computed += stores[held[0][0].run_dir].put_many(held[0][1])  # DiskFullError leaves it held
            held.pop(0)

    try:
        for task, rows in executor.map(task_fn, fresh(pending)):
            held.append((task, rows))
            try:
                store_held()
            except DiskFullError as e:  # keep computing; every later task retries the write
                if bar is not None:
                    bar.write(f"rllc: {e}; {sum(len(r) for _, r in held)} results held in memory, retried after "
                              "the next task")
            if bar is not None:
                bar.update(len(rows))
                last = next((r for r in rows if r.value is not None), None)
                if last is not None:
                    bar.set_postfix_str(f"step {task.step} {task.data[:20]} {last.component} λ̂={last.value:.3g}")
        for attempt in range(_FULL_DISK_RETRIES + 1):
            try:
                store_held()
                break
            except DiskFullError as e:
                if attempt == _FULL_DISK_RETRIES:
                    n = sum(len(r) for _, r in held)
                    raise DiskFullError(f"{e}. {n} computed results could not be stored and are lost; {computed} "
                                        "were stored. After freeing space the same sweep computes only those") \
                        from None
                print(f"rllc: {e}; {sum(len(r) for _, r in held)} results held in memory: retrying in "
                      f"{_FULL_DISK_WAIT_S:g} s (free space now)", file=sys.stderr)
                time.sleep(_FULL_DISK_WAIT_S)
    finally:
        if bar is not None:
            bar.close()
    return SweepResult(run_dirs, chash, len(plan.jobs), skipped, computed, time.perf_counter() - t0,
                       summary_table(run_dirs, chash))


def run_sweep(run_dir: str | Path | Iterable[str | Path], *, components: str | Sequence[str] = "heads,all",
              data: str | Sequence[str] = "pretrain", steps: str | Sequence[int] | None = "all",
              config: SamplerConfig | None = None, n_samples: int = 2048, sample_seed: int = 0, split: str = "train",
              executor: str | Any = "inprocess", address: str | None = None, workers: int | None = None,
              batch_components: bool = True, progress: bool = True, **overrides: Any) -> SweepResult:
    """Estimate an LLC for every checkpoint × component × data set and store it in each run's results store.

    Re-running computes only what is missing; changing any setting makes new rows (a new config hash).

    Args:
        run_dir: a run directory, or several (e.g. seeds).
        components: "heads" (every head l:h: the wrLLC), "all" (the full model), "layer:0", ..., "a+b" for a
            union; comma-separated or a list. Default "heads,all".
        data: data set specs, comma-separated or a list: "pretrain" (the run's mixture; the plain LLC), "code",
            "prose", ... (data-refined), "model:PATH@STEP" (model-as-generator drLLC); see `rllc.sweep.refs`.
        steps: "all", "last", "every:N", "log:N" or "S1,S2,..." (see `select_steps`).
        config: a SamplerConfig; keyword `overrides` (epsilon, nbeta, gamma, chains, draws, batch_size, ...)
            replace its fields.
        n_samples, sample_seed, split: the fixed sample of windows drawn from each data set.
        executor: "inprocess" (default), "pool", "ray", or an executor object (left open).
        address: Ray cluster address for executor="ray" (None: a private local runtime, loopback only).
        workers: pool processes / local Ray CPUs.
        batch_components: estimate a task's heads together (`estimate_llc_many`); False runs them one by one.
        progress: a progress bar over jobs (with ETA).

    Returns:
        A `SweepResult` (counts, wall time, summary table). Read the values with `rllc.load_results(run_dir)`.
    """
    from rllc.sweep.executors import make_executor

    sampler = (config or SweepConfig().sampler).replace(**overrides)
    cfg = SweepConfig(sampler, n_samples, sample_seed, split)
    plan = plan_sweep(run_dir, components=components, data=data, steps=steps, config=cfg,
                      batch_components=batch_components)
    if isinstance(executor, str):
        ex = make_executor(executor, address=address, workers=workers)
        try:
            return run_plan(plan, ex, progress=progress)
        finally:
            ex.close()
    return run_plan(plan, executor, progress=progress)


# ------------------------------------------------------------------------------------------------ the demo's sweep


# The demo's sweep on the cpu preset (2 × 4 heads, d_model 64, n_ctx 64, vocab 1024), sized for its budget on 2
# CPU cores: the paper's ε, nβ, γ and 4 chains, but 20 draws of batch 8 instead of 200 draws of batch 32 (40× less
# sampling), with paired (same-minibatch) differences, on 512 windows per data set. The heads at 12 checkpoints
# spread on a log axis (`steps`); the full-model LLC at every checkpoint (`full_steps`), dense enough for the stage
# detection to see the LLC jump while the induction heads form.
DEMO_SWEEP = dict(steps="log:12", full_steps="all", chains=4, draws=20, batch_size=8, n_samples=512)


def demo_sweep(run_dir: str | Path, *, executor: str | Any = "inprocess", progress: bool = True,
               **settings: Any) -> SweepResult:
    """The demo's sweep: per-head wrLLC on the pre-training mixture and on `code` at 12 checkpoints spread on a log
    axis, and the full-model LLC on the pre-training mixture at every checkpoint (`DEMO_SWEEP`; `settings`
    override it)."""
    from rllc.sweep.executors import make_executor

    s = {**DEMO_SWEEP, **settings}
    steps, full_steps, n_samples = s.pop("steps"), s.pop("full_steps"), s.pop("n_samples")
    cfg = SweepConfig(SweepConfig().sampler.replace(**s), n_samples)
    heads = plan_sweep(run_dir, components="heads", data="pretrain,code", steps=steps, config=cfg)
    full = plan_sweep(run_dir, components="all", data="pretrain", steps=full_steps, config=cfg)
    order = {d: i for i, d in enumerate(["pretrain", "code"])}
    tasks = sorted(heads.tasks + full.tasks, key=lambda t: (t.run_dir, t.step, order[t.data], len(t.components)))
    plan = Plan(cfg, tasks, heads.done | full.done)
    ex = make_executor(executor) if isinstance(executor, str) else executor
    try:
        return run_plan(plan, ex, progress=progress)
    finally:
        if isinstance(executor, str):
            ex.close()
