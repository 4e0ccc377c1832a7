"""Another version of `rllc.llc.probe_eval` beside this one, in one process: the plain per-head estimate, the
observing estimate with the other version's evaluators and with this one's, interleaved (issue 14 item 4).

Run: python benchmarks/bench_probe_ab.py --run RUN_DIR --other PATH/TO/probe_eval.py [--reps R] [--pipeline]
e.g. ``git show main:src/rllc/llc/probe_eval.py > /tmp/main_probe_eval.py`` for main's. The model, sampler and
probes are those of ``bench_susceptibility.py`` (the demo's: 8 heads, 4 chains x 20 draws of batch 8 after 50
burn-in, paired; 4 probes x 8 windows); one intra-op thread. Printed: each variant's process CPU time over the
plain one's, median of R interleaved repetitions, so machine load hits every variant alike; --pipeline times the
pipeline task (`run_sweep` of the heads at the last checkpoint, on a scratch copy of the run) instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import tempfile
import time

import torch

PROBES = ("code", "prose", "synthetic.induction", "synthetic.repeat")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--other", required=True, help="a probe_eval.py to compare against (e.g. main's)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pipeline", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from rllc import susceptibilities
    from rllc.llc import SamplerConfig, estimate_llc_many, probe_eval
    from rllc.model import heads
    from rllc.sweep import run_sweep
    from rllc.train import load_run

    spec = importlib.util.spec_from_file_location("other_probe_eval", args.other)
    other = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(other)
    ours = {k: getattr(probe_eval, k) for k in ("HeadEval", "StackedEval")}
    theirs = {k: getattr(other, k) for k in ours}

    run = load_run(args.run)
    model = run.model_at(run.steps[-1])
    data = run.sample_tokens("pretrain", 512, seed=0)
    probes = {p: run.sample_tokens(p, 8, split="val", seed=1) for p in PROBES}
    cfg = SamplerConfig(paired=True).replace(chains=4, draws=20, batch_size=8, burn_in=50)
    tmp = tempfile.mkdtemp()
    copy = shutil.copytree(args.run, f"{tmp}/run") if args.pipeline else None
    kw = dict(components="heads", data="pretrain", steps="last", chains=cfg.chains, draws=cfg.draws,
              batch_size=cfg.batch_size, burn_in=cfg.burn_in, paired=True, n_samples=512, progress=False)
    seed = [1000]

    def task(observe: bool):  # noqa: ANN202
        seed[0] += 1
        if args.pipeline:
            extra = dict(probes=",".join(PROBES), probe_samples=8) if observe else {}
            return lambda: run_sweep(copy, seed=seed[0], **kw, **extra)
        if observe:
            return lambda: susceptibilities(model, data, heads(model.cfg), probes=probes, config=cfg, paired=True,
                                            progress=False)
        return lambda: estimate_llc_many(model, data, heads(model.cfg), config=cfg, progress=False)

    cpu: dict[str, list[float]] = {"plain": [], "other": [], "this": []}
    load = os.getloadavg()[0]
    try:
        for rep in range(args.reps):
            for name in cpu:
                for k, v in (theirs if name == "other" else ours).items():
                    setattr(probe_eval, k, v)
                fn = task(name != "plain")
                c = time.process_time()
                fn()
                cpu[name].append(time.process_time() - c)
            print(f"rep {rep}: CPU plain {cpu['plain'][-1]:.2f} s, other {cpu['other'][-1]:.2f} s "
                  f"({cpu['other'][-1] / cpu['plain'][-1]:.3f}), this {cpu['this'][-1]:.2f} s "
                  f"({cpu['this'][-1] / cpu['plain'][-1]:.3f})")
    finally:
        for k, v in ours.items():
            setattr(probe_eval, k, v)
        shutil.rmtree(tmp)
    ratio = {n: statistics.median(b / a for a, b in zip(cpu["plain"], cpu[n])) for n in ("other", "this")}
    print(f"{'pipeline' if args.pipeline else 'engine'}: median CPU-time ratio to plain: other {ratio['other']:.3f}, "
          f"this {ratio['this']:.3f} (target <= 1.3); load average {load:.1f} before, {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
