"""Susceptibilities, per-token LLC contributions and Bayesian influence from the chains (rllc.llc.response):
closed form on linear regression, equality with devinterp 2.0.1 on the same draws, streaming bounds, batched
probe evaluation equal to the one-at-a-time reference, one-line errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rllc._errors import RllcError
from rllc.llc import Observe, estimate_llc, estimate_llc_many, response
from rllc.llc.observe import CrossMoments, Moments


# --------------------------------------------------------------------------------------------- closed form

def _linear_problem(n=24, d=4, noise=0.1, seed=0):
    """Least squares with H = XᵀX/n = diag(1 … 2) exactly; w* the least-squares solution."""
    g = np.random.default_rng(seed)
    q, _ = np.linalg.qr(g.standard_normal((n, d)))
    X = q * np.sqrt(n) * np.sqrt(np.linspace(1.0, 2.0, d))
    y = X @ g.standard_normal(d) + noise * g.standard_normal(n)
    return X, y, np.linalg.lstsq(X, y, rcond=None)[0]


def _exact(X, y, wstar, nbeta, gamma, block, epsilon=0.0):
    """Moments under δ = w − w* ~ N(0, Σ) restricted to ``block``: Σ_V = (nβ H_VV + γ I)⁻¹ (epsilon 0), or the
    stationary law of SGLD with step ε on that Gaussian, Σ_ε = (A − ε A²/4)⁻¹ (its O(ε) bias, exactly).

    ℓ_i = ½(r_i − x_iᵀδ)², φ = ½ δᵀHδ: quadratic forms of a Gaussian, Cov(½δᵀAδ, ½δᵀBδ) = ½ tr(AΣBΣ), the
    linear–quadratic cross terms vanish, Cov(r_i x_iᵀδ, r_j x_jᵀδ) = r_i r_j x_iᵀΣx_j.
    """
    n, d = X.shape
    H = X.T @ X / n
    idx = np.arange(d) if block is None else np.asarray(block)
    A = nbeta * H[np.ix_(idx, idx)] + gamma * np.eye(len(idx))
    S = np.zeros((d, d))
    S[np.ix_(idx, idx)] = np.linalg.inv(A - epsilon * A @ A / 4)
    r = y - X @ wstar
    s = X @ S @ X.T  # s_ij = x_iᵀ Σ x_j
    var_phi = 0.5 * np.trace(H @ S @ H @ S)
    cov_phi_l = 0.5 * np.einsum("id,de,ie->i", X, S @ H @ S, X)
    cov_ll = np.outer(r, r) * s + 0.5 * s**2
    return dict(llc=nbeta * 0.5 * np.trace(H @ S), var_phi=var_phi, cov_phi_l=cov_phi_l,
                chi=var_phi - cov_phi_l, contrib=nbeta * 0.5 * np.diag(s), cov_ll=cov_ll,
                std_chi=-cov_phi_l / np.sqrt(var_phi * np.diag(cov_ll)))


def _per_sample(m, batch):
    x, y = batch
    return 0.5 * (m(x)[:, 0] - y) ** 2


def _mse(m, batch):
    return _per_sample(m, batch).mean()


# ε and draws: with A's eigenvalues in [130, 160] a step of 1e-3 mixes a quadratic observable in ~20 steps;
# 64 chains × 1000 draws (+200 burn-in) give the second moments to a few per cent.
CLOSED = dict(nbeta=30.0, gamma=100.0, epsilon=1e-3, chains=64, draws=1000, burn_in=200, batch_size=24, seed=1)


def _estimates(block, **kw):
    X, y, wstar = _linear_problem()
    Xt, yt = torch.tensor(X), torch.tensor(y)
    model = torch.nn.Linear(X.shape[1], 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor(wstar)[None])
    comp = None if block is None else {"weight": torch.tensor([[i in block for i in range(X.shape[1])]])}
    cfg = CLOSED | kw
    r = estimate_llc(model, (Xt, yt), loss_fn=_mse, component=comp, **cfg,
                     observe=Observe(_per_sample, probes={"train": (Xt, yt)}, cross=["train"]))
    ob = r.observed
    est = dict(llc=r.mean, var_phi=float(np.mean(ob.phi_var)), cov_phi_l=ob.probes["train"].cov_phi.mean(0),
               chi=response.susceptibility(ob, "train"),
               contrib=response.token_contributions(ob, "train", cfg["nbeta"]),
               std_chi=response.standardized_susceptibility(ob, "train"),
               cov_ll=response.influence(ob, "train", "covariance"))
    return est, X, y, wstar, cfg


def _rel(est, exact):
    e, v = np.asarray(exact, dtype=float), np.asarray(est, dtype=float)
    return float(np.linalg.norm(v - e) / np.linalg.norm(e))


@pytest.mark.parametrize("block", [None, [0, 2]])
def test_closed_form_linear_regression(block):
    # The full model and a weight-restricted block (coordinates 0 and 2 move): λ̂, Var(φ), Cov(φ, ℓ_i), χ_i,
    # the standardised r_i = −Corr(φ, ℓ_i), per-sample contributions nβ(E[ℓ_i] − ℓ_i(w*)) and the influence matrix Cov(ℓ_i, ℓ_j) within 10% (relative
    # error of the vector/matrix in the Frobenius norm) of the exact values of SGLD's stationary Gaussian at this ε.
    # Against the ε → 0 posterior N(w*, (nβH + γI)⁻¹) the O(ε) bias adds εa/4 ≈ 4% to Σ, ≈ 8% to its squares
    # (test_closed_form_small_step, slow, checks that limit with a 4× smaller step).
    est, X, y, wstar, cfg = _estimates(block)
    exact = _exact(X, y, wstar, cfg["nbeta"], cfg["gamma"], block, epsilon=cfg["epsilon"])
    errors = {k: _rel(est[k], exact[k]) for k in exact}
    assert max(errors.values()) < 0.10, errors
    # Exactness of what is *not* noisy: the per-sample contributions average to λ̂ (probe = the sampling data,
    # full batch), and χ's mean is Var(φ) − mean Cov(φ, ℓ_i).
    assert np.mean(est["contrib"]) == pytest.approx(est["llc"], rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("block", [None, [0, 2]])
def test_closed_form_small_step(block):
    # ε 2.5e-4: the SGLD bias on second moments falls to ~2%; every quantity within 10% of the ε → 0 posterior.
    est, X, y, wstar, cfg = _estimates(block, epsilon=2.5e-4, draws=4000, burn_in=800)
    exact = _exact(X, y, wstar, cfg["nbeta"], cfg["gamma"], block)
    errors = {k: _rel(est[k], exact[k]) for k in exact}
    assert max(errors.values()) < 0.10, errors


# ------------------------------------------------------------------------------------- streamed accumulators

def test_moments_and_cross_moments_equal_the_stored_draws():
    rng = np.random.default_rng(0)
    C, K, N = 3, 40, 6
    xs = rng.standard_normal((K, C, N)) + rng.standard_normal(N)
    ys = rng.standard_normal((K, C))
    m, cm = Moments(C, N), CrossMoments(N)
    for x, yy in zip(xs, ys):
        m.update(x, yy)
        cm.update(x)
    np.testing.assert_allclose(m.mean, xs.mean(0))
    np.testing.assert_allclose(m.var, xs.var(0, ddof=1))
    np.testing.assert_allclose(m.var_y, ys.var(0, ddof=1))
    cov = ((xs - xs.mean(0)) * (ys - ys.mean(0))[:, :, None]).sum(0) / (K - 1)
    np.testing.assert_allclose(m.cov_with_loss, cov)
    np.testing.assert_allclose(cm.covariance, np.cov(xs.reshape(K * C, N), rowvar=False), atol=1e-12)
    # A diverged chain (NaN row) stops contributing to the pooled cross-moment.
    cm2 = CrossMoments(N)
    for x in xs:
        x = x.copy()
        x[1] = np.nan
        cm2.update(x)
    np.testing.assert_allclose(cm2.covariance, np.cov(xs[:, [0, 2]].reshape(-1, N), rowvar=False), atol=1e-12)


def test_cross_moments_of_2000_values_are_bounded_whatever_the_draws():
    # A 2,000 × 2,000 influence matrix: N² + N float64 (32 MB) held, whatever the number of draws — a trace of
    # 4 chains × 200 draws × 2,000 values is never stored.
    cm = CrossMoments(2000)
    before = cm.nbytes()
    rng = np.random.default_rng(1)
    for _ in range(5):
        cm.update(rng.standard_normal((4, 2000)))
    assert cm.nbytes() == before == (2000**2 + 2000) * 8
    assert cm.count == 20


def test_observed_size_does_not_grow_with_draws():
    from rllc.llc import bif

    model = _transformer()
    tokens = torch.randint(0, 37, (32, 12), generator=torch.Generator().manual_seed(0))
    sizes = []
    for draws in (3, 12):
        b = bif(model, tokens, tokens[:3], component="1:0", chains=2, draws=draws, batch_size=4)
        ob = b.llc.observed
        sizes.append(sum(a.nbytes for pm in ob.probes.values() for a in (pm.mean, pm.var, pm.cov_phi, pm.cross)))
        assert b.covariance.shape == (3 * 11, 3 * 11)
    assert sizes[0] == sizes[1]


# --------------------------------------------------------------------------- batched evaluation = reference

def _transformer(seed=1):
    from rllc.model import ModelConfig, Transformer

    model = Transformer(ModelConfig(n_layers=2, n_heads=3, d_model=24, d_head=8, n_ctx=12, d_vocab=37), seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


def _assert_same_observed(a, b, atol):
    np.testing.assert_allclose(a.phi_mean, b.phi_mean, atol=atol)
    np.testing.assert_allclose(a.phi_var, b.phi_var, atol=atol)
    for name in a.probes:
        pa, pb = a.probes[name], b.probes[name]
        for f in ("mean", "var", "cov_phi", "at_anchor"):
            np.testing.assert_allclose(getattr(pa, f), getattr(pb, f), atol=atol, err_msg=f"{name}.{f}")
        if pa.cross is not None:
            np.testing.assert_allclose(pa.cross, pb.cross, atol=atol)
    if a.minibatch_mean is not None:
        np.testing.assert_allclose(a.minibatch_mean, b.minibatch_mean, atol=atol)


@pytest.mark.parametrize("paired", [False, True])
def test_batched_probe_evaluation_equals_the_loop(paired):
    # rllc Transformer, per-token loss: the stacked forward over components × chains (probe_eval.StackedEval)
    # records the same moments as one forward per weight set.
    model = _transformer()
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 37, (40, 12), generator=g)
    probes = {"a": torch.randint(0, 37, (3, 12), generator=g), "b": torch.randint(0, 37, (2, 12), generator=g),
              "short": torch.randint(0, 37, (2, 7), generator=g)}  # a and b share one forward, short has its own
    kw = dict(chains=3, draws=4, batch_size=4, seed=2, paired=paired)
    comps = ["0:1", "1:2", "layer:1", None]  # heads of both layers (HeadEval), a layer and the full model (stacked)
    obs = dict(probes=probes, cross=["a"], minibatch=True)
    fast = estimate_llc_many(model, tokens, comps, observe=Observe(**obs), **kw)
    ref = estimate_llc_many(model, tokens, comps, observe=Observe(**obs, batched=False), **kw)
    for f, r in zip(fast, ref):
        np.testing.assert_allclose(f.loss_trace, r.loss_trace)  # observing does not change the chains
        _assert_same_observed(f.observed, r.observed, atol=1e-5)
        assert f.observed.probes["a"].shape == (3, 11)
        assert f.observed.paired == paired
    # φ is the chain's loss shift: nβ · its chain mean is the chain's λ̂.
    np.testing.assert_allclose(kw_nbeta(fast[0]) * fast[0].observed.phi_mean, fast[0].per_chain, rtol=1e-6)


@pytest.mark.parametrize("fold_budget", [None, 0])
def test_head_probe_evaluation_equals_the_loop(monkeypatch, fold_budget):
    # Single heads (probe_eval.HeadEval): only the moving head recomputed at its layer, the last layer's
    # unembedding folded through the head's span (kept per probe, or rebuilt per call past the budget).
    from rllc.llc import probe_eval
    from rllc.llc.layout import Layout
    from rllc.model import ModelConfig, Transformer
    from rllc.model.components import resolve_masks

    if fold_budget is not None:
        monkeypatch.setattr(probe_eval, "_MAX_FOLD_CACHE", fold_budget)
    model = Transformer(ModelConfig(n_layers=3, n_heads=3, d_model=24, d_head=8, n_ctx=12, d_vocab=37), seed=4)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    batch = torch.randint(0, 37, (5, 12), generator=g)
    anchor = {n: p.detach() for n, p in model.named_parameters()}
    fast, ref = probe_eval.HeadEval(model), probe_eval.LoopEval(model, None)
    for layer in range(3):
        heads = [2, 0, 2, 1]
        names = [f"blocks.{layer}.attn.{k}" for k in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")]
        w = {n: anchor[n].expand(len(heads), *anchor[n].shape).clone() for n in names}
        for i, h in enumerate(heads):
            for n in names:
                w[n][i, h] += 0.2 * torch.randn(w[n][i, h].shape, generator=g)
        want = ref.values(w, batch)
        for _ in range(2):  # the second call reads the probe's cached w* pieces (and folds)
            torch.testing.assert_close(fast.values(w, batch, layer, heads), want, rtol=1e-5, atol=1e-5)
    assert probe_eval.head_of_layout(model, Layout(model, resolve_masks(model, "2:1"))) == (2, 1)
    assert probe_eval.head_of_layout(model, Layout(model, resolve_masks(model, "layer:1"))) is None


def test_probes_are_evaluated_at_draws_only(monkeypatch):
    # Burn-in steps and the steps between draws never evaluate the probes: one evaluation per recorded draw.
    from rllc.llc import probe_eval

    calls = []
    original = probe_eval.HeadEval.values
    monkeypatch.setattr(probe_eval.HeadEval, "values", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    model = _transformer()
    tokens = torch.randint(0, 37, (40, 12), generator=torch.Generator().manual_seed(3))
    estimate_llc_many(model, tokens, ["0:1", "1:2"], observe=Observe(probes={"a": tokens[:3]}), chains=2, draws=3,
                      burn_in=5, steps_per_draw=2, batch_size=4)
    assert len(calls) == 3 * 2  # 3 draws × one call per layer (heads of one layer share a call)


def kw_nbeta(result):
    return result.config.nbeta


def test_vmap_probe_evaluation_equals_the_loop():
    # Any model and per-sample loss: vmap(functional_call) over chains = the loop.
    X, y, wstar = _linear_problem()
    Xt, yt = torch.tensor(X), torch.tensor(y)
    model = torch.nn.Linear(4, 1, bias=False).double()
    obs = dict(per_sample_loss=_per_sample, probes={"p": (Xt[:7], yt[:7])}, cross=["p"], minibatch=True)
    kw = dict(loss_fn=_mse, chains=3, draws=6, batch_size=5, nbeta=30.0, gamma=100.0)
    fast = estimate_llc(model, (Xt, yt), observe=Observe(**obs), **kw)
    ref = estimate_llc(model, (Xt, yt), observe=Observe(**obs, batched=False), **kw)
    _assert_same_observed(fast.observed, ref.observed, atol=1e-10)


# ------------------------------------------------------------------------------- devinterp 2.0.1 equality

def _record_positions(monkeypatch):
    """Capture every draw's chain positions (the draws themselves) as the driver hands them to the observer."""
    from rllc.llc import driver

    seen = []
    original = driver._Observer.record

    def record(self, positions, *a, **k):
        seen.append([p.detach().clone() for p in positions])
        return original(self, positions, *a, **k)

    monkeypatch.setattr(driver._Observer, "record", record)
    return seen


