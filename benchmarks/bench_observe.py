"""The extra cost per draw of recording per-token observables on probes (issue 14 item 4), measured side by side.

Run: python benchmarks/bench_observe.py --run RUN_DIR [--draws N] [--reps R] [--probes P] [--probe-tokens K]
Model: the last checkpoint of RUN_DIR (e.g. a copy of an `rllc demo` run: the `cpu` preset, 2 layers × 4 heads,
d_model 64, n_ctx 64, vocab 1024), sampled on its pre-training data with the paper's sampler (ε 1e-3, nβ 30, γ 200,
4 chains, batch 32 × 64 tokens, 1 step per draw; ``paired`` as a sweep runs it). Observing: P probes of K tokens
each (K/64 windows of 64 tokens), their per-token losses at every draw for every component × chain.

Variants, interleaved within each repetition (the median over repetitions is reported, so machine load hits both
sides of every ratio alike): the whole model, and the 8 heads in one ``estimate_llc_many`` (as a sweep does), each
plain and observing. One intra-op thread unless --threads says otherwise; with one thread on a loaded machine the
process CPU time (printed beside the wall time) is the work itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import rllc
from rllc.llc import Observe, estimate_llc_many
from rllc.model import heads

HP = dict(epsilon=1e-3, nbeta=30.0, gamma=200.0, batch_size=32, chains=4, paired=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a run directory (its last checkpoint is sampled)")
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--probe-tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", choices=["full", "heads"], default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run = rllc.load_run(args.run)
    model = run.model_at(run.steps[-1])
    data = run.sample_tokens()
    n_ctx = data.shape[1]
    per = max(1, args.probe_tokens // n_ctx)
    probes = {f"p{i}": run.sample_tokens(n=per, seed=100 + i) for i in range(args.probes)}
    variants = {"full": [None], "heads": heads(model.cfg)}
    if args.only:
        variants = {args.only: variants[args.only]}
    times: dict[tuple[str, bool], list[float]] = {(v, o): [] for v in variants for o in (False, True)}
    cpu: dict[tuple[str, bool], list[float]] = {(v, o): [] for v in variants for o in (False, True)}
    load = os.getloadavg()[0]
    for rep in range(args.reps + 1):  # the first repetition warms up and is not counted
        for v, comps in variants.items():
            for observed in (False, True):
                obs = Observe(probes=probes) if observed else None
                t, c = time.perf_counter(), time.process_time()
                estimate_llc_many(model, data, comps, draws=args.draws, observe=obs, **HP)
                if rep:
                    times[(v, observed)].append((time.perf_counter() - t) / args.draws)
                    cpu[(v, observed)].append((time.process_time() - c) / args.draws)
    print(f"{args.probes} probes × {per * n_ctx} tokens, {args.draws} draws, {args.reps} reps, "
          f"{torch.get_num_threads()} thread(s); seconds per draw (median); load average {load:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    for v in variants:
        plain, obs = statistics.median(times[(v, False)]), statistics.median(times[(v, True)])
        ratios = [b / a for a, b in zip(times[(v, False)], times[(v, True)])]
        c_ratio = statistics.median(cpu[(v, True)]) / statistics.median(cpu[(v, False)])
        print(f"  {v:6s} plain {plain:.4f}  observing {obs:.4f}  ratio {obs / plain:.2f} "
              f"(per repetition: {', '.join(f'{r:.2f}' for r in ratios)}); of process CPU time {c_ratio:.2f}")


if __name__ == "__main__":
    main()
