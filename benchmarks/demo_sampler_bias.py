"""The demo sampler's bias against the paper's settings, with its causes separated (issue 13, item 9).

The demo estimates every head's wrLLC and the full-model LLC with a cheap SGLD sampler (`rllc.workflows`,
`DEMO_SAMPLER` over `rllc.sweep.DEMO_SWEEP`); the paper's (Wang et al. 2024, every rLLC figure) is 4 chains ×
200 draws × batch 32, no burn-in, the loss at w* subtracted as one 16-batch mean (unpaired). This script estimates
a few components at a few checkpoints of a demo run under both and under variants that change one factor at a
time — draws/burn-in, batch size, pairing — and prints each estimate as a ratio to the paper's, with the standard
error of the ratio (chain spread / sqrt(chains) of both, propagated; every setting uses sampler seed 0, so
chain c sees the same minibatch stream in every setting and the ratios' real error is smaller).

    python benchmarks/demo_sampler_bias.py RUN                       # the default 3 heads × 3 checkpoints
    python benchmarks/demo_sampler_bias.py RUN --settings paper,demo  # only some settings
    python benchmarks/demo_sampler_bias.py RUN --list                 # the settings and what each changes

RUN must be a demo run you may write into (a copy of one: the estimates are stored in its results store under
their own config hashes, so an interrupted run resumes and a finished one reprints at no cost). The unpaired
settings' stored loss traces also give, for free, the estimate from a window of their draws (`--windows`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

# name → (sampler overrides of the paper's sampler, what the setting isolates). Windows are (burn-in, draws) of a
# stored unpaired trace: the estimate over draws [burn-in, burn-in + draws) of that setting's chains.
SETTINGS: dict[str, tuple[dict, str]] = {
    "paper": (dict(chains=4, draws=200, batch_size=32, burn_in=0, paired=False), "the paper's (reference)"),
    "demo": (dict(chains=4, draws=20, batch_size=8, burn_in=30, paired=True), "the demo's before this check"),
    "demo_b32": (dict(chains=4, draws=20, batch_size=32, burn_in=30, paired=True), "demo with the paper's batch"),
    "demo_unpaired": (dict(chains=4, draws=20, batch_size=8, burn_in=30, paired=False), "demo, unpaired"),
    "b50d20": (dict(chains=4, draws=20, batch_size=8, burn_in=50, paired=True), "demo with 50 burn-in steps"),
    "d200_b8": (dict(chains=4, draws=200, batch_size=8, burn_in=0, paired=True), "paper's draws, batch 8, paired"),
    "d200_b8_unpaired": (dict(chains=4, draws=200, batch_size=8, burn_in=0, paired=False),
                         "paper's draws at batch 8 (the batch effect alone)"),
    "d200_b32_paired": (dict(chains=4, draws=200, batch_size=32, burn_in=0, paired=True),
                        "paper's settings, paired (the pairing effect alone)"),
}
DEFAULT_SETTINGS = "paper,demo,demo_b32,demo_unpaired,d200_b8_unpaired,d200_b32_paired"
DEFAULT_WINDOWS = "0:20,30:20,0:50,100:100"


NBETA = 30.0  # the paper's nβ, every setting here


class _Loss(float):
    std: float


def exact_loss(run_dir: Path, data: str, step: int, n_samples: int) -> _Loss:
    """L_n(w*) over all n windows the sweep samples at `step` (sample seed 0), and the per-window std."""
    import torch

    from rllc.pipeline.data import resolve_data
    from rllc.train import load_run

    run = load_run(run_dir)
    tokens, loss_fn = resolve_data(run, data, n_samples, seed=0)
    model = run.model_at(step)
    model.eval()
    with torch.no_grad():
        per = np.array([float(loss_fn(model, tokens[i:i + 1])) for i in range(len(tokens))])
    out = _Loss(per.mean())
    out.std = float(per.std())
    return out


def sweep_config(name: str, n_samples: int):  # noqa: ANN201 - SweepConfig
    from rllc.sweep import SweepConfig

    return SweepConfig(SweepConfig().sampler.replace(**SETTINGS[name][0]), n_samples)


def main(argv: list[str] | None = None) -> int:
    from rllc.pipeline.store import ResultStore
    from rllc.sweep import DEMO_SWEEP, decode_trace, plan_sweep, run_plan

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a writable copy of a demo run directory")
    p.add_argument("--components", default="0:0,1:0,1:2", help="components (default: heads 0:0,1:0,1:2)")
    p.add_argument("--steps", help="checkpoints (default: the demo's sampler-check steps, "
                   "`rllc.workflows.sampler_check_steps`: 480,2300,5000 on the 5,000-step demo)")
    p.add_argument("--settings", default=DEFAULT_SETTINGS,
                   help=f"comma list of {', '.join(SETTINGS)} (without 'paper', the stored reference is only read)")
    p.add_argument("--windows", default=DEFAULT_WINDOWS,
                   help="burn-in:draws windows re-read from the unpaired settings' stored traces")
    p.add_argument("--data", default="pretrain")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2; 1 on a crowded machine)")
    p.add_argument("--report-only", action="store_true", help="compute nothing: tabulate what is stored")
    p.add_argument("--list", action="store_true", help="list the settings and exit")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.list:
        for k, (s, why) in SETTINGS.items():
            print(f"{k:18s} {why}: {s}")
        return 0
    names = [s for s in args.settings.split(",") if s]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        print(f"error: unknown settings {unknown}; --list shows them", file=sys.stderr)
        return 2
    if "paper" not in names:  # the reference is always tabulated; computed only when asked for
        names = ["paper", *names]
        skip_compute = {"paper"}
    else:
        skip_compute = set()
    if args.steps:
        steps = [int(s) for s in args.steps.split(",")]
    else:
        from rllc.sweep import select_steps
        from rllc.train import load_run
        from rllc.workflows import sampler_check_steps

        steps = sampler_check_steps(select_steps(DEMO_SWEEP["steps"], load_run(Path(args.run)).steps))
    n = DEMO_SWEEP["n_samples"]
    print(f"run {args.run}; components {args.components}; steps {steps}; data {args.data}; n = {n} windows; "
          f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    wall: dict[tuple[str, int], float] = {}
    for name in names:
        if name in skip_compute:
            continue
        cfg = sweep_config(name, n)
        for st in steps:
            plan = plan_sweep(args.run, components=args.components, data=args.data, steps=[st], config=cfg)
            if plan.pending and not args.report_only:
                t0 = time.perf_counter()
                run_plan(plan, progress=False)
                wall[name, st] = time.perf_counter() - t0
                print(f"  computed {name} at step {st}: {wall[name, st]:.0f} s (load {os.getloadavg()[0]:.1f})",
                      flush=True)
    store = ResultStore(Path(args.run))
    df = store.frame(with_extra=True)
    df = df[(df.measure == "llc") & (df.data == args.data)]
    exact = {st: exact_loss(Path(args.run), args.data, st, n) for st in steps}

    def row(name: str, comp: str, st: int):  # noqa: ANN202
        h = sweep_config(name, n).config_hash()
        r = df[(df.config_hash == h) & (df.component == comp) & (df.step == st)]
        return None if r.empty else r.iloc[0]

    def est(name: str, r, st: int, window: tuple[int, int] | None = None) -> tuple[float, float] | None:  # noqa: ANN001
        """(mean, s.e.) over chains; unpaired settings against the exact L_n(w*), paired as stored."""
        paired = SETTINGS[name][0]["paired"]
        if paired and window is None:
            pc = np.array([x for x in r.extra["per_chain"] if x is not None and math.isfinite(x)])
        elif paired:
            return None  # the loss at w* per draw is not stored: no window of a paired setting
        else:
            tr = decode_trace(r.extra["loss_trace"])  # (C, draws) minibatch losses, burn-in not included
            b, k = window or (0, tr.shape[1])
            if tr.shape[1] < b + k or (window is not None and (b, k) == (0, tr.shape[1])):
                return None
            pc = NBETA * (tr[:, b:b + k].mean(1) - exact[st])
            pc = pc[np.isfinite(pc)]
        return float(pc.mean()), float(pc.std(ddof=1) / math.sqrt(len(pc)))

    comps = args.components.split(",")
    wins = [tuple(map(int, w.split(":"))) for w in args.windows.split(",") if w]
    cols = [(nm, None) for nm in names] + [
        (nm, w) for nm in names if not SETTINGS[nm][0]["paired"] for w in wins]
    print("\nL(w*) at each checkpoint: exact (all n windows) vs the unpaired estimator's 16-batch estimate, whose "
          "error nβ·(L̂ − L) every chain and component of that checkpoint shares (invisible in the chains' spread)")
    for st in steps:
        inits = {}
        for name in names:
            if not SETTINGS[name][0]["paired"]:
                r = next((row(name, c, st) for c in comps if row(name, c, st) is not None), None)
                if r is not None:
                    inits[SETTINGS[name][0]["batch_size"]] = r.extra["init_loss"]
        parts = [f"batch {b}: L̂ {v:.4f} (nβ·error {NBETA * (v - float(exact[st])):+.2f})"
                 for b, v in sorted(inits.items())]
        print(f"  step {st}: L_n(w*) = {float(exact[st]):.4f} (per-window std {exact[st].std:.3f}: a 16-batch "
              f"estimate at batch 32 carries ± {NBETA * exact[st].std / math.sqrt(16 * 32):.2f} in λ̂, at batch 8 "
              f"± {NBETA * exact[st].std / math.sqrt(16 * 8):.2f}); " + "; ".join(parts))
    print("\nreference: the paper's sampler (4 chains × 200 draws × batch 32) with paired differences where computed "
          "(d200_b32_paired: the same chains, the loss at w* on each draw's minibatch), else with the exact L_n(w*) "
          "— both the paper's estimator's expectation; ratio to it ± s.e. of the ratio. Unpaired settings are read "
          "against the exact L_n(w*) too; 'paper as run' is the paper's estimator with its own 16-batch L̂(w*).")
    header = ["component", "step", "reference", "paper as run"] + [
        nm if w is None else f"{nm}[{w[0]}:{w[0] + w[1]}]" for nm, w in cols]
    print("  ".join(f"{h:>15s}" for h in header))
    ratios: dict[str, list[float]] = {}
    for comp in comps:
        for st in steps:
            ref_row = row("paper", comp, st)
            if ref_row is None:
                continue
            pair_row = row("d200_b32_paired", comp, st) if "d200_b32_paired" in names else None
            ref, ref_se = est("d200_b32_paired", pair_row, st) if pair_row is not None else est("paper", ref_row, st)
            as_run = float(ref_row.value)
            cells = [comp, str(st), f"{ref:.3f}±{ref_se:.3f}" + ("p" if pair_row is not None else "x"),
                     f"{as_run / ref:.2f}"]
            for nm, w in cols:
                r = row(nm, comp, st)
                v = None if r is None else est(nm, r, st, w)
                if v is None:
                    cells.append("–")
                    continue
                q = v[0] / ref
                q_se = abs(q) * math.hypot(v[1] / v[0] if v[0] else 0.0, ref_se / ref)
                ratios.setdefault(header[len(cells)], []).append(q)
                cells.append(f"{q:.2f}±{q_se:.2f}")
            print("  ".join(f"{c:>15s}" for c in cells))
    print("(reference suffix: p = paired paper sampler, x = paper sampler with the exact L_n(w*); the 'paper' column "
          "is the latter)")
    print("\nmean ratio per setting over the table (worst |1 − ratio|):")
    for k, v in ratios.items():
        print(f"  {k:24s} {np.mean(v):.2f} (worst {max(abs(1 - x) for x in v):.2f}, {len(v)} estimates)")
    if wall:
        print("\nwall time per setting (this process, all components of a checkpoint together):")
        for nm in names:
            ts = [wall[nm, s] for s in steps if (nm, s) in wall]
            if ts:
                print(f"  {nm:18s} {sum(ts):.0f} s over {len(ts)} checkpoint(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