def _per_token_at(model, layout, positions, tokens):
    """(C, K, n, T−1) per-token losses at the recorded positions (C, d) per draw, one forward each."""
    from rllc.llc.losses import per_token_loss

    work = __import__("copy").deepcopy(model)
    params = dict(work.named_parameters())
    star = {n: p.detach().clone() for n, p in params.items()}
    out = []
    with torch.no_grad():
        for pos in positions:  # draws
            row = []
            for c in range(pos.shape[0]):
                for n, p in params.items():
                    p.copy_(star[n])
                layout.scatter_(params, pos[c])
                row.append(per_token_loss(work, tokens).double().numpy())
            out.append(row)
    return np.asarray(out).transpose(1, 0, 2, 3)


def test_susceptibilities_equal_devinterp_2_0_1_on_the_same_draws(monkeypatch):
    devinterp = pytest.importorskip("devinterp")
    from importlib.metadata import version

    try:
        v = version("devinterp")
    except Exception:
        v = getattr(devinterp, "__version__", "")
    di = pytest.importorskip("devinterp.slt.susceptibilities")
    if not str(v).startswith("2."):
        pytest.skip(f"devinterp {v} is installed; the comparison needs 2.x")
    xr = pytest.importorskip("xarray")
    from rllc.llc.layout import Layout
    from rllc.model.components import resolve_masks

    model = _transformer().double()  # float64: the comparison is of the estimators, not of float32 rounding
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, 37, (6, 12), generator=g)
    probe = torch.randint(0, 37, (3, 12), generator=g)
    comps = ["0:1", None]
    seen = _record_positions(monkeypatch)
    # Full batch: φ = L(w) − L(w*) on the sampling data, which is also devinterp's sampling_task observable.
    # batched=False: one strategy runs both components, so each recorded draw holds both components' positions.
    res = estimate_llc_many(model, tokens, comps, chains=3, draws=7, batch_size=6, seed=4, batched=False,
                            observe=Observe(probes={"pile": tokens, "code": probe}))
    init = res[0].init_loss
    trees, ours = {}, {}
    for q, (comp, r) in enumerate(zip(comps, res)):
        layout = Layout(model, resolve_masks(model, comp))
        pos = [p[q] for p in seen]
        pile = _per_token_at(model, layout, pos, tokens)  # (C, K, 6, 11)
        code = _per_token_at(model, layout, pos, probe)
        ds = xr.Dataset({
            "loss_pile": (("chain", "draw", "batch_pile", "token_pos"), pile),
            "loss_code": (("chain", "draw", "batch_code", "token_pos"), code),
            "init_loss": (("chain", "token_pos"), np.full((3, 11), init)),
            "input_ids_pile": (("batch_pile", "token"), tokens.numpy()),
            "input_ids_code": (("batch_code", "token"), probe.numpy()),
        })
        name = "full" if comp is None else "l0h1"
        trees[name] = xr.DataTree(dataset=ds)
        ours[name] = r.observed
        # The draws we replayed are the ones the engine streamed (φ and the probe moments).
        np.testing.assert_allclose(r.observed.phi_mean, pile.mean(axis=(2, 3)).mean(1) - init, atol=1e-12)
    out = di.compute_susceptibilities(trees, "pile")
    theirs = out["susceptibilities"].dataset["sus"].sel(wr="l0h1").values  # (code tokens,)
    mine = response.susceptibility(ours["l0h1"], "code", sampling="pile", reference=ours["full"])
    assert np.max(np.abs(mine.reshape(-1) - theirs)) < 1e-12
    assert np.max(np.abs(theirs)) > 0  # a real comparison, not of zeros


