"""Training configuration, presets, and the checkpoint schedule."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from rllc._errors import RllcError
from rllc.model.config import ModelConfig


def checkpoint_schedule(total_steps: int, spec: str = "paper") -> list[int]:
    """The steps at which checkpoints are written (always including 0 and the last step).

    "paper" scales the paper's 107-checkpoint schedule for 50k steps (0, 100, every 200 to 10k, every 400 to
    20k, every 1,000 to 50k) to `total_steps`, dense early where the model changes fastest.
    """
    if spec == "paper":
        s = total_steps / 50_000
        marks = [0.0, 100.0, *range(200, 10_001, 200), *range(10_400, 20_001, 400), *range(21_000, 50_001, 1000)]
        steps = {round(m * s) for m in marks}
    elif spec.startswith("every:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            raise RllcError(f"bad checkpoint schedule {spec!r}; use 'every:N' with an integer N") from None
        if n < 1:
            raise RllcError(f"bad checkpoint schedule {spec!r}: N must be positive")
        steps = set(range(0, total_steps + 1, n))
    else:
        try:
            steps = {int(x) for x in spec.split(",") if x.strip()}
        except ValueError:
            raise RllcError(f"bad checkpoint schedule {spec!r}; use 'paper', 'every:N' or 'S1,S2,...'") from None
        if outside := sorted(x for x in steps if not 0 <= x <= total_steps):
            raise RllcError(f"checkpoint step {outside[-1]} in {spec!r} is outside 0..{total_steps} (--steps)")
    steps |= {0, total_steps}
    return sorted(x for x in steps if 0 <= x <= total_steps)


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained. Defaults are the paper's released configs (AdamW, constant lr, no warm-up)."""

    data: str = "pretrain"  # a data spec: named source, mixture "prose*0.5,synthetic.repeat*0.5", or a path
    steps: int = 50_000
    batch_size: int = 100
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.05
    warmup_steps: int = 0
    schedule: str = "constant"  # "constant" or "cosine" (after warm-up, to 10% of lr at the last step)
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    seed: int = 0
    vocab_size: int = 5000  # BPE vocabulary trained on the text part of `data`
    tokenizer_chars: int = 20_000_000  # characters of text used to train the BPE
    eval_batches: int = 8  # validation batches at every checkpoint
    log_every: int = 10  # training-loss log interval (steps)
    checkpoints: str = "paper"  # "paper" (the paper's schedule scaled to `steps`), "every:N", or "S1,S2,..."

    def __post_init__(self) -> None:
        """Every field checked here, so a bad value fails before anything is written."""
        def bad(name: str, want: str) -> RllcError:
            flag = {"steps": "--steps", "batch_size": "--batch-size", "lr": "--lr", "vocab_size": "--vocab-size"}
            return RllcError(f"training config: {name} ({flag.get(name, name)}) must be {want}, got "
                             f"{getattr(self, name)!r}")

        def integer(x: Any) -> bool:
            return isinstance(x, int) and not isinstance(x, bool)

        def number(x: Any) -> bool:
            return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

        for name in ("steps", "batch_size", "eval_batches", "log_every", "tokenizer_chars"):
            if not integer(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "a positive integer")
        for name in ("warmup_steps", "seed"):
            if not integer(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "a non-negative integer")
        if not number(self.lr) or self.lr <= 0:
            raise bad("lr", "a positive finite number")
        for name in ("weight_decay", "grad_clip"):
            if not number(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "a finite number >= 0")
        if not integer(self.vocab_size) or not 257 <= self.vocab_size <= 65536:
            raise bad("vocab_size", "an integer from 257 (256 bytes + <|endoftext|>) to 65536 (uint16 caches)")
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2 or \
                not all(number(b) and 0 <= b < 1 for b in self.betas):
            raise bad("betas", "two numbers in [0, 1)")
        if self.schedule not in ("constant", "cosine"):
            raise RllcError(f"unknown lr schedule {self.schedule!r}; use 'constant' or 'cosine'")
        if not isinstance(self.data, str) or not isinstance(self.checkpoints, str):
            raise RllcError(f"training config: data and checkpoints must be strings, got {self.data!r}, "
                            f"{self.checkpoints!r}")
        from rllc.data.dataset import parse_data_spec

        parse_data_spec(self.data)  # unknown names and bad weights
        checkpoint_schedule(self.steps, self.checkpoints)
        object.__setattr__(self, "betas", tuple(self.betas))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := set(d) - known:
            raise RllcError(f"training config has unknown fields {sorted(unknown)}; was it written by a newer rllc?")
        return cls(**d)


# The paper: 2 layers x 8 heads, d_model 256, n_ctx 1024, vocab 5,000, AdamW 1e-3, 50k steps of batch 100.
PAPER = (ModelConfig(), TrainConfig())

# The demo's CPU preset: small enough to train in a few minutes on 2 cores, and still forms previous-token and
# induction heads, thanks to half of every batch being a random span repeated end to end (see docs/design.md).
# Measured (seed 0): induction heads form abruptly around step 2,500 (score 0.06 -> 0.95) and a previous-token
# head passes 0.5 at ~3,500 (0.71 at 5,000); with lr 3e-3 and a 2,048-token BPE they formed later and the
# previous-token head stayed at 0.41 by step 5,000, at twice the cost per step (the unembedding dominates).
CPU = (
    ModelConfig(n_layers=2, n_heads=4, d_model=64, d_head=16, n_ctx=64, d_vocab=1024),
    TrainConfig(
        data="prose*0.35,code*0.15,synthetic.repeat*0.5",
        steps=5000,
        batch_size=32,
        lr=6e-3,
        vocab_size=1024,
        tokenizer_chars=3_000_000,
        eval_batches=4,
    ),
)

# The multigram circuit (§4.3) needs nested brackets in the training data: the `cpu` model and schedule with a fifth
# of every batch synthetic Dyck sequences (half of them nested, up to depth 8, over the tokenizer's ()[]{} tokens),
# taken from the repeated spans; the text half is unchanged, so the BPE is trained on the same prose:code mixture.
# `rllc demo --preset dyck` trains it (and a 1-layer reference on the same data and tokenizer) and tests §4.3.
CPU_DYCK = (CPU[0], dataclasses.replace(CPU[1], data="prose*0.35,code*0.15,synthetic.repeat*0.3,synthetic.dyck*0.2"))

PRESETS: dict[str, tuple[ModelConfig, TrainConfig]] = {"paper": PAPER, "cpu": CPU, "cpu-dyck": CPU_DYCK}


def preset(name: str, **overrides: Any) -> tuple[ModelConfig, TrainConfig]:
    """The (model, training) configs of a preset, with overrides applied to whichever config owns each field.

    Args:
        name: "cpu", "cpu-dyck" (the cpu preset with nested-bracket data) or "paper".
        overrides: fields of ModelConfig (e.g. n_layers=1) or TrainConfig (e.g. steps=2000, seed=3); None skipped.
    """
    if name not in PRESETS:
        raise RllcError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    model_cfg, train_cfg = PRESETS[name]
    mfields = {f.name for f in dataclasses.fields(ModelConfig)}
    tfields = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(overrides) - mfields - tfields
    if unknown:
        raise RllcError(f"unknown setting(s) {sorted(unknown)} for preset {name!r}")
    if "vocab_size" in overrides:
        overrides.setdefault("d_vocab", overrides["vocab_size"])
    model_cfg = dataclasses.replace(model_cfg, **{k: v for k, v in overrides.items() if k in mfields})
    train_cfg = dataclasses.replace(train_cfg, **{k: v for k, v in overrides.items() if k in tfields})
    return model_cfg, train_cfg
