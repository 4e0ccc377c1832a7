"""Linear response from the chains: susceptibilities, per-token LLC contributions and Bayesian influence functions.

Pure functions of the moments a run recorded (``rllc.llc.Observed``, numpy in, numpy out). Notation: the local
posterior of a component V at w*, p(w) ∝ exp(−nβ L_n(w) − γ/2 ‖w − w*‖²) over V's weights (the rest fixed at
w*); φ(w) the component's loss shift (``observe.py``: paired L_B(w) − L_B(w*) on the draw's minibatch, or
L(w) − L(w*) full batch), so nβ E[φ] = λ̂; ℓ_i(w) the loss of probe sample (token) i; E, Cov over the draws of
all surviving chains pooled (chains × draws as one sample, the way devinterp 2.0.1 averages).

**Susceptibility** (Baker, Wang, Hoogland, Pathak, Murfet 2025, "Structural Inference", App. C.4; devinterp
2.0.1 ``compute_susceptibilities``). Shifting the data distribution from the sampling distribution q towards the
point mass on token i, q_h = (1 − h) q + h δ_i, moves the posterior mean of φ by
d/dh E_h[φ] |_{h=0} = −nβ Cov(φ, ℓ_i − L), L the loss on q. Like the paper's estimator and devinterp, the
per-token susceptibility drops the factor nβ:

    χ_i = −Cov(φ, ℓ_i − L) = E[φ (L − ℓ_i)] − E[φ] · E_ref[L − ℓ_i]

Negative χ_i: token i's loss moves with the component's loss (the component's learning lowers it); positive:
it moves against it. L is the mean loss of the ``sampling`` probe (a fixed sample of q evaluated at every draw:
devinterp's ``sampling_task``) or, with ``sampling=None``, φ itself (L = φ + const, Cov(φ, L) = Var(φ): exact
when the sampler runs full batch; with minibatches Var(φ) also holds the minibatch noise of φ, which shifts
every χ_i of a probe by the same constant — rankings and differences between tokens are unaffected).
E_ref is the expectation under the component's own posterior (``reference=None``: χ is exactly the negative
covariance) or under another run's (``reference=`` the full model's ``Observed``: devinterp's convention, which
centres every component's ℓ_i − L on the full model's posterior means). With ``sampling`` and the full model as
``reference``, ``susceptibility`` equals devinterp 2.0.1's ``compute_susceptibilities`` on the same draws (tests
check it to float64 rounding).

**Standardised susceptibility** (``standardized_susceptibility``): the token-dependent part of χ_i on the
scale of a correlation,

    r_i = −Cov(φ, ℓ_i) / (σ_φ σ_i) = −Corr(φ, ℓ_i),   σ_φ² = Var(φ), σ_i² = Var(ℓ_i),

with within-chain moments pooled over the surviving chains (each chain's covariance and variances about its own
means, averaged over chains, then divided). χ_i + Cov(φ, L) = −Cov(φ, ℓ_i) = σ_φ σ_i r_i: r_i is χ_i without
its constant (L's share, the same for every token) and without the token's own posterior spread σ_i, which
otherwise decides the ranking of tokens by |χ_i|. Why it matters: on a trained model the tokens the model
predicts badly (high loss, diffuse predictions) have the largest σ_i under *any* perturbation, so −χ_i ranks
them first for every head; r_i asks how tightly token i's loss follows the component's loss shift instead.
With minibatch chains σ_φ also holds the minibatch noise of φ, which scales every r_i of a component by one
constant factor (rankings of tokens are unaffected).

**Per-token LLC contributions**: c_i = nβ (E[ℓ_i] − ℓ_i(w*)); their mean over a probe is the data-refined λ̂
of the component on that probe (Wang et al. 2024 eq. 4–6, weight- and data-refined).

**Bayesian influence function** (Kreer, Wu, Adam, Furman, Hoogland 2025): BIF(z_i, φ) = −Cov(ℓ_i, φ); between
probe samples, the matrix Cov(ℓ_i, ℓ_j) and its correlation. ``influence`` returns Cov / Corr themselves (sign
+, devinterp's ``compute_bif`` "influences", chains × draws stacked, ddof 1): a large positive entry means
upweighting sample j lowers the loss on i (j is a proponent of i); the BIF in Kreer's sign is its negative.
"""

from __future__ import annotations

import numpy as np

from rllc._errors import RllcError
from rllc.llc.observe import Observed, ProbeMoments