# -------------------------------------------------------------------------------------------- top level

def test_susceptibilities_api_and_contributions():
    from rllc import susceptibilities

    model = _transformer()
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, 37, (32, 12), generator=g)
    probes = {"a": torch.randint(0, 37, (3, 12), generator=g), "b": tokens[:4]}
    r = susceptibilities(model, tokens, ["0:1", "1:2"], probes=probes, sampling="b", chains=3, draws=6,
                         batch_size=4)
    assert r.components == ["0:1", "1:2"] and r.probes == ["a", "b"]
    assert r.per_token["0:1"]["a"].shape == (3, 11) and r.tokens["a"].shape == (3, 12)
    # The contributions' mean is the data-refined λ̂ on that probe: nβ(E[L_probe] − L_probe(w*)).
    ob = r.llc["0:1"].observed.probes["a"]
    drllc = 30.0 * (ob.mean.mean(axis=1).mean() - ob.at_anchor.mean())
    assert np.mean(r.contributions["0:1"]["a"]) == pytest.approx(drllc, rel=1e-9)
    assert r.mean["1:2"]["a"] == pytest.approx(float(r.per_token["1:2"]["a"].mean()))
    assert np.isfinite(r.se["0:1"]["a"]) and r.se["0:1"]["a"] > 0
    import json

    json.dumps(r.to_dict())
    arrays = r.arrays()
    assert arrays["susceptibility/0:1/a"].shape == (3, 11) and "tokens/b" in arrays
    # With sampling = L on the sampled tokens' probe, χ's mean over that probe's tokens is 0 (ℓ_i − L averages
    # to zero), exactly.
    assert r.mean["0:1"]["b"] == pytest.approx(0.0, abs=1e-12)


