"""Page faults and time per cpu-preset forward+backward with and without rllc's allocator setting, side by side.

Run: python benchmarks/bench_alloc.py [--steps N] [--reps R]   (about a minute on 1 CPU core)
Each variant runs in its own fresh interpreter (the setting is made once per process, at `import rllc`), the two
alternate within each repetition and the median is reported, so machine load hits both sides alike. Page faults
are `getrusage` minor faults; they rise on a loaded machine, which is why this is a benchmark and not a test
(`tests/test_alloc.py` checks the mechanism through glibc's exact bookkeeping instead).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_CHILD = """
import json, resource, sys, time, torch
import rllc
from rllc.llc.losses import next_token_loss
torch.set_num_threads(1)
model = rllc.Transformer(rllc.preset("cpu")[0], seed=0)
tokens = torch.randint(0, model.cfg.d_vocab, (32, model.cfg.n_ctx))
def step():
    model.zero_grad(set_to_none=True)
    next_token_loss(model, tokens).backward()
for _ in range(3):
    step()
n = int(sys.argv[1])
faults, t = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
for _ in range(n):
    step()
print(json.dumps({"tuned": rllc.keep_freed_memory(), "ms": 1e3 * (time.perf_counter() - t) / n,
                  "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / n}))
"""


def _measure(env_value: str, steps: int) -> dict:
    env = dict(os.environ, RLLC_KEEP_FREED_MEMORY=env_value)
    out = subprocess.run([sys.executable, "-c", _CHILD, str(steps)], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"1": [], "0": []}
    for _ in range(args.reps):
        for value in runs:
            runs[value].append(_measure(value, args.steps))
    med = {v: {k: statistics.median(r[k] for r in rs) for k in ("ms", "faults")} for v, rs in runs.items()}
    print(f"{'allocator':<28}{'page faults/step':>18}{'ms/step':>10}")
    for value, label in (("0", "glibc defaults"), ("1", "rllc (keep freed memory)")):
        print(f"{label:<28}{med[value]['faults']:>18.0f}{med[value]['ms']:>10.1f}")
    print(f"ratio defaults/rllc: faults {med['0']['faults'] / max(med['1']['faults'], 1):.1f}x, "
          f"time {med['0']['ms'] / med['1']['ms']:.2f}x  (median of {args.reps}, {args.steps} steps each)")


if __name__ == "__main__":
    main()
