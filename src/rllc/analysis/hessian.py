"""Classical geometric measures to set beside the rLLC (Wang et al. 2024, App. D): Hessian trace, FIM trace, rank.

Every measure works on the Hessian of a mean loss restricted to a component's coordinates: with the component's
d coordinates flattened to a vector u ∈ R^d (everything else held at the checkpoint), H = ∇²_u L(u), and a
Hessian-vector product H v is `jvp(grad(L))` (forward-over-reverse, `torch.func`), never the d × d matrix.

- Hessian trace (Hutchinson 1989): tr H = E_v[vᵀHv] with Rademacher v; the estimate is the mean over probes and
  its standard error the probes' standard deviation / √probes. Weight refinement is the component's mask, data
  refinement is the data (and loss) the Hessian is taken on. Paper defaults: 100 data samples × 50 probes.
- FIM trace: the same estimator on sequences of n_ctx tokens sampled from the checkpoint itself; with targets
  drawn from the model, the expected Hessian of the cross-entropy is the Fisher information. Paper defaults:
  30 samples × 5 probes. Optionally the samples of one reference checkpoint are reused at every checkpoint,
  reweighted by self-normalised importance weights p_w(x)/p_ref(x) (the effective sample size is reported).
- Hessian rank (Ubaru & Saad 2016): #{eigenvalues ≥ η} = tr h(H) with h the step function 1[λ ≥ η]; h is
  approximated on [a, b] by a Jackson-damped Chebyshev series of degree m and tr h(H) by Hutchinson. The series
  is only valid on [a, b]: T_j grows like cosh(j·acosh|t|) outside it, so a single eigenvalue beyond the range
  blows the trace up (the paper's footnote). Every estimate therefore also measures the spectrum's ends (Lanczos)
  and flags a range that does not contain them (`RankEstimate.in_range`). Strategies: "fixed": [a, b] and η as
  given, the paper's (−1000, 6000) and η = 500 (`RankConfig.paper_fixed()`); "adaptive" (the paper's other
  strategy, `RankConfig.paper_adaptive()`): [a, b] = ±|λ_max| (padded), |λ_max| by power iteration, η as given;
  "lanczos" (rllc's): [a, b] from the Lanczos extremes (padded by 5% of the span), η = `threshold_fraction` ×
  λ_max. The paper's presets use 3 data samples, 1 probe and degree 100.

Cheaper demo settings: `HessianConfig(n_samples=16, n_probes=8)`, `RankConfig(degree=40, n_probes=8)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp

from rllc._errors import RllcError
from rllc.llc.losses import LossFn, next_token_loss
from rllc.model.adapters import forward_logits
from rllc.model.components import resolve_masks
from rllc.train.loop import token_cross_entropy

MatVec = Callable[[torch.Tensor], torch.Tensor]  # (d,) -> (d,)


# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class HessianConfig:
    """Settings of a Hutchinson trace (Hessian or FIM).

    Attributes:
        n_samples: data sequences the loss is averaged over (paper: 100 for the Hessian, 30 for the FIM).
        n_probes: Rademacher probes (paper: 50 for the Hessian, 5 for the FIM).
        batch_size: sequences per Hessian-vector product (memory only; the result does not depend on it).
        probe_batch: probes per vmapped Hessian-vector product (speed against memory; the result does not
            depend on it; 1 for the paper's model at n_ctx 1024).
        seed: seeds the probes (and, for the FIM, the sampled sequences).
    """

    n_samples: int = 100
    n_probes: int = 50
    batch_size: int = 32
    probe_batch: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for f in ("n_samples", "n_probes", "batch_size", "probe_batch"):
            if getattr(self, f) < 1:
                raise RllcError(f"hessian config: {f} must be a positive integer, got {getattr(self, f)}")
        if self.n_probes < 2:
            raise RllcError("hessian config: n_probes must be at least 2 to give a standard error")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FIM_DEFAULT = HessianConfig(n_samples=30, n_probes=5)


@dataclass(frozen=True)
class RankConfig:
    """Settings of the Chebyshev step-function rank estimate.

    Attributes:
        strategy: "fixed" (range and threshold as given), "adaptive" (range ±|λ_max|·(1 + pad) with |λ_max| by
            power iteration, threshold as given: the paper's two strategies) or "lanczos" (range from the
            Lanczos extremes, threshold `threshold_fraction` × λ_max: rllc's own).
        degree: Chebyshev degree m (paper: 100).
        range: (a, b) the spectrum must lie in for "fixed" (paper: (−1000, 6000)).
        threshold: η for "fixed" and "adaptive" (paper: 500).
        threshold_fraction: η / λ_max for "lanczos" only (an rllc choice, not a paper setting).
        lanczos_steps: Krylov dimension for the spectrum's ends ("lanczos", and the range check of every
            strategy); power_steps: power iterations for |λ_max| ("adaptive"); pad: relative margin on |λ_max|.
        check_range: measure the spectrum's ends and flag a range that misses them (costs lanczos_steps HVPs).
        n_probes: Rademacher probes for the trace of h(H) (paper: 1; with 1 there is no standard error).
        n_samples, batch_size: data sequences for the loss (paper: 3) and sequences per HVP.
        probe_batch: probes per vmapped HVP (speed against memory; the result does not depend on it).
        seed: seeds probes and the Lanczos / power-iteration start vectors.

    The defaults are the paper's fixed range, threshold and degree on more data and probes than its 3 × 1 (for a
    standard error); `paper_fixed()` / `paper_adaptive()` are its settings exactly.
    """

    strategy: Literal["fixed", "adaptive", "lanczos"] = "fixed"
    degree: int = 100
    range: tuple[float, float] = (-1000.0, 6000.0)
    threshold: float = 500.0
    threshold_fraction: float = 0.01
    lanczos_steps: int = 30
    power_steps: int = 50
    pad: float = 0.05
    check_range: bool = True
    n_probes: int = 20
    n_samples: int = 100
    batch_size: int = 32
    probe_batch: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in ("fixed", "adaptive", "lanczos"):
            raise RllcError(f"rank strategy must be 'fixed', 'adaptive' or 'lanczos', got {self.strategy!r}")
        if self.degree < 1 or self.n_probes < 1 or self.lanczos_steps < 2 or self.probe_batch < 1 \
                or self.power_steps < 1 or self.n_samples < 1:
            raise RllcError("rank config: degree, n_probes, n_samples, power_steps >= 1, lanczos_steps >= 2 and "
                            "probe_batch >= 1 required")
        if len(self.range) != 2 or not all(math.isfinite(x) for x in self.range) or not self.range[0] < self.range[1]:
            raise RllcError(f"rank config: range must be two finite numbers a < b (e.g. -1000,6000), got "
                            f"{','.join(f'{x:g}' for x in self.range)}")
        a, b = self.range
        if self.strategy == "fixed" and not a < self.threshold < b:
            raise RllcError(f"rank config: threshold {self.threshold} must lie inside range ({a}, {b})")
        if not 0 < self.threshold_fraction < 1:
            raise RllcError(f"rank config: threshold_fraction must be in (0, 1), got {self.threshold_fraction}")
        if not self.pad >= 0:
            raise RllcError(f"rank config: pad must be >= 0, got {self.pad}")

    @classmethod
    def paper_fixed(cls, **overrides: Any) -> RankConfig:
        """The paper's fixed strategy (App. D): range (−1000, 6000), η = 500, degree 100, 3 samples, 1 probe."""
        return cls(**{**dict(strategy="fixed", range=(-1000.0, 6000.0), threshold=500.0, degree=100,
                             n_samples=3, n_probes=1, batch_size=3), **overrides})

    @classmethod
    def paper_adaptive(cls, **overrides: Any) -> RankConfig:
        """The paper's adaptive strategy (App. D): range ±|λ_max| from power iteration, η = 500, degree 100,
        3 samples, 1 probe."""
        return cls(**{**dict(strategy="adaptive", threshold=500.0, degree=100, n_samples=3, n_probes=1,
                             batch_size=3), **overrides})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["range"] = list(self.range)
        return d


