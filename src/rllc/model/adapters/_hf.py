"""What the Hugging Face adapters share: hooked explicit attention, and hook points mapped onto HF modules.

`hooked_attention` is registered with transformers' AttentionInterface as "rllc_hooked" and every adapted model is
switched to it: the same maths as "eager" (causal softmax(q kᵀ · scaling) v), written with plain ops so that
forward-mode AD (Hessian-vector products) and vmap go through it, and with TransformerLens's hook points inside.
The models rllc feeds are never padded, so the causal mask is built here and transformers' mask is not used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from rllc._errors import RllcError
from rllc.model.adapters import Adapter, HookFn, ModelShape

ATTN_IMPL = "rllc_hooked"
_ATTN_KINDS = ("hook_attn_scores", "hook_pattern", "hook_z")


def _call(fns: list[tuple[str, HookFn]], x: torch.Tensor) -> torch.Tensor:
    for name, fn in fns:
        out = fn(x, name)
        if out is not None:
            x = out
    return x


def hooked_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0, **kwargs
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention for transformers' AttentionInterface: q (B, H, T, E), k/v (B, H_kv, T, E) ->
    (z (B, T, H, E), pattern (B, H, T, T)), calling the module's hook_attn_scores, hook_pattern and hook_z hooks."""
    fns: dict[str, list] = module.__dict__.get("_rllc_fns", {})
    H, Hkv = query.shape[1], key.shape[1]
    if Hkv != H:  # grouped-query attention: each K/V head serves H / H_kv query heads
        key, value = key.repeat_interleave(H // Hkv, dim=1), value.repeat_interleave(H // Hkv, dim=1)
    Tq, Tk = query.shape[2], key.shape[2]
    scores = (query @ key.transpose(-1, -2)) * scaling  # (B, H, Tq, Tk)
    causal = torch.ones(Tq, Tk, dtype=torch.bool, device=query.device).tril(Tk - Tq)
    scores = scores.masked_fill(~causal, float("-inf"))
    if fns.get("hook_attn_scores"):
        scores = _call(fns["hook_attn_scores"], scores)
    pattern = scores.softmax(dim=-1)
    if fns.get("hook_pattern"):
        pattern = _call(fns["hook_pattern"], pattern)
    if dropout > 0 and module.training:
        pattern = F.dropout(pattern, p=dropout)
    z = (pattern @ value).transpose(1, 2)  # (B, T, H, E)
    if fns.get("hook_z"):
        z = _call(fns["hook_z"], z)
    return z.contiguous(), pattern


def _register() -> None:
    from transformers import AttentionInterface

    if ATTN_IMPL not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTN_IMPL, hooked_attention)


def _first(x):  # noqa: ANN001, ANN202 - a module output: a tensor or a tuple whose first element is one
    return x[0] if isinstance(x, tuple) else x


def _replace_first(x, new):  # noqa: ANN001, ANN202
    return (new, *x[1:]) if isinstance(x, tuple) else new


