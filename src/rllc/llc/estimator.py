"""The LLC estimator: λ̂ = nβ (E_w[L_n(w)] − L_n(w*)) over SGLD chains localised at w* (Wang et al. 2024 eq. 2–3).

Three samplers, one estimator: the reference loop (`_run_sequential`: chains one after another, plain autograd on
a copy of the model), the vmapped loop (`_run_batched`: the moving parameters stacked to shape (Q components,
C chains, ...) and ``torch.func.grad`` of a ``functional_call`` vmapped over both axes, which pays for tiny
models), and the per-head sampler (`heads.py`) for attention heads of rllc Transformers.
In all three, weight refinement is a mask, data refinement a different ``data``, and the model-as-generator loss a
different ``loss_fn``; `sgld_step` is the one update rule.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from rllc._errors import RllcError
from rllc.llc._data import BatchSource
from rllc.llc.config import SamplerConfig
from rllc.llc.diagnostics import Diagnostics, _num, diagnose
from rllc.llc.heads import HeadSampler, head_of, supported
from rllc.llc.losses import LossFn, next_token_loss
from rllc.llc.sgld import ChainStreams, sgld_step

Masks = dict[str, torch.Tensor] | None


@dataclass(frozen=True, eq=False)
class LLCResult:
    """One LLC estimate.

    Attributes:
        mean: λ̂ averaged over the chains that did not diverge (NaN if all did).
        std: standard deviation of λ̂ across those chains (ddof=1; NaN with fewer than two).
        per_chain: (C,) λ̂ of each chain, nβ (mean of its draw losses − init_loss); NaN for a diverged chain.
        init_loss: L_n(w*), the mean loss at the anchor over ``init_batches`` minibatches (or the full batch).
        loss_trace: (C, draws) minibatch loss at each draw, NaN after a chain diverged.
        valid: False if any chain diverged or the mean is negative.
        diagnostics: slopes, R-hat, divergence and messages.
        config: the sampler settings that produced this.
        component: a description of the component that moved (None: the whole model).
    """

    mean: float
    std: float
    per_chain: np.ndarray
    init_loss: float
    loss_trace: np.ndarray
    valid: bool
    diagnostics: Diagnostics
    config: SamplerConfig
    component: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (NaN/inf become None)."""
        return {
            "mean": _num(self.mean),
            "std": _num(self.std),
            "per_chain": [_num(x) for x in self.per_chain],
            "init_loss": _num(self.init_loss),
            "loss_trace": [[_num(x) for x in row] for row in self.loss_trace],
            "valid": self.valid,
            "diagnostics": self.diagnostics.to_dict(),
            "config": self.config.to_dict(),
            "config_hash": self.config.config_hash(),
            "component": self.component,
        }


def _make_config(config: SamplerConfig | None, overrides: dict[str, Any]) -> SamplerConfig:
    if config is not None and not isinstance(config, SamplerConfig):
        raise RllcError(f"config must be a SamplerConfig, got {type(config).__name__}")
    return (config or SamplerConfig()).replace(**overrides)


def resolve_component(model: nn.Module, component: Any) -> Masks:
    """Masks for a component: None → None (everything moves); else ``rllc.model.components.resolve_masks``."""
    from rllc.model.components import resolve_masks

    return resolve_masks(model, component)


def _describe(component: Any) -> str | None:
    if component is None or isinstance(component, str):
        return component
    if isinstance(component, dict):
        return "masks:" + ",".join(sorted(component))
    return ",".join(str(c) for c in component)


class _LossModule(nn.Module):
    """Wraps ``loss_fn(model, batch)`` as a module so ``functional_call`` can swap the model's weights."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


@dataclass
class _Run:
    """Raw output of the sampler loop for one component: traces before summarising."""

    trace: np.ndarray  # (C, K)
    diverged_at: np.ndarray  # (C,), −1 where the chain survived
    d_moving: int
    star: np.ndarray | None = None  # (C, K) loss at w* on each draw's minibatch (paired differences), or None


def _init_loss(wrapper: _LossModule, params: dict, source: BatchSource, cfg: SamplerConfig,
               gen: torch.Generator) -> float:
    """L_n(w*): the full-batch loss, or the mean over ``init_batches`` minibatches drawn from ``gen``."""
    with torch.no_grad():
        if cfg.batch_size >= source.n:
            return float(functional_call(wrapper, params, (source.full(),)))
        losses = [float(functional_call(wrapper, params, (source.draw(gen, (cfg.batch_size,)),)))
                  for _ in range(cfg.init_batches)]
    return float(np.mean(losses))


class _Callback:
    """A progress sink with tqdm's ``update``/``close`` that reports (draws_done, draws_total) to a callable."""

    def __init__(self, fn: Callable[[int, int], None], total: int) -> None:
        self.fn, self.total, self.done = fn, total, 0

    def update(self, n: int = 1) -> None:
        self.done += n
        self.fn(self.done, self.total)

    def close(self) -> None:
        pass


