"""Local learning coefficient estimation: one chain driver with kernels (SGLD, RMSProp-SGLD) and gradient
strategies, refined (weight/data) LLCs, observables and what they give from the same chains (susceptibilities, per-token
contributions, Bayesian influence), diagnostics, calibration."""

from rllc.llc.calibration import CalibrationResult, calibrate, plot_calibration
from rllc.llc.config import SamplerConfig
from rllc.llc.diagnostics import Diagnostics
from rllc.llc.estimator import LLCResult, estimate_llc, estimate_llc_many
from rllc.llc.kernels import KERNELS
from rllc.llc.kernels.sgld import sgld_step
from rllc.llc.losses import next_token_loss, per_token_loss, soft_target_loss
from rllc.llc.observe import Observe, Observed, ProbeMoments
from rllc.llc.response import influence, susceptibility, token_contributions
from rllc.llc.structure import BIFResult, SusceptibilityResult, bif, susceptibilities

__all__ = [
    "BIFResult",
    "CalibrationResult",
    "Diagnostics",
    "KERNELS",
    "LLCResult",
    "Observe",
    "Observed",
    "ProbeMoments",
    "SamplerConfig",
    "SusceptibilityResult",
    "bif",
    "calibrate",
    "estimate_llc",
    "estimate_llc_many",
    "influence",
    "next_token_loss",
    "per_token_loss",
    "plot_calibration",
    "sgld_step",
    "soft_target_loss",
    "susceptibilities",
    "susceptibility",
    "token_contributions",
]