# ------------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class TraceEstimate:
    """A Hutchinson trace estimate.

    Attributes:
        estimate: mean of the per-probe values vᵀHv.
        std_error: their standard deviation / √n_probes.
        dim: number of coordinates d of the component.
        n_samples: data sequences the loss averaged over.
        probes: the per-probe values.
        ess: effective sample size of the importance weights (reweighted FIM only; else n_samples).
    """

    estimate: float
    std_error: float
    dim: int
    n_samples: int
    probes: tuple[float, ...]
    ess: float


@dataclass(frozen=True)
class RankEstimate:
    """A Chebyshev step-function rank estimate: the number of Hessian eigenvalues ≥ threshold.

    Attributes:
        estimate, std_error: Hutchinson mean and standard error of tr h(H) (NaN with one probe).
        threshold: η used; range: (a, b) the step function was approximated on; degree: Chebyshev degree.
        dim: number of coordinates d. extremes: (λ_min, λ_max) Lanczos Ritz values (None if not measured).
        lambda_max_abs: |λ_max| by power iteration ("adaptive" only, else None).
        in_range: False when the measured spectrum reaches outside `range` (then the estimate is not a count:
            the Chebyshev series diverges there); None when the spectrum was not measured.
    """

    estimate: float
    std_error: float
    threshold: float
    range: tuple[float, float]
    degree: int
    dim: int
    probes: tuple[float, ...]
    extremes: tuple[float, float] | None
    lambda_max_abs: float | None = None
    in_range: bool | None = None

    def warning(self) -> str:
        """"" or one line saying the spectrum is outside the Chebyshev range."""
        if self.in_range is not False or self.extremes is None:
            return ""
        return (f"Hessian spectrum [{self.extremes[0]:.4g}, {self.extremes[1]:.4g}] reaches outside the Chebyshev "
                f"range ({self.range[0]:g}, {self.range[1]:g}): the rank estimate {self.estimate:.4g} is not a "
                f"count; widen the range or use RankConfig.paper_adaptive()")


