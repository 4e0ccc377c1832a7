"""`rllc demo` end to end on a short run, and its resume (slow: about 3 minutes on 2 cores)."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_demo_end_to_end_then_resumes_without_recomputing(tmp_path):
    from rllc.pipeline.store import ResultStore
    from rllc.workflows import demo

    out = tmp_path / "demo"
    first = demo(out, steps=60, progress=False)
    assert (out / "report.html").stat().st_size > 10_000 and (out / "loss_curve.png").exists()
    assert len(list((out / "plots").glob("*.png"))) == 3
    store = ResultStore(out).frame()
    llc = store[store.measure == "llc"]
    from rllc.pipeline.steps import select_steps, spaced_steps
    from rllc.sweep import DEMO_SWEEP
    from rllc.train import load_run

    avail = load_run(out).steps
    full = {*spaced_steps(avail, DEMO_SWEEP["full_gap"]), *select_steps(DEMO_SWEEP["steps"], avail)}
    assert set(llc[llc.component == "all"].step) == full and len(full) < len(avail)  # thinned, heads' steps kept
    assert set(llc[llc.component != "all"].data) == {"pretrain", "code", "synthetic.repeat", "prose"}
    assert (store.measure == "hessian_trace").any()
    assert any(line.startswith("stages of the full-model LLC: boundaries at") for line in first.summary)
    assert any("induction score rises most steeply at step" in line for line in first.summary)
    assert any(line.startswith("sampler: SGLD") and "burn_in 50 (paper 0)" in line for line in first.summary)
    for i, title in enumerate(("Differentiation", "Specialisation", "Stages vs induction", "Multigram circuit",
                               "Hessian trace vs LLC"), 1):
        line = next(x for x in first.summary if x.startswith(f"finding {i}. {title}"))
        assert any(v in line for v in ("REPRODUCED", "NOT REPRODUCED", "NOT APPLICABLE")), line
    assert "Findings" in (out / "report.html").read_text()
    assert any(line.startswith("susceptibility ground truth at step") for line in first.summary)
    assert "Response matrix (heads × probes)" in (out / "report.html").read_text()
    again = demo(out, steps=60, progress=False)
    assert any("LLC sweep: 0 estimates computed now" in line for line in again.summary)
    assert len(ResultStore(out).frame()) == len(store)  # nothing duplicated


def test_demo_pipeline_on_a_tiny_run(tiny_run, tiny_text, tmp_path, monkeypatch):
    """Every demo stage after training (sweep, specialisation, Hessian trace, heads, stages, report, findings) on
    the tiny run with a cheap sampler: the wiring, not the numbers."""
    import shutil

    import rllc.sweep.sweep as sweep_mod
    import rllc.workflows as wf
    from tests.conftest import tiny_configs

    out = tmp_path / "demo"
    shutil.copytree(tiny_run.path, out)
    monkeypatch.setattr(wf, "preset_configs", lambda *a, **k: tiny_configs(tiny_text))
    monkeypatch.setitem(sweep_mod.DEMO_SWEEP, "draws", 3)
    monkeypatch.setitem(sweep_mod.DEMO_SWEEP, "chains", 2)
    monkeypatch.setitem(sweep_mod.DEMO_SWEEP, "n_samples", 16)
    monkeypatch.setitem(sweep_mod.DEMO_SWEEP, "steps", "log:3")
    monkeypatch.setattr(wf, "DEMO_SAMPLER", {"burn_in": 2})
    monkeypatch.setattr(wf, "DEMO_HESSIAN", {"n_samples": 4, "n_probes": 2, "batch_size": 4})
    res = wf.demo(out, progress=False)
    from rllc.pipeline.store import ResultStore

    store = ResultStore(out).frame()
    llc = store[store.measure == "llc"]
    assert {"pretrain", "code", "synthetic.repeat", "prose"} <= set(llc.data)
    assert (store.measure == "hessian_trace").any()
    assert any(line.startswith("sampler: SGLD") and "burn_in 2 (paper 0)" in line for line in res.summary)
    assert any(line.startswith(f"rerun at the paper's sampler: rllc sweep {out} ") and "--n-samples 16" in line
               for line in res.summary)
    for i, title in enumerate(("Differentiation", "Specialisation", "Stages vs induction", "Multigram circuit",
                               "Hessian trace vs LLC"), 1):
        line = next(x for x in res.summary if x.startswith(f"finding {i}. {title}"))
        assert any(v in line for v in ("REPRODUCED", "NOT REPRODUCED", "NOT APPLICABLE")), line
    assert "Findings" in (out / "report.html").read_text()
    # The heads' pre-training sweep observed the demo's probes: susceptibilities from the same chains, drawn.
    sus = store[store.measure.str.startswith("susceptibility:")]
    assert set(sus.measure) == {f"susceptibility:{p}" for p in sweep_mod.DEMO_PROBES.split(",")}
    assert set(sus.data) == {"pretrain"} and sus.component.str.contains(":").all()
    assert "Response matrix (heads × probes)" in (out / "report.html").read_text()


def test_sampler_check_steps_before_at_and_after_the_induction_rise():
    from rllc.workflows import sampler_check_steps

    demo_heads = [0, 10, 20, 40, 60, 100, 220, 480, 720, 1080, 2300, 5000]  # the demo's log:12 head checkpoints
    assert sampler_check_steps(demo_heads) == [480, 2300, 5000]
    assert sampler_check_steps([0, 5, 10]) == [0, 5, 10]
    assert sampler_check_steps([0, 100]) == [0, 100]  # fewer checkpoints than 3: each once


def test_multigram_steps_are_log_spaced_from_the_first_step():
    from rllc.workflows import multigram_steps

    assert multigram_steps(list(range(0, 1001, 10)), 10, 100) == [100, 130, 170, 220, 280, 360, 460, 600, 770, 1000]
    assert multigram_steps([0, 10, 20, 40], 3, 100) == [40]  # a run shorter than the first step: its last


def test_dyck_demo_on_a_tiny_run(tiny_text, tmp_path, monkeypatch):
    """`rllc demo --preset dyck` on a tiny 2-layer run and its 1-layer reference with a cheap sampler: both models
    trained with one tokenizer, the layer-0 heads' wrLLC and model-as-generator wdrLLC and the Dyck path patching
    at every chosen checkpoint stored, the multigram finding printed with its three parts."""
    import rllc.sweep.sweep as sweep_mod
    import rllc.workflows as wf
    from rllc.pipeline.store import ResultStore
    from rllc.train import load_run
    from tests.conftest import tiny_configs

    def configs(name, *, steps=None, seed=0, n_layers=None):
        assert name == "cpu-dyck"
        kw = {} if n_layers is None else {"n_layers": n_layers}
        return tiny_configs(tiny_text, data=f"{tiny_text}*0.5,synthetic.dyck*0.5", seed=seed, **kw)

    monkeypatch.setattr(wf, "preset_configs", configs)
    monkeypatch.setattr(wf, "MULTIGRAM_CHECKPOINTS", 3)
    monkeypatch.setattr(wf, "MULTIGRAM_FIRST_STEP", 10)
    monkeypatch.setattr(wf, "DEMO_SAMPLER", {"burn_in": 2})
    for k, v in (("draws", 3), ("chains", 2), ("n_samples", 16)):
        monkeypatch.setitem(sweep_mod.DEMO_SWEEP, k, v)
    out = tmp_path / "dyck"
    res = wf.demo(out, preset="dyck", progress=False)
    ref = load_run(tmp_path / "dyck-ref1")
    assert ref.config.model.n_layers == 1 and ref.config.tokenizer_id == load_run(out).config.tokenizer_id
    store = ResultStore(out).frame()
    llc = store[store.measure == "llc"]
    layer0 = {f"0:{h}" for h in range(ref.config.model.n_heads)}
    assert set(llc.component) == layer0 and sorted(llc.step.unique()) == [10, 20, 40]
    assert {d.split("@")[0] for d in llc.data} == {"pretrain", f"model:{(tmp_path / 'dyck-ref1').absolute()}"}
    patch = store[store.measure == "path_patching_nested"]
    assert sorted(patch.step.unique()) == [10, 20, 40] and patch["std"].notna().all()
    line = next(x for x in res.summary if x.startswith("finding: Multigram circuit (§4.3): "))
    assert "(a) layer-1 heads:" in line or "(a) no layer-1 head is typed Dyck" in line
    assert (out / "report.html").exists()
    again = wf.demo(out, preset="dyck", progress=False)
    assert any("LLC sweep: 0 estimates computed now" in x for x in again.summary)
