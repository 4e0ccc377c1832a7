"""Hessian measures over checkpoints × components × data sets, stored beside the LLC curves.

Measures in the results store: "hessian_trace" and "hessian_rank" (data = the data spec the loss is taken on, as
for the LLC), "fim_trace" (data = "self": sequences sampled from each checkpoint, or from the last checkpoint and
reweighted when `reuse_fim_samples`). value = estimate, std = its standard error, extra = per-probe values and
settings. Keys already stored under the same config hash are skipped, so a repeated call computes only what is
missing.
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
from rllc.sweep.store import ResultRow, ResultStore, config_hash

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


@dataclass(frozen=True)
class HessianSweepResult:
    """What a sweep did: `computed` rows written, `skipped` keys already stored, the `config_hash` used."""

    measure: str
    computed: int
    skipped: int
    config_hash: str


def hessian_sweep(run_dir: str | Path, *, measure: Measure = "trace", components: str | Sequence[str] = "all",
                  data: str | Sequence[str] = "pretrain", steps: str | Sequence[int] | None = "all",
                  config: HessianSweepConfig = HessianSweepConfig(), progress: bool = False) -> HessianSweepResult:
    """Compute a Hessian measure at every checkpoint × component × data set of a run and store it.

    Args:
        run_dir: the run directory (its results store receives the rows).
        measure: "trace" (Hutchinson Hessian trace), "fim" (FIM trace; `data` is ignored) or "rank".
        components: comma-separated names or a list; "heads" expands to every head; "a+b" is a union.
        data: data specs as for `rllc sweep` ("pretrain,code", "model:PATH@STEP", ...).
        steps: "all", "last", "every:N", "log:N", "S1,S2" or a list.
        config: HessianSweepConfig.
        progress: print one line per stored row.

    Returns:
        HessianSweepResult.
    """
    from rllc.sweep.refs import check_data_spec, resolve_data, split_data_specs
    from rllc.sweep.sweep import expand_components, select_steps
    from rllc.train import load_run

    if measure not in MEASURE_NAMES:
        raise RllcError(f"unknown Hessian measure {measure!r}; use trace, fim or rank")
    run = load_run(run_dir)
    name = MEASURE_NAMES[measure]
    comps = expand_components(components, run.config.model)
    specs = [SELF_DATA] if measure == "fim" else split_data_specs(data)
    for spec in specs:
        if spec != SELF_DATA:
            check_data_spec(run, spec)
    chosen = select_steps(steps, run.steps, str(run_dir))
    settings = config.hashed(measure)
    chash = config_hash(settings)
    store = ResultStore(run_dir)
    store.put_config(chash, settings)
    done = {k for k in store.done_keys(name) if k[4] == chash}
    computed = skipped = 0
    reused = None
    for step in chosen:
        model = None
        for spec in specs:
            todo = [c for c in comps if (step, c, spec, name, chash) not in done]
            skipped += len(comps) - len(todo)
            if not todo:
                continue
            model = run.model_at(step) if model is None else model
            rows = []
            if measure == "fim":
                if config.reuse_fim_samples and reused is None:
                    reused = _reference_samples(run, chosen[-1], config.fim)
                first = None if reused else _first_tokens(run, config.fim.n_samples, config.fim.seed)
                for c in todo:
                    r = fim_trace(model, component=c.split("+"), config=config.fim, samples=reused,
                                  first_tokens=first)
                    rows.append(ResultRow(step, c, spec, name, chash, r.estimate, r.std_error, True,
                                          {"dim": r.dim, "n_samples": r.n_samples, "probes": list(r.probes),
                                           "ess": r.ess}))
            else:
                n = config.trace.n_samples if measure == "trace" else config.rank.n_samples
                tokens, loss_fn = resolve_data(run, spec, n, seed=config.sample_seed, split=config.split)
                for c in todo:
                    if measure == "trace":
                        r = hessian_trace(model, tokens, component=c.split("+"), loss_fn=loss_fn,
                                          config=config.trace)
                        extra = {"dim": r.dim, "n_samples": r.n_samples, "probes": list(r.probes)}
                    else:
                        r = hessian_rank(model, tokens, component=c.split("+"), loss_fn=loss_fn, config=config.rank)
                        extra = {"dim": r.dim, "threshold": r.threshold, "range": list(r.range),
                                 "degree": r.degree, "probes": list(r.probes),
                                 "extremes": None if r.extremes is None else list(r.extremes),
                                 "lambda_max_abs": r.lambda_max_abs, "in_range": r.in_range,
                                 "warning": r.warning()}
                    # A spectrum outside the Chebyshev range makes the estimate meaningless: stored, flagged invalid.
                    rows.append(ResultRow(step, c, spec, name, chash, r.estimate,
                                          r.std_error if math.isfinite(r.std_error) else None,
                                          measure == "trace" or r.in_range is not False, extra))
            computed += store.put_many(rows)
            if progress:
                for row in rows:
                    print(f"{name} step {step} {row.component} on {spec}: {row.value:.4g} ± {row.std:.2g}")
    return HessianSweepResult(name, computed, skipped, chash)


def _first_tokens(run: Any, n: int, seed: int) -> torch.Tensor:
    """Position-0 tokens of n real pre-training windows: the model continues from a real first token."""
    return run.sample_tokens("pretrain", n, split="train", seed=seed)[:, 0]


def _reference_samples(run: Any, step: int, cfg: HessianConfig) -> tuple[torch.Tensor, torch.Tensor]:
    model = run.model_at(step)
    gen = torch.Generator().manual_seed(cfg.seed)
    return sample_from_model(model, cfg.n_samples, run.config.model.n_ctx, gen,
                             first_tokens=_first_tokens(run, cfg.n_samples, cfg.seed), batch_size=cfg.batch_size)
