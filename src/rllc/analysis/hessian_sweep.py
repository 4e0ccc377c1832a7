"""Hessian measures over checkpoints × components × data sets, stored beside the LLC curves.

Measures in the results store: "hessian_trace" and "hessian_rank" (data = the data spec the loss is taken on, as
for the LLC), "fim_trace" (data = "self": sequences sampled from each checkpoint, or from the last checkpoint and
reweighted when `reuse_fim_samples`). value = estimate, std = its standard error, extra = per-probe values and
settings. These are three measures of the pipeline (`rllc.pipeline`): planned as jobs, skipped when stored,
run on any executor, written by the driver alone; a repeated call computes only what is missing.
"""

from __future__ import annotations

import math

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from rllc._errors import RllcError
from rllc.analysis.hessian import (
    FIM_DEFAULT,
    HessianConfig,
    RankConfig,
    fim_trace,
    hessian_rank,
    hessian_trace,
    sample_from_model,
)
from rllc.pipeline.driver import RunResult
from rllc.pipeline.jobs import Plan
from rllc.pipeline.store import ResultRow, config_hash

Measure = Literal["trace", "fim", "rank"]
MEASURE_NAMES = {"trace": "hessian_trace", "fim": "fim_trace", "rank": "hessian_rank"}
SELF_DATA = "self"


@dataclass(frozen=True)
class HessianSweepConfig:
    """Settings of a Hessian sweep; the part that decides a measure's value is hashed into its store key.

    Attributes:
        trace, fim, rank: settings of each measure (paper defaults: 100 × 50, 30 × 5, degree 100 fixed).
        split, sample_seed: which data windows the trace and rank are taken on.
        reuse_fim_samples: draw the FIM samples once from the last swept checkpoint and reweight them at every
            checkpoint (less noise across checkpoints; see `fim_trace`).
    """

    trace: HessianConfig = field(default_factory=HessianConfig)
    fim: HessianConfig = FIM_DEFAULT
    rank: RankConfig = field(default_factory=RankConfig)
    split: str = "train"
    sample_seed: int = 0
    reuse_fim_samples: bool = False

    def hashed(self, measure: Measure) -> dict[str, Any]:
        """The settings `measure`'s values depend on (what its config hash covers)."""
        if measure == "fim":
            return {"measure": "fim_trace", "fim": _value_settings(self.fim.to_dict()),
                    "reuse_fim_samples": self.reuse_fim_samples}
        body = _value_settings(self.trace.to_dict() if measure == "trace" else self.rank.to_dict())
        return {"measure": MEASURE_NAMES[measure], measure: body, "split": self.split,
                "sample_seed": self.sample_seed}


def _value_settings(d: dict[str, Any]) -> dict[str, Any]:
    """Settings minus those that change only memory and speed (batch_size, probe_batch)."""
    return {k: v for k, v in d.items() if k not in ("batch_size", "probe_batch")}


FAMILIES = {"trace": "hessian_trace", "fim": "fim_trace", "rank": "hessian_rank"}  # pipeline families


def _settings(config: HessianSweepConfig, reference_step: int | None) -> dict[str, Any]:
    """Everything a worker needs (plain JSON types); the hash covers only `config.hashed(measure)`."""
    return {"trace": config.trace.to_dict(), "fim": config.fim.to_dict(), "rank": config.rank.to_dict(),
            "split": config.split, "sample_seed": config.sample_seed,
            "reuse_fim_samples": config.reuse_fim_samples, "reference_step": reference_step}


def plan_hessian(run_dir: str | Path, *, measure: Measure = "trace", components: str | Sequence[str] = "all",
                 data: str | Sequence[str] = "pretrain", steps: str | Sequence[int] | None = "all",
                 config: HessianSweepConfig = HessianSweepConfig()) -> Plan:
    """Plan a Hessian measure at checkpoints × components × data sets of a run (validates names; computes
    nothing). Arguments as in `hessian_sweep`."""
    from rllc.pipeline import plan_family, select_steps
    from rllc.pipeline.data import split_data_specs
    from rllc.sweep.sweep import plan_inputs

    if measure not in MEASURE_NAMES:
        raise RllcError(f"unknown Hessian measure {measure!r}; use trace, fim or rank")
    run, comps, data_keys = plan_inputs(run_dir, components, [] if measure == "fim" else split_data_specs(data))
    keys = [(SELF_DATA, SELF_DATA)] if measure == "fim" else [(k.key, k.spec) for k in data_keys]
    chosen = select_steps(steps, run.steps, str(run_dir))
    hashed = config.hashed(measure)
    ref = chosen[-1] if measure == "fim" and config.reuse_fim_samples else None
    return plan_family(run_dir, FAMILIES[measure], steps=chosen, components=comps, data=keys,
                       settings=_settings(config, ref), config_hash=config_hash(hashed), record=hashed)


