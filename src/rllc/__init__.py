"""rllc: refined local learning coefficients for developmental interpretability.

Three lines from a notebook:
    import rllc
    run = rllc.load_run("runs/demo")
    print(rllc.estimate_llc(run.model_at(run.steps[-1]), run.dataset(), component="1:0"))
"""

__version__ = "0.1.0"

from rllc._errors import RllcError  # noqa: E402
from rllc.model import Component, ModelConfig, Transformer, heads, resolve_masks  # noqa: E402
from rllc.train import Run, TrainConfig, checkpoint_schedule, load_run, preset, train  # noqa: E402

__all__ = [
    "Component", "ModelConfig", "RllcError", "Run", "TrainConfig", "Transformer", "__version__",
    "checkpoint_schedule", "heads", "load_run", "preset", "resolve_masks", "train",
]
