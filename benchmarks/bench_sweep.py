"""Sweep throughput: jobs per hour for the demo's sweep, and the speed-up over a naive job-by-job loop.

The demo's sweep (`rllc.sweep.DEMO_SWEEP`) estimates, per checkpoint, the wrLLC of the 8 heads of the cpu preset
on the pre-training mixture and on `code`, and the full-model LLC on the pre-training mixture (17 jobs). The
sweep shares work: one checkpoint load and one sample per (checkpoint, data set), and the heads of a task run as
one batched `estimate_llc_many`. The naive loop calls the estimator job by job, loading the checkpoint and
sampling the data each time (the way a user would script it with `estimate_llc`).

    python benchmarks/bench_sweep.py                     # trains a short cpu-preset run into a temp dir
    python benchmarks/bench_sweep.py --run runs/demo     # an existing cpu-preset run
    python benchmarks/bench_sweep.py --spread            # also: chain spread of the demo vs the paper's sampler

Both loops run in this one process, on the same checkpoints, with the same sampler settings.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _make_run(out: Path, steps: int) -> Path:
    from rllc.train import preset, train_model

    cfgs = preset("cpu", steps=steps, checkpoints=f"every:{max(1, steps // 2)}", tokenizer_chars=400_000)
    train_model(*cfgs, out, progress=False)
    return out


def _naive(run_dir: Path, jobs: list, cfg) -> float:  # noqa: ANN001
    from rllc.llc import estimate_llc
    from rllc.pipeline.data import resolve_data
    from rllc.train import load_run

    t0 = time.perf_counter()
    for i, job in enumerate(jobs):
        print(f"\rnaive loop: job {i + 1}/{len(jobs)}", end="", file=sys.stderr, flush=True)
        run = load_run(run_dir)
        model = run.model_at(job.step)
        tokens, loss_fn = resolve_data(run, job.data, cfg.n_samples, seed=cfg.sample_seed)
        estimate_llc(model, tokens, loss_fn=loss_fn, component=job.component.split("+"), config=cfg.sampler)
    print(file=sys.stderr)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    from rllc.sweep import DEMO_SWEEP, SweepConfig, plan_sweep, run_plan
    from rllc.llc import SamplerConfig, estimate_llc_many

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="an existing cpu-preset run directory (default: train a short one)")
    p.add_argument("--steps", default="last", help="checkpoints to time (default: the last; the demo uses log:12)")
    p.add_argument("--draws", type=int, help="override the demo's draws (to time faster)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--spread", action="store_true", help="measure the chain spread vs the paper's sampler")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        t0 = time.perf_counter()
        run_dir = Path(args.run) if args.run else _make_run(tmp / "run", 40)
        if not args.run:
            print(f"trained a short cpu-preset run in {time.perf_counter() - t0:.0f} s")
        settings = dict(DEMO_SWEEP)
        settings.pop("steps"), settings.pop("full_steps"), settings.pop("full_gap")
        n_samples = settings.pop("n_samples")
        if args.draws:
            settings["draws"] = args.draws
        # A fresh seed per benchmark: the store must not already hold these jobs.
        cfg = SweepConfig(SweepConfig().sampler.replace(**settings, seed=int(time.time()) % 100_000), n_samples)
        heads = plan_sweep(run_dir, components="heads", data="pretrain,code", steps=args.steps, config=cfg)
        full = plan_sweep(run_dir, components="all", data="pretrain", steps=args.steps, config=cfg)
        plan = heads + full
        jobs = plan.jobs
        # Warm up once (imports, first vmap) so that neither loop pays it.
        from rllc.train import load_run

        r = run = load_run(run_dir)
        estimate_llc_many(r.model_at(r.steps[0]), r.sample_tokens("pretrain", 64), [["0:0"], ["0:1"]], chains=2,
                          draws=2, batch_size=2, init_batches=1)

        naive_s = _naive(run_dir, jobs, cfg)
        res = run_plan(plan, progress=False)
        sweep_s = res.wall_s
        print(f"sampler: {cfg.sampler.chains} chains x {cfg.sampler.draws} draws, batch {cfg.sampler.batch_size}, "
              f"{n_samples} windows; {len(jobs)} jobs at steps {sorted({j.step for j in jobs})}; "
              f"{args.threads} torch threads")
        print(f"naive job-by-job loop: {naive_s:7.1f} s  {3600 * len(jobs) / naive_s:8.0f} jobs/hour")
        print(f"sweep (shared work):   {sweep_s:7.1f} s  {3600 * len(jobs) / sweep_s:8.0f} jobs/hour")
        print(f"speed-up: {naive_s / sweep_s:.2f}x (target >= 2x)")
        n_demo = 12 * (2 * run.config.model.n_heads * run.config.model.n_layers + 1)
        print(f"demo sweep ({n_demo} jobs at 12 checkpoints): ~{n_demo * sweep_s / len(jobs) / 60:.1f} min at this rate")

        if args.spread:
            step = run.steps[-1]
            model = run.model_at(step)
            comps = [["0:0"], ["1:0"], ["all"]]
            paper = SamplerConfig()
            out = {}
            for name, sc, n in (("demo", cfg.sampler, n_samples), ("paper", paper, 2048)):
                tokens = run.sample_tokens("pretrain", n)
                t = time.perf_counter()
                rs = estimate_llc_many(model, tokens, comps, config=sc)
                out[name] = rs
                print(f"{name:5s} sampler ({sc.chains}x{sc.draws}, batch {sc.batch_size}): "
                      + ", ".join(f"{c[0]} {x.mean:.2f}±{x.std:.2f}" for c, x in zip(comps, rs))
                      + f"  [{time.perf_counter() - t:.0f} s]")
            ratios = [d.std / p.std for d, p in zip(out["demo"], out["paper"]) if p.std > 0]
            print(f"chain spread (s.d. across chains) demo / paper: "
                  + ", ".join(f"{c[0]} {r:.2f}x" for c, r in zip(comps, ratios))
                  + f"; median {np.median(ratios):.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
