"""The pipeline every measure over checkpoints runs through: data keys by what they resolve to, exactly-once after
an interruption for every measure family, a new measure computed on runs analysed before it existed, and the plan
and its measured cost announced before the work starts."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rllc._errors import RllcError
from rllc.analysis.hessian import HessianConfig, RankConfig
from rllc.analysis.hessian_sweep import HessianSweepConfig, plan_hessian
from rllc.analysis.over_training import HeadAnalysisConfig, analyze_heads, plan_heads
from rllc.analysis.token_contexts import TokensInContextConfig
from rllc.pipeline import MEASURES, Measure, ResultRow, data_key, plan_family, run_plan, run_task, select_steps
from rllc.sweep import SweepConfig, plan_sweep, run_sweep
from rllc.sweep.susceptibility import ProbeConfig, plan_susceptibility

FAST = dict(chains=2, draws=4, batch_size=4, init_batches=1)
LLC = SweepConfig(SweepConfig().sampler.replace(**FAST), 16)
HEADS = HeadAnalysisConfig(n_text=8, n_repeated=4, composition_baseline_samples=20, patching_n=8,
                           tic=TokensInContextConfig(n_samples=16, top_k=10))
HESSIAN = HessianSweepConfig(trace=HessianConfig(n_samples=4, n_probes=2, batch_size=4),
                             fim=HessianConfig(n_samples=2, n_probes=2, batch_size=2),
                             rank=RankConfig(degree=10, n_probes=2, n_samples=4, batch_size=4, range=(-50.0, 50.0),
                                             threshold=1.0))


def _rows(run_dir: Path) -> dict[tuple, tuple]:
    with sqlite3.connect(run_dir / "results.sqlite") as con:
        return {r[:5]: r[5:] for r in con.execute(
            "SELECT step, component, data, measure, config_hash, value, std, valid FROM results")}


def _every_family(run_dir: Path):
    """One plan with every registered family: LLC (heads and full model), the head analysis, three Hessians,
    susceptibilities."""
    plan = plan_sweep(run_dir, components="0:0,1:1,all", data="pretrain", steps="0,40", config=LLC)
    plan = plan + plan_heads(run_dir, "0,40", config=HEADS)
    for m in ("trace", "fim", "rank"):
        plan = plan + plan_hessian(run_dir, measure=m, components="0:1,all", steps="40", config=HESSIAN)
    plan = plan + plan_susceptibility(run_dir, probes=ProbeConfig(("synthetic.induction",), n_samples=2),
                                      components="1:0", steps="0,40", config=LLC)
    assert {t.family for t in plan.tasks} == set(MEASURES)
    return plan


# ------------------------------------------------------------------------------------------------ steps, data keys


def test_one_select_steps_for_every_command():
    import rllc.analysis
    import rllc.sweep

    assert rllc.sweep.select_steps is select_steps and not hasattr(rllc.analysis, "select_steps")
    avail = [0, 10, 20, 30, 40]
    assert select_steps("log:3", avail) == [0, 10, 40]  # the heads' default (log:16) uses this same rule


def test_spaced_steps_thins_the_dense_stretches_and_keeps_the_sparse_one():
    import math

    from rllc.pipeline.steps import spaced_steps
    from rllc.train.config import checkpoint_schedule

    assert spaced_steps([0, 10, 11, 12, 30, 31], 0.2) == [0, 10, 30, 31]  # walking up; the last always kept
    assert spaced_steps([5, 0, 5, 1], 0) == [0, 1, 5]
    avail = checkpoint_schedule(5000)  # the demo's 107 checkpoints: every 20 steps to 1,000, 40 to 2,000, 100 after
    assert len(avail) == 107
    kept = spaced_steps(avail, 0.035)
    assert len(kept) == 75 and kept[0] == 0 and kept[-1] == 5000
    gaps = [math.log1p(b) - math.log1p(a) for a, b in zip(kept, kept[1:])]
    assert min(gaps[:-1]) >= 0.035 * (1 - 1e-9)  # all but the last step, kept whatever its gap
    assert set(range(2100, 3000, 100)) <= set(kept)  # the induction rise (2,300-2,500) and after it: every one
    assert {500, 520, 540, 560, 580} <= set(kept) and 600 not in kept  # from ~550 the 20-step stretch thins
    with pytest.raises(RllcError, match="min_gap"):
        spaced_steps(avail, -1)


def test_data_keys_are_what_the_spec_resolves_to(run_dir, tiny_text, tmp_path, monkeypatch):
    from rllc.train import load_run

    run = load_run(run_dir)
    monkeypatch.chdir(run_dir.parent)
    rel = f"model:{run_dir.name}@last"
    assert data_key(run, rel) == data_key(run, f"model:{run_dir}@40") == data_key(run, f"model:./{run_dir.name}/@40")
    assert data_key(run, rel).key == f"model:{run_dir.resolve()}@40"
    assert data_key(run, "pretrain").key == "pretrain" and data_key(run, "code").key == "code"

    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_text, corpus)
    monkeypatch.chdir(tmp_path)
    k = data_key(run, "corpus")
    assert k == data_key(run, str(corpus)) == data_key(run, f"{corpus}/") and k.spec == str(corpus.resolve())
    assert k.key.startswith(f"{corpus.resolve()}#")
    assert data_key(run, "corpus*1,code*1").key == data_key(run, f"{corpus}*0.5,code*0.5").key
    (corpus / "doc00.txt").write_text("other words entirely")  # same place, new content: a new key
    assert data_key(run, "corpus").key != k.key
    with pytest.raises(RllcError, match="no checkpoint at step 7"):
        data_key(run, f"model:{run_dir}@7")


def test_two_spellings_of_one_reference_compute_once(run_dir, monkeypatch):
    monkeypatch.chdir(run_dir.parent)
    kw = dict(components="1:0", steps="40", progress=False, n_samples=16, **FAST)
    first = run_sweep(run_dir, data=f"model:{run_dir.name}@last", **kw)
    again = run_sweep(run_dir, data=f"model:{run_dir}@40", **kw)
    assert (first.computed, again.computed, again.skipped) == (1, 0, 1)
    (key,) = _rows(run_dir)
    assert key[2] == f"model:{run_dir.resolve()}@40"


# ------------------------------------------------------------------------------------------------ exactly once


class Killed(Exception):
    pass


def test_interrupted_run_of_every_measure_resumes_exactly_once(run_dir, tmp_path):
    """A run of every family stopped mid-way (the task in flight is lost, as with kill -9) and run again stores
    every row once, with the values of an uninterrupted run."""
    twin = tmp_path / "twin"
    shutil.copytree(run_dir, twin, symlinks=True)
    reference = run_plan(_every_family(twin), progress=False)
    expected = _rows(twin)
    assert reference.rows == len(expected) and reference.computed == reference.planned

    calls = []

    def dies_at_the_fifth_task(task):
        calls.append(task.family)
        if len(calls) == 5:
            raise Killed
        return run_task(task)

    plan = _every_family(run_dir)
    with pytest.raises(Killed):
        run_plan(plan, progress=False, task_fn=dies_at_the_fifth_task)
    at_kill = _rows(run_dir)
    assert 0 < len(at_kill) < len(expected)
    resumed = run_plan(_every_family(run_dir), progress=False)
    assert resumed.skipped > 0 and resumed.rows == len(expected) - len(at_kill)
    got = _rows(run_dir)
    assert set(got) == set(expected)  # the primary key makes each row unique; nothing is missing
    assert got == expected  # the values of the uninterrupted run, bit for bit
    assert run_plan(_every_family(run_dir), progress=False).computed == 0


# ------------------------------------------------------------------------------------------------ new measures


def test_a_measure_added_later_is_computed_on_old_runs(run_dir, monkeypatch):
    first = analyze_heads(run_dir, "0,40", config=HEADS)
    assert first.computed > 0
    with sqlite3.connect(run_dir / "results.sqlite") as con:  # the store of a run analysed before the measure
        n = con.execute("DELETE FROM results WHERE measure = 'prefix_matching_score'").rowcount
    assert n == 2 * 4
    again = analyze_heads(run_dir, "0,40", config=HEADS)
    assert again.computed == n  # exactly the missing measure, nothing else
    assert (again.results.measure == "prefix_matching_score").sum() == n

    # A brand-new measure: one function and one registry line.
    def weight_norm_rows(ctx, task):
        w = ctx.model.blocks[0].attn.W_Q.detach()  # (n_heads, d_model, d_head)
        return [ResultRow(task.step, c, task.data, "wq_norm", task.config_hash, float(w[int(c[2:])].norm()))
                for c in task.components]

    monkeypatch.setattr(sys.modules[__name__], "weight_norm_rows", weight_norm_rows, raising=False)
    monkeypatch.setitem(MEASURES, "wq_norm", Measure("wq_norm", f"{__name__}:weight_norm_rows",
                                                     lambda c: ("wq_norm",)))
    plan = plan_family(run_dir, "wq_norm", steps=[0, 40], components=["0:0", "0:1"], data=[("weights", "weights")],
                       settings={}, config_hash="v1")
    r = run_plan(plan, progress=False)
    assert (r.computed, r.rows) == (4, 4)
    assert run_plan(plan_family(run_dir, "wq_norm", steps=[0, 40], components=["0:0", "0:1"],
                                data=[("weights", "weights")], settings={}, config_hash="v1"),
                    progress=False).computed == 0
    from rllc.train import load_run

    model = load_run(run_dir).model_at(40)
    got = _rows(run_dir)[(40, "0:1", "weights", "wq_norm", "v1")][0]
    assert got == pytest.approx(float(model.blocks[0].attn.W_Q[1].detach().norm()), rel=1e-6)


# ------------------------------------------------------------------------------------------------ announcing


def test_plan_and_measured_estimate_are_printed_first(run_dir):
    lines: list[str] = []
    llc8 = SweepConfig(LLC.sampler.replace(draws=8), 16)  # tasks of more than 4 units are probed at 2 and 4
    plan = plan_sweep(run_dir, components="heads,all", data="pretrain", steps="10,20,40", config=llc8)
    eight = HessianSweepConfig(trace=HessianConfig(n_samples=4, n_probes=8, batch_size=4))
    plan = plan + plan_hessian(run_dir, measure="trace", components="all", steps="20,40", config=eight)
    r = run_plan(plan, progress=False, estimate=True, say=lines.append)
    text = "\n".join(lines)
    assert "plan: llc: 15 jobs = 3 checkpoints (10..40)" in text and "plan: hessian_trace: 2 jobs" in text
    assert "s per draw" in text and "s per probe" in text and text.splitlines()[-1].startswith("estimate: ")
    assert r.estimate_s is not None and r.estimate_s > 0 and r.computed == 17
    # The probe's short runs are measured, never stored: only the plan's own settings are in the store.
    assert {k[4] for k in _rows(run_dir)} == {t.config_hash for t in plan.tasks}


def test_head_measures_have_no_unit_so_their_first_task_is_the_probe_and_is_kept(run_dir):
    lines: list[str] = []
    plan = plan_heads(run_dir, "40", config=HEADS)
    r = run_plan(plan, progress=False, estimate=True, say=lines.append)
    assert "per task (its first task, measured)" in "\n".join(lines)  # kept, not recomputed:
    assert r.computed == r.planned and r.rows == len(_rows(run_dir))


# ------------------------------------------------------------------------------------------------ kill -9


_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[2])
from test_pipeline import _every_family
from rllc.pipeline import run_plan
r = run_plan(_every_family(sys.argv[1]), progress=False)
print("ROWS", r.rows, flush=True)
"""


