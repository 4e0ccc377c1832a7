"""The component registry: names for parts of the model, resolved to boolean masks over its parameters.

A weight-refined LLC moves only a component's coordinates; everything else stays at w*. Names:
  "l:h"        head h of layer l: W_Q[h], W_K[h], W_V[h], W_O[h], b_Q[h], b_K[h], b_V[h] of block l
  "layer:l"    all of block l (its LayerNorm and attention, b_O included)
  "embed", "pos_embed", "unembed" (W_U and b_U), "ln" (every LayerNorm), "all"
A list (or a comma-separated string) names the union. `heads(cfg)` lists every head name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rllc._errors import RllcError
from rllc.model.config import ModelConfig

_HEAD_PARAMS = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")
_NAMED = ("embed", "pos_embed", "unembed", "ln", "all")


def heads(cfg: ModelConfig) -> list[str]:
    """Every head's component name, layer-major: ["0:0", "0:1", ..., f"{L-1}:{H-1}"]."""
    return [f"{l}:{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]


def _param_names(cfg: ModelConfig) -> list[str]:
    names = ["embed.W_E", "pos_embed.W_pos"]
    for l in range(cfg.n_layers):
        names += [f"blocks.{l}.ln1.w", f"blocks.{l}.ln1.b"]
        names += [f"blocks.{l}.attn.{p}" for p in (*_HEAD_PARAMS, "b_O")]
    return names + ["ln_final.w", "ln_final.b", "unembed.W_U", "unembed.b_U"]


@dataclass(frozen=True)
class Component:
    """A named set of parameter coordinates. `selection` maps parameter name → head index (or None: whole)."""

    name: str
    selection: tuple[tuple[str, int | None], ...]

    @classmethod
    def parse(cls, cfg: ModelConfig, spec: str | Sequence[str]) -> Component:
        """Resolve a component name, a comma-separated list, or a list of names (their union)."""
        parts = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
        if not parts:
            raise RllcError("empty component name; try '1:6', 'layer:0', 'embed', 'unembed', 'ln' or 'all'")
        sel: dict[tuple[str, int | None], None] = {}
        for part in parts:
            for key in _select(cfg, part):
                sel[key] = None
        whole = {n for n, h in sel if h is None}
        kept = tuple(k for k in sel if k[1] is None or k[0] not in whole)  # a whole tensor subsumes its heads
        return cls(name=",".join(parts), selection=kept)

    @property
    def param_names(self) -> list[str]:
        return sorted({n for n, _ in self.selection})

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Boolean masks, one per parameter this component touches (same shape as the parameter)."""
        params = dict(model.named_parameters())
        out: dict[str, torch.Tensor] = {}
        for name, h in self.selection:
            p = params[name]
            m = out.setdefault(name, torch.zeros(p.shape, dtype=torch.bool, device=p.device))
            if h is None:
                m.fill_(True)
            else:
                m[h] = True
        return out

    def size(self, model: nn.Module) -> int:
        """Number of coordinates in the component."""
        return int(sum(m.sum() for m in self.masks(model).values()))


def _select(cfg: ModelConfig, part: str) -> list[tuple[str, int | None]]:
    if m := re.fullmatch(r"(\d+):(\d+)", part):
        l, h = int(m[1]), int(m[2])
        if l >= cfg.n_layers or h >= cfg.n_heads:
            raise RllcError(
                f"unknown head {part!r}: the model has layers 0..{cfg.n_layers - 1} and heads 0..{cfg.n_heads - 1}"
            )
        return [(f"blocks.{l}.attn.{p}", h) for p in _HEAD_PARAMS]
    if m := re.fullmatch(r"layer:(\d+)", part):
        l = int(m[1])
        if l >= cfg.n_layers:
            raise RllcError(f"unknown layer {part!r}: the model has layers 0..{cfg.n_layers - 1}")
        return [(n, None) for n in _param_names(cfg) if n.startswith(f"blocks.{l}.")]
    names = _param_names(cfg)
    if part == "embed":
        return [("embed.W_E", None)]
    if part == "pos_embed":
        return [("pos_embed.W_pos", None)]
    if part == "unembed":
        return [("unembed.W_U", None), ("unembed.b_U", None)]
    if part == "ln":
        return [(n, None) for n in names if ".ln1." in n or n.startswith("ln_final.")]
    if part == "all":
        return [(n, None) for n in names]
    raise RllcError(
        f"unknown component {part!r}; use a head 'l:h' (e.g. '1:6'), 'layer:l', or one of {', '.join(_NAMED)}"
    )


def resolve_masks(
    model: nn.Module, component: str | Sequence[str] | Mapping[str, torch.Tensor] | None
) -> dict[str, torch.Tensor] | None:
    """Boolean masks for the coordinates that move, or None when every parameter moves.

    Args:
        model: an rllc `Transformer` (for names) or any module (for dict masks).
        component: None (all parameters), a registry name or list of names, or a dict parameter name → bool
            mask of that parameter's shape. Parameters absent from the result are frozen.
    Returns:
        dict parameter name → BoolTensor with the parameter's shape, or None.
    """
    if component is None:
        return None
    params = dict(model.named_parameters())
    if isinstance(component, Mapping):
        out = {}
        for name, mask in component.items():
            if name not in params:
                raise RllcError(f"mask names parameter {name!r}, which the model does not have")
            mask = torch.as_tensor(mask, dtype=torch.bool, device=params[name].device)
            if mask.shape != params[name].shape:
                raise RllcError(
                    f"mask for {name!r} has shape {tuple(mask.shape)}, the parameter {tuple(params[name].shape)}"
                )
            out[name] = mask
        return out
    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, ModelConfig):
        raise RllcError("component names need an rllc Transformer; for other modules pass a dict of boolean masks")
    return Component.parse(cfg, component).masks(model)
