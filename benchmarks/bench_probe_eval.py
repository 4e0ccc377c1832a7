"""Where the probes' time goes (issue 14 item 4): the per-draw probe evaluation of `rllc.llc.probe_eval`, per weight
set, and its share of an observing estimate measured inside that estimate.

Run: python benchmarks/bench_probe_eval.py --run RUN_DIR [--reps R]
Model: the last checkpoint of RUN_DIR (the `cpu` preset of `rllc demo`); probes: the demo's 4 data sets × 8 held-out
windows (2,016 predicted tokens), concatenated as the observer does. Printed, one intra-op thread, thread CPU time
(median of R interleaved repetitions, so machine load hits every variant alike):

* ``HeadEval`` for the 4 heads × 4 chains of each layer and ``StackedEval`` for the full model × 4 chains, in ms
  per weight set (one weight set = one component's chain at one draw);
* the demo sampler's 8-head estimate with the probes observed (`rllc.susceptibilities`): its time over the time
  outside the probe recording — the extra cost of observing measured within one run, where a plain run beside it
  (``bench_susceptibility.py``) also sees the load change between runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

PROBES = ("code", "prose", "synthetic.induction", "synthetic.repeat")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a run directory (its last checkpoint is used)")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--estimates", type=int, default=3, help="observing estimates for the within-run share")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from rllc import susceptibilities
    from rllc.llc import SamplerConfig, driver, probe_eval
    from rllc.model import heads
    from rllc.train import load_run

    run = load_run(args.run)
    model = run.model_at(run.steps[-1])
    batch = torch.cat([run.sample_tokens(p, 8, split="val", seed=1) for p in PROBES])  # (32, n_ctx)
    cfg, C = model.cfg, 4
    anchor = {n: p.detach() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    calls = {}
    head_eval, stacked = probe_eval.HeadEval(model), probe_eval.StackedEval(model)
    for l in range(cfg.n_layers):  # every head of layer l × C chains, each moving its own head off w*
        a, hs = f"blocks.{l}.attn.", [h for h in range(cfg.n_heads) for _ in range(C)]
        w = {a + k: anchor[a + k].expand(len(hs), *anchor[a + k].shape).clone()
             for k in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")}
        for n in w:
            for i, h in enumerate(hs):
                w[n][i, h] += 1e-2 * torch.randn(w[n][i, h].shape, generator=g)
        calls[f"heads of layer {l} (HeadEval)"] = (lambda w=w, l=l, hs=hs: head_eval.values(w, batch, l, hs), len(hs))
    wf = {n: t.expand(C, *t.shape) + 1e-2 * torch.randn(C, *t.shape, generator=g) for n, t in anchor.items()}
    calls["full model (StackedEval)"] = (lambda: stacked.values(wf, batch), C)
    times: dict[str, list[float]] = {k: [] for k in calls}
    load = os.getloadavg()[0]
    for rep in range(args.reps + 1):  # the first repetition builds the probe caches and is not counted
        for k, (fn, n) in calls.items():
            t = time.thread_time()
            fn()
            if rep:
                times[k].append((time.thread_time() - t) / n)
    n_tok = batch.shape[0] * (batch.shape[1] - 1)
    print(f"{args.run} step {run.steps[-1]}; probes {len(PROBES)} x 8 windows ({n_tok} predicted tokens); "
          f"one thread; median of {args.reps}; load average {load:.1f} before, {os.getloadavg()[0]:.1f} after")
    for k, v in times.items():
        print(f"  {k:32s} {statistics.median(v) * 1e3:6.2f} ms per weight set")

    recording = [0.0]
    record = driver._Observer.record

    def timed(self, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        t = time.thread_time()
        out = record(self, *a, **kw)
        recording[0] += time.thread_time() - t
        return out

    driver._Observer.record = timed  # the benchmark's own instrumentation, undone below
    data = run.sample_tokens("pretrain", 512, seed=0)
    probes = {p: run.sample_tokens(p, 8, split="val", seed=1) for p in PROBES}
    sampler = SamplerConfig(paired=True).replace(chains=4, draws=20, batch_size=8, burn_in=50)
    shares = []
    try:
        for _ in range(args.estimates):
            recording[0] = 0.0
            t = time.thread_time()
            susceptibilities(model, data, heads(cfg), probes=probes, config=sampler, paired=True, progress=False)
            total = time.thread_time() - t
            shares.append(total / (total - recording[0]))
    finally:
        driver._Observer.record = record
    print(f"  8 heads, demo sampler (4 chains x 20 draws of batch 8 after 50 burn-in, paired): observing estimate / "
          f"its time outside the probe recording, median of {args.estimates}: {statistics.median(shares):.3f} "
          f"({', '.join(f'{s:.3f}' for s in shares)}; target <= 1.3); load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