def test_bif_top_influencers():
    from rllc import bif

    model = _transformer()
    tokens = torch.randint(0, 37, (32, 12), generator=torch.Generator().manual_seed(8))
    b = bif(model, tokens, tokens[:4], component=None, chains=2, draws=8, batch_size=4)
    n = 4 * 11
    assert b.covariance.shape == (n, n) and np.allclose(np.diag(b.correlation), 1.0)
    np.testing.assert_allclose(b.covariance, b.covariance.T, atol=1e-12)
    top = b.top((1, 3), 5)
    q = b.index((1, 3))
    assert q == 1 * 11 + 3 and len(top) == 5 and q not in [i for i, _ in top]
    values = [v for _, v in top]
    assert values == sorted(values, reverse=True) and values[0] == np.nanmax(np.delete(b.correlation[q], q))
    seq = bif(model, tokens, tokens[:4], level="sequence", chains=2, draws=8, batch_size=4)
    assert seq.covariance.shape == (4, 4)
    # Printed and drawn: the query and its influencers in context.
    from rllc.report.attributions import format_influencers, influencers_html, top_tokens, top_tokens_html

    text = format_influencers(b, (1, 3), 3, decode=lambda i: f"<{i}>")
    assert text.splitlines()[0].split()[:2] == ["query", "1:4"] and len(text.splitlines()) == 4
    assert f"[<{int(tokens[1, 4])}>]" in text.splitlines()[0]
    page = influencers_html(b, (1, 3), 3, decode=lambda i: f"<{i}>")
    assert page.count("<tr>") == 4 and "&lt;" in page and "outline" in page  # escaped, query outlined
    v = np.arange(4 * 11, dtype=float).reshape(4, 11) - 20
    assert top_tokens(v, 2) == [(3, 10, 23.0), (3, 9, 22.0)] and top_tokens(v, 1, largest=False) == [(0, 0, -20.0)]
    assert top_tokens_html(tokens[:4].numpy(), v, 2).count("<tr>") == 3


