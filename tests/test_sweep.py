"""Sweeps: planning, one row per job, resume after kill -9, concurrent writers, new rows per setting, reference
models as data generators, the process pool, plots and export."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rllc._errors import RllcError
from rllc.sweep import (
    ResultStore, SweepConfig, decode_trace, expand_components, load_results, plan_sweep, run_plan, run_sweep,
    run_task, select_steps, split_data_specs,
)

# Tiny sampler settings: seconds per sweep.
FAST = dict(chains=2, draws=4, batch_size=4, init_batches=1, n_samples=16)


def fast_config(**changes) -> SweepConfig:
    s = {k: v for k, v in FAST.items() if k != "n_samples"} | changes
    return SweepConfig(SweepConfig().sampler.replace(**s), FAST["n_samples"])


def _keys(run_dir: Path) -> list[tuple]:
    with sqlite3.connect(run_dir / "results.sqlite") as con:
        return con.execute("SELECT step, component, data, measure, config_hash FROM results").fetchall()


# ------------------------------------------------------------------------------------------------ planning


def test_select_steps():
    avail = [0, 10, 20, 30, 40]
    assert select_steps("all", avail) == avail
    assert select_steps("last", avail) == [40]
    assert select_steps("every:20", avail) == [0, 20, 40]
    assert select_steps("10,40", avail) == [10, 40]
    assert select_steps("log:3", avail) == [0, 10, 40]
    paper = [0, 10, 20, *range(40, 1001, 20), *range(1040, 2001, 40), *range(2100, 5001, 100)]
    picked = select_steps("log:12", paper)
    assert len(picked) == 12 and picked[0] == 0 and picked[-1] == 5000
    with pytest.raises(RllcError, match="nearest is 20"):
        select_steps("21", avail)
    with pytest.raises(RllcError, match="every:N"):
        select_steps("every:x", avail)


def test_specs(tiny_run):
    assert split_data_specs("pretrain,code") == ["pretrain", "code"]
    assert split_data_specs("pretrain,prose*0.5,code*0.5") == ["pretrain", "prose*0.5,code*0.5"]
    assert split_data_specs("a;b*1,c*2") == ["a", "b*1,c*2"]
    with pytest.raises(RllcError, match="twice"):
        split_data_specs("code,code")
    cfg = tiny_run.config.model
    assert expand_components("heads,all", cfg) == ["0:0", "0:1", "1:0", "1:1", "all"]
    assert expand_components(["0:0+1:1", "layer:0"], cfg) == ["0:0+1:1", "layer:0"]
    with pytest.raises(RllcError):
        expand_components("7:0", cfg)


# ------------------------------------------------------------------------------------------------ exactness


def test_rows_equal_direct_estimates_resume_and_new_hash(run_dir):
    """One row per job with the estimator's own numbers; a rerun computes nothing; a changed setting adds rows."""
    from rllc.llc import estimate_llc_many

    kw = dict(components="heads,all", data="pretrain", steps="10,40", progress=False)
    r1 = run_sweep(run_dir, **kw, **FAST)
    assert (r1.planned, r1.skipped, r1.computed) == (10, 0, 10)
    df = load_results(run_dir)
    assert len(df) == 10 and not df.duplicated(["step", "component", "data", "config_hash"]).any()
    assert set(r1.table.component) == {"0:0", "0:1", "1:0", "1:1", "all"}

    # The stored numbers are exactly what the estimator returns on the same checkpoint and sample.
    from rllc.train import load_run

    run = load_run(run_dir)
    cfg = fast_config()
    tokens = run.sample_tokens("pretrain", cfg.n_samples)
    direct = estimate_llc_many(run.model_at(40), tokens, [["0:0"], ["0:1"], ["1:0"], ["1:1"]], config=cfg.sampler)
    got = df[(df.step == 40) & df.component.str.contains(":")].set_index("component")
    for comp, res in zip(["0:0", "0:1", "1:0", "1:1"], direct):
        assert got.loc[comp, "value"] == pytest.approx(res.mean, rel=1e-9, abs=1e-12)
    extra = ResultStore(run_dir).extra((40, "0:0", "pretrain", "llc", cfg.config_hash()))
    np.testing.assert_allclose(decode_trace(extra["loss_trace"]), direct[0].loss_trace, rtol=1e-6)
    assert len(extra["per_chain"]) == 2 and "diagnostics" in extra

    r2 = run_sweep(run_dir, **kw, **FAST)
    assert (r2.skipped, r2.computed) == (10, 0)
    r3 = run_sweep(run_dir, **kw, **(FAST | {"draws": 5}))
    assert r3.computed == 10 and r3.config_hash != r1.config_hash
    assert len(load_results(run_dir)) == 20
    assert r1.config_hash in ResultStore(run_dir).configs()


_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from rllc.sweep import run_sweep
r = run_sweep(sys.argv[1], components="heads,all", data="pretrain", steps="all", progress=False,
          chains=2, draws=4, batch_size=4, init_batches=1, n_samples=16)
