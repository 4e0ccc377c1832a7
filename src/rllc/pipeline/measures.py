"""The registry of measures over checkpoints: a new measure is one function and one line here.

A measure *family* is one function `compute(ctx, task) -> list[ResultRow]` (`ctx` a `worker.TaskContext`: the
run, the checkpoint's model, cached data) that computes, at one checkpoint, the rows of every component in
`task.components`. Its registry line says where the function lives ("module:function", imported only where the
task runs, so planning imports no analysis code), which store measures it writes for a component, and, for the
cost estimate and the progress bar, its unit of work (a draw, a probe) and how to scale it.

What to compute is decided per row: a job (run, step, family, component, data, settings hash) is done when every
(step, component, data, measure, settings hash) its family writes is stored. A measure added to a family, or a new
family, is therefore computed on runs analysed before it existed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from rllc._errors import RllcError


@dataclass(frozen=True)
class Measure:
    """One family of measures.

    Attributes:
        family: its name (the `family` of a Job; "llc", "hessian_trace", "ablation", ...).
        compute: "module:function" of `compute(ctx, task) -> list[ResultRow]`.
        writes: component name -> the store measures a job of that component writes.
        unit: what `units` counts ("draw", "probe"; "" when the work has no scalable unit).
        units: settings -> units of work in one call (e.g. the sampler's draws); None: one unit per task.
        calls: task -> the number of such calls a task makes (e.g. one per component); default 1.
        scale: (settings, n) -> the same settings with n units (for the cost probe); None: probe a whole task.
        keys: (component, settings, task hash) -> the (measure, settings hash) pairs a job writes, for a family
            whose rows depend on its settings (its probes) or are keyed by another family's hash (the rLLC of a
            susceptibility job, keyed like a plain sweep's); None: `writes(component)` under the task's hash.
    """

    family: str
    compute: str
    writes: Callable[[str], Sequence[str]]
    unit: str = ""
    units: Callable[[dict[str, Any]], int] | None = None
    calls: Callable[[Any], int] | None = None
    scale: Callable[[dict[str, Any], int], dict[str, Any]] | None = None
    keys: Callable[[str, dict[str, Any], str], Sequence[tuple[str, str]]] | None = None

    def rows(self, component: str, settings: dict[str, Any], chash: str) -> tuple[tuple[str, str], ...]:
        """The (measure, settings hash) pairs a job of `component` writes."""
        if self.keys is not None:
            return tuple(self.keys(component, settings, chash))
        return tuple((m, chash) for m in self.writes(component))

    def function(self) -> Callable[..., list]:
        module, _, name = self.compute.partition(":")
        return getattr(import_module(module), name)

    def work(self, task: Any) -> int:
        """Units of work in `task` (what the progress bar counts)."""
        if self.units is None:
            return 1
        return self.units(task.settings) * (self.calls(task) if self.calls else 1)


def _const(*names: str) -> Callable[[str], tuple[str, ...]]:
    return lambda component: names


def _tic_writes(component: str) -> tuple[str, ...]:
    from rllc.analysis.token_contexts import CLASSES

    return (*(f"tic_frac_{c}" for c in CLASSES), "tic_unique_multigrams", "head_type")


def _llc_calls(task: Any) -> int:
    from rllc.sweep.sweep import llc_groups

    return len(llc_groups(task))


def _nested(section: str, field: str) -> Callable[[dict[str, Any]], int]:
    return lambda settings: int(settings[section][field])


def _with(section: str, **fields: Any) -> Callable[[dict[str, Any], int], dict[str, Any]]:
    def scale(settings: dict[str, Any], n: int) -> dict[str, Any]:
        return {**settings, section: {**settings[section], **{k: (n if v is None else v) for k, v in fields.items()}}}

    return scale


def _susceptibility_keys(component: str, settings: dict[str, Any], chash: str) -> list[tuple[str, str]]:
    from rllc.sweep.susceptibility import job_keys

    return job_keys(component, settings, chash)


_HEADS = "rllc.analysis.over_training"
_HESSIAN = "rllc.analysis.hessian_sweep"

MEASURES: dict[str, Measure] = {m.family: m for m in [
    # LLC estimates (`rllc sweep`): a draw of every chain is the unit; heads share one call, the rest another.
    Measure("llc", "rllc.sweep.sweep:llc_rows", _const("llc"), "draw", _nested("sampler", "draws"), _llc_calls,
            _with("sampler", draws=None, burn_in=0)),
    # Susceptibilities and per-token LLC contributions on probe data sets (`rllc susceptibility`, or a sweep given
    # probes), with each component's rLLC from the same chains (stored as an "llc" row under the plain sweep's hash).
    Measure("susceptibility", "rllc.sweep.susceptibility:susceptibility_rows", _const("llc"), "draw",
            _nested("sampler", "draws"), _llc_calls, _with("sampler", draws=None, burn_in=0), _susceptibility_keys),
    # Head analysis (`rllc heads`): every head at once per checkpoint; no scalable unit.
    Measure("attention_scores", f"{_HEADS}:attention_rows", _const("prev_token_score", "current_token_score")),
    Measure("induction_score", f"{_HEADS}:induction_rows", _const("induction_score")),
    Measure("prefix_matching_score", f"{_HEADS}:prefix_matching_rows", _const("prefix_matching_score")),
    Measure("ablation", f"{_HEADS}:ablation_rows",
            lambda c: ("icl_score",) if c == "all" else ("ablation_zero", "ablation_mean", "ablation_resample",
                                                           "icl_score")),
    Measure("composition", f"{_HEADS}:composition_rows", _const("q_composition", "k_composition", "v_composition")),
    Measure("path_patching", f"{_HEADS}:patching_rows", _const("path_patching_nested", "path_patching_unnested")),
    Measure("tokens_in_context", f"{_HEADS}:tic_rows", _tic_writes),
    # Hessian measures (`rllc hessian`): a Rademacher probe per component is the unit.
    Measure("hessian_trace", f"{_HESSIAN}:trace_rows", _const("hessian_trace"), "probe",
            _nested("trace", "n_probes"), lambda t: len(t.components), _with("trace", n_probes=None)),
    Measure("fim_trace", f"{_HESSIAN}:fim_rows", _const("fim_trace"), "probe", _nested("fim", "n_probes"),
            lambda t: len(t.components), _with("fim", n_probes=None)),
    Measure("hessian_rank", f"{_HESSIAN}:rank_rows", _const("hessian_rank"), "probe", _nested("rank", "n_probes"),
            lambda t: len(t.components), _with("rank", n_probes=None)),
]}


def measure(family: str) -> Measure:
    """The registry entry of a family (one-line error naming the known ones)."""
    try:
        return MEASURES[family]
    except KeyError:
        raise RllcError(f"unknown measure family {family!r}; known: {', '.join(MEASURES)}") from None
