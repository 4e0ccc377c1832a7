"""Shared fixtures: a tiny text corpus and a tiny trained run (seconds on CPU)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from rllc.data.corpora import prose_path

TINY = dict(n_layers=2, n_heads=2, d_model=16, d_head=8, n_ctx=16, vocab_size=300)


@pytest.fixture(autouse=True)
def _one_thread():
    # Two pytest workers or a helper process on 2 cores: one intra-op thread avoids oversubscription stalls.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory) -> Path:
    """~150 KB of the packaged prose as a directory of 40 text files."""
    raw = gzip.open(prose_path(), "rt", encoding="utf-8").read(150_000)
    path = tmp_path_factory.mktemp("corpus") / "tiny"
    path.mkdir()
    for i in range(40):
        (path / f"doc{i:02d}.txt").write_text(raw[i * 3750 : (i + 1) * 3750])
    return path


def tiny_configs(text: Path, **overrides):
    """Model and training configs for a seconds-long run on `text` mixed with synthetic n-grams."""
    from rllc.train import preset

    kw = dict(TINY, data=f"{text}*0.5,synthetic.ngram*0.5", steps=40, batch_size=8, lr=3e-3,
              tokenizer_chars=150_000, eval_batches=2, checkpoints="every:10", log_every=5)
    kw.update(overrides)
    return preset("cpu", **kw)


@pytest.fixture(scope="session")
def tiny_run(tiny_text, tmp_path_factory):
    """A finished 40-step run with checkpoints every 10 steps."""
    from rllc.train import train_model

    out = tmp_path_factory.mktemp("runs") / "tiny"
    return train_model(*tiny_configs(tiny_text), out, progress=False)


@pytest.fixture
def run_dir(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run with an empty results store (token caches shared by a link), so tests that
    write results never see each other's rows."""
    import shutil

    src, dst = Path(tiny_run.path), tmp_path / "r"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("data", "results.sqlite*", "plots", ".ray", "heads"))
    (src / "data").mkdir(exist_ok=True)
    (dst / "data").symlink_to(src / "data", target_is_directory=True)
    return dst
