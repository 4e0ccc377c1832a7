"""Adapters: components, hooks and the LLC on models rllc did not build (tiny random models from configs).

Proofs (issue 12): (a) fused-layout masks select exactly one head — perturbing the in-mask coordinates changes
only that head's z (Q/K/V slices) or result (output rows/columns); (b) the same weights as an rllc Transformer and
as a HookedTransformer give the same per-head wrLLC chains seed for seed; (c) a hand-wired previous-token head in a
GPT-2 scores ≈ 1 through the adapter's hooks and a wired induction circuit is labelled induction.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from rllc import RllcError, estimate_llc, estimate_llc_many
from rllc.model import ModelConfig, Transformer
from rllc.model.adapters import adapt
from rllc.model.components import Component, canonical_name, component_masks, head_index, is_head_name

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="transformers not installed (extra: rllc[hf])")


def tiny_gpt2(seed: int = 0, **kw):
    torch.manual_seed(seed)
    cfg = dict(n_layer=2, n_head=4, n_embd=16, n_positions=32, vocab_size=50, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**cfg, **kw}))


def tiny_neox(seed: int = 0, **kw):
    torch.manual_seed(seed)
    cfg = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=16, intermediate_size=32,
               max_position_embeddings=32, vocab_size=50, bos_token_id=0, eos_token_id=0)
    return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**{**cfg, **kw}))


TOKENS = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------------ the one parser
def test_one_parser_canonical_names_and_errors():
    assert canonical_name("1:6") == "1:6"
    assert canonical_name("L1H6") == canonical_name("l1h6") == canonical_name("1.6") == "1:6"
    assert canonical_name("0:1,0:3") == canonical_name("0:1+0:3") == canonical_name(["0:1", "0:3"]) == "0:1+0:3"
    assert canonical_name("0:1+0:1+layer:1") == "0:1+layer:1"
    assert Component.parse("1:6").head == (1, 6) and Component.parse("0:1+0:3").head is None
    assert Component.parse("0:1+0:3").is_head and not Component.parse("0:1+embed").is_head
    assert is_head_name("3:2") and not is_head_name("0:1->1:2") and not is_head_name("all")
    assert head_index("1:2") == (1, 2)
    with pytest.raises(RllcError, match="unknown component 'head7'"):
        Component.parse("head7")
    for bad in ("0:0+", "+0:0", "0:0++0:1", "1:2,0:0+"):  # an empty part of a union, wherever it is named
        with pytest.raises(RllcError, match="has an empty part"):
            Component.parse(bad)
    with pytest.raises(RllcError, match="heads 0..3"):
        component_masks(tiny_gpt2(), "1:4")
    with pytest.raises(RllcError, match="rotary"):
        component_masks(tiny_neox(), "pos_embed")
    with pytest.raises(RllcError, match="no adapter for Linear"):
        component_masks(torch.nn.Linear(2, 2), "all")


# ------------------------------------------------------------------------------------------------ (a) fused masks
@pytest.mark.parametrize("make", [tiny_gpt2, tiny_neox], ids=["gpt2", "neox"])
def test_fused_masks_select_exactly_one_head(make):
    model = make()
    a = adapt(model)
    assert not model.training and a.cfg.n_heads == 4 and a.cfg.d_head == 4
    D, E, L, h = 16, 4, 1, 2
    masks = component_masks(model, f"{L}:{h}")
    # Each head owns 3·D·E weights + 3·E biases of the fused QKV and E·D weights of the output projection.
    assert sum(int(m.sum()) for m in masks.values()) == 3 * D * E + 3 * E + E * D
    # The heads of a layer partition the fused QKV and output weights (b_O is no head's).
    union = component_masks(model, "+".join(f"{L}:{i}" for i in range(4)))
    qkv = [n for n in union if "c_attn" in n or "query_key_value" in n]
    assert all(bool(union[n].all()) for n in qkv)
    params = dict(model.named_parameters())
    z_name, r_name = f"blocks.{L}.attn.hook_z", f"blocks.{L}.attn.hook_result"
    with torch.no_grad():
        _, clean = a.run_with_cache(TOKENS, [z_name, r_name, "blocks.0.attn.hook_z"])
        saved = {n: params[n].clone() for n in masks}
        gen = torch.Generator().manual_seed(0)
        for n, m in masks.items():
            params[n].add_(torch.randn(m.shape, generator=gen) * m)  # in-mask coordinates only
        _, hit = a.run_with_cache(TOKENS, [z_name, r_name, "blocks.0.attn.hook_z"])
        for n in masks:
            params[n].copy_(saved[n])
    dz = (hit[z_name] - clean[z_name]).abs().amax(dim=(0, 1, 3))  # per head
    dr = (hit[r_name] - clean[r_name]).abs().amax(dim=(0, 1, 3))
    assert dz[h] > 1e-2 and dr[h] > 1e-2
    assert float(dz[[i for i in range(4) if i != h]].max()) == 0.0  # Q/K/V slices: only head h's z moves
    assert float(dr[[i for i in range(4) if i != h]].max()) == 0.0  # and only head h's output
    assert float((hit["blocks.0.attn.hook_z"] - clean["blocks.0.attn.hook_z"]).abs().max()) == 0.0


def test_hooks_replace_activations_and_are_removed():
    model = tiny_gpt2()
    a = adapt(model)
    clean = a(TOKENS)
    with a.hooks([("blocks.1.attn.hook_z", lambda z, name: torch.zeros_like(z))]):
        ablated = a(TOKENS)
    assert float((ablated - clean).abs().max()) > 1e-4
    torch.testing.assert_close(a(TOKENS), clean)  # removed on exit
    # hook_result summed over heads (+ b_O) is the attention output; per-head results are consistent with z·W_O
    _, c = a.run_with_cache(TOKENS, ["blocks.0.attn.hook_result", "blocks.0.hook_attn_out", "blocks.0.attn.hook_z"])
    W_O = a.head_weights(0)["W_O"]
    torch.testing.assert_close(c["blocks.0.attn.hook_result"], torch.einsum("bthe,hed->bthd", c["blocks.0.attn.hook_z"], W_O))
    b_O = model.transformer.h[0].attn.c_proj.bias
    torch.testing.assert_close(c["blocks.0.attn.hook_result"].sum(2) + b_O, c["blocks.0.hook_attn_out"])
    with pytest.raises(RllcError, match="unknown hook point"):
        with a.hooks([("blocks.0.hook_q_input", lambda x, n: None)]):
            pass


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_neox], ids=["gpt2", "neox"])
def test_adapter_logits_match_the_model_and_weights_views(make):
    model = make()
    sdpa = make()  # the same weights under transformers' own attention
    with torch.no_grad():
        ref = sdpa.eval()(TOKENS).logits
    torch.testing.assert_close(adapt(model)(TOKENS), ref, atol=1e-5, rtol=1e-5)
    # head_weights reproduce hook_q/hook_v from the LayerNorm output (biases zero at init)
    a = adapt(model)
    _, c = a.run_with_cache(TOKENS, ["blocks.0.hook_resid_pre", "blocks.0.attn.hook_q", "blocks.0.attn.hook_v"])
    ln = (model.transformer.h[0].ln_1 if make is tiny_gpt2 else model.gpt_neox.layers[0].input_layernorm)
    x = ln(c["blocks.0.hook_resid_pre"])
    w = a.head_weights(0)
    torch.testing.assert_close(torch.einsum("btd,hde->bthe", x, w["W_Q"]), c["blocks.0.attn.hook_q"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.einsum("btd,hde->bthe", x, w["W_V"]), c["blocks.0.attn.hook_v"], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ the LLC on HF
@pytest.mark.parametrize("make", [tiny_gpt2, tiny_neox], ids=["gpt2", "neox"])
def test_estimate_llc_on_hf_models_by_name(make):
    model = make(resid_pdrop=0.5) if make is tiny_gpt2 else make(hidden_dropout=0.5)
    model.train()  # dropout on: the estimator must run in eval mode and leave the mode as it found it
    tokens = torch.randint(0, 50, (64, 12), generator=torch.Generator().manual_seed(2))
    kw = dict(chains=2, draws=6, batch_size=8, seed=3)
    seq = estimate_llc(model, tokens, component="1:2", batched=False, **kw)
    again = estimate_llc(model, tokens, component="1:2", batched=False, **kw)
    assert model.training
    np.testing.assert_array_equal(seq.loss_trace, again.loss_trace)  # deterministic: dropout was off
    vm = estimate_llc(model, tokens, component="1:2", batched=True, **kw)
    assert np.isfinite(seq.loss_trace).all() and np.isfinite(vm.loss_trace).all()
    assert seq.component == "1:2"
    many = estimate_llc_many(model, tokens, ["0:0+0:1", "all"], **kw)
    assert [r.component for r in many] == ["0:0+0:1", "all"]
    assert all(np.isfinite(r.mean) for r in many)


def test_hessian_trace_on_gpt2_runs_forward_mode_ad():
    from rllc.analysis.hessian import exact_hessian, hessian_trace

    model = tiny_gpt2(n_embd=8, n_head=2, n_layer=1, vocab_size=20)
    tokens = torch.randint(0, 20, (4, 6), generator=torch.Generator().manual_seed(0))
    from rllc.analysis.hessian import HessianConfig

    r = hessian_trace(model, tokens, component="0:1", config=HessianConfig(n_samples=4, n_probes=200, batch_size=4))
    exact = float(torch.trace(exact_hessian(model, tokens, component="0:1")))
    assert abs(r.estimate - exact) < 4 * r.std_error + 1e-3 * abs(exact)


# ------------------------------------------------------------------------------------------------ (b) rllc == TL
def _rllc_and_tl():
    tl = pytest.importorskip("transformer_lens", reason="TransformerLens 3.9.0 not installed (extra: rllc[tl])")
    cfg = ModelConfig(n_layers=2, n_heads=3, d_model=12, d_head=4, n_ctx=10, d_vocab=37)
    model = Transformer(cfg, seed=3)
    with torch.no_grad():  # non-zero biases and LN so every slice matters
        for n, p in model.named_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))))
    tcfg = tl.HookedTransformerConfig(n_layers=2, d_model=12, n_ctx=10, d_head=4, n_heads=3, d_vocab=37,
                                      attn_only=True, normalization_type="LN",
                                      positional_embedding_type="shortformer", act_fn=None, d_mlp=None)
    ht = tl.HookedTransformer(tcfg)
    ht.load_state_dict(model.state_dict(), strict=False)
    return model, ht, tl


def test_same_weights_as_rllc_and_transformer_lens_give_the_same_chains():
    model, ht, _ = _rllc_and_tl()
    tokens = torch.randint(0, 37, (40, 10), generator=torch.Generator().manual_seed(4))
    comps = ["0:1", "1:2", "layer:0", "0:0+1:1"]
    kw = dict(chains=2, draws=10, batch_size=6, seed=5, init_batches=2)
    for batched in ("auto", False):  # auto: TL converted to rllc (per-head path); False: the TL model itself
        a = estimate_llc_many(model, tokens, comps, batched=batched, **kw)
        b = estimate_llc_many(ht, tokens, comps, batched=batched, **kw)
        for x, y in zip(a, b):
            np.testing.assert_allclose(y.loss_trace, x.loss_trace, rtol=0, atol=1e-5)
            assert x.component == y.component
    assert adapt(ht).native() is not ht  # the per-head fast path ran on an rllc conversion


def test_path_patching_on_a_hooked_transformer_matches_rllc():
    """TransformerLens's split Q/K/V inputs are per head (B, T, H, D): patching them added a (B, T, D) delta and
    crashed `rllc heads` on every TL import that is not rllc's architecture. Same weights, same patched losses."""
    from rllc.analysis.patching import path_patched_per_token_loss

    model, ht, _ = _rllc_and_tl()
    tokens = torch.randint(0, 37, (6, 10), generator=torch.Generator().manual_seed(4))
    for senders, receiver, paths in (([(0, 1)], (1, 2), "qkv"), ([(0, 0), (0, 2)], (1, 0), "k")):
        for kind in ("zero", "mean"):
            ref = path_patched_per_token_loss(model, tokens, senders, receiver, paths=paths, kind=kind)
            got = path_patched_per_token_loss(ht, tokens, senders, receiver, paths=paths, kind=kind)
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
            assert not torch.allclose(ref, path_patched_per_token_loss(model, tokens, [(0, 0)], receiver, kind=kind))


