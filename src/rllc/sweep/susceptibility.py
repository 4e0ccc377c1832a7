"""Susceptibilities over training: the "susceptibility" measure of the pipeline (`rllc susceptibility`).

A job is one (run, checkpoint, component, sampling data set) estimated with probe data sets observed at every
draw (`rllc.susceptibilities`): it writes, from the same chains,
  "llc"                      the component's rLLC λ̂, keyed by the plain sweep's settings hash — the same row a
                             `rllc sweep` without probes writes, so curves, stages and reports read it as one;
  "susceptibility:PROBE"     the probe's mean per-token susceptibility χ (std: its standard error over chains),
                             with the per-token arrays (χ, its standard error, the standardised r = −Corr(φ, ℓ_i),
                             the per-token LLC contributions and the probe's tokens) in a safetensors file under RUN_DIR/arrays/;
  "contribution:PROBE"       the mean per-token LLC contribution nβ(E[ℓ_i] − ℓ_i(w*)), the data-refined λ̂ on
                             the probe,
the last two keyed by a hash of the sweep's settings and the probes' (which windows, how many, which split).
A sweep given probes (`run_sweep(..., probes=...)`, `rllc sweep --probes`) plans these jobs instead of plain
"llc" ones: the susceptibilities come from the draws of the rLLC, never a second sampling pass.

PROBE is the probe's data key (`data.data_key`: "code", "synthetic.induction", an absolute path with a content
fingerprint). The formula, signs and scales of χ are in `rllc.llc.response`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from rllc._errors import RllcError
from rllc.pipeline.data import data_key, is_model_spec, split_data_specs
from rllc.pipeline.driver import RunResult, run_with
from rllc.pipeline.jobs import Plan, Task, plan_family, run_dirs
from rllc.pipeline.steps import select_steps
from rllc.pipeline.store import ResultRow, config_hash
from rllc.pipeline.worker import TaskContext
from rllc.sweep.sweep import SweepConfig, _row, llc_groups, plan_inputs

FAMILY = "susceptibility"
SUSCEPTIBILITY = "susceptibility:"
CONTRIBUTION = "contribution:"


@dataclass(frozen=True)
class ProbeConfig:
    """The probe data sets observed at every draw.

    Attributes:
        specs: data specs ("code", "prose", "synthetic.induction", a path, a mixture); not `model:` specs.
        n_samples: windows drawn from each (8 windows of the cpu preset's 64 tokens: 512 tokens per probe).
        seed: seed of that draw (1: other windows than the sampling data's seed-0 draw).
        split: "val" (held-out windows, the default) or "train".
    """

    specs: tuple[str, ...]
    n_samples: int = 8
    seed: int = 1
    split: str = "val"

    def __post_init__(self) -> None:
        object.__setattr__(self, "specs", probe_specs(self.specs))
        if not isinstance(self.n_samples, int) or self.n_samples < 1:
            raise RllcError(f"probe samples must be a positive integer, got {self.n_samples!r}")
        if self.split not in ("train", "val"):
            raise RllcError(f"probe split must be 'train' or 'val', got {self.split!r}")
        for s in self.specs:
            if is_model_spec(s):
                raise RllcError(f"probe {s!r}: a probe is a data set of tokens; model:RUN@STEP is a loss (use it as "
                                "--data), not a probe")


def probe_specs(probes: str | Sequence[str]) -> tuple[str, ...]:
    """Probe data specs from a comma-separated string or a list (`data.split_data_specs`'s rules)."""
    if (isinstance(probes, str) and not probes.replace(",", "").replace(";", "").strip()) or \
            (not isinstance(probes, str) and not any(str(p).strip() for p in probes)):
        raise RllcError("no probe given; try --probes code,prose,synthetic.induction")
    return tuple(split_data_specs(probes if isinstance(probes, str) else list(probes)))


def job_keys(component: str, settings: dict[str, Any], chash: str) -> list[tuple[str, str]]:
    """The (measure, settings hash) pairs a susceptibility job writes (the registry's `keys`)."""
    probes = settings["probes"]["keys"]
    return [("llc", settings["sweep_hash"]),
            *((f"{prefix}{p}", chash) for p in probes for prefix in (SUSCEPTIBILITY, CONTRIBUTION))]


def _settings(config: SweepConfig, probe_keys: Sequence[str], probe_specs: Sequence[str],
              probes: ProbeConfig) -> tuple[dict[str, Any], str]:
    """The task settings and their hash (the sweep's hash and what decides the probes' windows)."""
    sweep_hash = config.config_hash()
    decides = {"n_samples": probes.n_samples, "seed": probes.seed, "split": probes.split}
    chash = config_hash({"sweep": sweep_hash, "probes": {"keys": list(probe_keys), **decides},
                         "estimator": {"reference": "component", "sampling": None}})
    settings = {**config.to_dict(), "sweep_hash": sweep_hash,
                "probes": {"keys": list(probe_keys), "specs": list(probe_specs), **decides}}
    return settings, chash


def plan_susceptibility(run_dir: str | Path | Iterable[str | Path], *, probes: ProbeConfig | str | Sequence[str],
                        components: str | Sequence[str] = "heads", data: str | Sequence[str] = "pretrain",
                        steps: str | Sequence[int] | None = "all", config: SweepConfig | None = None,
                        batch_components: bool = True) -> Plan:
    """Plan susceptibility jobs without running them (validates every name; loads no weights).

    Args:
        run_dir: one run directory or several.
        probes: a ProbeConfig, or data specs (comma-separated or a list) with its defaults.
        components, data, steps, config, batch_components: as for `rllc.sweep.plan_sweep`.

    Returns:
        A Plan of "susceptibility" tasks, one per (run, checkpoint, sampling data set).
    """
    probes = probes if isinstance(probes, ProbeConfig) else ProbeConfig(probe_specs(probes))
    config = config or SweepConfig()
    data_specs = split_data_specs(data)
    plan = Plan()
    for d in run_dirs(run_dir):
        run, comps, keys = plan_inputs(d, components, data_specs, also=probes.specs)
        pkeys = [data_key(run, spec) for spec in probes.specs]
        if len({k.key for k in pkeys}) != len(pkeys):
            raise RllcError(f"two probes in {','.join(probes.specs)} are the same data set; list each once")
        settings, chash = _settings(config, [k.key for k in pkeys], [k.spec for k in pkeys], probes)
        part = plan_family(d, FAMILY, steps=select_steps(steps, run.steps, str(d)), components=comps,
                           data=[(k.key, k.spec) for k in keys], settings=settings, config_hash=chash,
                           options={"batch_components": batch_components})
        part.configs[(str(Path(d).absolute()), settings["sweep_hash"])] = config.to_dict()
        plan = plan + part
    return plan


# ------------------------------------------------------------------------------------------------ the measure


def _probe_tokens(ctx: TaskContext, probes: dict[str, Any]) -> dict[str, Any]:
    from rllc.pipeline.data import resolve_data

    def make() -> dict[str, Any]:
        return {k: resolve_data(ctx.run, s, probes["n_samples"], seed=probes["seed"], split=probes["split"])[0]
                for k, s in zip(probes["keys"], probes["specs"])}

    key = (ctx.task.run_dir, tuple(probes["keys"]), tuple(probes["specs"]), probes["n_samples"], probes["seed"],
           probes["split"])
    return ctx.cached(("probes", *key), make)


def _num(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def susceptibility_rows(ctx: TaskContext, task: Task) -> list[ResultRow]:
    """The "susceptibility" measure: every component of one (run, checkpoint, sampling data set) task, with the
    probes observed at every draw of the chains that estimate its rLLC.

    Returns:
        Per component, in `task.components` order: its "llc" row (the plain sweep's hash) and, per probe, a
        "susceptibility:PROBE" row (with its per-token arrays) and a "contribution:PROBE" row.
    """
    from rllc import susceptibilities

    cfg = SweepConfig.from_dict(task.settings)
    probes = task.settings["probes"]
    tokens, loss_fn = ctx.data(cfg.n_samples, seed=cfg.sample_seed, split=cfg.split)
    probe_data = _probe_tokens(ctx, probes)
    llc_task = replace(task, config_hash=task.settings["sweep_hash"])
    rows: dict[str, list[ResultRow]] = {}
    for group in llc_groups(task):
        t0 = time.perf_counter()
        res = susceptibilities(ctx.model, tokens, list(group), probes=probe_data, loss_fn=loss_fn,
                               config=cfg.sampler, paired=cfg.sampler.paired,
                               progress=ctx.counter(cfg.sampler.draws))
        wall = (time.perf_counter() - t0) / len(group)
        for comp, name in zip(group, res.components):
            llc = res.llc[name]
            out = [_row(llc_task, comp, llc, wall)]
            for p in res.probes:
                chi = np.asarray(res.per_token[name][p], dtype=np.float64)
                contrib = np.asarray(res.contributions[name][p], dtype=np.float64)
                arrays = {"chi": chi.astype(np.float32), "contribution": contrib.astype(np.float32)}
                if name in res.per_token_se:
                    arrays["chi_se"] = np.asarray(res.per_token_se[name][p], dtype=np.float32)
                if name in res.standardized:
                    arrays["chi_std"] = np.asarray(res.standardized[name][p], dtype=np.float32)
                if res.tokens.get(p) is not None:
                    arrays["tokens"] = np.asarray(res.tokens[p], dtype=np.int32)
                valid = bool(llc.valid) and bool(np.isfinite(chi).all())
                extra = {"n_tokens": int(chi.size), "shape": list(chi.shape), "llc": _num(llc.mean),
                         "wall_s": round(wall, 4)}
                out.append(ResultRow(task.step, comp, task.data, f"{SUSCEPTIBILITY}{p}", task.config_hash,
                                     _num(res.mean[name][p]), _num(res.se[name][p]), valid, extra, arrays))
                out.append(ResultRow(task.step, comp, task.data, f"{CONTRIBUTION}{p}", task.config_hash,
                                     _num(float(np.mean(contrib))), None, valid, {"n_tokens": int(contrib.size)}))
            rows[comp] = out
    return [r for c in task.components for r in rows[c]]


# ------------------------------------------------------------------------------------------------ the driver


def run_susceptibility(run_dir: str | Path | Iterable[str | Path], *, probes: str | Sequence[str],
                       components: str | Sequence[str] = "heads", data: str | Sequence[str] = "pretrain",
                       steps: str | Sequence[int] | None = "all", probe_samples: int = 8, probe_seed: int = 1,
                       probe_split: str = "val", n_samples: int = 2048, sample_seed: int = 0, split: str = "train",
                       executor: str | Any = "inprocess", address: str | None = None, workers: int | None = None,
                       batch_components: bool = True, progress: bool = True, **overrides: Any) -> RunResult:
    """Per-token susceptibilities of every component to every probe at every checkpoint, stored with each
    component's rLLC from the same chains (see the module docstring). Resumable and exact like `run_sweep`.

    Args:
        run_dir: a run directory, or several.
        probes: probe data specs, comma-separated or a list ("code,prose,synthetic.induction").
        components, data, steps: as for `run_sweep` (default: every head, on the pre-training data).
        probe_samples, probe_seed, probe_split: the probe windows (`ProbeConfig`).
        n_samples, sample_seed, split, executor, address, workers, batch_components, progress, overrides: as for
            `run_sweep` (sampler keywords: epsilon, nbeta, gamma, chains, draws, batch_size, ...).

    Returns:
        A `RunResult`; read the values with `rllc.load_results(run_dir)` and the per-token arrays with
        `ResultStore(run_dir).arrays(key)`.
    """
    sampler = SweepConfig().sampler.replace(**overrides)
    cfg = SweepConfig(sampler, n_samples, sample_seed, split)
    pc = ProbeConfig(probe_specs(probes), probe_samples, probe_seed, probe_split)
    plan = plan_susceptibility(run_dir, probes=pc, components=components, data=data, steps=steps, config=cfg,
                               batch_components=batch_components)
    return run_with(plan, executor, address=address, workers=workers, progress=progress)
