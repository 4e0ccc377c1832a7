"""Convergence diagnostics on traces with known autocorrelation: AR(1) chains x_t = φ x_{t−1} + sqrt(1 − φ²) ξ_t
have integrated autocorrelation time τ = (1 + φ)/(1 − φ), so C chains of K draws hold C·K/τ effective samples."""

from __future__ import annotations

import numpy as np
import pytest

from rllc.llc.diagnostics import diagnose, ess_bulk, ess_per_chain, mser_burn_in, rhat


def _ar1(phi: float, chains: int, draws: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty((chains, draws))
    x[:, 0] = rng.standard_normal(chains)  # stationary start
    s = np.sqrt(1 - phi**2)
    for t in range(1, draws):
        x[:, t] = phi * x[:, t - 1] + s * rng.standard_normal(chains)
    return x


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9])
def test_bulk_ess_of_ar1_chains_is_draws_over_tau(phi):
    C, K = 8, 4000
    tau = (1 + phi) / (1 - phi)
    x = _ar1(phi, C, K, seed=int(phi * 10))
    ess = ess_bulk(x)
    assert ess == pytest.approx(C * K / tau, rel=0.12), (ess, C * K / tau)
    per = ess_per_chain(x)
    assert per.shape == (C,)
    assert np.median(per) == pytest.approx(K / tau, rel=0.2)


def test_split_rhat_is_one_for_mixed_chains_and_flags_disagreement_and_trends():
    x = _ar1(0.5, 4, 2000, seed=1)
    assert rhat(x) == pytest.approx(1.0, abs=0.01)
    shifted = x + np.array([0.0, 0.0, 0.0, 1.0])[:, None]  # one chain elsewhere
    assert rhat(shifted) > 1.05
    trend = x + np.linspace(0, 3, 2000)  # every chain drifts the same way: plain R-hat misses it, split catches it
    assert rhat(trend) > 1.1
    heavy = x * np.array([1.0, 1.0, 1.0, 4.0])[:, None]  # same mean, one chain 4× wider: the folded (tail) R-hat
    assert rhat(heavy) > 1.05


def test_burn_in_and_short_chain_bias():
    K, C, nbeta = 400, 8, 10.0
    noise = 0.01 * _ar1(0.3, C, K, seed=2)
    rise = 0.2 * (1 - np.exp(-np.arange(K) / 30.0))  # relaxes over ~100 draws, then flat at 0.2
    trace = 1.0 + rise + noise
    burn = mser_burn_in(trace)
    assert 60 <= burn <= 200, burn
    assert mser_burn_in(1.0 + noise) <= 20
    # Still rising across the whole trace: the diagnostic says how far below the late level the estimate sits.
    slow = 1.0 + 0.2 * np.arange(K) / K + noise  # linear rise: mean of all − mean of second half = −0.05
    per_chain = nbeta * (slow.mean(axis=1) - 1.0)
    d = diagnose(slow, per_chain, np.full(C, -1), nbeta, float(per_chain.mean()))
    assert not d.converged
    assert d.bias == pytest.approx(nbeta * -0.05, abs=3 * d.bias_se + 0.01)
    assert any("probably low" in m for m in d.messages)
    flat = diagnose(1.0 + noise, nbeta * noise.mean(axis=1), np.full(C, -1), nbeta, 0.0)
    assert flat.converged and abs(flat.bias) < 4 * flat.bias_se + 1e-3
    js = flat.to_dict()
    assert {"ess", "ess_per_chain", "rhat", "burn_in", "bias"} <= set(js)


@pytest.mark.parametrize("draws", [1, 3, 4])
def test_too_few_draws_are_never_called_converged(draws):
    # With fewer than 4 draws per chain split-R-hat and ESS are undefined (NaN): such an estimate used to read
    # "converged" because no test could fail; now it is not converged, with a message saying why. 4 draws judge.
    C, nbeta = 4, 10.0
    trace = 1.0 + 0.01 * _ar1(0.0, C, draws, seed=3)
    per_chain = nbeta * (trace.mean(axis=1) - 1.0)
    d = diagnose(trace, per_chain, np.full(C, -1), nbeta, float(per_chain.mean()))
    if draws < 4:
        assert np.isnan(d.rhat) and not d.converged
        assert any(f"only {draws} draw" in m and "too few" in m for m in d.messages)
    else:
        assert np.isfinite(d.rhat) and d.converged
        assert not any("too few" in m for m in d.messages)
