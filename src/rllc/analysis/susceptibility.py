"""What susceptibilities say about heads: ground-truth checks and the response matrix (Baker et al. 2025).

Pure functions of arrays and tidy frames; the estimates themselves come from `rllc.susceptibilities` (one
checkpoint) or the pipeline's "susceptibility" measure (over training, `rllc susceptibility`), whose store rows
are `susceptibility:PROBE` (value: the probe's mean per-token χ, std: its standard error over chains) and
`contribution:PROBE` (the mean per-token LLC contribution, i.e. the data-refined λ̂ on that probe).

- Ground truth (`token_auc`, `head_aucs`): the synthetic corpus labels every position with the `Pattern` bits that
  explain its next-token prediction (`labels[t]` flags the prediction made at t, the same alignment as the
  per-token loss). A head that implements a pattern should respond most to the positions that pattern predicts,
  so ranking positions by the head's per-token score and asking how well the ranking separates labelled positions
  from the rest is a check with a known answer: ROC AUC 1 is a perfect ranking, 0.5 none.
  The ranking score is −χ by default: with χ_i = −Cov(φ, ℓ_i − L), a token whose loss rises together with the
  head's loss shift φ (the tokens the head helps predict) has χ_i < 0.
- Response matrix (`response_matrices`, `response_svd`, `cluster_by_response`): heads × probe sets of mean
  susceptibilities at each checkpoint; its leading singular vectors over training place heads, and clustering
  them is compared with the behavioural head types by the adjusted Rand index (`type_agreement`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rllc._errors import RllcError
from rllc.data.synthetic import Pattern
from rllc.model.components import head_index, is_head_name

SUSCEPTIBILITY = "susceptibility:"
CONTRIBUTION = "contribution:"

# The positions whose prediction a head type implements, as Pattern bits. A previous-token head is the first half
# of the induction circuit (its output at the token after an earlier occurrence is what the induction head's key
# reads, K-composition), so on the synthetic corpus its pattern is the induction one too; the current-token and
# multigram types have no synthetic family of their own in a model trained on the cpu preset's mixture.
TYPE_PATTERNS: dict[str, int] = {
    "induction": int(Pattern.INDUCTION | Pattern.REPEAT),
    "previous-token": int(Pattern.INDUCTION | Pattern.REPEAT),
}


def _sklearn_metrics() -> Any:
    try:
        import sklearn.metrics
    except ImportError:
        raise RllcError('this analysis needs scikit-learn: pip install "rllc[cluster]"') from None
    return sklearn.metrics


def _aligned(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) flattened over the positions both have; per-token arrays of T = n_ctx − 1 predictions
    line up with the first T labels (the last label, of no prediction, is always 0)."""
    s, lab = np.asarray(scores, dtype=float), np.asarray(labels)
    if s.ndim != 2 or lab.ndim != 2 or s.shape[0] != lab.shape[0] or s.shape[1] > lab.shape[1]:
        raise RllcError(f"per-token scores of shape {s.shape} do not match labels of shape {lab.shape}; "
                        "pass the probe's (n_seq, T) scores with its (n_seq, n_ctx) labels")
    lab = lab[:, : s.shape[1]]
    keep = np.isfinite(s)
    return s[keep], lab[keep]


def token_auc(scores: np.ndarray, labels: np.ndarray, pattern: int, *, sign: float = -1.0) -> float:
    """ROC AUC of ranking positions by `sign × scores` against the positions labelled with any bit of `pattern`.

    Args:
        scores: (n_seq, T) per-token values (χ, contributions); NaN positions are left out.
        labels: (n_seq, ≥ T) int Pattern bits of the same sequences (`SyntheticBatch.labels`).
        pattern: Pattern bits (e.g. `Pattern.INDUCTION | Pattern.REPEAT`).
        sign: −1 ranks the most negative values first (the default for χ), +1 the largest.

    Returns:
        The AUC in [0, 1] (`sklearn.metrics.roc_auc_score`).
    """
    s, lab = _aligned(scores, labels)
    pos = (lab & int(pattern)) != 0
    if pos.all() or not pos.any():
        raise RllcError(f"the probe has {'only' if pos.any() else 'no'} positions labelled {Pattern(pattern)!r}; "
                        "an AUC needs both (use a labelled synthetic probe such as synthetic.induction)")
    return float(_sklearn_metrics().roc_auc_score(pos, sign * s))


