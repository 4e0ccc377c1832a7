"""Components: one parsed value for "which weights move", and its boolean masks on any supported model.

A weight-refined LLC moves only a component's coordinates; everything else stays at w*. Names (one parser, used by
every command and every table):
  "l:h"        head h of layer l (also accepted: "l1h2", "L1H2", "1.2"): its query, key, value and output slices
               — for an rllc/TransformerLens model W_Q[h], W_K[h], W_V[h], W_O[h], b_Q[h], b_K[h], b_V[h]; for fused
               Hugging Face layouts the same slices of `c_attn`/`query_key_value` and `c_proj`/`dense` (see the
               adapters). The shared output bias b_O is no head's.
  "layer:l"    all of block l (LayerNorms, attention with b_O, and the MLP where there is one)
  "embed", "pos_embed", "unembed", "ln" (every LayerNorm), "all"
  a union      parts joined by "+": "0:1+0:3" (canonical); a list of names or the older "0:1,0:3" mean the same.
`Component.name` is the canonical string: results are stored and random streams keyed under it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rllc._errors import RllcError

NAMED = ("embed", "pos_embed", "unembed", "ln", "all")
_HEAD_RE = re.compile(r"(\d+):(\d+)|[lL](\d+)[hH](\d+)|(\d+)\.(\d+)")
_LAYER_RE = re.compile(r"layer:(\d+)")


@dataclass(frozen=True, order=True)
class Part:
    """One named piece: kind "head" (layer, head), "layer" (layer) or one of NAMED."""

    kind: str
    layer: int = -1
    head: int = -1

    @property
    def name(self) -> str:
        if self.kind == "head":
            return f"{self.layer}:{self.head}"
        if self.kind == "layer":
            return f"layer:{self.layer}"
        return self.kind


def _part(text: str) -> Part:
    s = text.strip()
    if m := _HEAD_RE.fullmatch(s):
        l, h = (int(g) for g in m.groups() if g is not None)
        return Part("head", l, h)
    if m := _LAYER_RE.fullmatch(s):
        return Part("layer", int(m[1]))
    if s in NAMED:
        return Part(s)
    raise RllcError(f"unknown component {s!r}; use a head 'l:h' (e.g. '1:6'), 'layer:l', one of "
                    f"{', '.join(NAMED)}, or a union joined by '+' (e.g. '0:1+0:3')")


@dataclass(frozen=True)
class Component:
    """A parsed component: the union of its parts, in the order first named. Compare and hash by `name`."""

    parts: tuple[Part, ...]

    @classmethod
    def parse(cls, spec: str | Sequence[str] | Component, cfg: Any = None) -> Component:
        """Parse a name ("1:6", "layer:0", "0:1+0:3", the older "0:1,0:3") or a list of names (their union).

        Args:
            spec: the name(s); a Component is returned as is.
            cfg: optional model shape (n_layers, n_heads) to check layer and head indices against.
        """
        if hasattr(spec, "n_layers"):  # the older spelling parse(cfg, spec)
            spec, cfg = cfg, spec
        if isinstance(spec, Component):
            comp = spec
        else:
            texts = [spec] if isinstance(spec, str) else list(spec)
            for union in (u for t in texts for u in str(t).split(",") if "+" in u):
                if any(not x.strip() for x in union.split("+")):
                    raise RllcError(f"component {union.strip()!r} has an empty part; write a union as a+b "
                                    "(e.g. 0:0+0:1)")
            pieces = [p for t in texts for p in re.split(r"[+,]", str(t)) if p.strip()]
            if not pieces:
                raise RllcError("empty component name; try '1:6', 'layer:0', 'embed', 'unembed', 'ln' or 'all'")
            seen: dict[Part, None] = {}
            for p in pieces:
                seen.setdefault(_part(p), None)
            comp = cls(tuple(seen))
        if cfg is not None:
            comp.check(cfg)
        return comp

    @property
    def name(self) -> str:
        """Canonical name: parts joined by '+' in the order given."""
        return "+".join(p.name for p in self.parts)

    def __str__(self) -> str:
        return self.name

    @property
    def head(self) -> tuple[int, int] | None:
        """(layer, head) if this is exactly one attention head, else None."""
        if len(self.parts) == 1 and self.parts[0].kind == "head":
            return self.parts[0].layer, self.parts[0].head
        return None

    @property
    def is_head(self) -> bool:
        """Whether this is one head or a union of heads only (what a sweep groups as "head components")."""
        return all(p.kind == "head" for p in self.parts)

    def check(self, cfg: Any) -> None:
        """Raise a one-line RllcError if a layer or head index is outside the model `cfg` (n_layers, n_heads)."""
        for p in self.parts:
            if p.kind in ("head", "layer") and p.layer >= cfg.n_layers:
                raise RllcError(f"unknown {'head' if p.kind == 'head' else 'layer'} {p.name!r}: the model has layers "
                                f"0..{cfg.n_layers - 1}")
            if p.kind == "head" and p.head >= cfg.n_heads:
                raise RllcError(f"unknown head {p.name!r}: the model has heads 0..{cfg.n_heads - 1} per layer")

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Boolean masks, one per parameter this component touches (same shape as the parameter)."""
        from rllc.model.adapters import adapt

        return adapt(model).masks(self)

    def size(self, model: nn.Module) -> int:
        """Number of coordinates in the component."""
        return int(sum(m.sum() for m in self.masks(model).values()))


