"""End-to-end jobs that chain the stages (train → sweep → analysis → report); the CLI's `demo` calls these."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rllc.train import preset, train_model


@dataclass
class DemoResult:
    """What `demo` wrote: the run directory, the head table at the last checkpoint, timings and summary lines."""

    out: Path
    last_step: int
    head_table: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)


def demo(out: str | Path = "runs/demo", *, steps: int | None = None, seed: int = 0, progress: bool = True) -> DemoResult:
    """Train the `cpu` preset on the built-in corpus, sweep per-head rLLCs, analyse the heads, write the report.

    Steps: training (checkpoints, loss curve) → the demo sweep (per-head wrLLC on the pre-training mixture and on
    `code` at 12 checkpoints, the full-model LLC at every checkpoint) → LLC curves → head analysis at 32
    checkpoints (scores, ablations, composition, tokens in context, head types) → developmental stages of the
    full-model LLC, timed against the induction heads' formation → the HTML report. Every step resumes:
    re-running after an interruption computes only what is missing.

    Args:
        out: run directory.
        steps: training steps (default: the preset's).
        seed: random seed.
        progress: progress bars and per-stage lines.
    """
    from rllc.analysis.over_training import HeadAnalysisConfig, heads_command
    from rllc.analysis.stages import curve_stages, formation_timing
    from rllc.sweep.store import ResultStore
    from rllc.report.curves import plot_sweep
    from rllc.report.html import write_report
    from rllc.report.plots import plot_loss_curve
    from rllc.sweep.sweep import demo_sweep

    out = Path(out)
    say = print if progress else (lambda *a: None)
    timings: dict[str, float] = {}

    def timed(name: str, fn):  # noqa: ANN001, ANN202
        t0 = time.perf_counter()
        say(f"[demo] {name} ...")
        result = fn()
        timings[name] = time.perf_counter() - t0
        say(f"[demo] {name}: {timings[name]:.0f} s")
        return result

    run = timed("train", lambda: train_model(*preset("cpu", steps=steps, seed=seed), out, progress=progress))
    loss_png = plot_loss_curve(run, out / "loss_curve.png")
    sweep = timed("sweep", lambda: demo_sweep(out, progress=progress))
    curve_pngs = timed("plots", lambda: plot_sweep(out))
    heads = timed("heads", lambda: heads_command(out, config=HeadAnalysisConfig(max_checkpoints=32)))
    results = ResultStore(out).frame(with_extra=True)
    stages = curve_stages(results[results.config_hash == sweep.config_hash])
    timing = formation_timing(stages, results)
    report = timed("report", lambda: write_report([out]))
    table = heads.table
    best_prev = table.loc[table.prev_token_score.idxmax()]
    best_ind = table.loc[table.induction_score.idxmax()]
    first = heads.results[(heads.results.step == heads.steps[0])]
    at0 = {m: first[first.measure == m].value.max() for m in ("prev_token_score", "induction_score")}
    summary = [
        f"wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + f"; total {sum(timings.values()):.0f} s",
        f"checkpoints: {len(run.steps)} in {out / 'checkpoints'}; LLC sweep: {sweep.computed} estimates computed now",
        f"previous-token head {best_prev.component}: {best_prev.prev_token_score:.2f} (best head at step 0: "
        f"{at0['prev_token_score']:.2f})",
        f"induction head {best_ind.component}: {best_ind.induction_score:.2f} (best head at step 0: "
        f"{at0['induction_score']:.2f})",
        f"stages of the full-model LLC: boundaries at steps {', '.join(f'{b:.0f}' for b in stages.boundaries) or 'none'}"
        f"; transitions at {', '.join(f'{t:.0f}' for t in stages.transitions) or 'none'}",
        timing.sentence(),
        f"figures: {loss_png}, {len(curve_pngs)} LLC plots in {out / 'plots'}, head figures in {out / 'heads'}",
        f"report: {report}",
    ]
    return DemoResult(out, heads.steps[-1], table, timings, summary)
