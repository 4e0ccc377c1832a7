"""Local learning coefficient estimation: SGLD sampler, refined (weight/data) LLCs, diagnostics, calibration."""

from rllc.llc.calibration import CalibrationResult, calibrate, plot_calibration
from rllc.llc.config import SamplerConfig
from rllc.llc.diagnostics import Diagnostics
from rllc.llc.estimator import LLCResult, estimate_llc, estimate_llc_many
from rllc.llc.losses import next_token_loss, soft_target_loss
from rllc.llc.sgld import sgld_step

__all__ = [
    "CalibrationResult",
    "Diagnostics",
    "LLCResult",
    "SamplerConfig",
    "calibrate",
    "estimate_llc",
    "estimate_llc_many",
    "next_token_loss",
    "plot_calibration",
    "sgld_step",
    "soft_target_loss",
]
