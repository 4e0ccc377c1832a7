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
    assert any(line.startswith("sampler: SGLD") and "burn_in 30 (paper 0)" in line for line in first.summary)
    for i, title in enumerate(("Differentiation", "Specialisation", "Stages vs induction", "Multigram circuit",
                               "Hessian trace vs LLC"), 1):
        line = next(x for x in first.summary if x.startswith(f"finding {i}. {title}"))
        assert any(v in line for v in ("REPRODUCED", "NOT REPRODUCED", "NOT APPLICABLE")), line
    assert "Findings" in (out / "report.html").read_text()
    again = demo(out, steps=60, progress=False)
    assert any("LLC sweep: 0 estimates computed now" in line for line in again.summary)
    assert len(ResultStore(out).frame()) == len(store)  # nothing duplicated
