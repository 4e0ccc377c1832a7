"""The per-head paths' unembedding (rllc.llc.unembed): equal to the plain cross-entropy and its autograd gradient,
finite where p_target underflows."""

import torch
import torch.nn.functional as F

from rllc.llc import unembed


def _case(rows=50, D=8, V=33, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, W, b = torch.randn(rows, D, generator=g), torch.randn(D, V, generator=g), torch.randn(V, generator=g)
    return h, W, b, torch.randint(0, V, (rows,), generator=g)


def test_token_nll_equals_cross_entropy_and_stays_finite_where_p_underflows():
    h, W, b, t = _case()
    h[3] *= 60.0  # logits spread by hundreds of nats: p_target underflows in float32 for some rows
    ws = unembed.Workspace()
    ref = F.cross_entropy(h @ W + b, t, reduction="none")
    got = unembed.token_nll(h, unembed.augmented(W, b), t, ws)
    assert torch.isfinite(got).all() and ref[3] > 100  # the row whose softmax underflows reads its exact value
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    # the buffer is reused: a second, smaller call gives its own values
    torch.testing.assert_close(unembed.token_nll(h[:7], unembed.augmented(W, b), t[:7], ws), ref[:7],
                               rtol=1e-5, atol=1e-5)


def test_mean_nll_and_grad_equal_autograd():
    h, W, b, t = _case(rows=60)
    hh = h.clone().requires_grad_()
    ref = torch.stack([F.cross_entropy(hh[i * 20:(i + 1) * 20] @ W + b, t[i * 20:(i + 1) * 20]) for i in range(3)])
    (g_ref,) = torch.autograd.grad(ref.sum(), hh)
    losses, dh = unembed.mean_nll_and_grad(h, unembed.augmented(W, b), t, 3, unembed.Workspace())
    torch.testing.assert_close(losses, ref.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dh, g_ref, rtol=1e-5, atol=1e-6)


def test_log_softmax_nll_equals_cross_entropy_where_p_underflows():
    h, W, b, t = _case()
    h[3] *= 60.0  # p_target underflows in float32: the log-softmax still reads the exact loss
    logits = h @ W + b
    ref = F.cross_entropy(logits, t, reduction="none")
    got = unembed.log_softmax_nll_(logits.clone(), t)
    assert torch.isfinite(got).all() and ref[3] > 100
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-5)


def test_row_blocks_give_the_same_losses_and_gradients(monkeypatch):
    h, W, b, t = _case(rows=60)
    h[3] *= 60.0  # an underflowing row inside the second block
    W_aug = unembed.augmented(W, b)
    one = unembed.token_nll(h, W_aug, t, unembed.Workspace()), unembed.mean_nll_and_grad(h, W_aug, t, 3,
                                                                                          unembed.Workspace())
    monkeypatch.setattr(unembed, "_BLOCK", 7 * 33)  # blocks of 7 rows, across the groups' boundaries
    assert len(unembed.row_blocks(60, 33)) == 9
    ws = unembed.Workspace()
    blocked = unembed.token_nll(h, W_aug, t, ws), unembed.mean_nll_and_grad(h, W_aug, t, 3, ws)
    torch.testing.assert_close(blocked[0], one[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(blocked[1][0], one[1][0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(blocked[1][1], one[1][1], rtol=1e-6, atol=1e-6)
    assert torch.isfinite(blocked[0]).all()
