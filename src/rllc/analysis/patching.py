"""Path patching (the paper's Appendix E.2): ablate sender heads only on the path into one receiver head.

The senders' outputs are ablated (zero, mean or resample, as in `ablation`) only where the receiver reads them:
the receiver's block gets, on the chosen Q/K/V inputs (`hook_q_input`/`hook_k_input`/`hook_v_input`), the residual
    clean - sum_s clean_out_s + sum_s ablated_out_s,
and only the receiver head's z is taken from that patched computation; every other head of the receiver's layer
keeps its clean z, and every layer before it runs clean. So the loss change measures exactly the senders →
receiver path. Figure 6 setting: `dyck_path_patching` on synthetic nested and unnested brackets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pandas as pd
import torch

from rllc._errors import RllcError
from rllc.model.adapters import adapt
from rllc.analysis.ablation import AblationKind, Head, ablated_per_token_loss, head_z_means, per_token_loss, \
    resample_permutation
from rllc.data.synthetic import Pattern, SyntheticConfig, generate
from rllc.model.transformer import Transformer


@torch.no_grad()
def path_patched_per_token_loss(
    model: Transformer, tokens: torch.Tensor, senders: Sequence[Head], receiver: Head, *, paths: str = "qkv",
    kind: AblationKind = "mean", means: torch.Tensor | None = None, seed: int = 0,
) -> torch.Tensor:
    """Per-token loss (B, T - 1) with the senders ablated only on their path into `receiver`'s `paths` inputs.

    Args:
        tokens: (B, T).
        senders: (layer, head) pairs, each in a layer below the receiver's.
        receiver: (layer, head).
        paths: any of "q", "k", "v" (e.g. "k" patches only the receiver's key input).
        kind: how sender outputs are ablated; mean uses `means` (L, H, E), default the means over `tokens`.
    """
    model = adapt(model)  # rllc, TransformerLens or Hugging Face: cfg, hooks, logits
    lr, hr = receiver
    if not senders or any(ls >= lr for ls, _ in senders):
        raise RllcError(f"path patching needs sender heads in layers below the receiver {lr}:{hr}; got {senders}")
    if not paths or set(paths) - set("qkv"):
        raise RllcError(f"paths {paths!r} must be a non-empty combination of 'q', 'k', 'v'")
    if kind == "mean" and means is None:
        means = head_z_means(model, tokens)
    names = sorted({f"blocks.{l}.attn.hook_z" for l, _ in senders} | {f"blocks.{lr}.attn.hook_z"})
    _, clean = model.run_with_cache(tokens, names)
    perm = resample_permutation(tokens.shape[0], seed) if kind == "resample" else None
    delta = 0.0
    for l, h in senders:
        z = clean[f"blocks.{l}.attn.hook_z"][:, :, h]  # (B, T, E)
        if kind == "zero":
            repl = torch.zeros_like(z)
        elif kind == "mean":
            repl = means[l, h].to(z).expand_as(z)
        else:
            repl = z[perm]
        delta = delta + (repl - z) @ model.head_weights(l)["W_O"][h]  # (B, T, D): ablated minus clean output
    clean_z = clean[f"blocks.{lr}.attn.hook_z"]  # (B, T, H, E)

    def patch_input(x: torch.Tensor, name: str) -> torch.Tensor:
        # TransformerLens's split inputs are per head (B, T, H, D), rllc's (B, T, D): every head gets the same delta
        return x + (delta.unsqueeze(2) if x.dim() == 4 else delta)

    def keep_receiver_only(z: torch.Tensor, name: str) -> torch.Tensor:
        out = clean_z.clone()
        out[:, :, hr] = z[:, :, hr]
        return out

    hooks = [(f"blocks.{lr}.hook_{p}_input", patch_input) for p in sorted(set(paths))]
    with model.hooks([*hooks, (f"blocks.{lr}.attn.hook_z", keep_receiver_only)]):
        return per_token_loss(model, tokens)


def dyck_tokens(config: SyntheticConfig, n: int, n_ctx: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples of the synthetic `dyck` family: tokens (n, n_ctx) and Pattern labels (n, n_ctx).

    About `config.dyck_nested_fraction` of them nest brackets; closing positions are flagged DYCK, and NESTED
    where the closed bracket sat inside another open one.
    """
    batch = generate(dataclasses.replace(config, families=("dyck",), weights=None), n, n_ctx, seed=seed)
    return batch.tokens, batch.labels


@torch.no_grad()
def dyck_path_patching(
    model: Transformer, config: SyntheticConfig, senders: Sequence[Head], receiver: Head, *, n: int = 128,
    paths: str = "qkv", kind: AblationKind = "mean", seed: int = 0, cache: dict | None = None,
) -> pd.DataFrame:
    """Loss increase from path patching senders → receiver on nested and on unnested bracket closings.

    Args:
        config: the synthetic generator (its bracket ids must be tokens of the model's vocabulary).
        n: number of `dyck` sequences of length n_ctx.
        cache: a dict reused across calls with the same model, config, n, kind and seed (tokens, clean loss and
            means are computed once).
    Returns:
        Rows per subset ("nested", "unnested", "other"): subset, n_positions, loss_clean, loss_path (path
        patched), loss_full (senders ablated everywhere), path_increase, full_increase, path_increase_se (the
        standard error of path_increase over the subset's positions: std / sqrt(n_positions)).
    """
    model = adapt(model)  # rllc, TransformerLens or Hugging Face: cfg, hooks, logits
    cache = {} if cache is None else cache
    if not cache:
        tokens, labels = dyck_tokens(config, n, model.cfg.n_ctx, seed=seed)
        if int(tokens.max()) >= model.cfg.d_vocab:
            raise RllcError(f"synthetic config uses token ids up to {int(tokens.max())}, beyond the model's vocabulary "
                            f"of {model.cfg.d_vocab}; use synthetic_config_for(...) with the run's tokenizer")
        cache.update(tokens=tokens, labels=labels, clean=per_token_loss(model, tokens),  # clean (B, T - 1)
                     means=head_z_means(model, tokens) if kind == "mean" else None)
    tokens, labels, clean, means = cache["tokens"], cache["labels"], cache["clean"], cache["means"]
    path = path_patched_per_token_loss(model, tokens, senders, receiver, paths=paths, kind=kind, means=means,
                                       seed=seed)
    full = ablated_per_token_loss(model, tokens, senders, kind, means=means, seed=seed)
    lab = labels[:, :-1]
    dyck, nested = (lab & int(Pattern.DYCK)) > 0, (lab & int(Pattern.NESTED)) > 0
    rows = []
    for subset, mask in (("nested", dyck & nested), ("unnested", dyck & ~nested), ("other", ~dyck)):
        m = int(mask.sum())
        mean = (lambda x: float(x[mask].mean())) if m else (lambda x: float("nan"))  # noqa: E731
        se = float((path - clean)[mask].std() / m ** 0.5) if m > 1 else float("nan")
        rows.append({"subset": subset, "n_positions": m, "loss_clean": mean(clean), "loss_path": mean(path),
                     "loss_full": mean(full), "path_increase": mean(path - clean), "full_increase": mean(full - clean),
                     "path_increase_se": se})
    return pd.DataFrame(rows)
