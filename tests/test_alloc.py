"""The allocator setting made at `import rllc`: freed tensor memory is reused instead of page-faulted in again.

These tests read glibc's own bookkeeping (`mallinfo2`: bytes in mmapped blocks, free bytes kept in the heap), which
is exact and does not depend on machine load. The page faults per training step that the setting saves are a
timing-like figure and are measured by `benchmarks/bench_alloc.py`, not here.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt and mallinfo2 are glibc's")

_ALLOC = Path(__file__).resolve().parents[1] / "src" / "rllc" / "_alloc.py"
_BLOCK = 16 << 20  # above glibc's default mmap threshold (128 KiB), below rllc's (32 MiB)

# A fresh interpreter: optionally tune the allocator, then malloc/free one block and report where it lived.
_CHILD = """
import ctypes, importlib.util, json, sys
libc = ctypes.CDLL("libc.so.6")
class MallInfo2(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
mode, block = sys.argv[1], int(sys.argv[2])
tuned = None
if mode == "module":   # the module alone, loaded from its file: nothing else has touched the allocator
    spec = importlib.util.spec_from_file_location("_alloc", sys.argv[3])
    alloc = importlib.util.module_from_spec(spec); spec.loader.exec_module(alloc)
    tuned = alloc.keep_freed_memory()
elif mode == "rllc":   # what a user gets
    import rllc
    tuned = rllc.keep_freed_memory()
before = libc.mallinfo2()
p = libc.malloc(block)
held = libc.mallinfo2()
libc.free(p)
after = libc.mallinfo2()
print(json.dumps({"tuned": tuned, "mmapped": held.hblkhd - before.hblkhd, "kept": after.fordblks - held.fordblks}))
"""


def _child(mode: str, env_value: str = "1") -> dict:
    env = dict(os.environ, RLLC_KEEP_FREED_MEMORY=env_value)
    out = subprocess.run([sys.executable, "-c", _CHILD, mode, str(_BLOCK), str(_ALLOC)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_glibc_defaults_mmap_a_large_block_and_hand_it_back():
    plain = _child("none")
    assert plain["mmapped"] >= _BLOCK, plain  # served by a fresh mmap: every touch of it is a page fault
    assert plain["kept"] < _BLOCK, plain      # and unmapped on free


def test_keep_freed_memory_serves_large_blocks_from_the_heap_and_keeps_them():
    tuned = _child("module")
    assert tuned["tuned"] is True
    assert tuned["mmapped"] == 0, tuned       # from the heap
    assert tuned["kept"] >= _BLOCK, tuned     # and kept there after free, for the next op to reuse


def test_import_rllc_tunes_the_allocator_unless_turned_off():
    on = _child("rllc")
    assert on["tuned"] is True and on["mmapped"] == 0 and on["kept"] >= _BLOCK, on
    off = _child("module", env_value="0")
    assert off["tuned"] is False and off["mmapped"] >= _BLOCK, off


# A fresh interpreter: optionally tune the allocator, malloc/free in a second thread, then glibc's per-arena report.
_THREAD_CHILD = """
import ctypes, importlib.util, sys, threading
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
if sys.argv[1] == "module":
    spec = importlib.util.spec_from_file_location("_alloc", sys.argv[2])
    alloc = importlib.util.module_from_spec(spec); spec.loader.exec_module(alloc)
    assert alloc.keep_freed_memory()
def work():
    p = libc.malloc(1 << 20)
    libc.free(p)
t = threading.Thread(target=work); t.start(); t.join()
libc.malloc_stats()  # to stderr: one "Arena N:" section per arena
"""


@pytest.mark.parametrize("mode, arenas", [("none", 2), ("module", 1)])
def test_threads_share_the_main_heap_once_tuned(mode, arenas):
    out = subprocess.run([sys.executable, "-c", _THREAD_CHILD, mode, str(_ALLOC)], capture_output=True, text=True,
                         check=True)
    assert out.stderr.count("Arena ") == arenas, out.stderr  # glibc's own bookkeeping: a second thread's own arena
