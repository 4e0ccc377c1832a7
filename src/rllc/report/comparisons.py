"""Figures for the comparison layer (matplotlib, Agg): Hessian measures beside LLC curves, clustering metrics,
the split tree, and stage shading for any curve plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from rllc.analysis.stages import Stages  # noqa: E402

_STAGE_COLOURS = ("#4c72b0", "#dd8452")
STAGES_NOTE = ("shaded S1, S2, …: developmental stages of the full-model LLC on the pre-training data "
               "(dashed: stage boundaries, dotted: transitions)")
_MEASURE_LABELS = {"llc": "λ̂ (LLC)", "hessian_trace": "tr H (Hutchinson)", "fim_trace": "tr F (Fisher information)",
                   "hessian_rank": "rank of H (eigenvalues above η)"}


def with_stages_note(title: str, stages: Stages | None) -> str:
    """`title`, and on a second line what the shaded stages are when a figure draws them."""
    return title if stages is None else f"{title}\n{STAGES_NOTE}"


def shade_stages(ax: plt.Axes, stages: Stages, *, labels: bool = True, alpha: float = 0.08) -> None:
    """Shade alternate stages of `stages` on an axis whose x axis is the training step; label them S1, S2, …;
    dashed lines at the boundaries, dotted lines at the transitions (steepest change inside a stage)."""
    e = stages.edges
    for i in range(len(e) - 1):
        ax.axvspan(max(e[i], 1), max(e[i + 1], 1), color=_STAGE_COLOURS[i % 2], alpha=alpha, lw=0)
        if labels:
            mid = (max(e[i], 1) * max(e[i + 1], 1)) ** 0.5  # the geometric middle on a log axis
            ax.text(mid, 1.0, f"S{i + 1}", transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=7, color="0.3")
    for b in stages.boundaries:
        ax.axvline(b, color="0.5", lw=0.6, ls="--")
    for t in stages.transitions:
        ax.axvline(max(t, 1), color="0.5", lw=0.6, ls=":")


def plot_hessian_comparison(results: pd.DataFrame, path: str | Path, *, components: Sequence[str] = ("all",),
                            data: str = "pretrain", measures: Sequence[str] = ("llc", "hessian_trace",
                                                                               "fim_trace", "hessian_rank"),
                            stages: Stages | None = None, title: str = "") -> Path:
    """One panel per measure (LLC first), one line per component, error bars = stored std, log step axis.

    The FIM trace is drawn from data "self" whatever `data` says. Measures with no rows are left out.
    """
    path = Path(path)
    present = [m for m in measures if (results.measure == m).any()]
    fig, axes = plt.subplots(1, max(1, len(present)), figsize=(4.2 * max(1, len(present)), 3.4), dpi=120,
                             squeeze=False)
    for ax, m in zip(axes[0], present):
        d = results[(results.measure == m) & (results.data == ("self" if m == "fim_trace" else data))]
        for comp in components:
            g = d[d.component == comp].groupby("step")[["value", "std"]].mean().reset_index()
            if len(g):
                ax.errorbar(g.step.clip(lower=1), g.value, yerr=g["std"].fillna(0), lw=1.2, ms=2.5, fmt="o-",
                            capsize=1.5, label=comp)
        if stages is not None:
            shade_stages(ax, stages)
        ax.set_xscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel(_MEASURE_LABELS.get(m, m.replace("_", " ")) + " (bars: ±1 s.e.)", fontsize=8)
        ax.set_title(m.replace("_", " ") + (" on self-sampled data" if m == "fim_trace" else f" on {data}"),
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, title="component", title_fontsize=6)
    fig.suptitle(with_stages_note(title or f"LLC and Hessian measures over training on {data}", stages),
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_cluster_metrics(metrics: pd.DataFrame, path: str | Path, *, chosen_k: int | None = None,
                         title: str = "") -> Path:
    """Silhouette, Calinski–Harabasz and Davies–Bouldin against k, one line per algorithm (`cluster_metrics`)."""
    path = Path(path)
    names = ("silhouette", "calinski_harabasz", "davies_bouldin")
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), dpi=120)
    for ax, name in zip(axes, names):
        for alg, g in metrics.groupby("algorithm"):
            ax.plot(g.k, g[name], "o-", ms=3, label=alg)
        if chosen_k is not None:
            ax.axvline(chosen_k, color="0.4", ls="--", lw=0.8)
        ax.set_xlabel("k (number of clusters)")
        better = "lower" if name == "davies_bouldin" else "higher"
        ax.set_ylabel(f"{name.replace('_', '-')} score ({better} is better)", fontsize=8)
        ax.set_title(name.replace("_", " ") + (f" (dashed: chosen k = {chosen_k})" if chosen_k is not None else ""),
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="algorithm", title_fontsize=7)
    fig.suptitle(title or "clustering metrics", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_split_tree(tree: pd.DataFrame, path: str | Path, *, title: str = "") -> Path:
    """The split tree (`split_tree`): one row per k, a box per cluster listing its heads, lines to parents."""
    path = Path(path)
    ks = sorted(tree.k.unique())
    width = max(tree.groupby("k").size())
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * width), 0.9 * len(ks) + 0.8), dpi=120)
    pos: dict[str, tuple[float, float]] = {}
    for row, k in enumerate(ks):
        g = tree[tree.k == k].reset_index(drop=True)
        for i, r in g.iterrows():
            x, y = (i + 0.5) * width / len(g), -row
            pos[r.cluster] = (x, y)
            if r.parent:
                px, py = pos[r.parent]
                ax.plot([px, x], [py - 0.15, y + 0.15], color="0.6", lw=0.8)
            ax.text(x, y, "\n".join(", ".join(r.heads[j:j + 3]) for j in range(0, len(r.heads), 3)),
                    ha="center", va="center", fontsize=6.5, bbox=dict(boxstyle="round", fc="white", ec="0.5"))
    ax.set_yticks([-i for i in range(len(ks))], [f"k={k}" for k in ks])
    ax.set_xlim(0, width)
    ax.set_ylim(-len(ks) + 0.5, 0.5)
    ax.set_xticks([])
    ax.set_xlabel("clusters at each k (boxes: the heads in each; lines: which cluster each split from)")
    ax.set_ylabel("number of clusters k")
    for s in ("top", "right", "bottom"):
        ax.spines[s].set_visible(False)
    ax.set_title(title or "how the clusters split as k grows", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_curve_with_stages(steps: Sequence[float], values: Sequence[float], stages: Stages, path: str | Path, *,
                           ylabel: str = "LLC", title: str = "") -> Path:
    """A curve, its smoothed version and its stages shaded, log step axis."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    ax.plot(pd.Series(steps).clip(lower=1), values, "o", ms=2.5, alpha=0.6, label="estimate")
    ax.plot(pd.Series(stages.grid_steps).clip(lower=1), stages.smoothed, lw=1.4,
            label=f"smoothed (bandwidth {stages.bandwidth:g} in ln step)")
    shade_stages(ax, stages)
    ax.set_xscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_title(with_stages_note(title or f"{ylabel} and developmental stages", stages), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