def _progress(total: int, on: bool | Callable[[int, int], None], desc: str):
    """None, a tqdm bar over ``total`` draws (``on=True``), or a callback sink (``on`` callable)."""
    if callable(on):
        return _Callback(on, total)
    if not on:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="draw")


def _run_batched(model: nn.Module, loss_fn: LossFn, source: BatchSource, masks_list: list[Masks],
                 cfg: SamplerConfig, device: torch.device, init_loss: float, gen: torch.Generator,
                 noise_gen: torch.Generator, progress: bool) -> list[_Run]:
    """All components × chains at once. Returns one ``_Run`` per entry of ``masks_list``."""
    wrapper = _LossModule(model, loss_fn)
    named = {n: p.detach().to(device) for n, p in model.named_parameters()}
    buffers = {"model." + n: b.to(device) for n, b in model.named_buffers()}
    if any(m is None for m in masks_list):
        moving_names = list(named)
    else:
        union = {n for m in masks_list for n, v in m.items() if bool(v.any())}
        moving_names = [n for n in named if n in union]
    if not moving_names:
        raise RllcError("the component selects no parameters; pick a component with at least one moving weight")
    q, c = len(masks_list), cfg.chains
    frozen = {"model." + n: t for n, t in named.items() if n not in moving_names} | buffers
    anchor = {"model." + n: named[n] for n in moving_names}
    # (Q, 1, *shape) masks; None where every component moves every coordinate of that tensor.
    masks: dict[str, torch.Tensor | None] = {}
    d_moving = [0] * q
    for n in moving_names:
        per = []
        for i, m in enumerate(masks_list):
            mi = torch.ones_like(named[n], dtype=torch.bool) if m is None else \
                m.get(n, torch.zeros_like(named[n], dtype=torch.bool)).to(device)
            d_moving[i] += int(mi.sum())
            per.append(mi)
        stacked = torch.stack(per).unsqueeze(1)
        masks["model." + n] = None if bool(stacked.all()) else stacked
    w = {k: a.expand(q, c, *a.shape).clone() for k, a in anchor.items()}
    noise_counts = {k: c * int(m.sum()) for k, m in masks.items() if m is not None}

    def loss_of(moving: dict, batch: Any) -> torch.Tensor:
        return functional_call(wrapper, (moving, frozen), (batch,))

    full = cfg.batch_size >= source.n
    over_chains = vmap(grad_and_value(loss_of), in_dims=(0, None if full else 0), randomness="different")
    step_fn = vmap(over_chains, in_dims=(0, None), randomness="different")
    full_batch = source.full() if full else None
    paired = cfg.paired and not full  # full batch: the loss at w* is the constant init_loss already
    star_fn = vmap(lambda b: loss_of(anchor, b), randomness="different") if paired else None  # (C,)
    star_trace = torch.full((c, cfg.draws), float("nan"), dtype=torch.float64) if paired else None

    k_draws = cfg.draws
    trace = torch.full((q, c, k_draws), float("nan"), dtype=torch.float64)
    alive = torch.ones(q, c, dtype=torch.bool, device=device)
    diverged_at = torch.full((q, c), -1, dtype=torch.long)
    thresholds = torch.tensor([cfg.divergence_limit(d) for d in d_moving], device=device).unsqueeze(1)  # (Q, 1)
    bar = _progress(k_draws, progress, "SGLD")
    k = 0
    for t in range(cfg.total_steps):
        batch = full_batch if full else source.draw(gen, (c, cfg.batch_size))  # leaves (C, B, ...)
        grads, loss = step_fn(w, batch)  # loss: (Q, C)
        loss = loss.detach()
        bad = alive & (~torch.isfinite(loss) | (cfg.nbeta * (loss - init_loss) > thresholds))
        if bool(bad.any()):
            diverged_at[bad.cpu()] = t
            alive &= ~bad
            for key in w:  # park diverged chains at w* so their NaNs/infs cost nothing downstream
                w[key] = torch.where(bad.view(q, c, *[1] * anchor[key].dim()), anchor[key], w[key])
        if cfg.is_draw(t):
            trace[:, :, k] = torch.where(alive, loss, float("nan")).double().cpu()
            if paired:
                with torch.no_grad():
                    star_trace[:, k] = star_fn(batch).double().cpu()
            k += 1
            if bar is not None:
                bar.update(1)
        if not bool(alive.any()):
            break
        all_alive = bool(alive.all())
        for key in w:
            m = masks[key]
            if m is None:
                noise = torch.randn(w[key].shape, generator=noise_gen, dtype=w[key].dtype, device="cpu").to(device)
            else:  # draw only the coordinates that move (a head is 1/H of its tensors; Q components share none)
                full_m = m.expand(w[key].shape)
                draws_ = torch.randn(noise_counts[key], generator=noise_gen, dtype=w[key].dtype, device="cpu")
                noise = torch.zeros_like(w[key]).masked_scatter_(full_m, draws_.to(device))
            if not all_alive:
                live = alive.view(q, c, *[1] * anchor[key].dim())
                m = live if m is None else (m & live)
            w[key] = sgld_step(w[key], grads[key], noise, anchor[key], m, cfg.epsilon, cfg.nbeta, cfg.gamma)
    if bar is not None:
        bar.close()
    star = star_trace.numpy() if paired else None
    return [_Run(trace=trace[i].numpy(), diverged_at=diverged_at[i].numpy(), d_moving=d_moving[i], star=star)
            for i in range(q)]


