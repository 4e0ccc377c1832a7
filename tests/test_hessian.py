"""Hessian trace, FIM trace and Hessian rank against exact Hessians of tiny models and known spectra."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rllc._errors import RllcError
from rllc.analysis.hessian import (
    ComponentHessian,
    HessianConfig,
    RankConfig,
    exact_hessian,
    fim_trace,
    hessian_rank,
    hessian_trace,
    lanczos_extremes,
    power_iteration,
    operator_rank,
    sample_from_model,
    sequence_logprob,
    step_coefficients,
)
from rllc.model import ModelConfig, Transformer

MICRO = ModelConfig(n_layers=1, n_heads=2, d_model=4, d_head=2, n_ctx=6, d_vocab=7)


@pytest.fixture(scope="module")
def micro():
    """A d_model-4 transformer (183 parameters) and 24 token windows."""
    model = Transformer(MICRO, seed=1)
    data = torch.randint(0, MICRO.d_vocab, (24, MICRO.n_ctx), generator=torch.Generator().manual_seed(0))
    return model, data


def _spectrum_matrix(ev: torch.Tensor, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(len(ev), len(ev), generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return (q * ev) @ q.T


def test_hvp_matches_exact_hessian(micro):
    model, data = micro
    H = exact_hessian(model, data, component="0:1")
    op = ComponentHessian(model, data, component="0:1", batch_size=7)  # chunked: weights must recombine exactly
    assert H.shape == (op.dim, op.dim) and op.dim == 4 * 4 * 2 + 3 * 2  # W_Q,K,V,O[1] + b_Q,K,V[1]
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(op.hvp(v), H @ v, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(H, H.T, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("component", ["0:1", "layer:0"])
def test_trace_within_its_standard_error_of_exact(micro, component):
    model, data = micro
    exact = float(torch.trace(exact_hessian(model, data, component=component)))
    est = hessian_trace(model, data, component=component, config=HessianConfig(n_samples=24, n_probes=60, batch_size=12,
                                                                               probe_batch=20, seed=5))
    assert est.std_error > 0
    assert abs(est.estimate - exact) < 3 * est.std_error, (est.estimate, est.std_error, exact)


def test_data_refined_trace_tracks_the_data(micro):
    model, _ = micro
    gen = torch.Generator().manual_seed(9)
    uniform = torch.randint(0, 7, (16, 6), generator=gen)
    repeated = torch.randint(0, 2, (16, 6), generator=gen)  # a different distribution: two tokens only
    cfg = HessianConfig(n_samples=16, n_probes=60, batch_size=16, probe_batch=30, seed=2)
    for data in (uniform, repeated):
        exact = float(torch.trace(exact_hessian(model, data, component="0:0")))
        est = hessian_trace(model, data, component="0:0", config=cfg)
        assert abs(est.estimate - exact) < 3 * est.std_error
    t1 = float(torch.trace(exact_hessian(model, uniform, component="0:0")))
    t2 = float(torch.trace(exact_hessian(model, repeated, component="0:0")))
    assert abs(t1 - t2) > 0.05 * max(abs(t1), abs(t2))  # the refinement matters


def test_trace_on_a_small_mlp_with_dict_masks():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(1))
    y = torch.randn(40, 2, generator=torch.Generator().manual_seed(2))
    data = torch.cat([x, y], dim=1)  # (N, 5): inputs and targets in one tensor, split by the loss

    def mse(model, batch):
        return ((model(batch[:, :3]) - batch[:, 3:]) ** 2).mean()

    mask = {"0.weight": torch.rand(5, 3, generator=torch.Generator().manual_seed(3)) > 0.4,
            "2.weight": torch.ones(2, 5, dtype=torch.bool)}
    op = ComponentHessian(mlp, data, mse, component=mask, batch_size=40)
    H = op.dense()
    assert H.shape[0] == int(mask["0.weight"].sum()) + 10
    est = hessian_trace(mlp, data, component=mask, loss_fn=mse, config=HessianConfig(40, 80, 13, probe_batch=40, seed=0))
    assert abs(est.estimate - float(torch.trace(H))) < 3 * est.std_error


def test_rank_counts_eigenvalues_above_threshold_for_a_known_spectrum():
    ev = torch.cat([torch.linspace(-900, 350, 30), torch.linspace(700, 5800, 20)]).double()  # 20 above 500
    D = torch.diag(ev)
    # A diagonal operator makes Rademacher probes exact: only the step approximation is tested.
    exact = operator_rank(lambda v: D @ v, 50, RankConfig(n_probes=2), torch.float64)
    assert round(exact.estimate) == 20 and exact.std_error < 1e-6
    A = _spectrum_matrix(ev)
    r = operator_rank(lambda v: A @ v, 50, RankConfig(n_probes=60, seed=1), torch.float64)
    assert abs(r.estimate - 20) < 3 * r.std_error


def test_lanczos_rank_uses_lanczos_extremes():
    ev = torch.cat([torch.linspace(-2.0, 0.5, 25), torch.linspace(3.0, 40.0, 15)]).double()
    A = _spectrum_matrix(ev, seed=4)
    lo, hi = lanczos_extremes(lambda v: A @ v, 40, 40, torch.Generator().manual_seed(0), torch.float64)
    assert lo == pytest.approx(-2.0, abs=1e-6) and hi == pytest.approx(40.0, abs=1e-6)
    cfg = RankConfig(strategy="lanczos", threshold_fraction=0.05, n_probes=60, lanczos_steps=40)
    r = operator_rank(lambda v: A @ v, 40, cfg, torch.float64)
    assert r.threshold == pytest.approx(2.0, rel=1e-4)
    assert abs(r.estimate - 15) < 3 * r.std_error


def test_paper_rank_presets_and_the_range_check():
    fixed, adaptive = RankConfig.paper_fixed(), RankConfig.paper_adaptive()
    assert (fixed.strategy, fixed.range, fixed.threshold, fixed.degree, fixed.n_samples, fixed.n_probes) == \
        ("fixed", (-1000.0, 6000.0), 500.0, 100, 3, 1)
    assert (adaptive.strategy, adaptive.threshold, adaptive.degree, adaptive.n_samples, adaptive.n_probes) == \
        ("adaptive", 500.0, 100, 3, 1)
    # A spectrum inside (−1000, 6000): the fixed preset counts it and says it is in range (one probe: no s.e.).
    ev = torch.cat([torch.linspace(-900, 350, 30), torch.linspace(700, 5800, 20)]).double()
    r = operator_rank(lambda v: torch.diag(ev) @ v, 50, RankConfig.paper_fixed(), torch.float64)
    assert r.in_range is True and r.warning() == "" and math.isnan(r.std_error)
    # One eigenvalue at 9000, outside the range: T_100 blows up there and the "rank" is no count; it is flagged.
    ev_out = torch.cat([ev[:-1], torch.tensor([9000.0], dtype=torch.float64)])
    D = torch.diag(ev_out)
    bad = operator_rank(lambda v: D @ v, 50, RankConfig(n_probes=2), torch.float64)
    assert bad.in_range is False and "outside the Chebyshev range" in bad.warning()
    assert abs(bad.estimate - 20) > 100  # the divergence the footnote warns of
    assert bad.extremes[1] == pytest.approx(9000.0, rel=1e-6)
    # The adaptive preset takes its range from |λ_max| (power iteration) and counts correctly, to the step's
    # resolution of about span / degree ≈ 190 (so this spectrum leaves a gap around η = 500).
    D = torch.diag(torch.cat([torch.linspace(-900, 100, 30), torch.linspace(900, 8000, 19),
                              torch.tensor([9000.0])]).double())
    good = operator_rank(lambda v: D @ v, 50, RankConfig.paper_adaptive(n_probes=2), torch.float64)
    assert good.lambda_max_abs == pytest.approx(9000.0, rel=1e-3) and good.in_range is True
    assert good.range[1] == pytest.approx(9000.0 * 1.05, rel=1e-3) and good.range[0] == -good.range[1]
    assert abs(good.estimate - 20) < 0.5


def test_power_iteration_finds_the_largest_magnitude():
    ev = torch.tensor([-50.0, 1.0, 2.0, 30.0], dtype=torch.float64)
    A = _spectrum_matrix(ev, seed=2)
    assert power_iteration(lambda v: A @ v, 4, 200, torch.Generator().manual_seed(0), torch.float64) == \
        pytest.approx(50.0, rel=1e-6)


def test_step_coefficients_approximate_a_step():
    c = step_coefficients(500.0, -1000.0, 6000.0, 100)
    lam = torch.tensor([-900.0, 0.0, 300.0, 800.0, 3000.0, 5900.0], dtype=torch.float64)
    t = (2 * lam - 5000.0) / 7000.0
    T = torch.cos(torch.arange(101, dtype=torch.float64)[:, None] * torch.arccos(t)[None])  # T_j(t)
    torch.testing.assert_close(c @ T, torch.tensor([0, 0, 0, 1, 1, 1], dtype=torch.float64), atol=0.02, rtol=0)


def test_model_hessian_rank_matches_eigenvalue_count(micro):
    model, data = micro
    H = exact_hessian(model, data, component="0:1").double()
    ev = torch.linalg.eigvalsh(H)
    gaps = ev[1:] - ev[:-1]
    i = int(torch.argmax(gaps * (ev[1:] > 0)))  # a threshold in the widest gap among positive eigenvalues
    eta = float(ev[i] + ev[i + 1]) / 2
    lo, hi = float(ev[0]) - 0.5, float(ev[-1]) + 0.5
    cfg = RankConfig(range=(lo, hi), threshold=eta, degree=80, n_probes=30, n_samples=24, batch_size=24,
                     probe_batch=30)
    r = hessian_rank(model, data, component="0:1", config=cfg)
    count = int((ev > eta).sum())
    assert abs(r.estimate - count) < max(3 * r.std_error, 0.5), (r.estimate, r.std_error, count)


def test_fim_trace_is_the_hessian_trace_on_self_generated_data(micro):
    model, _ = micro
    cfg = HessianConfig(n_samples=12, n_probes=60, batch_size=12, probe_batch=30, seed=7)
    est = fim_trace(model, component="0:0", config=cfg)
    tokens, logp = sample_from_model(model, 12, MICRO.n_ctx, torch.Generator().manual_seed(7))
    assert tokens.shape == (12, MICRO.n_ctx)
    torch.testing.assert_close(sequence_logprob(model, tokens), logp)
    exact = float(torch.trace(exact_hessian(model, tokens, component="0:0")))
    assert abs(est.estimate - exact) < 3 * est.std_error
    # Reusing the model's own samples at the same model: uniform weights, the same estimate.
    again = fim_trace(model, component="0:0", config=cfg, samples=(tokens, logp))
    assert again.ess == pytest.approx(12.0)
    assert again.estimate == pytest.approx(est.estimate, rel=1e-4, abs=1e-6)


def test_reweighted_fim_samples_at_another_checkpoint(micro):
    model, _ = micro
    other = Transformer(MICRO, seed=2)
    tokens, logp = sample_from_model(model, 10, MICRO.n_ctx, torch.Generator().manual_seed(0))
    r = fim_trace(other, component="0:0", config=HessianConfig(10, 4, 10), samples=(tokens, logp))
    assert 1.0 <= r.ess < 10.0 and r.n_samples == 10


def test_user_errors_are_rllc_errors(micro):
    model, data = micro
    with pytest.raises(RllcError):
        HessianConfig(n_probes=1)
    with pytest.raises(RllcError):
        RankConfig(threshold=7000.0)
    with pytest.raises(RllcError):
        hessian_trace(model, data, config=HessianConfig(n_samples=100))
    with pytest.raises(RllcError):
        hessian_trace(model, data, component="3:0", config=HessianConfig(n_samples=4, n_probes=2))


def test_hessian_sweep_stores_and_skips(run_dir):
    from rllc.analysis.hessian_sweep import HessianSweepConfig, hessian_sweep
    from rllc.pipeline.store import load_results

    cfg = HessianSweepConfig(trace=HessianConfig(n_samples=4, n_probes=2, batch_size=4),
                             fim=HessianConfig(n_samples=2, n_probes=2, batch_size=2),
                             rank=RankConfig(degree=10, n_probes=2, n_samples=4, batch_size=4,
                                             range=(-50.0, 50.0), threshold=1.0))
    r = hessian_sweep(run_dir, measure="trace", components="0:0,all", data="pretrain", steps="10,40",
                      config=cfg)
    assert (r.computed, r.skipped) == (4, 0)
    again = hessian_sweep(run_dir, measure="trace", components="0:0,all", data="pretrain", steps="10,40",
                          config=cfg)
    assert (again.computed, again.skipped) == (0, 4)
    assert hessian_sweep(run_dir, measure="fim", components="1:1", steps="last", config=cfg).computed == 1
    assert hessian_sweep(run_dir, measure="rank", components="0:1", steps="last", config=cfg).computed == 1
    df = load_results(run_dir)
    got = df[df.measure.isin(["hessian_trace", "fim_trace", "hessian_rank"])]
    assert sorted(got.measure.unique()) == ["fim_trace", "hessian_rank", "hessian_trace"]
    assert set(got[got.measure == "fim_trace"].data) == {"self"}
    assert got.value.notna().all() and (got["std"] >= 0).all()
