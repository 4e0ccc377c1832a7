"""Figures written as PNG files (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from rllc.train.run import Run  # noqa: E402


def plot_loss_curve(run: Run, path: str | Path) -> Path:
    """Training loss (per logged step) and validation loss (per checkpoint) against step, log x axis."""
    path = Path(path)
    metrics, ckpts = run.metrics(), run.checkpoints()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if len(metrics):
        ax.plot(metrics["step"], metrics["train_loss"], lw=0.8, alpha=0.7, label="train (logged mean)")
    ax.plot(ckpts["step"].clip(lower=1), ckpts["val_loss"], "o-", ms=2.5, lw=1.2, label="validation")
    ax.set_xscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("next-token loss (nats)")
    ax.set_title(f"{run.path.name}: loss over training ({run.config.train.data})", fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_head_scores(table: pd.DataFrame, path: str | Path, *, title: str = "") -> Path:
    """Per-head score curves over training: one panel per score, one line per head.

    Args:
        table: long-form rows with columns step, component, and score columns.
    """
    path = Path(path)
    scores = [c for c in ("prev_token_score", "current_token_score", "induction_score") if c in table]
    fig, axes = plt.subplots(1, len(scores), figsize=(4.2 * len(scores), 3.6), dpi=120, squeeze=False)
    for ax, score in zip(axes[0], scores):
        for comp, g in table.groupby("component", sort=False):
            ax.plot(g["step"].clip(lower=1), g[score], lw=1.2, label=comp)
        ax.set_xscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel(score.replace("_", " "))
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, ncol=2, title="head l:h", title_fontsize=7)
    fig.suptitle(title or "head scores over training", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