def _run_sequential(model: nn.Module, loss_fn: LossFn, source: BatchSource, masks_list: list[Masks],
                    cfg: SamplerConfig, device: torch.device, init_loss: float, progress: bool,
                    index: Sequence[int] | None = None, n_components: int | None = None) -> list[_Run]:
    """One chain at a time with plain autograd on a copy of the model — the reference implementation.

    Chain c of every component draws its minibatches from its own generator (seed spawned from ``cfg.seed``), so
    components share minibatches; the noise generator is spawned per (component, chain), the component numbered
    by ``index`` (its position among the ``n_components`` of the whole call; default: its position here). Noise is
    drawn only for the coordinates that move.
    """
    index = list(range(len(masks_list))) if index is None else list(index)
    n_components = len(masks_list) if n_components is None else n_components
    streams = ChainStreams(cfg.seed, cfg.chains, n_components)
    runs = []
    bar = _progress(len(masks_list) * cfg.chains * cfg.draws, progress, "SGLD (sequential)")
    full = cfg.batch_size >= source.n
    paired = cfg.paired and not full
    # Chain c's minibatches are the same for every component, so the loss at w* on each is computed once.
    star = np.full((cfg.chains, cfg.draws), np.nan) if paired else None
    star_done = np.zeros((cfg.chains, cfg.draws), dtype=bool)
    anchor_model = model.to(device)
    for qi, masks in zip(index, masks_list):
        work = copy.deepcopy(model).to(device)
        named = dict(work.named_parameters())
        moving = [n for n in named if masks is None or (n in masks and bool(masks[n].any()))]
        mask_t = {n: (None if masks is None else masks[n].to(device)) for n in moving}
        d_moving = sum(named[n].numel() if mask_t[n] is None else int(mask_t[n].sum()) for n in moving)
        anchor = {n: named[n].detach().clone() for n in moving}
        for n, p in named.items():
            p.requires_grad_(n in moving)
        thr = cfg.divergence_limit(d_moving)
        trace = np.full((cfg.chains, cfg.draws), np.nan)
        diverged_at = np.full(cfg.chains, -1)
        for ci in range(cfg.chains):
            gen, noise_gen = streams.batches(ci), streams.noise(qi, ci)
            with torch.no_grad():
                for n in moving:
                    named[n].copy_(anchor[n])
            k = 0
            for t in range(cfg.total_steps):
                batch = source.full() if full else source.draw(gen, (cfg.batch_size,))
                loss = loss_fn(work, batch)
                grads = torch.autograd.grad(loss, [named[n] for n in moving])
                lv = float(loss.detach())
                if cfg.diverged(lv, init_loss, thr):
                    diverged_at[ci] = t
                    break
                if cfg.is_draw(t):
                    trace[ci, k] = lv
                    if paired and not star_done[ci, k]:
                        with torch.no_grad():
                            star[ci, k] = float(loss_fn(anchor_model, batch))
                        star_done[ci, k] = True
                    k += 1
                    if bar is not None:
                        bar.update(1)
                with torch.no_grad():
                    for n, g in zip(moving, grads):
                        p, m = named[n], mask_t[n]
                        if m is None:
                            noise = torch.randn(p.shape, generator=noise_gen, dtype=p.dtype).to(device)
                        else:  # only the moving coordinates, in row-major order
                            draws_ = torch.randn(int(m.sum()), generator=noise_gen, dtype=p.dtype).to(device)
                            noise = torch.zeros_like(p).masked_scatter_(m, draws_)
                        p.copy_(sgld_step(p, g, noise, anchor[n], m, cfg.epsilon, cfg.nbeta, cfg.gamma))
            if diverged_at[ci] >= 0:
                trace[ci, k:] = np.nan
        runs.append(_Run(trace=trace, diverged_at=diverged_at, d_moving=d_moving, star=star))
    if bar is not None:
        bar.close()
    return runs