# ------------------------------------------------------------------------------------------------ the operator


class ComponentHessian:
    """Hessian-vector products of a mean loss in a component's coordinates (flattened to R^d).

    Args:
        model: the network at the point w* (its parameters are read, never changed).
        data: tokens (N, T) (or any tensor whose first axis indexes samples), split into `batch_size` chunks.
        loss_fn: `loss_fn(model, batch) -> scalar mean loss` (default next-token cross-entropy).
        component: a registry name ("1:6", "layer:0", "all"), a list, a dict of boolean masks, or None (all).
        batch_size: samples per HVP; chunk HVPs are averaged with weights chunk size / N (exact for mean losses).
        weights: optional per-sample weights (N,) summing to 1; then the loss is Σ_i weights_i ℓ_i with ℓ_i the
            per-sample mean next-token loss (requires the default loss).
    """

    def __init__(self, model: nn.Module, data: torch.Tensor, loss_fn: LossFn | None = None, *,
                 component: Any = "all", batch_size: int = 32, weights: torch.Tensor | None = None) -> None:
        if not isinstance(data, torch.Tensor) or data.shape[0] < 1:
            raise RllcError("hessian: data must be a non-empty tensor whose first axis indexes samples")
        if weights is not None and loss_fn is not None:
            raise RllcError("hessian: per-sample weights need the default next-token loss")
        self.model = model
        params = {k: v.detach() for k, v in model.named_parameters()}
        masks = resolve_masks(model, component)
        if masks is None:
            masks = {k: torch.ones_like(v, dtype=torch.bool) for k, v in params.items()}
        masks = {k: m for k, m in masks.items() if bool(m.any())}
        if not masks:
            raise RllcError(f"hessian: component {component!r} selects no coordinates")
        self.names = sorted(masks)
        self.masks = masks
        self.frozen = {k: v for k, v in params.items() if k not in masks}
        self.point = {k: params[k] for k in self.names}
        self.index = {k: masks[k].reshape(-1).nonzero()[:, 0] for k in self.names}  # flat positions that move
        self.sizes = [int(self.index[k].numel()) for k in self.names]
        self.dim = sum(self.sizes)
        ref = self.point[self.names[0]]
        self.dtype, self.device = ref.dtype, ref.device
        n = data.shape[0]
        chunks = list(torch.split(data, batch_size))
        if weights is None:
            self.loss_fn = loss_fn or next_token_loss
            self.batches = [(c, c.shape[0] / n) for c in chunks]
        else:
            w = torch.as_tensor(weights, dtype=self.dtype, device=self.device)
            self.loss_fn = _weighted_next_token_loss
            self.batches = [((c, wc), 1.0) for c, wc in zip(chunks, torch.split(w, batch_size))]
        self.n_samples = n

    def _to_params(self, u: torch.Tensor, base: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Scatter a flat (d,) vector into the masked entries of `base` (default zeros) of the moving parameters."""
        out, off = {}, 0
        for name, size in zip(self.names, self.sizes):
            p = self.point[name]
            flat = (torch.zeros_like(p) if base is None else base[name]).reshape(-1)
            out[name] = flat.scatter(0, self.index[name], u[off:off + size]).view(p.shape)
            off += size
        return out

    def _flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([tensors[n].reshape(-1)[self.index[n]] for n in self.names])  # (d,)

    def _loss(self, moving: dict[str, torch.Tensor], batch: Any) -> torch.Tensor:
        return self.loss_fn(_Functional(self.model, {**self.frozen, **moving}), batch)

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector v (d,) → (d,), or a block of vectors (k, d) → (k, d) in one vmapped pass."""
        if v.dim() == 2:
            return torch.func.vmap(self.hvp)(v)
        tangent = self._to_params(v.to(self.dtype))
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for batch, weight in self.batches:
            _, hv = jvp(lambda p: grad(self._loss)(p, batch), (self.point,), (tangent,))
            out = out + weight * self._flatten(hv)
        return out

    def loss(self) -> float:
        """The (weighted) mean loss at the point."""
        with torch.no_grad():
            return float(sum(w * self._loss(self.point, b) for b, w in self.batches))

    def dense(self) -> torch.Tensor:
        """The exact d × d Hessian via `torch.func.hessian` (validation on tiny models only; d ≤ 4000)."""
        if self.dim > 4000:
            raise RllcError(f"hessian: exact Hessian of {self.dim} coordinates is too large; use hutchinson_trace")
        u0 = self._flatten(self.point)

        def f(u: torch.Tensor) -> torch.Tensor:
            moving = self._to_params(u, base=self.point)
            return sum(w * self._loss(moving, b) for b, w in self.batches)

        return torch.func.hessian(f)(u0)  # (d, d)


class _Functional(nn.Module):
    """A view of `model` evaluated at other parameters (for loss functions that call `model(tokens)`)."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor]) -> None:
        super().__init__()
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_params", params)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self._model, self._params, args, kwargs)


def _weighted_next_token_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    tokens, weights = batch  # (B, T), (B,)
    nll = token_cross_entropy(forward_logits(model, tokens), tokens, per_token=True)  # (B, T-1)
    return (weights * nll.mean(dim=1)).sum()


# ------------------------------------------------------------------------------------------------ estimators


def rademacher(n: int, dim: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """n Rademacher probe vectors (n, dim) with entries ±1."""
    return (torch.randint(0, 2, (n, dim), generator=generator) * 2 - 1).to(dtype)


def hutchinson(matvec: MatVec, dim: int, n_probes: int, generator: torch.Generator,
               dtype: torch.dtype = torch.float32, probe_batch: int = 1,
               progress: Callable[[int, int], None] | None = None) -> tuple[float, float, tuple[float, ...]]:
    """Hutchinson's trace estimate of the operator v ↦ matvec(v) on R^dim.

    Args:
        matvec: (dim,) → (dim,); with probe_batch > 1 it must also map blocks (k, dim) → (k, dim).
        probe_batch: probes per matvec call (memory × probe_batch, far fewer passes; the values do not change).
        progress: called as progress(probes_done, n_probes) after each block.
    Returns:
        (mean, standard error, per-probe values vᵀAv).
    """
    vals: list[float] = []
    for V in _blocks(rademacher(n_probes, dim, generator, dtype), probe_batch):
        AV = matvec(V) if V.shape[0] > 1 else matvec(V[0])[None]  # (k, dim)
        vals += [float(x) for x in (V * AV).sum(1)]
        if progress is not None:
            progress(len(vals), n_probes)
    return _mean_se(vals)


def _blocks(V: torch.Tensor, size: int) -> list[torch.Tensor]:
    return list(torch.split(V, max(1, size)))


def _mean_se(vals: list[float]) -> tuple[float, float, tuple[float, ...]]:
    t = torch.tensor(vals, dtype=torch.float64)
    se = float(t.std(unbiased=True) / math.sqrt(len(vals))) if len(vals) > 1 else float("nan")
    return float(t.mean()), se, tuple(vals)


def hessian_trace(model: nn.Module, data: torch.Tensor, *, component: Any = "all", loss_fn: LossFn | None = None,
                  config: HessianConfig = HessianConfig(),
                  progress: Callable[[int, int], None] | None = None) -> TraceEstimate:
    """Weight- and data-refined Hessian trace by Hutchinson's estimator.

    Args:
        model: the checkpoint.
        data: tokens (N, T); the first `config.n_samples` rows are used (data refinement = which data).
        component: the coordinates (weight refinement), as in `ComponentHessian`.
        loss_fn: loss on a batch (default next-token cross-entropy; e.g. `soft_target_loss(ref)`).
        config: samples, probes, batch size, seed.
        progress: called as progress(probes_done, n_probes).

    Returns:
        TraceEstimate of tr ∇²_V L on the data.
    """
    if data.shape[0] < config.n_samples:
        raise RllcError(f"hessian_trace: {config.n_samples} samples asked, the data have {data.shape[0]}")
    op = ComponentHessian(model, data[:config.n_samples], loss_fn, component=component,
                          batch_size=config.batch_size)
    gen = torch.Generator().manual_seed(config.seed)
    est, se, vals = hutchinson(op.hvp, op.dim, config.n_probes, gen, op.dtype, config.probe_batch, progress)
    return TraceEstimate(est, se, op.dim, op.n_samples, vals, float(op.n_samples))


@torch.no_grad()
def sample_from_model(model: nn.Module, n: int, n_ctx: int, generator: torch.Generator, *,
                      first_tokens: torch.Tensor | None = None, batch_size: int = 32,
                      temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences generated autoregressively by the model (ancestral sampling at temperature 1).

    Args:
        model: maps tokens (B, T) to logits (B, T, V); its output width is the vocabulary.
        n, n_ctx: number and length of sequences.
        generator: seeds the draw.
        first_tokens: (n,) the token at position 0 of each sequence (e.g. first tokens of real windows);
            default uniform over the vocabulary.

    Returns:
        (tokens LongTensor (n, n_ctx), log-probabilities (n,) of tokens 1..n_ctx-1 under the model, float64).
    """
    vocab = forward_logits(model, torch.zeros(1, 1, dtype=torch.long)).shape[-1]
    if first_tokens is None:
        first = torch.randint(0, vocab, (n,), generator=generator)
    else:
        first = torch.as_tensor(first_tokens, dtype=torch.long)[:n]
        if first.shape[0] < n:
            raise RllcError(f"sample_from_model: {n} sequences asked, {first.shape[0]} first tokens given")
    seqs, logps = [], []
    for start in range(0, n, batch_size):
        toks = first[start:start + batch_size, None]  # (B, 1)
        logp = torch.zeros(toks.shape[0], dtype=torch.float64)
        for _ in range(n_ctx - 1):
            lp = F.log_softmax(forward_logits(model, toks)[:, -1].double() / temperature, dim=-1)  # (B, V)
            nxt = torch.multinomial(lp.exp(), 1, generator=generator)  # (B, 1)
            logp += lp.gather(1, nxt)[:, 0]
            toks = torch.cat([toks, nxt], dim=1)
        seqs.append(toks)
        logps.append(logp)
    return torch.cat(seqs), torch.cat(logps)


@torch.no_grad()
def sequence_logprob(model: nn.Module, tokens: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """log p(x_1..x_{T-1} | x_0) under the model for each sequence (N, T) → (N,) float64."""
    out = []
    for chunk in torch.split(tokens, batch_size):
        lp = F.log_softmax(forward_logits(model, chunk)[:, :-1].double(), dim=-1)  # (B, T-1, V)
        out.append(lp.gather(2, chunk[:, 1:, None])[..., 0].sum(1))
    return torch.cat(out)


def fim_trace(model: nn.Module, *, component: Any = "all", config: HessianConfig = FIM_DEFAULT,
              n_ctx: int | None = None, samples: tuple[torch.Tensor, torch.Tensor] | None = None,
              first_tokens: torch.Tensor | None = None,
              progress: Callable[[int, int], None] | None = None) -> TraceEstimate:
    """Fisher-information trace: the Hutchinson Hessian trace on data sampled from the model itself.

    Args:
        model: the checkpoint (an rllc Transformer, or any model with `cfg.n_ctx`, or pass `n_ctx`).
        component: the coordinates (weight refinement).
        config: `n_samples` sequences and `n_probes` probes (paper 30 × 5); `seed` seeds sampling and probes.
        n_ctx: sequence length (default the model's n_ctx).
        samples: reuse sequences from a reference checkpoint: (tokens (N, T), their log-probabilities (N,)
            under the generating model, as returned by `sample_from_model`). They are reweighted by
            self-normalised importance weights p_model(x)/p_ref(x); the result's `ess` says how many samples
            the weights are worth. None: draw fresh samples from `model`.
        first_tokens: position-0 tokens for fresh samples (default uniform).
        progress: called as progress(probes_done, n_probes).

    Returns:
        TraceEstimate of the FIM trace in the component's coordinates.
    """
    if samples is None:
        from rllc.model.adapters import adapt, supported

        T = n_ctx or (adapt(model).cfg.n_ctx if supported(model) else getattr(getattr(model, "cfg", None), "n_ctx", None))
        if T is None:
            raise RllcError("fim_trace: pass n_ctx for a model without cfg.n_ctx")
        gen = torch.Generator().manual_seed(config.seed)
        tokens, _ = sample_from_model(model, config.n_samples, T, gen, first_tokens=first_tokens,
                                      batch_size=config.batch_size)
        op = ComponentHessian(model, tokens, component=component, batch_size=config.batch_size)
        ess = float(config.n_samples)
    else:
        tokens, ref_logp = samples
        if tokens.shape[0] < config.n_samples:
            raise RllcError(f"fim_trace: {config.n_samples} samples asked, {tokens.shape[0]} given")
        tokens, ref_logp = tokens[:config.n_samples], ref_logp[:config.n_samples]
        log_w = sequence_logprob(model, tokens, config.batch_size) - ref_logp.double()
        w = torch.softmax(log_w, dim=0)  # self-normalised importance weights (N,)
        ess = float(1.0 / (w ** 2).sum())
        op = ComponentHessian(model, tokens, component=component, batch_size=config.batch_size, weights=w)
    gen = torch.Generator().manual_seed(config.seed + 1)
    est, se, vals = hutchinson(op.hvp, op.dim, config.n_probes, gen, op.dtype, config.probe_batch, progress)
    return TraceEstimate(est, se, op.dim, op.n_samples, vals, ess)


# ------------------------------------------------------------------------------------------------ rank


def lanczos_extremes(matvec: MatVec, dim: int, steps: int, generator: torch.Generator,
                     dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """Smallest and largest Ritz values after `steps` Lanczos iterations (full reorthogonalisation, float64).

    Args:
        matvec: v (dim,) ↦ A v (dim,) in `dtype`.
    Returns:
        (λ_min, λ_max) estimates; they lie inside the true spectrum's range and converge to its ends.
    """
    k = min(steps, dim)
    Q = torch.zeros(k, dim, dtype=torch.float64)
    alpha, beta = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
    q = torch.randn(dim, generator=generator, dtype=torch.float64)
    q /= q.norm()
    m = k
    for j in range(k):
        Q[j] = q
        w = matvec(q.to(dtype)).to(torch.float64)
        alpha[j] = q @ w
        for _ in range(2):  # full reorthogonalisation, twice is enough
            w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
        if j + 1 < k:
            beta[j] = w.norm()
            if beta[j] < 1e-10 * max(1.0, float(alpha[: j + 1].abs().max())):
                m = j + 1  # invariant subspace: the Ritz values are exact eigenvalues
                break
            q = w / beta[j]
    T = torch.diag(alpha[:m]) + torch.diag(beta[: m - 1], 1) + torch.diag(beta[: m - 1], -1)
    ev = torch.linalg.eigvalsh(T)
    return float(ev[0]), float(ev[-1])


def power_iteration(matvec: MatVec, dim: int, steps: int, generator: torch.Generator,
                    dtype: torch.dtype = torch.float32) -> float:
    """|λ|_max of a symmetric operator by power iteration (the Rayleigh quotient's magnitude after `steps`).

    Returns:
        |λ_max| estimate (from below: a Rayleigh quotient never exceeds the largest magnitude).
    """
    q = torch.randn(dim, generator=generator, dtype=torch.float64)
    q /= q.norm()
    lam = 0.0
    for _ in range(steps):
        w = matvec(q.to(dtype)).to(torch.float64)
        lam = float(q @ w)
        n = w.norm()
        if n == 0:
            return 0.0
        q = w / n
    return abs(lam)


def jackson_coefficients(degree: int) -> torch.Tensor:
    """Jackson damping factors g_0..g_m (Di Napoli, Polizzi & Saad 2016), float64 (m+1,)."""
    m = degree
    a = math.pi / (m + 2)
    j = torch.arange(m + 1, dtype=torch.float64)
    return ((1 - j / (m + 2)) * math.sin(a) * torch.cos(j * a) + math.cos(a) * torch.sin(j * a) / (m + 2)) / math.sin(a)


def step_coefficients(threshold: float, lo: float, hi: float, degree: int, damping: bool = True) -> torch.Tensor:
    """Chebyshev coefficients (m+1,) of the step function 1[λ ≥ threshold] on [lo, hi] (Ubaru & Saad 2016 eq. 3.5).

    With t = (2λ − lo − hi)/(hi − lo) ∈ [−1, 1] and t_η the threshold's image: c_0 = acos(t_η)/π,
    c_j = 2 sin(j acos(t_η)) / (jπ); Jackson damping removes the Gibbs oscillations.
    """
    t_eta = (2 * threshold - lo - hi) / (hi - lo)
    th = math.acos(max(-1.0, min(1.0, t_eta)))
    j = torch.arange(1, degree + 1, dtype=torch.float64)
    c = torch.cat([torch.tensor([th / math.pi], dtype=torch.float64), 2 * torch.sin(j * th) / (j * math.pi)])
    return c * jackson_coefficients(degree) if damping else c


def chebyshev_step_trace(matvec: MatVec, dim: int, *, threshold: float, lo: float, hi: float, degree: int,
                         n_probes: int, generator: torch.Generator, dtype: torch.dtype = torch.float32,
                         probe_batch: int = 1,
                         progress: Callable[[int, int], None] | None = None) -> tuple[float, float, tuple[float, ...]]:
    """Hutchinson estimate of tr h(A), h ≈ 1[λ ≥ threshold], for a symmetric A with spectrum inside [lo, hi].

    `progress`, if given, is called as progress(probes_done, n_probes) after each block of probes.

    Returns:
        (mean, standard error, per-probe values).
    """
    if not lo < threshold < hi:
        raise RllcError(f"chebyshev rank: threshold {threshold} must lie inside ({lo}, {hi})")
    c = step_coefficients(threshold, lo, hi, degree).to(dtype)
    scale, shift = 2.0 / (hi - lo), (hi + lo) / (hi - lo)
    vals: list[float] = []
    for V in _blocks(rademacher(n_probes, dim, generator, dtype), probe_batch):  # (k, dim)
        k = V.shape[0]

        def B(X: torch.Tensor) -> torch.Tensor:  # the operator mapped to [-1, 1]
            AX = matvec(X) if k > 1 else matvec(X[0])[None]
            return scale * AX - shift * X

        t_prev, t_cur = V, B(V)  # T_0 V, T_1 V
        acc = c[0] * (V * t_prev).sum(1) + c[1] * (V * t_cur).sum(1)
        for j in range(2, degree + 1):
            t_prev, t_cur = t_cur, 2 * B(t_cur) - t_prev  # T_j = 2 B T_{j-1} − T_{j-2}
            acc = acc + c[j] * (V * t_cur).sum(1)
        vals += [float(x) for x in acc]
        if progress is not None:
            progress(len(vals), n_probes)
    return _mean_se(vals)


def operator_rank(matvec: MatVec, dim: int, config: RankConfig = RankConfig(),
                  dtype: torch.dtype = torch.float32,
                  progress: Callable[[int, int], None] | None = None) -> RankEstimate:
    """Number of eigenvalues ≥ the threshold of a symmetric operator, by the Chebyshev step-function method.

    Args:
        matvec: v (dim,) ↦ A v (dim,).
        dim: the operator's dimension.
        config: strategy, degree, range, threshold, probes, seed.
        progress: called as progress(probes_done, n_probes).

    Returns:
        RankEstimate (the estimate is a real number; round it for a count).
    """
    gen = torch.Generator().manual_seed(config.seed)
    extremes, lam_abs = None, None
    if config.strategy == "lanczos" or config.check_range:
        extremes = lanczos_extremes(matvec, dim, config.lanczos_steps, gen, dtype)
    if config.strategy == "fixed":
        (lo, hi), eta = config.range, config.threshold
    elif config.strategy == "adaptive":
        lam_abs = power_iteration(matvec, dim, config.power_steps, gen, dtype)
        if extremes is not None:  # Lanczos' ends bound |λ|_max from below more tightly than a few power steps
            lam_abs = max(lam_abs, abs(extremes[0]), abs(extremes[1]))
        r = lam_abs * (1 + config.pad)
        lo, hi, eta = -r, r, config.threshold
        if not lo < eta < hi:
            raise RllcError(f"adaptive rank: threshold {eta:g} is outside the spectrum's range ±{r:.4g}: no "
                            f"eigenvalue reaches it (rank 0); lower the threshold")
    else:
        lmin, lmax = extremes
        if lmax <= 0:
            raise RllcError("lanczos rank: the largest eigenvalue is not positive; use strategy='fixed'")
        pad = config.pad * (lmax - lmin) + 1e-12
        lo, hi, eta = lmin - pad, lmax + pad, config.threshold_fraction * lmax
    est, se, vals = chebyshev_step_trace(matvec, dim, threshold=eta, lo=lo, hi=hi, degree=config.degree,
                                         n_probes=config.n_probes, generator=gen, dtype=dtype,
                                         probe_batch=config.probe_batch, progress=progress)
    in_range = None if extremes is None else bool(lo <= extremes[0] and extremes[1] <= hi)
    return RankEstimate(est, se, float(eta), (float(lo), float(hi)), config.degree, dim, vals, extremes, lam_abs,
                        in_range)


def hessian_rank(model: nn.Module, data: torch.Tensor, *, component: Any = "all", loss_fn: LossFn | None = None,
                 config: RankConfig = RankConfig(),
                 progress: Callable[[int, int], None] | None = None) -> RankEstimate:
    """Weight- and data-refined Hessian rank (eigenvalues ≥ threshold) by the Chebyshev step-function method.

    Args:
        model, data, component, loss_fn: as in `hessian_trace` (the first `config.n_samples` rows of data).
        config: RankConfig (`RankConfig.paper_fixed()`: the paper's (−1000, 6000) and 500;
            `RankConfig.paper_adaptive()`: range ±|λ_max| by power iteration; "lanczos": Lanczos extremes).
        progress: called as progress(probes_done, n_probes).

    Returns:
        RankEstimate.
    """
    if data.shape[0] < config.n_samples:
        raise RllcError(f"hessian_rank: {config.n_samples} samples asked, the data have {data.shape[0]}")
    op = ComponentHessian(model, data[:config.n_samples], loss_fn, component=component,
                          batch_size=config.batch_size)
    return operator_rank(op.hvp, op.dim, config, op.dtype, progress)


def exact_hessian(model: nn.Module, data: torch.Tensor, *, component: Any = "all",
                  loss_fn: LossFn | None = None) -> torch.Tensor:
    """The exact Hessian (d, d) of the mean loss on `data` in the component's coordinates (tiny models only)."""
    return ComponentHessian(model, data, loss_fn, component=component, batch_size=data.shape[0]).dense()


__all__: Sequence[str] = [
    "FIM_DEFAULT", "ComponentHessian", "HessianConfig", "RankConfig", "RankEstimate", "TraceEstimate",
    "chebyshev_step_trace", "exact_hessian", "fim_trace", "hessian_rank", "hessian_trace", "hutchinson",
    "jackson_coefficients", "lanczos_extremes", "operator_rank", "power_iteration", "rademacher", "sample_from_model",
    "sequence_logprob", "step_coefficients",
]
