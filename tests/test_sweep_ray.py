"""The Ray executor on a real local Ray runtime: loopback-only settings, a sweep through it, and a worker killed
mid-job (retried; the store stays exact)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from rllc.sweep import (  # noqa: E402
    RayExecutor, SweepConfig, load_results, local_ray_settings, plan_sweep, run_plan, run_task,
)
from rllc.pipeline.executors import ray_temp_dir  # noqa: E402

FAST = dict(chains=2, draws=4, batch_size=4, init_batches=1)
CFG = SweepConfig(SweepConfig().sampler.replace(**FAST), 16)


def test_local_settings_stay_on_loopback(tmp_path):
    env, kw = local_ray_settings(tmp_path / "t", workers=2)
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert env["RAY_AUTH_MODE"] == "disabled"
    assert env["http_proxy"] == "http://127.0.0.1:9" and env["https_proxy"] == "http://127.0.0.1:9"
    assert env["no_proxy"] == "127.0.0.1,localhost,::1"
    assert kw["_node_ip_address"] == "127.0.0.1" and kw["include_dashboard"] is False
    assert kw["_temp_dir"] == str(tmp_path / "t") and kw["address"] == "local" and kw["num_cpus"] == 2


@pytest.fixture(scope="module")
def ray_executor(tmp_path_factory):
    """One local Ray runtime (2 CPUs) for the module, started the way the library starts it."""
    temp = ray_temp_dir(tmp_path_factory.mktemp("ray"))
    ex = RayExecutor(workers=2, temp_dir=temp, max_retries=2)
    ex.start()
    yield ex, temp
    ex.close()


def test_runtime_is_local_and_loopback(ray_executor):
    ex, temp = ray_executor
    env, _ = local_ray_settings(temp)
    for k, v in env.items():
        assert os.environ.get(k) == v, k
    nodes = ray.nodes()
    assert len(nodes) == 1 and nodes[0]["NodeManagerAddress"] == "127.0.0.1"
    assert ray.cluster_resources()["CPU"] == 2
    assert any(p.name.startswith("session_") for p in Path(temp).iterdir())  # the runtime's files live here
    assert Path(temp).stat().st_mode & 0o777 == 0o700  # Ray made it 0777; inside a run directory, only ours
    # Workers inherit the settings too.
    probe = ray.remote(lambda: {k: os.environ.get(k) for k in env})
    assert ray.get(probe.remote()) == env


def test_sweep_through_ray_matches_in_process(ray_executor, run_dir):
    ex, _ = ray_executor
    plan = plan_sweep(run_dir, components="heads,all", data="pretrain", steps="10,40", config=CFG)
    expected = {(t.step, r.component): r.value for t in plan.tasks for r in run_task(t)}
    result = run_plan(plan, ex, progress=False)
    assert result.computed == 10
    df = load_results(run_dir)
    assert len(df) == 10
    for (step, comp), v in expected.items():
        got = df[(df.step == step) & (df.component == comp)].value.item()
        assert got == pytest.approx(v, rel=1e-4)


def test_worker_killed_mid_job_is_retried(ray_executor, run_dir, tmp_path):
    ex, _ = ray_executor
    marker = tmp_path / "attempts"

    def crashing_task(task):
        # The first attempt at step 20 dies mid-job, as a worker process killed by the OS would.
        if task.step == 20:
            with open(marker, "a") as f:
                f.write("x")
            if os.path.getsize(marker) == 1:
                import signal

                os.kill(os.getpid(), signal.SIGKILL)
        return run_task(task)

    plan = plan_sweep(run_dir, components="0:0,all", data="pretrain", steps="0,20,40", config=CFG)
    result = run_plan(plan, ex, progress=False, task_fn=crashing_task)
    assert marker.read_text() == "xx"  # killed once, retried once
    assert result.computed == 6
    with sqlite3.connect(run_dir / "results.sqlite") as con:
        keys = con.execute("SELECT step, component, data, config_hash FROM results").fetchall()
    assert len(keys) == len(set(keys)) == 6
    assert {k[:2] for k in keys} == {(s, c) for s in (0, 20, 40) for c in ("0:0", "all")}


def _in_process_and_on_ray(plan, run_dir, tmp_path, ray_executor):  # noqa: ANN001, ANN202
    """Run `plan` of a copy of run_dir in-process and of run_dir itself on Ray: (the copy, local, remote)."""
    import shutil

    twin = tmp_path / "twin"
    shutil.copytree(run_dir, twin, symlinks=True)
    local = run_plan(plan(twin), progress=False)
    ex, _ = ray_executor
    return twin, local, run_plan(plan(run_dir), ex, progress=False)


def test_head_and_hessian_measures_through_ray_match_in_process(ray_executor, run_dir, tmp_path):
    """Every measure over checkpoints runs on Ray, not only the LLC sweep: the same rows as in-process."""
    from test_pipeline import HEADS, HESSIAN

    from rllc.analysis.hessian_sweep import plan_hessian
    from rllc.analysis.over_training import plan_heads

    def plan(d):
        return plan_heads(d, "40", config=HEADS) + plan_hessian(d, measure="trace", components="0:0,all",
                                                                steps="0,40", config=HESSIAN)

    twin, local, remote = _in_process_and_on_ray(plan, run_dir, tmp_path, ray_executor)
    assert remote.rows == local.rows > 0 and remote.computed == remote.planned
    a, b = load_results(twin).drop(columns="run"), load_results(run_dir).drop(columns="run")
    key = ["step", "component", "data", "measure", "config_hash"]
    merged = a.merge(b, on=key, suffixes=("_local", "_ray"))
    assert len(merged) == len(a) == len(b)
    assert merged.value_local.fillna(-1).to_numpy() == pytest.approx(merged.value_ray.fillna(-1).to_numpy(),
                                                                     rel=1e-5, abs=1e-7)


def test_susceptibilities_through_ray_match_in_process(ray_executor, run_dir, tmp_path):
    """The susceptibility measure's rows and per-token arrays come back from Ray workers as from in-process."""
    import numpy as np

    from rllc.pipeline import ResultStore
    from rllc.sweep.susceptibility import ProbeConfig, plan_susceptibility

    def plan(d):
        return plan_susceptibility(d, probes=ProbeConfig(("synthetic.induction",), n_samples=2), components="heads",
                                   steps="10,40", config=CFG)

    twin, local, remote = _in_process_and_on_ray(plan, run_dir, tmp_path, ray_executor)
    assert remote.rows == local.rows == 2 * 4 * 3 and remote.computed == remote.planned
    a, b = load_results(twin), load_results(run_dir)
    merged = a.drop(columns="run").merge(b.drop(columns="run"), on=["step", "component", "data", "measure",
                                                                     "config_hash"], suffixes=("_local", "_ray"))
    assert len(merged) == len(a) == len(b)
    assert merged.value_local.to_numpy() == pytest.approx(merged.value_ray.to_numpy(), rel=1e-5, abs=1e-9)
    key = (40, "1:1", "pretrain", "susceptibility:synthetic.induction", plan(run_dir).tasks[0].config_hash)
    np.testing.assert_allclose(ResultStore(run_dir).arrays(key)["chi"], ResultStore(twin).arrays(key)["chi"],
                               rtol=1e-5, atol=1e-9)


def _listening(pids: set[int]) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of the TCP sockets these processes listen on."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # state LISTEN
                out.append(f[1].split(":")[0])
    return out


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_runtime_listens_on_loopback_only(ray_executor):
    _, temp = ray_executor
    pids = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if str(temp).encode() in (p / "cmdline").read_bytes():
                    pids.add(int(p.name))
            except OSError:
                continue
    addrs = _listening(pids)
    assert addrs, "found no listening socket of the runtime (GCS, raylet)"
    loopback = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}
    assert set(addrs) <= loopback, addrs