def _summarise(run: _Run, init_loss: float, cfg: SamplerConfig, component: Any) -> LLCResult:
    alive = run.diverged_at < 0
    per_chain = np.full(cfg.chains, np.nan)
    if alive.any():
        ref = init_loss if run.star is None else run.star[alive]  # paired: the same minibatch at w*
        per_chain[alive] = cfg.nbeta * (run.trace[alive] - ref).mean(axis=1)
    live = per_chain[alive]
    mean = float(live.mean()) if live.size else float("nan")
    std = float(live.std(ddof=1)) if live.size >= 2 else float("nan")
    diag = diagnose(run.trace, per_chain, run.diverged_at, cfg.nbeta, mean)
    valid = bool(alive.all() and not diag.negative and math.isfinite(mean))
    return LLCResult(mean=mean, std=std, per_chain=per_chain, init_loss=float(init_loss), loss_trace=run.trace,
                     valid=valid, diagnostics=diag, config=cfg, component=_describe(component))


# Measured on 1 CPU core (benchmarks/bench_llc.py): for the rllc `cpu` preset transformer (~0.3M parameters,
# batch 32 × 64 tokens) 4 vmapped chains cost ~1.6× as much as 4 chains one after another with plain autograd
# (functorch's batched einsums, gather and explicit-softmax attention are slower than the unbatched kernels, and
# the sequential loop differentiates only the moving parameters); for toy models (≤ a few thousand parameters)
# the sampler is overhead-bound and vmap over chains wins by orders of magnitude. "auto" picks by this size rule
# (deterministic, so a seed always selects the same random streams).
_BATCHED_MAX_WORK = 2_000_000  # parameters × samples per minibatch


def _prefer_batched(model: nn.Module, cfg: SamplerConfig) -> bool:
    n_params = sum(p.numel() for p in model.parameters())
    return n_params * cfg.batch_size <= _BATCHED_MAX_WORK


def _estimate(model: nn.Module, data: Any, components: Sequence[Any], loss_fn: LossFn | None,
              cfg: SamplerConfig, batched: bool | str, device: str | torch.device, progress: bool | Callable[[int, int], None]) -> list[LLCResult]:
    device = torch.device(device)
    loss_fn = next_token_loss if loss_fn is None else loss_fn
    if not callable(loss_fn):
        raise RllcError(f"loss_fn must be callable as loss_fn(model, batch), got {type(loss_fn).__name__}")
    source = BatchSource(data, device)
    masks_list = [resolve_component(model, comp) for comp in components]
    gen = torch.Generator().manual_seed(cfg.seed)  # minibatch indices: init batches, then every step
    noise_gen = torch.Generator().manual_seed(cfg.seed + 0x5EED)  # SGLD noise
    wrapper = _LossModule(model, loss_fn)
    params = {"model." + n: p.detach().to(device) for n, p in model.named_parameters()}
    params |= {"model." + n: b.to(device) for n, b in model.named_buffers()}
    init = _init_loss(wrapper, params, source, cfg, gen)
    if not math.isfinite(init):
        raise RllcError(f"the loss at w* is {init}; check the model and data before sampling")
    runs: list[_Run | None] = [None] * len(masks_list)
    if batched == "auto":
        # Single heads of an rllc Transformer take the per-head sampler (heads.py); the rest the size rule below.
        found = [head_of(model, m) for m in masks_list] if supported(model, loss_fn, source) else []
        idx = [i for i, h in enumerate(found) if h is not None]
        if idx:
            sampler = HeadSampler(model, loss_fn, source, [found[i] for i in idx], idx, len(masks_list), cfg,
                                  device, init)
            bar = _progress(cfg.draws, progress, f"SGLD ({len(idx)} heads)")
            trace, diverged_at, star = sampler.run(bar)
            if bar is not None:
                bar.close()
            for j, i in enumerate(idx):
                runs[i] = _Run(trace=trace[j], diverged_at=diverged_at[j], d_moving=sampler.d_moving, star=star)
        batched = _prefer_batched(model, cfg)
    rest = [i for i, r in enumerate(runs) if r is None]
    if rest and batched:
        done = _run_batched(model, loss_fn, source, [masks_list[i] for i in rest], cfg, device, init, gen,
                            noise_gen, progress)
    elif rest:
        done = _run_sequential(model, loss_fn, source, [masks_list[i] for i in rest], cfg, device, init, progress,
                               index=rest, n_components=len(masks_list))
    for i, r in zip(rest, done if rest else []):
        runs[i] = r
    return [_summarise(r, init, cfg, comp) for r, comp in zip(runs, components)]


