"""Adapter for Hugging Face `GPT2LMHeadModel` (extra `rllc[hf]`).

Fused layout (Conv1D stores weights (in, out), y = x W + b), per block `transformer.h.{l}.attn`:
    c_attn.weight (D, 3D), c_attn.bias (3D): columns [0, D) are Q, [D, 2D) K, [2D, 3D) V; head h owns columns
        h·E .. (h+1)·E of each third, and the same entries of the bias
    c_proj.weight (D, D): head h owns rows h·E .. (h+1)·E; c_proj.bias is b_O, no head's
The unembedding is tied to the embedding (`lm_head.weight` is `wte.weight`) unless the config unties it: then
"embed" and "unembed" name the same tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rllc.model.adapters import Index, ModelShape
from rllc.model.adapters._hf import HFAdapter
from rllc.model.components import Part


class GPT2Adapter(HFAdapter):
    family = "gpt2"

    def _shape(self) -> ModelShape:
        c = self.model.config
        tied = "lm_head.weight" not in self._params
        return ModelShape("gpt2", c.n_layer, c.n_head, c.n_embd, c.n_embd // c.n_head, c.n_positions, c.vocab_size,
                          c.n_head, attn_only=False, positions="standard", tied_embeddings=tied)

    def layers(self) -> Sequence[nn.Module]:
        return self.model.transformer.h

    def attention(self, l: int) -> nn.Module:
        return self.model.transformer.h[l].attn

    def qkv_module(self, l: int) -> nn.Module:
        return self.model.transformer.h[l].attn.c_attn

    def out_module(self, l: int) -> nn.Module:
        return self.model.transformer.h[l].attn.c_proj

    def embed_modules(self) -> dict[str, nn.Module]:
        return {"hook_embed": self.model.transformer.wte, "hook_pos_embed": self.model.transformer.wpe}

    def split_qkv(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        H, E = self.cfg.n_heads, self.cfg.d_head
        return tuple(t.unflatten(-1, (H, E)) for t in out.chunk(3, dim=-1))  # (B, T, H, E) each

    def merge_qkv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.cat([q.flatten(-2), k.flatten(-2), v.flatten(-2)], dim=-1)  # (B, T, 3D)

    def part_slices(self, part: Part) -> list[tuple[str, Index]]:
        names = list(self._params)
        if part.kind == "head":
            pre, D, E, h = f"transformer.h.{part.layer}.attn.", self.cfg.d_model, self.cfg.d_head, part.head
            out: list[tuple[str, Index]] = []
            for third in range(3):  # Q, K, V
                cols = slice(third * D + h * E, third * D + (h + 1) * E)
                out += [(pre + "c_attn.weight", (slice(None), cols)), (pre + "c_attn.bias", (cols,))]
            return out + [(pre + "c_proj.weight", (slice(h * E, (h + 1) * E), slice(None)))]
        if part.kind == "layer":
            return [(n, None) for n in names if n.startswith(f"transformer.h.{part.layer}.")]
        if part.kind == "embed":
            return [("transformer.wte.weight", None)]
        if part.kind == "pos_embed":
            return [("transformer.wpe.weight", None)]
        if part.kind == "unembed":
            return [("lm_head.weight" if "lm_head.weight" in self._params else "transformer.wte.weight", None)]
        if part.kind == "ln":
            return [(n, None) for n in names if ".ln_" in n]
        return [(n, None) for n in names]

    def head_weights(self, layer: int, detach: bool = True) -> dict[str, torch.Tensor]:
        attn = self.attention(layer)
        H, D, E = self.cfg.n_heads, self.cfg.d_model, self.cfg.d_head
        W = attn.c_attn.weight  # (D, 3D)
        per = [W[:, i * D:(i + 1) * D].reshape(D, H, E).permute(1, 0, 2) for i in range(3)]  # (H, D, E)
        out = {"W_Q": per[0], "W_K": per[1], "W_V": per[2], "W_O": attn.c_proj.weight.reshape(H, E, D)}
        return {k: v.detach() for k, v in out.items()} if detach else out

    def ln_weight(self, layer: int) -> torch.Tensor:
        return self.model.transformer.h[layer].ln_1.weight.detach()
