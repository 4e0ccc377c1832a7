"""Choosing ε (and nβ, γ): run the estimator over a grid, flag bad cells, recommend one, plot the traces."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from rllc._errors import RllcError
from rllc.llc.config import SamplerConfig
from rllc.llc.estimator import LLCResult, _make_config, estimate_llc
from rllc.llc.losses import LossFn


@dataclass(frozen=True, eq=False)
class CalibrationResult:
    """A calibration grid.

    Attributes:
        table: one row per cell with columns epsilon, nbeta, gamma, llc_mean, llc_std, valid, converged,
            n_diverged, stable (λ̂ agrees with the next smaller ε), recommended, loss_trace ((C, draws) array),
            init_loss.
        recommended: the recommended settings (the base config with that cell's ε, nβ, γ), or None if no cell
            qualifies.
        results: the full ``LLCResult`` of every cell, in table order.
        messages: why cells were flagged or nothing was recommended.
    """

    table: pd.DataFrame
    recommended: SamplerConfig | None
    results: tuple[LLCResult, ...]
    messages: tuple[str, ...]


def _stable(a: LLCResult, b: LLCResult) -> bool:
    """λ̂ at ε and at the next smaller ε agree within 10% or two standard errors."""
    if not (a.valid and b.valid and math.isfinite(a.mean) and math.isfinite(b.mean)):
        return False
    se = math.sqrt(sum((r.std if math.isfinite(r.std) else 0.0) ** 2 / len(r.per_chain) for r in (a, b)))
    return abs(a.mean - b.mean) <= max(2 * se, 0.1 * abs(b.mean))


def calibrate(
    model: nn.Module,
    data: Any,
    *,
    epsilons: Sequence[float],
    nbetas: Sequence[float],
    gammas: Sequence[float] = (200.0,),
    loss_fn: LossFn | None = None,
    component: Any = None,
    config: SamplerConfig | None = None,
    batched: bool | str = "auto",
    device: str = "cpu",
    progress: bool = False,
    **overrides: Any,
) -> CalibrationResult:
    """Run ``estimate_llc`` on every (ε, nβ, γ) cell and recommend a setting.

    A cell is usable when it is valid (no diverged chain, λ̂ ≥ 0), converged (no significant late drift) and
    stable (its λ̂ matches the next smaller ε of the same nβ, γ — so the smallest ε of a group is never
    recommended by itself). The recommendation is the usable cell with the largest ε (fewest steps for the same
    exploration); ties go to the earlier nβ, then γ, as given.

    Args:
        epsilons, nbetas, gammas: the grid axes.
        Other arguments as in ``estimate_llc``; every cell uses the same seed, so cells differ only in the grid
        values.

    Returns:
        A ``CalibrationResult``.
    """
    if not epsilons or not nbetas or not gammas:
        raise RllcError("calibrate needs at least one value in each of epsilons, nbetas and gammas")
    base = _make_config(config, overrides)
    rows, results = [], []
    for nbeta, gamma in itertools.product(nbetas, gammas):
        group: list[LLCResult] = []
        for eps in sorted(epsilons):
            cfg = base.replace(epsilon=float(eps), nbeta=float(nbeta), gamma=float(gamma))
            res = estimate_llc(model, data, loss_fn=loss_fn, component=component, config=cfg, batched=batched,
                               device=device, progress=progress)
            stable = bool(group) and _stable(res, group[-1])
            group.append(res)
            results.append(res)
            rows.append({
                "epsilon": cfg.epsilon, "nbeta": cfg.nbeta, "gamma": cfg.gamma, "llc_mean": res.mean,
                "llc_std": res.std, "valid": res.valid, "converged": res.diagnostics.converged,
                "n_diverged": len(res.diagnostics.diverged), "stable": stable, "recommended": False,
                "loss_trace": res.loss_trace, "init_loss": res.init_loss,
            })
    table = pd.DataFrame(rows)
    usable = table["valid"] & table["converged"] & table["stable"]
    messages = []
    for _, row in table[~(table["valid"] & table["converged"])].iterrows():
        why = "diverged" if row["n_diverged"] else ("negative λ̂" if not row["valid"] else "not converged")
        messages.append(f"cell ε={row['epsilon']:g}, nβ={row['nbeta']:g}, γ={row['gamma']:g}: {why}")
    recommended = None
    if usable.any():
        cand = table[usable]
        best = cand.index[np.argmax(cand["epsilon"].to_numpy())]  # first maximum keeps the given nβ/γ order
        table.loc[best, "recommended"] = True
        recommended = base.replace(epsilon=float(table.loc[best, "epsilon"]), nbeta=float(table.loc[best, "nbeta"]),
                                   gamma=float(table.loc[best, "gamma"]))
    else:
        messages.append("no cell is valid, converged and stable against a smaller ε; extend the grid to smaller ε "
                        "or more draws")
    return CalibrationResult(table=table, recommended=recommended, results=tuple(results), messages=tuple(messages))


def plot_calibration(result: CalibrationResult, path: str | Path, *, title: str = "") -> Path:
    """Write a PNG grid of λ̂ traces nβ(L_t − L*) per chain: rows (nβ, γ), columns ε. Returns the path.

    `title` says on what the grid ran (run, step, component, data); a legend names the chains and the suptitle
    explains the flags and the ★.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = result.table
    groups = list(dict.fromkeys(zip(t["nbeta"], t["gamma"])))
    eps = sorted(t["epsilon"].unique())
    fig = Figure(figsize=(3.2 * len(eps), 2.4 * len(groups)), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(groups), len(eps), squeeze=False)
    for _, row in t.iterrows():
        i, j = groups.index((row["nbeta"], row["gamma"])), eps.index(row["epsilon"])
        ax = axes[i][j]
        traces = row["nbeta"] * (row["loss_trace"].T - row["init_loss"])  # (draws, chains)
        ax.plot(traces, lw=0.7, label=[f"chain {c}" for c in range(traces.shape[1])])
        flag = "" if row["valid"] and row["converged"] else (" DIVERGED" if row["n_diverged"] else " FLAGGED")
        star = " ★" if row["recommended"] else ""
        ax.set_title(f"ε={row['epsilon']:g} nβ={row['nbeta']:g} γ={row['gamma']:g}\n"
                     f"λ̂={row['llc_mean']:.3g}{flag}{star}", fontsize=8)
        ax.set_xlabel("draw", fontsize=7)
        ax.set_ylabel("nβ (L_n(w_t) − L_n(w*))", fontsize=7)
        ax.tick_params(labelsize=6)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=7)
    fig.suptitle(f"{title + ': ' if title else ''}SGLD loss traces per chain; λ̂ = their mean over draws. "
                 "★ recommended (the largest usable ε); FLAGGED: not converged or unstable against a smaller ε; "
                 "DIVERGED: a chain diverged", fontsize=8, wrap=True)
    path = Path(path)
    if path.is_dir():
        raise RllcError(f"{path} is a folder; give the PNG's path, e.g. {path / 'calibration.png'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, format="png")  # exactly `path`: without a format matplotlib appends .png to a bare name
    return path
