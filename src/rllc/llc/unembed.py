"""The unembedding and next-token cross-entropy of the per-head paths: V-sized work written once, read once.

On CPU at the cpu preset's sizes (rows 2016 × d_model 64 × vocab 1024, 8 MiB of logits) what costs is not the
GEMM's FLOPs but the passes over the logits. Measured with one thread (thread CPU time, median of 60, machine at
load ~6; /work/notes/s11head.md): ``torch.addmm(b, h, W)`` into a fresh tensor 4.3 ms, the same product with the
bias folded in as a (D+1)-th input column (``h_aug @ W_aug``) into a kept buffer 1.9 ms — the broadcast copy of the
bias and the first touch of a freshly allocated 8 MiB tensor are more than half of it. Then one fused
``torch.softmax`` in place (1.3 ms) replaces max, subtract, exp and sum passes (1.7 ms), and the gradient's one-hot
is subtracted in d_model space (``probs @ Wᵀ − W[:, target]ᵀ``) instead of in the logits.

−log p_target is read off the softmax; where p_target underflows (< 1e-30) those rows are recomputed exactly with
``log_softmax`` from their logits, so a loss stays finite wherever log-sum-exp − logit is (the divergence test
reads it). Tests check both functions equal the plain formula to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rllc import _gemm

_TINY = 1e-30  # p_target below this: −log p is recomputed exactly from the row's logits
# The logits are written and read in row blocks of at most this many elements (8 MiB in float32: one head's rows
# at the cpu preset's batch 32) rather than all at once (32 MiB when a layer's four heads are stacked): every row's
# arithmetic is the same whatever the block. Measured on a 2-core Intel Xeon (4 MiB L2 per core) with one thread
# (thread CPU time, loaded machine), 8064 rows × d_model 64 × vocab 1024, logits + softmax + dh: 31.5 ms in one
# block against 22.9 ms in blocks of 2016 rows (min of 5; 1008 rows 24.1, 504 26.0, 4032 22.5 but median 27.6).
_BLOCK = 1 << 21


def row_blocks(n: int, V: int, limit: int | None = None) -> list[slice]:
    """Row blocks of at most ``limit`` (default ``_BLOCK``) logits of V-wide rows, at least one row each, covering
    rows 0 … n−1."""
    step = max(1, (_BLOCK if limit is None else limit) // V)
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


class Workspace:
    """Buffers reused across calls (one per name, grown when a call needs more): the logits of every step would
    otherwise be a fresh 8 MiB tensor each time. Not shared between threads (each strategy object owns one)."""

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < rows * cols or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._bufs[name] = torch.empty(rows * cols, dtype=like.dtype, device=like.device)
        return buf[:rows * cols].view(rows, cols)


def augmented(W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[W; b] (D+1, V): the unembedding with its bias as one more input row."""
    return torch.cat([W, b[None]], 0)


def logits_into(h: torch.Tensor, W_aug: torch.Tensor, ws: Workspace) -> torch.Tensor:
    """h (rows, D) @ W + b as [h, 1] @ W_aug (rows, V): the workspace's logits buffer, or oneDNN's new tensor
    (`rllc._gemm`); the [h, 1] input stays in the workspace's "h_aug" buffer (rows, D+1) until the next call."""
    rows, D = h.shape
    h_aug = ws.get("h_aug", rows, D + 1, h)
    h_aug[:, :D].copy_(h)
    h_aug[:, D].fill_(1.0)
    return _gemm.mm(h_aug, W_aug, buffer=ws.get("logits", rows, W_aug.shape[1], h))


def softmax_nll_(logits: torch.Tensor, targets: torch.Tensor, exact_rows) -> torch.Tensor:  # noqa: ANN001
    """Overwrites ``logits`` (rows, V) with its softmax; returns −log p_target per row (rows,).

    Where p_target underflows (< 1e-30) those rows are recomputed exactly with ``log_softmax`` of
    ``exact_rows(index) -> (k, V)``, their logits.
    """
    at = torch.arange(len(targets), device=logits.device)
    if logits.device.type == "cpu":
        torch.softmax(logits, 1, out=logits)  # in place: the CPU kernel works row by row, element by element
    else:
        logits.copy_(torch.softmax(logits, 1))
    p = logits[at, targets]
    out = p.log().neg_()
    low = torch.nonzero(p < _TINY).flatten()
    if len(low):
        out[low] = -torch.log_softmax(exact_rows(low), 1).gather(1, targets[low, None]).squeeze(1)
    return out


def log_softmax_nll_(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Overwrites ``logits`` (rows, V) with its log-softmax; returns −log p_target per row (rows,).

    For losses alone (no gradient): log_softmax is x − max − log Σ exp(x − max), finite wherever the loss is, so
    nothing is recomputed; one pass fewer than ``softmax_nll_``'s normalised write.
    """
    if logits.device.type == "cpu":
        torch.log_softmax(logits, 1, out=logits)  # in place, row by row
    else:
        logits.copy_(torch.log_softmax(logits, 1))
    return logits.gather(1, targets[:, None]).squeeze(1).neg_()


def exact_logits(h: torch.Tensor, W_aug: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``index -> (k, V)``: the logits h[index] W + b of those rows, recomputed (``softmax_nll_``'s exact_rows)."""
    return lambda idx: torch.addmm(W_aug[-1], h[idx], W_aug[:-1])


@torch.no_grad()
def token_nll(h: torch.Tensor, W_aug: torch.Tensor, targets: torch.Tensor, ws: Workspace) -> torch.Tensor:
    """Per-row next-token cross-entropy of logits h W + b.

    Args:
        h: (rows, D), the final LayerNorm's output at the predicting positions.
        W_aug: (D+1, V) from ``augmented(W_U, b_U)``.
        targets: (rows,) next tokens.
        ws: the caller's workspace.

    Returns:
        (rows,) −log softmax(h W + b)[target].
    """
    out = torch.empty(len(h), dtype=h.dtype, device=h.device)
    for s in row_blocks(len(h), W_aug.shape[1]):
        out[s] = softmax_nll_(logits_into(h[s], W_aug, ws), targets[s], exact_logits(h[s], W_aug))
    return out


@torch.no_grad()
def mean_nll_and_grad(h: torch.Tensor, W_aug: torch.Tensor, targets: torch.Tensor, groups: int,
                      ws: Workspace) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean cross-entropy of each of ``groups`` equal blocks of rows, and d(Σ of the means)/dh in closed form:
    ((softmax − onehot(target)) Wᵀ) / rows-per-group.

    Args:
        h: (groups·rows, D); W_aug: (D+1, V); targets: (groups·rows,); ws: the caller's workspace.

    Returns:
        (losses (groups,), dh (groups·rows, D)).
    """
    n, D = h.shape
    rows = n // groups
    W = W_aug[:-1]  # (D, V)
    nll = torch.empty(n, dtype=h.dtype, device=h.device)
    dh = torch.empty_like(h)
    for s in row_blocks(n, W_aug.shape[1]):
        probs = logits_into(h[s], W_aug, ws)
        nll[s] = softmax_nll_(probs, targets[s], exact_logits(h[s], W_aug))
        dh[s] = _gemm.mm(probs, W.T, buffer=dh[s])
    dh.sub_(W.T[targets]).mul_(1.0 / rows)  # the one-hot subtracted in d_model space
    return nll.view(groups, rows).mean(1), dh
