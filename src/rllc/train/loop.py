"""The training loop: AdamW on next-token prediction, checkpoints on a schedule, exact resume after a kill.

Resuming reloads the last checkpoint's weights, the optimizer moments and the data generator's state, so the
remaining checkpoints equal those of an uninterrupted run with the same seed (on CPU).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rllc import __version__
from rllc._errors import DiskFullError, RllcError, check_writable, writing
from rllc.model.config import ModelConfig
from rllc.model.transformer import Transformer
from rllc.train.checkpoints import (
    atomic_write_bytes, atomic_write_json, load_tensors, read_json, read_jsonl, save_tensors,
)
from rllc.train.config import TrainConfig, checkpoint_schedule
from rllc.train.run import Run, RunConfig, checkpoint_name, load_run


def token_cross_entropy(logits: torch.Tensor, tokens: torch.Tensor, *, per_token: bool = False) -> torch.Tensor:
    """Cross-entropy of predicting tokens[:, 1:] from logits[:, :-1]: the one definition of the training loss
    (the LLC's `next_token_loss`, ablations and Hessian measures call it).

    Args:
        logits: (B, T, V); tokens: (B, T).
        per_token: return (B, T - 1) losses instead of their mean.
    """
    if per_token:
        return F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")  # (B, T - 1)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


def _lr_lambda(cfg: TrainConfig):  # noqa: ANN202
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "cosine":
            t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        return 1.0

    return f


# A full disk at a checkpoint: the weights stay in memory and the write is retried this often before giving up.
FULL_DISK_RETRIES = 6
FULL_DISK_WAIT_S = 10.0
_PREPARED = {"tokenizer.json", "data"}  # what a fresh run directory may hold before its run.json is written


def _check_dir(out: Path, run_cfg: RunConfig) -> dict | None:
    """Check, writing nothing, that `out` is new, empty, prepared (a supplied tokenizer.json, token caches) or
    holds this same run. Returns the saved run.json of a run to resume, else None."""
    if out.exists() and not out.is_dir():
        raise RllcError(f"--out {out} is a file, not a directory; pick a new --out")
    if (out / "run.json").exists():
        saved = read_json(out / "run.json", "run config")
        mine = json.loads(json.dumps(run_cfg.to_dict()))  # tuples become lists, as in the saved file
        if {k: saved.get(k) for k in ("model", "train")} != {k: mine[k] for k in ("model", "train")}:
            raise RllcError(
                f"{out} holds a run with a different config; resume it with the same flags or pick another --out"
            )
        check_writable(out, "cannot resume training")
        return saved
    if out.exists() and any(p.name not in _PREPARED for p in out.iterdir()):
        raise RllcError(f"{out} exists and is not an rllc run directory; pick an empty or new --out")
    check_writable(out, "cannot create the run directory")
    return None


def _tokenizer(out: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, saved: dict | None):  # noqa: ANN202
    """The run's tokenizer: the saved one (checked against run.json), a supplied one, or a BPE trained now (kept
    in memory: the caller saves it once the run directory is committed)."""
    from rllc.data import corpus_texts_for_tokenizer, load_tokenizer, train_tokenizer
    from rllc.train.run import checked_tokenizer

    path = out / "tokenizer.json"
    if saved is not None:
        return checked_tokenizer(path, RunConfig.from_dict(saved, out / "run.json"))
    if path.exists():
        tok = load_tokenizer(path)
        if tok.get_vocab_size() != model_cfg.d_vocab:
            raise RllcError(f"the supplied tokenizer {path} has {tok.get_vocab_size()} tokens but --vocab-size is "
                            f"{model_cfg.d_vocab}; pass --vocab-size {tok.get_vocab_size()}")
        return tok
    texts = corpus_texts_for_tokenizer(train_cfg.data, max_chars=train_cfg.tokenizer_chars)
    tok = train_tokenizer(texts, train_cfg.vocab_size)
    if tok.get_vocab_size() != model_cfg.d_vocab:
        raise RllcError(f"the text of --data {train_cfg.data!r} is too small for a {train_cfg.vocab_size}-token BPE "
                        f"vocabulary: training stopped at {tok.get_vocab_size()} tokens (no pair of tokens left to "
                        f"merge); use --vocab-size {tok.get_vocab_size()} or less, or more text")
    return tok


def _save_state(out: Path, step: int, model: Transformer, opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
    """Optimizer moments and the data generator, as safetensors + JSON (never pickled)."""
    (out / "state").mkdir(exist_ok=True)
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {"rng.data": gen.get_state()}
    for group in opt.param_groups:
        for p in group["params"]:
            for k, v in opt.state[p].items():
                tensors[f"opt.{names[id(p)]}.{k}"] = torch.as_tensor(v)
    # One file, step in its metadata, replaced atomically: the moments and the step can never disagree.
    save_tensors(out / "state" / "resume.safetensors", tensors, meta={"step": str(step)})


def _load_state(out: Path, model: Transformer, opt: torch.optim.Optimizer, gen: torch.Generator) -> int:
    """Restore the state saved at the last checkpoint; returns its step (0 when starting fresh).

    If that checkpoint is gone (deleted after an error said it was corrupt), training restarts from step 0:
    training is deterministic, so the checkpoints before it are recomputed bit for bit.
    """
    path = out / "state" / "resume.safetensors"
    if not path.exists():
        return 0
    tensors, meta = load_tensors(path, with_metadata=True)
    step = int(meta["step"])
    ckpt = out / "checkpoints" / checkpoint_name(step)
    if not (ckpt.with_suffix(".json").exists() and ckpt.with_suffix(".safetensors").exists()):
        print(f"rllc: note: checkpoint {ckpt.name} of the saved optimizer state is gone; retraining from step 0 "
              "(deterministic: earlier checkpoints come out identical)", file=sys.stderr)
        return 0
    model.load_state_dict(load_tensors(out / "checkpoints" / f"{checkpoint_name(step)}.safetensors"))
    gen.set_state(tensors["rng.data"])
    for name, p in model.named_parameters():
        st = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"opt.{name}.")}
        if st:
            opt.state[p] = {k: v.to(p.device) if k != "step" else v for k, v in st.items()}
    return step


@torch.no_grad()
def _evaluate(model: Transformer, val, cfg: TrainConfig, device: str) -> float:
    gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)  # the same validation batches at every checkpoint
    model.eval()
    losses = [token_cross_entropy(model(x := val.sample_batch(cfg.batch_size, gen).to(device)), x).item()
              for _ in range(cfg.eval_batches)]
    model.train()
    return sum(losses) / len(losses)


def train_model(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    out: str | Path,
    *,
    device: str = "cpu",
    progress: bool = True,
    stop_after: int | None = None,
) -> Run:
    """Train a model, writing checkpoints into the run directory `out`; resume if it already holds this run.

    Args:
        model_cfg, train_cfg: the configs (see `rllc.train.preset`).
        out: run directory; created if new, resumed if it holds the same run, refused otherwise. A new
            directory holding only a `tokenizer.json` trains with that tokenizer instead of a new BPE.
        device: "cpu" or "cuda".
        progress: show a progress bar with the loss.
        stop_after: stop after this step (for tests of resuming); None trains to `train_cfg.steps`.
    Returns:
        The Run (see `load_run`).
    """
    from rllc.data import build_dataset, tokenizer_id

    out = Path(out)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RllcError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    checkpoint_schedule(train_cfg.steps, train_cfg.checkpoints)  # configs validate themselves; this too, early
    saved = _check_dir(out, RunConfig(model_cfg, train_cfg))
    tok = _tokenizer(out, model_cfg, train_cfg, saved)
    run_cfg = RunConfig(model_cfg, train_cfg, tokenizer_id(tok))
    # A new run directory is committed by its run.json, written once the data are tokenised: an error before it
    # (a corpus too small, a full disk) removes what this call created, so the corrected command starts clean.
    existed = out.exists()
    had_data = (out / "data").exists()
    try:
        data_kw = dict(n_ctx=model_cfg.n_ctx, cache_dir=out / "data", seed=train_cfg.seed)
        train_ds = build_dataset(train_cfg.data, tok, split="train", **data_kw)
        val_ds = build_dataset(train_cfg.data, tok, split="val", **data_kw)
        if saved is None:
            if not (out / "tokenizer.json").exists():
                with writing(out / "tokenizer.json", what="tokenizer"):
                    tok.save(str(out / "tokenizer.json"))
            atomic_write_json(out / "run.json", {**run_cfg.to_dict(), "rllc_version": __version__})
    except RllcError:
        if saved is None and not existed:
            shutil.rmtree(out, ignore_errors=True)
        elif saved is None and not had_data:
            shutil.rmtree(out / "data", ignore_errors=True)
        raise
    (out / "checkpoints").mkdir(exist_ok=True)

    model = Transformer(model_cfg, seed=train_cfg.seed).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, betas=train_cfg.betas,
                            weight_decay=train_cfg.weight_decay)
    gen = torch.Generator().manual_seed(train_cfg.seed)
    start = _load_state(out, model, opt, gen)
    lr_at = _lr_lambda(train_cfg)  # a pure function of the step, so resuming needs no scheduler state
    schedule = set(checkpoint_schedule(train_cfg.steps, train_cfg.checkpoints))
    tokens_per_step = train_cfg.batch_size * model_cfg.n_ctx
    metrics_path = out / "metrics.jsonl"
    if metrics_path.exists():  # drop log lines past the checkpoint we resume from (and a torn last line)
        keep = [r for r in read_jsonl(metrics_path, "training log") if r.get("step", 0) <= start]
        atomic_write_bytes(metrics_path, "".join(json.dumps(r) + "\n" for r in keep).encode())

    def checkpoint(step: int, train_loss: float | None) -> float:
        val_loss = _evaluate(model, val_ds, train_cfg, device)
        meta = {"step": step, "tokens_seen": step * tokens_per_step, "train_loss": train_loss, "val_loss": val_loss,
                "data": train_cfg.data, "tokenizer_id": run_cfg.tokenizer_id, "rllc_version": __version__}
        for attempt in range(FULL_DISK_RETRIES + 1):  # a full disk: the model waits in memory for space
            try:
                save_tensors(out / "checkpoints" / f"{checkpoint_name(step)}.safetensors", model.state_dict())
                atomic_write_json(out / "checkpoints" / f"{checkpoint_name(step)}.json", meta)  # last: the commit
                _save_state(out, step, model, opt, gen)
                return val_loss
            except DiskFullError as e:
                if attempt == FULL_DISK_RETRIES:
                    raise
                print(f"\nrllc: {e}; step {step} is held in memory: retrying in {FULL_DISK_WAIT_S:g} s "
                      "(free space now)", file=sys.stderr)
                time.sleep(FULL_DISK_WAIT_S)
        raise AssertionError("unreachable")

    if start == 0 and not (out / "checkpoints" / f"{checkpoint_name(0)}.json").exists():
        checkpoint(0, None)
    last = min(train_cfg.steps, stop_after) if stop_after is not None else train_cfg.steps
    model.train()
    bar = tqdm(range(start + 1, last + 1), initial=start, total=train_cfg.steps, disable=not progress,
               desc=f"train {out.name}", unit="step", dynamic_ncols=True)
    window: list[float] = []
    since_ckpt: list[float] = []
    val_loss = float("nan")
    t0 = time.perf_counter()
    with writing(metrics_path, what="training log"), open(metrics_path, "a") as log:
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = train_cfg.lr * lr_at(step - 1)
            x = train_ds.sample_batch(train_cfg.batch_size, gen).to(device)  # (B, T)
            loss = token_cross_entropy(model(x), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if train_cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            opt.step()
            window.append(loss.item())
            since_ckpt.append(window[-1])
            if step % train_cfg.log_every == 0 or step == last:
                log.write(json.dumps({"step": step, "train_loss": sum(window) / len(window)}) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{sum(window) / len(window):.3f}", val=f"{val_loss:.3f}")
                window = []
            if step in schedule:
                val_loss = checkpoint(step, sum(since_ckpt) / len(since_ckpt))
                since_ckpt = []
    bar.close()
    run = load_run(out)
    if progress and last > start:
        print(f"trained steps {start + 1}..{last} in {time.perf_counter() - t0:.0f} s; run directory {out}")
    return run
