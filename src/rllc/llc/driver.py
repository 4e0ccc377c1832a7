"""The chain driver: the one SGLD-family loop every estimate runs.

It owns everything a sampler loop needs besides the gradient: the random streams (`streams.py`: minibatches per
chain, noise per (component, chain), keyed by identity), the burn-in and draw schedule (``SamplerConfig.is_draw``),
divergence and alive tracking, the kernel (`kernels/`), the paired loss at w*, the loss trace, the observables
(`observe.py`) and progress. A gradient strategy (`strategies.py`, `heads.py`) only computes losses and gradients.

Each step t: draw every chain's minibatch indices; ask the strategy for the losses (Q, C), gradients and (at a
draw, when paired) the losses at w* — or look those up as the mean of the minibatch's per-sample losses at w*,
computed once per estimate where the loss is a per-sample mean (``at_anchor``); mark chains whose loss is non-finite or whose nβ(L − L*) exceeds the limit as
diverged (they stop, park at w*, their draws are NaN); record the draw; draw each component's noise (C, d_q) from
its own stream; ``kernel.step`` the live chains.

Chains are independent given their streams, so ``run_chains_on_threads`` runs contiguous groups of them on
separate threads (one intra-op thread each) and joins the runs: the same chains, number for number, on every core.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from rllc.llc._data import BatchSource
from rllc.llc.config import SamplerConfig
from rllc.llc.layout import Layout
from rllc.llc.losses import per_token_loss
from rllc._errors import RllcError
from rllc.llc.observe import CrossMoments, Moments, Observe, Observed, ProbeMoments
from rllc.llc.streams import BatchStream, noise_streams
from rllc.model.adapters import to_device


class Strategy(Protocol):
    def loss_and_grad(self, positions: list[torch.Tensor], idx: torch.Tensor | None, alive: np.ndarray,
                      star: bool) -> tuple[np.ndarray, list[torch.Tensor], np.ndarray | None]: ...


@dataclass
class Run:
    """Raw output of the driver for one component: traces before summarising."""

    trace: np.ndarray  # (C, K) minibatch loss at each draw, NaN after divergence
    diverged_at: np.ndarray  # (C,), −1 where the chain survived
    d_moving: int
    star: np.ndarray | None = None  # (C, K) loss at w* on each draw's minibatch (paired differences), or None
    observed: Observed | None = None


class _Observer:
    """Evaluates the observables (``Observe``) at every draw and streams them into ``Moments``/``CrossMoments``.

    Every probe is evaluated for all components × chains at once (`probe_eval.py`: the stacked forward for rllc
    Transformers with the per-token loss, ``vmap`` of ``functional_call`` otherwise), under ``no_grad``;
    ``Observe(batched=False)`` is the one-weight-set-at-a-time reference.
    """

    def __init__(self, model: nn.Module, obs: Observe, layouts: list[Layout], source: BatchSource, chains: int,
                 device: torch.device, init_loss: float, paired: bool, full: bool) -> None:
        from rllc.llc import probe_eval

        probes = obs.resolved_probes()
        self.obs, self.layouts, self.source, self.chains = obs, layouts, source, chains
        self.init_loss, self.paired, self.full = init_loss, paired, full
        self.model = to_device(copy.deepcopy(model), device).requires_grad_(False)
        self.anchor = {n: p.detach() for n, p in self.model.named_parameters()}
        union = set(n for lay in layouts for n in lay.names)
        self.moving = [n for n in self.anchor if n in union]
        self.data = {name: BatchSource(d, device).full() for name, d in probes.items()}
        fn = obs.per_sample_loss
        first = next(iter(self.data.values()), source.full() if obs.minibatch else None)
        if not obs.batched:
            self.eval = probe_eval.LoopEval(self.model, fn)
        elif first is not None and probe_eval.stacked_supported(self.model, fn, first) and all(
                probe_eval._is_tokens(b) for b in self.data.values()):
            self.eval = probe_eval.StackedEval(self.model)
        else:
            self.eval = probe_eval.VmapEval(self.model, fn)
        C = chains
        # (rows of the Q·C weight sets, start layer, moving head of each row or None)
        self.groups: list[tuple[torch.Tensor, int, list[int] | None]] = [(torch.arange(len(layouts) * C), 0, None)]
        if isinstance(self.eval, probe_eval.StackedEval):
            # Single heads go through HeadEval (one head recomputed at its layer, the last layer's unembedding
            # folded), grouped by layer; other components by the lowest layer they move (the stacked forward
            # starts there, from the probe's cached w* residual).
            found = [probe_eval.head_of_layout(self.model, lay) for lay in layouts]
            self.heads_eval = probe_eval.HeadEval(self.model) if any(found) else None
            keys = [("head", f[0]) if f else ("stack", self.eval.start_layer(lay.names))
                    for f, lay in zip(found, layouts)]
            self.groups = []
            for key in sorted(set(keys)):
                qs = [q for q, k in enumerate(keys) if k == key]
                rows = torch.tensor([q * C + c for q in qs for c in range(C)])
                self.groups.append((rows, key[1], [found[q][1] for q in qs for _ in range(C)]
                                    if key[0] == "head" else None))
        self.at_anchor, self.shapes = {}, {}
        for name, batch in self.data.items():
            v = (fn or per_token_loss)(self.model, batch)  # (n, ...) at w*
            if v.dim() == 0:
                raise RllcError(f"observe probe {name!r}: per_sample_loss returned a scalar; it must return "
                                "one loss per sample, shape (B, ...)")
            self.shapes[name] = tuple(v.shape)
            self.at_anchor[name] = v.double().cpu().reshape(-1).numpy()
        # Token probes of one context length go through the stacked forward as one batch (one forward per
        # draw, not one per probe); other data one probe at a time.
        self.batches: list[tuple[list[str], Any]] = [([name], b) for name, b in self.data.items()]
        if isinstance(self.eval, probe_eval.StackedEval):
            by_len: dict[int, list[str]] = {}
            for name, b in self.data.items():
                by_len.setdefault(b.shape[1], []).append(name)
            self.batches = [(names, torch.cat([self.data[n] for n in names]) if len(names) > 1
                             else self.data[names[0]]) for names in by_len.values()]
        Q, C = len(layouts), chains
        self.cross_names = obs.cross_names()
        self.phi = [Moments(C, 0) for _ in range(Q)]
        self.moments = [{name: Moments(C, self.at_anchor[name].size) for name in self.data} for _ in range(Q)]
        self.cross = [{name: CrossMoments(self.at_anchor[name].size if obs.cross_level == "token"
                                          else self.shapes[name][0]) for name in self.cross_names}
                      for _ in range(Q)]
        self.mb = [Moments(C, 1) for _ in range(Q)] if obs.minibatch else None

    def _probe_values(self, w: dict[str, torch.Tensor], batch: Any) -> np.ndarray:
        """(Q·C, ...) per-sample losses of every component × chain on a probe, float64 (by ``self.groups``)."""
        if len(self.groups) == 1 and self.groups[0][1] == 0 and self.groups[0][2] is None:
            return self.eval.values(w, batch).double().cpu().numpy()
        out = None
        for rows, start, heads in self.groups:
            part = {n: t[rows] for n, t in w.items()}
            v = (self.eval.values(part, batch, start=start) if heads is None else
                 self.heads_eval.values(part, batch, start, heads)).double().cpu().numpy()
            if out is None:
                out = np.empty((len(self.layouts) * self.chains, *v.shape[1:]))
            out[rows.numpy()] = v
        return out

    def _stack(self, positions: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The moving tensors at every component's chains, (Q·C, *shape); coordinates a component does not move
        stay at w*."""
        Q, C = len(positions), self.chains
        w = {n: self.anchor[n].expand(Q, C, *self.anchor[n].shape).clone() for n in self.moving}
        for q, lay in enumerate(self.layouts):
            lay.scatter_({n: w[n][q] for n in lay.names}, positions[q].to(w[lay.names[0]].dtype), lead=1)
        return {n: t.view(Q * C, *t.shape[2:]) for n, t in w.items()}

    @torch.no_grad()
    def record(self, positions: list[torch.Tensor], idx: torch.Tensor | None, losses: np.ndarray,
               alive: np.ndarray, star: np.ndarray | None = None) -> None:
        """Add one draw: ``losses`` (Q, C) the chains' minibatch losses, ``star`` (C,) the paired losses at w*."""
        Q, C = alive.shape
        phi = losses - (star[None, :] if star is not None else self.init_loss)
        phi = np.where(alive, phi, np.nan)  # (Q, C)
        w = self._stack(positions)
        for names, batch in self.batches:
            values = self._probe_values(w, batch)  # (Q·C, n, ...): the probes of one batch, sample-concatenated
            at = 0
            for name in names:
                n = self.shapes[name][0]
                v = values[:, at:at + n].reshape(Q, C, -1)  # (Q, C, N)
                at += n
                v[~alive] = np.nan
                self._update(name, v, phi)
        for q in range(Q):
            self.phi[q].update(np.zeros((C, 0)), phi[q])
        self._minibatch(w, idx, phi, alive)

    def _update(self, name: str, v: np.ndarray, phi: np.ndarray) -> None:
        """Stream one probe's values v (Q, C, N) and φ (Q, C) into its moments (and cross-moments)."""
        Q, C = phi.shape
        for q in range(Q):
            self.moments[q][name].update(v[q], phi[q])
            if name in self.cross[q]:
                x = v[q] if self.obs.cross_level == "token" else v[q].reshape(C, self.shapes[name][0], -1).mean(-1)
                self.cross[q][name].update(x)

    def _minibatch(self, w: dict[str, torch.Tensor], idx: torch.Tensor | None, phi: np.ndarray,
                   alive: np.ndarray) -> None:
        """The mean per-sample loss on each chain's own minibatch (``Observe.minibatch``)."""
        Q, C = alive.shape
        if self.mb is None:
            return
        b = self.source.full() if idx is None else self.source._take(idx)  # (C, B, ...) or the full batch
        if idx is None:
            v = self.eval.values(w, b)
        else:
            from torch.utils._pytree import tree_map

            rep = tree_map(lambda t: t.unsqueeze(0).expand(Q, *t.shape).reshape(Q * C, *t.shape[1:])
                           if isinstance(t, torch.Tensor) else t, b)
            v = self.eval.values(w, rep, per_chain_batch=True)
        m = v.double().cpu().reshape(Q, C, -1).mean(-1).numpy()
        m[~alive] = np.nan
        for q in range(Q):
            self.mb[q].update(m[q][:, None], phi[q])

    def result(self, q: int) -> Observed:
        ph = self.phi[q]
        probes = {}
        for name, m in self.moments[q].items():
            cm = self.cross[q].get(name)
            probes[name] = ProbeMoments(shape=self.shapes[name], mean=m.mean, var=m.var, cov_phi=m.cov_with_loss,
                                        at_anchor=self.at_anchor[name],
                                        cross=None if cm is None else cm.covariance,
                                        cross_count=0 if cm is None else cm.count, cross_level=self.obs.cross_level)
        mb = self.mb[q] if self.mb is not None else None
        return Observed(draws=ph.count, phi_mean=ph.mean_y.copy(), phi_var=ph.var_y.copy(),
                        paired=self.paired or self.full, full_batch=self.full, probes=probes,
                        minibatch_mean=None if mb is None else mb.mean[:, 0].copy(),
                        minibatch_var=None if mb is None else mb.var[:, 0].copy())


