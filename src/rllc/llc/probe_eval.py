"""Per-sample losses of many weight sets at once, without gradients: how the observables (`observe.py`) are
evaluated at every draw, batched over components × chains.

Three evaluators, one interface ``values(w, batch) -> (N, B, ...)`` for N weight sets given as the moving
tensors stacked on a leading dim (name → (N, *shape); every other tensor stays at w*):

* ``StackedEval`` — rllc Transformers with the per-token next-token loss: the stacked forward of `stacked.py`
  (batched GEMMs over the N weight sets), in chunks that keep the logits under ``_MAX_LOGITS`` elements;
* ``VmapEval`` — any model and loss: ``torch.func.vmap`` of ``functional_call`` over the N weight sets;
* ``LoopEval`` — the reference: the weights written into a copy of the model, one forward per weight set.

Tests check the three agree.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from rllc.llc.losses import per_token_loss

# Logits per stacked chunk (float32 elements): 8 Mi elements = 32 MiB, the order of the sampler's own chunks.
_MAX_LOGITS = 1 << 23


def _is_tokens(batch: Any) -> bool:
    return isinstance(batch, torch.Tensor) and batch.dim() == 2 and not batch.is_floating_point()


def stacked_supported(model: nn.Module, fn: Any, batch: Any) -> bool:
    """Whether ``StackedEval`` applies: an rllc Transformer, no hooks, the default per-token loss, token data."""
    from rllc.model.transformer import Transformer

    return (isinstance(model, Transformer) and (fn is None or fn is per_token_loss)
            and not any(hp.active for hp in model.hook_points.values()) and _is_tokens(batch))


class StackedEval:
    """Per-token losses (N, B, T−1) of N weight sets of an rllc Transformer on one token batch (B, T) or N
    batches (N, B, T).

    Probes are fixed data, so what lies below the lowest layer a component moves is the same for every draw:
    ``start`` > 0 reuses the residual stream at w* entering block ``start`` (computed once per probe) and runs
    only blocks start… and the unembedding for the N weight sets.
    """

    def __init__(self, model: nn.Module) -> None:
        self.cfg = model.cfg
        self.anchor = {n: p.detach() for n, p in model.named_parameters()}
        self._prefix: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def start_layer(self, names: list[str]) -> int:
        """The lowest block whose output moves when the parameters ``names`` move (n_layers: only the
        unembedding side; 0: an embedding moves)."""
        L = self.cfg.n_layers
        layers = [int(n.split(".")[1]) if n.startswith("blocks.") else
                  L if n.startswith(("ln_final.", "unembed.")) else 0 for n in names]
        return min(layers, default=L)

    def _residual_at(self, batch: torch.Tensor, start: int) -> torch.Tensor:
        """(1, B, T, D): the w* residual stream of ``batch`` entering block ``start`` (cached per probe)."""
        from rllc.llc.stacked import stacked_blocks, stacked_embed

        key = (id(batch), start)
        hit = self._prefix.get(key)
        if hit is None or hit[0] is not batch:
            p1 = {n: t[None] for n, t in self.anchor.items()}
            r = stacked_blocks(self.cfg, p1, stacked_embed(self.cfg, p1, batch[None]), 0, start)
            hit = self._prefix[key] = (batch, r)
        return hit[1]

    @torch.no_grad()
    def values(self, w: dict[str, torch.Tensor], batch: torch.Tensor, per_chain_batch: bool = False,
               start: int = 0) -> torch.Tensor:
        from rllc.llc.stacked import stacked_blocks, stacked_embed, stacked_unembed_loss

        N = next(iter(w.values())).shape[0]
        B, T = batch.shape[-2:]
        shared = batch.dim() == 2
        start = start if shared else 0
        chunk = max(1, _MAX_LOGITS // (B * T * self.cfg.d_vocab))
        out = []
        for s in range(0, N, chunk):
            e = min(N, s + chunk)
            p = {n: (w[n][s:e] if n in w else t.expand(e - s, *t.shape)) for n, t in self.anchor.items()}
            tok = batch[None] if shared else batch[s:e]
            if start > 0:
                resid = self._residual_at(batch, start).expand(e - s, B, T, self.cfg.d_model)
            else:
                resid = stacked_embed(self.cfg, p, tok.expand(e - s, B, T))
            resid = stacked_blocks(self.cfg, p, resid, start, self.cfg.n_layers)
            out.append(stacked_unembed_loss(self.cfg, p, resid, tok))
        return torch.cat(out)


class _Wrapped(nn.Module):
    def __init__(self, model: nn.Module, fn: Any) -> None:
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.fn(self.model, batch)


class VmapEval:
    """``vmap(functional_call)`` over N weight sets; ``per_chain_batch``: batch leaves carry the N dim too."""

    def __init__(self, model: nn.Module, fn: Any) -> None:
        self.wrapper = _Wrapped(model, fn or per_token_loss)
        self.anchor = {n: p.detach() for n, p in model.named_parameters()}
        self.buffers = {"model." + n: b for n, b in model.named_buffers()}

    @torch.no_grad()
    def values(self, w: dict[str, torch.Tensor], batch: Any, per_chain_batch: bool = False) -> torch.Tensor:
        frozen = {"model." + n: t for n, t in self.anchor.items() if n not in w} | self.buffers

        def f(moving: dict[str, torch.Tensor], b: Any) -> torch.Tensor:
            return functional_call(self.wrapper, ({"model." + n: t for n, t in moving.items()}, frozen), (b,))

        return vmap(f, in_dims=(0, 0 if per_chain_batch else None), randomness="different")(w, batch)


class LoopEval:
    """The reference: each weight set written into a copy of the model, one forward each."""

    def __init__(self, model: nn.Module, fn: Any) -> None:
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.fn = fn or per_token_loss
        self.params = dict(self.model.named_parameters())
        self.star = {n: p.detach().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def values(self, w: dict[str, torch.Tensor], batch: Any, per_chain_batch: bool = False) -> torch.Tensor:
        from torch.utils._pytree import tree_map

        N = next(iter(w.values())).shape[0]
        out = []
        for i in range(N):
            for n, t in w.items():
                self.params[n].copy_(t[i])
            b = tree_map(lambda x: x[i] if isinstance(x, torch.Tensor) else x, batch) if per_chain_batch else batch
            out.append(self.fn(self.model, b))
        for n, p in self.params.items():
            p.copy_(self.star[n])
        return torch.stack(out)
