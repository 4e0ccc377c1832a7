"""Developmental stages from an LLC curve (Hoogland et al. 2024; Wang et al. 2024, App. C).

A stage boundary is a critical point of the LLC over log-steps: where it stops rising or stops falling. The curve
is smoothed by Gaussian kernel regression over x = ln(1 + step) with a stated bandwidth (in units of x, so 0.25
means a kernel standard deviation of a factor e^0.25 ≈ 1.28 in steps), evaluated on a uniform grid, and its local
extremes are the candidate boundaries. Wiggles are removed by persistence: while two neighbouring extremes differ
by less than `min_change` × the smoothed curve's range, the pair is dropped. The stages are the intervals between
consecutive boundaries (and the first and last checkpoints); within each the smoothed LLC rises or falls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rllc._errors import RllcError


@dataclass(frozen=True)
class StageConfig:
    """How a curve is smoothed and its critical points kept.

    Attributes:
        bandwidth: Gaussian kernel standard deviation in ln(1 + step) units.
        grid_points: points of the uniform log-step grid the smoothed curve is evaluated on.
        min_change: neighbouring extremes closer than this fraction of the smoothed range are merged away.
    """

    bandwidth: float = 0.25
    grid_points: int = 400
    min_change: float = 0.05

    def __post_init__(self) -> None:
        if not self.bandwidth > 0:
            raise RllcError(f"stage detection: bandwidth must be positive, got {self.bandwidth}")
        if self.grid_points < 10:
            raise RllcError(f"stage detection: grid_points must be at least 10, got {self.grid_points}")
        if not 0 <= self.min_change < 1:
            raise RllcError(f"stage detection: min_change must be in [0, 1), got {self.min_change}")


@dataclass(frozen=True)
class CriticalPoint:
    """A local extreme of the smoothed curve: `kind` "max" or "min" at `step`, smoothed `value` there."""

    step: float
    kind: str
    value: float


@dataclass(frozen=True)
class Stages:
    """Stage boundaries of one curve.

    Attributes:
        start, end: first and last step of the curve.
        critical_points: the kept extremes (interior boundaries), in step order.
        bandwidth: the smoothing bandwidth used (ln-step units).
        grid_steps, smoothed: the smoothed curve (for plotting), each (grid_points,).
    """

    start: float
    end: float
    critical_points: tuple[CriticalPoint, ...]
    bandwidth: float
    grid_steps: tuple[float, ...]
    smoothed: tuple[float, ...]

    @property
    def boundaries(self) -> tuple[float, ...]:
        """Interior boundary steps, ascending."""
        return tuple(c.step for c in self.critical_points)

    @property
    def edges(self) -> tuple[float, ...]:
        """start, the boundaries, end."""
        return (self.start, *self.boundaries, self.end)

    def value_at(self, step: float) -> float:
        """The smoothed curve at a step (linear interpolation on the log grid)."""
        return float(np.interp(math.log1p(step), np.log1p(self.grid_steps), self.smoothed))

    def table(self, loss: tuple[Sequence[float], Sequence[float]] | pd.DataFrame | None = None) -> pd.DataFrame:
        """One row per stage.

        Args:
            loss: optional loss curve, (steps, losses) or a DataFrame with columns step and a loss column
                ("val_loss", "train_loss" or "loss"), interpolated in ln(1 + step) at the stage ends.

        Returns:
            Columns stage ("S1", …), start, end, llc_start, llc_end, llc_trend ("rising"/"falling"),
            and loss_start, loss_end, loss_change when `loss` is given.
        """
        rows = []
        e = self.edges
        for i in range(len(e) - 1):
            a, b = self.value_at(e[i]), self.value_at(e[i + 1])
            rows.append({"stage": f"S{i + 1}", "start": int(round(e[i])), "end": int(round(e[i + 1])),
                         "llc_start": a, "llc_end": b, "llc_trend": "rising" if b >= a else "falling"})
        df = pd.DataFrame(rows)
        if loss is not None:
            ls, lv = _loss_curve(loss)
            x = np.log1p(ls)
            df["loss_start"] = np.interp(np.log1p(df["start"].to_numpy(float)), x, lv)
            df["loss_end"] = np.interp(np.log1p(df["end"].to_numpy(float)), x, lv)
            df["loss_change"] = df["loss_end"] - df["loss_start"]
        return df


def _loss_curve(loss: tuple[Sequence[float], Sequence[float]] | pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(loss, pd.DataFrame):
        col = next((c for c in ("val_loss", "train_loss", "loss", "value") if c in loss), None)
        if col is None or "step" not in loss:
            raise RllcError("stage table: the loss frame needs a 'step' column and a 'val_loss' or 'loss' column")
        d = loss[["step", col]].dropna().sort_values("step")
        return d["step"].to_numpy(float), d[col].to_numpy(float)
    s, v = (np.asarray(a, dtype=float) for a in loss)
    order = np.argsort(s)
    return s[order], v[order]


def smooth_log_curve(steps: Sequence[float], values: Sequence[float], bandwidth: float,
                     grid_points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian kernel regression of values over x = ln(1 + step) on a uniform x grid.

    Returns:
        (grid steps (grid_points,), smoothed values (grid_points,)).
    """
    s, v = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    ok = np.isfinite(s) & np.isfinite(v)
    s, v = s[ok], v[ok]
    if len(s) < 3:
        raise RllcError(f"stage detection needs at least 3 finite points on the curve, got {len(s)}")
    x = np.log1p(s)
    grid = np.linspace(x.min(), x.max(), grid_points)
    w = np.exp(-0.5 * ((grid[:, None] - x[None, :]) / bandwidth) ** 2)  # (G, N)
    # Local-linear regression: a plain kernel average flattens the curve at the ends and invents extremes there.
    sw = w.sum(1)
    mx = (w * x).sum(1) / sw
    my = (w * v).sum(1) / sw
    dx = x[None, :] - mx[:, None]
    slope = (w * dx * (v[None, :] - my[:, None])).sum(1) / np.maximum((w * dx ** 2).sum(1), 1e-300)
    return np.expm1(grid), my + slope * (grid - mx)


