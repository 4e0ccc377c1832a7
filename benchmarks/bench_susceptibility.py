"""The extra cost of susceptibilities from the same chains: a plain per-head sweep task against the same task with
probes observed at every draw (issue 14 item 4: target ≤ 1.3× for 4 probes × 512 tokens).

Run: python benchmarks/bench_susceptibility.py [--run RUN_DIR] [--reps R] [--draws N] [--probe-samples N]
Model: the last checkpoint of RUN_DIR (default: a cpu-preset model at initialisation on random windows), every head
(one per-head sampler call), the demo's sampler (4 chains × 20 draws of batch 8 after 50 burn-in steps, paired; the probes are evaluated at
draws only)
on 512 windows. Probes: 4 data sets × 8 windows × 64 tokens = 4 × 512 tokens. The two variants are interleaved
within each repetition and the median ratio is reported, so machine load hits both alike; one intra-op thread.
Two levels: the engine (`estimate_llc_many` against `rllc.susceptibilities`) and, with --pipeline, the pipeline
task (`run_sweep` of the heads at the last checkpoint: the "llc" measure's rows against the "susceptibility"
measure's rows and arrays, stored). Wall and process CPU time are both printed: with one thread on a loaded machine
the CPU time is the work itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

PROBES = ("code", "prose", "synthetic.induction", "synthetic.repeat")


def _timed(fn):
    """(wall seconds, process CPU seconds, result): with one thread the CPU time is the work itself, free of the
    waits for a core that a loaded machine adds to the wall time."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="a run directory (default: a cpu-preset model at initialisation)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--probe-samples", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--burn-in", type=int, default=50, help="burn-in steps (the demo's sampler: 50)")
    ap.add_argument("--pipeline", action="store_true",
                    help="also time the pipeline task (needs --run): `rllc sweep` of the heads at the last "
                         "checkpoint on the demo's 512 pre-training windows, plain against --probes, on a copy of RUN")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from rllc import susceptibilities
    from rllc.llc import SamplerConfig, estimate_llc_many
    from rllc.model import ModelConfig, Transformer, heads

    cfg = SamplerConfig(paired=True).replace(chains=4, draws=args.draws, batch_size=8, burn_in=args.burn_in)
    if args.run:
        from rllc.train import load_run

        run = load_run(args.run)
        model = run.model_at(run.steps[-1])
        data = run.sample_tokens("pretrain", 512, seed=0)
        probes = {p: run.sample_tokens(p, args.probe_samples, split="val", seed=1) for p in PROBES}
        where = f"{args.run} step {run.steps[-1]}"
    else:
        model = Transformer(ModelConfig(n_layers=2, n_heads=4, d_model=64, d_head=16, n_ctx=64, d_vocab=1024), seed=0)
        g = torch.Generator().manual_seed(0)
        data = torch.randint(0, 1024, (512, 64), generator=g)
        probes = {p: torch.randint(0, 1024, (args.probe_samples, 64), generator=g) for p in PROBES}
        where = "cpu preset at initialisation, random windows"
    comps = heads(model.cfg)
    n_tok = sum(t.shape[0] * (t.shape[1] - 1) for t in probes.values())
    print(f"{where}; {len(comps)} heads; {cfg.chains} chains x {cfg.draws} draws, batch {cfg.batch_size}, burn-in "
          f"{cfg.burn_in}, paired; probes {len(probes)} x {args.probe_samples} windows ({n_tok} predicted tokens)")
    plain_t, probe_t, plain_c, probe_c = [], [], [], []
    load = os.getloadavg()[0]
    for rep in range(args.reps):
        t0, c0, a = _timed(lambda: estimate_llc_many(model, data, comps, config=cfg, progress=False))
        t1, c1, b = _timed(lambda: susceptibilities(model, data, comps, probes=probes, config=cfg, paired=True,
                                                    progress=False))
        same = max(abs(x.mean - b.llc[n].mean) for x, n in zip(a, b.components))
        plain_t.append(t0)
        probe_t.append(t1)
        plain_c.append(c0)
        probe_c.append(c1)
        print(f"rep {rep}: plain {t0:.2f} s (CPU {c0:.2f} s), with probes {t1:.2f} s (CPU {c1:.2f} s), ratio "
              f"{t1 / t0:.3f} (CPU {c1 / c0:.3f}); max |λ̂ difference| {same:.2e}")
    _summary("engine", plain_t, probe_t, plain_c, probe_c, load)
    if args.pipeline and args.run:
        _pipeline(args, cfg)


def _summary(label: str, plain_t: list[float], probe_t: list[float], plain_c: list[float], probe_c: list[float],
             load: float, extra: str = "") -> None:
    """Print the medians of the plain and observing wall times and their wall and CPU-time ratios."""
    ratios = [b / a for a, b in zip(plain_t, probe_t)]
    cpu = [b / a for a, b in zip(plain_c, probe_c)]
    print(f"{label}: median plain {statistics.median(plain_t):.2f} s, with probes {statistics.median(probe_t):.2f} s;"
          f" median ratio {statistics.median(ratios):.3f}, of CPU time {statistics.median(cpu):.3f} (target <= 1.3);"
          f" {extra}load average {load:.1f} before, {os.getloadavg()[0]:.1f} after")


def _pipeline(args, cfg) -> None:  # noqa: ANN001
    """The pipeline task: run_sweep of every head at the last checkpoint (the demo's sweep settings), plain against
    with the demo's 4 probes, on a scratch copy of the run; a fresh sampler seed per variant and repetition, so
    every repetition computes its rows (nothing resumes)."""
    import shutil
    import tempfile

    from rllc.sweep import run_sweep

    kw = dict(components="heads", data="pretrain", steps="last", chains=cfg.chains, draws=cfg.draws,
              batch_size=cfg.batch_size, burn_in=cfg.burn_in, paired=True, n_samples=512, progress=False)
    plain_c, probe_c, plain_t, probe_t = [], [], [], []
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        run = shutil.copytree(args.run, f"{tmp}/run")
        for rep in range(args.reps):
            t0, c0, _ = _timed(lambda: run_sweep(run, seed=1000 + 2 * rep, **kw))
            t1, c1, _ = _timed(lambda: run_sweep(run, seed=1001 + 2 * rep, probes=",".join(PROBES),
                                                 probe_samples=args.probe_samples, **kw))
            plain_t.append(t0), plain_c.append(c0), probe_t.append(t1), probe_c.append(c1)
            print(f"pipeline rep {rep}: plain {t0:.2f} s (CPU {c0:.2f} s), with probes {t1:.2f} s (CPU {c1:.2f} s), "
                  f"ratio {t1 / t0:.3f} (CPU {c1 / c0:.3f})")
    _summary("pipeline", plain_t, probe_t, plain_c, probe_c, load, f"{torch.get_num_threads()} thread(s); ")


if __name__ == "__main__":
    main()
