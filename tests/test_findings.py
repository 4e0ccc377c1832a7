"""The paper's findings on hand-made results with known verdicts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from rllc.analysis.findings import (
    differentiation,
    hessian_vs_llc,
    multigram_circuit,
    sampler_bias,
    sampler_description,
    specialisation,
    stages_vs_induction,
)


def _llc_rows(values: dict[tuple[str, str], float], step: int = 100, h: str = "h") -> list[dict]:
    return [dict(step=step, component=c, data=d, measure="llc", value=v, std=0.1, valid=True, config_hash=h)
            for (c, d), v in values.items()]


def test_differentiation_verdict_follows_the_agreement():
    types = {"0:0": "previous-token", "0:1": "n-gram", "1:0": "induction", "1:1": "induction"}
    good = differentiation({0: {"0:0": 0, "0:1": 1}, 1: {"1:0": 0, "1:1": 0}}, types)
    assert good.verdict == "reproduced" and "ARI 1.00" in good.evidence
    bad = differentiation({0: {"0:0": 0, "0:1": 0}, 1: {"1:0": 0, "1:1": 1}}, types)
    assert bad.verdict == "not reproduced"
    assert differentiation({}, types).verdict == "not applicable"


def test_specialisation_compares_rich_and_poor_data():
    types = {"1:0": "induction", "1:1": "n-gram"}
    v = {("1:0", "pretrain"): 2.0, ("1:0", "synthetic.repeat"): 2.6, ("1:0", "prose"): 1.2,
         ("1:1", "pretrain"): 3.0, ("1:1", "synthetic.repeat"): 2.4, ("1:1", "prose"): 3.3}
    f = specialisation(pd.DataFrame(_llc_rows(v)), types)
    assert f.verdict == "reproduced" and "synthetic.repeat 1.30" in f.evidence
    v[("1:0", "synthetic.repeat")] = 1.8  # the induction head falls on repeats: the opposite of the paper
    assert specialisation(pd.DataFrame(_llc_rows(v)), types).verdict == "not reproduced"
    assert specialisation(pd.DataFrame(_llc_rows(v)), {"1:1": "n-gram"}).verdict == "not applicable"


def test_stage_finding_needs_boundaries_on_both_sides_within_an_interval():
    from rllc.analysis.stages import StageConfig, detect_stages

    steps = np.unique(np.round(np.geomspace(1, 5000, 80)))
    x = np.log1p(steps)
    # Extremes near x = 1.44 (min), 4.06 (max), 6.44 (min) and 8.5 (max): see tests/test_stages.py.
    stages = detect_stages(steps, np.cos(2 * np.pi * (x - 4) / 5) + 0.1 * x, StageConfig(bandwidth=0.3))
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731

    def induction(at: float) -> pd.DataFrame:
        return pd.DataFrame([dict(step=s, component="1:0", measure="induction_score", value=float(sig((xx - at) / 0.1)))
                             for s, xx in zip(steps, x)])

    f = stages_vs_induction(stages, induction(4.06), steps)  # forms at the maximum, boundaries either side
    assert f.verdict == "reproduced", f.evidence
    assert f.evidence.endswith("estimates in the LLC curve: every estimate finite and non-negative")  # item 8
    far = stages_vs_induction(stages, induction(5.3), steps)  # forms between boundaries, far from both
    assert far.verdict == "not reproduced" and "criterion" in far.evidence
    assert stages_vs_induction(None, induction(4.06), steps).verdict == "not applicable"


def test_multigram_circuit_not_applicable_without_dyck_data():
    f = multigram_circuit(pd.DataFrame(columns=["step", "component", "measure", "value"]), {}, "prose*0.5,code*0.5")
    assert f.verdict == "not applicable" and "no nested-bracket" in f.evidence


def test_hessian_vs_llc_rank_correlation():
    steps = [10, 100, 400, 1000, 3000, 5000]
    llc = pd.DataFrame(_llc_rows({("all", "pretrain"): 0}, step=0)[:0] +
                       [dict(step=s, component="all", data="pretrain", measure="llc", value=float(i), std=0.1,
                             valid=True, config_hash="h") for i, s in enumerate(steps)])
    same = pd.DataFrame([dict(step=s, component="all", data="pretrain", measure="hessian_trace", value=float(i) * 3)
                         for i, s in enumerate(steps)])
    assert hessian_vs_llc(same, llc).verdict == "not reproduced"
    other = same.assign(value=[5.0, 1.0, 4.0, 2.0, 6.0, 0.0])
    f = hessian_vs_llc(other, llc)
    assert f.verdict == "reproduced" and "Spearman" in f.evidence
    assert hessian_vs_llc(same.iloc[:2], llc).verdict == "not applicable"


def test_sampler_bias_against_stored_paper_settings():
    paper = {"sampler": {"epsilon": 1e-3, "nbeta": 30.0, "gamma": 200.0, "chains": 4, "draws": 200, "burn_in": 0,
                         "batch_size": 32}, "n_samples": 512}
    demo = {"sampler": {**paper["sampler"], "draws": 20, "burn_in": 30, "batch_size": 8, "paired": True},
            "n_samples": 512}
    rows = _llc_rows({("0:0", "pretrain"): 2.0, ("all", "pretrain"): 40.0}, h="demo") + \
        _llc_rows({("0:0", "pretrain"): 2.2, ("all", "pretrain"): 40.0}, h="paper")
    b = sampler_bias(pd.DataFrame(rows), {"demo": demo, "paper": paper}, "demo")
    assert len(b) == 2 and b.set_index("component").ratio["0:0"] == pytest.approx(2.0 / 2.2)
    assert sampler_bias(pd.DataFrame(rows), {"demo": demo}, "demo").empty
    # A paired paper-settings reference is preferred to an unpaired one (whose 16-batch L(w*) error every chain of
    # a checkpoint shares), not averaged with it.
    paired = {"sampler": {**paper["sampler"], "paired": True}, "n_samples": 512}
    both = rows + _llc_rows({("0:0", "pretrain"): 1.9, ("all", "pretrain"): 40.0}, h="paired")
    b2 = sampler_bias(pd.DataFrame(both), {"demo": demo, "paper": paper, "paired": paired}, "demo")
    assert b2.set_index("component").ratio["0:0"] == pytest.approx(2.0 / 1.9)
    line = sampler_description(demo)
    assert "draws 20 (paper 200)" in line and "burn_in 30 (paper 0)" in line and "paired" in line


def test_evaluate_run_on_a_tiny_run(tiny_run, tmp_path):
    import shutil

    from rllc.analysis.findings import evaluate_run
    from rllc.pipeline.store import ResultRow, ResultStore

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run.path, run_dir)
    ResultStore(run_dir).put_many([ResultRow(s, "all", "pretrain", "llc", "h", 1.0 + 0.01 * s, 0.1)
                                   for s in tiny_run.steps])
    found = evaluate_run(run_dir)
    assert [f.verdict for f in found.findings][0] == "not applicable"  # no head curves, no types
    assert found.lines()[0].startswith("sampler:") and "not measured" in found.bias_line


def test_stage_finding_says_why_a_monotone_jump_has_no_boundary():
    from rllc.analysis.stages import StageConfig, detect_stages

    # A slow rise, a jump of 25 at x = 7.8 within a checkpoint interval, a slower rise after it to the last
    # checkpoint (the demo's full-model LLC in shape): no plateau on either side, and the evidence says where the
    # flattest slope is on each side and that nothing steeper lies beyond it.
    steps = np.unique(np.concatenate([np.round(np.geomspace(1, 2000, 60)), np.arange(2000, 5001, 100)]))
    x = np.log1p(steps)
    y = 6 + 1.5 * x + 12.5 * (1 + np.tanh((x - 7.8) / 0.02)) + 15 * np.clip(x - 7.85, 0, None)
    st = detect_stages(steps, y, StageConfig(), se=np.full(len(x), 0.3))
    assert st.boundaries == ()
    rows = pd.DataFrame([dict(step=s, component="1:0", measure="induction_score",
                              value=float(0.45 * (1 + np.tanh((xx - 7.78) / 0.04)))) for s, xx in zip(steps, x)])
    f = stages_vs_induction(st, rows, steps)
    assert f.verdict == "not reproduced"
    assert "flattest before it" in f.evidence and "none steeper farther out" in f.evidence


def _patching(step: int, nested: float, unnested: float, se: float = 0.02,
              singles: dict[str, float] | None = None) -> list[dict]:
    rows = [dict(step=step, component="layer0->1:1", measure="path_patching_nested", value=nested, std=se),
            dict(step=step, component="layer0->1:1", measure="path_patching_unnested", value=unnested, std=se)]
    return rows + [dict(step=step, component=f"{s}->1:1", measure="path_patching_nested", value=v, std=se)
                   for s, v in (singles or {}).items()]


TYPES = {"0:0": "previous-token", "0:1": "n-gram", "1:0": "induction", "1:1": "dyck"}
DYCK_MIX = "prose*0.5,synthetic.dyck*0.5"


def test_multigram_circuit_needs_a_dyck_head_fed_by_layer0_multigram_heads():
    strong = pd.DataFrame(_patching(5, 0.4, 0.1, singles={"0:1": 0.3, "0:0": 0.05}) + [
        dict(step=5, component="0:1->1:1", measure="k_composition", value=0.41, std=None),
        dict(step=5, component="random", measure="k_composition", value=0.12, std=0.01)])
    f = multigram_circuit(strong, TYPES, DYCK_MIX)
    assert f.verdict == "reproduced", f.evidence
    assert "K-composition 0:1 → 1:1 0.410 (random baseline 0.120 ± 0.010)" in f.evidence
    assert "+10.6 s.e." in f.evidence and "0:1 (n-gram) +0.300" in f.evidence and "not measured" in f.evidence
    # nested barely above unnested: 1.8 s.e. < 2
    assert multigram_circuit(pd.DataFrame(_patching(5, 0.15, 0.1, singles={"0:1": 0.3})), TYPES,
                             DYCK_MIX).verdict == "not reproduced"
    # the strongest sender is the previous-token head, not a multigram head
    prev = pd.DataFrame(_patching(5, 0.4, 0.1, singles={"0:1": 0.05, "0:0": 0.3}))
    assert multigram_circuit(prev, TYPES, DYCK_MIX).verdict == "not reproduced"
    no_dyck = multigram_circuit(strong, {**TYPES, "1:1": "n-gram"}, DYCK_MIX)
    assert no_dyck.verdict == "not reproduced" and "(a) no layer-1 head is typed Dyck" in no_dyck.evidence


def _gen_llc(steps, wr: float, gen_before: float, gen_after: float, onset: int, std: float = 0.1) -> pd.DataFrame:
    rows = []
    for s in steps:
        for data, v in (("pretrain", wr), ("model:/ref@1000", gen_before if s < onset else gen_after)):
            rows.append(dict(step=s, component="0:1", data=data, measure="llc", value=v, std=std, valid=True,
                             config_hash="h", extra={"per_chain": [v] * 4}))
    return pd.DataFrame(rows)


def test_generator_divergence_splits_the_ratio_at_the_circuit_onset():
    from rllc.analysis.findings import circuit_onset, generator_divergence

    steps = [100, 200, 400, 800, 1600]
    patch = pd.DataFrame(sum((_patching(s, n, 0.1) for s, n in zip(steps, [0.0, 0.05, 0.3, 0.5, 0.5])), []))
    assert circuit_onset(patch, "1:1") == 400  # the first step at half the largest increase (0.25)
    assert circuit_onset(patch[patch.step <= 200], "1:1") is None  # fewer than 3 steps
    div = generator_divergence(_gen_llc(steps, 2.0, 2.0, 1.5, 400), ["0:1"], 400)
    se_after = 0.75 * math.hypot(0.05 / 1.5, 0.05 / 2.0)  # ratio × relative errors (std 0.1 / √4 chains)
    assert div.ratio[100] == (pytest.approx(1.0), pytest.approx(math.hypot(0.025, 0.025)))
    assert div.before[0] == pytest.approx(1.0) and div.after[0] == pytest.approx(0.75)
    assert div.after[1] == pytest.approx(se_after / math.sqrt(3))
    assert div.before[1] == pytest.approx(math.hypot(0.025, 0.025) / math.sqrt(2))
    assert div.z < -2
    # an unresolved wrLLC (below 3 s.e.) is left out of the ratio
    assert generator_divergence(_gen_llc(steps, 0.1, 2.0, 1.5, 400), ["0:1"], 400).ratio == {}
    assert generator_divergence(_gen_llc(steps, 2.0, 2.0, 1.5, 400).query("data == 'pretrain'"), ["0:1"],
                                400) is None
    # with the generator part measured, the verdict needs the ratio to move at the onset
    results = pd.concat([patch[patch.step < 1600], pd.DataFrame(_patching(1600, 0.5, 0.1, singles={"0:1": 0.3}))])
    moved = multigram_circuit(results, TYPES, DYCK_MIX, _gen_llc(steps, 2.0, 2.0, 1.5, 400))
    assert moved.verdict == "reproduced" and "circuit onset step 400" in moved.evidence, moved.evidence
    flat = multigram_circuit(results, TYPES, DYCK_MIX, _gen_llc(steps, 2.0, 2.0, 2.0, 400))
    assert flat.verdict == "not reproduced" and "+0.0 s.e." in flat.evidence


def test_multigram_circuit_tests_the_most_dyck_of_several_dyck_heads():
    # 1:1 passes (b), 1:2 does not; the receiver is chosen by its Dyck share before the patching is read.
    rows = _patching(5, 0.4, 0.1, singles={"0:1": 0.3}) + [
        dict(step=5, component="layer0->1:2", measure="path_patching_nested", value=0.1, std=0.02),
        dict(step=5, component="layer0->1:2", measure="path_patching_unnested", value=0.3, std=0.02),
        dict(step=5, component="0:1->1:2", measure="path_patching_nested", value=0.05, std=0.02)]
    types = {**TYPES, "1:2": "dyck"}

    def share(a: float, b: float) -> pd.DataFrame:
        return pd.DataFrame([dict(step=5, component="1:1", measure="tic_frac_dyck", value=a, std=None),
                             dict(step=5, component="1:2", measure="tic_frac_dyck", value=b, std=None)])

    first = multigram_circuit(pd.concat([pd.DataFrame(rows), share(0.6, 0.3)]), types, DYCK_MIX)
    assert first.verdict == "reproduced" and "largest Dyck share: 1:1" in first.evidence
    second = multigram_circuit(pd.concat([pd.DataFrame(rows), share(0.3, 0.6)]), types, DYCK_MIX)
    assert second.verdict == "not reproduced" and "largest Dyck share: 1:2" in second.evidence


def test_generator_ratio_is_evidence_only_without_a_layer0_multigram_head():
    steps = [100, 200, 400, 800, 1600]
    patch = pd.DataFrame(sum((_patching(s, n, 0.1, singles={"0:1": 0.3}) for s, n in
                              zip(steps, [0.0, 0.05, 0.3, 0.5, 0.5])), []))
    f = multigram_circuit(patch, {**TYPES, "0:1": "current-token"}, DYCK_MIX, _gen_llc(steps, 2.0, 2.0, 1.5, 400))
    assert f.verdict == "not reproduced"
    assert "(c) no layer-0 head is typed multigram; evidence only, model-as-generator wdrLLC / wrLLC of layer-0 " \
           "heads 0:1" in f.evidence and "(-" in f.evidence
