"""Local learning coefficient estimation: one chain driver with kernels (SGLD, RMSProp-SGLD) and gradient
strategies, refined (weight/data) LLCs, observables, diagnostics, calibration."""

from rllc.llc.calibration import CalibrationResult, calibrate, plot_calibration
from rllc.llc.config import SamplerConfig
from rllc.llc.diagnostics import Diagnostics
from rllc.llc.estimator import LLCResult, estimate_llc, estimate_llc_many
from rllc.llc.kernels import KERNELS
from rllc.llc.kernels.sgld import sgld_step
from rllc.llc.losses import next_token_loss, per_token_loss, soft_target_loss
from rllc.llc.observe import Observe, Observed

__all__ = [
    "CalibrationResult",
    "Diagnostics",
    "KERNELS",
    "LLCResult",
    "Observe",
    "Observed",
    "SamplerConfig",
    "calibrate",
    "estimate_llc",
    "estimate_llc_many",
    "next_token_loss",
    "per_token_loss",
    "plot_calibration",
    "sgld_step",
    "soft_target_loss",
]
