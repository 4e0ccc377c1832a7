"""Adapter for rllc's own attention-only Transformer: its names are already TransformerLens's, so this is a view."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from rllc.model.adapters import Adapter, HookFn, Index, ModelShape
from rllc.model.components import Part

HEAD_PARAMS = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")


def tl_style_slices(params: Sequence[str], part: Part, *, kv_group: int = 1,
                    kv_names: tuple[str, str, str, str] = ("W_K", "W_V", "b_K", "b_V")) -> list[tuple[str, Index]]:
    """Slices of a part for TransformerLens-named parameters (rllc and TransformerLens share them).

    kv_group: query heads per key/value head (grouped-query attention): head h moves K/V head h // kv_group.
    """
    from rllc._errors import RllcError

    names = list(params)
    if part.kind == "head":
        pre = f"blocks.{part.layer}.attn."
        out: list[tuple[str, Index]] = []
        for p in HEAD_PARAMS:
            kv = p in ("W_K", "W_V", "b_K", "b_V")
            name = pre + (kv_names[("W_K", "W_V", "b_K", "b_V").index(p)] if kv else p)
            if name in names:
                out.append((name, (part.head // kv_group if kv else part.head,)))
        return out
    if part.kind == "layer":
        return [(n, None) for n in names if n.startswith(f"blocks.{part.layer}.")]
    if part.kind == "embed":
        return [(n, None) for n in names if n == "embed.W_E"]
    if part.kind == "pos_embed":
        sel = [(n, None) for n in names if n == "pos_embed.W_pos"]
        if not sel:
            raise RllcError("this model has no learned positional embedding (component 'pos_embed')")
        return sel
    if part.kind == "unembed":
        return [(n, None) for n in names if n.startswith("unembed.")]
    if part.kind == "ln":
        return [(n, None) for n in names if ".ln" in n or n.startswith("ln_final.")]
    return [(n, None) for n in names]  # "all"


def tl_canonical(names: Sequence[str]) -> list[str]:
    """TransformerLens-style names in rllc's order: embed, pos, blocks (ln1, W_Q W_K W_V W_O b_Q b_K b_V b_O, the
    rest in the model's order), ln_final, unembed. TransformerLens lists W_O before W_K; rllc does not."""
    attn_order = {p: i for i, p in enumerate((*HEAD_PARAMS, "b_O"))}

    def key(item: tuple[int, str]) -> tuple:
        i, n = item
        parts = n.split(".")
        if parts[0] == "embed":
            return (0, 0, 0, i)
        if parts[0] == "pos_embed":
            return (1, 0, 0, i)
        if parts[0] == "blocks":
            l = int(parts[1])
            sub = parts[2]
            if sub == "ln1":
                return (2, l, 0, i)
            if sub == "attn":
                return (2, l, 1, attn_order.get(parts[-1].lstrip("_"), 99) * 10_000 + i)
            return (2, l, 2, i)
        if parts[0] == "ln_final":
            return (3, 0, 0, i)
        return (4, 0, 0, i)

    return [n for _, n in sorted(enumerate(names), key=key)]


class RllcAdapter(Adapter):
    family = "rllc"

    def __init__(self, model) -> None:  # noqa: ANN001 - rllc.model.Transformer
        super().__init__(model)
        c = model.cfg
        self.cfg = ModelShape("rllc", c.n_layers, c.n_heads, c.d_model, c.d_head, c.n_ctx, c.d_vocab, c.n_heads)
        self.hook_names = list(model.hook_points)

    def part_slices(self, part: Part) -> list[tuple[str, Index]]:
        return tl_style_slices(self._params, part)

    @contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]]) -> Iterator[Adapter]:
        with self.model.hooks(self._expand(fwd_hooks)):
            yield self

    def head_weights(self, layer: int) -> dict[str, torch.Tensor]:
        attn = self.model.blocks[layer].attn
        return {n: getattr(attn, n).detach() for n in ("W_Q", "W_K", "W_V", "W_O")}

    def ln_weight(self, layer: int) -> torch.Tensor:
        return self.model.blocks[layer].ln1.w.detach()