def head_aucs(per_token: Mapping[str, np.ndarray], labels: np.ndarray, patterns: Mapping[str, int], *,
              sign: float = -1.0) -> pd.DataFrame:
    """`token_auc` of each head with a pattern.

    Args:
        per_token: component -> (n_seq, T) per-token values on one labelled probe.
        labels: (n_seq, n_ctx) Pattern bits of that probe.
        patterns: component -> Pattern bits it is expected to respond to (e.g. from `type_patterns`); heads
            without one are skipped.

    Returns:
        One row per head: component, pattern (its name), auc, positives, negatives.
    """
    rows = []
    for comp, pattern in patterns.items():
        if comp not in per_token:
            continue
        s, lab = _aligned(per_token[comp], labels)
        pos = (lab & int(pattern)) != 0
        rows.append({"component": comp, "pattern": str(Pattern(pattern).name or int(pattern)),
                     "auc": token_auc(per_token[comp], labels, pattern, sign=sign),
                     "positives": int(pos.sum()), "negatives": int((~pos).sum())})
    return pd.DataFrame(rows, columns=["component", "pattern", "auc", "positives", "negatives"])


def control_aucs(per_token: Mapping[str, np.ndarray], labels: np.ndarray, patterns: Mapping[str, int],
                 types: Mapping[str, str], *, sign: float = -1.0) -> pd.DataFrame:
    """`token_auc` of the control heads: those with a type but no pattern (`types` minus `patterns`), against the
    union of the typed heads' patterns. A score specific to what a head does ranks the labelled positions well for
    its own head and not for these.

    Returns:
        One row per control head with values: component, type, pattern, auc.
    """
    union = int(np.bitwise_or.reduce([int(p) for p in patterns.values()])) if patterns else 0
    rows = [{"component": c, "type": t, "pattern": str(Pattern(union).name or union),
             "auc": token_auc(per_token[c], labels, union, sign=sign)}
            for c, t in types.items() if c not in patterns and c in per_token and union]
    return pd.DataFrame(rows, columns=["component", "type", "pattern", "auc"])


def type_patterns(types: Mapping[str, str]) -> dict[str, int]:
    """component -> Pattern bits for the heads whose behavioural type has one (`TYPE_PATTERNS`)."""
    return {c: TYPE_PATTERNS[t] for c, t in types.items() if t in TYPE_PATTERNS}


# ------------------------------------------------------------------------------------------------ response matrix


def response_matrices(results: pd.DataFrame, *, measure: str = SUSCEPTIBILITY,
                      components: Sequence[str] | None = None) -> dict[int, pd.DataFrame]:
    """The response matrix at every checkpoint from store rows.

    Args:
        results: rows as `rllc.load_results` returns them (columns step, component, measure, value, ...), of one
            sampling data set and one settings hash.
        measure: the measure prefix ("susceptibility:" or "contribution:").
        components: the rows (default: every component, heads in layer, head order).

    Returns:
        step -> DataFrame (components × probes) of values; steps where some entry is missing are left out.
    """
    d = results[results.measure.str.startswith(measure)]
    if d.empty:
        return {}
    d = d.assign(probe=d.measure.str.slice(len(measure)))
    if d.duplicated(["step", "component", "probe"]).any():
        raise RllcError("the rows hold several data sets or settings for one (step, component, probe); "
                        "select one data set and one config hash first")
    comps = list(components) if components is not None else sorted(d.component.unique(), key=_component_order)
    probes = list(dict.fromkeys(d.probe))
    out = {}
    for step, g in d.groupby("step"):
        m = g.pivot(index="component", columns="probe", values="value").reindex(index=comps, columns=probes)
        if m.notna().all().all():
            out[int(step)] = m
    return out


def _component_order(c: str) -> tuple:
    parts = c.split(":")
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return (0, int(parts[0]), int(parts[1]))
    return (1, c)


