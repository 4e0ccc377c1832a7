"""Gradient strategies: how ∇L̂_m(w) is obtained for components × chains on one step's minibatches.

A strategy is handed the chains' flat positions (one (C, d_q) tensor per component q, in the component's
``Layout``), the minibatch indices of every chain and which chains are alive, and returns the minibatch losses
(Q, C), the gradients (one (C, d_q) tensor per component) and, when asked, each chain's loss at w* on its own
minibatch (paired differences). It never draws random numbers and never updates a position: the driver
(`driver.py`) owns the streams, the schedule and the kernel. Three strategies:

* ``AutogradStrategy`` — plain autograd on a copy of the model, one chain at a time, differentiating only the
  moving tensors (the reference);
* ``VmapStrategy`` — ``torch.func.grad`` of a ``functional_call`` vmapped over components × chains (pays for tiny
  models, where the loop is overhead-bound);
* ``HeadStrategy`` (`heads.py`) — attention heads of an rllc Transformer: one w* forward per minibatch shared by
  every head, only the head and the layers above recomputed, the unembedding's gradient in closed form.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from rllc.llc._data import BatchSource
from rllc.llc.layout import Layout
from rllc.llc.losses import LossFn
from rllc.model.adapters import to_device


class _LossModule(nn.Module):
    """Wraps ``loss_fn(model, batch)`` as a module so ``functional_call`` can swap the model's weights."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


class AutogradStrategy:
    """The reference: for each component and live chain, write its position into a copy of the model, one forward
    and ``torch.autograd.grad`` of the moving tensors."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, source: BatchSource, layouts: list[Layout],
                 device: torch.device) -> None:
        self.loss_fn, self.source, self.layouts, self.device = loss_fn, source, layouts, device
        self.anchor_model = to_device(copy.deepcopy(model), device).requires_grad_(False)
        self.work = to_device(copy.deepcopy(model), device)
        self.params = dict(self.work.named_parameters())
        self.star_params = {n: p.detach().clone() for n, p in self.params.items()}

    def _reset(self) -> None:
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.star_params[n])

    def loss_and_grad(self, positions: list[torch.Tensor], idx: torch.Tensor | None, alive: np.ndarray,
                      star: bool) -> tuple[np.ndarray, list[torch.Tensor], np.ndarray | None]:
        Q, C = alive.shape
        losses = np.full((Q, C), np.nan)
        grads = [torch.zeros_like(p) for p in positions]
        batches = [self.source.full() if idx is None else self.source._take(idx[c]) for c in range(C)]
        for q, lay in enumerate(self.layouts):
            moving = [self.params[n] for n in lay.names]
            for p in self.params.values():
                p.requires_grad_(False)
            for p in moving:
                p.requires_grad_(True)
            for c in range(C):
                if not alive[q, c]:
                    continue
                with torch.no_grad():
                    lay.scatter_(self.params, positions[q][c])
                loss = self.loss_fn(self.work, batches[c])
                g = torch.autograd.grad(loss, moving)
                losses[q, c] = float(loss.detach())
                grads[q][c] = lay.gather(dict(zip(lay.names, g)))
            self._reset()
        star_losses = None
        if star:
            with torch.no_grad():
                star_losses = np.array([float(self.loss_fn(self.anchor_model, b)) for b in batches])
        return losses, grads, star_losses


class VmapStrategy:
    """All components × chains at once: the union of the moving tensors stacked to (Q, C, *shape) and
    ``vmap(vmap(grad_and_value(loss)))`` over chains and components."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, source: BatchSource, layouts: list[Layout],
                 device: torch.device) -> None:
        self.source, self.layouts, self.device = source, layouts, device
        wrapper = _LossModule(model, loss_fn)
        named = {n: p.detach().to(device) for n, p in model.named_parameters()}
        buffers = {"model." + n: b.to(device) for n, b in model.named_buffers()}
        union = list(dict.fromkeys(n for lay in layouts for n in lay.names))
        self.names = [n for n in named if n in union]
        self.anchor = {n: named[n] for n in self.names}
        frozen = {"model." + n: t for n, t in named.items() if n not in union} | buffers

        def loss_of(moving: dict, batch: Any) -> torch.Tensor:
            return functional_call(wrapper, ({"model." + n: t for n, t in moving.items()}, frozen), (batch,))

        self._loss_of = loss_of
        self._grad = vmap(grad_and_value(loss_of), in_dims=(0, 0), randomness="different")  # over chains
        self._grad_full = vmap(grad_and_value(loss_of), in_dims=(0, None), randomness="different")
        self._star = vmap(lambda b: loss_of(self.anchor, b), randomness="different")

    def stack(self, positions: list[torch.Tensor], C: int) -> dict[str, torch.Tensor]:
        """The moving tensors at the chains' positions, (Q, C, *shape) each; coordinates a component does not
        move are w* (copied, bitwise)."""
        Q = len(positions)
        w = {n: self.anchor[n].expand(Q, C, *self.anchor[n].shape).clone() for n in self.names}
        for q, lay in enumerate(self.layouts):
            lay.scatter_({n: w[n][q] for n in lay.names}, positions[q], lead=1)
        return w

    def loss_and_grad(self, positions: list[torch.Tensor], idx: torch.Tensor | None, alive: np.ndarray,
                      star: bool) -> tuple[np.ndarray, list[torch.Tensor], np.ndarray | None]:
        Q, C = alive.shape
        w = self.stack(positions, C)
        batch = self.source.full() if idx is None else self.source._take(idx)  # leaves (C, B, ...)
        inner = self._grad_full if idx is None else self._grad
        grads, loss = vmap(inner, in_dims=(0, None), randomness="different")(w, batch)  # loss (Q, C)
        out = []
        for q, lay in enumerate(self.layouts):
            out.append(lay.gather({n: grads[n][q] for n in lay.names}, lead=1))
        star_losses = None
        if star and idx is not None:
            with torch.no_grad():
                star_losses = self._star(batch).double().cpu().numpy()
        return loss.detach().double().cpu().numpy(), out, star_losses