# ------------------------------------------------------------------------------------------------ errors

def test_bad_inputs_are_one_line_errors():
    from rllc import bif, susceptibilities

    model = _transformer()
    tokens = torch.randint(0, 37, (16, 12), generator=torch.Generator().manual_seed(9))
    cases = [
        (lambda: estimate_llc(model, tokens, observe=Observe(probes={"a": tokens[:2]}, cross=["nope"]), draws=2),
         "not probes"),
        (lambda: estimate_llc(model, tokens, observe=Observe(probes=[tokens]), draws=2), "mapping"),
        (lambda: estimate_llc(model, tokens, observe=Observe(probes={"a": tokens}, cross_level="pair"), draws=2),
         "cross_level"),
        (lambda: susceptibilities(model, tokens, probes={}), "non-empty"),
        (lambda: susceptibilities(model, tokens, probes={"a": tokens[:2]}, sampling="b"), "sampling probe"),
        (lambda: susceptibilities(model, tokens, probes={"a": tokens[:2]}, reference="mine"), "reference"),
        (lambda: bif(model, tokens, tokens[:2], level="word"), "level"),
    ]
    for fn, match in cases:
        with pytest.raises(RllcError, match=match) as e:
            fn()
        assert "\n" not in str(e.value)
    r = estimate_llc(model, tokens, observe=Observe(probes={"a": tokens[:2]}), chains=2, draws=3, batch_size=4)
    for fn, match in [(lambda: response.susceptibility(r.observed, "zzz"), "not observed"),
                      (lambda: response.influence(r.observed, "a"), "no cross-moments"),
                      (lambda: response.influence(r.observed, "a", kind="both"), "no cross-moments")]:
        with pytest.raises(RllcError, match=match) as e:
            fn()
        assert "\n" not in str(e.value)
    with pytest.raises(RllcError, match="scalar"):
        estimate_llc(model, tokens, observe=Observe(per_sample_loss=lambda m, b: m(b).mean(), probes={"a": tokens}),
                     draws=2, chains=2)