def test_transformer_lens_with_other_architecture_is_not_converted():
    model, _, tl = _rllc_and_tl()
    tcfg = tl.HookedTransformerConfig(n_layers=2, d_model=12, n_ctx=10, d_head=4, n_heads=3, d_vocab=37,
                                      attn_only=True, normalization_type="LN", positional_embedding_type="standard",
                                      act_fn=None, d_mlp=None)
    std = tl.HookedTransformer(tcfg)
    std.load_state_dict(model.state_dict(), strict=False)  # same keys and shapes, other positions
    from rllc.model.adapters.tl import to_rllc

    with pytest.raises(RllcError, match="positional_embedding_type is 'standard'"):
        to_rllc(std)
    a = adapt(std)
    assert a.native() is std  # estimates run on the HookedTransformer itself, never on a mis-loaded copy
    r = estimate_llc(std, torch.randint(0, 37, (20, 10)), component="1:0", chains=1, draws=3, batch_size=4)
    assert np.isfinite(r.mean)
    # TransformerLens's hooks are called through the adapter with rllc's (x, name) convention
    from rllc.analysis.ablation import ablation_scores

    s = ablation_scores(std, torch.randint(0, 37, (4, 10), generator=torch.Generator().manual_seed(0)), "zero")
    assert s.shape == (2, 3) and bool(torch.isfinite(s).all())


