"""One table of LLC-engine speed and memory figures, every figure measured side by side in one run.

Run: python benchmarks/bench_llc.py [--draws N] [--reps R] [--run RUN_DIR]   (a few minutes on 1–2 CPU cores)
     python benchmarks/bench_llc.py --paper 100 --reps 1 --threads 2 --run RUN_DIR   (issue 11's table: the three
         ratios against devinterp 1.3.2 with their targets, each speed approach's own row, GFLOP/s and fraction of
         the fp32 peak, the load before and after; ~5 minutes on an idle 2-core machine)
     python benchmarks/bench_llc.py --paper 100 --threads 2 --rows heads --run RUN_DIR   (only the per-head row)
     python benchmarks/bench_llc.py --device cuda --draws 20 --reps 3   (the GPU table, where a GPU is available)
Model: the rllc `cpu` preset (2 layers × 4 heads, d_model 64, n_ctx 64, vocab 1024) — at initialisation on random
token windows, or the last checkpoint of RUN_DIR on its pre-training data. Timed variants are interleaved within
each repetition and the median over repetitions is reported, so machine contention hits both sides of every ratio
alike. One intra-op thread unless --threads says otherwise (rllc splits its chains over that many threads;
devinterp gets them as intra-op threads).
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
from rllc.model import ModelConfig, Transformer, heads

HP = dict(epsilon=1e-3, nbeta=30.0, gamma=200.0, batch_size=32)  # the paper's sampler


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _memory_child(what: str) -> None:
    """In a subprocess: a 4-chain estimate on the `paper` preset (batch 32 × 1024, 2 draws); prints peak RSS."""
    import resource

    torch.set_num_threads(2)
    model = Transformer(ModelConfig(), seed=0)
    tokens = torch.randint(0, model.cfg.d_vocab, (64, model.cfg.n_ctx), generator=torch.Generator().manual_seed(0))
    if what == "all":
        t, res = _timed(lambda: estimate_llc(model, tokens, chains=4, draws=2, init_batches=1, **HP))
    else:  # every head at once on the per-head path
        t, res = _timed(lambda: estimate_llc_many(model, tokens, heads(model.cfg), chains=4, draws=1,
                                                  init_batches=1, **HP)[0])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
    print(json.dumps({"rss_gib": rss, "seconds": t, "mean": res.mean}))


def _model_and_data(run_dir: str | None) -> tuple[Transformer, torch.Tensor, str]:
    if run_dir:
        from rllc.train import load_run

        run = load_run(run_dir)
        return run.model_at(run.steps[-1]), run.sample_tokens("pretrain", 1024), f"{run_dir} step {run.steps[-1]}"
    from rllc.train import preset

    cfg = preset("cpu")[0]
    model = Transformer(cfg, seed=0)
    tokens = torch.randint(0, cfg.d_vocab, (1024, cfg.n_ctx), generator=torch.Generator().manual_seed(0))
    return model, tokens, "cpu preset at initialisation, random tokens"


def _devinterp(model, tokens, draws, init_loss, masks=None):  # noqa: ANN001, ANN202
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary

    loader = torch.utils.data.DataLoader(tokens, batch_size=HP["batch_size"], shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    out = estimate_learning_coeff_with_summary(
        model, loader, evaluate=lambda m, b: next_token_loss(m, b), sampling_method=SGLD,
        optimizer_kwargs=dict(lr=HP["epsilon"], nbeta=HP["nbeta"], localization=HP["gamma"]),
        num_draws=draws, num_chains=4, num_burnin_steps=0, num_steps_bw_draws=1, seed=0, verbose=False,
        online=False, optimize_over_per_model_param=masks, init_loss=init_loss)
    return float(out["llc/mean"]), float(out["llc/std"])


def _draw_flops(cfg, batch: int) -> float:  # noqa: ANN001
    """Multiply-adds ×2 of one forward+backward (backward = 2× forward) of the attention-only Transformer."""
    T, D, H, E, V, L = cfg.n_ctx, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_vocab, cfg.n_layers
    per_token = L * (2 * 3 * D * H * E + 2 * 2 * (T / 2) * H * E + 2 * H * E * D) + 2 * D * V
    return 3.0 * per_token * batch * T


def _peak_gflops(threads: int) -> tuple[float, str]:
    """A nominal fp32 peak: cores × GHz × FLOP/cycle (2 FMA units × 8 lanes × 2 with AVX2, ×2 with AVX-512)."""
    flags, ghz = "", 0.0
    try:
        info = open("/proc/cpuinfo").read()
        flags = next(line for line in info.splitlines() if line.startswith("flags"))
        mhz = [float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
        ghz = max(mhz) / 1000 if mhz else 0.0
    except (OSError, StopIteration):
        pass
    per_cycle = 64 if "avx512f" in flags else 32 if "avx2" in flags else 16
    return threads * ghz * per_cycle, f"{threads} core(s) × {ghz:.2f} GHz × {per_cycle} FLOP/cycle (nominal)"


def _se_to_target(mean: float, se_chains: float, draws: int, se_fixed: float = 0.0) -> float:
    """Draws needed for se ≤ max(5% of |λ̂|, 0.05), the chain part shrinking as 1/sqrt(draws); inf if the fixed part
    (the error of a shared L_n(w*)) alone exceeds it."""
    target = max(0.05 * abs(mean), 0.05)
    room = target**2 - se_fixed**2
    return float("inf") if room <= 0 else draws * se_chains**2 / room


def _one_thread_group():  # noqa: ANN202
    """A context in which the estimator runs its chains on the calling thread only (no split over threads): the
    engine before chains were split, to show what the split buys."""
    import contextlib

    import rllc.llc.estimator as est

    @contextlib.contextmanager
    def ctx():  # noqa: ANN202
        orig = est.run_chains_on_threads
        est.run_chains_on_threads = lambda make, workers, *a, **k: orig(make, 1, *a, **k)
        try:
            yield
        finally:
            est.run_chains_on_threads = orig

    return ctx()


def _no_anchor_table():  # noqa: ANN202
    """A context in which paired draws run a forward at w* per chain per draw (the engine before the per-sample
    table of losses at w*, ``estimator._losses_at_anchor``), to show what the lookup buys."""
    import contextlib

    import rllc.llc.estimator as est

    @contextlib.contextmanager
    def ctx():  # noqa: ANN202
        orig = est._losses_at_anchor
        est._losses_at_anchor = lambda *a: None
        try:
            yield
        finally:
            est._losses_at_anchor = orig

    return ctx()


def _other_gemm():  # noqa: ANN202
    """A context in which float32 products go to the other library than this CPU's default (``rllc._gemm``: oneDNN
    on AMD CPUs with AVX-512, MKL's torch.mm elsewhere), to show what the default choice buys."""
    import contextlib

    from rllc import _gemm

    @contextlib.contextmanager
    def ctx():  # noqa: ANN202
        _gemm.set_enabled(not _gemm.available())
        try:
            yield
        finally:
            _gemm.set_enabled(None)

    return ctx()


