"""A realistic size: per-head wrLLC of one head of a GPT-2-small-shaped model (124M parameters, 12 layers × 12 heads).

A random GPT2LMHeadModel from the default GPT2Config (nothing downloaded), one head (default 5:3), 4 chains × 20
draws, batch 4 sequences × 256 tokens, the paper's ε, nβ, γ. Prints the time per draw, the peak memory, which
sampler `estimate_llc(batched="auto")` took, and — measured side by side in this process — the cost of one plain
forward + backward of the whole model on the same batch, so the ratio says what the SGLD step adds.

    python benchmarks/bench_gpt2_small.py                     # CPU (or --device cuda)
    python benchmarks/bench_gpt2_small.py --chains 2 --draws 4  # a quicker look
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _strategy(model, masks, cfg) -> str:  # noqa: ANN001
    """The sampler the estimator's "auto" rule picks here (see rllc.llc.estimator)."""
    from rllc.model.adapters import adapt

    native = adapt(model).native()
    n = sum(p.numel() for p in native.parameters())
    if type(native).__name__ == "Transformer":
        return "per-head sampler (rllc Transformer)"
    if n * cfg.batch_size <= 2_000_000:
        return "vmapped chains (small model)"
    return (f"reference loop: chains one after another, autograd only down to the head's layer (the per-head "
            f"sampler needs rllc's attention-only Transformer; vmap pays only below 2e6 parameters × batch, here "
            f"{n * cfg.batch_size:.1e})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--head", default="5:3")
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import GPT2Config, GPT2LMHeadModel

    import rllc
    from rllc.llc import SamplerConfig
    from rllc.model.adapters import adapt

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).to(args.device)  # 12 layers, 12 heads, d_model 768, vocab 50257
    n_params = sum(p.numel() for p in model.parameters())
    a = adapt(model)
    masks = rllc.component_masks(model, args.head)
    d_head = sum(int(m.sum()) for m in masks.values())
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, a.cfg.d_vocab, (256, args.seq), generator=gen).to(args.device)
    cfg = SamplerConfig(chains=args.chains, draws=args.draws, batch_size=args.batch, init_batches=2)
    print(f"GPT-2-small-shaped random model: {n_params / 1e6:.1f}M parameters, {a.cfg.n_layers} layers × "
          f"{a.cfg.n_heads} heads; head {args.head}: {d_head:,} coordinates")
    print(f"sampler: {args.chains} chains × {args.draws} draws, batch {args.batch} × {args.seq} tokens, "
          f"ε={cfg.epsilon:g} nβ={cfg.nbeta:g} γ={cfg.gamma:g}; threads {torch.get_num_threads()}; {args.device}")
    print(f"strategy: {_strategy(model, masks, cfg)}")

    batch = data[: args.batch]

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    # One plain forward + backward of every parameter on the same batch (the unit an SGLD step is compared to).
    from rllc.llc.losses import next_token_loss

    def fwd_bwd() -> float:
        """Median of 3 plain forward + backward passes (every parameter) on the batch, in seconds."""
        times = []
        for _ in range(3):
            sync()
            t = time.perf_counter()
            model.zero_grad(set_to_none=True)
            next_token_loss(model, batch).backward()
            sync()
            times.append(time.perf_counter() - t)
        model.zero_grad(set_to_none=True)
        return sorted(times)[1]

    fb_before = fwd_bwd()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync()
    t = time.perf_counter()
    res = rllc.estimate_llc(model, data, component=args.head, config=cfg, device=args.device)
    sync()
    wall = time.perf_counter() - t
    per_draw = wall / (args.chains * args.draws)
    fb_after = fwd_bwd()  # before and after: on a shared machine the load drifts during the estimate
    fb = (fb_before + fb_after) / 2
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else _peak_rss_gib()
    print(f"λ̂({args.head}) = {res.mean:.2f} ± {res.std:.2f} (valid {res.valid}; random weights, not a trained model)")
    print(f"time per draw (one chain, one SGLD step, incl. L_n(w*)): {per_draw:.3f} s; whole estimate {wall:.1f} s")
    print(f"plain forward+backward of the whole model on the same batch: {fb_before:.3f} s before, {fb_after:.3f} s "
          f"after -> per-draw / fwd+bwd = {per_draw / fb:.2f} (the head's chain backpropagates only down to its "
          f"layer)")
    print(f"peak memory ({'CUDA allocated' if args.device.startswith('cuda') else 'process RSS'}): {peak:.2f} GiB "
          f"({'fits' if peak < 24 else 'does NOT fit'} in 24 GiB)")


if __name__ == "__main__":
    main()
