"""The transformer: TransformerLens layout, hooks, components, and torch.func compatibility."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, vmap

from rllc import RllcError
from rllc.model import ModelConfig, Transformer, heads, resolve_masks
from rllc.model.components import Component

CFG = ModelConfig(n_layers=2, n_heads=3, d_model=12, d_head=4, n_ctx=10, d_vocab=50)


@pytest.fixture
def model() -> Transformer:
    m = Transformer(CFG, seed=0)
    with torch.no_grad():  # non-zero biases and LN params, so a wrong index or a dropped term shows
        for p in m.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return m


def test_transformer_lens_names_and_shapes(model):
    H, D, E, V, T = 3, 12, 4, 50, 10
    expected = {"embed.W_E": (V, D), "pos_embed.W_pos": (T, D), "ln_final.w": (D,), "ln_final.b": (D,),
                "unembed.W_U": (D, V), "unembed.b_U": (V,)}
    for l in range(2):
        expected |= {f"blocks.{l}.ln1.w": (D,), f"blocks.{l}.ln1.b": (D,), f"blocks.{l}.attn.b_O": (D,),
                     f"blocks.{l}.attn.W_O": (H, E, D)}
        expected |= {f"blocks.{l}.attn.W_{x}": (H, D, E) for x in "QKV"}
        expected |= {f"blocks.{l}.attn.b_{x}": (H, E) for x in "QKV"}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected


def _reference_forward(m: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """The architecture written out by hand from the paper/TransformerLens definition."""
    ln = lambda x, w, b: torch.nn.functional.layer_norm(x, x.shape[-1:], w, b, 1e-5)  # noqa: E731
    p = dict(m.named_parameters())
    T = tokens.shape[1]
    resid, pos = p["embed.W_E"][tokens], p["pos_embed.W_pos"][:T]
    for l in range(m.cfg.n_layers):
        a = lambda n: p[f"blocks.{l}.attn.{n}"]  # noqa: E731
        x = ln(resid, p[f"blocks.{l}.ln1.w"], p[f"blocks.{l}.ln1.b"])
        out = a("b_O").expand_as(resid).clone()
        for h in range(m.cfg.n_heads):
            q = (x + pos) @ a("W_Q")[h] + a("b_Q")[h]
            k = (x + pos) @ a("W_K")[h] + a("b_K")[h]
            v = x @ a("W_V")[h] + a("b_V")[h]
            s = q @ k.transpose(-1, -2) / m.cfg.d_head**0.5
            s = s.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
            out = out + (s.softmax(-1) @ v) @ a("W_O")[h]
        resid = resid + out
    return ln(resid, p["ln_final.w"], p["ln_final.b"]) @ p["unembed.W_U"] + p["unembed.b_U"]


def test_forward_matches_handwritten_reference_and_hooked_path(model):
    tokens = torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(1))
    fused = model(tokens)
    ref = _reference_forward(model, tokens)
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)
    logits, cache = model.run_with_cache(tokens)  # explicit-softmax path (patterns are hooked)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    pat = cache["blocks.1.attn.hook_pattern"]
    assert pat.shape == (3, 3, 10, 10)
    torch.testing.assert_close(pat.sum(-1), torch.ones(3, 3, 10))
    assert torch.all(pat.triu(1) == 0)
    assert cache["blocks.0.attn.hook_result"].shape == (3, 10, 3, 12)
    torch.testing.assert_close(cache["blocks.0.attn.hook_result"].sum(2) + model.blocks[0].attn.b_O,
                               cache["blocks.0.hook_attn_out"])


def test_hooks_patch_the_right_tensor_and_are_always_removed(model):
    tokens = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(2))
    clean = model(tokens)

    def zero_head(z, name):
        z = z.clone()
        z[:, :, 1] = 0
        return z

    with model.hooks([("blocks.1.attn.hook_z", zero_head)]):
        patched, cache = model.run_with_cache(tokens, ["blocks.1.attn.hook_result"])
    assert not torch.allclose(patched, clean)
    assert torch.all(cache["blocks.1.attn.hook_result"][:, :, 1] == 0)  # head 1's output is gone
    assert cache["blocks.1.attn.hook_result"][:, :, 0].abs().sum() > 0  # head 0's is not
    torch.testing.assert_close(model(tokens), clean)  # hooks removed
    with pytest.raises(ZeroDivisionError), model.hooks([("blocks.0.hook_resid_pre", lambda x, n: 1 / 0)]):
        model(tokens)
    assert not any(hp.active for hp in model.hook_points.values())
    with pytest.raises(RllcError, match="unknown hook point"), model.hooks([("blocks.9.nope", zero_head)]):
        pass


def test_q_input_hook_changes_only_the_query_path(model):
    tokens = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(3))
    _, clean = model.run_with_cache(tokens)
    with model.hooks([("blocks.1.hook_q_input", lambda x, n: torch.zeros_like(x))]):
        _, patched = model.run_with_cache(tokens)
    assert not torch.allclose(patched["blocks.1.attn.hook_q"], clean["blocks.1.attn.hook_q"])
    torch.testing.assert_close(patched["blocks.1.attn.hook_k"], clean["blocks.1.attn.hook_k"])
    torch.testing.assert_close(patched["blocks.1.attn.hook_v"], clean["blocks.1.attn.hook_v"])


def test_component_masks_select_exactly_the_head(model):
    masks = resolve_masks(model, "1:2")
    assert sorted(masks) == sorted(f"blocks.1.attn.{n}" for n in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V"))
    for name, m in masks.items():
        assert m[2].all() and not m[:2].any()
    assert Component.parse(CFG, "1:2").size(model) == 3 * (12 * 4) + 4 * 12 + 3 * 4  # W_QKV[h], W_O[h], b_QKV[h]
    assert Component.parse(CFG, "all").size(model) == model.num_params()
    layer0 = Component.parse(CFG, "layer:0")
    assert sorted(layer0.masks(model)) == sorted(n for n, _ in model.named_parameters() if n.startswith("blocks.0."))
    union = Component.parse(CFG, ["0:1", "layer:0", "1:0"])  # a whole layer subsumes its head
    assert union.size(model) == layer0.size(model) + Component.parse(CFG, "1:0").size(model)
    assert Component.parse(CFG, "ln").size(model) == 3 * 2 * 12
    assert heads(CFG) == ["0:0", "0:1", "0:2", "1:0", "1:1", "1:2"]
    for bad in ("2:0", "0:3", "layer:5", "mlp", ""):
        with pytest.raises(RllcError):
            resolve_masks(model, bad)
    with pytest.raises(RllcError, match="shape"):
        resolve_masks(model, {"embed.W_E": torch.ones(3, dtype=torch.bool)})


def test_functional_call_vmap_grad(model):
    params = {k: v.detach() for k, v in model.named_parameters()}
    stacked = {k: torch.stack([v, v + 0.01]) for k, v in params.items()}
    tokens = torch.randint(0, 50, (2, 4, 10), generator=torch.Generator().manual_seed(4))

    def loss(p, x):
        logits = functional_call(model, p, (x,))
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())

    g = vmap(grad(loss))(stacked, tokens)
    for c in range(2):
        single = grad(loss)({k: v[c] for k, v in stacked.items()}, tokens[c])
        for k in params:
            torch.testing.assert_close(g[k][c], single[k], atol=1e-5, rtol=1e-4)


def test_sequence_longer_than_context_is_a_clear_error(model):
    with pytest.raises(RllcError, match="n_ctx"):
        model(torch.zeros(1, 11, dtype=torch.long))


tl = pytest.importorskip  # alias keeps the skip reason readable below


def test_identical_logits_to_transformer_lens(model):
    transformer_lens = tl("transformer_lens", reason="TransformerLens 3.9.0 not installed (extra: rllc[tl])")
    cfg = transformer_lens.HookedTransformerConfig(
        n_layers=2, d_model=12, n_ctx=10, d_head=4, n_heads=3, d_vocab=50, attn_only=True,
        normalization_type="LN", positional_embedding_type="shortformer", act_fn=None, d_mlp=None)
    ht = transformer_lens.HookedTransformer(cfg)
    missing, unexpected = ht.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.endswith((".mask", ".IGNORE")) for k in missing)
    tokens = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ht(tokens), model(tokens), atol=1e-5, rtol=1e-5)
    back = Transformer(CFG, seed=None)
    back.load_state_dict({k: v for k, v in ht.state_dict().items() if k in back.state_dict()})
    torch.testing.assert_close(back(tokens), model(tokens))
