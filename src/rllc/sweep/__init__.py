"""Sweeps over checkpoints x components x data sets, the executors that run them, and the SQLite results store."""

from rllc.sweep.executors import InProcessExecutor, PoolExecutor, RayExecutor, local_ray_settings, make_executor
from rllc.sweep.refs import ModelRef, resolve_data, split_data_specs
from rllc.sweep.store import ResultRow, ResultStore, config_hash, export_results, load_results
from rllc.sweep.sweep import (
    DEMO_SWEEP, Job, Plan, SweepConfig, SweepResult, Task, decode_trace, demo_sweep, expand_components,
    plan_sweep, run_plan, run_sweep, run_task, select_steps, summary_table,
)

__all__ = [
    "DEMO_SWEEP", "InProcessExecutor", "Job", "ModelRef", "Plan", "PoolExecutor", "RayExecutor", "ResultRow",
    "ResultStore", "SweepConfig", "SweepResult", "Task", "config_hash", "decode_trace", "demo_sweep",
    "expand_components", "export_results", "load_results", "local_ray_settings", "make_executor", "plan_sweep",
    "resolve_data", "run_plan", "run_sweep", "run_task", "select_steps", "split_data_specs", "summary_table",
]
