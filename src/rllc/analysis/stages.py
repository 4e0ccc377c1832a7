"""Developmental stages from an LLC curve (Hoogland et al. 2024; Wang et al. 2024, App. C).

A stage boundary is a critical point of the LLC over log-steps: where it stops rising or stops falling (a local
extreme), or where its slope falls to about zero without changing sign (a plateau between two rises or two falls,
as in Hoogland et al.'s LM stages). The curve is smoothed by Gaussian kernel regression over x = ln(1 + step) with
a stated bandwidth (in units of x, so 0.25 means a kernel standard deviation of a factor e^0.25 ≈ 1.28 in steps),
evaluated on a uniform grid; its local extremes, and the local minima of |slope| where the slope stays of one sign
but drops to at most `plateau` × the steepest slope on either side, are the candidate boundaries. Wiggles are
removed by persistence: while two neighbouring extremes differ by less than a tolerance, the pair is dropped. The
tolerance is `z` standard errors of their difference when the curve's standard errors are known (an LLC curve's:
chain spread / sqrt(chains)), else `min_change` × the smoothed curve's range. With standard errors a plateau also
needs the slope on each side to exceed its own by `z` standard errors of that difference (the smoother is linear
in the values, so the slopes' errors are exact): without that test a fine bandwidth finds "plateaus" in noise.
The stages are the intervals between consecutive boundaries (and the first and last checkpoints);
within each the smoothed LLC rises or falls, and its *transition*, if it has one, is the step where it changes
fastest (the steepest slope over ln step inside the stage, kept when it is at least `burst` times the stage's
median slope) — a developmental event that need not be a critical point, e.g. the LLC's jump while induction heads
form.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rllc._errors import RllcError


# The behaviours a stage table reports (`Stages.table(behaviour=...)`): the head scores `rllc heads` stores, each
# per head, and the model's ICL score (loss at a late token minus an early one: it falls as in-context learning
# improves).
BEHAVIOUR_MEASURES = {"prev_token_score": "previous-token", "current_token_score": "current-token",
                      "induction_score": "induction", "prefix_matching_score": "prefix matching",
                      "icl_score": "ICL score"}
BEHAVIOUR_MIN_CHANGE = 0.2  # listed when the change over a stage is at least this fraction of the run's range
BEHAVIOUR_MOST = 2  # heads named per measure and stage (the largest changes)


@dataclass(frozen=True)
class StageConfig:
    """How a curve is smoothed and its critical points kept.

    Attributes:
        bandwidth: Gaussian kernel standard deviation in ln(1 + step) units.
        grid_points: points of the uniform log-step grid the smoothed curve is evaluated on.
        min_change: without standard errors, neighbouring extremes closer than this fraction of the smoothed range
            are merged away.
        z: with standard errors, neighbouring extremes closer than z standard errors of their difference are
            merged away.
        burst: a stage has a transition where its steepest |slope| is at least this many times its median |slope|.
        plateau: a local minimum of |slope| without a sign change is a boundary candidate when |slope| there is at
            most this fraction of the steepest |slope| on each side (within the same-sign run); 0 turns plateau
            boundaries off (extremes only).
    """

    bandwidth: float = 0.25
    grid_points: int = 400
    min_change: float = 0.05
    z: float = 3.0
    burst: float = 3.0
    plateau: float = 0.25

    def __post_init__(self) -> None:
        if not self.bandwidth > 0:
            raise RllcError(f"stage detection: bandwidth must be positive, got {self.bandwidth}")
        if self.grid_points < 10:
            raise RllcError(f"stage detection: grid_points must be at least 10, got {self.grid_points}")
        if not 0 <= self.min_change < 1:
            raise RllcError(f"stage detection: min_change must be in [0, 1), got {self.min_change}")
        if not self.z >= 0:
            raise RllcError(f"stage detection: z must be >= 0, got {self.z}")
        if not 0 <= self.plateau < 1:
            raise RllcError(f"stage detection: plateau must be in [0, 1), got {self.plateau}")


@dataclass(frozen=True)
class CriticalPoint:
    """A critical point of the smoothed curve at `step`, smoothed `value` there: `kind` "max" or "min" (a local
    extreme), or "plateau" (the slope falls to about zero between two rises or two falls)."""

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
        stage_transitions: per stage, the step where the smoothed curve changes fastest per unit ln(1 + step), or
            NaN when that is no burst (see `StageConfig.burst`).
        excluded: (step, reason) of stored estimates left out of the curve (`curve_stages`: no finite value, or a
            chain diverged).
        negative: steps whose estimate is negative (kept in the curve unless `curve_stages(negative="drop")`,
            then also listed in `excluded`).
        slope, slope_se: the smoothed curve's slope per unit ln(1 + step) on the grid and its standard error (NaN
            without the points' standard errors).
        seen: per grid point, whether a checkpoint lies within a bandwidth (elsewhere the slope is interpolation).
    """

    start: float
    end: float
    critical_points: tuple[CriticalPoint, ...]
    bandwidth: float
    grid_steps: tuple[float, ...]
    smoothed: tuple[float, ...]
    stage_transitions: tuple[float, ...] = ()
    excluded: tuple[tuple[int, str], ...] = ()
    negative: tuple[int, ...] = ()
    slope: tuple[float, ...] = ()
    slope_se: tuple[float, ...] = ()
    seen: tuple[bool, ...] = ()

    def handling(self) -> str:
        """One line saying which estimates were left out or are negative and what was done with them."""
        parts = []
        by: dict[str, list[int]] = {}
        for step, why in self.excluded:
            by.setdefault(why, []).append(step)
        for why, steps in by.items():
            parts.append(f"{len(steps)} left out ({why}: steps {_steps_list(steps)})")
        kept_negative = [s for s in self.negative if s not in {e for e, _ in self.excluded}]
        if kept_negative:
            parts.append(f"{len(kept_negative)} negative estimate(s) kept in the curve (steps "
                         f"{_steps_list(kept_negative)}: the chains found loss below L(w*), so w* is not a local "
                         f"minimum there or the sampler is too hot)")
        return "; ".join(parts) if parts else "every estimate finite and non-negative"

    @property
    def transitions(self) -> tuple[float, ...]:
        """The stages' transitions, ascending (stages without a burst of change have none)."""
        return tuple(t for t in self.stage_transitions if not math.isnan(t))

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

    def table(self, loss: tuple[Sequence[float], Sequence[float]] | pd.DataFrame | None = None,
              behaviour: pd.DataFrame | None = None, min_change: float = BEHAVIOUR_MIN_CHANGE) -> pd.DataFrame:
        """One row per stage, like Hoogland et al.'s LM1–LM5: its steps, the LLC's and the loss's change, and
        which behaviours rise and fall in it.

        Args:
            loss: optional loss curve, (steps, losses) or a DataFrame with columns step and a loss column
                ("val_loss", "train_loss" or "loss"), interpolated in ln(1 + step) at the stage ends.
            behaviour: optional rows of `load_results` with the head scores of `rllc heads` (`BEHAVIOUR_MEASURES`);
                see `behaviour_changes`.
            min_change: a behaviour is listed when it changes over the stage by at least this fraction of its
                range over the run.

        Returns:
            Columns stage ("S1", …), start, end, ends_at (the boundary's kind: "max", "min", "plateau", or "last
            step"), llc_start, llc_end, llc_change, llc_trend ("rising"/"falling"), transition (the step of
            fastest change inside the stage); loss_start, loss_end, loss_change when `loss` is given; rises, falls
            (text, "" for none) when `behaviour` is given.
        """
        rows = []
        e = self.edges
        for i in range(len(e) - 1):
            a, b = self.value_at(e[i]), self.value_at(e[i + 1])
            rows.append({"stage": f"S{i + 1}", "start": int(round(e[i])), "end": int(round(e[i + 1])),
                         "ends_at": self.critical_points[i].kind if i < len(self.critical_points) else "last step",
                         "llc_start": a, "llc_end": b, "llc_change": b - a,
                         "llc_trend": "rising" if b >= a else "falling",
                         "transition": _step_or_none(self.stage_transitions, i)})
        df = pd.DataFrame(rows)
        if loss is not None:
            ls, lv = _loss_curve(loss)
            x = np.log1p(ls)
            df["loss_start"] = np.interp(np.log1p(df["start"].to_numpy(float)), x, lv)
            df["loss_end"] = np.interp(np.log1p(df["end"].to_numpy(float)), x, lv)
            df["loss_change"] = df["loss_end"] - df["loss_start"]
        if behaviour is not None:
            changes = behaviour_changes(behaviour, e, min_change)
            df["rises"] = [", ".join(map(str, c.rises)) for c in changes]
            df["falls"] = [", ".join(map(str, c.falls)) for c in changes]
        return df