print("COMPUTED", r.computed, flush=True)
"""


def _spawn(run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _SCRIPT, str(run_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})


def _n_rows(run_dir: Path) -> int:
    try:
        with sqlite3.connect(run_dir / "results.sqlite", timeout=30) as con:
            return con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_kill_9_then_rerun_gives_every_job_once(run_dir):
    planned = plan_sweep(run_dir, components="heads,all", data="pretrain", config=fast_config())
    expected = {j.key(planned.config_hash) for j in planned.jobs}
    assert len(expected) == 25
    proc = _spawn(run_dir)
    deadline = time.time() + 60
    while _n_rows(run_dir) == 0 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = _n_rows(run_dir)
    assert 0 < at_kill < 25, f"the kill should land mid-sweep ({at_kill} rows)"
    r = run_sweep(run_dir, components="heads,all", data="pretrain", progress=False, **FAST)
    assert r.computed == 25 - at_kill
    keys = _keys(run_dir)
    assert len(keys) == len(set(keys)) == 25 and set(keys) == expected


def test_two_concurrent_sweeps_share_one_store(run_dir):
    procs = [_spawn(run_dir), _spawn(run_dir)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    computed = [int(o[0].split("COMPUTED")[1]) for o in outs]
    assert sum(computed) == 25  # each job was inserted by exactly one of them
    keys = _keys(run_dir)
    assert len(keys) == len(set(keys)) == 25
    with sqlite3.connect(run_dir / "results.sqlite") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.slow  # two spawned workers import torch: ~30 s on 2 busy cores
def test_pool_executor_matches_in_process(run_dir):
    plan = plan_sweep(run_dir, components="0:1,all", data="pretrain", steps="20,40", config=fast_config())
    ref = {t.step: run_task(t) for t in plan.tasks}
    r = run_sweep(run_dir, components="0:1,all", data="pretrain", steps="20,40", executor="pool", workers=2,
              progress=False, **FAST)
    assert r.computed == 4
    df = load_results(run_dir).set_index(["step", "component"])
    for step, rows in ref.items():
        for row in rows:
            assert df.loc[(step, row.component), "value"] == pytest.approx(row.value, rel=1e-5)


# ------------------------------------------------------------------------------------------------ data specs


def test_model_as_generator_data(run_dir, tmp_path):
    spec = f"model:{run_dir}@40"
    plan = plan_sweep(run_dir, components="1:0", data=spec, steps="40", config=fast_config())
    (row,) = run_task(plan.tasks[0])
    # At the reference's own weights the soft-target loss is the reference's mean next-token entropy.
    from rllc.train import load_run

    run = load_run(run_dir)
    tokens = run.sample_tokens("pretrain", FAST["n_samples"])
    with torch.no_grad():
        logp = torch.log_softmax(run.model_at(40)(tokens)[:, :-1], -1)
    assert row.extra["init_loss"] < float(-(logp.exp() * logp).sum(-1).mean()) + 0.5
    assert row.data == spec and row.value is not None

    other = tmp_path / "other"
    shutil.copytree(run_dir, other, symlinks=True, ignore=shutil.ignore_patterns("results.sqlite*"))
    meta = json.loads((other / "run.json").read_text())
    meta["tokenizer_id"] = "not-the-same"
    (other / "run.json").write_text(json.dumps(meta))
    with pytest.raises(RllcError, match="tokenizer") as e:
        plan_sweep(run_dir, components="1:0", data=f"model:{other}@40", config=fast_config())
    assert "\n" not in str(e.value)
    with pytest.raises(RllcError, match="model:PATH"):
        plan_sweep(run_dir, components="1:0", data="model:nowhere", config=fast_config())


def test_several_runs_and_bad_names(run_dir, tmp_path):
    twin = tmp_path / "twin"
    shutil.copytree(run_dir, twin, symlinks=True, ignore=shutil.ignore_patterns("results.sqlite*"))
    r = run_sweep([run_dir, twin], components="all", data="pretrain", steps="last", progress=False, **FAST)
    assert r.computed == 2 and set(load_results([run_dir, twin]).run) == {"r", "twin"}
    with pytest.raises(RllcError):
        run_sweep(run_dir, components="9:9", progress=False, **FAST)
    with pytest.raises(RllcError, match="step 7"):
        run_sweep(run_dir, steps="7", progress=False, **FAST)


# ------------------------------------------------------------------------------------------------ outputs


def test_plot_and_export(run_dir, tmp_path):
    from rllc.report import plot_sweep
    from rllc.sweep import export_results

    plan = plan_sweep(run_dir, components="heads,all", data="pretrain", steps="0,20,40", config=fast_config())
    run_plan(plan, progress=False)
    pngs = plot_sweep(run_dir)
    assert {p.name.split("_")[0] for p in pngs} == {"heads", "full"}
    assert all(p.stat().st_size > 10_000 for p in pngs)
    written = export_results(run_dir, tmp_path / "exp", formats=["csv"])
    import pandas as pd

    csv = pd.read_csv(written[0])
    assert len(csv) == 15 and {"value", "std", "valid", "config_hash", "cfg_sampler.draws"} <= set(csv.columns)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return
    (pq,) = export_results(run_dir, tmp_path / "exp", formats=["parquet"])
    assert len(pd.read_parquet(pq)) == 15
