"""Where sweep tasks run: in the driver process, in a local process pool, or on Ray.

An executor maps a task function over tasks and yields ``(task, result)`` as each finishes. Tasks are small
(paths, a step, names, a sampler config): workers load checkpoints and data themselves, and only result rows
travel back. The driver alone writes the store. Tasks are pulled lazily from the iterable with at most
``window`` in flight, so the driver can skip a task that another sweep finished in the meantime.

A local Ray runtime never leaves loopback: `local_ray_settings` lists the environment and `ray.init` arguments
every local start uses (127.0.0.1, no usage stats, no dashboard, no auth, proxies pointed at a closed local port,
temp directory inside the run directory).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from rllc._errors import RllcError

TaskFn = Callable[[Any], Any]

# Unix socket paths are limited to ~107 bytes; Ray appends ~60 (session_<date>_<pid>/sockets/plasma_store).
_MAX_RAY_TEMP_LEN = 45


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


class InProcessExecutor:
    """Run tasks one after another in the calling process (the default; no start-up cost)."""

    name = "inprocess"

    def map(self, fn: TaskFn, tasks: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        for task in tasks:
            yield task, fn(task)

    def close(self) -> None:
        pass

    def __enter__(self) -> InProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def die_with_parent(parent_pid: int) -> None:
    """Make the calling process die when its parent does (Linux: PR_SET_PDEATHSIG; elsewhere a watchdog thread
    that polls the parent's pid), so a killed sweep leaves no workers behind. Linux sends the signal when the
    *thread* that started the process ends: start pools from a thread that lives as long as the pool (the CLI
    and `run_sweep` use the calling thread)."""
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
            if os.getppid() != parent_pid:  # the parent died before the signal was armed
                os._exit(1)
            return

    def watch() -> None:  # pragma: no cover - non-Linux
        import time

        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="rllc-parent-watchdog").start()


def _init_pool_worker(threads: int, parent_pid: int | None = None) -> None:
    import torch

    if parent_pid is not None:
        die_with_parent(parent_pid)
    torch.set_num_threads(threads)


class PoolExecutor:
    """A local pool of `workers` processes (spawned, each with cpu_count // workers torch threads)."""

    name = "pool"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, _cpu_count()) if workers is None else workers
        if not isinstance(self.workers, int) or self.workers < 1:
            raise RllcError(f"--workers must be a positive integer, got {self.workers!r}")
        self._pool: ProcessPoolExecutor | None = None

    def _ensure(self) -> ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing as mp

            threads = max(1, _cpu_count() // self.workers)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                             initializer=_init_pool_worker, initargs=(threads, os.getpid()))
        return self._pool

    def map(self, fn: TaskFn, tasks: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        pool = self._ensure()
        it = iter(tasks)
        inflight: dict[Future, Any] = {}
        window = 2 * self.workers

        def refill() -> None:
            while len(inflight) < window:
                task = next(it, None)
                if task is None:
                    return
                inflight[pool.submit(fn, task)] = task

        refill()
        while inflight:
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for fut in done:
                task = inflight.pop(fut)
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    raise RllcError("a pool worker died (killed, or out of memory); what finished is stored: run "
                                    "the same sweep again to resume") from None
                yield task, result
            refill()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> PoolExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ray_temp_dir(base: str | Path) -> Path:
    """A short Ray temp directory inside `base` (or, if `base` is too deep for Ray's Unix sockets, under the
    system temp directory). Created if missing."""
    base = Path(base).absolute()
    path = base / ".ray"
    if len(str(path)) > _MAX_RAY_TEMP_LEN:
        path = Path(tempfile.mkdtemp(prefix="rllc-ray-"))
        if len(str(path)) > _MAX_RAY_TEMP_LEN:
            raise RllcError(f"cannot find a Ray temp directory short enough for Unix sockets (tried {base} and "
                            f"{path}); pass ray_temp_dir= a path of at most {_MAX_RAY_TEMP_LEN} characters")
    path.mkdir(parents=True, exist_ok=True)
    return path


def local_ray_settings(temp_dir: str | Path, workers: int | None = None) -> tuple[dict[str, str], dict[str, Any]]:
    """The environment and `ray.init` keyword arguments of every local Ray start: loopback only.

    Returns:
        (env, init_kwargs): env must be in os.environ before Ray starts its processes (and before `import ray`,
        whose constants read some of it); init_kwargs go to `ray.init`.
    """
    env = {
        "RAY_USAGE_STATS_ENABLED": "0",  # no usage reports (they call cloud metadata addresses)
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # node address = loopback, never "from the perspective of" 8.8.8.8
        "RAY_AUTH_MODE": "disabled",
        "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",  # anything HTTP dies locally
        "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
        "no_proxy": "127.0.0.1,localhost,::1", "NO_PROXY": "127.0.0.1,localhost,::1",
        "RAY_NODE_IP_ADDRESS": "127.0.0.1",
    }
    kwargs: dict[str, Any] = {
        "address": "local",  # start a new runtime even if RAY_ADDRESS points elsewhere
        "_node_ip_address": "127.0.0.1",
        "include_dashboard": False,
        "_temp_dir": str(temp_dir),
        "log_to_driver": False,
        "configure_logging": False,
    }
    if workers is not None:
        kwargs["num_cpus"] = workers
    return env, kwargs


class RayExecutor:
    """Run tasks as Ray tasks (one CPU each), retried if their worker dies.

    Args:
        address: None starts a private local runtime (loopback only, see `local_ray_settings`); "auto" or
            "HOST:PORT" joins an existing cluster started with `ray start`; "ray://HOST:10001" connects through
            Ray Client. On a cluster every node needs rllc installed and the run directory at the same path.
        workers: CPUs of a local runtime (default: all); on a cluster, the tasks in flight (default 2 × CPUs).
        temp_dir: the local runtime's temp directory (default `.ray` inside the run directory, kept short).
        max_retries: times a task is retried after its worker process dies.
    """

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, temp_dir: str | Path | None = None,
                 max_retries: int = 3) -> None:
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise RllcError(f"--workers must be a positive integer, got {workers!r}")
        self.address = address
        self.workers = workers
        self.temp_dir = temp_dir
        self.max_retries = max_retries
        self._started = False
        self._saved_env: dict[str, str | None] = {}
        self._remote: dict[Any, Any] = {}

    def start(self, base_dir: str | Path | None = None) -> None:
        """Start (or connect to) Ray; `base_dir` (the run directory) holds the local temp directory."""
        if self._started:
            return
        if self.address is None:
            temp = Path(self.temp_dir) if self.temp_dir else ray_temp_dir(base_dir or tempfile.gettempdir())
            temp.mkdir(parents=True, exist_ok=True)
            env, kwargs = local_ray_settings(temp.absolute(), self.workers)
            self._saved_env = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            ray = _import_ray()
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = False  # in case ray was imported before the environment was set
            ray.init(**kwargs)
            os.chmod(temp, 0o700)  # Ray makes its temp directory world-writable (0777); inside a run dir, only ours
        else:
            ray = _import_ray()
            ray.init(address=self.address, log_to_driver=False)
        self._started = True

    def map(self, fn: TaskFn, tasks: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        ray = _import_ray()
        if not self._started:
            self.start()
        if fn not in self._remote:
            self._remote[fn] = ray.remote(num_cpus=1, max_retries=self.max_retries, retry_exceptions=False)(fn)
        remote = self._remote[fn]
        window = 2 * (self.workers or max(1, int(ray.cluster_resources().get("CPU", 1))))
        it = iter(tasks)
        inflight: dict[Any, Any] = {}

        def refill() -> None:
            while len(inflight) < window:
                task = next(it, None)
                if task is None:
                    return
                inflight[remote.remote(task)] = task

        refill()
        while inflight:
            done, _ = ray.wait(list(inflight), num_returns=1)
            for ref in done:
                task = inflight.pop(ref)
                yield task, ray.get(ref)
            refill()

    def close(self) -> None:
        if self._started:
            ray = _import_ray()
            ray.shutdown()
            self._started = False
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved_env = {}

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _import_ray():  # noqa: ANN202
    try:
        import ray
    except ImportError:
        raise RllcError("the Ray executor needs ray: pip install 'rllc[ray]'") from None
    return ray


def make_executor(kind: str = "inprocess", *, address: str | None = None, workers: int | None = None,
                  ray_temp_dir: str | Path | None = None):  # noqa: ANN201
    """An executor by name: "inprocess" (default), "pool" or "ray"."""
    if kind == "inprocess":
        if address is not None:
            raise RllcError("--address is for --executor ray")
        return InProcessExecutor()
    if kind == "pool":
        if address is not None:
            raise RllcError("--address is for --executor ray")
        return PoolExecutor(workers)
    if kind == "ray":
        return RayExecutor(address, workers, ray_temp_dir)
    raise RllcError(f"unknown executor {kind!r}; choose inprocess, pool or ray")
