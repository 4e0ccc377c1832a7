"""The stacked-chains gradient strategy for rllc Transformers: every chain (and component) as one leading dimension
of the weights, one forward and one backward for all of them — batched GEMMs (``torch.matmul`` over a (Q·C)
batch), not ``vmap``.

The forward is the Transformer's own maths written for weights of shape (N, *shape), N = components × chains:
F.embedding into the N vocabularies laid end to end, LayerNorm with per-chain affine weights, per-head projections
as one (N, B·T, D) @ (N, D, H·E) product, the fused causal attention over N·B sequences, and the unembedding
(N, B·T, D) @ (N, D, V) fused with the cross-entropy (``_LinearCrossEntropy``: its gradient in closed form,
computed in the forward one chain at a time). The chains are independent, so the gradient of the sum of their mean
losses is each chain's gradient. Frozen tensors are broadcast (expanded, not copied). Used for the next-token loss
on rllc Transformers with no hooks attached; tests check it walks the reference strategy's chains.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rllc import _gemm
from rllc.llc import unembed
from rllc.llc._data import BatchSource
from rllc.llc.layout import Layout


def supported(model: nn.Module, loss_fn, source: BatchSource) -> bool:  # noqa: ANN001
    from rllc.llc.losses import next_token_loss
    from rllc.model.transformer import Transformer

    return (isinstance(model, Transformer) and loss_fn is next_token_loss
            and not any(hp.active for hp in model.hook_points.values())
            and source.tensors is not None and source.tensors[0].dim() == 2
            and not source.tensors[0].is_floating_point())


def _ln(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last dim with per-chain affine weights: x (N, ..., D), w and b (N, D)."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    return F.layer_norm(x, x.shape[-1:], eps=eps) * w.view(shape) + b.view(shape)


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean next-token cross-entropy of each chain's logits h[n] W[n] + b[n], with its gradient in closed form.

    d(mean CE)/d logits = (softmax − onehot(target)) / rows, so the forward computes it at once, one chain at a
    time, with the V-sized work of `unembed.py` (the per-head paths' too): the bias as one more input row
    ([h, 1] @ [W; b]) into a kept logits buffer, one in-place ``torch.softmax``, −log p(target) read off it (rows
    where it underflows recomputed exactly). Then the onehot is subtracted at the targets and dh = P Wᵀ and
    [dW; db] = [h, 1]ᵀ P (db is the last row of that product: no V-sized sum), with 1/rows on those small products.
    Against autograd's log_softmax + nll_loss this saves a V-sized output, a zero-filled V-sized gradient and the
    V-sized passes in the backward; one chain's (rows, V) logits (8 MiB at the cpu preset's batch 32) stays under
    glibc's mmap ceiling (rllc/_alloc.py), where the (N, rows, V) stack does not. Measured in
    benchmarks/bench_llc.py and docs/llc.md, *Speed*.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, W: torch.Tensor, b: torch.Tensor, targets: torch.Tensor,  # noqa: ANN001
                ws) -> torch.Tensor:
        # h (N, rows, D), W (N, D, V) (may be an expanded view), b (N, V), targets (N, rows) long,
        # ws an unembed.Workspace -> losses (N,)
        N, rows, D = h.shape
        need_h, need_W, need_b = ctx.needs_input_grad[:3]
        losses = torch.empty(N, dtype=h.dtype, device=h.device)
        dh = torch.empty_like(h) if need_h else None
        dWb = torch.empty(N, D + 1, W.shape[-1], dtype=h.dtype, device=h.device) if need_W or need_b else None
        at = torch.arange(rows, device=h.device)
        for n in range(N):
            W_aug = unembed.augmented(W[n], b[n])  # (D + 1, V)
            probs = unembed.logits_into(h[n], W_aug, ws)  # (rows, V): the workspace's buffer or oneDNN's tensor
            losses[n] = unembed.softmax_nll_(probs, targets[n], unembed.exact_logits(h[n], W_aug)).mean()
            probs[at, targets[n]] -= 1.0  # rows × d(mean CE)/d logits
            if need_h:
                dh[n] = _gemm.mm(probs, W[n].T, buffer=dh[n])
            if dWb is not None:  # [h, 1]ᵀ, as logits_into wrote it
                dWb[n] = _gemm.mm(ws.get("h_aug", rows, D + 1, h).T, probs, buffer=dWb[n])
        if dh is not None:
            dh.mul_(1.0 / rows)
        if dWb is not None:
            dWb.mul_(1.0 / rows)
        dW = dWb[:, :D] if need_W else None
        db = dWb[:, D] if need_b else None
        ctx.save_for_backward(*(t for t in (dh, dW, db) if t is not None))
        ctx.have = (need_h, need_W, need_b)
        return losses

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN205
        saved = iter(ctx.saved_tensors)
        out = [next(saved) if have else None for have in ctx.have]
        dh, dW, db = out
        return (None if dh is None else dh * grad[:, None, None], None if dW is None else dW * grad[:, None, None],
                None if db is None else db * grad[:, None], None, None)


def stacked_loss(cfg, p: dict[str, torch.Tensor], tokens: torch.Tensor,  # noqa: ANN001
                 ws: unembed.Workspace | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy of N weight sets p[name] (N, *shape) on their token batches (N, B, T): (N,).
    ``ws``: the caller's buffers for the logits (a fresh workspace if None)."""
    resid = stacked_blocks(cfg, p, stacked_embed(cfg, p, tokens), 0, cfg.n_layers)  # (N, B, T, D)
    if not torch.is_grad_enabled():
        return stacked_unembed_loss(cfg, p, resid, tokens).flatten(1).mean(1)
    N, B, T, D = resid.shape
    h = _ln(resid[:, :, :-1], p["ln_final.w"], p["ln_final.b"], cfg.ln_eps).reshape(N, B * (T - 1), D)
    targets = tokens[:, :, 1:].reshape(N, B * (T - 1))
    return _LinearCrossEntropy.apply(h, p["unembed.W_U"], p["unembed.b_U"], targets,
                                     unembed.Workspace() if ws is None else ws)  # (N,)


