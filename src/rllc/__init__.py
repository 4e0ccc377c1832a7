"""rllc: refined local learning coefficients for developmental interpretability.

Every subpackage name is the subpackage (`rllc.train`, `rllc.sweep`, ...); the functions that train and sweep are
`rllc.train_model` and `rllc.run_sweep`. Three lines from a notebook:
    import rllc
    run = rllc.load_run("runs/demo")
    print(rllc.estimate_llc(run.model_at(run.steps[-1]), run.sample_tokens(), component="1:0").mean)
"""

__version__ = "0.1.0"

from rllc._alloc import keep_freed_memory  # noqa: E402

keep_freed_memory()  # reuse freed tensor memory: a third of a CPU step was page faults (see rllc/_alloc.py)

from rllc._errors import RllcError  # noqa: E402
from rllc.llc import (BIFResult, LLCResult, SamplerConfig, SusceptibilityResult, bif, calibrate,  # noqa: E402
                      estimate_llc, estimate_llc_many, susceptibilities)
from rllc.model import Component, ModelConfig, Transformer, component_masks, heads, resolve_masks  # noqa: E402
from rllc.sweep import export_results, load_results, run_sweep  # noqa: E402
from rllc.report.html import write_report  # noqa: E402
from rllc.train import Run, TrainConfig, checkpoint_schedule, load_run, preset, train_model  # noqa: E402

__all__ = [
    "BIFResult", "Component", "LLCResult", "ModelConfig", "RllcError", "Run", "SamplerConfig", "SusceptibilityResult", "TrainConfig", "Transformer",
    "__version__", "bif", "calibrate", "checkpoint_schedule", "component_masks", "estimate_llc", "estimate_llc_many", "heads", "keep_freed_memory",
    "export_results", "load_results", "load_run", "preset", "resolve_masks", "run_sweep", "susceptibilities", "train_model", "write_report",
]
