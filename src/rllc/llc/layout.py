"""A component's moving coordinates as one flat vector: which parameter coordinates, in which order.

The order is the adapter's canonical parameter order (``named_parameters`` order for rllc's Transformer and
any unadapted module), row-major within a tensor (``tensor[mask]``) — so a head's vector is
W_Q[h], W_K[h], W_V[h], W_O[h], b_Q[h], b_K[h], b_V[h] flattened and concatenated. Every gradient strategy reads
and writes positions, gradients and noise through this layout, which is what makes them the same chains.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True, eq=False)
class Slot:
    name: str  # parameter name
    index: torch.Tensor | None  # (size,) flat row-major indices of the moving coordinates; None: the whole tensor
    offset: int  # start in the flat vector
    size: int  # coordinates
    numel: int  # the parameter's size


class Layout:
    """The flat layout of one component over ``model``'s parameters.

    Args:
        model: the module whose ``named_parameters`` define the coordinates.
        masks: parameter name → bool mask (the component), or None for every parameter.
        device: where the tensors it reads and writes live.
    """

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor] | None,
                 device: torch.device | str = "cpu") -> None:
        slots, off = [], 0
        for n, p in _canonical_parameters(model):
            if masks is None:
                index, size = None, p.numel()
            elif n in masks and bool(masks[n].any()):
                index = torch.nonzero(masks[n].reshape(-1)).squeeze(1).to(device)  # sorted: row-major order
                size = len(index)
                if size == p.numel():
                    index = None
            else:
                continue
            slots.append(Slot(n, index, off, size, p.numel()))
            off += size
        self.slots: tuple[Slot, ...] = tuple(slots)
        self.size = off
        self.names = [s.name for s in slots]

    def gather(self, tensors: dict[str, torch.Tensor], lead: int = 0) -> torch.Tensor:
        """The flat vectors (*L, d) of ``tensors`` (name → tensor (*L, *parameter shape), ``lead`` = len(L)
        leading dims) at the moving coordinates."""
        parts = []
        for s in self.slots:
            t = tensors[s.name]
            t = t.reshape(*t.shape[:lead], s.numel)
            parts.append(t if s.index is None else t.index_select(lead, s.index))
        return torch.cat(parts, dim=lead)

    def scatter_(self, tensors: dict[str, torch.Tensor], flat: torch.Tensor, lead: int = 0) -> None:
        """Write flat vectors (*L, d) into ``tensors`` (contiguous, (*L, *parameter shape)) in place."""
        for s in self.slots:
            part = flat[..., s.offset:s.offset + s.size]
            t = tensors[s.name]
            v = t.view(*t.shape[:lead], s.numel)
            if s.index is None:
                v.copy_(part)
            else:
                v.index_copy_(lead, s.index, part)


def _canonical_parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``named_parameters`` in the adapter's canonical order (rllc's: TransformerLens lists W_O before W_K), so the
    same weights give the same flat vector — and the same chains — in either format; other modules: as listed."""
    from rllc.model.adapters import adapt, supported

    named = dict(model.named_parameters())
    if not supported(model):
        return list(named.items())
    order = [n for n in adapt(model).canonical_names() if n in named]
    return [(n, named[n]) for n in order] + [(n, p) for n, p in named.items() if n not in set(order)]


def component_key(model: nn.Module, component: object) -> str:
    """The canonical identity of a component, which keys its noise streams.

    None (every parameter) is "all", like the registry's "all"; a name, union or list of names is its canonical
    name (``rllc.model.components.Component.parse(...).name``, the same for every model family); a dict of masks is "masks:" and a digest of its names and mask contents.
    """
    if component is None:
        return "all"
    if isinstance(component, dict):
        h = hashlib.sha256()
        for n in sorted(component):
            m = torch.as_tensor(component[n], dtype=torch.bool).cpu().contiguous()
            h.update(n.encode() + str(tuple(m.shape)).encode() + m.numpy().tobytes())
        return "masks:" + h.hexdigest()[:16]
    from rllc._errors import RllcError
    from rllc.model.components import Component

    try:
        return Component.parse(component).name  # the one parser: "0:1,0:3", ["0:1", "0:3"] -> "0:1+0:3"
    except RllcError:
        parts = component.split(",") if isinstance(component, str) else list(component)
        return ",".join(str(p).strip() for p in parts if str(p).strip())