def _gemm_words(other: bool = False) -> str:
    """Which library the default (or, with ``other``, the other) route sends float32 products to on this CPU."""
    from rllc import _gemm

    onednn = _gemm.available() != other
    return "oneDNN" if onednn else "MKL (torch.mm)"


def _load() -> str:
    import os

    try:
        return "load average " + " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1 / 5 / 15 min)"
    except OSError:
        return "load average unknown"


def heads_table(model, tokens, names, draws: int, threads: int) -> None:  # noqa: ANN001
    """Only the per-head row of ``paper_table`` (``--rows heads``): all per-head estimates together (paired, default
    call; and with the other product library, ``_other_gemm``) against devinterp 1.3.2 with masks head by head, one
    repetition, in that order."""
    kw = dict(chains=4, draws=draws)
    print(f"before: {_load()}")
    t_ours, ours = _timed(lambda: estimate_llc_many(model, tokens, names, paired=True, **kw))
    with _other_gemm():
        t_other, _ = _timed(lambda: estimate_llc_many(model, tokens, names, paired=True, **kw))
    params = dict(model.named_parameters())
    t_dev = 0.0
    for h in names:
        masks = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in params.items()}
        masks |= model.component(h).masks(model)
        dt, _ = _timed(lambda: _devinterp(model, tokens, draws, ours[0].init_loss, masks))
        t_dev += dt
    print(f"after: {_load()}")
    print(f"\npaper sampler: 4 chains × {draws} draws, batch 32, one repetition, {threads} thread(s)")
    print("| figure | rllc | devinterp 1.3.2 | ratio | target |")
    print("|---|---|---|---|---|")
    sp = t_dev / t_ours
    print(f"| all {len(names)} per-head estimates (ours together, paired, default call) vs devinterp masks head by "
          f"head | {t_ours:.2f} s | {t_dev:.2f} s | {sp:.2f}× faster | ≥ 5× {'met' if sp >= 5 else 'not met'} |")
    print(f"|   the same, products by {_gemm_words(other=True)} instead of {_gemm_words()} | {t_other:.2f} s | "
          f"{t_dev:.2f} s | {t_dev / t_other:.2f}× faster | |")