def parse_component(spec: str | Sequence[str] | Component, cfg: Any = None) -> Component:
    """The one parser: a name, a union ("0:1+0:3") or a list of names -> Component (see the module docstring)."""
    return Component.parse(spec, cfg)


def canonical_name(spec: str | Sequence[str] | Component) -> str:
    """The canonical spelling of a component name: `canonical_name("L1H2,0:0") == "1:2+0:0"`."""
    return Component.parse(spec).name


@functools.lru_cache(maxsize=4096)
def is_head_name(name: str) -> bool:
    """Whether a stored component name is exactly one head "l:h" (not a union, not a composition pair)."""
    try:
        return Component.parse(name).head is not None
    except RllcError:
        return False


def head_index(name: str) -> tuple[int, int]:
    """(layer, head) of a single-head name; raises RllcError otherwise."""
    h = Component.parse(name).head
    if h is None:
        raise RllcError(f"{name!r} is not a single head 'l:h'")
    return h


def heads(cfg: Any) -> list[str]:
    """Every head's component name, layer-major: ["0:0", "0:1", ..., f"{L-1}:{H-1}"]. cfg has n_layers, n_heads."""
    return [f"{l}:{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]


def component_masks(model: nn.Module, name: str | Sequence[str] | Component) -> dict[str, torch.Tensor]:
    """Boolean masks of a component on any supported model (rllc, TransformerLens, HF GPT-2, HF GPT-NeoX).

    Args:
        model: the model.
        name: a component name, union or list of names.
    Returns:
        dict parameter name (as in `model.named_parameters()`) -> BoolTensor of that parameter's shape; parameters
        the component does not touch are absent.
    """
    from rllc.model.adapters import adapt

    a = adapt(model)
    return a.masks(Component.parse(name, a.cfg))


def resolve_masks(
    model: nn.Module, component: str | Sequence[str] | Component | Mapping[str, torch.Tensor] | None
) -> dict[str, torch.Tensor] | None:
    """Boolean masks for the coordinates that move, or None when every parameter moves.

    Args:
        model: any supported model (for names), or any module (for dict masks).
        component: None (all parameters), a name, union or list of names, a Component, or a dict parameter
            name -> bool mask of that parameter's shape. Parameters absent from the result are frozen.
    Returns:
        dict parameter name -> BoolTensor with the parameter's shape, or None.
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
    return component_masks(model, component)