def _steps_list(steps: Sequence[int], most: int = 8) -> str:
    s = ", ".join(str(int(x)) for x in steps[:most])
    return s + (f", … ({len(steps) - most} more)" if len(steps) > most else "")


def _step_or_none(values: Sequence[float], i: int) -> int | None:
    return int(round(values[i])) if i < len(values) and not math.isnan(values[i]) else None


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


@dataclass(frozen=True)
class Change:
    """A behaviour's change over a stage: `measure` (a key of `BEHAVIOUR_MEASURES`), `component` ("l:h", or "all"
    for the model), its value at the stage's `start` and `end` (interpolated in ln(1 + step))."""

    measure: str
    component: str
    start: float
    end: float

    def __str__(self) -> str:
        who = "" if self.component == "all" else f" {self.component}"
        return f"{BEHAVIOUR_MEASURES.get(self.measure, self.measure)}{who} {self.start:.2f}→{self.end:.2f}"


@dataclass(frozen=True)
class StageChanges:
    """What rises and what falls over one stage, largest change first within each measure."""

    rises: tuple[Change, ...]
    falls: tuple[Change, ...]


def behaviour_changes(results: pd.DataFrame, edges: Sequence[float], min_change: float = BEHAVIOUR_MIN_CHANGE,
                      most: int = BEHAVIOUR_MOST) -> list[StageChanges]:
    """Which behaviours rise and which fall between consecutive `edges` (a stage's start and end).

    Each measure of `BEHAVIOUR_MEASURES` in `results` (rows of `load_results`: the head scores per head, the ICL
    score of the model, component "all"; one analysis setting, the one with the most checkpoints) is read per
    component at the edges by linear interpolation in ln(1 + step) (held constant past the analysed checkpoints).
    A component is listed when its change over the stage is at least `min_change` × the measure's range over the
    run (all its components and checkpoints), at most `most` per measure (the largest changes).

    Args:
        results: long-form results with columns step, component, measure, value (and config_hash).
        edges: stage edges (n + 1,), ascending: `Stages.edges`.
        min_change: the fraction of a measure's range a change must reach.
        most: components listed per measure and stage.

    Returns:
        One StageChanges per stage (n,).
    """
    if not 0 < min_change <= 1:
        raise RllcError(f"behaviour changes: min_change must be in (0, 1], got {min_change}")
    e = np.log1p(np.asarray(edges, dtype=float))
    rises: list[list[Change]] = [[] for _ in range(len(e) - 1)]
    falls: list[list[Change]] = [[] for _ in range(len(e) - 1)]
    d = results[results.measure.isin(list(BEHAVIOUR_MEASURES))]
    d = d[(d.component == "all") == (d.measure == "icl_score")]  # ICL: the model; scores: the heads
    d = d[(d.component == "all") | d.component.map(_is_head)]
    for measure in BEHAVIOUR_MEASURES:
        g = d[d.measure == measure]
        if "config_hash" in g and g.config_hash.nunique() > 1:
            g = g[g.config_hash == g.groupby("config_hash").step.nunique().idxmax()]
        curves = pd.to_numeric(g.value, errors="coerce").groupby([g.step, g.component]).mean().unstack()
        if len(curves) < 2:
            continue
        v = curves.to_numpy(float)  # (steps, components)
        span = float(np.nanmax(v) - np.nanmin(v)) if np.isfinite(v).any() else 0.0
        if not span > 0:
            continue
        x = np.log1p(curves.index.to_numpy(float))
        for j, comp in enumerate(curves.columns):
            ok = np.isfinite(v[:, j])
            if ok.sum() < 2:
                continue
            at = np.interp(e, x[ok], v[ok, j])
            for i in range(len(e) - 1):
                if abs(at[i + 1] - at[i]) >= min_change * span:
                    (rises if at[i + 1] > at[i] else falls)[i].append(Change(measure, str(comp), at[i], at[i + 1]))
    order = {m: k for k, m in enumerate(BEHAVIOUR_MEASURES)}

    def pick(cs: list[Change]) -> tuple[Change, ...]:
        cs = sorted(cs, key=lambda c: (order[c.measure], -abs(c.end - c.start), c.component))
        kept: list[Change] = []
        for c in cs:
            if sum(k.measure == c.measure for k in kept) < most:
                kept.append(c)
        return tuple(kept)

    return [StageChanges(pick(r), pick(f)) for r, f in zip(rises, falls)]