class HFAdapter(Adapter):
    """Common part of the GPT-2 and GPT-NeoX adapters; subclasses name modules and the fused layouts."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        c = model.config
        if getattr(c, "add_cross_attention", False):
            raise RllcError("models with cross-attention are not supported; rllc needs a decoder-only language model")
        _register()
        model.eval()
        c.use_cache = False
        try:
            model.set_attn_implementation(ATTN_IMPL)
        except Exception:  # older transformers: the config field is what the attention modules read
            c._attn_implementation = ATTN_IMPL
        self.cfg = self._shape()
        self.hook_names = self._hook_names()

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=tokens, use_cache=False).logits

    # -- subclass interface
    def _shape(self) -> ModelShape: raise NotImplementedError
    def layers(self) -> Sequence[nn.Module]: raise NotImplementedError
    def attention(self, l: int) -> nn.Module: raise NotImplementedError
    def qkv_module(self, l: int) -> nn.Module: raise NotImplementedError
    def out_module(self, l: int) -> nn.Module: raise NotImplementedError
    def split_qkv(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: raise NotImplementedError
    def merge_qkv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: raise NotImplementedError
    def embed_modules(self) -> dict[str, nn.Module]: raise NotImplementedError

    def _hook_names(self) -> list[str]:
        names = list(self.embed_modules())
        for l in range(self.cfg.n_layers):
            names += [f"blocks.{l}.hook_resid_pre", f"blocks.{l}.hook_attn_out", f"blocks.{l}.hook_resid_post"]
            names += [f"blocks.{l}.attn.{k}" for k in ("hook_q", "hook_k", "hook_v", *_ATTN_KINDS, "hook_result")]
        return names

    @contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]]) -> Iterator[Adapter]:
        pairs = self._expand(fwd_hooks)
        with ExitStack() as stack:
            attn_fns: list[tuple[list, tuple]] = []
            for name, fn in pairs:
                parts = name.split(".")
                if parts[0] != "blocks":
                    stack.enter_context(self._out_hook(self.embed_modules()[name], [(name, fn)]))
                    continue
                l, site = int(parts[1]), parts[-1]
                if site in _ATTN_KINDS:
                    store = self.attention(l).__dict__.setdefault("_rllc_fns", {}).setdefault(site, [])
                    store.append((name, fn))
                    attn_fns.append((store, (name, fn)))
                elif site in ("hook_q", "hook_k", "hook_v"):
                    stack.enter_context(self._qkv_hook(l, "qkv".index(site[-1]), name, fn))
                elif site == "hook_result":
                    stack.enter_context(self._result_hook(l, name, fn))
                elif site == "hook_resid_pre":
                    stack.enter_context(self._in_hook(self.layers()[l], name, fn))
                elif site == "hook_resid_post":
                    stack.enter_context(self._out_hook(self.layers()[l], [(name, fn)]))
                elif site == "hook_attn_out":
                    stack.enter_context(self._out_hook(self.attention(l), [(name, fn)]))
            try:
                yield self
            finally:
                for store, item in attn_fns:
                    store.remove(item)

    @contextmanager
    def _out_hook(self, module: nn.Module, fns: list[tuple[str, HookFn]]) -> Iterator[None]:
        h = module.register_forward_hook(lambda m, args, out: _replace_first(out, _call(fns, _first(out))))
        try:
            yield
        finally:
            h.remove()

    @contextmanager
    def _in_hook(self, module: nn.Module, name: str, fn: HookFn) -> Iterator[None]:
        def pre(m, args, kwargs):  # noqa: ANN001, ANN202
            if args:
                return (_call([(name, fn)], args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": _call([(name, fn)], kwargs["hidden_states"])}

        h = module.register_forward_pre_hook(pre, with_kwargs=True)
        try:
            yield
        finally:
            h.remove()

    @contextmanager
    def _qkv_hook(self, l: int, which: int, name: str, fn: HookFn) -> Iterator[None]:
        def hook(m, args, out):  # noqa: ANN001, ANN202
            qkv = list(self.split_qkv(out))  # each (B, T, H, E)
            qkv[which] = _call([(name, fn)], qkv[which])
            return self.merge_qkv(*qkv)

        h = self.qkv_module(l).register_forward_hook(hook)
        try:
            yield
        finally:
            h.remove()

    @contextmanager
    def _result_hook(self, l: int, name: str, fn: HookFn) -> Iterator[None]:
        W_O = lambda: self.head_weights(l, detach=False)["W_O"]  # noqa: E731 - (H, E, D), live for gradients

        def hook(m, args, out):  # noqa: ANN001, ANN202
            z = args[0].unflatten(-1, (self.cfg.n_heads, self.cfg.d_head))  # (B, T, H, E)
            result = _call([(name, fn)], torch.einsum("bthe,hed->bthd", z, W_O()))  # (B, T, H, D)
            bias = self.out_module(l).bias
            return result.sum(dim=2) + (bias if bias is not None else 0.0)

        h = self.out_module(l).register_forward_hook(hook)
        try:
            yield
        finally:
            h.remove()
