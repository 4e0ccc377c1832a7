"""Clustering heads by their rLLC trajectories (Wang et al. 2024, App. F.5 and G).

Per layer, each head is one feature vector: its wrLLC curve on the pre-training data and its drLLC curve on
`code`, each over the same checkpoints, concatenated, raw by default (the paper, F.5.1, finds standardising the
curves unnecessary; `standardise="zscore"` keeps only their shape). The curves come from one sampler setting (the
one with the most estimates), and an invalid estimate is filled in from its own head's curve (`Trajectories.filled`)
rather than removing that checkpoint for every head. Three algorithms cluster them for k = 2…7: Euclidean k-means
and Ward agglomerative clustering (scikit-learn) and shape-based k-means with the SBD distance (k-Shape, the
algorithm of tslearn's KShape, here in numpy);
silhouette, Calinski–Harabasz and Davies–Bouldin score each clustering. The number of clusters is a weighted
majority vote of (algorithm, metric) winners, shape-based votes counting `shape_weight` times (the paper trusts
shape-based clustering most); the final labels come from the weighted co-association of the three algorithms at
that k. Also: the split tree as k grows, cross-seed transfer, and agreement with behavioural head types.

scikit-learn is optional: `pip install "rllc[cluster]"`. k-Shape and the agreement scores need only numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from rllc._errors import RllcError
from rllc.model.components import head_index, is_head_name

ALGORITHMS = ("kmeans", "ward", "kshape")
Standardise = Literal["none", "zscore", "minmax"]


def _sklearn() -> Any:
    try:
        import sklearn.cluster
        import sklearn.metrics  # noqa: F401
    except ImportError:
        raise RllcError('clustering needs scikit-learn: pip install "rllc[cluster]"') from None
    return sklearn


class KShape:
    """Shape-based k-means (k-Shape; Paparrizos & Gravano 2015) on univariate series, in numpy.

    Distance: SBD(x, y) = 1 − max_s NCC_s(x, y), the normalised cross-correlation over every shift s (zero-padded,
    by FFT). Centroids: shape extraction (the top eigenvector of Qᵀ Sᵀ S Q over the members aligned to the current
    centroid). The same algorithm as `tslearn.clustering.KShape`, without its numba compile (a minute on a busy
    machine) and its numba/llvmlite/statsmodels dependencies; `tests/test_clustering.py` compares the two.

    Args:
        n_clusters: k. n_init: random restarts (the lowest total SBD wins). max_iter: iterations per restart.
        random_state: seed of the initial random partitions.
    Attributes (after fit):
        labels_ (n,), cluster_centers_ (k, m) z-normalised, inertia_ (sum of member SBD to their centroid).
    """

    def __init__(self, n_clusters: int, n_init: int = 5, max_iter: int = 100, random_state: int = 0) -> None:
        self.n_clusters, self.n_init, self.max_iter, self.random_state = n_clusters, n_init, max_iter, random_state

    def fit(self, X: np.ndarray) -> KShape:
        """Cluster the rows of X (n, m) (z-normalised first)."""
        Z = _znorm(np.asarray(X, dtype=float))
        if not 1 <= self.n_clusters <= Z.shape[0]:
            raise RllcError(f"KShape: cannot make {self.n_clusters} clusters of {Z.shape[0]} series")
        rng = np.random.default_rng(self.random_state)
        best = None
        for _ in range(self.n_init):
            out = self._fit_once(Z, rng)
            if best is None or out[2] < best[2]:
                best = out
        self.labels_, self.cluster_centers_, self.inertia_ = best
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Nearest centroid by SBD for each row of X (n, m) → labels (n,)."""
        return _sbd_matrix(_znorm(np.asarray(X, dtype=float)), self.cluster_centers_).argmin(1)

    def _fit_once(self, Z: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
        n, m = Z.shape
        k = self.n_clusters
        labels = rng.permutation(np.arange(n) % k)  # a random partition with no empty cluster
        centers = np.zeros((k, m))
        for _ in range(self.max_iter):
            for j in range(k):
                members = Z[labels == j]
                centers[j] = _shape_extraction(members, centers[j]) if len(members) else Z[rng.integers(n)]
            D = _sbd_matrix(Z, centers)  # (n, k)
            new = D.argmin(1)
            for j in range(k):  # keep every cluster non-empty: give it the worst-fitting series
                if not (new == j).any():
                    new[int(D[np.arange(n), new].argmax())] = j
            if (new == labels).all():
                break
            labels = new
        D = _sbd_matrix(Z, centers)
        return labels, centers, float(D[np.arange(n), labels].sum())


def _cross_correlation(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """cc[i, j] = Σ_t Y[i, t + s] x[t] for shifts s = j − (m − 1), j = 0 … 2m − 2 (zero-padded). (n, 2m−1)."""
    m = x.shape[-1]
    L = 1 << int(np.ceil(np.log2(2 * m - 1)))
    cc = np.fft.irfft(np.fft.rfft(Y, L, axis=-1) * np.conj(np.fft.rfft(x, L)), L, axis=-1)
    return np.concatenate([cc[..., L - (m - 1):], cc[..., :m]], axis=-1)


def _sbd_matrix(Z: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Shape-based distances (n, k) between the rows of Z (n, m) and C (k, m)."""
    out = np.empty((Z.shape[0], C.shape[0]))
    zn = np.linalg.norm(Z, axis=1)
    for j, c in enumerate(C):
        den = zn * np.linalg.norm(c)
        ncc = _cross_correlation(c, Z) / np.where(den > 0, den, np.inf)[:, None]
        out[:, j] = 1.0 - ncc.max(1)
    return out


def _shape_extraction(members: np.ndarray, center: np.ndarray) -> np.ndarray:
    """The k-Shape centroid of `members` (n_j, m), aligned to the current `center` (m,) first."""
    n, m = members.shape
    if np.linalg.norm(center) > 0:
        shifts = _cross_correlation(center, members).argmax(1) - (m - 1)  # members[t + s] best matches center[t]
        aligned = np.zeros_like(members)
        for i, s in enumerate(shifts):
            if s >= 0:
                aligned[i, : m - s] = members[i, s:]
            else:
                aligned[i, -s:] = members[i, : m + s]
    else:
        aligned = members
    Q = np.eye(m) - 1.0 / m
    M = Q @ (aligned.T @ aligned) @ Q
    c = np.linalg.eigh(M)[1][:, -1]
    if np.linalg.norm(aligned - c) > np.linalg.norm(aligned + c):  # an eigenvector's sign is arbitrary
        c = -c
    return _znorm(c[None])[0]


# ------------------------------------------------------------------------------------------------ features


@dataclass(frozen=True, eq=False)
class Trajectories:
    """The curves of one layer's heads as a feature matrix.

    Attributes:
        heads: head names "l:h" (n,).
        steps: the common checkpoint steps (T,).
        series: the data set of each concatenated block (S,).
        X: features (n, S·T): for each head the S (scaled) curves, concatenated.
        standardise: how each head's curve was scaled ("none": raw values, the paper's choice).
        config_hash: the sampler setting the curves come from ("" when the rows have none).
        filled: (head, data, step) of invalid or missing estimates filled by interpolation in ln(1 + step)
            along that head's curve.
    """

    heads: tuple[str, ...]
    steps: tuple[int, ...]
    series: tuple[str, ...]
    X: np.ndarray
    standardise: str
    config_hash: str = ""
    filled: tuple[tuple[str, str, int], ...] = ()

    def subset_steps(self, steps: Sequence[int]) -> Trajectories:
        """The same heads restricted to `steps` (a subset of self.steps), re-slicing every series block."""
        idx = [self.steps.index(s) for s in steps]
        T = len(self.steps)
        cols = [b * T + i for b in range(len(self.series)) for i in idx]
        return Trajectories(self.heads, tuple(steps), self.series, self.X[:, cols], self.standardise,
                            self.config_hash, tuple(f for f in self.filled if f[2] in set(steps)))


def _scale(v: np.ndarray, how: str) -> np.ndarray:
    if how == "none":
        return v
    if how == "zscore":
        sd = v.std()
        return (v - v.mean()) / (sd if sd > 0 else 1.0)
    if how == "minmax":
        r = v.max() - v.min()
        return (v - v.min()) / (r if r > 0 else 1.0)
    raise RllcError(f"unknown standardise option {how!r}; use none, zscore or minmax")


def head_trajectories(results: pd.DataFrame, layer: int, *, data: Sequence[str] = ("pretrain", "code"),
                      measure: str = "llc", standardise: Standardise = "none",
                      steps: Sequence[int] | None = None, run: str | None = None,
                      max_filled: float = 0.25) -> Trajectories:
    """One layer's per-head curves from the results store, as features for clustering.

    Args:
        results: long-form results (`load_results`).
        layer: the layer whose heads "layer:h" are clustered.
        data: data sets whose curves are concatenated (default wrLLC on pretrain and drLLC on code).
        measure: the stored measure ("llc").
        standardise: per head and per curve, "none" (raw values, the paper's choice and the default), "zscore"
            (shape only) or "minmax".
        steps: checkpoints to use (default: every step at which every head has a stored row for every curve).
        run: the run to take (default: the only one in `results`).
        max_filled: the largest fraction of one curve's checkpoints that may be invalid (and filled).

    Returns:
        Trajectories with X (n_heads, len(data)·T). With several sampler settings (config hashes) in `results`,
        only the one with the most rows is used: estimates of different samplers are never averaged. Invalid
        estimates (diverged or negative) are filled by linear interpolation in ln(1 + step) along their own
        curve and listed in `filled`.
    """
    d = results[results.measure == measure]
    if run is not None:
        d = d[d.run == run]
    elif "run" in d and d.run.nunique() > 1:
        raise RllcError(f"results hold runs {sorted(d.run.unique())}; pass run= to choose one")
    in_layer = d.component.map(lambda c: is_head_name(c) and head_index(c)[0] == layer).astype(bool)
    d = d[in_layer & d.data.isin(data)]
    if d.empty:
        raise RllcError(f"no {measure!r} results for the heads of layer {layer} on {list(data)}; sweep first")
    chash = ""
    if "config_hash" in d:
        chash = str(d.config_hash.value_counts().index[0])
        d = d[d.config_hash == chash]
    d = d.assign(value=pd.to_numeric(d["value"], errors="coerce"))
    if "valid" in d:
        d = d.assign(value=d["value"].where(d.valid.astype(bool)))
    if not np.isfinite(d["value"].to_numpy(float)).any():
        raise RllcError(f"no valid {measure!r} results for the heads of layer {layer} on {list(data)}; sweep first")
    present = d.pivot_table(index=["component", "data"], columns="step", values="run" if "run" in d else "measure",
                            aggfunc="size")
    table = d.pivot_table(index=["component", "data"], columns="step", values="value", aggfunc="mean",
                          dropna=False).reindex(index=present.index, columns=present.columns)
    heads = sorted(d.component.unique(), key=lambda c: head_index(c)[1])
    missing = [(h, s) for h in heads for s in data if (h, s) not in table.index]
    if missing:
        raise RllcError(f"no {measure!r} curve for head {missing[0][0]} on {missing[0][1]!r}; sweep it first")
    common = present.dropna(axis=1).columns if steps is None else pd.Index(list(steps))
    if steps is not None and not set(common) <= set(present.dropna(axis=1).columns):
        raise RllcError(f"steps {sorted(set(common) - set(present.dropna(axis=1).columns))} have no results for "
                        f"every head of layer {layer}")
    if len(common) < 2:
        raise RllcError(f"layer {layer}: fewer than 2 checkpoints have results for every head and data set")
    x = np.log1p(np.asarray(common, dtype=float))
    filled, blocks = [], []
    for h in heads:
        row = []
        for s in data:
            v = table.loc[(h, s), common].to_numpy(float)
            bad = ~np.isfinite(v)
            if bad.mean() > max_filled:
                raise RllcError(f"layer {layer}: head {h} on {s!r} has {int(bad.sum())} of {len(v)} estimates "
                                f"invalid (more than {max_filled:.0%}); rerun those checkpoints or pass steps=")
            if bad.any():
                v = v.copy()
                v[bad] = np.interp(x[bad], x[~bad], v[~bad])
                filled += [(h, s, int(st)) for st in np.asarray(common)[bad]]
            row.append(_scale(v, standardise))
        blocks.append(np.concatenate(row))
    X = np.stack(blocks)
    return Trajectories(tuple(heads), tuple(int(s) for s in common), tuple(data), X, standardise, chash,
                        tuple(filled))


# ------------------------------------------------------------------------------------------------ algorithms


def _znorm(X: np.ndarray) -> np.ndarray:
    sd = X.std(axis=1, keepdims=True)
    return (X - X.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0)


def fit_clusters(X: np.ndarray, k: int, algorithm: str, seed: int = 0) -> tuple[np.ndarray, Any]:
    """Cluster the rows of X (n, p) into k groups.

    Args:
        algorithm: "kmeans" (Euclidean, 10 restarts), "ward" (agglomerative, Ward linkage) or "kshape"
            (k-Shape on z-normalised rows, SBD distance; `KShape` below).
        seed: random state of k-means / KShape.

    Returns:
        (labels (n,) int, the fitted estimator).
    """
    n = X.shape[0]
    if not 1 <= k <= n:
        raise RllcError(f"cannot make {k} clusters of {n} heads")
    sk = _sklearn()
    if algorithm == "kmeans":
        est = sk.cluster.KMeans(n_clusters=k, n_init=10, random_state=seed).fit(X)
        return est.labels_.astype(int), est
    if algorithm == "ward":
        est = sk.cluster.AgglomerativeClustering(n_clusters=k, linkage="ward").fit(X)
        return est.labels_.astype(int), est
    if algorithm == "kshape":
        est = KShape(n_clusters=k, n_init=5, random_state=seed).fit(X)
        return np.asarray(est.labels_, dtype=int), est
    raise RllcError(f"unknown clustering algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")


def cluster_metrics(traj: Trajectories, *, ks: Sequence[int] = range(2, 8),
                    algorithms: Sequence[str] = ALGORITHMS, seed: int = 0) -> pd.DataFrame:
    """Silhouette, Calinski–Harabasz and Davies–Bouldin of each algorithm for each k.

    The scores use Euclidean distances on the features the algorithm clustered (z-normalised rows for KShape).
    k values outside 2…n−1 are skipped; a clustering with fewer distinct labels than k gets NaN scores.

    Returns:
        Rows algorithm, k, silhouette, calinski_harabasz, davies_bouldin, labels (tuple).
    """
    sk = _sklearn()
    n = traj.X.shape[0]
    rows = []
    for alg in algorithms:
        Z = _znorm(traj.X) if alg == "kshape" else traj.X
        for k in ks:
            if not 2 <= k <= n - 1:
                continue
            labels, _ = fit_clusters(traj.X, k, alg, seed)
            ok = len(set(labels)) >= 2
            rows.append({"algorithm": alg, "k": k,
                         "silhouette": float(sk.metrics.silhouette_score(Z, labels)) if ok else np.nan,
                         "calinski_harabasz": float(sk.metrics.calinski_harabasz_score(Z, labels)) if ok else np.nan,
                         "davies_bouldin": float(sk.metrics.davies_bouldin_score(Z, labels)) if ok else np.nan,
                         "labels": tuple(int(x) for x in labels)})
    if not rows:
        raise RllcError(f"no k in {list(ks)} fits {n} heads (need 2 <= k <= n-1)")
    return pd.DataFrame(rows)


_BETTER = {"silhouette": "max", "calinski_harabasz": "max", "davies_bouldin": "min"}


def vote_k(metrics: pd.DataFrame, shape_weight: float = 2.0) -> tuple[int, dict[int, float]]:
    """The number of clusters by weighted majority vote: each (algorithm, metric) votes for its best k; votes of
    "kshape" count `shape_weight`. Ties go to the smaller k.

    Returns:
        (chosen k, votes per k).
    """
    votes: dict[int, float] = {}
    for alg, g in metrics.groupby("algorithm"):
        for metric, how in _BETTER.items():
            s = g.dropna(subset=[metric])
            if s.empty:
                continue
            best = int(s.loc[s[metric].idxmax() if how == "max" else s[metric].idxmin(), "k"])
            votes[best] = votes.get(best, 0.0) + (shape_weight if alg == "kshape" else 1.0)
    if not votes:
        raise RllcError("no clustering produced valid scores to vote on")
    top = max(votes.values())
    return min(k for k, v in votes.items() if v == top), dict(sorted(votes.items()))


def consensus_labels(labelings: Mapping[str, Sequence[int]], k: int, shape_weight: float = 2.0) -> np.ndarray:
    """Labels agreeing with the weighted majority of several labelings of the same items.

    The weighted co-association matrix (fraction of weighted labelings putting i and j together) is clustered
    into k groups by average linkage; labels are renumbered in order of first appearance.

    Returns:
        labels (n,) int.
    """
    sk = _sklearn()
    names = list(labelings)
    L = np.asarray([labelings[a] for a in names])  # (A, n)
    w = np.asarray([shape_weight if a == "kshape" else 1.0 for a in names])
    co = np.einsum("a,aij->ij", w, (L[:, :, None] == L[:, None, :]).astype(float)) / w.sum()  # (n, n)
    if k == 1:
        return np.zeros(L.shape[1], dtype=int)
    est = sk.cluster.AgglomerativeClustering(n_clusters=k, metric="precomputed", linkage="average").fit(1.0 - co)
    return _canonical(est.labels_)


def _canonical(labels: Sequence[int]) -> np.ndarray:
    """Renumber labels 0, 1, … in order of first appearance (so equal partitions have equal labels)."""
    m: dict[int, int] = {}
    return np.asarray([m.setdefault(int(x), len(m)) for x in labels], dtype=int)


@dataclass(frozen=True)
class ClusterConfig:
    """Settings of `cluster_layer`.

    Attributes:
        data: curves concatenated per head. standardise: "none" (raw curves, the paper's F.5.1), "zscore" or
            "minmax".
        ks: numbers of clusters tried. algorithms: any of "kmeans", "ward", "kshape".
        shape_weight: weight of shape-based (KShape) votes. k: force the number of clusters (None: vote).
        seed: random state of k-means and KShape.
    """

    data: tuple[str, ...] = ("pretrain", "code")
    measure: str = "llc"
    standardise: Standardise = "none"
    ks: tuple[int, ...] = (2, 3, 4, 5, 6, 7)
    algorithms: tuple[str, ...] = ALGORITHMS
    shape_weight: float = 2.0
    k: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [a for a in self.algorithms if a not in ALGORITHMS]
        if bad or not self.algorithms:
            raise RllcError(f"unknown clustering algorithm(s) {bad}; use {', '.join(ALGORITHMS)}")


@dataclass(frozen=True, eq=False)
class ClusterResult:
    """The clustering of one layer.

    Attributes:
        layer, heads: the layer and its heads (n,).
        k: the chosen number of clusters; votes: votes per k.
        labels: consensus cluster of each head (n,); by_algorithm: each algorithm's labels at k.
        metrics: `cluster_metrics` frame. trajectories: the features clustered.
    """

    layer: int
    heads: tuple[str, ...]
    k: int
    labels: tuple[int, ...]
    by_algorithm: dict[str, tuple[int, ...]]
    votes: dict[int, float]
    metrics: pd.DataFrame
    trajectories: Trajectories = field(repr=False)

    def assignment(self) -> dict[str, int]:
        """head → cluster."""
        return dict(zip(self.heads, self.labels))

    def frame(self) -> pd.DataFrame:
        """Rows component, layer, cluster, and one column per algorithm."""
        df = pd.DataFrame({"component": self.heads, "layer": self.layer, "cluster": self.labels})
        for a, lab in self.by_algorithm.items():
            df[a] = lab
        return df


def cluster_trajectories(traj: Trajectories, layer: int = -1, config: ClusterConfig = ClusterConfig()
                         ) -> ClusterResult:
    """Cluster prepared trajectories: metrics for every k, a vote for k (unless forced), consensus labels."""
    metrics = cluster_metrics(traj, ks=config.ks, algorithms=config.algorithms, seed=config.seed)
    if config.k is None:
        k, votes = vote_k(metrics, config.shape_weight)
    else:
        k, votes = config.k, {}
    by_alg = {a: tuple(int(x) for x in fit_clusters(traj.X, k, a, config.seed)[0]) for a in config.algorithms}
    labels = consensus_labels(by_alg, k, config.shape_weight)
    return ClusterResult(layer, traj.heads, k, tuple(int(x) for x in labels),
                         {a: tuple(int(x) for x in _canonical(v)) for a, v in by_alg.items()}, votes, metrics, traj)


def cluster_layer(results: pd.DataFrame, layer: int, config: ClusterConfig = ClusterConfig(), *,
                  run: str | None = None) -> ClusterResult:
    """Cluster the heads of one layer by their stored curves (see the module docstring).

    Args:
        results: long-form results (`load_results`).
        layer: which layer's heads.
        config: data, standardisation, ks, algorithms, vote weight, seed.
        run: which run of `results` (default: the only one).

    Returns:
        ClusterResult.
    """
    traj = head_trajectories(results, layer, data=config.data, measure=config.measure,
                             standardise=config.standardise, run=run)
    return cluster_trajectories(traj, layer, config)


# ------------------------------------------------------------------------------------------------ split tree


def split_tree(traj: Trajectories, *, ks: Sequence[int] = range(1, 8), algorithm: str = "ward",
               seed: int = 0) -> pd.DataFrame:
    """How clusters split as k grows (the paper's Figures 18–19).

    Each cluster at k is linked to the cluster at the previous k that shares most of its heads (for Ward the
    clusterings are nested, so this is exact).

    Returns:
        Rows k, cluster (e.g. "3.1": the 2nd cluster at k=3), heads (tuple), parent (cluster id at the previous
        k, "" at the first k). Clusters are numbered by their first head in layer order.
    """
    n = traj.X.shape[0]
    rows, prev = [], None
    for k in [k for k in ks if 1 <= k <= n]:
        labels = np.zeros(n, dtype=int) if k == 1 else _canonical(fit_clusters(traj.X, k, algorithm, seed)[0])
        groups = {c: tuple(h for h, l in zip(traj.heads, labels) if l == c) for c in range(labels.max() + 1)}
        for c, members in groups.items():
            parent = ""
            if prev is not None:
                parent = max(prev, key=lambda p: (len(set(prev[p]) & set(members)), -int(p.split(".")[1])))
            rows.append({"k": k, "cluster": f"{k}.{c}", "heads": members, "parent": parent})
        prev = {f"{k}.{c}": m for c, m in groups.items()}
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ transfer


@dataclass(frozen=True, eq=False)
class TransferResult:
    """Clusters fit on a source run applied to a target run's heads.

    Attributes:
        source_labels: the source heads' clusters; predicted: the target heads' predicted clusters.
        target_labels: the target's own clustering at the same k (same algorithm and seed).
        ari: adjusted Rand index between predicted and target_labels. steps: the steps compared.
    """

    heads: tuple[str, ...]
    source_labels: tuple[int, ...]
    predicted: tuple[int, ...]
    target_labels: tuple[int, ...]
    ari: float
    steps: tuple[int, ...]


def transfer_clusters(source: Trajectories, target: Trajectories, k: int, *, algorithm: str = "kmeans",
                      seed: int = 0) -> TransferResult:
    """Fit clusters on one run's head curves and predict another run's (e.g. another seed's) heads.

    Both are restricted to their common steps. k-means and KShape predict with their centroids; Ward assigns
    each target head to the nearest source cluster mean.

    Returns:
        TransferResult (ARI 1 means the source clusters reproduce the target's own clustering exactly).
    """
    if source.series != target.series or source.standardise != target.standardise:
        raise RllcError("transfer: source and target trajectories must use the same data sets and standardisation")
    common = [s for s in source.steps if s in set(target.steps)]
    if len(common) < 2:
        raise RllcError("transfer: the two runs share fewer than 2 checkpoint steps")
    src, tgt = source.subset_steps(common), target.subset_steps(common)
    labels, est = fit_clusters(src.X, k, algorithm, seed)
    if algorithm == "kmeans":
        pred = est.predict(tgt.X)
    elif algorithm == "kshape":
        pred = est.predict(tgt.X)
    else:
        means = np.stack([src.X[labels == c].mean(0) for c in range(k)])
        pred = ((tgt.X[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    own, _ = fit_clusters(tgt.X, k, algorithm, seed)
    return TransferResult(tgt.heads, tuple(int(x) for x in labels), tuple(int(x) for x in pred),
                          tuple(int(x) for x in own), adjusted_rand_index(pred, own), tuple(common))


# ------------------------------------------------------------------------------------------------ agreement


def _contingency(a: Sequence[Any], b: Sequence[Any]) -> np.ndarray:
    ua, ia = np.unique(np.asarray(a, dtype=object).astype(str), return_inverse=True)
    ub, ib = np.unique(np.asarray(b, dtype=object).astype(str), return_inverse=True)
    m = np.zeros((len(ua), len(ub)), dtype=np.int64)
    np.add.at(m, (ia, ib), 1)
    return m


def adjusted_rand_index(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Adjusted Rand index of two labelings of the same items (Hubert & Arabie 1985); 1 for equal partitions."""
    if len(a) != len(b):
        raise RllcError(f"ARI: labelings have different lengths {len(a)} and {len(b)}")
    m = _contingency(a, b)
    comb = lambda x: x * (x - 1) / 2  # noqa: E731
    s_ij, s_a, s_b = comb(m).sum(), comb(m.sum(1)).sum(), comb(m.sum(0)).sum()
    expected = s_a * s_b / comb(m.sum()) if m.sum() > 1 else 0.0
    top = (s_a + s_b) / 2
    if top == expected:
        return 1.0
    return float((s_ij - expected) / (top - expected))


def purity(clusters: Sequence[Any], types: Sequence[Any]) -> float:
    """Fraction of items whose type is their cluster's most common type."""
    m = _contingency(clusters, types)
    return float(m.max(1).sum() / m.sum())


@dataclass(frozen=True)
class Agreement:
    """Agreement of clusters with behavioural head types over the `n` heads that have both."""

    ari: float
    purity: float
    n: int


def type_agreement(clusters: Mapping[str, int], types: Mapping[str, str] | pd.DataFrame, *,
                   ignore: Sequence[str] = ("unlabelled",)) -> Agreement:
    """Adjusted Rand index and purity of clusters against behavioural head types.

    Args:
        clusters: head → cluster (e.g. `ClusterResult.assignment()`).
        types: head → type, or a frame with columns component and label (`label_heads`).
        ignore: type labels left out of the comparison.

    Returns:
        Agreement (NaN scores when fewer than 2 heads are compared).
    """
    if isinstance(types, pd.DataFrame):
        types = dict(zip(types["component"], types["label"]))
    heads = [h for h in clusters if h in types and types[h] not in set(ignore)]
    if len(heads) < 2:
        return Agreement(float("nan"), float("nan"), len(heads))
    c, t = [clusters[h] for h in heads], [types[h] for h in heads]
    return Agreement(adjusted_rand_index(c, t), purity(c, t), len(heads))


def store_clusters(run_dir: Any, result: ClusterResult, agreement: Agreement | None = None,
                   config: ClusterConfig = ClusterConfig()) -> int:
    """Write a layer's clustering into the run's results store.

    Rows: measure "cluster" (value = consensus cluster) per head; "cluster_ari" and "cluster_purity" for component
    "layer:L" when `agreement` is given. Data is the concatenated data sets joined by "+"; the config hash covers
    `config`. Returns the number of rows inserted.
    """
    from dataclasses import asdict

    from rllc.pipeline.store import ResultRow, ResultStore, config_hash

    cfg = asdict(config)
    chash = config_hash({"clustering": cfg})
    store = ResultStore(run_dir)
    store.put_config(chash, {"clustering": cfg})
    step = max(result.trajectories.steps)
    data = "+".join(config.data)
    rows = [ResultRow(step, h, data, "cluster", chash, float(c), None, True,
                      {"k": result.k, "by_algorithm": {a: v[i] for a, v in result.by_algorithm.items()}})
            for i, (h, c) in enumerate(zip(result.heads, result.labels))]
    if agreement is not None:
        comp = f"layer:{result.layer}"
        ok = bool(np.isfinite(agreement.ari))
        rows += [ResultRow(step, comp, data, "cluster_ari", chash, agreement.ari, None, ok, {"n": agreement.n}),
                 ResultRow(step, comp, data, "cluster_purity", chash, agreement.purity, None, ok, {"n": agreement.n})]
    return store.put_many(rows)