def _extremes(y: np.ndarray) -> list[tuple[int, str]]:
    d = np.sign(np.diff(y))
    for i in range(1, len(d)):  # flat runs take the sign before them
        if d[i] == 0:
            d[i] = d[i - 1]
    out = []
    for i in range(1, len(d)):
        if d[i - 1] > 0 and d[i] < 0:
            out.append((i, "max"))
        elif d[i - 1] < 0 and d[i] > 0:
            out.append((i, "min"))
    return out


def detect_stages(steps: Sequence[float], values: Sequence[float], config: StageConfig = StageConfig()) -> Stages:
    """Stage boundaries of a curve: the persistent critical points of its smoothed version over log-steps.

    Args:
        steps: checkpoint steps (N,), any order; NaN values are dropped.
        values: the curve (N,), e.g. the full-model LLC or a head's rLLC.
        config: bandwidth, grid and persistence threshold.

    Returns:
        Stages.
    """
    grid_steps, y = smooth_log_curve(steps, values, config.bandwidth, config.grid_points)
    ext = _extremes(y)
    tol = config.min_change * float(y.max() - y.min())
    # Persistence simplification over the sequence start, extremes…, end.
    pts = [(0, "end")] + ext + [(len(y) - 1, "end")]
    while len(pts) > 2:
        diffs = [abs(y[pts[i + 1][0]] - y[pts[i][0]]) for i in range(len(pts) - 1)]
        i = int(np.argmin(diffs))
        if diffs[i] >= tol:
            break
        if i == 0:
            del pts[1]  # the first extreme is a wiggle next to the start
        elif i == len(pts) - 2:
            del pts[-2]
        else:
            del pts[i:i + 2]
    cps = tuple(CriticalPoint(float(grid_steps[j]), k, float(y[j])) for j, k in pts[1:-1])
    return Stages(float(grid_steps[0]), float(grid_steps[-1]), cps, config.bandwidth,
                  tuple(map(float, grid_steps)), tuple(map(float, y)))


def curve_stages(results: pd.DataFrame, *, component: str = "all", data: str = "pretrain", measure: str = "llc",
                 config: StageConfig = StageConfig()) -> Stages:
    """Stages of one stored curve (rows of `load_results` with the given component, data and measure).

    Returns:
        Stages of the mean value per step (invalid rows dropped).
    """
    d = results[(results.component == component) & (results.data == data) & (results.measure == measure)]
    if "valid" in d:
        d = d[d.valid.astype(bool)]
    if d.empty:
        raise RllcError(f"no valid {measure!r} results for component {component!r} on data {data!r}; sweep first")
    g = d.groupby("step")["value"].mean()
    return detect_stages(g.index.to_numpy(float), g.to_numpy(float), config)


def head_stages(results: pd.DataFrame, *, data: str = "pretrain", measure: str = "llc",
                config: StageConfig = StageConfig()) -> pd.DataFrame:
    """Stage tables of every head "l:h" in `results`, stacked with a `component` column first."""
    comps = sorted(c for c in results.component.unique() if _is_head(c))
    frames = []
    for c in comps:
        t = curve_stages(results, component=c, data=data, measure=measure, config=config).table()
        t.insert(0, "component", c)
        frames.append(t)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _is_head(name: str) -> bool:
    a, sep, b = name.partition(":")
    return bool(sep) and a.isdigit() and b.isdigit()


@dataclass(frozen=True)
class BoundaryDistance:
    """The stage boundary nearest a step: `boundary` step, `steps` = step − boundary, `log_ratio` = ln((1+step)/
    (1+boundary)) (the distance on the log axis the stages were found on)."""

    boundary: float
    steps: float
    log_ratio: float


def nearest_boundary_distance(stages: Stages, step: float) -> BoundaryDistance:
    """Distance from `step` to the nearest interior stage boundary (NaN fields when there is none)."""
    b = stages.boundaries
    if not b:
        return BoundaryDistance(float("nan"), float("nan"), float("nan"))
    near = min(b, key=lambda s: abs(math.log1p(s) - math.log1p(step)))
    return BoundaryDistance(near, step - near, math.log1p(step) - math.log1p(near))


def steepest_rise(steps: Sequence[float], values: Sequence[float], bandwidth: float = 0.25) -> float:
    """The step where a curve (e.g. an induction score) rises fastest per unit ln(1 + step), after smoothing."""
    gs, y = smooth_log_curve(steps, values, bandwidth)
    return float(gs[int(np.argmax(np.gradient(y, np.log1p(gs))))])