def paper_table(model, tokens, names, draws: int, reps: int, threads: int) -> None:  # noqa: ANN001
    """The three ratios of issue 11 at the paper's sampler (4 chains, batch 32): full model, all heads, time to
    precision; each approach's own row (fused cross-entropy alone, the thread split alone); achieved GFLOP/s."""
    kw = dict(chains=4, draws=draws)
    t: dict[str, list[float]] = {}
    res: dict[str, object] = {}

    def add(key, fn, single=False, no_table=False, other=False):  # noqa: ANN001, ANN202
        import contextlib

        with _one_thread_group() if single else contextlib.nullcontext(), \
                _no_anchor_table() if no_table else contextlib.nullcontext(), \
                _other_gemm() if other else contextlib.nullcontext():
            dt, out = _timed(fn)
        t.setdefault(key, []).append(dt)
        res[key] = out

    from rllc.llc import Observe

    probe = Observe(probes={"probe": tokens[:64]})  # 64 windows' per-token losses at every draw

    print(f"before: {_load()}")
    for rep in range(reps):
        add("ours", lambda: estimate_llc(model, tokens, **kw))  # the default call: auto, L_n(w*) from 16 batches
        add("dev", lambda: _devinterp(model, tokens, draws, None))  # devinterp's default call (its own L_n(w*))
        add("stacked1", lambda: estimate_llc(model, tokens, batched="stacked", **kw), single=True)
        add("stacked1_other", lambda: estimate_llc(model, tokens, batched="stacked", **kw), single=True, other=True)
        add("autograd1", lambda: estimate_llc(model, tokens, batched=False, **kw), single=True)
        add("paired", lambda: estimate_llc(model, tokens, paired=True, **kw))
        add("paired_fwd", lambda: estimate_llc(model, tokens, paired=True, **kw), no_table=True)
        add("observe", lambda: estimate_llc(model, tokens, observe=probe, **kw))
        add("observe1", lambda: estimate_llc(model, tokens, observe=probe, **kw), single=True)
        if rep == 0:
            add("heads", lambda: estimate_llc_many(model, tokens, names, paired=True, **kw))
            add("heads1", lambda: estimate_llc_many(model, tokens, names, paired=True, **kw), single=True)
            add("heads1_other", lambda: estimate_llc_many(model, tokens, names, paired=True, **kw), single=True,
                other=True)
            params = dict(model.named_parameters())
            dev = []
            for h in names:
                masks = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in params.items()}
                masks |= model.component(h).masks(model)
                dt, out = _timed(lambda: _devinterp(model, tokens, draws, res["ours"].init_loss, masks))
                dev.append(out)
                t.setdefault("dev_heads", [0.0])[0] += dt
            res["dev_heads"] = dev
    after = _load()
    med = {k: statistics.median(v) for k, v in t.items()}
    flops = _draw_flops(model.cfg, HP["batch_size"]) * 4 * draws
    peak, how = _peak_gflops(threads)
    print(f"after: {after}")
    print(f"\npaper sampler: 4 chains × {draws} draws, batch 32, {reps} interleaved repetitions (median), "
          f"{threads} thread(s); peak = {how}")
    print("| figure | rllc | devinterp 1.3.2 | ratio | target |")
    print("|---|---|---|---|---|")

    def ratio_row(label, key):  # noqa: ANN001, ANN202
        r = med[key] / med["dev"]
        return f"| {label} | {med[key]:.2f} s | {med['dev']:.2f} s | {r:.2f} |"

    r = med["ours"] / med["dev"]
    print(ratio_row("full-model estimate, default calls (ours: auto = stacked, chains split over the threads)",
                    "ours") + f" ≤ 0.5 {'met' if r <= 0.5 else 'not met'} |")
    print(ratio_row("  the same, stacked on one thread group (fused cross-entropy alone)", "stacked1") + " |")
    print(ratio_row(f"  the same, stacked on one thread group, products by {_gemm_words(True)} instead of "
                    f"{_gemm_words()} (this CPU's default)", "stacked1_other") + " |")
    print(ratio_row("  the same, plain autograd on one thread group (the engine before this issue's speed work)",
                    "autograd1") + " |")
    for key, ref, label in (("paired", "paired_fwd", "paired full-model estimate: L*(minibatch) looked up in the "
                                                     "per-sample table at w* vs a forward at w* per chain per draw"),
                            ("observe", "observe1", "full-model estimate observing a 64-window probe: chains split "
                                                    "over the threads vs one thread group")):
        print(f"| {label} | {med[key]:.2f} s | {med[ref]:.2f} s (the other) | {med[key] / med[ref]:.2f} | |")
    for key, label in (("ours", "default call"), ("stacked1", "stacked, one thread group"),
                       ("autograd1", "autograd, one thread group")):
        g = flops / med[key] / 1e9
        print(f"| achieved GFLOP/s, full-model estimate ({label}) | {g:.1f} | | {g / peak:.1%} of peak | |")
    sp = med["dev_heads"] / med["heads"]
    print(f"| all {len(names)} per-head estimates (ours together, paired, default call) vs devinterp masks head by "
          f"head | {med['heads']:.2f} s | {med['dev_heads']:.2f} s | {sp:.2f}× faster | "
          f"≥ 5× {'met' if sp >= 5 else 'not met'} |")
    sp1 = med["dev_heads"] / med["heads1"]
    print(f"|   the same on one thread group | {med['heads1']:.2f} s | {med['dev_heads']:.2f} s | {sp1:.2f}× faster | |")
    sp2 = med["dev_heads"] / med["heads1_other"]
    print(f"|   the same on one thread group, products by {_gemm_words(True)} instead of {_gemm_words()} | "
          f"{med['heads1_other']:.2f} s | "
          f"{med['dev_heads']:.2f} s | {sp2:.2f}× faster | |")
    # Time to precision: every head's se ≤ target = max(5% λ̂, 0.05). Ours (paired): se = chain spread / sqrt(C) —
    # paired differences carry no shared L_n(w*) error — so only draws are added. devinterp (unpaired): se² = chain
    # spread² / C + the error of its shared L_n(w*), nβ · sd(batch loss at w*) / sqrt(n_init), which more draws do
    # not shrink; it gets half the variance budget each, and pays n_init forwards at w* for it (timed here).
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        batches = [tokens[torch.randint(len(tokens), (32,), generator=g)] for _ in range(32)]
        dt_fwd, batch_losses = _timed(lambda: [float(next_token_loss(model, b)) for b in batches])
    sd_init = HP["nbeta"] * statistics.stdev(batch_losses)  # λ units, one batch
    fwd = dt_fwd / len(batches)
    need_ours = need_dev = 0.0
    n_init = 0.0
    for a, (m, sd) in zip(res["heads"], res["dev_heads"]):
        target = max(0.05 * abs(a.mean), 0.05)
        need_ours = max(need_ours, draws * (a.std / 2) ** 2 / target**2)
        target = max(0.05 * abs(m), 0.05)
        need_dev = max(need_dev, draws * (sd / 2) ** 2 / (target**2 / 2))
        n_init = max(n_init, sd_init**2 / (target**2 / 2))
    t_ours = med["heads"] * need_ours / draws
    t_dev = med["dev_heads"] * need_dev / draws + n_init * fwd
    ratio = t_dev / t_ours
    print(f"| time to precision: every head's se ≤ max(5% λ̂, 0.05) (ours paired; devinterp unpaired with "
          f"{n_init:.0f} batches for L_n(w*), {n_init * fwd:.1f} s) | {t_ours:.1f} s ({need_ours:.0f} draws) | "
          f"{t_dev:.1f} s ({need_dev:.0f} draws) | {ratio:.1f}× faster | ≥ 10× {'met' if ratio >= 10 else 'not met'} |")


