"""Print the closed-form validation table of the LLC estimator (markdown), as in docs/llc.md.

Run: .venv/bin/python benchmarks/closed_form_table.py [--rrr] [--sampler rmsprop_sgld]
(a few minutes on 2 CPU cores; --rrr: RRR rows only). The cases and settings are those of
tests/test_llc_closed_form.py; --sampler runs them with another kernel at the tests' step-size scale.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _closed_form import (Packed, PaddedRRR, Product, aoyagi_watanabe, aw_case, module_loss,  # noqa: E402
                          packed_loss, quad_prod_k1, rrr_exact)
from test_llc_closed_form import (DUMMY, PROD_SETTINGS, RRR_SETTINGS, RRR_SLOW, _kernel, _mse,  # noqa: E402
                                  _whitened_regression)

SAMPLER = sys.argv[sys.argv.index("--sampler") + 1] if "--sampler" in sys.argv else "sgld"


def K(eps: float) -> dict:
    """The kernel and its ε (RMSProp-SGLD at a tenth of SGLD's, as in the tests)."""
    return _kernel(SAMPLER, eps)

from rllc.llc import estimate_llc, estimate_llc_many  # noqa: E402


def row(case, lam, res, hp):
    se = res.std / math.sqrt(len(res.per_chain))
    print(f"| {case} | {lam:.4g} | {res.mean:.4g} | {res.std:.3g} (se {se:.2g}) | {100 * (res.mean / lam - 1):+.1f}% | {hp} |")


def main(rrr_only: bool = False) -> None:
    print(f"kernel {SAMPLER} (ε × {_kernel(SAMPLER, 1.0)['epsilon']:g} of the listed ε)")
    print("| case | true λ | estimate | std across chains | rel. error | hyperparameters |")
    print("|---|---|---|---|---|---|")
    if rrr_only:
        return rrr_rows()
    for d in (2, 5, 12):
        h = np.linspace(1.0, 2.0, d)
        model, data = _whitened_regression(d, 64, h, seed=d)
        nb, g = 2000.0, 1.0
        eps = 0.04 / (nb * h.max() + g)
        res = estimate_llc(model, data, loss_fn=_mse, nbeta=nb, gamma=g, chains=200, burn_in=200,
                           draws=400, batch_size=64, seed=d, **K(eps))
        row(f"regular, d={d}", d / 2, res, f"nβ={nb:g} γ={g:g} ε={eps:.2g} C=200 burn 200 draws 400")
    nb, s0 = 1e4, 0.1
    sums = [(1, 2), (2, 2), (1, 2, 3)]
    problems = [("sum", [s0 ** (-2 * k) / nb for k in ks], ks) for ks in sums]
    model = Packed(problems)
    res = estimate_llc_many(model, DUMMY, [model.component(q) for q in range(len(problems))], loss_fn=packed_loss,
                            nbeta=nb, gamma=1.0, chains=200, burn_in=1500, draws=1500, batch_size=1, **K(3e-5))
    for ks, r in zip(sums, res):
        name = " + ".join(f"w{i + 1}^{2 * k}" for i, k in enumerate(ks))
        row(f"normal crossing {name}", sum(1 / (2 * k) for k in ks), r, "nβ=1e4 γ=1 ε=3e-5 C=200 burn 1500 draws 1500")
    rrr_rows()
    for ks in [(1, 2), (1, 1)]:
        r = estimate_llc(Product(1.0, ks), DUMMY, loss_fn=module_loss, batch_size=1,
                         **{**PROD_SETTINGS, **K(PROD_SETTINGS["epsilon"])})
        exact = quad_prod_k1(1.0, ks[1], 10.0, 1.0)
        row(f"product w1^2 w2^{2 * ks[1]} (λ={1 / (2 * max(ks)):g}); true = exact finite-nβ", exact, r,
            "nβ=10 γ=1 ε=2e-3 C=1000 burn 3000 draws 3000")


def rrr_rows() -> None:
    configs = RRR_SLOW + [(2, 3, 2, 2)]  # + case 4 at the full nβ, to show its SGLD bias (docs/llc.md)
    model = PaddedRRR(configs)
    res = estimate_llc_many(model, DUMMY, [model.component(q) for q in range(len(configs))], loss_fn=module_loss,
                            batch_size=1, **{**RRR_SETTINGS, **K(RRR_SETTINGS["epsilon"])})
    for cfg, r in zip(configs, res):
        lam, m = aoyagi_watanabe(*cfg[:4])
        s = cfg[4] if len(cfg) > 4 else 1.0
        nb = RRR_SETTINGS["nbeta"] * s
        extra = ""
        if cfg[:4] == (2, 3, 2, 2):
            exact, _ = rrr_exact(*cfg[:4], nb, RRR_SETTINGS["gamma"])
            extra = f", exact finite-nβ {exact:.4g}"
        hp = f"nβ={nb:g}{' (loss ×%g)' % s if s != 1 else ''} γ=1 ε=5e-4 C=64 burn 2000 draws 2000"
        row(f"RRR (M,H,N,r)={cfg[:4]} case {aw_case(*cfg[:4])} m={m}{extra}", lam, r, hp)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(rrr_only="--rrr" in sys.argv)
