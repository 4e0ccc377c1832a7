"""Training: configs and presets, the loop, checkpoints, and the run directory."""

from rllc.train.config import PRESETS, TrainConfig, checkpoint_schedule, preset
from rllc.train.loop import token_cross_entropy, train_model
from rllc.train.run import Run, RunConfig, load_run

__all__ = ["PRESETS", "Run", "RunConfig", "TrainConfig", "checkpoint_schedule", "load_run", "token_cross_entropy",
           "preset", "train_model"]
