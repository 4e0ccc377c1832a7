"""LLC sweeps over checkpoints x components x data sets: the "llc" measure of the pipeline (`rllc.pipeline`),
whose executors, store and step selection are re-exported here."""

from rllc.pipeline import (
    InProcessExecutor, Job, ModelRef, Plan, PoolExecutor, RayExecutor, ResultRow, ResultStore, RunResult, Task,
    config_hash, export_results, load_results, local_ray_settings, make_executor, resolve_data, run_plan, run_task,
    select_steps, split_data_specs, summary_table,
)
from rllc.sweep.sweep import (
    DEMO_SWEEP, SweepConfig, SweepResult, decode_trace, demo_sweep, expand_components, plan_sweep, run_sweep,
)

__all__ = [
    "DEMO_SWEEP", "InProcessExecutor", "Job", "ModelRef", "Plan", "PoolExecutor", "RayExecutor", "ResultRow",
    "ResultStore", "RunResult", "SweepConfig", "SweepResult", "Task", "config_hash", "decode_trace", "demo_sweep",
    "expand_components", "export_results", "load_results", "local_ray_settings", "make_executor", "plan_sweep",
    "resolve_data", "run_plan", "run_sweep", "run_task", "select_steps", "split_data_specs", "summary_table",
]
