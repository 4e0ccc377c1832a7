"""The LLC estimator: λ̂ = nβ (E_w[L_n(w)] − L_n(w*)) over SGLD chains localised at w* (Wang et al. 2024 eq. 2–3).

One chain driver (`driver.py`) runs every estimate: a kernel (`kernels/`: SGLD, RMSProp-SGLD) and a gradient
strategy (`strategies.py`: plain autograd, vmap; `heads.py`: attention heads) are its arguments. Weight
refinement is a mask (a component's flat ``Layout``), data refinement a different ``data``, and the
model-as-generator loss a different ``loss_fn`` — never a different loop.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from rllc._errors import RllcError
from rllc.llc._data import BatchSource
from rllc.llc.config import SamplerConfig
from rllc.llc.diagnostics import Diagnostics, _num, diagnose
from rllc.llc.driver import Run, _Observer, run_chains_on_threads
from rllc.llc.heads import HeadStrategy, head_of, supported
from rllc.llc.kernels import get_kernel
from rllc.llc.layout import Layout, component_key
from rllc.llc.losses import LossFn, next_token_loss, per_sample_form
from rllc.llc.observe import Observe, Observed
from rllc.llc.stacked import StackedStrategy
from rllc.llc.stacked import supported as stacked_supported
from rllc.llc.strategies import AutogradStrategy, VmapStrategy
from rllc.llc.streams import init_indices
from rllc.model.adapters import to_device

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
        observed: moments of the observables recorded at every draw (``observe=``), or None.
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
    observed: Observed | None = None

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
    """The component's canonical name ("0:1+0:3"), "masks:..." for dict masks, None for the whole model."""
    from rllc.model.components import Component

    if component is None:
        return None
    if isinstance(component, dict):
        return "masks:" + ",".join(sorted(component))
    try:
        return Component.parse(component).name
    except RllcError:
        return str(component)


def _prepare(model: nn.Module, batched: bool | str) -> nn.Module:
    """The module the samplers run: supported models in eval mode (dropout off), and, under "auto", an rllc
    Transformer with the same weights when the model is exactly rllc's architecture (the per-head fast path)."""
    from rllc.model.adapters import adapt, supported

    if not supported(model):
        return model
    a = adapt(model)
    a.model.eval()
    return a.native() if batched == "auto" else model


def _init_loss(loss_fn: LossFn, model: nn.Module, source: BatchSource, cfg: SamplerConfig, data_key: str,
               at_anchor: np.ndarray | None = None) -> float:
    """L_n(w*): the full-batch loss, or the mean over ``init_batches`` minibatches from the "init" stream (each
    minibatch's loss looked up in ``at_anchor`` when given, the per-sample losses at w*)."""
    with torch.no_grad():
        if cfg.batch_size >= source.n:
            return float(loss_fn(model, source.full()))
        idx = init_indices(cfg.seed, data_key, source.n, cfg.init_batches, cfg.batch_size)
        if at_anchor is not None:
            return float(np.mean(at_anchor[idx.numpy()].mean(axis=1)))
        return float(np.mean([float(loss_fn(model, source._take(i))) for i in idx]))


def _losses_at_anchor(loss_fn: LossFn, model: nn.Module, source: BatchSource, cfg: SamplerConfig) -> np.ndarray | None:
    """Every sample's loss at w*, (n,) float64, when that makes the paired losses cheaper; else None.

    A paired estimate subtracts, at every draw, each chain's minibatch loss at w*. For a loss that is the mean of
    per-sample losses (``losses.per_sample_form``: the next-token and soft-target losses) that is the mean of the
    minibatch's entries of this table (samples drawn twice counted twice, as in the minibatch), so one pass over
    the n samples replaces a forward per chain per draw — taken when n ≤ chains × draws × batch_size, the samples
    those forwards would see. Evaluated ``batch_size`` samples at a time, as the strategies' forwards are.
    """
    form = per_sample_form(loss_fn)
    if form is None or not cfg.paired or cfg.batch_size >= source.n or \
            source.n > cfg.chains * cfg.draws * cfg.batch_size:
        return None
    out = np.empty(source.n)
    with torch.no_grad():
        for at in range(0, source.n, cfg.batch_size):
            rows = torch.arange(at, min(at + cfg.batch_size, source.n))
            out[at:at + len(rows)] = form(model, source._take(rows)).double().cpu().numpy()
    return out


