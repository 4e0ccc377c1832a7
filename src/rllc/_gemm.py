"""Float32 matrix products on CPU through oneDNN, which uses the CPU's widest vector unit, instead of MKL
where MKL does not.

PyTorch's x86 builds send a float32 ``torch.mm`` to MKL's sgemm. On AMD CPUs MKL runs its AVX2 kernels even where
the core has AVX-512 (MKL picks kernels by vendor), so it reaches about half of such a core's fp32 peak; oneDNN,
inside the same PyTorch build, picks kernels by instruction set. Measured on this project's 2-core AMD EPYC
(Zen 5, AVX-512) with one thread, the unembedding products of the `cpu` preset at batch 32 (2016 rows, d_model 64,
vocab 1024): see docs/llc.md, *Speed*, and benchmarks/bench_llc.py. The arithmetic is float32 in both (oneDNN's
default math mode is strict fp32); only the order of the sums differs, so results agree to float rounding, not
bit for bit.

``torch.ops.mkldnn._linear_pointwise`` is the oneDNN linear that PyTorch's own compiler (Inductor) calls on CPU;
it is not public API, so it is used only after a self-check against ``torch.mm`` on first use, only for
float32 CPU tensors outside autograd, and never where its weight operand is strided in a way it would copy or
re-plan on every call (a sliced weight costs seconds there). Everything else, and everything when
RLLC_ONEDNN_GEMM=0 or the check fails, goes to ``torch.mm``.

Which library is faster depends on the CPU, so the route is on by default only where the cause above holds: an
AMD CPU with AVX-512. On an Intel Xeon with AVX-512 (2 cores, 2026-12-02) MKL was the faster one: a full-model
estimate (cpu preset, 4 chains × 20 draws, batch 32, one thread) took 2.49–2.50 s of CPU with MKL against
2.68–3.27 s with oneDNN, and per product shape MKL led on the narrow ones (2016 × 64 × 192: 157 against 143
GFLOP/s) while oneDNN led on the unembedding (2016 × 64 × 1024: 104 against 86). RLLC_ONEDNN_GEMM=1 turns the
route on anywhere, 0 turns it off.
"""

from __future__ import annotations

import os

import torch

_state: dict[str, bool | str] = {}  # ok: the route's on; forced: set_enabled's "1"/"0"


def _linear():  # noqa: ANN202
    return torch.ops.mkldnn._linear_pointwise.default


def _mkl_lacks_avx512() -> bool:
    """Whether this CPU is one where MKL's float32 kernels fall short of its vector unit: an AMD CPU (MKL runs
    AVX2 there) whose cores have AVX-512 (oneDNN uses it)."""
    try:
        with open("/proc/cpuinfo") as f:
            amd = any(line.startswith("vendor_id") and "AuthenticAMD" in line for line in f)
    except OSError:
        import platform

        amd = "AMD" in platform.processor().upper()
    return amd and torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _self_check() -> bool:
    try:
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(37, 19, generator=g), torch.randn(19, 23, generator=g)
        return bool(all(torch.allclose(_linear()(a, w, None, "none", [], ""), a @ b, rtol=1e-5, atol=1e-5)
                        for w in (b.T, b.T.contiguous())))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def available() -> bool:
    """Whether products go to oneDNN (cached per process): oneDNN built in, a self-check against ``torch.mm``
    passed, and either RLLC_ONEDNN_GEMM=1 / ``set_enabled(True)`` or, by default, a CPU where MKL lacks
    AVX-512 kernels (AMD with AVX-512); RLLC_ONEDNN_GEMM=0 turns it off."""
    if "ok" not in _state:
        mode = _state.get("forced", os.environ.get("RLLC_ONEDNN_GEMM", "auto"))
        wanted = mode == "1" or (mode not in ("0", "1") and _mkl_lacks_avx512())
        _state["ok"] = wanted and torch.backends.mkldnn.is_available() and _self_check()
    return bool(_state["ok"])


def set_enabled(flag: bool | None) -> None:
    """Turn the oneDNN route on (if oneDNN passes its self-check) or off for this process, or back to the default
    rule with None (benchmarks and tests compare the two)."""
    _state.clear()
    if flag is not None:
        _state["forced"] = "1" if flag else "0"


def _routable(a: torch.Tensor, b: torch.Tensor, autograd: bool = False) -> bool:
    """Whether ``a @ b`` goes to oneDNN; ``autograd``: the caller differentiates it itself (``_Affine``)."""
    return (a.device.type == "cpu" and a.dtype == torch.float32 and b.dtype == torch.float32 and a.dim() == 2
            and b.dim() == 2 and (autograd or not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)))
            and (b.is_contiguous() or b.T.is_contiguous()) and available())


def mm(a: torch.Tensor, b: torch.Tensor, *, bias: torch.Tensor | None = None, buffer: torch.Tensor | None = None,
       autograd: bool = False) -> torch.Tensor:
    """``a @ b (+ bias)`` for a (m, k), b (k, n), bias (n,).

    Args:
        buffer: an (m, n) tensor that ``torch.mm`` writes into where it computes the product (no bias); oneDNN has
            no output argument and returns a new tensor. Use the returned tensor either way.
        autograd: the caller differentiates the product itself (``_Affine``), so inputs that require grad may go
            to oneDNN.

    Returns:
        (m, n), equal to ``torch.mm(a, b)`` (``torch.addmm(bias, a, b)``) to float rounding.
    """
    if _routable(a, b, autograd):
        return _linear()(a if a.is_contiguous() else a.contiguous(), b.T, bias, "none", [], "")  # weight (n, k)
    if bias is not None:
        return torch.addmm(bias, a, b)
    return torch.mm(a, b) if buffer is None else torch.mm(a, b, out=buffer)


class _Affine(torch.autograd.Function):
    """y[n] = x[n] @ W[n] + b[n] for n < N, each product by oneDNN; the backward's products too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(x, W)
        ctx.has_b = b is not None
        return torch.stack([mm(x[n], W[n], bias=None if b is None else b[n], autograd=True)
                            for n in range(x.shape[0])])

    @staticmethod
    def backward(ctx, dy: torch.Tensor):  # noqa: ANN001, ANN205
        x, W = ctx.saved_tensors
        dx = dW = db = None
        N = x.shape[0]
        if ctx.needs_input_grad[0]:
            dx = torch.stack([mm(dy[n], W[n].T) for n in range(N)])
        if ctx.needs_input_grad[1]:
            dW = torch.stack([mm(x[n].T, dy[n]) for n in range(N)])
        if ctx.has_b and ctx.needs_input_grad[2]:
            db = dy.sum(1)
        return dx, dW, db


def affine(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Batched ``x @ W + b`` with autograd: ``torch.baddbmm(b[:, None], x, W)`` with every product (forward and
    backward) by oneDNN where ``mm`` would route it.

    Args:
        x: (N, M, K); W: (N, K, J), each W[n] contiguous or transposed-contiguous (an expanded W is fine);
            b: (N, J) or None.

    Returns:
        (N, M, J), equal to the torch expression to float rounding.
    """
    if x.dim() == 3 and W.dim() == 3 and _routable(x[0], W[0], autograd=True) \
            and (b is None or b.dtype == torch.float32):
        return _Affine.apply(x, W, b)
    return torch.bmm(x, W) if b is None else torch.baddbmm(b[:, None], x, W)