def _alive(observed: Observed, *pms: ProbeMoments) -> np.ndarray:
    """(C,) chains that survived: finite φ moments and finite probe moments."""
    ok = np.isfinite(observed.phi_mean) & np.isfinite(observed.phi_var)
    for pm in pms:
        ok &= np.isfinite(pm.mean).all(axis=1) & np.isfinite(pm.cov_phi).all(axis=1)
    if not ok.any():
        raise RllcError("every chain diverged or no draw was recorded; lower epsilon or raise gamma and rerun")
    return ok


def _draw_factor(observed: Observed) -> float:
    """(K − 1)/K: ddof-1 moments per chain back to means over its K draws."""
    k = observed.draws
    if k < 2:
        raise RllcError(f"susceptibilities need at least 2 draws per chain, got {k}")
    return (k - 1) / k


def _pooled_mean(observed: Observed, pm: ProbeMoments) -> np.ndarray:
    """(N,) E[ℓ_i] pooled over the surviving chains."""
    return pm.mean[_alive(observed, pm)].mean(axis=0)


def susceptibility_chains(observed: Observed, probe: str, *, sampling: str | None = None,
                          reference: Observed | None = None) -> np.ndarray:
    """χ_i per surviving chain: (C_alive, *shape); their mean over chains is ``susceptibility``, their spread its
    standard error (``standard_error``).

    The pooled estimate χ̂ (module docstring) is the average over chains of t_c = E_c[φ(L − ℓ_i)] − E_c[φ]·
    E_ref[L − ℓ_i]. Chain c's value is t_c − Ē[φ]·d_c, d_c = E_c[L − ℓ_i] − mean_c' E_c'[L − ℓ_i], Ē[φ] the
    chains' average E_c[φ]: since Σ_c d_c = 0 the mean is still χ̂ exactly, and t_c − Ē[φ] d_c =
    −Cov_c(φ, ℓ_i − L) + (E_c[φ] − Ē[φ])·(…): within-chain covariance plus the between-chain term, what varies
    between independent estimates. t_c itself also holds Ē[φ]·d_c, the chain's mean-loss deviation times the
    mean of φ, which cancels in the average but dominates t_c's spread when E[φ] is large against φ's
    fluctuations (on the cpu demo at 4 chains × 20 draws it made the s.e. ~10× too large: 1.7e-2 against
    1.5e-3 per token). With few chains the between-chain term is not independent between chains, so the s.e.
    runs somewhat low: on the demo at 4 × 20 draws 1.9e-3 against a measured spread of χ̂ over 75 independent
    blocks of 2.4e-3 (median over tokens).
    """
    pm = observed.probe(probe)
    sp = observed.probe(sampling) if sampling is not None else None
    f = _draw_factor(observed)
    ok = _alive(observed, pm, *([sp] if sp is not None else []))
    m_phi = observed.phi_mean[ok]  # (C,)
    e_phi_l = pm.cov_phi[ok] * f + m_phi[:, None] * pm.mean[ok]  # E_c[φ ℓ_i], (C, N)
    ref = observed if reference is None else reference
    if sampling is None:
        e_phi_L = observed.phi_var[ok] * f + m_phi**2  # E_c[φ²]: L = φ + const
        rok = _alive(ref)
        ref_L = ref.phi_mean[rok].mean()
    else:
        e_phi_L = (sp.cov_phi[ok] * f + m_phi[:, None] * sp.mean[ok]).mean(axis=1)  # E_c[φ L_S], L_S = mean_j ℓ_j
        rsp = ref.probe(sampling)
        ref_L = _pooled_mean(ref, rsp).mean()
    rpm = ref.probe(probe)
    if rpm.mean.shape[1] != pm.mean.shape[1]:
        raise RllcError(f"reference probe {probe!r} has {rpm.mean.shape[1]} values, this one {pm.mean.shape[1]}")
    ref_l = _pooled_mean(ref, rpm)  # (N,)
    terms = e_phi_L[:, None] - e_phi_l - m_phi[:, None] * (ref_L - ref_l)[None, :]  # (C, N), mean = χ̂
    own_L = m_phi if sampling is None else sp.mean[ok].mean(axis=1)  # E_c[L], (C,)
    dev = own_L[:, None] - pm.mean[ok]  # E_c[L − ℓ_i]
    dev = dev - dev.mean(axis=0)  # its deviation from the chains' average: sums to 0 over chains
    return (terms - m_phi.mean() * dev).reshape(len(m_phi), *pm.shape)