def stacked_token_loss(cfg, p: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """Per-token next-token cross-entropy of N weight sets p[name] (N, *shape) on tokens (N, B, T): (N, B, T−1)
    (position t predicts token t+1, as ``rllc.llc.losses.per_token_loss``)."""
    resid = stacked_blocks(cfg, p, stacked_embed(cfg, p, tokens), 0, cfg.n_layers)
    return stacked_unembed_loss(cfg, p, resid, tokens)


def stacked_embed(cfg, p: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """The token embeddings (N, B, T, D) of tokens (N, B, T) in the N vocabularies laid end to end."""
    N, V, D = tokens.shape[0], cfg.d_vocab, cfg.d_model
    offset = (torch.arange(N, device=tokens.device) * V).view(N, 1, 1)
    return F.embedding(tokens + offset, p["embed.W_E"].reshape(N * V, D))  # (N, B, T, D)


def stacked_blocks(cfg, p: dict[str, torch.Tensor], resid: torch.Tensor, start: int, stop: int) -> torch.Tensor:  # noqa: ANN001
    """Blocks start … stop−1 of N weight sets on their residual streams (N, B, T, D): the residual after them."""
    N, B, T, D = resid.shape
    H, E = cfg.n_heads, cfg.d_head
    pos = p["pos_embed.W_pos"][:, :T].unsqueeze(1)  # (N, 1, T, D)
    scale = 1.0 / E**0.5
    for l in range(start, stop):
        a = f"blocks.{l}.attn."
        nv = _ln(resid, p[f"blocks.{l}.ln1.w"], p[f"blocks.{l}.ln1.b"], cfg.ln_eps)  # (N, B, T, D)
        nq = (nv + pos).reshape(N, B * T, D)

        def proj(x, name):  # (N, B·T, D) -> (N·B, H, T, E)
            W = p[a + "W_" + name].transpose(1, 2).reshape(N, D, H * E)
            y = _gemm.affine(x, W, p[a + "b_" + name].reshape(N, H * E))
            return y.view(N * B, T, H, E).transpose(1, 2)

        z = F.scaled_dot_product_attention(proj(nq, "Q"), proj(nq, "K"), proj(nv.reshape(N, B * T, D), "V"),
                                           is_causal=True, scale=scale)  # (N·B, H, T, E)
        z = z.transpose(1, 2).reshape(N, B * T, H * E)
        out = _gemm.affine(z, p[a + "W_O"].reshape(N, H * E, D), p[a + "b_O"].view(N, D))  # (N, B·T, D)
        resid = resid + out.view(N, B, T, D)
    return resid


def stacked_unembed_loss(cfg, p: dict[str, torch.Tensor], resid: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """Per-token cross-entropy (N, B, T−1) from the final residuals (N, B, T, D); tokens (N or 1, B, T).

    Without gradients (how the observables and the paired losses at w* use it) one weight set's (B·(T−1), V)
    logits at a time, log-sum-exp in place: the (N, rows, V) stack and log_softmax's V-sized output would cross
    glibc's mmap ceiling (rllc/_alloc.py) and double the passes over the logits.
    """
    N, B, T, D = resid.shape
    V, rows = cfg.d_vocab, B * (T - 1)
    h = _ln(resid[:, :, :-1], p["ln_final.w"], p["ln_final.b"], cfg.ln_eps).reshape(N, rows, D)
    targets = tokens[:, :, 1:].expand(N, B, T - 1).reshape(N, rows)
    W, b = p["unembed.W_U"], p["unembed.b_U"]
    if torch.is_grad_enabled():
        logits = torch.baddbmm(b.view(N, 1, V), h, W)  # (N, rows, V)
        return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), reduction="none").view(N, B, T - 1)
    out = torch.empty(N, rows, dtype=h.dtype, device=h.device)
    at = torch.arange(rows, device=h.device)
    for n in range(N):
        logits = torch.addmm(b[n], h[n], W[n])  # (rows, V)
        picked = logits[at, targets[n]]
        top = logits.amax(dim=1, keepdim=True)
        lse = logits.sub_(top).exp_().sum(dim=1).log_().add_(top.squeeze(1))  # log Σ exp, in the logits' buffer
        torch.sub(lse, picked, out=out[n])
    return out.view(N, B, T - 1)


class StackedStrategy:
    """Components × chains stacked on one leading dimension of the weights (see the module docstring)."""

    def __init__(self, model: nn.Module, loss_fn, source: BatchSource, layouts: list[Layout],  # noqa: ANN001
                 device: torch.device) -> None:
        self.cfg, self.source, self.layouts, self.device = model.cfg, source, layouts, device
        self.anchor = {n: p.detach().to(device) for n, p in model.named_parameters()}
        union = set(n for lay in layouts for n in lay.names)
        self.moving = [n for n in self.anchor if n in union]
        self.ws = unembed.Workspace()  # the logits buffer, kept across steps (one strategy object per thread)

    def loss_and_grad(self, positions: list[torch.Tensor], idx: torch.Tensor | None, alive: np.ndarray,
                      star: bool) -> tuple[np.ndarray, list[torch.Tensor], np.ndarray | None]:
        Q, C = alive.shape
        N = Q * C
        w = {n: self.anchor[n].expand(Q, C, *self.anchor[n].shape).clone() for n in self.moving}
        for q, lay in enumerate(self.layouts):
            lay.scatter_({n: w[n][q] for n in lay.names}, positions[q], lead=1)
        leaves = {n: t.requires_grad_() for n, t in w.items()}
        p = {n: (leaves[n].view(N, *t.shape) if n in leaves else t.expand(N, *t.shape))
             for n, t in self.anchor.items()}
        tokens = self.source.full().to(self.device) if idx is None else self.source._take(idx)  # (C, B, T)
        if idx is None:
            tokens = tokens.expand(C, *tokens.shape)
        tokens = tokens.unsqueeze(0).expand(Q, *tokens.shape).reshape(N, *tokens.shape[1:])
        losses = stacked_loss(self.cfg, p, tokens, self.ws)  # (N,)
        grads = torch.autograd.grad(losses.sum(), [leaves[n] for n in self.moving])
        g = dict(zip(self.moving, grads))
        out = [lay.gather({n: g[n][q] for n in lay.names}, lead=1) for q, lay in enumerate(self.layouts)]
        star_losses = None
        if star and idx is not None:
            with torch.no_grad():
                p0 = {n: t.expand(C, *t.shape) for n, t in self.anchor.items()}
                star_losses = stacked_loss(self.cfg, p0, tokens[:C]).double().cpu().numpy()
        return losses.detach().view(Q, C).double().cpu().numpy(), out, star_losses
