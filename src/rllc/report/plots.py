"""Figures written as PNG files (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rllc.train.run import Run  # noqa: E402


def draw_loss(ax, run: Run, *, legend_size: float | None = None) -> None:  # noqa: ANN001 - a matplotlib Axes
    """Draw training loss (per logged step) and validation loss (per checkpoint) on `ax`, log step axis."""
    metrics, ckpts = run.metrics(), run.checkpoints()
    if len(metrics):
        ax.plot(metrics["step"].clip(lower=1), metrics["train_loss"], lw=0.8, alpha=0.7, label="train (logged mean)")
    ax.plot(ckpts["step"].clip(lower=1), ckpts["val_loss"], "o-", ms=2.5, lw=1.2, label="validation")
    ax.set_xscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("next-token loss (nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)


def plot_loss_curve(run: Run, path: str | Path) -> Path:
    """Training loss (per logged step) and validation loss (per checkpoint) against step, log x axis."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    draw_loss(ax, run)
    ax.set_title(f"{run.path.name}: loss over training ({run.config.train.data})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
