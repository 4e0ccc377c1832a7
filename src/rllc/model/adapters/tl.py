"""Adapter for TransformerLens `HookedTransformer` (tested with transformer-lens 3.9; extra `rllc[tl]`).

Parameter and hook names are already rllc's. Two differences this adapter hides: TransformerLens calls hooks as
`fn(x, hook=HookPoint)` (rllc's as `fn(x, name)`), and it lists W_O before W_K (canonical_names restores rllc's
order, so the reference loop draws the same noise for the same weights). Grouped-query attention (`_W_K`, `_W_V`
of n_key_value_heads): head h moves its K/V head h // (n_heads / n_kv_heads), which the other heads of its group
share. When the model is exactly rllc's architecture (attention-only, LayerNorm, shortformer positions, standard
attention scale, no soft-caps), `native()` returns an rllc Transformer with the same weights, checked logit for
logit, so the per-head fast path applies; anything else runs on the HookedTransformer itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from rllc._errors import RllcError
from rllc.model.adapters import Adapter, HookFn, Index, ModelShape
from rllc.model.adapters.rllc import tl_canonical, tl_style_slices
from rllc.model.components import Part

_SPLIT_INPUTS = ("hook_q_input", "hook_k_input", "hook_v_input")


def rllc_mismatch(cfg) -> str | None:  # noqa: ANN001 - HookedTransformerConfig
    """Why a HookedTransformerConfig is not rllc's architecture (None when it is)."""
    checks = [
        (cfg.attn_only, "it has MLPs (attn_only=False)"),
        (cfg.normalization_type == "LN", f"normalization_type is {cfg.normalization_type!r}, not 'LN'"),
        (cfg.positional_embedding_type == "shortformer",
         f"positional_embedding_type is {cfg.positional_embedding_type!r}, not 'shortformer'"),
        (getattr(cfg, "n_key_value_heads", None) in (None, cfg.n_heads), "it uses grouped-query attention"),
        (cfg.use_attn_scale and math.isclose(cfg.attn_scale, math.sqrt(cfg.d_head)), "its attention scale is not √d_head"),
        (not getattr(cfg, "use_local_attn", False), "it uses local attention"),
        (getattr(cfg, "output_logits_soft_cap", -1.0) <= 0 and getattr(cfg, "attn_scores_soft_cap", -1.0) <= 0,
         "it soft-caps logits or attention scores"),
        (not getattr(cfg, "final_rms", False), "its final norm is RMS"),
        (getattr(cfg, "dtype", torch.float32) == torch.float32, "it is not float32"),
    ]
    bad = [why for ok, why in checks if not ok]
    return "; ".join(bad) if bad else None


class TLAdapter(Adapter):
    family = "transformer_lens"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        model.eval()
        c = model.cfg
        kv = getattr(c, "n_key_value_heads", None) or c.n_heads
        pos = {"shortformer": "shortformer", "standard": "standard", "rotary": "rotary"}.get(
            c.positional_embedding_type, c.positional_embedding_type)
        self.cfg = ModelShape("transformer_lens", c.n_layers, c.n_heads, c.d_model, c.d_head, c.n_ctx, c.d_vocab,
                              kv, bool(c.attn_only), pos)
        self._group = c.n_heads // kv
        self.hook_names = list(model.hook_dict)
        self._native: nn.Module | None = None

    def part_slices(self, part: Part) -> list[tuple[str, Index]]:
        kv_names = ("_W_K", "_W_V", "_b_K", "_b_V") if self._group > 1 else ("W_K", "W_V", "b_K", "b_V")
        return tl_style_slices(self._params, part, kv_group=self._group, kv_names=kv_names)

    def canonical_names(self) -> list[str]:
        return tl_canonical(list(self._params))

    @contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]]) -> Iterator[Adapter]:
        pairs = self._expand(fwd_hooks)
        cfg = self.model.cfg
        saved = (cfg.use_split_qkv_input, cfg.use_attn_result)
        # These hook points exist in TransformerLens only when its config flags compute them.
        cfg.use_split_qkv_input = saved[0] or any(n.rsplit(".", 1)[-1] in _SPLIT_INPUTS for n, _ in pairs)
        cfg.use_attn_result = saved[1] or any(n.endswith("attn.hook_result") for n, _ in pairs)
        wrapped = [(n, (lambda f: lambda x, hook: f(x, hook.name))(fn)) for n, fn in pairs]
        try:
            with self.model.hooks(fwd_hooks=wrapped):
                yield self
        finally:
            cfg.use_split_qkv_input, cfg.use_attn_result = saved

    def head_weights(self, layer: int) -> dict[str, torch.Tensor]:
        attn = self.model.blocks[layer].attn
        out = {n: getattr(attn, n).detach() for n in ("W_Q", "W_K", "W_V", "W_O")}  # W_K/W_V expanded under GQA
        return out

    def ln_weight(self, layer: int) -> torch.Tensor:
        return self.model.blocks[layer].ln1.w.detach()

    def native(self) -> nn.Module:
        if rllc_mismatch(self.model.cfg) is not None:
            return self.model
        if self._native is None:
            self._native = to_rllc(self.model)
        return self._native


def to_rllc(model: nn.Module) -> nn.Module:
    """The rllc Transformer with a HookedTransformer's weights (same names); refuses other architectures.

    Raises:
        RllcError: when the architecture differs (MLPs, other positions, ...) or the logits do not match.
    """
    from rllc.model.config import ModelConfig
    from rllc.model.transformer import Transformer

    c = model.cfg
    why = rllc_mismatch(c)
    if why is not None:
        raise RllcError(f"this HookedTransformer is not rllc's architecture: {why}")
    cfg = ModelConfig(n_layers=c.n_layers, n_heads=c.n_heads, d_model=c.d_model, d_head=c.d_head, n_ctx=c.n_ctx,
                      d_vocab=c.d_vocab, ln_eps=c.eps)
    out = Transformer(cfg, seed=None)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith((".mask", ".IGNORE"))}
    out.load_state_dict(state)
    out = out.to(next(model.parameters()).device).eval()
    toks = torch.arange(min(8, c.n_ctx), device=next(model.parameters()).device)[None] % c.d_vocab
    with torch.no_grad():
        a, b = model(toks), out(toks)
    if not torch.allclose(a, b, atol=1e-4, rtol=1e-4):
        raise RllcError(f"HookedTransformer and its rllc conversion disagree (max |Δlogit| "
                        f"{float((a - b).abs().max()):.3g}); the architecture differs in a way rllc does not detect")
    return out