def smooth_log_curve(steps: Sequence[float], values: Sequence[float], bandwidth: float,
                     grid_points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian kernel regression of values over x = ln(1 + step) on a uniform x grid.

    Returns:
        (grid steps (grid_points,), smoothed values (grid_points,)).
    """
    grid_steps, weights, ok = _smoother(steps, values, bandwidth, grid_points)
    return grid_steps, weights @ np.asarray(values, dtype=float)[ok]


def _smoother(steps: Sequence[float], values: Sequence[float], bandwidth: float,
              grid_points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The smoother as a linear map: (grid steps (G,), weights (G, N_ok) with smoothed = weights @ values[ok],
    ok (N,) the finite points). Linear (local-linear kernel regression, bridged by straight lines across gaps
    wider than a bandwidth), so the smoothed curve's and its slope's standard errors follow from the
    points' exactly."""
    s, v = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    ok = np.isfinite(s) & np.isfinite(v)
    s = s[ok]
    if len(s) < 3:
        raise RllcError(f"stage detection needs at least 3 finite points on the curve, got {len(s)}")
    x = np.log1p(s)
    grid = np.linspace(x.min(), x.max(), grid_points)
    z2 = ((grid[:, None] - x[None, :]) / bandwidth) ** 2  # (G, N)
    # Each row scaled by its largest weight (the nearest checkpoint's is 1), so that far from every checkpoint
    # the weights do not underflow to 0/0; the scale cancels in the regression.
    w = np.exp(-0.5 * (z2 - z2.min(1, keepdims=True)))
    # Local-linear regression: a plain kernel average flattens the curve at the ends and invents extremes there.
    sw = w.sum(1)
    mx = (w * x).sum(1) / sw
    dx = x[None, :] - mx[:, None]
    sxx = np.maximum((w * dx ** 2).sum(1), 1e-300)
    weights = w / sw[:, None] + w * dx * ((grid - mx) / sxx)[:, None]
    # Where no checkpoint lies within a bandwidth (e.g. between steps 0 and 10 on a log axis) the regression only
    # extrapolates and can swing; the curve there is the straight line between the nearest covered grid points.
    seen = np.sqrt(z2.min(1)) <= 1.0
    if not seen.all():
        weights = np.stack([np.interp(grid, grid[seen], weights[seen, j]) for j in range(len(x))], axis=1)
    return np.expm1(grid), weights, ok


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


def _plateaus(slope: np.ndarray, frac: float, seen: np.ndarray,
              evidence: Callable[[int, int], float] | None = None) -> list[tuple[int, str]]:
    """Grid indices where |slope| has a local minimum at most `frac` × the steepest |slope| on each side, with
    the slope of one sign throughout (a sign change is an extreme, found by `_extremes`). With `evidence(i, j)` (z
    standard errors of slope[j] − slope[i]), each side's steepest slope must also exceed the plateau's by that
    much: a dip of the slope that the noise could make is no plateau."""
    if frac <= 0:
        return []
    a = np.abs(slope)
    sign = np.sign(slope)
    out = []
    for i in range(1, len(a) - 1):
        if not (seen[i] and a[i] <= a[i - 1] and a[i] < a[i + 1] and sign[i] != 0):
            continue
        lo = i
        while lo > 0 and sign[lo - 1] == sign[i]:
            lo -= 1
        hi = i
        while hi < len(a) - 1 and sign[hi + 1] == sign[i]:
            hi += 1
        jl, jr = lo + int(np.argmax(a[lo:i + 1])), i + int(np.argmax(a[i:hi + 1]))
        if a[i] > frac * min(a[jl], a[jr]):
            continue
        if evidence is not None and min(a[jl], a[jr]) - a[i] < max(evidence(i, jl), evidence(i, jr)):
            continue
        out.append((i, "plateau"))
    return out


def detect_stages(steps: Sequence[float], values: Sequence[float], config: StageConfig = StageConfig(),
                  se: Sequence[float] | None = None) -> Stages:
    """Stage boundaries of a curve: the persistent critical points of its smoothed version over log-steps.

    Args:
        steps: checkpoint steps (N,), any order; NaN values are dropped.
        values: the curve (N,), e.g. the full-model LLC or a head's rLLC.
        config: bandwidth, grid and persistence threshold.
        se: optional standard errors of the values (N,); with them, extremes are kept when they differ by more
            than ``config.z`` standard errors (the noise decides), else by more than ``config.min_change`` × the
            curve's range; and a plateau is kept only when the slope on each side exceeds its own by ``config.z``
            standard errors of the smoothed slopes' difference (the smoother is linear, so these are exact).

    Returns:
        Stages.
    """
    v = np.asarray(values, dtype=float)
    grid_steps, weights, ok = _smoother(steps, v, config.bandwidth, config.grid_points)
    y = weights @ v[ok]
    gx = np.log1p(grid_steps)
    dweights = np.gradient(weights, gx, axis=0)  # slope over ln(1 + step) = dweights @ values
    slope = dweights @ v[ok]
    # Only where a checkpoint lies within a bandwidth: elsewhere (e.g. between steps 0 and 10 on a log axis) the
    # smoothed curve is an interpolation, and its slope says nothing.
    x = np.log1p(np.asarray(steps, dtype=float)[ok])
    seen = np.abs(gx[:, None] - x[None, :]).min(1) <= config.bandwidth
    slope_se = np.full(len(y), np.nan)
    evidence = None
    if se is not None:
        s, e = np.asarray(steps, dtype=float), np.asarray(se, dtype=float)
        good = np.isfinite(s) & np.isfinite(e) & np.isfinite(v)
        order = np.argsort(s[good])
        # The standard error of the curve at each grid point, interpolated between checkpoints on ln(1 + step).
        se_grid = np.interp(np.log1p(grid_steps), np.log1p(s[good][order]), e[good][order])
        var = np.where(np.isfinite(e[ok]), e[ok], np.interp(x, np.log1p(s[good][order]), e[good][order])) ** 2
        slope_se = np.sqrt(dweights ** 2 @ var)

        def tol(i: int, j: int) -> float:
            return config.z * math.hypot(se_grid[i], se_grid[j])

        def evidence(i: int, j: int) -> float:
            return config.z * math.sqrt(float((dweights[j] - dweights[i]) ** 2 @ var))
    else:
        flat = config.min_change * float(y.max() - y.min())

        def tol(i: int, j: int) -> float:
            return flat
    ext = sorted(_extremes(y) + _plateaus(slope, config.plateau, seen, evidence))
    # Persistence simplification over the sequence start, extremes…, end.
    pts = [(0, "end")] + ext + [(len(y) - 1, "end")]
    while len(pts) > 2:
        gaps = [abs(y[pts[i + 1][0]] - y[pts[i][0]]) - tol(pts[i][0], pts[i + 1][0]) for i in range(len(pts) - 1)]
        i = int(np.argmin(gaps))
        if gaps[i] >= 0:
            break
        if i == 0:
            del pts[1]  # the first extreme is a wiggle next to the start
        elif i == len(pts) - 2:
            del pts[-2]
        elif "plateau" in (pts[i][1], pts[i + 1][1]):
            del pts[i if pts[i][1] == "plateau" else i + 1]  # a plateau alone can go: the run stays monotone
        else:
            del pts[i:i + 2]
    cps = tuple(CriticalPoint(float(grid_steps[j]), k, float(y[j])) for j, k in pts[1:-1])
    aslope = np.abs(slope)
    cuts = [j for j, _ in pts]
    transitions = []
    for a, b in zip(cuts, cuts[1:]):
        seg = np.where(seen[a:b + 1], aslope[a:b + 1], np.nan)
        if np.isnan(seg).all():
            transitions.append(float("nan"))
            continue
        peak = int(np.nanargmax(seg))
        burst = seg[peak] > 0 and seg[peak] >= config.burst * float(np.nanmedian(seg))
        transitions.append(float(grid_steps[a + peak]) if burst else float("nan"))
    transitions = tuple(transitions)
    return Stages(float(grid_steps[0]), float(grid_steps[-1]), cps, config.bandwidth,
                  tuple(map(float, grid_steps)), tuple(map(float, y)), transitions,
                  slope=tuple(map(float, slope)), slope_se=tuple(map(float, slope_se)),
                  seen=tuple(map(bool, seen)))


def curve_stages(results: pd.DataFrame, *, component: str = "all", data: str = "pretrain", measure: str = "llc",
                 config: StageConfig = StageConfig(), negative: str = "keep") -> Stages:
    """Stages of one stored curve (rows of `load_results` with the given component, data and measure).

    When the rows come from several settings (config hashes), the one with the most checkpoints is used: curves
    from different samplers are not averaged. With per-chain values (`load_results(..., with_extra=True)`) the
    standard errors std / sqrt(valid chains) set the persistence threshold (see `detect_stages`).

    Estimates that are not usable are handled explicitly and listed on the result (`Stages.excluded`,
    `Stages.negative`, `Stages.handling()`): a row with no finite value, or one where a chain diverged (its mean
    comes from the surviving chains only), is left out; a negative estimate is kept (`negative="keep"`: dropping
    it would bias the curve upward) or left out (`negative="drop"`).

    Returns:
        Stages of the mean value per step.
    """
    if negative not in ("keep", "drop"):
        raise RllcError(f"curve_stages: negative must be 'keep' or 'drop', got {negative!r}")
    d = results[(results.component == component) & (results.data == data) & (results.measure == measure)]
    if d.empty:
        raise RllcError(f"no {measure!r} results for component {component!r} on data {data!r}; sweep first")
    if "config_hash" in d and d.config_hash.nunique() > 1:
        d = d[d.config_hash == d.groupby("config_hash").step.nunique().idxmax()]
    value = pd.to_numeric(d["value"], errors="coerce")
    finite = np.isfinite(value.to_numpy(float))
    invalid = ~d.valid.astype(bool).to_numpy() if "valid" in d else np.zeros(len(d), dtype=bool)
    if "extra" in d:  # an invalid row with a lost chain diverged (its mean is over the surviving chains only)
        lost = d.extra.map(lambda x: isinstance(x, dict) and any(
            v is None or not math.isfinite(v) for v in x.get("per_chain", []))).to_numpy(bool)
        diverged = invalid & lost
    else:  # without per-chain values an invalid non-negative estimate can only be a divergence
        diverged = invalid & ~(value.to_numpy(float) < 0)
    neg = finite & (value.to_numpy(float) < 0) & ~diverged
    reason = np.where(~finite, "no finite estimate", np.where(diverged, "a chain diverged",
                      np.where(neg & (negative == "drop"), "negative estimate", "")))
    excluded = tuple(sorted({(int(s), str(r)) for s, r in zip(d.step, reason) if r}))
    negative_steps = tuple(sorted({int(s) for s in d.step[neg]}))
    d = d[reason == ""]
    if d.empty:
        raise RllcError(f"no usable {measure!r} results for component {component!r} on data {data!r} "
                        f"({len(excluded)} left out); check the sampler settings")
    g = d.groupby("step")["value"].mean()
    se = None
    if "extra" in d and "std" in d:
        chains = d.extra.map(lambda x: sum(v is not None and math.isfinite(v) for v in x.get("per_chain", []))
                             if isinstance(x, dict) else 0)
        if (chains >= 2).all():
            se = (d["std"] / np.sqrt(chains)).groupby(d.step).mean().reindex(g.index).to_numpy(float)
    st = detect_stages(g.index.to_numpy(float), g.to_numpy(float), config, se=se)
    return dataclasses.replace(st, excluded=excluded, negative=negative_steps)


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
    from rllc.model.components import is_head_name

    return is_head_name(name)


@dataclass(frozen=True)
class BoundaryDistance:
    """The stage boundary nearest a step: `boundary` step, `steps` = step − boundary, `log_ratio` = ln((1+step)/
    (1+boundary)) (the distance on the log axis the stages were found on)."""

    boundary: float
    steps: float
    log_ratio: float


def nearest_boundary_distance(stages: Stages, step: float) -> BoundaryDistance:
    """Distance from `step` to the nearest interior stage boundary (NaN fields when there is none)."""
    return _nearest(stages.boundaries, step)


def nearest_transition_distance(stages: Stages, step: float) -> BoundaryDistance:
    """Distance from `step` to the nearest stage transition (the step of fastest change inside a stage)."""
    return _nearest(stages.transitions, step)


def _nearest(points: Sequence[float], step: float) -> BoundaryDistance:
    if not points:
        return BoundaryDistance(float("nan"), float("nan"), float("nan"))
    near = min(points, key=lambda s: abs(math.log1p(s) - math.log1p(step)))
    return BoundaryDistance(near, step - near, math.log1p(step) - math.log1p(near))


def steepest_rise(steps: Sequence[float], values: Sequence[float], bandwidth: float = 0.25) -> float:
    """The step where a curve (e.g. an induction score) rises fastest per unit ln(1 + step), after smoothing."""
    gs, y = smooth_log_curve(steps, values, bandwidth)
    return float(gs[int(np.argmax(np.gradient(y, np.log1p(gs))))])


@dataclass(frozen=True)
class SlopePoint:
    """The smoothed curve's slope per unit ln(1 + step) at `step`, ± `se` (NaN without standard errors)."""

    step: float
    slope: float
    se: float

    def __str__(self) -> str:
        err = "" if math.isnan(self.se) else f" ± {self.se:.2g}"
        return f"{self.slope:.3g}{err} at step {self.step:.0f}"


@dataclass(frozen=True)
class FlankSlopes:
    """Why a stage has, or lacks, boundaries close to an event: the slope of the smoothed curve around it.

    Attributes:
        peak: the steepest |slope| of the stage that holds the event (its transition, if a burst).
        before, after: the flattest |slope| between the stage's start (end) and the peak — where a plateau
            boundary would sit — or None when the stage has no grid point there.
        outer_before, outer_after: the steepest |slope| farther out than `before` (`after`) inside the stage: a
            plateau needs it to be at least 1/`StageConfig.plateau` times the flattest (a rise on both sides).
        plateau: `StageConfig.plateau` of the detection.
    """

    peak: SlopePoint
    before: SlopePoint | None
    outer_before: SlopePoint | None
    after: SlopePoint | None
    outer_after: SlopePoint | None
    plateau: float

    def sentence(self) -> str:
        """One line for a finding's evidence."""
        def side(name: str, flat: SlopePoint | None, outer: SlopePoint | None, where: str) -> str:
            if flat is None:
                return f"no checkpoint {name} it"
            far = (f"steepest farther {where} {outer}" if outer is not None and outer.step != flat.step
                   else f"none steeper farther {where}")
            return f"flattest {name} it {flat} ({far})"
        return (f"slope of the smoothed curve per ln step: peak {self.peak}; "
                f"{side('before', self.before, self.outer_before, 'out')}; "
                f"{side('after', self.after, self.outer_after, 'out')} — a plateau boundary needs a flattest point "
                f"at most {self.plateau:g} × a steeper stretch on each side of it")


def flank_slopes(stages: Stages, step: float, plateau: float = StageConfig.plateau) -> FlankSlopes:
    """The slope profile of `stages`' smoothed curve in the stage holding `step` (see `FlankSlopes`)."""
    gs = np.asarray(stages.grid_steps)
    sl = np.abs(np.asarray(stages.slope))
    se = np.asarray(stages.slope_se) if stages.slope_se else np.full(len(gs), np.nan)
    seen = np.asarray(stages.seen) if stages.seen else np.ones(len(gs), dtype=bool)
    e = stages.edges
    k = max(i for i in range(len(e) - 1) if e[i] <= step or i == 0)
    lo, hi = int(np.searchsorted(gs, e[k])), int(np.searchsorted(gs, e[k + 1], side="right"))
    idx = np.arange(lo, hi)
    idx = idx[seen[idx]] if seen[idx].any() else (idx if len(idx) else np.arange(len(gs)))

    def at(i: int) -> SlopePoint:
        return SlopePoint(float(gs[i]), float(stages.slope[i]), float(se[i]))

    peak = int(idx[np.argmax(sl[idx])])
    left, right = idx[idx < peak], idx[idx > peak]
    before = int(left[np.argmin(sl[left])]) if len(left) else None
    after = int(right[np.argmin(sl[right])]) if len(right) else None
    ob = left[left <= before] if before is not None else left[:0]
    oa = right[right >= after] if after is not None else right[:0]
    return FlankSlopes(at(peak), at(before) if before is not None else None,
                       at(int(ob[np.argmax(sl[ob])])) if len(ob) else None,
                       at(after) if after is not None else None,
                       at(int(oa[np.argmax(sl[oa])])) if len(oa) else None, plateau)


@dataclass(frozen=True)
class FormationTiming:
    """Where a behaviour forms relative to the stages of an LLC curve.

    Attributes:
        measure: the behavioural score used (e.g. "induction_score"), its best head per checkpoint.
        rise: the step where that score rises most steeply (per unit ln(1 + step), after smoothing).
        boundary: the nearest stage boundary (critical point) and its distance from `rise`.
        transition: the nearest stage transition (steepest LLC change inside a stage) and its distance.
    """

    measure: str
    rise: float
    boundary: BoundaryDistance
    transition: BoundaryDistance

    def sentence(self) -> str:
        """One line for a summary or report."""
        def say(name: str, d: BoundaryDistance) -> str:
            if math.isnan(d.boundary):
                return f"no {name}"
            return f"nearest {name} at step {d.boundary:.0f} (rise − it = {d.steps:+.0f} steps, {d.log_ratio:+.2f} in ln step)"
        return (f"{self.measure.replace('_', ' ')} rises most steeply at step {self.rise:.0f}; "
                f"{say('stage boundary', self.boundary)}; {say('LLC transition', self.transition)}")


def formation_timing(stages: Stages, results: pd.DataFrame, measure: str = "induction_score",
                     bandwidth: float = 0.25) -> FormationTiming:
    """Time the formation of a behaviour (default: induction heads) against the stages of an LLC curve.

    Args:
        stages: from `curve_stages` / `detect_stages`.
        results: rows of `load_results` holding `measure` per head and step (`rllc heads` writes them).
        measure: the head score whose best head per checkpoint marks the behaviour.
        bandwidth: smoothing of the score curve, ln-step units.

    Returns:
        FormationTiming.
    """
    d = results[results.measure == measure]
    if d.step.nunique() < 3:
        raise RllcError(f"need {measure} at 3 or more checkpoints to time its rise; run `rllc heads` first")
    best = d.groupby("step").value.max()
    rise = steepest_rise(best.index.to_numpy(float), best.to_numpy(float), bandwidth)
    return FormationTiming(measure, rise, nearest_boundary_distance(stages, rise),
                           nearest_transition_distance(stages, rise))