class _Callback:
    """A progress sink with tqdm's ``update``/``close`` that reports (draws_done, draws_total) to a callable."""

    def __init__(self, fn: Callable[[int, int], None], total: int) -> None:
        self.fn, self.total, self.done = fn, total, 0

    def update(self, n: int = 1) -> None:
        self.done += n
        self.fn(self.done, self.total)

    def close(self) -> None:
        pass


def _count(n: int, noun: str) -> str:
    """'1 component', '8 components'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _progress(total: int, on: bool | Callable[[int, int], None], desc: str):
    """None, a tqdm bar over ``total`` draws (``on=True``), or a callback sink (``on`` callable)."""
    if callable(on):
        return _Callback(on, total)
    if not on:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="draw")


def _summarise(run: Run, init_loss: float, cfg: SamplerConfig, component: Any) -> LLCResult:
    alive = run.diverged_at < 0
    per_chain = np.full(cfg.chains, np.nan)
    if alive.any():
        ref = init_loss if run.star is None else run.star[alive]  # paired: the same minibatch at w*
        per_chain[alive] = cfg.nbeta * (run.trace[alive] - ref).mean(axis=1)
    live = per_chain[alive]
    mean = float(live.mean()) if live.size else float("nan")
    std = float(live.std(ddof=1)) if live.size >= 2 else float("nan")
    # the diagnostics read what λ̂ averages: paired, each draw's loss minus the loss at w* on the same minibatch
    # (the minibatch noise cancels, so drift, bias and R-hat see the chain, not the batches)
    diag = diagnose(run.trace if run.star is None else run.trace - run.star, per_chain, run.diverged_at,
                    cfg.nbeta, mean)
    valid = bool(alive.all() and not diag.negative and math.isfinite(mean))
    return LLCResult(mean=mean, std=std, per_chain=per_chain, init_loss=float(init_loss), loss_trace=run.trace,
                     valid=valid, diagnostics=diag, config=cfg, component=_describe(component),
                     observed=run.observed)


# Measured on 1 CPU core (benchmarks/bench_llc.py): for the rllc `cpu` preset transformer (~0.3M parameters,
# batch 32 × 64 tokens) 4 vmapped chains cost ~1.6× as much as 4 chains one after another with plain autograd
# (functorch's batched einsums, gather and explicit-softmax attention are slower than the unbatched kernels, and
# the autograd strategy differentiates only the moving parameters); for toy models (≤ a few thousand parameters)
# the sampler is overhead-bound and vmap over chains wins by orders of magnitude. "auto" picks by this size rule.
_BATCHED_MAX_WORK = 2_000_000  # parameters × samples per minibatch


def _prefer_batched(model: nn.Module, cfg: SamplerConfig) -> bool:
    n_params = sum(p.numel() for p in model.parameters())
    return n_params * cfg.batch_size <= _BATCHED_MAX_WORK


def _plan(model: nn.Module, loss_fn: LossFn, source: BatchSource, masks_list: list[Masks], layouts: list[Layout],
          cfg: SamplerConfig, batched: bool | str, device: torch.device) -> list[tuple[list[int], Any, int]]:
    """Which gradient strategy runs which components: [(component indices, strategy factory, threads)].

    "auto": single heads of an rllc Transformer take the per-head strategy (heads.py); the rest vmap when the
    model is tiny (``_prefer_batched``), else the stacked strategy where it applies (rllc Transformer, next-token
    loss: its fused closed-form cross-entropy makes it the fastest full-model strategy measured,
    benchmarks/bench_llc.py), else plain autograd. On CPU every strategy but vmap (overhead-bound on the tiny
    models it is picked for) runs its chains split over ``torch.get_num_threads()`` threads
    (``run_chains_on_threads``): the same chains, on every core.
    """
    if batched not in (True, False, "auto", "stacked"):
        raise RllcError(f"batched must be True, False, 'auto' or 'stacked', got {batched!r}")
    if batched == "stacked" and not stacked_supported(model, loss_fn, source):
        raise RllcError("batched='stacked' needs an rllc Transformer without hooks, token data in a tensor and the "
                        "next-token loss; use True, False or 'auto'")
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    groups: list[tuple[list[int], Any, int]] = []
    rest = list(range(len(masks_list)))
    if batched == "auto":
        found = [head_of(model, m) for m in masks_list] if supported(model, loss_fn, source) else []
        idx = [i for i, h in enumerate(found) if h is not None]
        if idx:
            groups.append((idx, partial(HeadStrategy, model, loss_fn, source, [found[i] for i in idx], device),
                           threads))
        rest = [i for i in rest if i not in idx]
        batched = True if _prefer_batched(model, cfg) else \
            "stacked" if stacked_supported(model, loss_fn, source) else False
    if rest:
        make = StackedStrategy if batched == "stacked" else VmapStrategy if batched else AutogradStrategy
        groups.append((rest, partial(make, model, loss_fn, source, [layouts[i] for i in rest], device),
                       1 if make is VmapStrategy else threads))
    return groups


def _observer(model: nn.Module, observe: Observe, layouts: list[Layout], source: BatchSource, device: torch.device,
              init: float, paired: bool, full: bool, chains: int) -> _Observer:
    """An observer of ``chains`` chains (one per chain group when the chains are split over threads)."""
    return _Observer(model, observe, layouts, source, chains, device, init, paired, full)


def _estimate(model: nn.Module, data: Any, components: Sequence[Any], loss_fn: LossFn | None,
              cfg: SamplerConfig, batched: bool | str, device: str | torch.device,
              progress: bool | Callable[[int, int], None], observe: Observe | None = None) -> list[LLCResult]:
    device = torch.device(device)
    was_training, user_model = model.training, model
    model = _prepare(model, batched)
    try:
        return _estimate_prepared(model, data, components, loss_fn, cfg, batched, device, progress, observe)
    finally:
        user_model.train(was_training)


def _estimate_prepared(model: nn.Module, data: Any, components: Sequence[Any], loss_fn: LossFn | None,
                       cfg: SamplerConfig, batched: bool | str, device: torch.device,
                       progress: bool | Callable[[int, int], None], observe: Observe | None) -> list[LLCResult]:
    loss_fn = next_token_loss if loss_fn is None else loss_fn
    if not callable(loss_fn):
        raise RllcError(f"loss_fn must be callable as loss_fn(model, batch), got {type(loss_fn).__name__}")
    kernel = get_kernel(cfg.sampler)
    source = BatchSource(data, device)
    data_key = source.key
    masks_list = [resolve_component(model, comp) for comp in components]
    identities = [component_key(model, comp) for comp in components]
    layouts = [Layout(model, m, device) for m in masks_list]
    if any(lay.size == 0 for lay in layouts):
        raise RllcError("the component selects no parameters; pick a component with at least one moving weight")
    star_model = to_device(copy.deepcopy(model), device).requires_grad_(False)
    at_anchor = _losses_at_anchor(loss_fn, star_model, source, cfg)
    init = _init_loss(loss_fn, star_model, source, cfg, data_key, at_anchor)
    if not math.isfinite(init):
        raise RllcError(f"the loss at w* is {init}; check the model and data before sampling")
    named = {n: p.detach() for n, p in star_model.named_parameters()}
    anchors = [lay.gather(named) for lay in layouts]
    groups = _plan(model, loss_fn, source, masks_list, layouts, cfg, batched, device)
    bar = _progress(cfg.draws * len(groups), progress, f"SGLD ({cfg.sampler}, {_count(len(components), 'component')})")
    runs: list[Run | None] = [None] * len(components)
    try:
        for idx, make_strategy, threads in groups:
            full = cfg.batch_size >= source.n
            make_observer = None if observe is None else partial(
                _observer, model, observe, [layouts[i] for i in idx], source, device, init, cfg.paired and not full,
                full)
            done = run_chains_on_threads(make_strategy, threads, kernel, cfg, [layouts[i] for i in idx],
                                         [anchors[i] for i in idx], [identities[i] for i in idx], source, data_key,
                                         init, bar, make_observer, at_anchor)
            for i, r in zip(idx, done):
                runs[i] = r
    finally:
        if bar is not None:
            bar.close()
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
    observe: Observe | None = None,
    **overrides: Any,
) -> LLCResult:
    """Estimate the (refined) local learning coefficient of ``model`` at its current weights w*.

    λ̂ = nβ (E[L_n(w)] − L_n(w*)), the expectation over chains targeting exp(−nβ L_n(w) − γ/2‖w − w*‖²), run
    by the kernel ``sampler`` names (``rllc.llc.kernels``: "sgld", the default, or "rmsprop_sgld"; each module
    writes its update rule). The model is not modified. Chain c's minibatches come from a stream keyed by (seed,
    data set, c), component q's noise from one keyed by (seed, data set, q's canonical name, c): an estimate is
    the same whatever else is estimated beside it and whichever ``batched`` strategy runs it.

    Args:
        model: any module; its current parameters are w*.
        data: a tensor or tuple of tensors (first dim indexes samples), a map-style Dataset, or a DataLoader
            (its dataset and collate_fn are used). Each step every chain draws ``batch_size`` samples uniformly
            with replacement from a generator seeded by ``seed``; ``batch_size >= len(data)`` means full batch.
            A data-refined estimate is this with another data set.
        loss_fn: ``loss_fn(model, batch) -> scalar mean loss``; default next-token cross-entropy
            (``losses.next_token_loss``). ``losses.soft_target_loss(ref)`` gives the model-as-generator loss.
        component: what moves (weight refinement): None for every parameter; a component name ("1:2",
            "layer:0", "unembed", ...), a union ("0:1+0:3") or a list of names, on any supported model (rllc,
            TransformerLens, HF GPT-2/GPT-NeoX, run in eval mode); or a dict parameter name → bool mask; see
            ``rllc.model.components.resolve_masks``. Everything else stays bitwise at w*.
        config: a ``SamplerConfig``; keyword ``overrides`` (epsilon, nbeta, gamma, chains, draws, burn_in,
            steps_per_draw, batch_size, init_batches, seed, divergence_threshold, paired, sampler,
            sampler_settings) replace its fields.
        batched: the gradient strategy (the chains are the same whichever runs). True: every chain and component
            at once with ``torch.func.vmap``; False: chains one after another with plain autograd, differentiating
            only the moving parameters (the reference); "auto" (default): single attention heads of an rllc
            Transformer with the next-token or soft-target loss on the per-head strategy (``rllc.llc.heads``:
            one shared w* forward), the rest vmap for small models (parameters × batch_size ≤ 2e6), "stacked" for
            rllc Transformers with the next-token loss, autograd otherwise — the fastest, as measured in
            benchmarks/bench_llc.py. "stacked": rllc Transformers with the next-token loss, every component × chain
            on one leading weight dimension (batched GEMMs and a fused closed-form cross-entropy,
            ``rllc.llc.stacked``). On CPU every strategy but vmap splits the chains over
            ``torch.get_num_threads()`` threads, one intra-op thread each (set it with ``torch.set_num_threads``).
        device: where the sampling runs.
        progress: True shows a tqdm bar over draws; a callable is called as ``progress(draws_done, draws_total)``
            after every recorded draw (draws summed over everything the call samples), e.g. for an ETA.
        observe: an ``rllc.llc.Observe``: per-sample losses on named probe data sets recorded at every draw,
            batched over chains, into bounded running moments (``LLCResult.observed``: φ, per-sample means,
            variances, covariances with φ, cross-moments) — what ``rllc.llc.response`` turns into susceptibilities,
            per-token LLC contributions and Bayesian influence functions, from the same chains as λ̂.

    Returns:
        An ``LLCResult``.
    """
    cfg = _make_config(config, overrides)
    return _estimate(model, data, [component], loss_fn, cfg, batched, device, progress, observe)[0]


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
    observe: Observe | None = None,
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
    return _estimate(model, data, list(components), loss_fn, cfg, batched, device, progress, observe)