def test_susceptibility_standard_error_matches_the_spread_over_independent_runs():
    # The per-token s.e. over chains is the spread of χ̂ between independent estimates: 6 seeds × 8 chains × 100
    # draws on the linear problem, block {0, 2}; median over samples of (mean per-run s.e.) / (std of χ̂ over runs).
    # (Each chain's own term of the pooled average would overstate it: E_c[φ]·(E_c[ℓ_i] − E[ℓ_i]) cancels in the
    # mean over chains but not in its spread.)
    X, y, wstar = _linear_problem()
    Xt, yt = torch.tensor(X), torch.tensor(y)
    model = torch.nn.Linear(X.shape[1], 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor(wstar)[None])
    comp = {"weight": torch.tensor([[i in (0, 2) for i in range(X.shape[1])]])}
    chis, ses = [], []
    for seed in range(6):
        cfg = CLOSED | dict(chains=8, draws=100, burn_in=200, seed=seed)
        r = estimate_llc(model, (Xt, yt), loss_fn=_mse, component=comp, **cfg,
                         observe=Observe(_per_sample, probes={"train": (Xt, yt)}))
        ch = response.susceptibility_chains(r.observed, "train")
        np.testing.assert_allclose(ch.mean(0), response.susceptibility(r.observed, "train"), rtol=1e-12)
        chis.append(ch.mean(0))
        ses.append(response.standard_error(ch))
        # φ + a has the same covariances, so the same χ̂ and the same standard error, for any constant a.
        shifted = dataclasses.replace(r.observed, phi_mean=r.observed.phi_mean + 5.0)
        np.testing.assert_allclose(response.susceptibility_chains(shifted, "train"), ch, rtol=1e-9, atol=1e-12)
    ratio = np.median(np.mean(ses, axis=0) / np.std(chis, axis=0, ddof=1))
    assert 0.6 < ratio < 1.6, ratio


