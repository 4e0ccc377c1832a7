"""rllc._gemm: oneDNN float32 products equal torch.mm to float rounding, and everything else goes to torch.mm."""

import pytest
import torch

from rllc import _gemm


@pytest.fixture
def calls(monkeypatch):
    """Counts the oneDNN calls (the real kernel still runs)."""
    seen = []
    real = _gemm._linear()
    _gemm.set_enabled(True)
    _gemm.available()  # the self-check runs before counting

    def counted(*a):
        seen.append(a[0].shape)
        return real(*a)

    monkeypatch.setattr(_gemm, "_linear", lambda: counted)
    yield seen
    _gemm.set_enabled(None)


def _mats(m=300, k=65, n=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)


_ONEDNN = torch.backends.mkldnn.is_available() and _gemm._self_check()


@pytest.mark.skipif(not _ONEDNN, reason="this torch build has no oneDNN linear")
def test_routed_products_equal_torch_mm(calls):
    a, b = _mats()
    ref = a.double() @ b.double()
    for lhs, rhs in ((a, b), (a, b.T.contiguous().T), (a.T.contiguous().T, b)):  # b, bᵀ contiguous, a strided
        out = _gemm.mm(lhs, rhs)
        assert out.shape == (300, 1024) and out.dtype == torch.float32
        err, mkl_err = (out.double() - ref).abs().max(), (torch.mm(lhs, rhs).double() - ref).abs().max()
        assert err <= 4 * mkl_err + 1e-6  # float rounding, as torch.mm's own
    assert len(calls) == 3


def test_unroutable_products_are_torch_mm_bit_for_bit(calls):
    a, b = _mats(40, 17, 33)
    buf = torch.empty(40, 33)
    sliced = torch.randn(17, 50)[:, :33]  # neither it nor its transpose is contiguous: oneDNN would re-plan
    cases = [(a.double(), b.double()), (a, sliced), (a.requires_grad_(), b)]
    for lhs, rhs in cases:
        assert torch.equal(_gemm.mm(lhs, rhs), torch.mm(lhs, rhs))
    out = _gemm.mm(a.detach(), sliced, buffer=buf)
    assert out.data_ptr() == buf.data_ptr()  # torch.mm wrote into the kept buffer
    assert calls == []


def test_disabled_means_torch_mm(calls):
    a, b = _mats(40, 17, 33)
    _gemm.set_enabled(False)
    assert not _gemm.available()
    assert torch.equal(_gemm.mm(a, b), torch.mm(a, b)) and calls == []


@pytest.mark.skipif(not _ONEDNN, reason="this torch build has no oneDNN linear")
@pytest.mark.parametrize("env, amd_avx512, routed", [
    (None, True, True), (None, False, False),  # by default: only where MKL lacks AVX-512 kernels
    ("1", False, True), ("0", True, False), ("auto", True, True),  # the environment overrides either way
])
def test_default_rule_and_env_switch(monkeypatch, env, amd_avx512, routed):
    if env is None:
        monkeypatch.delenv("RLLC_ONEDNN_GEMM", raising=False)
    else:
        monkeypatch.setenv("RLLC_ONEDNN_GEMM", env)
    monkeypatch.setattr(_gemm, "_mkl_lacks_avx512", lambda: amd_avx512)
    _gemm.set_enabled(None)  # back to the default rule: re-reads the environment
    assert _gemm.available() is routed
    _gemm.set_enabled(not routed)  # set_enabled overrides both
    assert _gemm.available() is (not routed)
    monkeypatch.undo()
    _gemm.set_enabled(None)


def test_mkl_lacks_avx512_reads_the_vendor(monkeypatch, tmp_path):
    import builtins

    real_open = builtins.open
    for vendor, cap, want in (("AuthenticAMD", "AVX512", True), ("GenuineIntel", "AVX512", False),
                              ("AuthenticAMD", "AVX2", False)):
        info = tmp_path / f"{vendor}{cap}"
        info.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: fpu\n")
        monkeypatch.setattr(builtins, "open", lambda p, *a, info=info, **k: real_open(
            info if p == "/proc/cpuinfo" else p, *a, **k))
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda cap=cap: cap)
        assert _gemm._mkl_lacks_avx512() is want


@pytest.mark.parametrize("expanded", [False, True])
def test_affine_and_its_gradients_equal_baddbmm(calls, expanded):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 50, 16, generator=g, requires_grad=True)
    W0 = torch.randn(16, 24, generator=g)
    W = (W0.expand(3, 16, 24) if expanded else torch.randn(3, 16, 24, generator=g)).requires_grad_(not expanded)
    b = torch.randn(3, 24, generator=g, requires_grad=True)
    dy = torch.randn(3, 50, 24, generator=g)
    y = _gemm.affine(x, W, b)
    grads = torch.autograd.grad((y * dy).sum(), [x, b] + ([] if expanded else [W]))
    ref_y = torch.baddbmm(b[:, None], x, W)
    ref = torch.autograd.grad((ref_y * dy).sum(), [x, b] + ([] if expanded else [W]))
    torch.testing.assert_close(y, ref_y, rtol=1e-5, atol=1e-5)
    for a, r in zip(grads, ref):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-4)
    if _gemm.available():
        assert len(calls) >= 3  # the forward's products went to oneDNN (the backward's through mm)