# ------------------------------------------------------------------------------------------------ (c) wired heads
def wired_gpt2(n_ctx: int = 32, vocab: int = 16):
    """A 2-layer GPT-2 with hand-set weights: head 0:0 attends to the previous position and copies that token into
    a "previous token" subspace; head 1:0 matches the current token against it (an induction head).

    Every feature is a pair of residual coordinates (+s, −s), so each LayerNorm sees a zero-mean vector whose
    features all have the same size: subspaces tok (vocab pairs), pos (n_ctx pairs), prev (vocab pairs).
    """
    V, P = vocab, n_ctx
    D = 2 * (2 * V + P)
    H, E = 4, max(V, P)
    m = tiny_gpt2(n_layer=2, n_head=H, n_embd=H * E if H * E >= D else D, n_positions=n_ctx, vocab_size=V)
    D = m.config.n_embd
    E = D // H
    tok = lambda v: (2 * v, 2 * v + 1)  # noqa: E731 - the coordinate pair of a feature
    pos = lambda i: (2 * V + 2 * i, 2 * V + 2 * i + 1)  # noqa: E731
    prev = lambda v: (2 * V + 2 * P + 2 * v, 2 * V + 2 * P + 2 * v + 1)  # noqa: E731
    beta = 8.0
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        for mod in m.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.fill_(1.0)
        wte, wpe = m.transformer.wte.weight, m.transformer.wpe.weight
        for v in range(V):
            wte[v, tok(v)[0]], wte[v, tok(v)[1]] = 1.0, -1.0
        for i in range(P):
            wpe[i, pos(i)[0]], wpe[i, pos(i)[1]] = 1.0, -1.0
        # layer 0, head 0: query at i reads pos i and asks for pos i-1; key at j reads pos j; value copies tok.
        W0 = m.transformer.h[0].attn.c_attn.weight  # (D, 3D)
        O0 = m.transformer.h[0].attn.c_proj.weight  # (D, D), rows of head 0 are 0..E-1
        for i in range(1, P):
            W0[pos(i)[0], 0 * D + (i - 1)] = beta  # Q head 0, column i-1
        for j in range(P):
            W0[pos(j)[0], 1 * D + j] = beta  # K head 0, column j
        for v in range(V):
            W0[tok(v)[0], 2 * D + v] = 1.0  # V head 0, column v
            O0[v, prev(v)[0]], O0[v, prev(v)[1]] = 4.0, -4.0  # write prev-token feature
        # layer 1, head 0: query reads tok v, key reads prev v.
        W1 = m.transformer.h[1].attn.c_attn.weight
        for v in range(V):
            W1[tok(v)[0], 0 * D + v] = beta
            W1[prev(v)[0], 1 * D + v] = beta
    return adapt(m)