def response_svd(matrix: np.ndarray, *, center: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Singular value decomposition of a response matrix.

    Args:
        matrix: (H, P) heads × probes (or heads × (checkpoints·probes) for the matrix over training).
        center: subtract each column's mean over heads first (what separates heads, not what they share).

    Returns:
        (U (H, r), S (r,), Vt (r, P)) with S descending, r = min(H, P).
    """
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or not np.isfinite(m).all():
        raise RllcError(f"a response matrix must be a finite 2-d array, got shape {m.shape}")
    if center:
        m = m - m.mean(axis=0, keepdims=True)
    return np.linalg.svd(m, full_matrices=False)


def over_training(matrices: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """The response matrices of several checkpoints side by side: heads × (step, probe), each checkpoint's
    block scaled to unit Frobenius norm so late checkpoints (larger χ) do not drown early ones."""
    if not matrices:
        raise RllcError("no response matrix to combine")
    blocks = []
    for step, m in sorted(matrices.items()):
        norm = float(np.linalg.norm(m.to_numpy()))
        blocks.append((m / norm if norm > 0 else m).set_axis(pd.MultiIndex.from_product([[step], m.columns]),
                                                             axis=1))
    return pd.concat(blocks, axis=1)


def cluster_by_response(matrix: pd.DataFrame | np.ndarray, k: int, *, n_vectors: int = 2,
                        seed: int = 0) -> np.ndarray:
    """Cluster heads by their coordinates on the leading singular vectors of a response matrix.

    Args:
        matrix: (H, P) response matrix (e.g. `over_training(...)`), rows the heads.
        k: the number of clusters.
        n_vectors: leading left singular vectors used (scaled by their singular values).
        seed: k-means seed.

    Returns:
        (H,) integer cluster labels (k-means, scikit-learn, 20 restarts).
    """
    m = np.asarray(matrix, dtype=float)
    if not 1 <= k <= m.shape[0]:
        raise RllcError(f"cannot make {k} clusters of {m.shape[0]} heads")
    u, s, _ = response_svd(m)
    r = max(1, min(n_vectors, len(s)))
    coords = u[:, :r] * s[:r]
    try:
        from sklearn.cluster import KMeans
    except ImportError:
        raise RllcError('clustering needs scikit-learn: pip install "rllc[cluster]"') from None
    return KMeans(n_clusters=k, n_init=20, random_state=seed).fit_predict(coords)


def type_agreement(clusters: Sequence[int], types: Sequence[str]) -> float:
    """Adjusted Rand index between cluster labels and behavioural head types (1: the same partition, ≈ 0: chance)."""
    if len(clusters) != len(types):
        raise RllcError(f"{len(clusters)} cluster labels for {len(types)} head types")
    return float(_sklearn_metrics().adjusted_rand_score(list(types), list(clusters)))


# ------------------------------------------------------------------------------------------------ one run


@dataclass
class GroundTruth:
    """The susceptibility checks of one run (`check_run`).

    Attributes:
        data, config_hash: the sampling data set and settings of the susceptibilities checked.
        step: the last checkpoint (where the AUCs are taken).
        aucs: per (labelled synthetic probe, typed head): probe, component, type, pattern, auc (of −χ),
            auc_standardized (of −r, r_i = −Corr(φ, ℓ_i) the standardised susceptibility; NaN for stores written
            before it was recorded), auc_contribution (of the per-token LLC contribution), chi_snr (median |χ_i − mean χ| / s.e. over its
            tokens: below ~2 the per-token values are mostly sampling noise; pure noise with 4 chains gives ~0.8),
            auc_ablation (of the head's own per-token mean-ablation effect at w*, `per_token_ablation_effects`
            with the means of 64 pre-training windows: what a score that measured exactly what the head does to
            each token's loss would reach — the reference for −χ), auc_loss (of −ℓ_i(w*), the loss at w* alone:
            the labelled positions are the well-predicted ones, so a score that merely follows the loss reaches
            this for every head), positives, negatives.
        controls: per (labelled probe, control head: a typed head without a pattern): probe, component, type,
            pattern (the union of the typed heads'), auc (of −χ), auc_ablation — what a non-specific score gives.
        clusters: per head: component, type, cluster (k-means on the response matrix over training).
        ari: adjusted Rand index of those clusters against the types (None when it cannot be formed).
        checkpoints: how many checkpoints the response matrix over training spans.
        sampler: the sampler the susceptibilities were estimated with, in words ("4 chains × 20 draws, batch 8").
    """

    data: str
    config_hash: str
    step: int
    aucs: pd.DataFrame
    clusters: pd.DataFrame
    ari: float | None
    checkpoints: int
    notes: list[str] = field(default_factory=list)
    sampler: str = "?"
    controls: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["probe", "component", "type", "pattern", "auc", "auc_ablation"]))

    def lines(self) -> list[str]:
        """One-line summaries (what `rllc demo` prints)."""
        out = []
        for probe, g in self.aucs.groupby("probe", sort=False):
            heads = ", ".join(f"{c} ({t}) {a:.2f}" + (f" / {b:.2f}" if np.isfinite(b) else "")
                              for c, t, a, b in zip(g.component, g.type, g.auc, g.auc_standardized))
            std = " / of the standardised −r = Corr(φ, ℓ_i)" if np.isfinite(g.auc_standardized).any() else ""
            out.append(f"susceptibility ground truth at step {self.step}, {probe}: ROC AUC of −χ{std} against the "
                       f"labelled positions: {heads} (target ≥ 0.8; sampler {self.sampler}; median per-token "
                       f"|χ − mean χ|/s.e. {g.chi_snr.median():.2f})")
            out.append(f"  beside it, {probe}: AUC of each head's own per-token mean-ablation effect "
                       + ", ".join(f"{c} {a:.2f}" for c, a in zip(g.component, g.auc_ablation))
                       + f"; of the loss at w* alone (−ℓ_i(w*)) {g.auc_loss.iloc[0]:.2f}"
                       + _control_words(self.controls[self.controls.probe == probe]))
        if self.ari is not None:
            out.append(f"response matrix over {self.checkpoints} checkpoints: heads clustered on its leading singular "
                       f"vectors agree with the head types at adjusted Rand index {self.ari:.2f}")
        return out + self.notes


def _control_words(c: pd.DataFrame) -> str:
    if c.empty:
        return ""
    return (f"; control heads (other types: {', '.join(c.component)}) −χ {c.auc.min():.2f}–{c.auc.max():.2f}, "
            f"ablation {c.auc_ablation.min():.2f}–{c.auc_ablation.max():.2f}")


def check_run(run_dir: str | Path, *, results: pd.DataFrame | None = None) -> GroundTruth | None:
    """The ground-truth AUCs at the last checkpoint and the response-matrix clustering of a run's stored
    susceptibilities (those of the pre-training data when there, with the most rows), against the head types
    stored by `rllc heads`. None when the run has no susceptibilities.

    Args:
        run_dir: the run directory.
        results: its rows with `extra` (default: read from its store).
    """
    from rllc.analysis.ablation import head_z_means, per_token_ablation_effects, per_token_loss
    from rllc.pipeline.data import probe_labels, resolve_data
    from rllc.pipeline.store import ResultStore
    from rllc.train import load_run

    store = ResultStore(run_dir, readonly=True)
    results = store.frame(with_extra=True) if results is None else results
    sus, data, chash = select_rows(results)
    if sus.empty:
        return None
    pr = store.configs().get(chash, {}).get("probes", {})
    types = head_families(results)
    patterns = type_patterns(types)
    last = int(sus.step.max())
    run = load_run(run_dir)
    rows, ctrl_rows, notes = [], [], []
    chi_rows = sus[(sus.step == last) & sus.measure.str.startswith(SUSCEPTIBILITY)]
    model = None
    for key, spec in zip(pr.get("keys", []), pr.get("specs", [])):
        labels = probe_labels(run, spec, pr["n_samples"], seed=pr["seed"], split=pr["split"])
        if labels is None or not patterns:
            continue
        d = chi_rows[chi_rows.measure == f"{SUSCEPTIBILITY}{key}"]
        every = {c: store.arrays((last, c, data, m, chash)) for c, m in zip(d.component, d.measure)
                 if c in types and is_head_name(c)}
        arrays = {c: a for c, a in every.items() if c in patterns}
        if model is None:  # the reference scores: the heads' own ablation effects at w*, the loss at w* alone
            model = run.model_at(last)
            means = head_z_means(model, run.sample_tokens("pretrain", 64, seed=0))
        tokens = resolve_data(run, spec, pr["n_samples"], seed=pr["seed"], split=pr["split"])[0]
        heads = list(every)
        effects = dict(zip(heads, per_token_ablation_effects(model, tokens, [head_index(c) for c in heads],
                                                             means=means).numpy()))
        loss = per_token_loss(model, tokens).numpy()
        try:
            t = head_aucs({c: a["chi"] for c, a in arrays.items()}, labels, patterns)
            ts = head_aucs({c: a["chi_std"] for c, a in arrays.items() if "chi_std" in a}, labels, patterns)
            tc = head_aucs({c: a["contribution"] for c, a in arrays.items()}, labels, patterns, sign=+1.0)
            ta = head_aucs(effects, labels, {c: p for c, p in patterns.items() if c in arrays}, sign=+1.0)
            tl = {p: token_auc(loss, labels, p) for p in set(patterns.values())}
            other = {c: types[c] for c in every}
            cc = control_aucs({c: a["chi"] for c, a in every.items()}, labels, patterns, other)
            ca = control_aucs(effects, labels, patterns, other, sign=+1.0)
        except RllcError as e:
            notes.append(f"{key}: {e}")
            continue
        ctrl_rows.append(cc.assign(probe=key, auc_ablation=ca.auc.to_numpy()))
        # How well each token's χ is resolved: the median over tokens of |χ_i − mean_j χ_j| / its standard error
        # over chains (the token-dependent part: χ's constant Cov(φ, L) is shared by every token of the probe).
        snr = {c: float(np.nanmedian(np.abs(a["chi"] - np.nanmean(a["chi"])) / a["chi_se"])) if "chi_se" in a
               else np.nan for c, a in arrays.items()}
        rows.append(t.assign(probe=key, type=t.component.map(types),
                             auc_standardized=t.component.map(dict(zip(ts.component, ts.auc))).astype(float),
                             auc_contribution=tc.auc.to_numpy(), chi_snr=t.component.map(snr),
                             auc_ablation=ta.auc.to_numpy(), auc_loss=t.component.map(patterns).map(tl)))
    cols = ["probe", "component", "type", "pattern", "auc", "auc_standardized", "auc_contribution", "chi_snr",
            "auc_ablation", "auc_loss", "positives", "negatives"]
    aucs = pd.concat(rows)[cols] if rows else pd.DataFrame(columns=cols)
    ccols = ["probe", "component", "type", "pattern", "auc", "auc_ablation"]
    controls = pd.concat(ctrl_rows)[ccols].reset_index(drop=True) if ctrl_rows else pd.DataFrame(columns=ccols)
    heads = sorted({c for c in chi_rows.component if c in types}, key=_component_order)
    mats = response_matrices(sus[sus.measure.str.startswith(SUSCEPTIBILITY)], components=heads)
    clusters, ari = pd.DataFrame(columns=["component", "type", "cluster"]), None
    k = len({types[c] for c in heads})
    if mats and 2 <= k < len(heads):
        labels_k = cluster_by_response(over_training(mats), k)
        clusters = pd.DataFrame({"component": heads, "type": [types[c] for c in heads], "cluster": labels_k})
        ari = type_agreement(labels_k, clusters.type.tolist())
    elif not types:
        notes.append("no head types stored; `rllc heads RUN` labels them")
    return GroundTruth(data, chash, last, aucs.reset_index(drop=True), clusters, ari, len(mats), notes,
                       sampler_words(store.configs().get(chash, {}).get("sampler", {})), controls)


def sampler_words(sampler: Mapping[str, Any]) -> str:
    """A stored sampler's settings in words: "SGLD ε 0.001, nβ 30, γ 200, 4 chains × 20 draws, batch 8"."""
    if not sampler:
        return "?"
    g = sampler.get
    return (f"{str(g('sampler', 'sgld')).upper()} ε {g('epsilon', '?')}, nβ {g('nbeta', '?')}, γ {g('gamma', '?')}, "
            f"{g('chains', '?')} chains × {g('draws', '?')} draws after {g('burn_in', '?')} burn-in, batch "
            f"{g('batch_size', '?')}{', paired' if g('paired') else ''}")


def select_rows(results: pd.DataFrame) -> tuple[pd.DataFrame, str | None, str | None]:
    """The susceptibility and contribution rows of one (sampling data set, settings hash): the pair with the most
    rows, preferring the pre-training data. Returns (rows with a `probe` column, data, hash)."""
    d = results[results.measure.str.startswith(SUSCEPTIBILITY) | results.measure.str.startswith(CONTRIBUTION)]
    if d.empty:
        return d, None, None
    counts = d.groupby(["data", "config_hash"]).size().reset_index(name="n")
    counts["pre"] = counts.data == "pretrain"
    best = counts.sort_values(["pre", "n"], ascending=False).iloc[0]
    d = d[(d.data == best.data) & (d.config_hash == best.config_hash)]
    return d.assign(probe=d.measure.str.split(":", n=1).str[1]), str(best.data), str(best.config_hash)


def head_families(results: pd.DataFrame) -> dict[str, str]:
    """component -> behavioural family ("induction", "previous-token", "current-token", "multigram") from the
    last stored `head_type` rows (their `extra`), or {} when there are none."""
    t = results[results.measure == "head_type"]
    if t.empty or "extra" not in t:
        return {}
    last = t[t.step == t.step.max()]
    return {c: str(x.get("family") or x.get("label", "")) for c, x in zip(last.component, last.extra)}
