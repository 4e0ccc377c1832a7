"""What runs a task, in whichever process the executor chose: load what the task needs (cached per process: a
worker's consecutive tasks share a run, a checkpoint and a few data samples), call the family's function, and
return its rows (only the requested components'). Workers never write the store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rllc.pipeline.jobs import Task
from rllc.pipeline.measures import measure
from rllc.pipeline.store import ResultRow

Progress = Callable[[int], None]  # called with units of work just finished

_CACHE: dict[str, dict[tuple, Any]] = {}  # per process: slot -> {key: value}, oldest first


def cached(slot: str, key: tuple, make: Callable[[], Any], keep: int = 1) -> Any:
    """`make()` memoised per process under (slot, key), keeping the `keep` most recent keys of the slot."""
    entries = _CACHE.setdefault(slot, {})
    if key not in entries:
        while len(entries) >= keep:
            entries.pop(next(iter(entries)))
        entries[key] = make()
    return entries[key]


class TaskContext:
    """What a measure's function gets besides its task: the run, the checkpoint's model and cached data.

    Attributes:
        task: the task. advance: report `n` units of work done (drives the progress bar in-process; a no-op in
            pool and Ray workers, where the bar moves when the task's rows arrive).
    """

    def __init__(self, task: Task, advance: Progress | None = None) -> None:
        self.task = task
        self.advance: Progress = advance or (lambda n: None)

    @property
    def run(self):  # noqa: ANN201 - Run
        from rllc.train import load_run

        return cached("run", (self.task.run_dir,), lambda: load_run(self.task.run_dir))

    @property
    def model(self):  # noqa: ANN201 - Transformer (eval mode)
        return cached("model", (self.task.run_dir, self.task.step), lambda: self.run.model_at(self.task.step))

    def counter(self, units: int) -> Callable[[int, int], None]:
        """A `progress(done, total)` callable for one call of `units` units of work that forwards to `advance`
        (the estimators' progress interface)."""
        seen = [0]

        def forward(done: int, total: int) -> None:
            now = done * units // max(total, 1)
            if now > seen[0]:
                self.advance(now - seen[0])
                seen[0] = now

        return forward

    def data(self, n: int, *, seed: int = 0, split: str = "train", spec: str | None = None):  # noqa: ANN201
        """(tokens (n, n_ctx), loss_fn) of the task's data set (or `spec`), as `data.resolve_data` returns them."""
        from rllc.pipeline.data import resolve_data

        spec = spec or self.task.data_spec
        return cached("data", (self.task.run_dir, spec, n, seed, split),
                      lambda: resolve_data(self.run, spec, n, seed=seed, split=split), keep=4)

    def cached(self, key: tuple, make: Callable[[], Any], keep: int = 1) -> Any:
        """A value memoised in this process (e.g. a baseline every checkpoint shares)."""
        return cached(f"{self.task.family}:{self.task.run_dir}", key, make, keep)


def run_task(task: Task, advance: Progress | None = None) -> list[ResultRow]:
    """Compute one task's rows (the executors' task function).

    Returns:
        The family's rows for `task.components` (a family may compute more at once; the rest is dropped so that
        the counts of what was computed stay exact).
    """
    threads = task.options.get("threads")
    if threads:
        import torch

        torch.set_num_threads(threads)
    rows = measure(task.family).function()(TaskContext(task, advance), task)
    wanted = set(task.components)
    return [r for r in rows if r.component in wanted]
