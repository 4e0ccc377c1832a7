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
    n_ckpt = len(list((out / "checkpoints").glob("step_*.json")))
    assert (llc.component == "all").sum() == n_ckpt  # the full-model LLC at every checkpoint
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
