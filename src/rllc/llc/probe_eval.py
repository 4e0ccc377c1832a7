"""Per-sample losses of many weight sets at once, without gradients: how the observables (`observe.py`) are
evaluated at every draw, batched over components × chains.

Three evaluators, one interface ``values(w, batch) -> (N, B, ...)`` for N weight sets given as the moving
tensors stacked on a leading dim (name → (N, *shape); every other tensor stays at w*):

* ``StackedEval`` — rllc Transformers with the per-token next-token loss: the stacked forward of `stacked.py`
  (batched GEMMs over the N weight sets), in chunks that keep the logits under ``_MAX_LOGITS`` elements;
* ``HeadEval`` — the same losses when each weight set moves one attention head: only that head is recomputed at
  its layer, and the LayerNorm and linear map right above it (the next block's queries, keys and values, or the
  unembedding) are folded through its d_head-wide span (below);
* ``VmapEval`` — any model and loss: ``torch.func.vmap`` of ``functional_call`` over the N weight sets;
* ``LoopEval`` — the reference: the weights written into a copy of the model, one forward per weight set.

Tests check the three agree.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from rllc import _gemm
from rllc.llc import unembed
from rllc.llc.layout import Layout
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


def _rstd(c: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm's per-row scale (mean(c²) + eps)^−½ of rows c already centred over the last dim, keepdim: one
    read of c (``vector_norm``), no squared copy — half the time of square-then-mean on (16, 2048, 64)."""
    return torch.linalg.vector_norm(c, dim=-1, keepdim=True).square_().div_(c.shape[-1]).add_(eps).rsqrt_()


