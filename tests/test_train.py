"""Training: learning, checkpoints, exact resume, the run directory, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rllc import RllcError, load_run
from rllc.train import checkpoint_schedule, train_model
from tests.conftest import tiny_configs


def test_paper_schedule_has_107_checkpoints_and_scales():
    paper = checkpoint_schedule(50_000)
    assert len(paper) == 107 and paper[:4] == [0, 100, 200, 400] and paper[-2:] == [49_000, 50_000]
    assert checkpoint_schedule(5000)[:4] == [0, 10, 20, 40]
    assert checkpoint_schedule(100, "every:30") == [0, 30, 60, 90, 100]
    assert checkpoint_schedule(100, "5,50") == [0, 5, 50, 100]
    with pytest.raises(RllcError):
        checkpoint_schedule(100, "every:x")


def test_run_directory_is_self_describing(tiny_run):
    assert tiny_run.steps == [0, 10, 20, 30, 40]
    meta = tiny_run.metadata(40)
    assert meta["tokens_seen"] == 40 * 8 * 16 and meta["tokenizer_id"] == tiny_run.config.tokenizer_id
    assert meta["val_loss"] < tiny_run.metadata(0)["val_loss"]
    weights = load_file(str(tiny_run.checkpoint_path(40)))  # readable without rllc
    assert "blocks.1.attn.W_Q" in weights and weights["blocks.1.attn.W_Q"].shape == (2, 16, 8)
    assert (tiny_run.path / "loss_curve.png").exists() is False  # the loop writes no figures; the CLI does
    assert len(tiny_run.metrics()) == 8
    assert tiny_run.tokenizer.get_vocab_size() == 300


def test_training_beats_the_unigram_entropy(tiny_text, tmp_path):
    model_cfg, train_cfg = tiny_configs(tiny_text, data="synthetic.ngram", steps=200, checkpoints="every:200",
                                        lr=1e-2, batch_size=32, d_model=32, d_head=16)
    # synthetic-only data has no text for the BPE: train the tokenizer on the tiny text first
    from rllc.data import save_tokenizer, train_tokenizer

    (tmp_path / "r").mkdir()
    save_tokenizer(train_tokenizer([p.read_text() for p in tiny_text.iterdir()], 300), tmp_path / "r" / "tokenizer.json")
    run = train_model(model_cfg, train_cfg, tmp_path / "r", progress=False)
    val = run.dataset(split="val").sample_batch(64, torch.Generator().manual_seed(0))
    counts = np.bincount(val[:, 1:].flatten().numpy(), minlength=300).astype(float)
    p = counts[counts > 0] / counts.sum()
    unigram_entropy = float(-(p * np.log(p)).sum())
    assert run.metadata(200)["val_loss"] < unigram_entropy - 0.3  # measured: 4.78 vs 5.44


def test_resume_equals_uninterrupted(tiny_text, tmp_path):
    cfgs = tiny_configs(tiny_text, steps=30)
    full = train_model(*cfgs, tmp_path / "full", progress=False)
    train_model(*cfgs, tmp_path / "cut", progress=False, stop_after=13)  # killed after step 13: last checkpoint 10
    cut = load_run(tmp_path / "cut")
    assert cut.steps == [0, 10]
    resumed = train_model(*cfgs, tmp_path / "cut", progress=False)
    assert resumed.steps == full.steps
    for step in full.steps:
        a, b = load_file(str(full.checkpoint_path(step))), load_file(str(resumed.checkpoint_path(step)))
        assert all(torch.equal(a[k], b[k]) for k in a), f"step {step} differs after resume"
    assert full.metrics().equals(resumed.metrics())


@pytest.mark.slow
def test_kill_minus_nine_then_resume(tiny_text, tmp_path):
    cfgs = tiny_configs(tiny_text, steps=400, checkpoints="every:50")
    full = train_model(*cfgs, tmp_path / "full", progress=False)
    repo = Path(__file__).resolve().parents[1]
    code = (f"import sys, torch; torch.set_num_threads(1); sys.path.insert(0, {str(repo)!r});"  # same threads: bitwise
            "from rllc.train import train_model; from tests.conftest import tiny_configs; from pathlib import Path;"
            f"train_model(*tiny_configs(Path({str(tiny_text)!r}), steps=400, checkpoints='every:50'), "
            f"Path({str(tmp_path / 'killed')!r}), progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    ckpts = tmp_path / "killed" / "checkpoints"
    while proc.poll() is None and len(list(ckpts.glob("*.json"))) < 4:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    resumed = train_model(*cfgs, tmp_path / "killed", progress=False)
    for step in full.steps:
        a, b = load_file(str(full.checkpoint_path(step))), load_file(str(resumed.checkpoint_path(step)))
        assert all(torch.equal(a[k], b[k]) for k in a)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rllc.cli", *args], capture_output=True, text=True, timeout=120)


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rllc: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0]


def test_bad_input_missing_corpus(tmp_path):
    missing = tmp_path / "nope.txt"
    _assert_one_line_error(_cli("train", "--out", str(tmp_path / "r"), "--data", str(missing)), str(missing))


def test_bad_input_empty_corpus_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    _assert_one_line_error(_cli("train", "--out", str(tmp_path / "r"), "--data", str(tmp_path / "empty")),
                           str(tmp_path / "empty"))


def test_bad_input_not_a_run_dir(tmp_path):
    _assert_one_line_error(_cli("info", str(tmp_path)), str(tmp_path), "not an rllc run directory")


def test_bad_input_corrupted_checkpoint_leaves_run_intact(tiny_run, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(tiny_run.path, run_dir)
    path = run_dir / "checkpoints" / "step_0000020.safetensors"
    path.write_bytes(path.read_bytes()[:100])  # truncated
    # SQLite may rewrite its own header when opened; every other file must stay byte-identical
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and "results.sqlite" not in p.name}
    with pytest.raises(RllcError, match="truncated or corrupted"):
        load_run(run_dir).model_at(20)
    _assert_one_line_error(_cli("heads", str(run_dir), "--steps", "20"), "step_0000020.safetensors")
    assert before == {p: p.read_bytes() for p in before}  # nothing already written was changed


def test_bad_input_other_architecture_and_vocab_mismatch(tiny_run, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(tiny_run.path, run_dir)
    cfg = json.loads((run_dir / "run.json").read_text())
    cfg["model"]["n_heads"] = 4
    (run_dir / "run.json").write_text(json.dumps(cfg))
    with pytest.raises(RllcError, match="another architecture"):
        load_run(run_dir).model_at(10)
    cfg["model"]["n_heads"], cfg["model"]["d_vocab"] = 2, 400
    (run_dir / "run.json").write_text(json.dumps(cfg))
    with pytest.raises(RllcError, match="tokenizer .* 300 tokens .* 400"):
        load_run(run_dir).tokenizer


def test_bad_input_unknown_component_and_step(tiny_run):
    with pytest.raises(RllcError, match="unknown head '5:0'"):
        tiny_run.model_at(10).component("5:0")
    with pytest.raises(RllcError, match="no checkpoint at step 11; nearest is 10"):
        tiny_run.model_at(11)


def test_other_config_in_existing_run_dir_is_refused(tiny_text, tiny_run):
    with pytest.raises(RllcError, match="different config"):
        train_model(*tiny_configs(tiny_text, lr=0.5), tiny_run.path, progress=False)
