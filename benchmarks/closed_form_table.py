"""Print the closed-form validation table of the LLC estimator (markdown), as in docs/llc.md.

Run: python benchmarks/closed_form_table.py [--sampler rmsprop_sgld] [--rrr] [--chains-scale F]
(a few minutes on 2 CPU cores; --rrr: RRR rows only; --chains-scale 0.25: a quarter of the chains, a quick look).
The cases and settings are those of tests/test_llc_closed_form.py; --sampler runs them with another kernel at the
tests' step-size scale and its default settings. Besides λ each row gives, where it can be computed independently
of the sampler, the exact finite-nβ expectation E[nβ(L − L*)] of the localised posterior the chains target
(Gaussian closed form; 1-D quadrature; for RRR `rrr_exact` anchored at w*, shown only when its importance-sampling
ESS exceeds 1000) and the estimate's error against it.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _closed_form import (Packed, PaddedRRR, Product, aoyagi_watanabe, aw_case, module_loss,  # noqa: E402
                          packed_loss, quad_1d, quad_prod_k1, rrr_exact)
from test_llc_closed_form import (DUMMY, PROD_SETTINGS, RRR_SETTINGS, RRR_SLOW, _gauss_exact, _kernel,  # noqa: E402
                                  _mse, _whitened_regression)

from rllc.llc import estimate_llc, estimate_llc_many  # noqa: E402
from rllc.llc.kernels import get_kernel  # noqa: E402

SAMPLER = sys.argv[sys.argv.index("--sampler") + 1] if "--sampler" in sys.argv else "sgld"
SCALE = float(sys.argv[sys.argv.index("--chains-scale") + 1]) if "--chains-scale" in sys.argv else 1.0


def K(eps: float) -> dict:
    """The kernel and its ε (RMSProp-SGLD at a tenth of SGLD's, as in the tests)."""
    return _kernel(SAMPLER, eps)


def C(n: int) -> int:
    return max(8, round(n * SCALE))


def row(case, lam, res, hp, exact=None):
    se = res.std / math.sqrt(len(res.per_chain))
    ex = "—" if exact is None else f"{exact:.4g}"
    vs = "—" if exact is None else f"{100 * (res.mean / exact - 1):+.1f}%"
    print(f"| {case} | {lam:.4g} | {ex} | {res.mean:.4g} | {res.std:.3g} (se {se:.2g}) | "
          f"{100 * (res.mean / lam - 1):+.1f}% | {vs} | {hp} |", flush=True)


def main(rrr_only: bool = False) -> None:
    settings = get_kernel(SAMPLER).DEFAULTS
    print(f"kernel {SAMPLER} (ε × {_kernel(SAMPLER, 1.0)['epsilon']:g} of the listed ε"
          f"{', settings ' + str(settings) if settings else ''}); chains × {SCALE:g}")
    print("| case | λ | exact finite-nβ | estimate | std across chains | vs λ | vs exact | hyperparameters |")
    print("|---|---|---|---|---|---|---|---|")
    if rrr_only:
        return rrr_rows()
    for d in (2, 5, 12):
        h = np.linspace(1.0, 2.0, d)
        model, data = _whitened_regression(d, 64, h, seed=d)
        nb, g = 2000.0, 1.0
        eps = 0.04 / (nb * h.max() + g)
        res = estimate_llc(model, data, loss_fn=_mse, nbeta=nb, gamma=g, chains=C(200), burn_in=200,
                           draws=400, batch_size=64, seed=d, **K(eps))
        row(f"regular, d={d}", d / 2, res, f"nβ={nb:g} γ={g:g} ε={eps:.2g} C={C(200)} burn 200 draws 400",
            _gauss_exact(h, nb, g, eps)[0])
    nb, s0 = 1e4, 0.1
    sums = [(1, 2), (2, 2), (1, 2, 3)]
    problems = [("sum", [s0 ** (-2 * k) / nb for k in ks], ks) for ks in sums]
    model = Packed(problems)
    res = estimate_llc_many(model, DUMMY, [model.component(q) for q in range(len(problems))], loss_fn=packed_loss,
                            nbeta=nb, gamma=1.0, chains=C(200), burn_in=1500, draws=1500, batch_size=1, **K(3e-5))
    for ks, r, p in zip(sums, res, problems):
        name = " + ".join(f"w{i + 1}^{2 * k}" for i, k in enumerate(ks))
        exact = sum(quad_1d(c, k, nb, 1.0) for c, k in zip(p[1], ks))
        row(f"normal crossing {name}", sum(1 / (2 * k) for k in ks), r,
            f"nβ=1e4 γ=1 ε=3e-5 C={C(200)} burn 1500 draws 1500", exact)
    rrr_rows()
    for ks in [(1, 2), (1, 1)]:
        ps = {**PROD_SETTINGS, "chains": C(PROD_SETTINGS["chains"])}
        r = estimate_llc(Product(1.0, ks), DUMMY, loss_fn=module_loss, batch_size=1,
                         **{**ps, **K(PROD_SETTINGS["epsilon"])})
        exact = quad_prod_k1(1.0, ks[1], 10.0, 1.0)
        row(f"product w1^2 w2^{2 * ks[1]}", 1 / (2 * max(ks)), r,
            f"nβ=10 γ=1 ε=2e-3 C={ps['chains']} burn 3000 draws 3000", exact)


def rrr_rows() -> None:
    configs = RRR_SLOW + [(2, 3, 2, 2)]  # + case 4 at the full nβ, to show its SGLD bias (docs/llc.md)
    model = PaddedRRR(configs)
    rs = {**RRR_SETTINGS, "chains": C(RRR_SETTINGS["chains"])}
    res = estimate_llc_many(model, DUMMY, [model.component(q) for q in range(len(configs))], loss_fn=module_loss,
                            batch_size=1, **{**rs, **K(RRR_SETTINGS["epsilon"])})
    for cfg, r in zip(configs, res):
        lam, m = aoyagi_watanabe(*cfg[:4])
        s = cfg[4] if len(cfg) > 4 else 1.0
        nb = RRR_SETTINGS["nbeta"] * s
        exact, ess = rrr_exact(*cfg[:4], nb, RRR_SETTINGS["gamma"], anchored=True, scales=(1.0, 0.3))
        hp = f"nβ={nb:g}{' (loss ×%g)' % s if s != 1 else ''} γ=1 ε=5e-4 C={rs['chains']} burn 2000 draws 2000"
        row(f"RRR (M,H,N,r)={cfg[:4]} case {aw_case(*cfg[:4])} m={m}", lam, r, hp, exact if ess > 1000 else None)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(rrr_only="--rrr" in sys.argv)
