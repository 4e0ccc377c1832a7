"""The per-head sampler: SGLD for attention-head components of an rllc `Transformer`, sharing what they cannot change.

A head component l:h moves seven slices (W_Q[h], W_K[h], W_V[h], W_O[h], b_Q[h], b_K[h], b_V[h] of block l);
every other weight stays at w*. So, on each chain's minibatch, one forward at w* serves every component (and, with
paired differences, is the loss at w*): it caches each layer's residual stream, LayerNorm outputs and per-head
attention outputs z. Component l:h then recomputes only head h of layer l — the other heads' outputs are the
cached ones — and the layers above it, and backpropagates only that far. What it cannot share is the unembedding
and the cross-entropy over the vocabulary, which every component pays in full; on CPU those dominate the cpu
preset's step (vocab 1024 against d_model 64), so they are written once into a kept buffer and read back through
one fused softmax (`unembed.py`), and the saving per component is the lower layers and the other heads (measured
in benchmarks/bench_llc.py). Components of one layer run stacked on a component axis while their logits stay
under `_MAX_LOGITS` elements, one autograd backward per stack.

It is a gradient strategy on the one chain driver (`driver.py`): the driver hands it the heads' flat positions
(the heads' ``Layout``) and the chains' minibatch indices and steps the kernel, so it walks the same chains as
the plain-autograd reference strategy, coordinate for coordinate; the two agree up to float rounding (tests check
it). Used by `estimate_llc`/`estimate_llc_many` for head components with the next-token or soft-target loss.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rllc import _gemm
from rllc.llc import unembed
from rllc.llc._data import BatchSource
from rllc.llc.losses import LossFn, next_token_loss

# The seven per-head parameters, in `named_parameters` order (the order the reference loop draws noise in).
HEAD_PARAMS = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")
# Components of one layer run stacked while their logits stay under this many elements (32 MiB in float32, one
# buffer kept across steps: `unembed.Workspace`). Measured with one thread on the demo's last checkpoint, 8 heads ×
# 4 chains at batch 32 (thread CPU time per head-chain step, median of 7 interleaved, load ~14): 23.3 ms with 2 Mi
# elements (one head at a time), 18.6 / 19.0 / 18.9 ms with 8 / 16 / 32 Mi (the four heads of a layer at once); at
# batch 8 (four heads per stack already at 2 Mi) 6.3 ms whatever the size. With a fresh logits tensor per call
# (before `unembed.py`) larger stacks bought nothing.
_MAX_LOGITS = 1 << 23


def head_of(model: nn.Module, masks: dict[str, torch.Tensor] | None) -> tuple[int, int] | None:
    """(layer, head) if ``masks`` select exactly one attention head of an rllc Transformer, else None."""
    from rllc.model.transformer import Transformer

    if masks is None or not isinstance(model, Transformer):
        return None
    names = {n for n, m in masks.items() if bool(m.any())}
    layers = {n.split(".")[1] for n in names if n.startswith("blocks.")}
    if len(layers) != 1:
        return None
    l = int(layers.pop())
    if names != {f"blocks.{l}.attn.{p}" for p in HEAD_PARAMS}:
        return None
    rows = None
    for n in names:
        m = masks[n]
        sel = torch.nonzero(m.flatten(1).any(1)).flatten().tolist()
        if len(sel) != 1 or not bool(m[sel[0]].all()):
            return None
        if rows is not None and sel != rows:
            return None
        rows = sel
    return l, rows[0]


def supported(model: nn.Module, loss_fn: LossFn, source: BatchSource) -> bool:
    """Whether the per-head sampler can run: an rllc Transformer with no hooks attached, token data in a
    tensor, and the next-token or soft-target loss."""
    from rllc.model.transformer import Transformer

    if not isinstance(model, Transformer) or any(hp.active for hp in model.hook_points.values()):
        return False
    if source.tensors is None or source.tensors[0].dim() != 2 or source.tensors[0].is_floating_point():
        return False
    return loss_fn is next_token_loss or isinstance(getattr(loss_fn, "_rllc_reference", None), nn.Module)


def _project(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``rllc.model.transformer.project`` (x (..., T, D), W (H, D, E), b (H, E) -> (..., T, H, E)) with its
    products (and their gradients) through ``_gemm.affine``."""
    H, D, E = W.shape
    y = _gemm.affine(x.reshape(1, -1, D), W.transpose(0, 1).reshape(1, D, H * E), b.reshape(1, H * E))
    return y.view(*x.shape[:-1], H, E)


@dataclass
class _Cache:
    """The w* forward on one minibatch."""

    resid: list[torch.Tensor]  # resid[l]: (B, T, D), the input of block l; resid[L] the final residual x*
    q_in: list[torch.Tensor]  # LN_l(resid[l]) + pos, the query/key input of block l, (B, T, D)
    v_in: list[torch.Tensor]  # LN_l(resid[l]), the value input, (B, T, D)
    z: list[torch.Tensor]  # (B, T, H, E) per layer
    loss: float  # the loss at w* on this minibatch (NaN unless asked for)
    targets: torch.Tensor  # (B, T-1) next tokens, or (B, T-1, V) reference probabilities