def device_table(device: str, draws: int, reps: int, cfg: ModelConfig | None = None) -> None:
    """The GPU table of issue 11 on ``device``: the `paper` preset (8 heads × 2 layers, d_model 256, n_ctx 1024,
    vocab 5000) at initialisation on random tokens, the paper's sampler at batch 32 × 1024 tokens: chain-draws/s of
    the full model with the chains batched (stacked) vs sequential (autograd), and all 16 heads together (per-head
    strategy) vs one by one. Interleaved repetitions, median. ``cfg``: another model (a smoke run on CPU)."""
    model = Transformer(cfg or ModelConfig(), seed=0)
    tokens = torch.randint(0, model.cfg.d_vocab, (256, model.cfg.n_ctx), generator=torch.Generator().manual_seed(0))
    names = heads(model.cfg)
    kw = dict(chains=4, draws=draws, init_batches=1, device=device, **HP)

    def sync():  # noqa: ANN202
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    variants = {
        "stacked": lambda: estimate_llc(model, tokens, batched="stacked", **kw),
        "autograd": lambda: estimate_llc(model, tokens, batched=False, **kw),
        "heads_together": lambda: estimate_llc_many(model, tokens, names, **kw),
        "heads_each": lambda: [estimate_llc(model, tokens, component=h, **kw) for h in names],
    }
    t: dict[str, list[float]] = {k: [] for k in variants}
    if device.startswith("cuda"):
        variants["stacked"]()  # warm-up: CUDA context, kernels, the caching allocator
    for _ in range(reps):
        for k, fn in variants.items():
            sync()
            dt, _ = _timed(lambda: (fn(), sync()))
            t[k].append(dt)
    med = {k: statistics.median(v) for k, v in t.items()}
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    print(f"settings: {'paper preset' if cfg is None else cfg} at initialisation, random tokens, "
          f"4 chains × {draws} draws, batch 32 × {model.cfg.n_ctx}, "
          f"{device} ({name}), {reps} interleaved repetitions (median); torch {torch.__version__}; {_load()}")
    print("| figure | time | chain-draws/s | ratio |")
    print("|---|---|---|---|")
    cd = 4 * draws
    print(f"| full model, chains batched (stacked) | {med['stacked']:.2f} s | {cd / med['stacked']:.1f} | "
          f"{med['autograd'] / med['stacked']:.2f}× the sequential |")
    print(f"| full model, chains sequential (autograd) | {med['autograd']:.2f} s | {cd / med['autograd']:.1f} | |")
    hd = len(names) * cd
    print(f"| all {len(names)} heads together (per-head strategy) | {med['heads_together']:.2f} s | "
          f"{hd / med['heads_together']:.1f} head-chain-draws/s | {med['heads_each'] / med['heads_together']:.2f}× "
          f"one by one |")
    print(f"| the {len(names)} heads one by one | {med['heads_each']:.2f} s | {hd / med['heads_each']:.1f} | |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--run", help="a cpu-preset run directory (default: the preset at initialisation)")
    ap.add_argument("--memory-child", choices=["all", "heads"])
    ap.add_argument("--paper", type=int, metavar="DRAWS",
                    help="only the paper-sampler table (4 chains × DRAWS, batch 32) against devinterp")
    ap.add_argument("--rows", choices=["all", "heads"], default="all",
                    help="with --paper: every row, or only the per-head row (one repetition)")
    ap.add_argument("--device", default="cpu",
                    help="cpu, or cuda: the GPU table (paper preset, batch 32 × 1024; --draws, --reps) where a GPU "
                         "is available (skips cleanly otherwise)")
    ap.add_argument("--device-table", action="store_true",
                    help="the GPU table's measurements on --device (cuda implies it; on cpu a slow smoke run)")
    args = ap.parse_args()
    if args.memory_child:
        return _memory_child(args.memory_child)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here; nothing measured")
        return None
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") or args.device_table:
        return device_table(args.device, args.draws, args.reps)
    D, R = args.draws, args.reps
    model, tokens, what = _model_and_data(args.run)
    names = heads(model.cfg)
    if args.paper:
        import devinterp  # noqa: F401  (pip install 'rllc[bench]')

        print(f"settings: {what}; torch {torch.__version__}")
        if args.rows == "heads":
            return heads_table(model, tokens, names, args.paper, args.threads)
        return paper_table(model, tokens, names, args.paper, R, args.threads)
    common = dict(draws=D, init_batches=1, **HP)

    train_model = Transformer(model.cfg, seed=0)
    train_model.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(train_model.parameters(), lr=1e-3)
    batch = tokens[:32]

    def train_steps():
        for _ in range(D):
            opt.zero_grad(set_to_none=True)
            next_token_loss(train_model, batch).backward()
            torch.nn.utils.clip_grad_norm_(train_model.parameters(), 1.0)
            opt.step()

    try:
        import devinterp  # noqa: F401

        have_devinterp = True
    except ImportError:
        have_devinterp = False

    def many(paired):
        return estimate_llc_many(model, tokens, names, chains=4, paired=paired, **common)

    def each(paired, batched="auto"):
        return [estimate_llc(model, tokens, component=h, chains=4, paired=paired, batched=batched, **common)
                for h in names]

    t: dict[str, list[float]] = {}
    est: dict[str, object] = {}

    def add(key, fn):  # noqa: ANN001, ANN202
        dt, out = _timed(fn)
        t.setdefault(key, []).append(dt)
        return out

    for rep in range(R):
        add("train", train_steps)
        add("draw1", lambda: estimate_llc(model, tokens, chains=1, batched=False, **common))
        add("vmap4", lambda: estimate_llc(model, tokens, chains=4, batched=True, **common))
        add("seq4", lambda: estimate_llc(model, tokens, chains=4, batched=False, **common))
        est["many"] = add("many", lambda: many(False))
        add("each", lambda: each(False))
        add("each_ref", lambda: each(False, batched=False))
        add("many_paired", lambda: many(True))
        add("each_paired", lambda: each(True))
        add("each_ref_paired", lambda: each(True, batched=False))
        est["ours4"] = add("ours4", lambda: estimate_llc(model, tokens, chains=4, draws=D, **HP))  # L_n(w*): 16 batches
        if have_devinterp:
            # devinterp gets our L_n(w*) so that the comparison is of the samplers, not of two noisy L_n(w*).
            est["dev4"] = add("dev4", lambda: _devinterp(model, tokens, D, est["ours4"].init_loss))
            if rep == 0:  # one pass of devinterp over every head (the paper's workload); it is slow
                params = dict(model.named_parameters())
                dev_heads = []
                for h in names:
                    masks = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in params.items()}
                    masks |= model.component(h).masks(model)
                    dev_heads.append(add("dev_heads", lambda: _devinterp(model, tokens, D, est["many"][0].init_loss,
                                                                         masks)))
                est["dev_heads"] = dev_heads
                t["dev_heads"] = [sum(t["dev_heads"])]
    med = {k: statistics.median(v) for k, v in t.items()}
    mem = {}
    for kind in ("all", "heads"):
        child = subprocess.run([sys.executable, __file__, "--memory-child", kind], capture_output=True, text=True,
                               check=True)
        mem[kind] = json.loads(child.stdout.strip().splitlines()[-1])

    H = len(names)
    print(f"settings: {what}; {model.cfg.n_layers} layers × {model.cfg.n_heads} heads, d_model {model.cfg.d_model}, "
          f"vocab {model.cfg.d_vocab}; ε={HP['epsilon']} nβ={HP['nbeta']} γ={HP['gamma']} batch {HP['batch_size']} "
          f"× {model.cfg.n_ctx} tokens, draws {D}, {R} interleaved repetitions (median), torch {torch.__version__}, "
          f"{args.threads} thread(s)")
    print("| figure | ours | reference | ratio | target |")
    print("|---|---|---|---|---|")
    print(f"| SGLD draw (1 chain, all params) vs training step (fwd+bwd+clip+AdamW, same batch) | "
          f"{1e3 * med['draw1'] / D:.1f} ms | {1e3 * med['train'] / D:.1f} ms | {med['draw1'] / med['train']:.2f} | "
          f"≤ 1.1 |")
    print(f"| 4 chains vmapped vs 4 chains sequential (all params) | {med['vmap4']:.2f} s | {med['seq4']:.2f} s | "
          f"{med['vmap4'] / med['seq4']:.2f} | < 1 if batching pays (auto: vmap only for tiny models) |")
    for tag, paired in (("", "unpaired"), ("_paired", "paired")):
        m, e, r = med["many" + tag], med["each" + tag], med["each_ref" + tag]
        print(f"| all {H} per-head estimates together vs one after another ({paired}, 4 chains) | {m:.2f} s | "
              f"{e:.2f} s | {m / e:.2f} | ≤ 0.5 |")
        print(f"| the same vs one after another on the plain-autograd reference loop ({paired}) | {m:.2f} s | "
              f"{r:.2f} s | {m / r:.2f} | |")
    if have_devinterp:
        (m1, s1), (m2, s2) = (est["ours4"].mean, est["ours4"].std), est["dev4"]
        print(f"| λ̂ full model, 4 chains × {D} draws: ours vs devinterp 1.3.2 | {m1:.2f} ± {s1:.2f} | "
              f"{m2:.2f} ± {s2:.2f} | diff {abs(m1 - m2):.2f} vs spread {max(s1, s2):.2f} | within chain spread |")
        print(f"| wall time, full-model estimate: ours vs devinterp 1.3.2 | {med['ours4']:.2f} s | "
              f"{med['dev4']:.2f} s | {med['dev4'] / med['ours4']:.2f}× faster | ≥ 3× |")
        ok = sum(abs(a.mean - b[0]) <= max(a.std, b[1]) for a, b in zip(est["many"], est["dev_heads"]))
        worst = max(abs(a.mean - b[0]) / max(a.std, b[1]) for a, b in zip(est["many"], est["dev_heads"]))
        print(f"| λ̂ of the {H} heads: ours vs devinterp (masks), within the larger chain spread | {ok}/{H} heads | "
              f"| worst |diff|/spread {worst:.2f} | within chain spread |")
        print(f"| wall time, all {H} per-head estimates: ours together vs devinterp head by head | {med['many']:.2f} s | "
              f"{med['dev_heads']:.2f} s | {med['dev_heads'] / med['many']:.2f}× faster | ≥ 3× |")
    else:
        print("| devinterp comparison | — | not installed (pip install 'rllc[bench]') | | |")
    for kind, label in (("all", "full model, 2 draws"), ("heads", "all 16 heads at once, 1 draw")):
        print(f"| peak RSS, 4-chain estimate on the paper preset, {label} (batch 32 × 1024, subprocess) | "
              f"{mem[kind]['rss_gib']:.2f} GiB | 24 GiB | {mem[kind]['rss_gib'] / 24:.2f} | ≤ 1 |")


if __name__ == "__main__":
    main()
