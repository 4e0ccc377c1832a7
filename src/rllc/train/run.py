"""A run directory and its reader, `load_run`.

Layout (every file is safetensors or JSON; nothing is pickled):
    run.json                      format, model and training config, tokenizer id, rllc version
    tokenizer.json                the run's BPE tokenizer (Hugging Face `tokenizers` format)
    checkpoints/step_{S:07d}.safetensors   weights, TransformerLens state-dict keys
    checkpoints/step_{S:07d}.json          step, tokens seen, train and validation loss, data, tokenizer id
    metrics.jsonl                 training loss every `log_every` steps
    state/                        optimizer and sampler state of the last checkpoint, for resuming
    data/                         tokenised corpora (uint16 memmaps), shared by every later command
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from rllc._errors import RllcError
from rllc.model.config import ModelConfig
from rllc.model.transformer import Transformer
from rllc.train.checkpoints import load_model, read_json, read_jsonl
from rllc.train.config import TrainConfig

RUN_FORMAT = "rllc-run/1"


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


@dataclass(frozen=True)
class RunConfig:
    """The configs a run was trained with."""

    model: ModelConfig
    train: TrainConfig
    tokenizer_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"format": RUN_FORMAT, "model": self.model.to_dict(), "train": self.train.to_dict(),
                "tokenizer_id": self.tokenizer_id}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: Path) -> RunConfig:
        if d.get("format") != RUN_FORMAT:
            raise RllcError(f"{source} has format {d.get('format')!r}, expected {RUN_FORMAT!r}")
        try:
            return cls(ModelConfig.from_dict(d["model"]), TrainConfig.from_dict(d["train"]), d.get("tokenizer_id", ""))
        except RllcError as e:
            raise RllcError(f"{source} is not a valid run config ({e})") from None
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise RllcError(f"{source} is not a valid run config ({type(e).__name__}: {e}); restore it from the "
                            "run's checkpoints' metadata or re-train") from None


@dataclass
class Run:
    """A trained (or training) run: its configs, tokenizer and checkpoints.

    Attributes:
        path: the run directory.
        config: RunConfig (`.model`, `.train`).
    """

    path: Path
    config: RunConfig
    _meta: dict[int, dict[str, Any]] = field(default_factory=dict, repr=False)

    @property
    def steps(self) -> list[int]:
        """Steps of the finished checkpoints, ascending."""
        out = []
        for p in sorted((self.path / "checkpoints").glob("step_*.json")):
            try:
                out.append(int(p.stem.split("_")[1]))
            except ValueError:
                continue
        return out

    @cached_property
    def tokenizer(self):  # noqa: ANN201 - tokenizers.Tokenizer
        from rllc.data import load_tokenizer

        return checked_tokenizer(self.path / "tokenizer.json", self.config)

    def checkpoint_path(self, step: int) -> Path:
        return self.path / "checkpoints" / f"{checkpoint_name(step)}.safetensors"

    def _check_step(self, step: int) -> int:
        steps = self.steps
        if step not in steps:
            if not steps:
                raise RllcError(f"run {self.path} has no checkpoints yet; train it with `rllc train --out {self.path}`")
            near = min(steps, key=lambda s: abs(s - step))
            raise RllcError(f"run {self.path} has no checkpoint at step {step}; nearest is {near} (see `rllc info`)")
        return step

    def model_at(self, step: int, device: str | torch.device = "cpu") -> Transformer:
        """The model at a checkpoint step, in eval mode."""
        self._check_step(step)
        made_with = self.metadata(step).get("tokenizer_id")
        if made_with and self.config.tokenizer_id and made_with != self.config.tokenizer_id:
            raise RllcError(f"checkpoint {self.checkpoint_path(step)} was trained with tokenizer {made_with}, this "
                            f"run with {self.config.tokenizer_id}: it comes from another run; remove it")
        return load_model(self.checkpoint_path(step), self.config.model, device).eval()

    def metadata(self, step: int) -> dict[str, Any]:
        """The checkpoint's JSON metadata (step, tokens_seen, train_loss, val_loss, data, tokenizer_id)."""
        if step not in self._meta:
            self._check_step(step)
            p = self.path / "checkpoints" / f"{checkpoint_name(step)}.json"
            self._meta[step] = read_json(p, "checkpoint metadata")
        return self._meta[step]

    def checkpoints(self) -> pd.DataFrame:
        """One row per checkpoint: step, tokens_seen, train_loss, val_loss."""
        rows = [self.metadata(s) for s in self.steps]
        cols = ["step", "tokens_seen", "train_loss", "val_loss"]
        return pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)

    def metrics(self) -> pd.DataFrame:
        """Training-loss log: step, train_loss (a torn last line, from a kill mid-write, is left out)."""
        return pd.DataFrame(read_jsonl(self.path / "metrics.jsonl", "training log"), columns=["step", "train_loss"])

    def dataset(self, spec: str | None = None, split: str = "val"):  # noqa: ANN201 - a Dataset with sample_batch
        """A data set tokenised with this run's tokenizer (cached in the run directory).

        Args:
            spec: a data spec; None or "pretrain" means this run's own training data.
            split: "train" or "val".
        """
        from rllc.data import build_dataset

        cfg = self.config
        if spec in (None, "pretrain"):
            spec = cfg.train.data
        return build_dataset(spec, self.tokenizer, n_ctx=cfg.model.n_ctx,
                             cache_dir=self.path / "data", split=split, seed=cfg.train.seed)


    def sample_tokens(self, spec: str | None = None, n: int = 2048, *, split: str = "train", seed: int = 0) -> torch.Tensor:
        """A fixed, seeded sample of `n` token windows (n, n_ctx) from a data spec — the data an LLC is measured on.

        Args:
            spec: data spec (default "pretrain": the run's own training data); e.g. "code" for a data-refined LLC.
            n: number of windows.
            split: "train" (default, as the paper's L_n) or "val".
        """
        return self.dataset(spec, split=split).sample_batch(n, torch.Generator().manual_seed(seed))


