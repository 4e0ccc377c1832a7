"""End-to-end jobs that chain the stages (train → analysis → report); the CLI's `demo` calls these."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rllc.analysis.scores import head_scores_over_training
from rllc.report.plots import plot_head_scores, plot_loss_curve
from rllc.train import preset, train


@dataclass
class DemoResult:
    """What `demo` wrote: the run directory, the last step's head table, and summary lines."""

    out: Path
    last_step: int
    head_table: pd.DataFrame
    head_curves: pd.DataFrame
    summary: list[str] = field(default_factory=list)


def demo(out: str | Path = "runs/demo", *, steps: int | None = None, seed: int = 0, progress: bool = True) -> DemoResult:
    """Train the `cpu` preset on the built-in corpus and write loss curve, head-score tables and curves.

    Args:
        out: run directory (resumed if it already holds this run).
        steps: training steps (default: the preset's).
        seed: random seed.
    """
    out = Path(out)
    t0 = time.perf_counter()
    run = train(*preset("cpu", steps=steps, seed=seed), out, progress=progress)
    train_s = time.perf_counter() - t0
    loss_png = plot_loss_curve(run, out / "loss_curve.png")
    curves = head_scores_over_training(run)
    curves.to_csv(out / "head_scores_over_training.csv", index=False)
    scores_png = plot_head_scores(curves, out / "head_scores.png", title=f"{out.name}: head scores over training")
    last = curves[curves.step == curves.step.max()].drop(columns=["step"]).reset_index(drop=True)
    last.to_csv(out / "head_scores.csv", index=False)
    best_prev, best_ind = last.loc[last.prev_token_score.idxmax()], last.loc[last.induction_score.idxmax()]
    first = curves[curves.step == curves.step.min()]
    summary = [
        f"training: {train_s:.0f} s for the steps run now; {len(run.steps)} checkpoints in {out / 'checkpoints'}",
        f"previous-token head {best_prev.component}: score {best_prev.prev_token_score:.2f} "
        f"(at step 0: {first.prev_token_score.max():.2f} for the best head)",
        f"induction head {best_ind.component}: score {best_ind.induction_score:.2f} "
        f"(at step 0: {first.induction_score.max():.2f} for the best head)",
        f"figures: {loss_png}, {scores_png}; tables: {out / 'head_scores.csv'}, "
        f"{out / 'head_scores_over_training.csv'}",
    ]
    return DemoResult(out, int(curves.step.max()), last, curves, summary)