def susceptibility(observed: Observed, probe: str, *, sampling: str | None = None,
                   reference: Observed | None = None) -> np.ndarray:
    """Per-token susceptibility χ_i = −Cov(φ, ℓ_i − L) of the component's φ to each value of ``probe``.

    Args:
        observed: the component's recorded moments (``LLCResult.observed``).
        probe: the probe's name.
        sampling: the name of a probe that samples the sampling distribution (its mean loss is L), or None for
            L = φ + const (module docstring).
        reference: whose posterior means centre ℓ_i − L: None for this component's own (χ = −Cov), or the full
            model's ``Observed`` (devinterp 2.0.1's convention).

    Returns:
        (*shape) of the probe's per-sample loss, e.g. (n_seq, T−1): χ_i, float64.
    """
    return susceptibility_chains(observed, probe, sampling=sampling, reference=reference).mean(axis=0)


def standardized_susceptibility(observed: Observed, probe: str) -> np.ndarray:
    """Standardised per-token susceptibility r_i = −Corr(φ, ℓ_i) (module docstring), pooled within chains.

    Args:
        observed: the component's recorded moments (``LLCResult.observed``); probe: the probe's name.

    Returns:
        (*shape) of the probe's per-sample loss, in [−1, 1], float64; NaN where a value never moved.
    """
    pm = observed.probe(probe)
    ok = _alive(observed, pm)
    cov = pm.cov_phi[ok].mean(axis=0)  # (N,) mean within-chain Cov(φ, ℓ_i)
    var_l = pm.var[ok].mean(axis=0)
    var_phi = float(observed.phi_var[ok].mean())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = -cov / np.sqrt(var_phi * var_l)
    r[~(var_l > 0)] = np.nan
    return r.reshape(pm.shape)


def standardized_susceptibility_chains(observed: Observed, probe: str) -> np.ndarray:
    """r_i of each surviving chain from its own moments: (C_alive, *shape); their spread gives a standard error
    (``standard_error``) of ``standardized_susceptibility``."""
    pm = observed.probe(probe)
    ok = _alive(observed, pm)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = -pm.cov_phi[ok] / np.sqrt(observed.phi_var[ok][:, None] * pm.var[ok])
    r[~(pm.var[ok] > 0)] = np.nan
    return r.reshape(int(ok.sum()), *pm.shape)


def token_contributions_chains(observed: Observed, probe: str, nbeta: float) -> np.ndarray:
    """nβ (E_c[ℓ_i] − ℓ_i(w*)) per surviving chain: (C_alive, *shape)."""
    pm = observed.probe(probe)
    ok = _alive(observed, pm)
    return (nbeta * (pm.mean[ok] - pm.at_anchor[None, :])).reshape(int(ok.sum()), *pm.shape)


def token_contributions(observed: Observed, probe: str, nbeta: float) -> np.ndarray:
    """Per-token LLC contributions nβ (E[ℓ_i] − ℓ_i(w*)): (*shape); their mean is the data-refined λ̂ on the probe.

    Args:
        observed: the component's recorded moments; probe: the probe's name; nbeta: the sampler's nβ.
    """
    return token_contributions_chains(observed, probe, nbeta).mean(axis=0)


def standard_error(per_chain: np.ndarray) -> np.ndarray | float:
    """Standard error of a mean over chains from per-chain values (C, ...): std (ddof 1) / √C; NaN with C < 2."""
    c = per_chain.shape[0]
    if c < 2:
        return np.full(per_chain.shape[1:], np.nan) if per_chain.ndim > 1 else float("nan")
    se = per_chain.std(axis=0, ddof=1) / np.sqrt(c)
    return float(se) if np.ndim(se) == 0 else se


def influence(observed: Observed, probe: str, kind: str = "correlation") -> np.ndarray:
    """The Bayesian influence matrix between the probe's samples: Cov(ℓ_i, ℓ_j) or its correlation.

    Args:
        observed: moments recorded with ``Observe(cross=[probe])``.
        probe: the probe's name.
        kind: "covariance" (chains × draws stacked, ddof 1) or "correlation" (diagonal 1; NaN where a value never
            moved).

    Returns:
        (N, N), N = the probe's values flattened (``cross_level="token"``) or its samples ("sequence").
    """
    pm = observed.probe(probe)
    if pm.cross is None:
        raise RllcError(f"probe {probe!r} has no cross-moments; record them with Observe(cross=[{probe!r}])")
    if kind == "covariance":
        return pm.cross.copy()
    if kind != "correlation":
        raise RllcError(f"influence kind must be 'correlation' or 'covariance', got {kind!r}")
    return correlation(pm.cross)


def correlation(cov: np.ndarray) -> np.ndarray:
    """A covariance matrix as correlations, diagonal 1, NaN in rows/columns of zero variance."""
    sd = np.sqrt(np.clip(np.diag(cov), 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(sd, sd)
    corr[np.diag_indices_from(corr)] = np.where(sd > 0, 1.0, np.nan)
    return corr
