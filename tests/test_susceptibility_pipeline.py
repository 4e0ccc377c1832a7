"""The "susceptibility" measure in the one pipeline: from the same chains as the sweep's rLLC, stored once, resumed
exactly, per-token arrays as safetensors beside the store."""

from __future__ import annotations

import shutil
import sqlite3

import numpy as np
import pytest

from rllc._errors import RllcError
from rllc.pipeline import ResultStore, load_results, run_plan, run_task
from rllc.pipeline.data import probe_labels, resolve_data
from rllc.sweep import SweepConfig, plan_sweep
from rllc.sweep.susceptibility import ProbeConfig, plan_susceptibility

FAST = dict(chains=2, draws=4, batch_size=4, init_batches=1)
CFG = SweepConfig(SweepConfig().sampler.replace(**FAST), 16)
PROBES = ProbeConfig(("synthetic.induction", "prose"), n_samples=3)
IND = 4 | 16  # Pattern.INDUCTION | Pattern.REPEAT


def _rows(run_dir):
    with sqlite3.connect(run_dir / "results.sqlite") as con:
        return {r[:5]: r[5:] for r in con.execute(
            "SELECT step, component, data, measure, config_hash, value, std, valid FROM results")}


def test_a_sweep_given_probes_stores_its_rllc_as_the_plain_sweep_does_and_the_probes_from_the_same_draws(
        run_dir, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(run_dir, twin, symlinks=True)
    plain = run_plan(plan_sweep(twin, components="heads", steps="10,40", config=CFG), progress=False)
    plan = plan_sweep(run_dir, components="heads", steps="10,40", config=CFG, probes=PROBES)
    assert {t.family for t in plan.tasks} == {"susceptibility"}
    res = run_plan(plan, progress=False)
    assert res.config_hash == plain.config_hash == CFG.config_hash()  # the rLLC rows carry the sweep's settings
    assert (res.planned, res.computed) == (8, 8)
    got, ref = _rows(run_dir), _rows(twin)
    llc = {k: v for k, v in got.items() if k[3] == "llc"}
    assert set(llc) == set(ref)
    for k, v in ref.items():  # the same chains: the rLLC does not change when probes are observed
        assert llc[k][0] == pytest.approx(v[0], rel=1e-6)
    measures = sorted({k[3] for k in got})
    assert measures == ["contribution:prose", "contribution:synthetic.induction", "llc", "susceptibility:prose",
                        "susceptibility:synthetic.induction"]
    assert len(got) == 2 * 4 * 5
    # Rows are complete: a rerun computes nothing; a plain sweep of the same settings finds its rows stored.
    assert run_plan(plan_sweep(run_dir, components="heads", steps="10,40", config=CFG, probes=PROBES),
                    progress=False).computed == 0
    assert run_plan(plan_sweep(run_dir, components="heads", steps="10,40", config=CFG), progress=False).computed == 0


def test_per_token_arrays_are_the_rows_values_on_the_probes_own_windows(run_dir):
    plan = plan_susceptibility(run_dir, probes=PROBES, components="0:1,1:0", steps="40", config=CFG)
    run_plan(plan, progress=False)
    store = ResultStore(run_dir)
    df = load_results(run_dir)
    chash = plan.tasks[0].config_hash
    row = df[(df.measure == "susceptibility:synthetic.induction") & (df.component == "1:0")].iloc[0]
    assert row.config_hash == chash
    arrays = store.arrays((40, "1:0", "pretrain", "susceptibility:synthetic.induction", chash))
    assert sorted(arrays) == ["chi", "chi_se", "chi_std", "contribution", "tokens"]
    from rllc.train import load_run

    run = load_run(run_dir)
    tokens, _ = resolve_data(run, "synthetic.induction", 3, seed=1, split="val")
    np.testing.assert_array_equal(arrays["tokens"], tokens.numpy())
    n_ctx = run.config.model.n_ctx
    assert arrays["chi"].shape == arrays["contribution"].shape == arrays["chi_std"].shape == (3, n_ctx - 1)
    assert np.all(np.abs(arrays["chi_std"]) <= 1.0)  # a correlation
    assert float(arrays["chi"].mean()) == pytest.approx(row.value, rel=1e-5)
    contrib = df[(df.measure == "contribution:synthetic.induction") & (df.component == "1:0")].value.item()
    assert float(arrays["contribution"].mean()) == pytest.approx(contrib, rel=1e-5)
    # The labels of a synthetic probe line up with the very windows measured.
    labels = probe_labels(run, "synthetic.induction", 3, seed=1, split="val")
    assert labels.shape == (3, n_ctx) and (labels[:, -1] == 0).all() and labels.any()
    # ... position t flags the prediction of token t + 1 (chi[:, t], the loss of tokens[t + 1]): every labelled
    # position's next token is the one that followed an earlier occurrence of its own token.
    tok = tokens.numpy()
    for b, t in zip(*np.nonzero(labels & IND)):
        assert any(tok[b, s] == tok[b, t] and tok[b, s + 1] == tok[b, t + 1] for s in range(t))
    assert probe_labels(run, "prose", 3, seed=1, split="val") is None
    files = list((run_dir / "arrays").rglob("*.safetensors"))
    assert len(files) == 2 * 2 and not list((run_dir / "arrays").rglob(".*tmp*"))


class Killed(Exception):
    pass


def test_an_interrupted_susceptibility_run_resumes_exactly_once(run_dir, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(run_dir, twin, symlinks=True)
    run_plan(plan_susceptibility(twin, probes=PROBES, steps="0,10,40", config=CFG), progress=False)
    expected = _rows(twin)
    calls = []

    def dies_at_the_second_task(task):
        calls.append(task)
        if len(calls) == 2:
            raise Killed
        return run_task(task)

    with pytest.raises(Killed):
        run_plan(plan_susceptibility(run_dir, probes=PROBES, steps="0,10,40", config=CFG), progress=False,
                 task_fn=dies_at_the_second_task)
    assert 0 < len(_rows(run_dir)) < len(expected)
    run_plan(plan_susceptibility(run_dir, probes=PROBES, steps="0,10,40", config=CFG), progress=False)
    assert _rows(run_dir) == expected  # every row once, the values of the uninterrupted run
    assert len(list((run_dir / "arrays").rglob("*.safetensors"))) == 3 * 4 * 2


def test_probe_settings_make_new_rows_and_bad_probes_fail_before_any_work(run_dir):
    a = plan_susceptibility(run_dir, probes=PROBES, steps="40", config=CFG)
    b = plan_susceptibility(run_dir, probes=ProbeConfig(PROBES.specs, n_samples=4), steps="40", config=CFG)
    assert a.tasks[0].config_hash != b.tasks[0].config_hash
    assert a.jobs[0].keys()[0] == b.jobs[0].keys()[0]  # the rLLC row is the sweep's, whatever the probes
    with pytest.raises(RllcError, match="not a probe"):
        ProbeConfig(("model:/x@last",))
    with pytest.raises(RllcError, match="positive"):
        ProbeConfig(("code",), n_samples=0)
    with pytest.raises(RllcError, match="twice"):
        ProbeConfig(("code", "code"))
    with pytest.raises(RllcError, match="unknown"):
        plan_susceptibility(run_dir, probes="nosuchsource", steps="40", config=CFG)
    assert not (run_dir / "results.sqlite").exists() or not load_results(run_dir).size


def test_check_run_and_the_report_section_read_the_stored_susceptibilities(run_dir):
    from rllc.analysis.susceptibility import check_run, head_aucs, type_patterns
    from rllc.pipeline import ResultRow
    from rllc.report.html import write_report
    from rllc.train import load_run

    plan = plan_susceptibility(run_dir, probes=PROBES, steps="10,40", config=CFG)
    run_plan(plan, progress=False)
    # Head types as `rllc heads` stores them (given here: the tiny run is too small to have real types).
    types = {"0:0": "previous-token", "0:1": "multigram", "1:0": "induction", "1:1": "induction"}
    ResultStore(run_dir).put_many([ResultRow(40, c, "repeated", "head_type", "t", 1.0, extra={"family": t})
                                   for c, t in types.items()])
    gt = check_run(run_dir)
    assert (gt.step, gt.data, gt.checkpoints) == (40, "pretrain", 2)
    assert list(gt.aucs.component) == ["0:0", "1:0", "1:1"] and set(gt.aucs.probe) == {"synthetic.induction"}
    run = load_run(run_dir)
    labels = probe_labels(run, "synthetic.induction", 3, seed=1, split="val")
    store, chash = ResultStore(run_dir), plan.tasks[0].config_hash
    chi = {c: store.arrays((40, c, "pretrain", "susceptibility:synthetic.induction", chash))["chi"] for c in types}
    direct = head_aucs(chi, labels, type_patterns(types))
    assert gt.aucs.auc.tolist() == pytest.approx(direct.auc.tolist())
    a = store.arrays((40, "1:0", "pretrain", "susceptibility:synthetic.induction", chash))
    snr = gt.aucs.set_index("component").chi_snr["1:0"]
    assert snr == pytest.approx(float(np.median(np.abs(a["chi"] - a["chi"].mean()) / a["chi_se"])), rel=1e-5)
    std = {c: store.arrays((40, c, "pretrain", "susceptibility:synthetic.induction", chash))["chi_std"] for c in types}
    assert gt.aucs.auc_standardized.tolist() == pytest.approx(head_aucs(std, labels, type_patterns(types)).auc.tolist())
    # Beside each AUC: the head's own mean-ablation effect, the loss at w* alone, and the heads of other types.
    from rllc.analysis.ablation import head_z_means, per_token_ablation_effects, per_token_loss
    from rllc.analysis.susceptibility import control_aucs, token_auc

    model, tokens = run.model_at(40), resolve_data(run, "synthetic.induction", 3, seed=1, split="val")[0]
    means = head_z_means(model, run.sample_tokens("pretrain", 64, seed=0))
    eff = dict(zip(types, per_token_ablation_effects(model, tokens, [(0, 0), (0, 1), (1, 0), (1, 1)],
                                                     means=means).numpy()))
    pats = type_patterns(types)
    assert gt.aucs.auc_ablation.tolist() == pytest.approx(head_aucs(eff, labels, pats, sign=+1.0).auc.tolist())
    loss_auc = token_auc(per_token_loss(model, tokens).numpy(), labels, IND)
    assert gt.aucs.auc_loss.tolist() == pytest.approx([loss_auc] * 3)
    assert list(gt.controls.component) == ["0:1"] and gt.controls.type.tolist() == ["multigram"]
    assert gt.controls.auc.tolist() == pytest.approx(control_aucs(chi, labels, pats, types).auc.tolist())
    assert gt.controls.auc_ablation.tolist() == pytest.approx(
        control_aucs(eff, labels, pats, types, sign=+1.0).auc.tolist())
    assert any("mean-ablation effect" in line and "control heads (other types: 0:1)" in line for line in gt.lines())
    assert gt.ari is not None and -1 <= gt.ari <= 1 and len(gt.clusters) == 4
    assert any("ROC AUC" in line for line in gt.lines())
    page = write_report(run_dir).read_text()
    assert "response to probe data" in page
    assert "Response matrix (heads × probes)" in page and "Ground truth at step 40" in page
    assert page.count("class=attr") == 2 * 4 * 2  # 2 probes × 4 heads × 2 sequences in context
