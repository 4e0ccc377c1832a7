"""The model's configuration: one frozen dataclass of plain types, stored with every checkpoint."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from rllc._errors import RllcError


@dataclass(frozen=True)
class ModelConfig:
    """An attention-only transformer with LayerNorm and shortformer positions (no MLPs).

    Defaults are the paper's model (Wang et al. 2024, §2; ~3.16M parameters with a 5,000-token vocabulary).
    """

    n_layers: int = 2  # 0 gives a "bigram" model (embed → LN → unembed)
    n_heads: int = 8
    d_model: int = 256
    d_head: int = 32
    n_ctx: int = 1024  # longest context; also the number of learned positions
    d_vocab: int = 5000
    ln_eps: float = 1e-5
    init_range: float = -1.0  # std of the normal init; -1 means TransformerLens's gpt2 default 0.8/sqrt(d_model)

    def __post_init__(self) -> None:
        for f in ("n_heads", "d_model", "d_head", "n_ctx", "d_vocab"):
            if getattr(self, f) < 1:
                raise RllcError(f"model config: {f} must be a positive integer, got {getattr(self, f)}")
        if self.n_layers < 0:
            raise RllcError(f"model config: n_layers must be >= 0, got {self.n_layers}")

    @property
    def initializer_range(self) -> float:
        return self.init_range if self.init_range > 0 else 0.8 / math.sqrt(self.d_model)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise RllcError(f"model config has unknown fields {sorted(unknown)}; was it written by a newer rllc?")
        return cls(**d)