def _join_observers(parts: list[_Observer]) -> _Observer:
    """Observers of disjoint contiguous chain groups (in chain order) as one: per-chain moments joined, the pooled
    cross-moments merged (``CrossMoments.pool``) — the moments one observer of every chain would hold."""
    out = parts[0]
    if len(parts) == 1:
        return out
    for q in range(len(out.layouts)):
        out.phi[q] = Moments.join([p.phi[q] for p in parts])
        out.moments[q] = {n: Moments.join([p.moments[q][n] for p in parts]) for n in out.moments[q]}
        out.cross[q] = {n: CrossMoments.pool([p.cross[q][n] for p in parts]) for n in out.cross[q]}
        if out.mb is not None:
            out.mb[q] = Moments.join([p.mb[q] for p in parts])
    out.chains = sum(p.chains for p in parts)
    return out


class _Cancelled(Exception):
    """Raised in a worker thread when another one failed or the call was interrupted."""


def run_chains(strategy: Strategy, kernel: ModuleType, cfg: SamplerConfig, layouts: Sequence[Layout],
               anchors: Sequence[torch.Tensor], identities: Sequence[str], source: BatchSource, data_key: str,
               init_loss: float, progress: Any = None, observer: _Observer | None = None,
               chains: Sequence[int] | None = None, cancel: threading.Event | None = None,
               at_anchor: np.ndarray | None = None) -> list[Run]:
    """Run C chains for each of Q components on one strategy and kernel.

    Args:
        strategy: computes losses and gradients (see ``Strategy``).
        kernel: a module of `rllc.llc.kernels` (``init``, ``step``, ``hyper``).
        cfg: the sampler config (schedule, ε, nβ, γ, kernel settings, seed, paired).
        layouts: per component, its flat layout; anchors: per component, w* at its moving coordinates (d_q,).
        identities: per component, its canonical name (keys its noise streams).
        source: the data; data_key: the data set's identity (keys every stream).
        init_loss: L_n(w*), for the divergence test.
        progress: an object with ``update(n)`` called once per draw, or None.
        observer: records observables at every draw, or None.
        chains: which chains of the estimate to run (their indices key their streams); None: 0 … cfg.chains − 1.
        cancel: checked every step; when set, the run stops with ``_Cancelled``.
        at_anchor: every sample's loss at w* (n,), or None; when given, a paired draw's loss at w* is the mean of
            its minibatch's entries (the strategy runs no forward at w*).

    Returns:
        One ``Run`` per component (its arrays over ``chains``, in that order).
    """
    ids = list(range(cfg.chains)) if chains is None else [int(c) for c in chains]
    Q, C = len(layouts), len(ids)
    full = cfg.batch_size >= source.n
    paired = cfg.paired and not full  # full batch: the loss at w* is the constant init_loss already
    dtype = anchors[0].dtype if anchors else torch.float32
    batches = None if full else BatchStream(cfg.seed, data_key, ids, source.n, cfg.batch_size)
    noises = noise_streams(cfg.seed, data_key, identities, ids, [lay.size for lay in layouts], dtype)
    hyper = kernel.hyper(cfg.epsilon, cfg.nbeta, cfg.gamma, cfg.settings(), cfg.burn_in)
    states = [kernel.init(a.expand(C, -1).clone()) for a in anchors]
    trace = np.full((Q, C, cfg.draws), np.nan)
    star = np.full((C, cfg.draws), np.nan) if paired else None
    alive = np.ones((Q, C), dtype=bool)
    diverged_at = np.full((Q, C), -1)
    limits = np.array([cfg.divergence_limit(lay.size) for lay in layouts])[:, None]  # (Q, 1)
    k = 0
    for t in range(cfg.total_steps):
        if cancel is not None and cancel.is_set():
            raise _Cancelled
        record = cfg.is_draw(t)
        idx = None if batches is None else batches.next()  # (C, B), drawn every step whatever is alive
        positions = [s.position for s in states]
        lookup = record and paired and at_anchor is not None
        losses, grads, star_t = strategy.loss_and_grad(positions, idx, alive, record and paired and not lookup)
        if lookup:
            star_t = at_anchor[idx.numpy()].mean(axis=1)  # (C,) the minibatch's mean loss at w*
        with np.errstate(invalid="ignore"):
            bad = alive & (~np.isfinite(losses) | (cfg.nbeta * (losses - init_loss) > limits))
        if bad.any():
            diverged_at[bad] = t
            alive &= ~bad
            for q in np.flatnonzero(bad.any(axis=1)):  # park diverged chains at w*: finite, and cost nothing
                dead = torch.as_tensor(bad[q], device=anchors[q].device)[:, None]
                states[q] = states[q]._replace(position=torch.where(dead, anchors[q], states[q].position))
        if record:
            trace[:, :, k] = np.where(alive, losses, np.nan)
            if paired:
                star[:, k] = star_t
            if observer is not None:
                observer.record([s.position for s in states], idx, losses, alive, star_t if paired else None)
            k += 1
            if progress is not None:
                progress.update(1)
        if not alive.any():
            break
        for q in range(Q):
            noise = noises[q].next().to(anchors[q].device)  # consumed every step, alive or not
            if not alive[q].any():
                continue
            mask = None if alive[q].all() else torch.as_tensor(alive[q], device=anchors[q].device)[:, None]
            states[q], _ = kernel.step(states[q], grads[q], noise, anchors[q], mask, hyper)
    return [Run(trace=trace[q], diverged_at=diverged_at[q], d_moving=layouts[q].size, star=star,
                observed=None if observer is None else observer.result(q)) for q in range(Q)]