def test_wired_previous_token_and_induction_heads_are_found_through_hooks():
    from rllc.analysis.head_types import label_heads
    from rllc.analysis.scores import head_score_table, previous_token_scores

    a = wired_gpt2()
    text = torch.randint(0, 16, (8, 32), generator=torch.Generator().manual_seed(0))
    prev = previous_token_scores(a.model, text)
    assert float(prev[0, 0]) > 0.97  # the hand-wired previous-token head
    assert float(prev[0, 1:].max()) < 0.2  # the unwired heads attend uniformly
    table = head_score_table(a.model, text)
    labels = label_heads(table).set_index("component")
    assert labels.loc["0:0", "label"] == "previous-token"
    assert labels.loc["1:0", "label"] == "induction", labels.loc["1:0", "evidence"]
    assert labels.loc["1:0", "induction_score"] > 0.6
    assert (labels.drop(index=["0:0", "1:0"]).label == "unlabelled").all()


def test_grouped_query_attention_heads_share_their_key_value_head():
    tl = pytest.importorskip("transformer_lens", reason="TransformerLens 3.9.0 not installed (extra: rllc[tl])")
    cfg = tl.HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, n_heads=4, d_vocab=30, d_mlp=32,
                                     act_fn="gelu", n_key_value_heads=2, normalization_type="LN",
                                     positional_embedding_type="rotary")
    ht = tl.HookedTransformer(cfg)
    m = component_masks(ht, "0:3")  # query head 3 uses K/V head 3 // 2 = 1
    assert int(m["blocks.0.attn.W_Q"][3].sum()) == 16 * 4 and int(m["blocks.0.attn.W_Q"].sum()) == 16 * 4
    assert bool(m["blocks.0.attn._W_K"][1].all()) and not bool(m["blocks.0.attn._W_K"][0].any())
    assert bool(m["blocks.0.attn._b_V"][1].all()) and "blocks.0.attn.b_O" not in m
    layer = component_masks(ht, "layer:0")
    assert "blocks.0.mlp.W_in" in layer and "blocks.0.ln2.w" in component_masks(ht, "ln")
    assert adapt(ht).native() is ht  # MLPs and rotary positions: never converted to rllc's model


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_neox], ids=["gpt2", "neox"])
def test_susceptibilities_on_hf_models(make):
    """Hugging Face models return an output with `.logits`: the per-token observable must read it (it called
    `model(tokens)` and indexed the output, a TypeError), and the chains are estimate_llc's, seed for seed."""
    from rllc import susceptibilities
    from rllc.llc.losses import next_token_loss, per_token_loss

    model = make().eval()  # GPT-2's dropout off for the direct comparison (the estimator turns it off itself)
    tokens = torch.randint(0, 50, (32, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(per_token_loss(model, tokens).mean(), next_token_loss(model, tokens))
    probe = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(5))
    kw = dict(chains=2, draws=4, batch_size=8, seed=3)
    res = susceptibilities(model, tokens, ["0:1"], probes={"p": probe}, **kw)
    assert res.per_token["0:1"]["p"].shape == (3, 11) and np.isfinite(res.per_token["0:1"]["p"]).all()
    plain = estimate_llc(model, tokens, component="0:1", paired=True, **kw)
    np.testing.assert_allclose(res.llc["0:1"].loss_trace, plain.loss_trace, rtol=0, atol=1e-6)
