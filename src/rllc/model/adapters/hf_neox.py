"""Adapter for Hugging Face `GPTNeoXForCausalLM` (Pythia; extra `rllc[hf]`).

Fused layout (nn.Linear stores weights (out, in), y = x Wᵀ + b), per block `gpt_neox.layers.{l}.attention`:
    query_key_value.weight (3D, D), .bias (3D): the output is interleaved per head, viewed (H, 3, E): head h owns
        rows h·3E .. (h+1)·3E (its Q, then K, then V) and the same bias entries
    dense.weight (D, D): head h owns columns h·E .. (h+1)·E; dense.bias is b_O, no head's
Positions are rotary (no "pos_embed" component); hook_q/hook_k are the projections before rotation, as in
TransformerLens. The unembedding `embed_out` is its own tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rllc._errors import RllcError
from rllc.model.adapters import Index, ModelShape
from rllc.model.adapters._hf import HFAdapter
from rllc.model.components import Part


class NeoXAdapter(HFAdapter):
    family = "gpt_neox"

    def _shape(self) -> ModelShape:
        c = self.model.config
        return ModelShape("gpt_neox", c.num_hidden_layers, c.num_attention_heads, c.hidden_size,
                          c.hidden_size // c.num_attention_heads, c.max_position_embeddings, c.vocab_size,
                          c.num_attention_heads, attn_only=False, positions="rotary",
                          tied_embeddings="embed_out.weight" not in self._params)

    def layers(self) -> Sequence[nn.Module]:
        return self.model.gpt_neox.layers

    def attention(self, l: int) -> nn.Module:
        return self.model.gpt_neox.layers[l].attention

    def qkv_module(self, l: int) -> nn.Module:
        return self.attention(l).query_key_value

    def out_module(self, l: int) -> nn.Module:
        return self.attention(l).dense

    def embed_modules(self) -> dict[str, nn.Module]:
        return {"hook_embed": self.model.gpt_neox.embed_in}

    def split_qkv(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        H, E = self.cfg.n_heads, self.cfg.d_head
        return tuple(out.unflatten(-1, (H, 3 * E)).chunk(3, dim=-1))  # (B, T, H, E) each

    def merge_qkv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.cat([q, k, v], dim=-1).flatten(-2)  # (B, T, 3D), interleaved per head

    def part_slices(self, part: Part) -> list[tuple[str, Index]]:
        names = list(self._params)
        if part.kind == "head":
            pre, E, h = f"gpt_neox.layers.{part.layer}.attention.", self.cfg.d_head, part.head
            rows = slice(h * 3 * E, (h + 1) * 3 * E)
            out: list[tuple[str, Index]] = [(pre + "query_key_value.weight", (rows, slice(None)))]
            if pre + "query_key_value.bias" in self._params:
                out.append((pre + "query_key_value.bias", (rows,)))
            return out + [(pre + "dense.weight", (slice(None), slice(h * E, (h + 1) * E)))]
        if part.kind == "layer":
            return [(n, None) for n in names if n.startswith(f"gpt_neox.layers.{part.layer}.")]
        if part.kind == "embed":
            return [("gpt_neox.embed_in.weight", None)]
        if part.kind == "pos_embed":
            raise RllcError("GPT-NeoX uses rotary positions: it has no 'pos_embed' component")
        if part.kind == "unembed":
            return [("embed_out.weight" if "embed_out.weight" in self._params else "gpt_neox.embed_in.weight", None)]
        if part.kind == "ln":
            return [(n, None) for n in names if "layernorm" in n or "layer_norm" in n]
        return [(n, None) for n in names]

    def head_weights(self, layer: int, detach: bool = True) -> dict[str, torch.Tensor]:
        attn = self.attention(layer)
        H, D, E = self.cfg.n_heads, self.cfg.d_model, self.cfg.d_head
        W = attn.query_key_value.weight.view(H, 3, E, D)
        out = {"W_Q": W[:, 0].transpose(1, 2), "W_K": W[:, 1].transpose(1, 2), "W_V": W[:, 2].transpose(1, 2),
               "W_O": attn.dense.weight.t().reshape(H, E, D)}
        return {k: v.detach() for k, v in out.items()} if detach else out

    def ln_weight(self, layer: int) -> torch.Tensor:
        return self.model.gpt_neox.layers[layer].input_layernorm.weight.detach()