def checked_tokenizer(path: Path, config: RunConfig):  # noqa: ANN201 - tokenizers.Tokenizer
    """The tokenizer at `path`, checked to be the one `config` was trained with (its id, else its size)."""
    from rllc.data import load_tokenizer, tokenizer_id

    tok = load_tokenizer(path)
    if config.tokenizer_id and tokenizer_id(tok) != config.tokenizer_id:
        raise RllcError(f"tokenizer {path} (id {tokenizer_id(tok)}) is not the tokenizer this run was trained with "
                        f"(run.json records {config.tokenizer_id}); it was replaced: put the run's own tokenizer.json "
                        "back")
    if tok.get_vocab_size() != config.model.d_vocab:
        raise RllcError(f"tokenizer {path} has {tok.get_vocab_size()} tokens but the model's vocabulary is "
                        f"{config.model.d_vocab}; the run directory mixes two runs")
    return tok


def load_run(path: str | Path) -> Run:
    """Open a run directory written by `rllc train` or `rllc import` (an `ImportedRun`).

    Returns:
        Run with `.config`, `.tokenizer`, `.steps` and `.model_at(step)`.
    """
    path = Path(path)
    if not (path / "run.json").is_file():
        raise RllcError(f"{path} is not an rllc run directory (no run.json); create one with `rllc train --out {path}` "
                        f"or import a checkpoint series with `rllc import SRC --out {path} --data SPEC`")
    d = read_json(path / "run.json", "run config")
    from rllc.runs.imported import IMPORT_FORMAT, load_imported

    if isinstance(d, dict) and d.get("format") == IMPORT_FORMAT:
        return load_imported(path, d)
    return Run(path, RunConfig.from_dict(d, path / "run.json"))