def _ln_scale(x: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm's per-row scale (mean((x − mean x)²) + eps)^−½ over the last dim, keepdim (torch.var's reduction
    is ten times slower here)."""
    return _rstd(x - x.mean(-1, keepdim=True), eps)


def _ln_augmented(r: torch.Tensor, eps: float, ws: unembed.Workspace) -> torch.Tensor:
    """[x̂, 1] (N, rows, D+1) for residuals r (N, B, T', D), rows = B·T': x̂ the LayerNorm of r without gain and
    bias, written into ``ws``'s "x_aug" buffer beside a column of ones, so the unembedding's bias rides in its
    GEMM ([x̂, 1] @ [W; β]) instead of ``addmm`` first copying the broadcast bias over the (rows, V) logits."""
    N, B, Tp, D = r.shape
    xa = ws.get("x_aug", N * B * Tp, D + 1, r).view(N, B, Tp, D + 1)
    c = torch.sub(r, r.mean(-1, keepdim=True), out=xa[..., :D])  # (N, B, T', D) centred, in the buffer
    c.mul_(_rstd(c, eps))
    xa[..., D] = 1.0
    return xa.view(N, B * Tp, D + 1)


def _token_losses(cfg, p: dict[str, torch.Tensor], resid: torch.Tensor, targets: torch.Tensor,  # noqa: ANN001
                  ws: unembed.Workspace) -> torch.Tensor:
    """Per-token cross-entropy (N, B, T−1) of N weight sets from their final residuals (N, B, T, D); targets
    (B, T−1) shared or (N, B, T−1). LN_final's gain g and bias b are folded into the unembedding,
    [x̂, 1] [g ⊙ W_U; b W_U + b_U] with x̂ the un-scaled LayerNorm (``_ln_augmented``), and one weight set's logits
    at a time are written into ``ws``'s buffer and turned into losses by one in-place log-softmax (`unembed.py`)."""
    N, B, T, D = resid.shape
    rows = B * (T - 1)
    x = _ln_augmented(resid[:, :, :-1], cfg.ln_eps, ws)  # (N, rows, D+1)
    targets = targets.reshape(-1, rows).expand(N, -1)
    g, b, W, b_U = p["ln_final.w"], p["ln_final.b"], p["unembed.W_U"], p["unembed.b_U"]
    shared = all(t.stride(0) == 0 for t in (g, b, W, b_U))  # one final LayerNorm and unembedding for all
    out = torch.empty(N, rows, dtype=x.dtype, device=x.device)
    fold = None
    for n in range(N):
        if fold is None or not shared:
            fold = unembed.augmented(g[n][:, None] * W[n], b[n] @ W[n] + b_U[n])  # (D+1, V)
        _blocked_nll(x[n], fold, targets[n], ws, out[n])
    return out.view(N, B, T - 1)


# Logits per row block: the GEMM writes a block that the log-softmax then reads while it is still in L2 (1 MiB:
# 256 rows of a 1024 vocabulary; this Xeon has 2 MiB of L2 per core). One weight set's GEMM + log-softmax, 2016 ×
# 65 × 1024, one thread: 2.98 ms in blocks of 252 rows against 3.32 in one block (median of 10, loaded).
_BLOCK_BYTES = 1 << 20


def _blocked_nll(x: torch.Tensor, W: torch.Tensor, targets: torch.Tensor, ws: unembed.Workspace,
                 out: torch.Tensor) -> None:
    """Writes −log softmax(x W)[target] (rows,) into ``out`` for x (rows, K), W (K, V), one row block of logits at
    a time in ``ws``'s buffer. The product goes where `rllc._gemm` sends it on this CPU: MKL's sgemm into the
    buffer on Intel (oneDNN took 1.7-2x as long for it on the Intel Xeon), oneDNN's new tensor on AMD with AVX-512."""
    blocks = unembed.row_blocks(len(targets), W.shape[1], _BLOCK_BYTES // out.element_size())
    buf = ws.get("logits", blocks[0].stop, W.shape[1], x)
    for s in blocks:
        out[s] = unembed.log_softmax_nll_(_gemm.mm(x[s], W, buffer=buf[:s.stop - s.start]), targets[s])


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
        self.ws = unembed.Workspace()

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
        from rllc.llc.stacked import stacked_blocks, stacked_embed

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
            out.append(_token_losses(self.cfg, p, resid, tok[:, :, 1:].expand(e - s, B, T - 1), self.ws))
        return torch.cat(out)


# HeadEval's folded pieces (float32) kept per (probe, head) across draws — a last-layer head's A'_h (rows × vocab)
# and c(r*_h), a lower head's r*_h (n·T × d_model): 64 Mi elements = 256 MiB in all.
# Past it a head's pieces are rebuilt per call (one full-width GEMM shared by that head's chains).
_MAX_FOLD_CACHE = 1 << 26


def head_of_layout(model: nn.Module, layout: Layout) -> tuple[int, int] | None:
    """(layer, head) if ``layout`` moves exactly one attention head of an rllc Transformer, else None."""
    from rllc.llc.heads import head_of

    params = dict(model.named_parameters())
    masks = {}
    for s in layout.slots:
        m = torch.zeros(s.numel, dtype=torch.bool)
        m[slice(None) if s.index is None else s.index.cpu()] = True
        masks[s.name] = m.view(params[s.name].shape)
    return head_of(model, masks)


class _HeadCache:
    """The w* pieces of one probe at one layer that a single moving head of that layer reuses."""

    def __init__(self, cfg, p: dict[str, torch.Tensor], batch: torch.Tensor, l: int) -> None:  # noqa: ANN001
        from rllc.llc.stacked import stacked_blocks, stacked_embed
        from rllc.model.transformer import causal_attention, project

        n, T = batch.shape
        a = f"blocks.{l}.attn."
        r = stacked_blocks(cfg, {k: t[None] for k, t in p.items()},
                           stacked_embed(cfg, {k: t[None] for k, t in p.items()}, batch[None]), 0, l)[0]
        self.v_in = F.layer_norm(r, r.shape[-1:], p[f"blocks.{l}.ln1.w"], p[f"blocks.{l}.ln1.b"], cfg.ln_eps)
        self.q_in = self.v_in + p["pos_embed.W_pos"][:T]  # (n, T, D)
        z = causal_attention(project(self.q_in, p[a + "W_Q"], p[a + "b_Q"]), project(self.q_in, p[a + "W_K"], p[a + "b_K"]),
                             project(self.v_in, p[a + "W_V"], p[a + "b_V"]), 1.0 / cfg.d_head**0.5)  # (n, T, H, E)
        self.head_out = torch.einsum("nthe,hed->hntd", z, p[a + "W_O"])  # (H, n, T, D): each head's w* output
        self.resid = r + self.head_out.sum(0) + p[a + "b_O"]  # (n, T, D): the w* residual after block l
        self.targets = batch[:, 1:].reshape(-1)  # (rows,)
        self.folds: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # last layer: head -> (U'_h, A'_h)
        self.bases: dict[int, tuple[torch.Tensor]] = {}  # below it: head -> (r*_h,)


class _NextBlock:
    """Block l of the w* model as the block above a moving head sees it: its LayerNorm's gain folded into its
    query, key and value weights, everything that does not depend on the residual (LayerNorm's bias, the positions
    added to the query and key inputs, the projection biases) one per-position constant."""

    def __init__(self, cfg, p: dict[str, torch.Tensor], l: int) -> None:  # noqa: ANN001
        H, D, E = cfg.n_heads, cfg.d_model, cfg.d_head
        a = f"blocks.{l}.attn."
        Ws = [p[a + k].transpose(0, 1).reshape(D, H * E) for k in ("W_Q", "W_K", "W_V")]  # (D, H·E) each
        W = torch.cat(Ws, 1)  # (D, 3·H·E)
        self.gW = p[f"blocks.{l}.ln1.w"][:, None] * W  # (D, 3·H·E)
        pos = p["pos_embed.W_pos"]  # (n_ctx, D)
        bias = torch.cat([p[a + k].reshape(-1) for k in ("b_Q", "b_K", "b_V")])  # (3·H·E,)
        self.C = torch.cat([pos @ Ws[0], pos @ Ws[1], torch.zeros_like(pos @ Ws[2])], 1) \
            + (p[f"blocks.{l}.ln1.b"] @ W + bias)  # (n_ctx, 3·H·E)
        self.W_O = p[a + "W_O"].reshape(H * E, D)
        self.b_O = p[a + "b_O"]


class HeadEval:
    """Per-token losses (N, n, T−1) of N weight sets of an rllc Transformer on one fixed token batch (n, T), weight
    set i moving only head ``heads[i]`` of layer ``layer`` (its seven slices; everything else at w*).

    The head's output is recomputed from the probe's cached w* inputs of its layer, the other heads' w* outputs
    reused: r_{l+1} = r*_h + z_i W_O,i with r*_h = r*_{l+1} − z*_h W*_O,h (cached per probe and head). With c(·)
    centring over d_model, s = (mean(c(r)²) + ε)^−½ a LayerNorm's per-token scale and g, b its gain and bias, every
    LayerNorm followed by a linear map is folded exactly into that map:

    * below the last layer, block l+1's queries, keys and values are s ⊙ (c(r_{l+1}) (g ⊙ W_QKV)) + C,
      C = b W_QKV + [pos W_Q + b_Q | pos W_K + b_K | b_V] (``_NextBlock``): one GEMM over every weight set's rows,
      the weight being shared (on this Intel CPU 0.8 against 1.0 ms per weight set for the d_head-wide fold
      P_h + z_i M_i through a cached P_h = (c(r*_h) ⊙ g) W_QKV); blocks above l+1 run stacked as in ``StackedEval``,
      and the unembedding takes LayerNorm's gain and bias in its weights ([x̂, 1] [g W_U; b W_U + b_U]);
    * in the last layer the logits are s ⊙ (A'_h + z_i M_i) + β, A'_h = (c(r*_h) ⊙ g) W_U,
      M_i = (c(W_O,i) ⊙ g) W_U, β = b W_U + b_U, A'_h (rows × V) computed once per probe and head: per draw the
      unembedding is a d_head-wide product accumulated onto s ⊙ A'_h + β in a kept buffer instead of a d_model-wide
      one.

    Cached pieces are kept up to ``_MAX_FOLD_CACHE`` elements in all (past it they are rebuilt per call). Every loss
    is a log-softmax in place in a kept buffer (`unembed.py`). Tests check it equals ``LoopEval``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.cfg = model.cfg
        self.anchor = {n: p.detach() for n, p in model.named_parameters()}
        self._caches: dict[tuple[int, int], tuple[torch.Tensor, _HeadCache]] = {}
        self._next: dict[int, _NextBlock] = {}
        self._folded = 0  # elements held in folds and bases
        self.ws = unembed.Workspace()
        p = self.anchor
        self.beta = p["ln_final.b"] @ p["unembed.W_U"] + p["unembed.b_U"]  # (V,)
        self.gW_U = p["ln_final.w"][:, None] * p["unembed.W_U"]  # (D, V): LN_final's gain folded in

    def _cache(self, batch: torch.Tensor, l: int) -> _HeadCache:
        hit = self._caches.get((id(batch), l))
        if hit is None or hit[0] is not batch:
            hit = self._caches[(id(batch), l)] = (batch, _HeadCache(self.cfg, self.anchor, batch, l))
        return hit[1]

    def _keep(self, store: dict, h: int, value: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:  # noqa: ANN001
        size = sum(t.numel() for t in value)
        if self._folded + size <= _MAX_FOLD_CACHE:
            store[h] = value
            self._folded += size
        return value

    def _fold(self, cache: _HeadCache, h: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(c(r*_h) (n, T, D), A'_h (rows, V)) for last-layer head h, kept while under ``_MAX_FOLD_CACHE``."""
        if h in cache.folds:
            return cache.folds[h]
        r = cache.resid - cache.head_out[h]
        U = r - r.mean(-1, keepdim=True)  # centred, every position
        return self._keep(cache.folds, h, (U, U[:, :-1].reshape(-1, self.cfg.d_model) @ self.gW_U))

    def _base(self, cache: _HeadCache, h: int) -> torch.Tensor:
        """r*_h (n·T, D) for head h below the last layer, kept under ``_MAX_FOLD_CACHE``."""
        if h in cache.bases:
            return cache.bases[h][0]
        return self._keep(cache.bases, h, ((cache.resid - cache.head_out[h]).reshape(-1, self.cfg.d_model),))[0]

    @torch.no_grad()
    def values(self, w: dict[str, torch.Tensor], batch: torch.Tensor, layer: int, heads: list[int]) -> torch.Tensor:
        cfg, l = self.cfg, layer
        N, (n, T), D, E = len(heads), batch.shape, cfg.d_model, cfg.d_head
        a = f"blocks.{l}.attn."
        at, hs = torch.arange(N), torch.as_tensor(heads)
        W = {k: w[a + k][at, hs] for k in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")}  # (N, ...) one head each
        c = self._cache(batch, l)

        def proj(x: torch.Tensor, k: str) -> torch.Tensor:  # (n, T, D) -> (N·n, 1, T, E)
            return torch.baddbmm(W["b_" + k][:, None], x.reshape(1, n * T, D).expand(N, -1, -1), W["W_" + k]) \
                .view(N * n, 1, T, E)

        z = F.scaled_dot_product_attention(proj(c.q_in, "Q"), proj(c.q_in, "K"), proj(c.v_in, "V"), is_causal=True,
                                           scale=1.0 / E**0.5).view(N, n * T, E)
        zW = torch.bmm(z, W["W_O"])  # (N, n·T, D): the moving head's output
        if l == cfg.n_layers - 1:
            Wc = W["W_O"] - W["W_O"].mean(-1, keepdim=True)  # (N, E, D): centred over d_model
            return self._last(c, heads, z.view(N, n, T, E), zW.view(N, n, T, D), Wc)
        pN = {k: t.expand(N, *t.shape) for k, t in self.anchor.items()}  # w*, broadcast over the weight sets
        return _token_losses(cfg, pN, self._above(c, l, heads, zW, n, T, pN), c.targets, self.ws)

    def _above(self, c: _HeadCache, l: int, heads: list[int], zW: torch.Tensor, n: int, T: int,
               pN: dict[str, torch.Tensor]) -> torch.Tensor:
        """The final residual (N, n, T, D) when head heads[i] of layer l < L−1 outputs z[i] W_O,i (N, n·T, ·)."""
        from rllc.llc.stacked import stacked_blocks

        cfg = self.cfg
        N, H, D, E = len(heads), cfg.n_heads, cfg.d_model, cfg.d_head
        nb = self._next.get(l + 1) or self._next.setdefault(l + 1, _NextBlock(cfg, self.anchor, l + 1))
        r = torch.empty_like(zW)  # (N, n·T, D)
        bases = {h: self._base(c, h) for h in dict.fromkeys(heads)}  # one per head, not per weight set
        for i, h in enumerate(heads):
            torch.add(bases[h], zW[i], out=r[i])  # r_{l+1}
        cr = r - r.mean(-1, keepdim=True)  # c(r_{l+1})
        X4 = torch.mm(cr.view(-1, D), nb.gW).view(N, n, T, -1)  # (c(r_{l+1}) ⊙ g) W_QKV, (N, n, T, 3·H·E)
        torch.addcmul(nb.C[:T], X4, _rstd(cr, cfg.ln_eps).view(N, n, T, 1), out=X4)  # s ⊙ (…) + C, one pass
        X = X4.view(N, n * T, -1)
        qkv = X.view(N * n, T, 3, H, E)
        z2 = F.scaled_dot_product_attention(*(qkv[:, :, j].transpose(1, 2) for j in range(3)), is_causal=True,
                                            scale=1.0 / E**0.5)  # (N·n, H, T, E)
        r = r.add_(nb.b_O).view(-1, D).addmm_(z2.transpose(1, 2).reshape(-1, H * E), nb.W_O).view(N, n, T, D)
        if l + 2 < cfg.n_layers:
            r = stacked_blocks(cfg, pN, r, l + 2, cfg.n_layers)
        return r

    def _last(self, c: _HeadCache, heads: list[int], z: torch.Tensor, zW: torch.Tensor,
              Wc: torch.Tensor) -> torch.Tensor:
        """Per-token losses (N, n, T−1) for heads of the last layer (the folded unembedding)."""
        N, n, T, E = z.shape
        rows, V = n * (T - 1), self.gW_U.shape[1]
        M = (Wc.reshape(N * E, -1) @ self.gW_U).view(N, E, V)  # (N, E, V)
        folds = {h: self._fold(c, h) for h in dict.fromkeys(heads)}  # one per head, not per weight set
        r = torch.empty_like(zW)  # (N, n, T, D)
        for i, h in enumerate(heads):
            torch.add(folds[h][0], zW[i], out=r[i])  # c(r*_h) + z_i W_O,i: the final residual, shifted
        s = _ln_scale(r, self.cfg.ln_eps)[:, :, :-1].reshape(N, rows, 1)  # LN_final's scale, predicting positions
        sz = z[:, :, :-1].reshape(N, rows, E) * s
        out = torch.empty(N, rows, dtype=z.dtype, device=z.device)
        for i, h in enumerate(heads):  # one block: in row blocks (``_blocked_nll``) 1.04x slower here
            A = folds[h][1]
            logits = torch.addcmul(self.beta, A, s[i], out=self.ws.get("logits", rows, V, A))
            torch.addmm(logits, sz[i], M[i], out=logits)  # s ⊙ (A'_h + z M) + β, in the kept buffer
            out[i] = unembed.log_softmax_nll_(logits, c.targets)
        return out.view(N, n, T - 1)


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
