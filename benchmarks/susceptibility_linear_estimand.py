"""The leading term of the per-token susceptibility's estimand, without sampling noise (issue 14 item 6): does what
χ estimates rank the labelled positions, before any chain is run?

Run: python benchmarks/susceptibility_linear_estimand.py RUN_DIR [--heads 1:0,1:2,1:3,0:3,0:0,0:1,0:2,1:1]
Model: the last checkpoint of RUN_DIR (a cpu-preset demo run). Probes: synthetic.induction and synthetic.repeat,
8 validation windows each (seed 1, the demo's probe windows), labelled by the generator (`Pattern` bits).
With the head's local posterior ≈ N(w*, Σ) and Σ ≈ I/γ (γ = 200 against nβ = 30 times the head's curvature), to
first order in δ = w − w*: Cov(φ, ℓ_i) ≈ gᵀ Σ g_i = gᵀ g_i / γ, g the gradient of the loss on the sampling data
(512 pre-training windows, seed 0) and g_i that of token i's loss, both over the head's weights only (the curvature
term ½ tr(H Σ H_i Σ) is left out). So −χ_i ranks tokens as gᵀg_i does, up to that term. Printed per head and probe:
the ROC AUC against the positions labelled INDUCTION|REPEAT of gᵀg_i and of −‖g_i‖² (small gradients: the
well-predicted tokens, for any head), and ‖g‖.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a cpu-preset run directory (e.g. a copy of an `rllc demo` output)")
    ap.add_argument("--heads", default="1:0,1:2,1:3,0:3,0:0,0:1,0:2,1:1")
    args = ap.parse_args()
    torch.set_num_threads(1)

    import rllc
    from rllc.analysis.susceptibility import token_auc
    from rllc.data.synthetic import Pattern
    from rllc.model.components import component_masks
    from rllc.pipeline.data import probe_labels, resolve_data
    from rllc.train.loop import token_cross_entropy

    run = rllc.load_run(args.run)
    model = run.model_at(run.steps[-1]).eval()
    data, _ = resolve_data(run, "pretrain", 512, seed=0, split="train")
    heads = args.heads.split(",")
    params = dict(model.named_parameters())
    masks = {h: component_masks(model, h) for h in heads}

    def restrict(grads: dict[str, torch.Tensor], h: str) -> torch.Tensor:  # the head's weights only
        return torch.cat([grads[n][m] for n, m in masks[h].items()])

    for i in range(0, len(data), 64):  # g: the gradient of the mean loss over the 512 windows
        (token_cross_entropy(model(data[i:i + 64]), data[i:i + 64]) * 64 / len(data)).backward()
    g = {h: restrict({n: p.grad for n, p in params.items()}, h) for h in heads}
    pattern = int(Pattern.INDUCTION | Pattern.REPEAT)
    print(f"run {args.run} step {run.steps[-1]}; leading-order −χ_i ∝ gᵀg_i (Σ ≈ I/γ)")
    print("probe  head  AUC(gᵀg_i)  AUC(−‖g_i‖²)  ‖g‖")
    for p in ("synthetic.induction", "synthetic.repeat"):
        tokens = resolve_data(run, p, 8, seed=1, split="val")[0]
        labels = probe_labels(run, p, 8, seed=1, split="val")
        loss = token_cross_entropy(model(tokens), tokens, per_token=True)  # (8, T − 1)
        dots = {h: np.zeros(loss.shape) for h in heads}
        norms = {h: np.zeros(loss.shape) for h in heads}
        for b in range(loss.shape[0]):
            for t in range(loss.shape[1]):
                gr = torch.autograd.grad(loss[b, t], list(params.values()), retain_graph=True, allow_unused=True)
                gr = {n: (x if x is not None else torch.zeros_like(params[n])) for n, x in zip(params, gr)}
                for h in heads:
                    gi = restrict(gr, h)
                    dots[h][b, t], norms[h][b, t] = float(g[h] @ gi), float(gi @ gi)
        for h in heads:
            print(f"{p}  {h}  {token_auc(dots[h], labels, pattern, sign=1.0):.3f}  "
                  f"{token_auc(norms[h], labels, pattern):.3f}  {float(g[h].norm()):.3g}")


if __name__ == "__main__":
    main()
