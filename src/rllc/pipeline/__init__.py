"""One pipeline for every measure over checkpoints: plan jobs, skip what is stored, run tasks on an executor
(in-process, process pool, Ray), write every row from one process, announce the measured cost, show progress.

    plan (jobs.py) ──▶ driver.run_plan ──tasks──▶ executor (executors.py) ──▶ worker.run_task ──▶ measure function
                           │  ◀──────────────────────── rows ───────────────────────────────────┘
                           └──▶ the results store (store.py), the only writer

Measures are registered in `measures.py`; data sets are keyed by what they resolve to (`data.py`); checkpoints
are chosen by `steps.select_steps`.
"""

from rllc.pipeline.data import DataKey, ModelRef, data_key, resolve_data, split_data_specs
from rllc.pipeline.driver import RunResult, run_plan, run_with, summary_table
from rllc.pipeline.executors import InProcessExecutor, PoolExecutor, RayExecutor, local_ray_settings, make_executor
from rllc.pipeline.jobs import Job, Plan, Task, plan_family
from rllc.pipeline.measures import MEASURES, Measure
from rllc.pipeline.steps import select_steps
from rllc.pipeline.store import ResultRow, ResultStore, config_hash, export_results, load_results
from rllc.pipeline.worker import TaskContext, run_task

__all__ = [
    "DataKey", "InProcessExecutor", "Job", "MEASURES", "Measure", "ModelRef", "Plan", "PoolExecutor", "RayExecutor",
    "ResultRow", "ResultStore", "RunResult", "Task", "TaskContext", "config_hash", "data_key", "export_results",
    "load_results", "local_ray_settings", "make_executor", "plan_family", "resolve_data", "run_plan", "run_task",
    "run_with", "select_steps", "split_data_specs", "summary_table",
]
