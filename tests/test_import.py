"""`rllc import`: external checkpoint series (GPT-2 and GPT-NeoX save_pretrained snapshots, a local Hugging Face
cache with stepN revisions, TransformerLens state dicts) become run directories that every command reads.

Everything is built here from configs; nothing is downloaded (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rllc import RllcError, load_run

os.environ["HF_HUB_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers", reason="transformers not installed (extra: rllc[hf])")

FAST = dict(chains=2, draws=3, batch_size=4, init_batches=1, n_samples=16)
N_CTX = 16


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory, tiny_text) -> Path:
    from rllc.data import save_tokenizer, train_tokenizer

    texts = [p.read_text() for p in sorted(tiny_text.glob("*.txt"))]
    return save_tokenizer(train_tokenizer(texts, vocab_size=300), tmp_path_factory.mktemp("tok") / "tokenizer.json")


def _gpt2(seed: int, vocab: int):
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=16, n_positions=N_CTX, vocab_size=vocab, bos_token_id=0, eos_token_id=0))


def _neox(seed: int, vocab: int):
    torch.manual_seed(seed)
    return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        num_hidden_layers=2, num_attention_heads=2, hidden_size=16, intermediate_size=32,
        max_position_embeddings=N_CTX, vocab_size=vocab, bos_token_id=0, eos_token_id=0))


def _snapshots(root: Path, make, tokenizer_file: Path, names=("checkpoint-0", "checkpoint-10", "checkpoint-20")):
    """A directory of save_pretrained snapshots whose weights drift from step to step."""
    root.mkdir(parents=True)
    base = make(0, 300)
    for i, name in enumerate(names):
        with torch.no_grad():
            for p in base.parameters():
                p.add_(0.01 * i * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
        base.save_pretrained(root / name)
        shutil.copy(tokenizer_file, root / name / "tokenizer.json")
    return root


def _hf_cache(root: Path, tokenizer_file: Path, steps=(0, 10, 20)) -> Path:
    """A local HF cache laid out as huggingface_hub does: refs/stepN -> commit, snapshots/<commit>/files."""
    repo = root / "models--acme--tiny-neox"
    base = _neox(1, 300)
    for s in steps:
        commit = f"{s:040x}"
        snap = repo / "snapshots" / commit
        with torch.no_grad():
            for p in base.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(s)))
        base.save_pretrained(snap)
        shutil.copy(tokenizer_file, snap / "tokenizer.json")
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / f"step{s}").write_text(commit)
    return repo


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rllc.cli", *args], capture_output=True, text=True,
                          env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=600)


# ------------------------------------------------------------------------------------------------ import itself
def test_import_snapshots_references_weights_and_loads_each_step(tmp_path, tiny_text, tokenizer_file):
    from rllc.runs import import_series

    src = _snapshots(tmp_path / "gpt2", _gpt2, tokenizer_file, names=("checkpoint-0", "step_10", "step20"))
    run = import_series(src, tmp_path / "run", data=str(tiny_text), n_ctx=N_CTX)
    assert run.steps == [0, 10, 20]
    again = load_run(tmp_path / "run")
    assert again.steps == [0, 10, 20] and again.provenance["family"] == "gpt2"
    assert again.provenance["revisions"] == {"0": "checkpoint-0", "10": "step_10", "20": "step20"}
    assert not (tmp_path / "run" / "checkpoints").exists()  # referenced, not copied
    m = again.model_at(10)
    ref = transformers.GPT2LMHeadModel.from_pretrained(src / "step_10").eval()
    tokens = again.sample_tokens(n=4)
    assert tokens.shape == (4, N_CTX) and int(tokens.max()) < 300
    with torch.no_grad():
        torch.testing.assert_close(m(tokens).logits, ref(tokens).logits)
    assert not m.training
    copied = import_series(src, tmp_path / "run_copy", data=str(tiny_text), n_ctx=N_CTX, copy=True, steps=[20])
    assert copied.steps == [20] and (tmp_path / "run_copy" / "checkpoints" / "step_0000020").is_dir()
    shutil.rmtree(src)
    assert copied.model_at(20) is not None  # the copy does not depend on the source
    with pytest.raises(RllcError, match="weights of step 10 are gone"):
        again.model_at(10)


def test_import_errors_are_one_line(tmp_path, tiny_text, tokenizer_file):
    from rllc.runs import import_series

    cache = _hf_cache(tmp_path / "hub", tokenizer_file, steps=(0, 10))
    with pytest.raises(RllcError, match=r"revision step3000 of acme/tiny-neox is not in the local cache .*hf download "
                                        r"acme/tiny-neox --revision step3000"):
        import_series(cache, tmp_path / "r", data=str(tiny_text), steps=[0, 3000])
    with pytest.raises(RllcError, match="no checkpoints found"):
        import_series(tmp_path, tmp_path / "r2", data=str(tiny_text))
    with pytest.raises(RllcError, match="not in the local Hugging Face cache"):
        import_series("hf:acme/absent", tmp_path / "r3", data=str(tiny_text))
    bert = tmp_path / "bert" / "step_1"
    bert.mkdir(parents=True)
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (bert / "model.safetensors").write_bytes(b"")
    with pytest.raises(RllcError, match="model_type 'bert' is not supported"):
        import_series(tmp_path / "bert", tmp_path / "r4", data=str(tiny_text))
    assert not any((tmp_path / d).exists() for d in ("r", "r2", "r3", "r4"))  # nothing written on a refusal


def test_two_checkpoints_at_one_step_are_refused(tmp_path, tiny_text, tokenizer_file):
    """checkpoint-10/ and step_10/ both parse as step 10: one of them was silently dropped."""
    from rllc.runs import import_series

    src = _snapshots(tmp_path / "src", _gpt2, tokenizer_file, names=("checkpoint-0", "checkpoint-10", "step_10"))
    with pytest.raises(RllcError, match="two checkpoints at step 10: checkpoint-10 and step_10; keep one"):
        import_series(src, tmp_path / "run", data=str(tiny_text))
    assert not (tmp_path / "run").exists()
    shutil.rmtree(src / "step_10")
    assert import_series(src, tmp_path / "run", data=str(tiny_text)).steps == [0, 10]


def test_import_refuses_weights_that_are_not_the_checkpoint(tmp_path, tiny_text, tokenizer_file):
    """A missing or mis-shaped tensor (transformers initialised it at random, or raised a traceback), a truncated
    file, a later step that differs from the first, or a config that changes along the series: one line, nothing
    written. Each step is checked at import, not only the first."""
    from safetensors.torch import load_file, save_file

    from rllc.runs import import_series

    good = _snapshots(tmp_path / "good", _gpt2, tokenizer_file)
    key = "transformer.h.1.attn.c_attn.weight"

    def broken(name: str, step: str, edit) -> Path:
        src = tmp_path / name
        shutil.copytree(good, src)
        f = src / step / "model.safetensors"
        edit(f, load_file(f))
        return src

    def drop(f, sd):
        save_file({k: v for k, v in sd.items() if k != key}, f, metadata={"format": "pt"})

    def reshape(f, sd):
        save_file({**sd, key: torch.zeros(16, 40)}, f, metadata={"format": "pt"})

    def cut(f, sd):
        f.write_bytes(f.read_bytes()[:-64])

    cases = {
        "missing": (broken("missing", "checkpoint-0", drop), f"does not match its config.json: it has no tensor {key}"),
        "shape": (broken("shape", "checkpoint-0", reshape), rf"{key} has shape \(16, 40\), not \(16, 48\)"),
        "truncated": (broken("truncated", "checkpoint-0", cut), "cannot load the snapshot .*checkpoint-0"),
        "later": (broken("later", "checkpoint-20", drop), f"checkpoint-20 \\(step 20\\) does not hold the same "
                                                         f"tensors as step 0: it has no tensor {key}"),
        "later_cut": (broken("later_cut", "checkpoint-10", cut), "cannot read the weights .*checkpoint-10/model"
                                                                 r".safetensors .*it may be truncated"),
    }
    layers = tmp_path / "layers"
    shutil.copytree(good, layers)
    shutil.rmtree(layers / "checkpoint-20")
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=3, n_head=2, n_embd=16, n_positions=N_CTX,
                                                         vocab_size=300)).save_pretrained(layers / "checkpoint-20")
    cases["layers"] = (layers, "checkpoint-20/config.json has n_layer=3 but .*checkpoint-0/config.json has n_layer=2")
    def extra_layer(f, sd):  # weights of three layers under a config.json of two
        save_file({**sd, **{k.replace(".h.1.", ".h.2."): v.clone() for k, v in sd.items() if ".h.1." in k}}, f,
                  metadata={"format": "pt"})

    cases["extra_layer"] = (broken("extra_layer", "checkpoint-0", extra_layer),
                            "does not match its config.json: it has a tensor transformer.h.2.")
    for name, (src, msg) in cases.items():
        with pytest.raises(RllcError, match=msg):
            import_series(src, tmp_path / f"run_{name}", data=str(tiny_text), n_ctx=N_CTX)
        assert not (tmp_path / f"run_{name}").exists(), name
    def old_buffers(f, sd):  # what older transformers saved beside GPT-2's weights: not parameters, ignored
        save_file({**sd, "transformer.h.0.attn.bias": torch.ones(1, 1, N_CTX, N_CTX).tril(),
                   "transformer.h.0.attn.masked_bias": torch.tensor(-1e4)}, f, metadata={"format": "pt"})

    old = broken("old", "checkpoint-10", old_buffers)
    assert import_series(old, tmp_path / "run_old", data=str(tiny_text), n_ctx=N_CTX).model_at(10) is not None
    run = import_series(good, tmp_path / "run", data=str(tiny_text), n_ctx=N_CTX)  # and later, at model_at
    drop(good / "checkpoint-10" / "model.safetensors", load_file(good / "checkpoint-10" / "model.safetensors"))
    with pytest.raises(RllcError, match=f"checkpoint-10 does not match its config.json: it has no tensor {key}"):
        run.model_at(10)


def test_relative_data_is_recorded_absolute_and_must_name_files(tmp_path, tiny_text, tokenizer_file, monkeypatch):
    """`--data "corpus/*.txt"` (the README's spelling) was recorded as written, so every later command resolved it
    against its own working directory: elsewhere it matched nothing, or other files under the same 'pretrain'
    name. And a glob matching no files imported fine and failed only at the first use."""
    from rllc.runs import import_series

    src = _snapshots(tmp_path / "src", _gpt2, tokenizer_file)
    shutil.copytree(tiny_text, tmp_path / "work" / "corpus")
    monkeypatch.chdir(tmp_path / "work")
    with pytest.raises(RllcError, match=r"glob 'corpus/\*.md' matches no files"):
        import_series(src, tmp_path / "nothing", data="corpus/*.md")
    assert not (tmp_path / "nothing").exists()
    run = import_series(src, tmp_path / "run", data="corpus/*.txt*0.5,synthetic.ngram*0.5", n_ctx=N_CTX)
    assert run.config.train.data == f"{tmp_path / 'work' / 'corpus'}/*.txt*0.5,synthetic.ngram*0.5"
    here = run.sample_tokens(n=4)
    monkeypatch.chdir(tmp_path)  # another directory: the same files
    again = load_run(tmp_path / "run")
    torch.testing.assert_close(again.sample_tokens(n=4), here)


def test_out_that_is_not_a_run_directory_is_refused(tmp_path, tiny_text, tokenizer_file):
    """--out a snapshot of the series was a SameFileError traceback (its tokenizer.json copied onto itself); --out
    the series itself, or any folder of other files, had run.json written into it."""
    from rllc.runs import import_series

    src = _snapshots(tmp_path / "src", _gpt2, tokenizer_file)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for out in (src / "checkpoint-20", src, tiny_text):
        with pytest.raises(RllcError, match=f"{out} exists and is not an rllc run directory; choose an empty or new"):
            import_series(src, out, data=str(tiny_text), n_ctx=N_CTX)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    prepared = tmp_path / "prepared"  # an interrupted import's leftovers, or the tokenizer supplied from --out
    prepared.mkdir()
    shutil.copy(tokenizer_file, prepared / "tokenizer.json")
    run = import_series(src, prepared, data=str(tiny_text), n_ctx=N_CTX, tokenizer=prepared / "tokenizer.json")
    assert run.steps == [0, 10, 20] and run.tokenizer.get_vocab_size() == 300


def test_reimport_updates_checkpoints_but_not_what_stored_results_mean(tmp_path, tiny_text, tokenizer_file):
    """Importing the same series again into its run directory adds new checkpoints; another --data or --n-ctx
    rewrote run.json silently, and the stored "pretrain" rows (computed on the old data) were served as the new."""
    from rllc.runs import import_series

    src = _snapshots(tmp_path / "src", _gpt2, tokenizer_file, names=("checkpoint-0", "checkpoint-10"))
    docs = sorted(tiny_text.glob("*.txt"))
    import_series(src, tmp_path / "run", data=str(docs[0]), n_ctx=N_CTX)
    record = (tmp_path / "run" / "run.json").read_text()
    with pytest.raises(RllcError, match=f"imported with --data {docs[0]}, not {docs[1]}"):
        import_series(src, tmp_path / "run", data=str(docs[1]), n_ctx=N_CTX)
    with pytest.raises(RllcError, match=f"imported with --n-ctx {N_CTX}, not 8"):
        import_series(src, tmp_path / "run", data=str(docs[0]), n_ctx=8)
    assert (tmp_path / "run" / "run.json").read_text() == record
    _gpt2(0, 300).save_pretrained(src / "checkpoint-20")  # training went on
    shutil.copy(tokenizer_file, src / "checkpoint-20" / "tokenizer.json")
    assert import_series(src, tmp_path / "run", data=str(docs[0]), n_ctx=N_CTX).steps == [0, 10, 20]


def test_copy_resumes_an_interrupted_import_and_never_keeps_other_weights(tmp_path, tiny_text, tokenizer_file):
    """An import killed during --copy leaves tokenizer.json and checkpoints/step_N/ (and a .tmp); the rerun keeps
    complete copies of these weights, but kept any existing step_N/ as is, even a copy of another series."""
    from rllc.runs import import_series

    src = _snapshots(tmp_path / "src", _gpt2, tokenizer_file)
    other = _snapshots(tmp_path / "other", lambda s, v: _gpt2(s + 7, v), tokenizer_file)  # same names, shapes
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(tokenizer_file, out / "tokenizer.json")
    shutil.copytree(other / "checkpoint-10", out / "checkpoints" / "step_0000010", copy_function=shutil.copy2)
    shutil.copytree(src / "checkpoint-0", out / "checkpoints" / "step_0000000", copy_function=shutil.copy2)
    kept = (out / "checkpoints" / "step_0000000" / "model.safetensors").stat().st_ino
    (out / "checkpoints" / "step_0000020.tmp").mkdir()  # a copy cut short
    (out / "checkpoints" / "step_0000020.tmp" / "model.safetensors").write_bytes(b"half")
    run = import_series(src, out, data=str(tiny_text), n_ctx=N_CTX, copy=True)
    assert (out / "checkpoints" / "step_0000000" / "model.safetensors").stat().st_ino == kept  # not copied twice
    assert not (out / "checkpoints" / "step_0000020.tmp").exists()
    tokens = run.sample_tokens(n=2)
    for s in (0, 10, 20):
        m = run.model_at(s)
        ref = transformers.GPT2LMHeadModel.from_pretrained(src / f"checkpoint-{s}").eval()
        assert isinstance(m, transformers.GPT2LMHeadModel)
        with torch.no_grad():
            torch.testing.assert_close(m(tokens).logits, ref(tokens).logits)


def test_import_transformer_lens_state_dicts_checks_the_architecture(tmp_path, tiny_text, tokenizer_file, capsys):
    tl = pytest.importorskip("transformer_lens")
    from rllc.model import Transformer
    from rllc.runs import import_series
    from safetensors.torch import save_file

    for pos in ("shortformer", "standard"):
        d = tmp_path / pos
        d.mkdir()
        cfg = tl.HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=N_CTX, d_head=8, n_heads=2, d_vocab=300,
                                         attn_only=True, normalization_type="LN", positional_embedding_type=pos,
                                         act_fn=None, d_mlp=None, seed=0)
        ht = tl.HookedTransformer(cfg)
        (d / "config.json").write_text(json.dumps({k: v for k, v in cfg.to_dict().items()
                                                   if isinstance(v, (int, float, str, bool, type(None)))}))
        for s in (0, 5):
            save_file({k: v.contiguous() for k, v in ht.state_dict().items()}, str(d / f"step_{s}.safetensors"))
        shutil.copy(tokenizer_file, d / "tokenizer.json")
        run = import_series(d, tmp_path / f"run_{pos}", data=str(tiny_text))
        m = run.model_at(5)
        tokens = run.sample_tokens(n=2)
        with torch.no_grad():
            torch.testing.assert_close(m(tokens), ht(tokens), atol=1e-5, rtol=1e-5)  # never mis-loaded
        # rllc's own architecture becomes an rllc Transformer (per-head fast path); standard positions stay TL
        assert isinstance(m, Transformer) == (pos == "shortformer")
        bad = {**{k: v.contiguous() for k, v in ht.state_dict().items()}, "blocks.1.attn.W_Q": torch.zeros(2, 16, 7)}
        save_file(bad, str(d / "step_0.safetensors"))  # a mis-shaped tensor: one line (it was a traceback on TL)
        with pytest.raises(RllcError, match=r"step_0.safetensors .*blocks.1.attn.W_Q"):
            import_series(d, tmp_path / f"bad_{pos}", data=str(tiny_text))
        assert not (tmp_path / f"bad_{pos}").exists()
    from rllc.cli import main

    capsys.readouterr()
    args = ["--component", "0:1", "--chains", "1", "--draws", "2", "--batch-size", "4", "--n-samples", "8", "--json"]
    assert main(["llc", str(tmp_path / "run_standard"), *args]) == 0  # a HookedTransformer: its .to printed a line
    assert json.loads(capsys.readouterr().out)["component"] == "0:1"  # on stdout, before the one JSON object
    saved = json.loads((d / "config.json").read_text())  # standard positions: built as a HookedTransformer
    for edit in ({"d_model": None}, {"frobnicate": 3}):  # a missing and an unknown field: were TypeError tracebacks
        cfg = {**saved, **edit}
        (d / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
        with pytest.raises(RllcError, match=r"config.json is not a HookedTransformerConfig \(.*(d_model|frobnicate)"):
            import_series(d, tmp_path / "bad_config", data=str(tiny_text))
        assert not (tmp_path / "bad_config").exists()


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("family", ["gpt2", pytest.param("neox_cache", marks=pytest.mark.slow)])
def test_imported_series_end_to_end(tmp_path, tiny_text, tokenizer_file, family):
    """import -> info -> llc -> sweep (heads and full model, two data sets) -> heads -> hessian -> report."""
    from rllc.analysis import heads_command
    from rllc.analysis.hessian_sweep import HessianSweepConfig, hessian_sweep
    from rllc.analysis.hessian import HessianConfig
    from rllc.report.html import write_report
    from rllc.runs import import_series
    from rllc.sweep import load_results, run_sweep

    src = _snapshots(tmp_path / "src", _gpt2, tokenizer_file) if family == "gpt2" else \
        _hf_cache(tmp_path / "hub", tokenizer_file)
    run_dir = tmp_path / "run"
    r = _cli("import", str(src), "--out", str(run_dir), "--data", str(tiny_text), "--n-ctx", str(N_CTX))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "3 checkpoints" in r.stdout
    info = _cli("info", str(run_dir))
    assert info.returncode == 0 and '"imported"' in info.stdout, info.stderr[-2000:]
    res = run_sweep(run_dir, components="heads,all", data="pretrain,synthetic.ngram", steps="all", progress=False,
                    **FAST)
    assert res.computed == 3 * 5 * 2  # steps × (4 heads + all) × data sets
    df = load_results(run_dir)
    assert set(df.component) == {"0:0", "0:1", "1:0", "1:1", "all"} and set(df.data) == {"pretrain", "synthetic.ngram"}
    assert np.isfinite(df.value).all()
    again = run_sweep(run_dir, components="heads,all", data="pretrain,synthetic.ngram", progress=False, **FAST)
    assert again.computed == 0
    analysis = heads_command(run_dir, [0, 20])
    assert {"0:0", "1:1"} <= set(analysis.table.component) and "label" in analysis.table
    hs = hessian_sweep(run_dir, components="0:1,all", data="pretrain", steps="last",
                       config=HessianSweepConfig(trace=HessianConfig(n_samples=4, n_probes=4, batch_size=4)))
    assert hs.computed == 2
    from rllc.cli import main

    cheap = ["--chains", "2", "--draws", "3", "--batch-size", "4", "--n-samples", "16", "--quiet"]
    assert main(["llc", str(run_dir), "--component", "0:1,0:0", "--data", "synthetic.ngram", *cheap]) == 0
    assert main(["plot", str(run_dir)]) == 0 and main(["export", str(run_dir)]) == 0
    assert (run_dir / "results.csv").is_file() and any((run_dir / "plots").glob("*.png"))
    if family != "gpt2":  # the slow variant also calibrates
        assert main(["calibrate", str(run_dir), "--epsilons", "1e-3", "--nbetas", "30", *cheap]) == 0
    page = write_report(run_dir)
    html = page.read_text()
    assert "0:1" in html and "imported from" in html and str(src) in html


_SWEEP = """
import sys, torch
torch.set_num_threads(1)
from rllc.sweep import run_sweep
r = run_sweep(sys.argv[1], components="heads,all", data="pretrain", steps="all", progress=False,
              chains=2, draws=6, batch_size=4, init_batches=1, n_samples=16)
print("COMPUTED", r.computed, flush=True)
"""


def _rows(run_dir: Path) -> int:
    try:
        with sqlite3.connect(run_dir / "results.sqlite", timeout=30) as con:
            return con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "neox"])
def test_imported_sweep_kill_9_and_resume(tmp_path, tiny_text, tokenizer_file, family):
    from rllc.runs import import_series
    from rllc.sweep import load_results, run_sweep

    src = _snapshots(tmp_path / "src", _gpt2 if family == "gpt2" else _neox, tokenizer_file)
    run_dir = tmp_path / "run"
    import_series(src, run_dir, data=str(tiny_text), n_ctx=N_CTX)
    proc = subprocess.Popen([sys.executable, "-c", _SWEEP, str(run_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while _rows(run_dir) == 0 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = _rows(run_dir)
    assert 0 < at_kill < 15, f"the kill should land mid-sweep ({at_kill} rows)"
    r = run_sweep(run_dir, components="heads,all", data="pretrain", progress=False,
                  chains=2, draws=6, batch_size=4, init_batches=1, n_samples=16)
    assert r.computed == 15 - at_kill
    df = load_results(run_dir)
    assert len(df) == 15 and not df.duplicated(["step", "component", "data"]).any()