def run_chains_on_threads(make_strategy: Callable[[], Strategy], workers: int, kernel: ModuleType,
                          cfg: SamplerConfig, layouts: Sequence[Layout], anchors: Sequence[torch.Tensor],
                          identities: Sequence[str], source: BatchSource, data_key: str, init_loss: float,
                          progress: Any = None, make_observer: Callable[[int], _Observer] | None = None,
                          at_anchor: np.ndarray | None = None) -> list[Run]:
    """``run_chains`` with the chains split into ``workers`` contiguous groups, each on its own thread with one
    intra-op thread, its own strategy (``make_strategy()``) and its own observer (``make_observer(chains in the
    group)``, or None); the runs are joined in chain order, the observers' moments joined (``_join_observers``).

    Small CPU ops do not split well across intra-op threads (a cpu-preset forward+backward gains ~1.3× from a
    second one); independent chains on separate threads use every core with no communication. The chains are the
    ones ``run_chains`` walks alone (their streams are keyed by chain index). One group (``workers`` ≤ 1 or one
    chain) runs on the calling thread as it is.
    """
    groups = [g for g in np.array_split(np.arange(cfg.chains), max(1, min(workers, cfg.chains))) if len(g)]
    if len(groups) == 1:
        observer = None if make_observer is None else make_observer(cfg.chains)
        return run_chains(make_strategy(), kernel, cfg, layouts, anchors, identities, source, data_key, init_loss,
                          progress, observer, at_anchor=at_anchor)
    threads = torch.get_num_threads()
    cancel = threading.Event()
    observers: list[_Observer | None] = [None] * len(groups)

    def work(k: int, ids: np.ndarray) -> list[Run]:
        torch.set_num_threads(1)  # this thread's OpenMP/MKL setting (restored for the process below)
        if make_observer is not None:
            observers[k] = make_observer(len(ids))
        return run_chains(make_strategy(), kernel, cfg, layouts, anchors, identities, source, data_key,
                          init_loss, progress if k == 0 else None, observers[k], ids.tolist(), cancel, at_anchor)

    try:
        with ThreadPoolExecutor(len(groups), thread_name_prefix="rllc-chains") as pool:
            futures = [pool.submit(work, k, ids) for k, ids in enumerate(groups)]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
            finally:
                if not all(f.done() and f.exception() is None for f in futures):
                    cancel.set()  # a worker failed, or Ctrl-C here: the others stop at their next step
        errors = [f.exception() for f in futures if f.exception() is not None]
        real = [e for e in errors if not isinstance(e, _Cancelled)]
        if errors:
            raise (real or errors)[0]
        parts = [f.result() for f in futures]
    finally:
        torch.set_num_threads(threads)  # a worker's call also set the default of threads started later
    joined = None if make_observer is None else _join_observers(observers)
    return [Run(trace=np.concatenate([p[q].trace for p in parts]),
                diverged_at=np.concatenate([p[q].diverged_at for p in parts]), d_moving=parts[0][q].d_moving,
                star=None if parts[0][q].star is None else np.concatenate([p[q].star for p in parts]),
                observed=None if joined is None else joined.result(q))
            for q in range(len(layouts))]