def test_layer_norm_into_the_augmented_buffer_equals_layer_norm():
    # probe_eval._ln_augmented writes [LayerNorm(r), 1] into a kept buffer (the unembedding's bias rides in its GEMM)
    # and _ln_scale reads the scale off one vector norm: both equal torch's LayerNorm to float rounding, on a strided
    # input (the predicting positions) with a large per-row offset, and the buffer's reuse at another size.
    import torch.nn.functional as F

    from rllc.llc import probe_eval, unembed

    g = torch.Generator().manual_seed(7)
    ws = unembed.Workspace()
    for N, B, T, D in ((3, 4, 9, 24), (2, 5, 6, 24)):
        r = 2.0 * torch.randn(N, B, T, D, generator=g) + 40.0 * torch.randn(N, B, T, 1, generator=g)
        x = probe_eval._ln_augmented(r[:, :, :-1], 1e-5, ws)  # (N, B·(T−1), D+1)
        want = F.layer_norm(r[:, :, :-1], (D,), eps=1e-5).reshape(N, B * (T - 1), D)
        torch.testing.assert_close(x[..., :D], want, rtol=1e-5, atol=1e-5)
        assert torch.equal(x[..., D], torch.ones(N, B * (T - 1)))
        scale = probe_eval._ln_scale(r, 1e-5)
        torch.testing.assert_close(scale, torch.rsqrt(r.var(-1, unbiased=False, keepdim=True) + 1e-5), rtol=1e-5,
                                   atol=0)


def test_probe_losses_in_row_blocks_equal_the_loop(monkeypatch):
    # probe_eval._blocked_nll makes the logits a row block at a time (blocks of 4 rows here, 55 rows: a short last
    # block): lower-layer heads (HeadEval) and the full model (StackedEval) still equal one forward per weight set.
    from rllc.llc import probe_eval

    monkeypatch.setattr(probe_eval, "_BLOCK_BYTES", 4 * 37 * 4)
    from rllc.model import ModelConfig, Transformer

    model = Transformer(ModelConfig(n_layers=3, n_heads=3, d_model=24, d_head=8, n_ctx=12, d_vocab=37), seed=4)
    g = torch.Generator().manual_seed(6)
    batch = torch.randint(0, 37, (5, 12), generator=g)
    anchor = {n: p.detach() for n, p in model.named_parameters()}
    heads_eval, stacked, ref = probe_eval.HeadEval(model), probe_eval.StackedEval(model), probe_eval.LoopEval(model, None)
    for layer in range(2):
        heads = [1, 0, 1]
        names = [f"blocks.{layer}.attn.{k}" for k in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")]
        w = {n: anchor[n].expand(len(heads), *anchor[n].shape).clone() for n in names}
        for i, h in enumerate(heads):
            for n in names:
                w[n][i, h] += 0.2 * torch.randn(w[n][i, h].shape, generator=g)
        torch.testing.assert_close(heads_eval.values(w, batch, layer, heads), ref.values(w, batch), rtol=1e-5,
                                   atol=1e-5)
    wf = {n: t.expand(2, *t.shape) + 0.1 * torch.randn(2, *t.shape, generator=g) for n, t in anchor.items()}
    torch.testing.assert_close(stacked.values(wf, batch), ref.values(wf, batch), rtol=1e-5, atol=1e-5)