def hessian_sweep(run_dir: str | Path, *, measure: Measure = "trace", components: str | Sequence[str] = "all",
                  data: str | Sequence[str] = "pretrain", steps: str | Sequence[int] | None = "all",
                  config: HessianSweepConfig = HessianSweepConfig(), progress: bool = False,
                  executor: str | Any = "inprocess", address: str | None = None,
                  workers: int | None = None) -> RunResult:
    """Compute a Hessian measure at every checkpoint × component × data set of a run and store it.

    Args:
        run_dir: the run directory (its results store receives the rows).
        measure: "trace" (Hutchinson Hessian trace), "fim" (FIM trace; `data` is ignored) or "rank".
        components: comma-separated names or a list; "heads" expands to every head; "a+b" is a union.
        data: data specs as for `rllc sweep` ("pretrain,code", "model:PATH@STEP", ...).
        steps: "all", "last", "every:N", "log:N", "S1,S2" or a list.
        config: HessianSweepConfig.
        progress: print the plan and its measured duration, and a progress bar over probes.
        executor, address, workers: where the tasks run, as for `rllc.sweep.run_sweep`.

    Returns:
        The pipeline's `RunResult` (jobs planned, skipped, computed; one row per job; summary table).
    """
    from rllc.pipeline.driver import run_with

    plan = plan_hessian(run_dir, measure=measure, components=components, data=data, steps=steps, config=config)
    return run_with(plan, executor, address=address, workers=workers, progress=progress)


# ------------------------------------------------------------------------------------------------ the measures


def _configs(task) -> tuple[HessianConfig, HessianConfig, RankConfig]:  # noqa: ANN001 - Task
    s = task.settings
    rank = {**s["rank"], "range": tuple(s["rank"]["range"])}
    return HessianConfig(**s["trace"]), HessianConfig(**s["fim"]), RankConfig(**rank)


def trace_rows(ctx, task) -> list[ResultRow]:  # noqa: ANN001 - (TaskContext, Task)
    """The "hessian_trace" measure: Hutchinson's estimate of tr H of each component's loss on the task's data."""
    trace, _, _ = _configs(task)
    tokens, loss_fn = ctx.data(trace.n_samples, seed=task.settings["sample_seed"], split=task.settings["split"])
    rows = []
    for c in task.components:
        r = hessian_trace(ctx.model, tokens, component=c, loss_fn=loss_fn, config=trace,
                          progress=ctx.counter(trace.n_probes))
        rows.append(ResultRow(task.step, c, task.data, "hessian_trace", task.config_hash, r.estimate, r.std_error,
                              True, {"dim": r.dim, "n_samples": r.n_samples, "probes": list(r.probes)}))
    return rows


def rank_rows(ctx, task) -> list[ResultRow]:  # noqa: ANN001 - (TaskContext, Task)
    """The "hessian_rank" measure: the Chebyshev step-function estimate of each component's Hessian rank."""
    _, _, rank = _configs(task)
    tokens, loss_fn = ctx.data(rank.n_samples, seed=task.settings["sample_seed"], split=task.settings["split"])
    rows = []
    for c in task.components:
        r = hessian_rank(ctx.model, tokens, component=c, loss_fn=loss_fn, config=rank,
                         progress=ctx.counter(rank.n_probes))
        extra = {"dim": r.dim, "threshold": r.threshold, "range": list(r.range), "degree": r.degree,
                 "probes": list(r.probes), "extremes": None if r.extremes is None else list(r.extremes),
                 "lambda_max_abs": r.lambda_max_abs, "in_range": r.in_range, "warning": r.warning()}
        # A spectrum outside the Chebyshev range makes the estimate meaningless: stored, flagged invalid.
        rows.append(ResultRow(task.step, c, task.data, "hessian_rank", task.config_hash, r.estimate,
                              r.std_error if math.isfinite(r.std_error) else None, r.in_range is not False, extra))
    return rows


def fim_rows(ctx, task) -> list[ResultRow]:  # noqa: ANN001 - (TaskContext, Task)
    """The "fim_trace" measure: the FIM trace on sequences sampled from the checkpoint itself (or from the
    reference step's model, reweighted, when `reuse_fim_samples`)."""
    _, fim, _ = _configs(task)
    ref = task.settings.get("reference_step")
    run = ctx.run
    reused = ctx.cached(("samples", ref, fim.seed, fim.n_samples), lambda: _reference_samples(run, ref, fim)) \
        if ref is not None else None
    first = None if reused else _first_tokens(run, fim.n_samples, fim.seed)
    rows = []
    for c in task.components:
        r = fim_trace(ctx.model, component=c, config=fim, samples=reused, first_tokens=first,
                      progress=ctx.counter(fim.n_probes))
        rows.append(ResultRow(task.step, c, task.data, "fim_trace", task.config_hash, r.estimate, r.std_error, True,
                              {"dim": r.dim, "n_samples": r.n_samples, "probes": list(r.probes), "ess": r.ess}))
    return rows


def _first_tokens(run: Any, n: int, seed: int) -> torch.Tensor:
    """Position-0 tokens of n real pre-training windows: the model continues from a real first token."""
    return run.sample_tokens("pretrain", n, split="train", seed=seed)[:, 0]


def _reference_samples(run: Any, step: int, cfg: HessianConfig) -> tuple[torch.Tensor, torch.Tensor]:
    model = run.model_at(step)
    gen = torch.Generator().manual_seed(cfg.seed)
    return sample_from_model(model, cfg.n_samples, run.config.model.n_ctx, gen,
                             first_tokens=_first_tokens(run, cfg.n_samples, cfg.seed), batch_size=cfg.batch_size)