def _n_rows(run_dir: Path) -> int:
    try:
        with sqlite3.connect(run_dir / "results.sqlite", timeout=30) as con:
            return con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow  # a subprocess imports torch and runs every family: ~1 min on 2 busy cores
def test_kill_9_of_every_measure_then_rerun_stores_each_row_once(run_dir, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(run_dir, twin, symlinks=True)
    run_plan(_every_family(twin), progress=False)
    expected = _rows(twin)
    proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, str(run_dir), str(Path(__file__).parent)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while _n_rows(run_dir) < 20 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = _n_rows(run_dir)
    assert 0 < at_kill < len(expected), f"the kill should land mid-run ({at_kill} rows)"
    r = run_plan(_every_family(run_dir), progress=False)
    assert r.rows == len(expected) - at_kill
    assert _rows(run_dir) == expected


def test_progress_inside_a_task_counts_every_draw_and_probe(run_dir):
    """In-process, a task reports its draws (LLC) and probes (Hessians) as they happen, summing to its work."""
    from rllc.pipeline.measures import measure

    plan = plan_sweep(run_dir, components="0:0,1:1,all", data="pretrain", steps="40", config=LLC)
    plan = plan + plan_hessian(run_dir, measure="trace", components="0:1,all", steps="40", config=HESSIAN)
    plan = plan + plan_hessian(run_dir, measure="rank", components="all", steps="40", config=HESSIAN)
    for task in plan.tasks:
        ticks: list[int] = []
        run_task(task, ticks.append)
        assert len(ticks) > 1 and sum(ticks) == measure(task.family).work(task), task.family
    assert measure("llc").work(plan.tasks[0]) == 2 * FAST["draws"]  # heads together, then "all"
