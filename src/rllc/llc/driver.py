"""The chain driver: the one SGLD-family loop every estimate runs.

It owns everything a sampler loop needs besides the gradient: the random streams (`streams.py`: minibatches per
chain, noise per (component, chain), keyed by identity), the burn-in and draw schedule (``SamplerConfig.is_draw``),
divergence and alive tracking, the kernel (`kernels/`), the paired loss at w*, the loss trace, the observables
(`observe.py`) and progress. A gradient strategy (`strategies.py`, `heads.py`) only computes losses and gradients.

Each step t: draw every chain's minibatch indices; ask the strategy for the losses (Q, C), gradients and (at a
draw, when paired) the losses at w*; mark chains whose loss is non-finite or whose nβ(L − L*) exceeds the limit as
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
from rllc.llc.observe import Moments, Observe, Observed
from rllc.llc.streams import BatchStream, noise_streams


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
    """Evaluates ``observe.per_sample_loss`` at the chains' positions and streams it into ``Moments``."""

    def __init__(self, model: nn.Module, obs: Observe, layouts: list[Layout], source: BatchSource, chains: int,
                 device: torch.device) -> None:
        self.obs, self.layouts, self.source = obs, layouts, source
        self.model = copy.deepcopy(model).to(device).requires_grad_(False)
        self.params = dict(self.model.named_parameters())
        self.star = {n: p.detach().clone() for n, p in self.params.items()}
        self.eval = None if obs.eval_data is None else BatchSource(obs.eval_data, device).full()
        self.eval_moments: list[Moments | None] = [None] * len(layouts)
        self.mb = [np.zeros((2, chains)) for _ in layouts]  # running Σx, Σx² of per-draw minibatch means
        self.mb_count = 0
        self.at_anchor = None
        if self.eval is not None:
            with torch.no_grad():
                self.at_anchor = self._values(self.eval)
        self.chains = chains

    def _values(self, batch: Any) -> np.ndarray:
        return self.obs.per_sample_loss(self.model, batch).detach().double().cpu().reshape(-1).numpy()

    @torch.no_grad()
    def record(self, positions: list[torch.Tensor], idx: torch.Tensor | None, losses: np.ndarray,
               alive: np.ndarray) -> None:
        self.mb_count += 1
        for q, lay in enumerate(self.layouts):
            ev = []
            for c in range(self.chains):
                lay.scatter_(self.params, positions[q][c])
                if self.eval is not None:
                    ev.append(self._values(self.eval) if alive[q, c] else np.full(len(self.at_anchor), np.nan))
                if self.obs.minibatch:
                    b = self.source.full() if idx is None else self.source._take(idx[c])
                    x = float(np.mean(self._values(b))) if alive[q, c] else np.nan
                    self.mb[q][0, c] += x
                    self.mb[q][1, c] += x * x
            for n, p in self.params.items():
                p.copy_(self.star[n])
            if self.eval is not None:
                if self.eval_moments[q] is None:
                    self.eval_moments[q] = Moments(self.chains, len(self.at_anchor))
                self.eval_moments[q].update(np.stack(ev), losses[q])

    def result(self, q: int) -> Observed:
        m = self.eval_moments[q]
        mb_mean = mb_var = None
        if self.obs.minibatch and self.mb_count:
            k = self.mb_count
            mb_mean = self.mb[q][0] / k
            mb_var = (self.mb[q][1] - k * mb_mean**2) / max(k - 1, 1)
        return Observed(draws=self.mb_count, eval_mean=None if m is None else m.mean,
                        eval_var=None if m is None else m.var, eval_cov=None if m is None else m.cov_with_loss,
                        eval_at_anchor=self.at_anchor, minibatch_mean=mb_mean, minibatch_var=mb_var)


class _Cancelled(Exception):
    """Raised in a worker thread when another one failed or the call was interrupted."""


def run_chains(strategy: Strategy, kernel: ModuleType, cfg: SamplerConfig, layouts: Sequence[Layout],
               anchors: Sequence[torch.Tensor], identities: Sequence[str], source: BatchSource, data_key: str,
               init_loss: float, progress: Any = None, observer: _Observer | None = None,
               chains: Sequence[int] | None = None, cancel: threading.Event | None = None) -> list[Run]:
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
        losses, grads, star_t = strategy.loss_and_grad(positions, idx, alive, record and paired)
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
                observer.record([s.position for s in states], idx, losses, alive)
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
                          progress: Any = None, observer: _Observer | None = None) -> list[Run]:
    """``run_chains`` with the chains split into ``workers`` contiguous groups, each on its own thread with one
    intra-op thread and its own strategy (``make_strategy()``); the runs are joined in chain order.

    Small CPU ops do not split well across intra-op threads (a cpu-preset forward+backward gains ~1.3× from a
    second one); independent chains on separate threads use every core with no communication. The chains are the
    ones ``run_chains`` walks alone (their streams are keyed by chain index). One group (``workers`` ≤ 1, one
    chain, or an observer, which evaluates through one shared model) runs on the calling thread as it is.
    """
    groups = [g for g in np.array_split(np.arange(cfg.chains), max(1, min(workers, cfg.chains))) if len(g)]
    if len(groups) == 1 or observer is not None:
        return run_chains(make_strategy(), kernel, cfg, layouts, anchors, identities, source, data_key, init_loss,
                          progress, observer)
    threads = torch.get_num_threads()
    cancel = threading.Event()

    def work(k: int, ids: np.ndarray) -> list[Run]:
        torch.set_num_threads(1)  # this thread's OpenMP/MKL setting (restored for the process below)
        return run_chains(make_strategy(), kernel, cfg, layouts, anchors, identities, source, data_key,
                          init_loss, progress if k == 0 else None, None, ids.tolist(), cancel)

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
    return [Run(trace=np.concatenate([p[q].trace for p in parts]),
                diverged_at=np.concatenate([p[q].diverged_at for p in parts]), d_moving=parts[0][q].d_moving,
                star=None if parts[0][q].star is None else np.concatenate([p[q].star for p in parts]))
            for q in range(len(layouts))]
