"""The allocator setting made at `import rllc`: freed tensor memory is reused instead of page-faulted in again."""

import json
import os
import subprocess
import sys

import pytest

_CHILD = """
import json, resource, torch
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
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(json.dumps({"tuned": rllc.keep_freed_memory(), "faults": faults}))
"""


def _faults(env_value: str) -> dict:
    env = dict(os.environ, RLLC_KEEP_FREED_MEMORY=env_value)
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_import_keeps_freed_memory_and_cuts_page_faults():
    tuned, plain = _faults("1"), _faults("0")
    assert tuned["tuned"] and not plain["tuned"]
    # A cpu-preset forward+backward frees and reallocates megabyte-sized logits and gradients: thousands of page
    # faults per step with glibc's defaults, almost none once freed blocks stay in the heap.
    assert plain["faults"] > 1000, plain
    assert tuned["faults"] < 0.1 * plain["faults"], (tuned, plain)
