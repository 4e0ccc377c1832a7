"""Stage boundaries from curves with known critical points."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from rllc._errors import RllcError
from rllc.analysis.stages import (
    StageConfig,
    curve_stages,
    detect_stages,
    head_stages,
    nearest_boundary_distance,
    steepest_rise,
)

STEPS = np.unique(np.round(np.geomspace(1, 50_000, 120)))
X = np.log1p(STEPS)


def _curve(noise: float, seed: int = 0) -> np.ndarray:
    # Extremes of cos(2π(x − 4)/5) at x = 1.5 (min), 4 (max), 6.5 (min), 9 (max); the slope 0.1·x moves each by
    # asin(0.1·5/(2π))·5/(2π) ≈ 0.063 towards the next maximum's side.
    rng = np.random.default_rng(seed)
    return np.cos(2 * np.pi * (X - 4) / 5) + 0.1 * X + rng.normal(0, noise, len(X))


def _true_extremes() -> list[tuple[float, str]]:
    d = math.asin(0.1 * 5 / (2 * math.pi)) * 5 / (2 * math.pi)
    return [(1.5 - d, "min"), (4 + d, "max"), (6.5 - d, "min"), (9 + d, "max")]


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_detects_known_critical_points(noise):
    s = detect_stages(STEPS, _curve(noise), StageConfig(bandwidth=0.3))
    got = [(math.log1p(c.step), c.kind) for c in s.critical_points]
    want = _true_extremes()
    assert [k for _, k in got] == [k for _, k in want]
    for (gx, _), (wx, _) in zip(got, want):
        assert abs(gx - wx) < 0.15


def test_noise_wiggles_are_merged_away():
    rng = np.random.default_rng(1)
    y = np.tanh(X - 5) + rng.normal(0, 0.02, len(X))  # monotone: no interior boundary
    assert detect_stages(STEPS, y, StageConfig(bandwidth=0.3)).critical_points == ()
    # Without persistence the same noise leaves spurious extremes at a small bandwidth.
    assert len(detect_stages(STEPS, y, StageConfig(bandwidth=0.03, min_change=0.0)).critical_points) > 0


def test_stage_table_trends_and_loss_change():
    s = detect_stages(STEPS, _curve(0.0), StageConfig(bandwidth=0.3))
    t = s.table(loss=(STEPS, 10 / np.sqrt(STEPS)))
    assert list(t.stage) == ["S1", "S2", "S3", "S4", "S5"]
    assert list(t.llc_trend) == ["falling", "rising", "falling", "rising", "falling"]
    assert t.start.iloc[0] == 1 and t.end.iloc[-1] == 50_000
    assert (t.end.iloc[:-1].to_numpy() == t.start.iloc[1:].to_numpy()).all()
    assert (t.loss_change < 0).all()
    assert t.loss_start.iloc[0] == pytest.approx(10.0)


def test_nearest_boundary_and_steepest_rise():
    s = detect_stages(STEPS, _curve(0.0), StageConfig(bandwidth=0.3))
    b = nearest_boundary_distance(s, math.expm1(6.3))
    assert math.log1p(b.boundary) == pytest.approx(6.5 - 0.063, abs=0.15)
    assert b.log_ratio == pytest.approx(6.3 - math.log1p(b.boundary))
    assert math.isnan(nearest_boundary_distance(detect_stages(STEPS, X), 100).boundary)
    rise = steepest_rise(STEPS, 1 / (1 + np.exp(-3 * (X - 7))), bandwidth=0.2)
    assert math.log1p(rise) == pytest.approx(7.0, abs=0.1)


def test_stages_from_stored_curves():
    rows = [dict(run="r", step=s, component=c, data="pretrain", measure="llc", value=v * (1 + i), std=0.0,
                 valid=True, config_hash="h")
            for i, c in enumerate(["all", "0:0", "0:1"]) for s, v in zip(STEPS, _curve(0.0))]
    df = pd.DataFrame(rows)
    assert len(curve_stages(df, config=StageConfig(bandwidth=0.3)).boundaries) == 4
    per_head = head_stages(df, config=StageConfig(bandwidth=0.3))
    assert set(per_head.component) == {"0:0", "0:1"} and len(per_head) == 10
    with pytest.raises(RllcError):
        curve_stages(df, component="1:0")
    with pytest.raises(RllcError):
        StageConfig(bandwidth=0)


def test_comparison_figures_render(tmp_path):
    from rllc.report.comparisons import plot_curve_with_stages, plot_hessian_comparison

    s = detect_stages(STEPS, _curve(0.0), StageConfig(bandwidth=0.3))
    assert plot_curve_with_stages(STEPS, _curve(0.0), s, tmp_path / "stages.png").stat().st_size > 1000
    rows = [dict(run="r", step=int(st), component="all", data=d, measure=m, value=float(v), std=0.1, valid=True,
                 config_hash="h")
            for m, d in (("llc", "pretrain"), ("hessian_trace", "pretrain"), ("fim_trace", "self"))
            for st, v in zip(STEPS[::10], _curve(0.0)[::10])]
    p = plot_hessian_comparison(pd.DataFrame(rows), tmp_path / "hessian.png", stages=s)
    assert p.stat().st_size > 1000


def test_standard_errors_decide_persistence_and_transitions_mark_the_jump():
    # A small early bump (max at x = 3, min at x = 4.5, height ≈ 0.5) and a jump of 40 centred at x = 8: the range
    # rule (5% of 40 = 2) merges the bump away; with standard errors the noise decides.
    y = 0.5 * np.exp(-((X - 3) / 0.5) ** 2) + 0.2 * X + 40 / (1 + np.exp(-(X - 8) / 0.1))
    assert detect_stages(STEPS, y, StageConfig(bandwidth=0.2)).critical_points == ()
    sharp = detect_stages(STEPS, y, StageConfig(bandwidth=0.2), se=np.full(len(X), 0.02))
    assert [c.kind for c in sharp.critical_points] == ["max", "min"]
    assert abs(math.log1p(sharp.critical_points[0].step) - 3) < 0.2
    noisy = detect_stages(STEPS, y, StageConfig(bandwidth=0.2), se=np.full(len(X), 0.5))
    assert noisy.critical_points == ()
    # The jump is no critical point, but it is the transition of the last stage.
    assert abs(math.log1p(sharp.transitions[-1]) - 8) < 0.05
    assert abs(math.log1p(noisy.transitions[-1]) - 8) < 0.05
    col = sharp.table().transition  # S2, the bump's falling side, changes at an even pace: no burst, no transition
    assert col.iloc[-1] == round(sharp.transitions[-1]) and col.isna().iloc[1] and len(sharp.transitions) == 2
    from rllc.analysis.stages import nearest_transition_distance

    d = nearest_transition_distance(noisy, math.expm1(8.1))
    assert d.log_ratio == pytest.approx(0.1, abs=0.05)


def test_stored_curve_uses_one_sampler_setting_and_its_chain_errors():
    rows = []
    for h, scale in (("a", 1.0), ("b", 100.0)):  # a second setting with a different scale, at fewer steps
        for s, v in zip(STEPS[:: (1 if h == "a" else 5)], _curve(0.0)[:: (1 if h == "a" else 5)]):
            rows.append(dict(step=s, component="all", data="pretrain", measure="llc", value=v * scale, std=0.01,
                             valid=True, config_hash=h, extra={"per_chain": [v, v, v, None]}))
    s = curve_stages(pd.DataFrame(rows), config=StageConfig(bandwidth=0.3))
    assert len(s.boundaries) == 4 and max(s.smoothed) < 3  # setting "a" alone, not an average with "b"


def test_formation_timing_against_stages():
    from rllc.analysis.stages import formation_timing

    y = 0.5 * np.exp(-((X - 3) / 0.5) ** 2) + 0.2 * X + 40 / (1 + np.exp(-(X - 8) / 0.1))
    stages = detect_stages(STEPS, y, StageConfig(bandwidth=0.2), se=np.full(len(X), 0.02))
    # an induction score that rises at x = 7.9 in the best of two heads
    rows = [dict(step=s, component=c, measure="induction_score", value=v)
            for s, x in zip(STEPS, X) for c, v in (("1:0", 0.9 / (1 + np.exp(-(x - 7.9) / 0.1))), ("1:1", 0.05))]
    t = formation_timing(stages, pd.DataFrame(rows))
    assert math.log1p(t.rise) == pytest.approx(7.9, abs=0.05)
    assert math.log1p(t.transition.boundary) == pytest.approx(8.0, abs=0.05)
    assert t.transition.log_ratio == pytest.approx(-0.1, abs=0.06)
    assert math.log1p(t.boundary.boundary) == pytest.approx(3.85, abs=0.3)  # the bump's minimum, far away
    assert "induction score rises most steeply at step" in t.sentence()
    with pytest.raises(RllcError):
        formation_timing(stages, pd.DataFrame(rows[:4]))


def _sig(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


@pytest.mark.parametrize("noise", [0.0, 0.02])
@pytest.mark.parametrize("sign", [1, -1])
def test_plateaus_between_rises_are_boundaries(noise, sign):
    # Rises centred at x = 2, 5 and 8.5 (ln step): flat plateaus around x = 3.5 and 6.75 where the slope falls to
    # ~0 without changing sign. The old extremes-only rule found no boundary at all on this curve.
    rng = np.random.default_rng(3)
    y = sign * (_sig((X - 2) / 0.25) + 2 * _sig((X - 5) / 0.25) + 1.5 * _sig((X - 8.5) / 0.25))
    y = y + rng.normal(0, noise, len(X))
    cfg = StageConfig(bandwidth=0.3)
    s = detect_stages(STEPS, y, cfg)
    got = [math.log1p(c.step) for c in s.critical_points]
    assert [c.kind for c in s.critical_points] == ["plateau", "plateau"]
    assert abs(got[0] - 3.5) < cfg.bandwidth and abs(got[1] - 6.75) < cfg.bandwidth
    assert list(s.table().llc_trend) == ["rising"] * 3 if sign > 0 else ["falling"] * 3
    # Off: extremes only, no boundary on a monotone curve.
    assert detect_stages(STEPS, y, StageConfig(bandwidth=0.3, plateau=0)).critical_points == ()


def test_a_slowing_rise_is_no_plateau():
    # The slope halves between two rises but never nears zero: one monotone stage.
    y = X + 0.5 * np.sin(X)  # slope 1 + 0.5 cos x in [0.5, 1.5]
    assert detect_stages(STEPS, y, StageConfig(bandwidth=0.3)).critical_points == ()


def test_invalid_and_negative_estimates_are_listed_and_handled():
    steps = STEPS[::4]
    y = _curve(0.0)[::4] + 1.0
    rows = [dict(run="r", step=s, component="all", data="pretrain", measure="llc", value=float(v), std=0.1,
                 valid=True, config_hash="h", extra={"per_chain": [float(v)] * 4}) for s, v in zip(steps, y)]
    rows[3]["value"], rows[3]["valid"] = -0.5, False  # negative: kept by default
    rows[5]["extra"] = {"per_chain": [1.0, None, 1.0, 1.0]}  # a chain diverged: left out
    rows[5]["valid"] = False
    rows[7]["value"] = None  # no estimate
    df = pd.DataFrame(rows)
    s = curve_stages(df, config=StageConfig(bandwidth=0.3))
    assert s.negative == (int(steps[3]),)
    assert s.excluded == tuple(sorted([(int(steps[5]), "a chain diverged"), (int(steps[7]), "no finite estimate")]))
    line = s.handling()
    assert "1 negative estimate(s) kept" in line and "a chain diverged: steps" in line
    dropped = curve_stages(df, config=StageConfig(bandwidth=0.3), negative="drop")
    assert (int(steps[3]), "negative estimate") in dropped.excluded
    assert s.value_at(steps[3]) < dropped.value_at(steps[3]) - 0.1  # the kept negative value pulls the curve down
    with pytest.raises(RllcError):
        curve_stages(df, negative="clip")


def test_a_slope_dip_within_the_noise_is_no_plateau():
    # A steady rise (slope 1 per ln step) with noise of known standard error, smoothed finely: the smoothed slope
    # dips here and there to under a quarter of its neighbours, but by less than 3 standard errors of the slopes'
    # difference, so no plateau. The old rule (fraction of the slope only) found plateaus in this noise.
    rng = np.random.default_rng(5)
    se = np.full(len(X), 0.3)
    cfg = StageConfig(bandwidth=0.08)
    for seed in range(3):
        y = X + np.random.default_rng(seed).normal(0, 0.3, len(X))
        s = detect_stages(STEPS, y, cfg, se=se)
        assert [c.kind for c in s.critical_points if c.kind == "plateau"] == []
        # the slope's standard error is what the smoother makes of the points' (linear, so exact): vs Monte Carlo
    sims = np.array([detect_stages(STEPS, X + rng.normal(0, 0.3, len(X)), cfg, se=se).slope for _ in range(200)])
    mid = len(s.slope) // 2
    assert np.std(sims[:, mid]) == pytest.approx(s.slope_se[mid], rel=0.15)


def test_real_plateaus_between_rises_survive_the_slope_evidence():
    y = _sig((X - 2) / 0.25) + 2 * _sig((X - 5) / 0.25) + 1.5 * _sig((X - 8.5) / 0.25)
    rng = np.random.default_rng(3)
    s = detect_stages(STEPS, y + rng.normal(0, 0.02, len(X)), StageConfig(bandwidth=0.3), se=np.full(len(X), 0.02))
    assert [round(math.log1p(c.step), 1) for c in s.critical_points if c.kind == "plateau"] == [
        pytest.approx(3.5, abs=0.3), pytest.approx(6.75, abs=0.3)]


def test_a_plateau_after_a_jump_is_resolved_only_when_longer_than_the_smoothing():
    # The demo's shape on the paper's checkpoint schedule: a rise of 12 per ln step, a jump of 24.5 at step 2,400
    # (the induction heads forming), a plateau of length L (ln step), then a rise of 17 per ln step. A plateau
    # boundary is the slope's minimum, i.e. the plateau's middle, so it lies about L/2 after the jump; the
    # smoothing must be finer than the plateau to see it. Noiseless, so only the bandwidth decides.
    from rllc.train.config import checkpoint_schedule

    steps = np.array(checkpoint_schedule(50_000), dtype=float)
    x, jump = np.log1p(steps), math.log1p(2400)

    def plateaus(length: float, bandwidth: float) -> list[float]:
        y = 16 + 12 * np.minimum(x - jump, 0) + 24.5 * _sig((x - jump) / 0.015) + \
            17 * np.maximum(x - (jump + 0.04 + length), 0)
        s = detect_stages(steps, y, StageConfig(bandwidth=bandwidth), se=np.full(len(x), 1e-3))
        return [math.log1p(c.step) - jump for c in s.critical_points if c.kind == "plateau"]

    middle = 0.04 + 1.0 / 2
    assert [pytest.approx(middle, abs=0.25)] == plateaus(1.0, 0.25)  # within one bandwidth of the middle
    assert plateaus(0.3, 0.25) == []  # shorter than the smoothing: one stage
    assert [pytest.approx(0.04 + 0.3 / 2, abs=0.05)] == plateaus(0.3, 0.05)


def _behaviour_rows() -> pd.DataFrame:
    # Known answers: the previous-token score of 0:3 rises around step 300, the induction score of 1:3 (and, less,
    # of 1:2) around 2,500 while the model's ICL score falls; 1:0's induction score drifts by 5% of the range only.
    steps = np.array([0, 100, 200, 400, 600, 800, 1000, 1500, 2000, 2300, 2500, 2700, 3000, 4000, 6000, 10_000])
    x = np.log1p(steps)
    curves = {("prev_token_score", "0:3"): 0.1 + 0.8 * _sig((x - math.log(300)) / 0.1),
              ("induction_score", "1:3"): 0.05 + 0.9 * _sig((x - math.log(2500)) / 0.05),
              ("induction_score", "1:2"): 0.05 + 0.4 * _sig((x - math.log(2500)) / 0.05),
              ("induction_score", "1:0"): 0.05 + 0.045 * x / x[-1],
              ("icl_score", "all"): -0.1 - 1.0 * _sig((x - math.log(2500)) / 0.05),
              ("icl_score", "1:3"): np.zeros(len(x))}  # the model with 1:3 ablated: not a behaviour of the stage
    return pd.DataFrame([dict(step=int(s), component=c, data="pretrain", measure=m, value=float(v), config_hash="a")
                         for (m, c), ys in curves.items() for s, v in zip(steps, ys)])


def test_stage_table_says_what_rises_and_what_falls():
    from rllc.analysis.stages import behaviour_changes

    changes = behaviour_changes(_behaviour_rows(), [0, 1500, 4000, 10_000])
    assert [str(c) for c in changes[0].rises] == ["previous-token 0:3 0.10→0.90"]
    assert changes[0].falls == ()
    assert [(c.measure, c.component) for c in changes[1].rises] == [("induction_score", "1:3"),
                                                                    ("induction_score", "1:2")]
    assert changes[1].rises[0].start == pytest.approx(0.05, abs=1e-3)
    assert changes[1].rises[0].end == pytest.approx(0.95, abs=1e-3)
    assert [str(c) for c in changes[1].falls] == ["ICL score -0.10→-1.10"]
    assert changes[2].rises == () and changes[2].falls == ()
    # at most `most` heads per measure, the largest change first; a stricter threshold drops the smaller rise
    assert [c.component for c in behaviour_changes(_behaviour_rows(), [0, 1500, 4000, 10_000], most=1)[1].rises] \
        == ["1:3"]
    assert [c.component for c in behaviour_changes(_behaviour_rows(), [0, 1500, 4000, 10_000],
                                                   min_change=0.5)[1].rises] == ["1:3"]
    # the same in the stage table, beside the LLC's and the loss's change
    s = detect_stages(STEPS, _sig((X - math.log(300)) / 0.1) + 2 * _sig((X - math.log(2500)) / 0.1),
                      StageConfig(bandwidth=0.3))
    assert [c.kind for c in s.critical_points] == ["plateau"]  # between the two rises
    t = s.table(loss=(STEPS, 10 / np.sqrt(STEPS)), behaviour=_behaviour_rows())
    assert {"llc_change", "loss_change", "rises", "falls"} <= set(t.columns)
    assert (t.loss_change < 0).all() and t.llc_change.iloc[:2].gt(0).all()
    assert t.rises.iloc[0] == "previous-token 0:3 0.10→0.90" and t.falls.iloc[0] == ""
    assert t.rises.iloc[1].startswith("induction 1:3 0.05→0.95, induction 1:2") and t.falls.iloc[1].startswith("ICL")
    with pytest.raises(RllcError):
        behaviour_changes(_behaviour_rows(), [0, 10_000], min_change=0)