class HeadStrategy:
    """The per-head gradient strategy (see the module docstring) for a list of (layer, head) components."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, source: BatchSource, heads: Sequence[tuple[int, int]],
                 device: torch.device) -> None:
        self.m = copy.deepcopy(model).to(device).requires_grad_(False)  # the frozen w*; the user's model is untouched
        self.ref = getattr(loss_fn, "_rllc_reference", None)
        self.source, self.device = source, device
        self.heads = list(heads)
        c = self.m.cfg
        self.L, self.V = c.n_layers, c.d_vocab
        self.anchor = [{p: getattr(b.attn, p).detach() for p in HEAD_PARAMS} for b in self.m.blocks]
        self.d_moving = 4 * c.d_model * c.d_head + 3 * c.d_head  # W_Q, W_K, W_V, W_O and three biases
        # Components grouped by layer: positions into self.heads.
        self.by_layer = {l: [i for i, (ll, _) in enumerate(self.heads) if ll == l] for l in range(self.L)}
        self.by_layer = {l: idx for l, idx in self.by_layer.items() if idx}
        self.full_cache: _Cache | None = None  # full batch (batch_size >= n): one w* forward serves every step
        self.W_aug = unembed.augmented(self.m.unembed.W_U, self.m.unembed.b_U)  # (D+1, V): bias as an input row
        self.p1 = {n: t.detach()[None] for n, t in self.m.named_parameters()}  # w* as one stacked weight set
        self.ws = unembed.Workspace()  # the logits buffer, reused every step

    # --------------------------------------------------------------------------------------------- forward at w*

    @torch.no_grad()
    def _anchor_pass(self, tokens: torch.Tensor, with_loss: bool) -> _Cache:
        """The w* forward on tokens (B, T), keeping what the components reuse; the loss only if asked."""
        from rllc.model.transformer import causal_attention, project

        m, T = self.m, tokens.shape[1]
        r = m.embed.W_E[tokens]  # (B, T, D)
        pos = m.pos_embed.W_pos[:T]  # (T, D)
        resid, q_in, v_in, zs = [], [], [], []
        for blk in m.blocks:  # Block.forward, keeping the pieces
            a = blk.attn
            n = blk.ln1(r)  # (B, T, D)
            z = causal_attention(project(n + pos, a.W_Q, a.b_Q), project(n + pos, a.W_K, a.b_K),
                                 project(n, a.W_V, a.b_V), a.scale)  # (B, T, H, E)
            resid.append(r), q_in.append(n + pos), v_in.append(n), zs.append(z)
            r = r + z.flatten(-2) @ a.W_O.flatten(0, 1) + a.b_O  # as Attention.forward
        resid.append(r)
        if self.ref is None:
            targets = tokens[:, 1:]  # (B, T-1)
        else:
            targets = F.softmax(self.ref(tokens)[:, :-1], dim=-1)  # (B, T-1, V)
        loss = float("nan")
        if with_loss:
            loss = float(self._cross_entropy(m.ln_final(r[:, :-1]), targets, 1)[0][0])  # == the loss of m(tokens)
        return _Cache(resid, q_in, v_in, zs, loss, targets)

    def _cross_entropy(self, h: torch.Tensor, targets: torch.Tensor, Q: int,
                       grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The loss of each of Q stacked components from their final LayerNorm outputs, and optionally its gradient.

        The unembedding, log-softmax and cross-entropy are written out rather than left to autograd: on CPU their
        V-sized tensors are memory-bound, and the closed-form gradient (softmax − targets) · W_Uᵀ / rows takes
        half the passes over them that autograd's log_softmax + nll_loss backward takes.

        Args:
            h: (Q·B, T-1, D), LN_final of the residual at the predicting positions.
            targets: (B, T-1) next tokens, or (B, T-1, V) reference probabilities (soft targets).
            Q: number of stacked components.
            grad: also return d(sum of the Q losses)/dh.

        Returns:
            (losses (Q,), dh (Q·B, T-1, D) or None).
        """
        W_U, b_U = self.m.unembed.W_U, self.m.unembed.b_U
        D, V = W_U.shape
        rows = targets.shape[0] * targets.shape[1]  # per component
        if self.ref is None:  # next tokens: the V-sized work of `unembed.py` (one fused softmax, a kept buffer)
            flat = h.detach().reshape(-1, D)
            tgt = targets.reshape(-1).repeat(Q)
            if not grad:
                return unembed.token_nll(flat, self.W_aug, tgt, self.ws).view(Q, rows).mean(1), None
            losses, dh = unembed.mean_nll_and_grad(flat, self.W_aug, tgt, Q, self.ws)
            return losses, dh.view_as(h)
        with torch.no_grad():
            logits = torch.addmm(b_U, h.detach().reshape(-1, D), W_U)  # (Q·rows, V)
            if self.ref is None:
                tgt = targets.reshape(-1).repeat(Q)  # (Q·rows,)
                picked = logits.gather(1, tgt[:, None]).squeeze(1)
            else:
                p = targets.reshape(rows, V)
                picked = torch.einsum("qmv,mv->qm", logits.view(Q, rows, V), p).reshape(-1)
            top = logits.amax(dim=-1, keepdim=True)
            probs = logits.sub_(top).exp_()  # unnormalised softmax, in place (one exp pass serves loss and grad)
            total = probs.sum(dim=-1)
            losses = (top.squeeze(1) + total.log() - picked).view(Q, rows).mean(1)  # logsumexp − target logit
            if not grad:
                return losses, None
            probs.mul_((1.0 / total)[:, None])
            if self.ref is None:
                probs[torch.arange(len(tgt)), tgt] -= 1.0
            else:
                probs.view(Q, rows, V).sub_(p)
            dh = (probs @ W_U.T).mul_(1.0 / rows).view_as(h)  # d(Σ_q loss_q)/dh
        return losses, dh

    # ------------------------------------------------------------------------------------ components of a layer

    def _final(self, l: int, heads: list[int], theta: dict[str, torch.Tensor], cache: _Cache) -> torch.Tensor:
        """LN_final of the residual at the predicting positions, (Q·B, T-1, D), when head heads[i] of layer l
        takes the weights theta[·][i] (differentiable in theta)."""
        from rllc.llc.stacked import stacked_blocks
        from rllc.model.transformer import causal_attention

        m, a = self.m, self.m.blocks[l].attn
        z = causal_attention(_project(cache.q_in[l], theta["W_Q"], theta["b_Q"]),
                             _project(cache.q_in[l], theta["W_K"], theta["b_K"]),
                             _project(cache.v_in[l], theta["W_V"], theta["b_V"]), a.scale)  # (B, T, Q, E)
        B, T, Q, E = z.shape
        z_star = cache.z[l][:, :, heads]  # (B, T, Q, E)
        W_O_star = self.anchor[l]["W_O"][heads]  # (Q, E, D)
        by_head = (lambda t: t.permute(2, 0, 1, 3).reshape(Q, B * T, E))  # (B, T, Q, E) -> (Q, B·T, E)
        delta = _gemm.affine(by_head(z), theta["W_O"]) - _gemm.affine(by_head(z_star), W_O_star)  # (Q, B·T, D)
        r = (cache.resid[l + 1] + delta.view(Q, B, T, -1)).flatten(0, 1)  # (Q·B, T, D): the head's change added
        # the layers above with the new head output: the stacked strategy's blocks, one weight set (w*)
        r = stacked_blocks(m.cfg, self.p1, r[None], l + 1, self.L)[0]
        return m.ln_final(r[:, :-1])  # the last position predicts nothing

    # ------------------------------------------------------------------------------------------- the strategy

    def _split(self, flat: torch.Tensor, l: int) -> dict[str, torch.Tensor]:
        """A head's flat position (d,) (its ``Layout``: HEAD_PARAMS order, row-major) as the seven slices."""
        out, off = {}, 0
        for p in HEAD_PARAMS:
            shape = self.anchor[l][p].shape[1:]
            n = int(np.prod(shape))
            out[p] = flat[off:off + n].view(shape)
            off += n
        return out

    def loss_and_grad(self, positions: list[torch.Tensor], idx: torch.Tensor | None, alive: np.ndarray,
                      star: bool) -> tuple[np.ndarray, list[torch.Tensor], np.ndarray | None]:
        """Losses (Q, C), gradients (C, d) per head and, if ``star``, the loss at w* (C,) on each chain's minibatch."""
        Q, C = alive.shape
        losses = np.full((Q, C), np.nan)
        grads = [torch.zeros_like(p) for p in positions]
        star_losses = np.full(C, np.nan) if star else None
        for c in range(C):
            if not alive[:, c].any():
                continue
            if idx is None:
                if self.full_cache is None:
                    self.full_cache = self._anchor_pass(self.source.tensors[0].to(self.device), False)
                cache = self.full_cache
            else:
                batch = self.source._take(idx[c])
                cache = self._anchor_pass(batch if isinstance(batch, torch.Tensor) else batch[0], star)
            if star:
                star_losses[c] = cache.loss
            for l, comps in self.by_layer.items():
                live = [i for i in comps if alive[i, c]]
                B, T = cache.resid[0].shape[:2]
                chunk = max(1, _MAX_LOGITS // (B * T * self.V))
                for s in range(0, len(live), chunk):
                    js = live[s:s + chunk]
                    parts = [self._split(positions[i][c], l) for i in js]
                    theta = {p: torch.stack([pt[p] for pt in parts]).requires_grad_() for p in HEAD_PARAMS}
                    h = self._final(l, [self.heads[i][1] for i in js], theta, cache)
                    ls, dh = self._cross_entropy(h, cache.targets, len(js), grad=True)  # (q,)
                    g = torch.autograd.grad(h, [theta[p] for p in HEAD_PARAMS], grad_outputs=dh)
                    values = ls.double().cpu().numpy()
                    for jj, i in enumerate(js):
                        losses[i, c] = float(values[jj])
                        grads[i][c] = torch.cat([gp[jj].reshape(-1) for gp in g])
        return losses, grads, star_losses
