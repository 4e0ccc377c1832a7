"""Adapters: one small protocol that lets every rllc measure run on a model it did not build.

An adapter wraps a model (it never copies or changes its weights) and answers five questions:
    adapter(tokens)            logits (B, T, V) in eval mode, no key/value cache
    adapter.masks(component)   which coordinates a Component names, as boolean masks over `named_parameters()`,
                               fused layouts included (GPT-2 `c_attn`, GPT-NeoX `query_key_value`)
    adapter.canonical_names()  the parameters in one canonical order (embed, pos, per block LN, W_Q, W_K, W_V, W_O,
                               b_Q, b_K, b_V, b_O, ..., final LN, unembed), so the same weights draw the same SGLD
                               noise in any format that stores them the same way (rllc <-> TransformerLens)
    adapter.hooks(...)         hook points under TransformerLens names (`blocks.{l}.attn.hook_pattern`, hook_q, hook_k,
                               hook_v, hook_z, hook_result, `blocks.{l}.hook_resid_pre`, ...), attached only inside a
                               `with` block; `adapter.run_with_cache(tokens, names)`
    adapter.cfg                a ModelShape (n_layers, n_heads, d_head, n_ctx, d_vocab, ...) and, per layer,
                               `head_weights(l)` (W_Q, W_K, W_V (H, D, E), W_O (H, E, D)) and `ln_weight(l)` (D,)
One module per family: rllc.py (rllc's Transformer), tl.py (TransformerLens HookedTransformer), hf_gpt2.py
(GPT2LMHeadModel), hf_neox.py (GPTNeoXForCausalLM). `adapt(model)` picks one by class, importing transformers or
transformer_lens only when given such a model. Adapting a Hugging Face model puts it in eval mode, turns its cache
off and routes its attention through `_hf.hooked_attention` (explicit softmax: hook points, and forward-mode AD
for Hessians, which SDPA lacks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from rllc._errors import RllcError
from rllc.model.components import Component, Part

HookFn = Callable[[torch.Tensor, str], torch.Tensor | None]
Index = tuple | None  # an index into a parameter (a tuple of ints/slices), or None for the whole tensor


@dataclass(frozen=True)
class ModelShape:
    """What an analysis needs to know of a model, whatever its family.

    Attributes:
        family: "rllc", "transformer_lens", "gpt2" or "gpt_neox".
        n_layers, n_heads, d_model, d_head, n_ctx, d_vocab: as in TransformerLens.
        n_kv_heads: key/value heads (== n_heads unless grouped-query attention).
        attn_only: no MLPs.
        positions: "shortformer", "standard" (learned, added to the residual) or "rotary".
        tied_embeddings: the unembedding is the embedding matrix (GPT-2): "embed" and "unembed" are one tensor.
    """

    family: str
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    n_ctx: int
    d_vocab: int
    n_kv_heads: int = -1
    attn_only: bool = True
    positions: str = "shortformer"
    tied_embeddings: bool = False

    def to_dict(self) -> dict:
        import dataclasses

        return dataclasses.asdict(self)


class Adapter:
    """Base class of the per-family adapters; see the module docstring for the protocol."""

    family = ""
    cfg: ModelShape

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._params = dict(model.named_parameters())

    # -- running
    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) for tokens (B, T)."""
        return self.model(tokens)

    # -- components
    def part_slices(self, part: Part) -> list[tuple[str, Index]]:
        """The (parameter name, index) pairs a part selects; index None is the whole tensor."""
        raise NotImplementedError

    def masks(self, component: Component | str | Sequence[str]) -> dict[str, torch.Tensor]:
        """Boolean masks (parameter name -> BoolTensor of its shape) of the coordinates `component` names."""
        comp = Component.parse(component, self.cfg)
        out: dict[str, torch.Tensor] = {}
        for part in comp.parts:
            for name, idx in self.part_slices(part):
                p = self._params[name]
                m = out.setdefault(name, torch.zeros(p.shape, dtype=torch.bool, device=p.device))
                if idx is None:
                    m.fill_(True)
                else:
                    m[idx] = True
        return out

    def canonical_names(self) -> list[str]:
        """Parameter names in the canonical order (default: the model's own order)."""
        return list(self._params)

    # -- hooks
    hook_names: list[str]

    @contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]]) -> Iterator[Adapter]:
        """Attach hooks fn(activation, name) -> activation | None for a `with` block; always removed on exit."""
        raise NotImplementedError
        yield self

    def _expand(self, fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]]) -> list[tuple[str, HookFn]]:
        out = []
        for key, fn in fwd_hooks:
            names = [n for n in self.hook_names if key(n)] if callable(key) else [key]
            for n in names:
                if n not in self.hook_names:
                    raise RllcError(f"unknown hook point {n!r} for a {self.family} model; names look like "
                                    f"'blocks.0.attn.hook_pattern' (this model has {len(self.hook_names)} hook points)")
                out.append((n, fn))
        return out

    def run_with_cache(self, tokens: torch.Tensor, names: Sequence[str] | Callable[[str], bool] | None = None
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the model and return (logits, activations by hook name, detached). names: list, predicate or None."""
        cache: dict[str, torch.Tensor] = {}

        def save(x: torch.Tensor, name: str) -> None:
            cache[name] = x.detach()

        keys: list = [lambda n: True] if names is None else [names] if callable(names) else list(names)
        with self.hooks([(k, save) for k in keys]):
            logits = self(tokens)
        return logits, cache

    # -- weights for composition scores
    def head_weights(self, layer: int) -> dict[str, torch.Tensor]:
        """Per-head weights of a layer (detached): W_Q, W_K, W_V (H, D, E) and W_O (H, E, D); K/V repeated per
        query head under grouped-query attention."""
        raise NotImplementedError

    def ln_weight(self, layer: int) -> torch.Tensor:
        """The scale (D,) of the LayerNorm that feeds layer `layer`'s attention."""
        raise NotImplementedError

    def native(self) -> nn.Module:
        """The model the samplers should run on: an rllc Transformer when this model is exactly one (the per-head
        fast path), else the model itself."""
        return self.model


def _class_path(model: object) -> list[str]:
    return [f"{c.__module__}.{c.__qualname__}" for c in type(model).__mro__]


def adapt(model: nn.Module | Adapter) -> Adapter:
    """The adapter for a model (cached on it; an Adapter is returned as is).

    Raises:
        RllcError: for a model of an unsupported family (one line naming the supported ones).
    """
    if isinstance(model, Adapter):
        return model
    cached = model.__dict__.get("_rllc_adapter")
    if cached is not None and cached.model is model:
        return cached
    from rllc.model.transformer import Transformer

    if isinstance(model, Transformer):
        from rllc.model.adapters.rllc import RllcAdapter as cls
    else:
        mro = _class_path(model)
        if any(p.startswith("transformer_lens.") and p.endswith("HookedTransformer") for p in mro):
            from rllc.model.adapters.tl import TLAdapter as cls
        elif any(p.endswith(".GPT2LMHeadModel") for p in mro):
            from rllc.model.adapters.hf_gpt2 import GPT2Adapter as cls
        elif any(p.endswith(".GPTNeoXForCausalLM") for p in mro):
            from rllc.model.adapters.hf_neox import NeoXAdapter as cls
        else:
            raise RllcError(f"no adapter for {type(model).__name__}: rllc supports rllc's Transformer, TransformerLens "
                            "HookedTransformer, GPT2LMHeadModel and GPTNeoXForCausalLM; for other modules pass a dict "
                            "of boolean masks and your own loss_fn")
    a = cls(model)
    model.__dict__["_rllc_adapter"] = a
    return a


def supported(model: nn.Module) -> bool:
    """Whether `adapt(model)` has an adapter for this model's family."""
    try:
        adapt(model)
        return True
    except RllcError:
        return False


def to_device(model: nn.Module, device: str | torch.device) -> nn.Module:
    """`model.to(device)`, quietly: a HookedTransformer's `.to` prints a line on stdout unless told not to."""
    if any(p.startswith("transformer_lens.") for p in _class_path(model)):
        return model.to(device, print_details=False)
    return model.to(device)


def forward_logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, V) of any model mapping tokens to logits or to an output with `.logits` (Hugging Face)."""
    out = model(tokens)
    return out if isinstance(out, torch.Tensor) else out.logits


__all__ = ["Adapter", "ModelShape", "adapt", "forward_logits", "supported", "to_device"]
