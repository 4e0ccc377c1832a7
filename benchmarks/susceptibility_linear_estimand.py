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

With ``--gaussian S`` it also computes the whole estimand under that Gaussian, to every order and without SGLD or
minibatch noise: S antithetic pairs w* ± δ, δ ~ N(0, I/γ) over the head's weights, φ the exact loss on the 512
sampling windows minus its value at w*, ℓ_i each probe token's loss. By the symmetry of the Gaussian,
Cov(φ, ℓ_i) = E[o_φ o_i] + Cov(e_φ, e_i) exactly, with o = (f(w*+δ) − f(w*−δ))/2 the odd part (the linear term
gᵀδ and every odd order) and e = (f(w*+δ) + f(w*−δ))/2 the even part (the curvature term ½δᵀHδ, ½ tr(HΣH_iΣ) in
the covariance, and every even order): the AUC of each part and of their sum, and the split-half reliability of
the sum over tokens (pairs 0..S/2 against the rest).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a cpu-preset run directory (e.g. a copy of an `rllc demo` output)")
    ap.add_argument("--heads", default="1:0,1:2,1:3,0:3,0:0,0:1,0:2,1:1")
    ap.add_argument("--gaussian", type=int, default=0, metavar="S",
                    help="also the estimand under N(w*, I/γ) from S antithetic pairs (0: skip)")
    ap.add_argument("--skip-linear", action="store_true", help="only the --gaussian part")
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

    if args.gaussian:
        gaussian_estimand(run, model, data, heads, masks, args.gaussian)
    if args.skip_linear:
        return
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


@torch.no_grad()
def gaussian_estimand(run, model, data, heads, masks, pairs: int, gamma: float = 200.0) -> None:  # noqa: ANN001
    """The odd / even / whole Cov(φ, ℓ_i) under N(w*, I/γ) by antithetic pairs (see the module docstring)."""
    from rllc.analysis.susceptibility import token_auc
    from rllc.data.synthetic import Pattern
    from rllc.pipeline.data import probe_labels, resolve_data
    from rllc.train.loop import token_cross_entropy

    pattern = int(Pattern.INDUCTION | Pattern.REPEAT)
    names = ("synthetic.induction", "synthetic.repeat")
    probes = torch.cat([resolve_data(run, p, 8, seed=1, split="val")[0] for p in names])  # (16, T)
    labels = {p: probe_labels(run, p, 8, seed=1, split="val") for p in names}
    params = dict(model.named_parameters())
    star = {n: p.detach().clone() for n, p in params.items()}

    def losses() -> tuple[float, np.ndarray]:
        phi = sum(float(token_cross_entropy(model(data[i:i + 128]), data[i:i + 128])) * len(data[i:i + 128])
                  for i in range(0, len(data), 128)) / len(data)
        return phi, token_cross_entropy(model(probes), probes, per_token=True).numpy()  # (16, T − 1)

    phi0, ell0 = losses()
    g = torch.Generator().manual_seed(0)
    print(f"estimand under N(w*, I/γ), γ = {gamma:g}, {pairs} antithetic pairs; AUC of Cov(φ, ℓ_i) (= −χ_i + const): "
          "odd part (linear), even part (curvature), whole; split-half r of the whole")
    print("probe  head  AUC(odd)  AUC(even)  AUC(whole)  split-half r  share of Var from the odd part")
    for h in heads:
        o_phi, e_phi, o_ell, e_ell = [], [], [], []
        for _ in range(pairs):
            delta = {n: torch.randn(int(m.sum()), generator=g) / gamma**0.5 for n, m in masks[h].items()}
            out = []
            for sign in (1.0, -1.0):
                for n, m in masks[h].items():
                    params[n][m] = star[n][m] + sign * delta[n]
                out.append(losses())
            for n in masks[h]:
                params[n].copy_(star[n])
            (pp, lp), (pm, lm) = out
            o_phi.append((pp - pm) / 2), e_phi.append((pp + pm) / 2 - phi0)
            o_ell.append((lp - lm) / 2), e_ell.append((lp + lm) / 2 - ell0)
        o_phi, e_phi, o_ell, e_ell = map(np.asarray, (o_phi, e_phi, o_ell, e_ell))  # (S,), (S, 16, T − 1)

        def cov(a: np.ndarray, b: np.ndarray, odd: bool) -> np.ndarray:  # odd parts have mean 0 exactly
            if odd:
                return np.einsum("s,s...->...", a, b) / len(a)
            return np.einsum("s,s...->...", a - a.mean(), b - b.mean(0)) / (len(a) - 1)

        odd, even = cov(o_phi, o_ell, True), cov(e_phi, e_ell, False)
        half = pairs // 2
        halves = [cov(o_phi[s], o_ell[s], True) + cov(e_phi[s], e_ell[s], False)
                  for s in (slice(0, half), slice(half, pairs))]
        share = float(np.mean(o_phi**2) / (np.mean(o_phi**2) + np.var(e_phi, ddof=1)))
        for k, p in enumerate(names):
            rows = slice(8 * k, 8 * k + 8)
            rel = float(np.corrcoef(halves[0][rows].ravel(), halves[1][rows].ravel())[0, 1])
            print(f"{p}  {h}  {token_auc(odd[rows], labels[p], pattern, sign=1.0):.3f}  "
                  f"{token_auc(even[rows], labels[p], pattern, sign=1.0):.3f}  "
                  f"{token_auc((odd + even)[rows], labels[p], pattern, sign=1.0):.3f}  {rel:.2f}  {share:.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
