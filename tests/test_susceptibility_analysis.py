"""The susceptibility analyses (rllc.analysis.susceptibility) on hand-made arrays with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rllc._errors import RllcError
from rllc.analysis.susceptibility import (
    cluster_by_response, control_aucs, head_aucs, over_training, response_matrices, response_svd, token_auc, type_agreement,
    type_patterns,
)
from rllc.data.synthetic import Pattern

pytest.importorskip("sklearn")

IND = int(Pattern.INDUCTION | Pattern.REPEAT)


def _labels() -> np.ndarray:
    lab = np.zeros((2, 5), dtype=np.int32)  # (n_seq, n_ctx); the last column is never labelled
    lab[0, 1:3] = IND
    lab[1, 0] = int(Pattern.INDUCTION)
    lab[1, 2] = int(Pattern.NGRAM)
    return lab


def test_token_auc_counts_pairs_in_the_documented_direction():
    lab = _labels()  # positives: (0,1), (0,2), (1,0); negatives: the other 5 of the first 4 columns
    chi = np.array([[0.0, -3.0, -2.0, 0.5], [-1.0, 0.2, -2.5, 0.1]])  # (n_seq, T = n_ctx - 1)
    # −χ ranks: positives 3, 2, 1; negatives −0, −0.5, −0.2, 2.5, −0.1. Pairs won: 3 beats all 5, 2 beats 4 of 5
    # (loses to 2.5), 1 beats 4 of 5: 13 of 15.
    assert token_auc(chi, lab, IND) == pytest.approx(13 / 15)
    assert token_auc(chi, lab, IND, sign=+1) == pytest.approx(2 / 15)
    # Only the NGRAM-labelled position (1, 2): −χ = 2.5 beats 6 of the other 7 (loses to 3).
    assert token_auc(chi, lab, int(Pattern.NGRAM)) == pytest.approx(6 / 7)


def test_token_auc_drops_nan_positions_and_refuses_one_class():
    lab = _labels()
    chi = np.array([[np.nan, -3.0, -2.0, 0.5], [-1.0, 0.2, -2.5, 0.1]])
    # (0, 0) was a negative every positive beat: 10 of the 12 pairs left
    assert token_auc(chi, lab, IND) == pytest.approx(10 / 12)
    with pytest.raises(RllcError, match="no positions labelled"):
        token_auc(chi, lab, int(Pattern.DYCK))
    with pytest.raises(RllcError, match="do not match"):
        token_auc(chi[:1], lab, IND)


def test_control_aucs_score_the_heads_of_other_types_against_the_typed_heads_patterns():
    lab = _labels()
    perfect = np.where((lab[:, :4] & IND) != 0, 1.0, -1.0)  # e.g. an ablation effect that is exactly the labels
    types = {"1:0": "induction", "0:0": "current-token", "1:1": "multigram", "0:2": "current-token"}
    patterns = type_patterns(types)
    per_token = {"1:0": perfect, "0:0": perfect, "1:1": -perfect}  # 0:2 has no values: left out
    assert head_aucs(per_token, lab, patterns, sign=+1.0).auc.tolist() == [1.0]
    df = control_aucs(per_token, lab, patterns, types, sign=+1.0)
    assert list(df.component) == ["0:0", "1:1"] and list(df.type) == ["current-token", "multigram"]
    assert df.auc.tolist() == [1.0, 0.0]  # a score as good for a control head is not specific to its own head
    assert set(df.pattern) == {"INDUCTION|REPEAT"}
    assert control_aucs(per_token, lab, {}, types).empty


def test_head_aucs_uses_each_heads_pattern_and_skips_untyped_heads():
    lab = _labels()
    perfect = np.where((lab[:, :4] & IND) != 0, -1.0, 1.0)
    patterns = type_patterns({"1:0": "induction", "0:3": "previous-token", "0:0": "current-token"})
    assert patterns == {"1:0": IND, "0:3": IND}
    df = head_aucs({"1:0": perfect, "0:3": -perfect}, lab, patterns)
    assert list(df.component) == ["1:0", "0:3"]
    assert df.auc.tolist() == [1.0, 0.0]
    assert df.positives.tolist() == [3, 3] and df.negatives.tolist() == [5, 5]


def _frame() -> pd.DataFrame:
    rows = []
    for step, scale in [(0, 1.0), (10, 4.0)]:
        for comp, v in {"0:0": (1.0, 0.0), "0:1": (0.9, 0.1), "1:0": (0.0, 1.0), "1:1": (0.1, 0.8)}.items():
            for probe, x in zip(["code", "synthetic.induction"], v):
                rows.append({"step": step, "component": comp, "measure": f"susceptibility:{probe}", "value": scale * x})
    rows.append({"step": 20, "component": "0:0", "measure": "susceptibility:code", "value": 1.0})  # incomplete
    return pd.DataFrame(rows)


def test_response_matrices_pivot_heads_by_probes_and_skip_incomplete_steps():
    mats = response_matrices(_frame())
    assert sorted(mats) == [0, 10]
    m = mats[10]
    assert list(m.index) == ["0:0", "0:1", "1:0", "1:1"] and list(m.columns) == ["code", "synthetic.induction"]
    assert m.loc["1:1", "synthetic.induction"] == pytest.approx(3.2)
    dup = pd.concat([_frame(), _frame()])
    with pytest.raises(RllcError, match="several data sets"):
        response_matrices(dup)


def test_response_svd_of_a_rank_one_matrix_after_centring():
    u = np.array([1.0, -1.0, 2.0, -2.0])
    v = np.array([3.0, 4.0]) / 5
    m = np.outer(u, v) * 7 + np.array([10.0, -5.0])  # a shared column offset, removed by centring
    _, s, vt = response_svd(m)
    assert s[0] == pytest.approx(7 * np.linalg.norm(u))
    assert s[1] == pytest.approx(0.0, abs=1e-9)
    assert abs(vt[0] @ v) == pytest.approx(1.0)


def test_clusters_of_the_response_over_training_recover_the_types():
    mats = response_matrices(_frame())
    big = over_training(mats)
    assert big.shape == (4, 4)
    assert np.linalg.norm(big[10].to_numpy()) == pytest.approx(1.0)  # each checkpoint's block has unit norm
    clusters = cluster_by_response(big, 2)
    types = ["multigram", "multigram", "induction", "induction"]
    assert type_agreement(clusters, types) == pytest.approx(1.0)
    assert type_agreement([0, 1, 0, 1], types) < 0  # a partition crossing the types scores below chance
    with pytest.raises(RllcError, match="cannot make 5 clusters"):
        cluster_by_response(big, 5)


def test_ground_truth_lines_name_both_scores_and_the_sampler():
    from rllc.analysis.susceptibility import GroundTruth, sampler_words

    words = sampler_words({"sampler": "sgld", "epsilon": 0.001, "nbeta": 30.0, "gamma": 200.0, "chains": 4,
                           "draws": 20, "burn_in": 50, "batch_size": 8, "paired": True})
    assert words == "SGLD ε 0.001, nβ 30.0, γ 200.0, 4 chains × 20 draws after 50 burn-in, batch 8, paired"
    aucs = pd.DataFrame({"probe": ["p", "p"], "component": ["1:0", "0:3"], "type": ["induction", "previous-token"],
                         "pattern": ["x", "x"], "auc": [0.55, 0.61], "auc_standardized": [0.71, np.nan],
                         "auc_contribution": [0.6, 0.6], "chi_snr": [0.2, 0.4], "auc_ablation": [0.82, 0.84],
                         "auc_loss": [0.86, 0.86], "positives": [1, 1], "negatives": [1, 1]})
    controls = pd.DataFrame({"probe": ["p", "p"], "component": ["0:0", "1:1"], "type": ["current-token", "multigram"],
                             "pattern": ["x", "x"], "auc": [0.42, 0.57], "auc_ablation": [0.7, 0.43]})
    line, beside = GroundTruth("pretrain", "h", 5, aucs, pd.DataFrame(), None, 1, sampler=words,
                               controls=controls).lines()
    assert "1:0 (induction) 0.55 / 0.71, 0:3 (previous-token) 0.61 (" in line
    assert "standardised" in line and words in line and "s.e. 0.30)" in line  # median snr of 0.2, 0.4
    assert beside == ("  beside it, p: AUC of each head's own per-token mean-ablation effect 1:0 0.82, 0:3 0.84; of "
                      "the loss at w* alone (−ℓ_i(w*)) 0.86; control heads (other types: 0:0, 1:1) −χ 0.42–0.57, "
                      "ablation 0.43–0.70")
