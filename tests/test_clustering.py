"""Clustering of per-head curves on synthetic families with known groups."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rllc._errors import RllcError
from rllc.analysis.clustering import (
    KShape,
    adjusted_rand_index,
    head_trajectories,
    purity,
    type_agreement,
)

STEPS = np.unique(np.round(np.geomspace(1, 5000, 30))).astype(int)
X = np.log1p(STEPS)
FAMILIES = {"sigmoid": lambda: 1 / (1 + np.exp(-3 * (X - 3))), "bump": lambda: np.exp(-((X - 5) ** 2)),
            "decline": lambda: -X / 8}
TRUTH = ["sigmoid", "sigmoid", "bump", "bump", "bump", "decline", "decline", "sigmoid"]


def _results(seed: int, layer: int = 1, scatter: float = 0.2) -> pd.DataFrame:
    """Long-form results of 8 heads in three curve families, on pretrain (wrLLC) and code (drLLC); each head's
    amplitude varies by ±`scatter`."""
    rng = np.random.default_rng(seed)
    rows = []
    for h, fam in enumerate(TRUTH):
        for data, sign in (("pretrain", 1.0), ("code", -0.5)):
            y = 10 + 5 * sign * FAMILIES[fam]() * rng.uniform(1 - scatter, 1 + scatter) + rng.normal(0, 0.03, len(X))
            rows += [dict(run=f"seed{seed}", step=int(s), component=f"{layer}:{h}", data=data, measure="llc",
                          value=float(v), std=0.0, valid=True, config_hash="h") for s, v in zip(STEPS, y)]
    return pd.DataFrame(rows)


def test_agreement_scores():
    assert adjusted_rand_index([0, 0, 1, 1], ["a", "a", "b", "b"]) == 1.0
    assert adjusted_rand_index([0, 1, 0, 1], [0, 0, 1, 1]) < 0
    assert purity([0, 0, 0, 1], ["a", "a", "b", "b"]) == 0.75
    ag = type_agreement({"0:0": 0, "0:1": 0, "0:2": 1, "0:3": 1},
                        pd.DataFrame({"component": ["0:0", "0:1", "0:2", "0:3"],
                                      "label": ["induction", "induction", "n-gram", "unlabelled"]}))
    assert ag.n == 3 and ag.purity == 1.0 and ag.ari == 1.0


def test_kshape_recovers_shapes_regardless_of_scale_and_shift():
    t = np.linspace(0, 1, 40)
    rng = np.random.default_rng(0)
    X_ = np.concatenate([a * np.sin(2 * np.pi * f * t)[None] + b + rng.normal(0, 0.05, (4, 40))
                         for f, a, b in ((1, 3.0, 5.0), (2, 0.5, -1.0), (3, 1.0, 0.0))])
    labels = KShape(3, random_state=0).fit(X_).labels_
    assert adjusted_rand_index(labels, np.repeat([0, 1, 2], 4)) == 1.0


def test_trajectories_shape_and_standardise():
    tr = head_trajectories(_results(0), 1, standardise="zscore")
    assert tr.heads == tuple(f"1:{h}" for h in range(8)) and tr.X.shape == (8, 2 * len(STEPS))
    np.testing.assert_allclose(tr.X[:, : len(STEPS)].mean(1), 0, atol=1e-9)
    raw = head_trajectories(_results(0), 1, standardise="none")
    assert raw.X.mean() == pytest.approx(10, abs=1)
    with pytest.raises(RllcError):
        head_trajectories(_results(0), 0)
    with pytest.raises(RllcError):
        head_trajectories(pd.concat([_results(0), _results(1)]), 1)  # two runs: say which


@pytest.mark.parametrize("standardise, scatter", [("none", 0.05), ("zscore", 0.2)])
def test_cluster_layer_recovers_known_groups(standardise, scatter):
    # Raw curves (the paper's default) separate families whose heads differ little in amplitude; z-scored curves
    # keep only the shape, so they also group heads whose amplitudes differ by ±20%.
    pytest.importorskip("sklearn")
    from rllc.analysis.clustering import ClusterConfig, cluster_layer

    r = cluster_layer(_results(0, scatter=scatter), 1, ClusterConfig(standardise=standardise))
    assert r.k == 3
    assert adjusted_rand_index(r.labels, TRUTH) == 1.0
    for alg, lab in r.by_algorithm.items():
        assert adjusted_rand_index(lab, TRUTH) == 1.0, alg
    m = r.metrics
    assert set(m.algorithm) == {"kmeans", "ward", "kshape"} and set(m.k) == set(range(2, 8))
    best = m.loc[m.groupby("algorithm").silhouette.idxmax()]
    assert (best.k == 3).all()
    assert type_agreement(r.assignment(), dict(zip(r.heads, TRUTH))).ari == 1.0


def test_split_tree_is_nested_for_ward():
    pytest.importorskip("sklearn")
    from rllc.analysis.clustering import split_tree

    tree = split_tree(head_trajectories(_results(0), 1), ks=range(1, 5))
    assert list(tree.groupby("k").size()) == [1, 2, 3, 4]
    by_id = {r.cluster: set(r.heads) for r in tree.itertuples()}
    for r in tree[tree.k > 1].itertuples():
        assert set(r.heads) <= by_id[r.parent]
    k3 = {frozenset(h) for h in tree[tree.k == 3].heads}
    assert k3 == {frozenset(f"1:{i}" for i, f in enumerate(TRUTH) if f == fam) for fam in FAMILIES}


@pytest.mark.parametrize("algorithm", ["kmeans", "ward", "kshape"])
def test_clusters_transfer_across_seeds(algorithm):
    pytest.importorskip("sklearn")
    from rllc.analysis.clustering import transfer_clusters

    src = head_trajectories(_results(0), 1)
    tgt = head_trajectories(_results(1), 1, steps=STEPS[::2])  # another seed, fewer checkpoints
    r = transfer_clusters(src, tgt, 3, algorithm=algorithm)
    assert len(r.steps) == len(STEPS[::2])
    assert r.ari == 1.0 and adjusted_rand_index(r.predicted, TRUTH) == 1.0


def test_store_clusters(tmp_path):
    pytest.importorskip("sklearn")
    from rllc.analysis.clustering import Agreement, cluster_layer, store_clusters
    from rllc.pipeline.store import ResultStore

    r = cluster_layer(_results(0), 1)
    assert store_clusters(tmp_path, r, Agreement(1.0, 1.0, 8)) == 10
    df = ResultStore(tmp_path).frame()
    assert sorted(df.measure.unique()) == ["cluster", "cluster_ari", "cluster_purity"]


@pytest.mark.slow
def test_kshape_matches_tslearn():
    pytest.importorskip("tslearn")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from tslearn.clustering import KShape as TslearnKShape
        from tslearn.metrics import cdist_normalized_cc
    from rllc.analysis.clustering import _sbd_matrix, _znorm

    tr = head_trajectories(_results(0), 1)
    Z = _znorm(tr.X)
    norms = np.linalg.norm(Z, axis=1)
    theirs = 1 - cdist_normalized_cc(Z[:, :, None], Z[:, :, None], norms, norms, False)
    np.testing.assert_allclose(_sbd_matrix(Z, Z), theirs, atol=1e-10)
    a = KShape(3, random_state=0).fit(tr.X).labels_
    b = TslearnKShape(n_clusters=3, random_state=0).fit(Z[:, :, None]).labels_
    assert adjusted_rand_index(a, b) == 1.0


def test_clustering_figures_render(tmp_path):
    pytest.importorskip("sklearn")
    from rllc.analysis.clustering import cluster_layer, split_tree
    from rllc.report.comparisons import plot_cluster_metrics, plot_split_tree

    r = cluster_layer(_results(0), 1)
    assert plot_cluster_metrics(r.metrics, tmp_path / "m.png", chosen_k=r.k).stat().st_size > 1000
    assert plot_split_tree(split_tree(r.trajectories), tmp_path / "t.png").stat().st_size > 1000


def test_trajectories_use_one_sampler_setting_and_fill_an_invalid_estimate():
    df = _results(0)
    other = df[df.step.isin(STEPS[::3])].assign(value=lambda d: d.value * 100, config_hash="other")
    bad = (df.component == "1:2") & (df.data == "pretrain") & (df.step == STEPS[10])
    df.loc[bad, ["valid", "value"]] = [False, -50.0]
    tr = head_trajectories(pd.concat([df, other]), 1)
    assert tr.standardise == "none" and tr.config_hash == "h"  # raw curves, and setting "h" alone
    assert tr.X.max() < 20  # no average with the ×100 setting
    assert tr.steps == tuple(int(s) for s in STEPS)  # the invalid estimate of 1:2 removes no checkpoint
    assert tr.filled == (("1:2", "pretrain", int(STEPS[10])),)
    i = tr.steps.index(int(STEPS[10]))
    assert min(tr.X[2, i - 1], tr.X[2, i + 1]) - 0.5 < tr.X[2, i] < max(tr.X[2, i - 1], tr.X[2, i + 1]) + 0.5