def estimate_llc(
    model: nn.Module,
    data: Any,
    *,
    loss_fn: LossFn | None = None,
    component: Any = None,
    config: SamplerConfig | None = None,
    batched: bool | str = "auto",
    device: str | torch.device = "cpu",
    progress: bool | Callable[[int, int], None] = False,
    **overrides: Any,
) -> LLCResult:
    """Estimate the (refined) local learning coefficient of ``model`` at its current weights w*.

    λ̂ = nβ (E[L_n(w)] − L_n(w*)), the expectation over SGLD chains targeting exp(−nβ L_n(w) − γ/2‖w − w*‖²);
    see ``rllc.llc.sgld.sgld_step`` for the update rule. The model is not modified.

    Args:
        model: any module; its current parameters are w*.
        data: a tensor or tuple of tensors (first dim indexes samples), a map-style Dataset, or a DataLoader
            (its dataset and collate_fn are used). Each step every chain draws ``batch_size`` samples uniformly
            with replacement from a generator seeded by ``seed``; ``batch_size >= len(data)`` means full batch.
            A data-refined estimate is this with another data set.
        loss_fn: ``loss_fn(model, batch) -> scalar mean loss``; default next-token cross-entropy
            (``losses.next_token_loss``). ``losses.soft_target_loss(ref)`` gives the model-as-generator loss.
        component: what moves (weight refinement): None for every parameter, a component name or list of names
            (rllc transformers, e.g. "1:6"), or a dict parameter name → bool mask; see
            ``rllc.model.components.resolve_masks``. Everything else stays bitwise at w*.
        config: a ``SamplerConfig``; keyword ``overrides`` (epsilon, nbeta, gamma, chains, draws, burn_in,
            steps_per_draw, batch_size, init_batches, seed, divergence_threshold) replace its fields.
        batched: True runs all chains (and components) at once with ``torch.func.vmap``; False runs chains one
            after another with plain autograd, differentiating only the moving parameters (the reference loop);
            "auto" (default) runs single attention heads of an rllc Transformer with the next-token or
            soft-target loss on the per-head sampler (``rllc.llc.heads``: the same chains as the reference loop,
            sharing the w* forward), and otherwise picks vmap for small models (parameters × batch_size ≤ 2e6)
            and the reference loop for the rest — the fastest, as measured in benchmarks/bench_llc.py.
        device: where the sampling runs.
        progress: True shows a tqdm bar over draws; a callable is called as ``progress(draws_done, draws_total)``
            after every recorded draw (draws summed over everything the call samples), e.g. for an ETA.

    Returns:
        An ``LLCResult``.
    """
    cfg = _make_config(config, overrides)
    return _estimate(model, data, [component], loss_fn, cfg, batched, device, progress)[0]


def estimate_llc_many(
    model: nn.Module,
    data: Any,
    components: Sequence[Any],
    *,
    loss_fn: LossFn | None = None,
    config: SamplerConfig | None = None,
    batched: bool | str = "auto",
    device: str | torch.device = "cpu",
    progress: bool | Callable[[int, int], None] = False,
    **overrides: Any,
) -> list[LLCResult]:
    """``estimate_llc`` for several components at once, one result per component in order.

    Chain c of every component sees the same minibatches (common random numbers: differences between components
    are less noisy). With ``batched=True`` the components × chains run as one vmapped computation over the union
    of their moving parameters. Arguments as in ``estimate_llc``.
    """
    if isinstance(components, (str, dict)) or not isinstance(components, Sequence) or not components:
        raise RllcError("components must be a non-empty list of components, e.g. ['0:0', '0:1']")
    cfg = _make_config(config, overrides)
    return _estimate(model, data, list(components), loss_fn, cfg, batched, device, progress)
