"""One table of LLC-engine speed and memory figures, every figure measured side by side in one run.

Run: .venv/bin/python benchmarks/bench_llc.py [--draws N] [--reps R]   (a few minutes on 1–2 CPU cores)
Model: the rllc `cpu` preset (2 layers × 4 heads, d_model 64, n_ctx 64, vocab 2048), random token windows.
Timed variants are interleaved within each repetition and the median over repetitions is reported, so machine
contention hits both sides of every ratio alike. One intra-op thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from rllc.llc import estimate_llc, estimate_llc_many
from rllc.llc.losses import next_token_loss
from rllc.model import ModelConfig, Transformer

CPU = dict(n_layers=2, n_heads=4, d_model=64, d_head=16, n_ctx=64, d_vocab=2048)
HP = dict(epsilon=1e-3, nbeta=30.0, gamma=200.0, batch_size=32)  # the paper's sampler


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _memory_child(draws: int) -> None:
    """In a subprocess: a 4-chain estimate on the `paper` preset (batch 32 × 1024); prints peak RSS in GiB."""
    import resource

    torch.set_num_threads(1)
    model = Transformer(ModelConfig(), seed=0)
    tokens = torch.randint(0, model.cfg.d_vocab, (64, model.cfg.n_ctx), generator=torch.Generator().manual_seed(0))
    t, res = _timed(lambda: estimate_llc(model, tokens, chains=4, draws=draws, init_batches=1, **HP))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
    print(json.dumps({"rss_gib": rss, "seconds": t, "mean": res.mean}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--memory-child", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.memory_child:
        return _memory_child(2)
    D, R = args.draws, args.reps
    model = Transformer(ModelConfig(**CPU), seed=0)
    tokens = torch.randint(0, CPU["d_vocab"], (1024, CPU["n_ctx"]), generator=torch.Generator().manual_seed(0))
    heads = [f"{l}:{h}" for l in range(CPU["n_layers"]) for h in range(CPU["n_heads"])]
    common = dict(draws=D, init_batches=1, **HP)

    train_model = Transformer(ModelConfig(**CPU), seed=0)
    opt = torch.optim.AdamW(train_model.parameters(), lr=1e-3)
    batch = tokens[:32]

    def train_steps():
        for _ in range(D):
            opt.zero_grad(set_to_none=True)
            next_token_loss(train_model, batch).backward()
            opt.step()

    try:
        from devinterp.slt.sampler import estimate_learning_coeff_with_summary
        from devinterp.optim.sgld import SGLD
    except ImportError:
        estimate_learning_coeff_with_summary = None

    def devinterp_run():
        loader = torch.utils.data.DataLoader(tokens, batch_size=HP["batch_size"], shuffle=True,
                                             generator=torch.Generator().manual_seed(0))
        out = estimate_learning_coeff_with_summary(
            model, loader, evaluate=lambda m, b: next_token_loss(m, b), sampling_method=SGLD,
            optimizer_kwargs=dict(lr=HP["epsilon"], nbeta=HP["nbeta"], localization=HP["gamma"]),
            num_draws=D, num_chains=4, num_burnin_steps=0, num_steps_bw_draws=1, seed=0, verbose=False,
            online=False)
        return float(out["llc/mean"]), float(out["llc/std"])

    t = {k: [] for k in ["train", "draw1", "vmap4", "seq4", "heads_many", "heads_each", "ours4", "devinterp4"]}
    est = {}
    for rep in range(R):
        t["train"].append(_timed(train_steps)[0] / D)
        t["draw1"].append(_timed(lambda: estimate_llc(model, tokens, chains=1, batched=False, **common))[0] / D)
        t["vmap4"].append(_timed(lambda: estimate_llc(model, tokens, chains=4, batched=True, **common))[0])
        t["seq4"].append(_timed(lambda: estimate_llc(model, tokens, chains=4, batched=False, **common))[0])
        dt, many = _timed(lambda: estimate_llc_many(model, tokens, heads, chains=2, **common))
        t["heads_many"].append(dt)
        t["heads_each"].append(_timed(lambda: [estimate_llc(model, tokens, component=h, chains=2, **common)
                                              for h in heads])[0])
        dt, r = _timed(lambda: estimate_llc(model, tokens, chains=4, draws=D, **HP))  # init from 16 batches
        t["ours4"].append(dt)
        est["ours"] = (r.mean, r.std)
        if estimate_learning_coeff_with_summary is not None:
            dt, est["devinterp"] = _timed(devinterp_run)
            t["devinterp4"].append(dt)
    med = {k: statistics.median(v) for k, v in t.items() if v}
    child = subprocess.run([sys.executable, __file__, "--memory-child"], capture_output=True, text=True, check=True)
    mem = json.loads(child.stdout.strip().splitlines()[-1])

    print(f"settings: cpu preset {CPU}, random tokens (1024 × 64), ε={HP['epsilon']} nβ={HP['nbeta']} "
          f"γ={HP['gamma']} batch {HP['batch_size']}, draws {D}, {R} interleaved repetitions (median), "
          f"torch {torch.__version__}, 1 thread")
    print("| figure | ours | reference | ratio | target |")
    print("|---|---|---|---|---|")
    print(f"| SGLD draw (1 chain, all params) vs plain training step (fwd+bwd+AdamW, same batch) | "
          f"{1e3 * med['draw1']:.1f} ms | {1e3 * med['train']:.1f} ms | {med['draw1'] / med['train']:.2f} | ≤ 1.1 |")
    print(f"| 4 chains vmapped vs 4 chains sequential (all params, {D} draws) | {med['vmap4']:.2f} s | "
          f"{med['seq4']:.2f} s | {med['vmap4'] / med['seq4']:.2f} | < 1 if batching pays (auto picks sequential) |")
    print(f"| all {len(heads)} per-head estimates via estimate_llc_many vs one after another (2 chains, {D} draws) | "
          f"{med['heads_many']:.2f} s | {med['heads_each']:.2f} s | {med['heads_many'] / med['heads_each']:.2f} | ≤ 0.5 |")
    if "devinterp" in est:
        (m1, s1), (m2, s2) = est["ours"], est["devinterp"]
        print(f"| λ̂ full model, 4 chains × {D} draws: ours vs devinterp 1.3.2 | {m1:.2f} ± {s1:.2f} | "
              f"{m2:.2f} ± {s2:.2f} | diff {abs(m1 - m2):.2f} vs spread {max(s1, s2):.2f} | within chain spread |")
        print(f"| wall time of that estimate: ours vs devinterp 1.3.2 | {med['ours4']:.2f} s | "
              f"{med['devinterp4']:.2f} s | {med['devinterp4'] / med['ours4']:.2f}× faster | ≥ 3× |")
    else:
        print("| devinterp comparison | — | not installed (pip install 'rllc[bench]') | | |")
    print(f"| peak RSS, 4-chain estimate on the paper preset (batch 32 × 1024, 2 draws, subprocess) | "
          f"{mem['rss_gib']:.2f} GiB | 24 GiB | {mem['rss_gib'] / 24:.2f} | ≤ 1 |")


if __name__ == "__main__":
    main()
