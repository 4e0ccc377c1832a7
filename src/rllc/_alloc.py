"""Keep freed CPU tensor memory in the process heap instead of handing it back to the OS after every op.

PyTorch's CPU tensors come from the C library's malloc. glibc serves blocks above its (dynamic) mmap threshold with
fresh mmap pages and returns them on free, so every op that creates a megabyte-sized tensor — a training step's
logits, their softmax and gradients — touches pages the kernel must zero and map again: on the `cpu` preset that is
thousands of page faults per forward+backward (measured with `getrusage`: about 2,700–5,600 per step before, about
60 after) and a third of a step's time. Raising the mmap and trim thresholds keeps those blocks in the heap for reuse,
the same effect that PyTorch's own CPU-performance guide gets by preloading jemalloc or tcmalloc — which are not on
a fresh machine, and `mallopt` is (glibc only; elsewhere this does nothing).

Threads share the main heap (M_ARENA_MAX 1): glibc otherwise gives each new thread its own arena, in 64 MiB heaps
trimmed by their own rules, and the sampler's chain-group threads (`rllc.llc.driver.run_chains_on_threads`) then
page-fault their per-step blocks in again — measured on the `cpu` preset, 8 heads × 4 chains × 5 draws split over
2 threads: 71,018 minor faults and 1.25 s wall with per-thread arenas, 49 and 0.98 s with one (benchmarks/
bench_llc.py). Large blocks are few per step, so the shared arena's lock costs nothing measurable; small ones come
from each thread's own cache (tcache) without the lock.

Set RLLC_KEEP_FREED_MEMORY=0 to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_MMAP_MAX_THRESHOLD = 32 * 2**20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit; larger values are refused
_TRIM_THRESHOLD = 1 << 30  # hand memory back only when more than 1 GiB sits free at the top of the heap

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds and keep every thread on the main heap, once per process; returns
    whether the allocator was tuned."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("RLLC_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return _done
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = (bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
             and bool(mallopt(_M_ARENA_MAX, 1)))
    return _done
