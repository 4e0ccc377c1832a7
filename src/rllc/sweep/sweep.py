"""Sweeps: an LLC for every checkpoint × component × data set of one or several runs, resumable and exact.

The "llc" measure of the pipeline (`rllc.pipeline`): a *job* is one estimate, keyed in the results store by
(step, component, data, "llc", config hash). Jobs that share a checkpoint and a data set form one *task*: a worker
loads the checkpoint and samples the data once and estimates every component of the task together
(`estimate_llc_many`: the heads share minibatches and run as one batched computation). The pipeline's driver
skips what the store already holds, hands tasks to an executor, and alone writes the rows, one transaction per
task. Killing a sweep loses at most the tasks in flight; running it again computes exactly the missing jobs.

The config hash covers the sampler settings and how the data are sampled (n_samples, split, sample seed), so
changing any of them makes new rows and never overwrites old ones.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rllc._errors import RllcError
from rllc.llc.config import SamplerConfig
from rllc.pipeline.data import check_data_spec, data_key, split_data_specs
from rllc.pipeline.driver import RunResult, run_with
from rllc.pipeline.jobs import Plan, Task, plan_family, require_writable, run_dirs
from rllc.pipeline.steps import select_steps
from rllc.pipeline.store import ResultRow, config_hash
from rllc.pipeline.worker import TaskContext

MEASURE = "llc"


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
        for name in (heads(model_cfg) if p == "heads" else [p]):
            name = Component.parse(name, model_cfg).name  # raises RllcError for unknown names
            if name not in out:
                out.append(name)
    return out


def plan_inputs(run_dir: str | Path, components: str | Sequence[str], data: Sequence[str],
                also: Sequence[str] = ()):  # noqa: ANN201 - (Run, list[str], list[DataKey])
    """The checked inputs of planning a measure on one run, before any job is made: the run (loaded, its results
    store writable), the canonical component names and the store keys of the `data` specs; every spec of `data`
    and `also` (e.g. probes) is validated against the run (`check_data_spec`: nothing tokenised or loaded).

    Returns:
        (run, components, data_keys): a `rllc.train.Run`, a list of names, a list of `rllc.pipeline.DataKey`.
    """
    from rllc.train import load_run

    run = load_run(run_dir)
    require_writable(run_dir)
    comps = expand_components(components, run.config.model)
    for spec in (*data, *also):
        check_data_spec(run, spec)
    return run, comps, [data_key(run, spec) for spec in data]


def _is_head(name: str) -> bool:
    from rllc.model.components import Component

    return Component.parse(name).is_head


def llc_groups(task: Task) -> list[list[str]]:
    """The components of a task estimated together: the heads (one per-head sampler call), then the rest (one
    call), or one call per component when `batch_components` is off."""
    if not task.options.get("batch_components", True):
        return [[c] for c in task.components]
    heads = [c for c in task.components if _is_head(c)]
    return [g for g in (heads, [c for c in task.components if not _is_head(c)]) if g]


def plan_sweep(run_dir: str | Path | Iterable[str | Path], *, components: str | Sequence[str] = "heads,all",
               data: str | Sequence[str] = "pretrain", steps: str | Sequence[int] | None = "all",
               config: SweepConfig | None = None, batch_components: bool = True, probes: Any = None) -> Plan:
    """Plan a sweep without running it (validates every name; loads no weights and tokenises nothing).

    Args:
        run_dir: a run directory or several (e.g. the seeds of `rllc train --seeds`); each keeps its own store.
        components, data, steps: see `run_sweep`.
        config: the SweepConfig (sampler and data sampling).
        probes: probe data sets (a `rllc.sweep.susceptibility.ProbeConfig`, or specs): plan "susceptibility"
            tasks instead, which store the same "llc" rows and the susceptibilities from the same draws.

    Returns:
        A `rllc.pipeline.Plan` of "llc" tasks, one per (run, checkpoint, data set); `plan.pending` lists those
        still to compute.
    """
    if probes is not None:
        from rllc.sweep.susceptibility import plan_susceptibility

        return plan_susceptibility(run_dir, probes=probes, components=components, data=data, steps=steps,
                                   config=config, batch_components=batch_components)
    config = config or SweepConfig()
    chash = config.config_hash()
    data_specs = split_data_specs(data)
    plan = Plan()
    for d in run_dirs(run_dir):
        run, comps, keys = plan_inputs(d, components, data_specs)
        plan = plan + plan_family(d, MEASURE, steps=select_steps(steps, run.steps, str(d)), components=comps,
                                  data=[(k.key, k.spec) for k in keys], settings=config.to_dict(),
                                  config_hash=chash, options={"batch_components": batch_components})
    return plan


# ------------------------------------------------------------------------------------------------ the measure


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


def llc_rows(ctx: TaskContext, task: Task) -> list[ResultRow]:
    """The "llc" measure: estimate every component of one (run, checkpoint, data set) task.

    The heads are estimated together and the other components together (`llc_groups`), every call with the same
    sampler seed so that chain c sees the same minibatches in every component.

    Returns:
        One ResultRow per component, in `task.components` order.
    """
    from rllc.llc import estimate_llc_many

    cfg = SweepConfig.from_dict(task.settings)
    tokens, loss_fn = ctx.data(cfg.n_samples, seed=cfg.sample_seed, split=cfg.split)
    rows: dict[str, ResultRow] = {}
    for group in llc_groups(task):
        t0 = time.perf_counter()
        results = estimate_llc_many(ctx.model, tokens, list(group), loss_fn=loss_fn, config=cfg.sampler,
                                    progress=ctx.counter(cfg.sampler.draws))
        wall = (time.perf_counter() - t0) / len(group)
        for c, res in zip(group, results):
            rows[c] = _row(task, c, res, wall)
    return [rows[c] for c in task.components]


# ------------------------------------------------------------------------------------------------ the driver


SweepResult = RunResult  # what a sweep did: counts, wall time, the announced estimate, the summary table


def run_sweep(run_dir: str | Path | Iterable[str | Path], *, components: str | Sequence[str] = "heads,all",
              data: str | Sequence[str] = "pretrain", steps: str | Sequence[int] | None = "all",
              config: SamplerConfig | None = None, n_samples: int = 2048, sample_seed: int = 0,
              split: str = "train", executor: str | Any = "inprocess", address: str | None = None,
              workers: int | None = None, batch_components: bool = True, progress: bool = True,
              probes: str | Sequence[str] | None = None, probe_samples: int = 8, probe_seed: int = 1,
              probe_split: str = "val", **overrides: Any) -> RunResult:
    """Estimate an LLC for every checkpoint × component × data set and store it in each run's results store.

    Re-running computes only what is missing; changing any setting makes new rows (a new config hash). With
    `progress`, the plan and its measured duration are printed (stderr) before the work starts.

    Args:
        run_dir: a run directory, or several (e.g. seeds).
        components: "heads" (every head l:h: the wrLLC), "all" (the full model), "layer:0", ..., "a+b" for a
            union; comma-separated or a list. Default "heads,all".
        data: data set specs, comma-separated or a list: "pretrain" (the run's mixture; the plain LLC), "code",
            "prose", ... (data-refined), "model:PATH@STEP" (model-as-generator drLLC); see `rllc.pipeline.data`.
        steps: "all", "last", "every:N", "log:N" or "S1,S2,..." (see `rllc.pipeline.select_steps`).
        config: a SamplerConfig; keyword `overrides` (epsilon, nbeta, gamma, chains, draws, batch_size, ...)
            replace its fields.
        n_samples, sample_seed, split: the fixed sample of windows drawn from each data set.
        executor: "inprocess" (default), "pool", "ray", or an executor object (left open).
        address: Ray cluster address for executor="ray" (None: a private local runtime, loopback only).
        workers: pool processes / local Ray CPUs.
        batch_components: estimate a task's heads together (`estimate_llc_many`); False runs them one by one.
        progress: print the plan and its estimated duration, and a progress bar over draws (with ETA).
        probes: probe data specs ("code,prose,synthetic.induction"): the same estimates, plus every component's
            per-token susceptibilities and LLC contributions on each probe from the same draws
            (`rllc.sweep.susceptibility`); probe_samples, probe_seed, probe_split choose the probe windows.

    Returns:
        A `RunResult` (counts, wall time, estimate, summary table). Read the values with
        `rllc.load_results(run_dir)`.
    """
    sampler = (config or SweepConfig().sampler).replace(**overrides)
    cfg = SweepConfig(sampler, n_samples, sample_seed, split)
    pc = None
    if probes is not None:
        from rllc.sweep.susceptibility import ProbeConfig, probe_specs

        pc = ProbeConfig(probe_specs(probes), probe_samples, probe_seed, probe_split)
    plan = plan_sweep(run_dir, components=components, data=data, steps=steps, config=cfg,
                      batch_components=batch_components, probes=pc)
    return run_with(plan, executor, address=address, workers=workers, progress=progress)


# ------------------------------------------------------------------------------------------------ the demo's sweep


# The demo's sweep on the cpu preset (2 × 4 heads, d_model 64, n_ctx 64, vocab 1024), sized for its budget on 2
# CPU cores: the paper's ε, nβ, γ and 4 chains, but 20 draws of batch 8 instead of 200 draws of batch 32 (40× less
# sampling), with paired (same-minibatch) differences, on 512 windows per data set. The heads at 12 checkpoints
# spread on a log axis (`steps`). The full-model LLC at the checkpoints of `full_steps` at least `full_gap` apart in
# ln(1 + step), plus the heads' 12 (the Hessian trace's too, for App. D's comparison): stage detection works on a
# ln-step axis with a 0.25-wide kernel, and the cpu schedule's 20- and 40-step stretches (steps 500-2,000) put up to
# 12 checkpoints into each 0.035 of ln step, while its 100-step stretch holds one per 0.02-0.05. A gap of 0.035 keeps
# every checkpoint from 2,100 to 2,900 — the induction rise (2,300-2,500, ln gaps 0.042/0.041) and the flat stretch
# after it — and 76 of the 107 checkpoints; on the e868add demo's stored curve the stage finding read from those 76
# is the one read from all 107 (transition at 2,471, peak slope 52.5 ± 0.63 vs 50 ± 0.45, same flattest points).
DEMO_SWEEP = dict(steps="log:12", full_steps="all", full_gap=0.035, chains=4, draws=20, batch_size=8, n_samples=512)
# The demo's probes: the heads' pre-training sweep observes these at every draw (susceptibilities from the same
# chains), 8 held-out windows (512 tokens) each: the cost item 4 of issue 14 measures (benchmarks/
# bench_susceptibility.py). The synthetic ones carry ground-truth labels.
DEMO_PROBES = "code,prose,synthetic.induction,synthetic.repeat"


def demo_config(**settings: Any) -> SweepConfig:
    """The SweepConfig of the demo's sweep: `DEMO_SWEEP`'s sampler settings and n_samples, `settings` (e.g. the
    demo's burn-in) overriding them; its plan keys (steps, full_steps, full_gap) left out."""
    s = {**DEMO_SWEEP, **settings}
    n_samples = s.pop("n_samples")
    for key in ("steps", "full_steps", "full_gap"):
        s.pop(key)
    return SweepConfig(SweepConfig().sampler.replace(**s), n_samples)


def demo_sweep(run_dir: str | Path, *, executor: str | Any = "inprocess", progress: bool = True,
               probes: str | None = DEMO_PROBES, **settings: Any) -> RunResult:
    """The demo's sweep: per-head wrLLC on the pre-training mixture and on `code` at 12 checkpoints spread on a log
    axis, and the full-model LLC on the pre-training mixture at the checkpoints at least `full_gap` apart in
    ln(1 + step) and at the heads' (`DEMO_SWEEP`; `settings` override it; full_gap=0 for every checkpoint). The
    heads' pre-training estimates observe `probes` (default `DEMO_PROBES`; None: none) at every draw: their
    susceptibilities come from the same chains."""
    from rllc.pipeline.steps import spaced_steps
    from rllc.train import load_run

    s = {**DEMO_SWEEP, **settings}
    steps, full_steps, full_gap = s["steps"], s["full_steps"], s["full_gap"]
    cfg = demo_config(**settings)
    avail = load_run(run_dir).steps
    head_steps = select_steps(steps, avail, str(run_dir))
    full_steps = sorted({*spaced_steps(select_steps(full_steps, avail, str(run_dir)), full_gap), *head_steps})
    heads = plan_sweep(run_dir, components="heads", data="pretrain", steps=head_steps, config=cfg, probes=probes) + \
        plan_sweep(run_dir, components="heads", data="code", steps=head_steps, config=cfg)
    full = plan_sweep(run_dir, components="all", data="pretrain", steps=full_steps, config=cfg)
    order = {d: i for i, d in enumerate(["pretrain", "code"])}
    plan = heads + full
    plan.tasks.sort(key=lambda t: (t.run_dir, t.step, order[t.data], len(t.components)))
    return run_with(plan, executor, progress=progress)
