"""Ground truth of per-token susceptibilities against the number of draws (issue 14 item 6): is a missed AUC noise
or the estimand?

Run: python benchmarks/susceptibility_ground_truth.py RUN_DIR [--heads 1:3,0:3] [--draws 20,80,320,1280]
     [--chains 4] [--threads 1]
Model: the last checkpoint of RUN_DIR (a cpu-preset demo run), the demo sweep's sampler (SGLD ε 1e-3, nβ 30,
γ 200, batch 8, 50 burn-in steps, paired; weight-refined: one head moves) on 512 pre-training windows; probes:
synthetic.induction and synthetic.repeat, 8 validation windows each (seed 1, the demo's probe windows), labelled
by the generator (`Pattern` bits). For each number of draws per chain (a fresh estimate each, seed 0, so the
larger runs extend the smaller ones' chains) it prints, per head and probe, the ROC AUC against the positions
labelled INDUCTION|REPEAT of: −χ (`response.susceptibility`), −r (the standardised `standardized_susceptibility`)
and the per-token LLC contribution; the split-half reliability of χ over tokens (chains 0..C/2 against the rest:
the correlation of the two halves' within-chain Cov(φ, ℓ_i) over the probe's tokens — near 0 is noise, near 1 resolved); the median
|χ_i|/s.e. and the wall time. Convergence of an AUC as the reliability approaches 1 is the noise-free AUC of
that score.
Beside them, per head and probe (the same for every number of draws): the AUC of the head's own per-token
mean-ablation effect at w* (`per_token_ablation_effects`, means of 64 pre-training windows: what a score measuring
exactly what the head does to each token's loss reaches), the AUC of −ℓ_i(w*) (the loss alone), and the Spearman
correlation over tokens of −χ with the ablation effect and with ℓ_i(w*) (does χ follow what the head does, or how
badly the token is predicted?). Heads of other types in --heads are the controls.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a cpu-preset run directory (e.g. a copy of an `rllc demo` output)")
    ap.add_argument("--heads", default="1:0,1:2,1:3,0:3,0:0,0:1,0:2,1:1")
    ap.add_argument("--draws", default="20,80,320,1280")
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import rllc
    from rllc.analysis.susceptibility import token_auc
    from rllc.data.synthetic import Pattern
    from rllc.llc import response
    from rllc.llc.observe import Observe
    from rllc.pipeline.data import probe_labels, resolve_data

    run = rllc.load_run(args.run)
    step = run.steps[-1]
    model = run.model_at(step)
    data, _ = resolve_data(run, "pretrain", 512, seed=0, split="train")
    names = ("synthetic.induction", "synthetic.repeat")
    probes = {p: resolve_data(run, p, 8, seed=1, split="val")[0] for p in names}
    labels = {p: probe_labels(run, p, 8, seed=1, split="val") for p in names}
    pattern = int(Pattern.INDUCTION | Pattern.REPEAT)
    heads = args.heads.split(",")
    from scipy.stats import spearmanr

    from rllc.analysis.ablation import head_z_means, per_token_ablation_effects, per_token_loss

    means = head_z_means(model, run.sample_tokens("pretrain", 64, seed=0))
    hl = [tuple(int(x) for x in h.split(":")) for h in heads]
    effects = {p: dict(zip(heads, per_token_ablation_effects(model, probes[p], hl, means=means).numpy()))
               for p in names}
    loss = {p: per_token_loss(model, probes[p]).numpy() for p in names}
    print("reference scores: head  probe  AUC(ablation effect)  AUC(−loss at w*)")
    for h in heads:
        for p in names:
            print(f"  {h}  {p}  {token_auc(effects[p][h], labels[p], pattern, sign=1.0):.3f}  "
                  f"{token_auc(loss[p], labels[p], pattern):.3f}")
    print(f"run {args.run} step {step}; heads {heads}; {args.chains} chains; sampler ε 1e-3, nβ 30, γ 200, batch 8, "
          "50 burn-in, paired; probes 8 windows each")
    print("draws/chain  head  probe  AUC(−χ)  AUC(−r)  AUC(contribution)  split-half r(χ)  median |χ|/se  "
          "ρ(−χ, ablation)  ρ(−χ, loss)  wall s")
    for k in (int(x) for x in args.draws.split(",")):
        t0 = time.perf_counter()
        res = rllc.estimate_llc_many(model, data, heads, observe=Observe(probes=probes), epsilon=1e-3, nbeta=30.0,
                                     gamma=200.0, chains=args.chains, draws=k, batch_size=8, burn_in=50,
                                     paired=True, seed=0)
        wall = time.perf_counter() - t0
        for h, r in zip(heads, res):
            ob = r.observed
            for p in names:
                chains = response.susceptibility_chains(ob, p)
                chi = chains.mean(axis=0)
                cov = ob.probe(p).cov_phi  # (C, N) within-chain Cov(φ, ℓ_i): independent between chains
                half = len(cov) // 2
                rel = float(np.corrcoef(cov[:half].mean(0), cov[half:].mean(0))[0, 1])
                snr = float(np.median(np.abs(chi) / response.standard_error(chains)))
                a_chi = token_auc(chi, labels[p], pattern)
                a_std = token_auc(response.standardized_susceptibility(ob, p), labels[p], pattern)
                a_c = token_auc(response.token_contributions(ob, p, 30.0), labels[p], pattern, sign=1.0)
                r_ab = spearmanr(-chi.ravel(), effects[p][h].ravel()).statistic
                r_l = spearmanr(-chi.ravel(), loss[p].ravel()).statistic
                print(f"{k:11d}  {h}  {p}  {a_chi:.3f}  {a_std:.3f}  {a_c:.3f}  {rel:.2f}  {snr:.2f}  {r_ab:.2f}  "
                      f"{r_l:.2f}  {wall:.0f}")


if __name__ == "__main__":
    main()
