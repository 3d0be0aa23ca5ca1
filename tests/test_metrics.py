"""Ranking metrics against hand-computed answers and against implicit's own evaluation."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from implicit.evaluation import ranking_metrics_at_k
from threadpoolctl import threadpool_limits

from evaluation import ctr, metrics, protocol, report, splits, tuning
from evaluation.metrics import (
    auc_per_user,
    average_precision_at_k,
    average_precision_full,
    bootstrap_ci,
    catalog_coverage,
    hit_matrix,
    hit_rate_at_k,
    implicit_precision,
    ndcg_at_k,
    novelty,
    paired_bootstrap,
    precision_at_k,
    recall_at_k,
    reciprocal_rank_at_k,
    self_information,
    summarize,
)

# Two users, slates of 5. User 0: relevant {2, 7, 9}, hits at ranks 1 and 3.
# User 1: relevant {4}, hit at rank 4.
RECS = np.array([[2, 5, 7, 1, 3],
                 [0, 1, 2, 4, -1]])
RELEVANT = [{2, 7, 9}, {4}]
N_REL = [3, 1]


@pytest.fixture()
def hits():
    return hit_matrix(RECS, RELEVANT)


def test_hit_matrix_from_sets_and_sparse_agree(hits):
    assert hits.tolist() == [[True, False, True, False, False],
                             [False, False, False, True, False]]
    rel = sp.csr_matrix(([1, 1, 1, 1], ([0, 0, 0, 1], [2, 7, 9, 4])), shape=(2, 10))
    assert np.array_equal(hit_matrix(RECS, rel), hits)


def test_padding_is_never_a_hit():
    assert not hit_matrix([[-1, -1]], [{0}]).any()


def test_precision_recall_hand_computed(hits):
    assert precision_at_k(hits, 5).tolist() == [2 / 5, 1 / 5]
    assert precision_at_k(hits, 3).tolist() == [2 / 3, 0.0]
    assert recall_at_k(hits, N_REL, 5).tolist() == [2 / 3, 1.0]
    assert recall_at_k(hits, N_REL, 3).tolist() == [2 / 3, 0.0]


def test_ndcg_hand_computed(hits):
    d = [1 / math.log2(r + 1) for r in range(1, 6)]
    # user 0: DCG = d1 + d3; ideal over min(5, 3) = 3 positions
    # user 1: DCG = d4; ideal over min(5, 1) = 1 position
    expected = [(d[0] + d[2]) / (d[0] + d[1] + d[2]), d[3] / d[0]]
    assert np.allclose(ndcg_at_k(hits, N_REL, 5), expected)
    # at k=2 user 0's ideal has 2 positions, DCG only d1
    assert np.allclose(ndcg_at_k(hits, N_REL, 2), [d[0] / (d[0] + d[1]), 0.0])


def test_average_precision_both_normalisations(hits):
    # user 0: precision at hit ranks 1 and 3 is 1/1 and 2/3
    ap0 = 1 + 2 / 3
    ap1 = 1 / 4
    assert np.allclose(average_precision_at_k(hits, N_REL, 5), [ap0 / 3, ap1 / 1])
    assert np.allclose(average_precision_at_k(hits, [3, 8], 5, normalization="relevant"),
                       [ap0 / 3, ap1 / 8])
    # min(k, |R|): with k = 2 user 0 divides by 2, not 3
    assert np.allclose(average_precision_at_k(hits, N_REL, 2), [1 / 2, 0.0])
    with pytest.raises(ValueError, match="normalization"):
        average_precision_at_k(hits, N_REL, 2, normalization="k")


def test_hit_rate_and_mrr(hits):
    assert hit_rate_at_k(hits, 3).tolist() == [1.0, 0.0]
    assert hit_rate_at_k(hits, 5).tolist() == [1.0, 1.0]
    assert reciprocal_rank_at_k(hits, 5).tolist() == [1.0, 0.25]


def test_k_and_relevance_are_checked(hits):
    with pytest.raises(ValueError, match="exceeds"):
        precision_at_k(hits, 6)
    with pytest.raises(ValueError, match="at least one relevant"):
        recall_at_k(hits, [0, 1], 5)


def test_auc_counts_ties_as_half_and_respects_candidates():
    scores = np.array([[0.9, 0.5, 0.5, 0.1, 2.0]])
    relevant = np.array([[False, True, False, False, False]])
    # positive 0.5 vs negatives 0.9, 0.5, 0.1, 2.0: wins 1, ties 1 -> 1.5 / 4
    assert auc_per_user(scores, relevant).tolist() == [0.375]
    # leave item 4 (a training item) out of the candidates: 1.5 / 3
    candidates = np.array([[True, True, True, True, False]])
    assert auc_per_user(scores, relevant, candidates).tolist() == [0.5]
    assert np.isnan(auc_per_user(scores, np.zeros_like(relevant))[0])


def test_full_average_precision_is_cornacs_map():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    relevant = np.array([[False, True, False, False, True]])
    # relevant at ranks 2 and 5: (1/2 + 2/5) / 2
    assert np.allclose(average_precision_full(scores, relevant), [(1 / 2 + 2 / 5) / 2])
    # ties are ranked pessimistically: the two tied at ranks 2-3 both count as rank 3
    tied = np.array([[0.9, 0.8, 0.8, 0.1]])
    rel = np.array([[False, True, True, False]])
    assert np.allclose(average_precision_full(tied, rel), [(2 / 3 + 2 / 3) / 2])


def test_catalog_coverage_and_novelty():
    recs = np.array([[0, 1], [1, -1]])
    assert catalog_coverage(recs, 4) == 0.5
    info = self_information(np.array([7, 3, 0]), 7)  # log2(8/8), log2(8/4), log2(8/1)
    assert info.tolist() == [0.0, 1.0, 3.0]
    assert novelty(np.array([[0, 1], [2, -1]]), info).tolist() == [0.5, 3.0]


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = np.random.default_rng(0).random(200)
    a = bootstrap_ci(values, 500, seed=7)
    assert a == bootstrap_ci(values, 500, seed=7)
    assert a != bootstrap_ci(values, 500, seed=8)
    assert a[0] < values.mean() < a[1]
    # the interval of a mean shrinks like 1/sqrt(n)
    half = (a[1] - a[0]) / 2
    assert half == pytest.approx(1.96 * values.std() / math.sqrt(200), rel=0.2)
    summary = summarize({"m": np.r_[values, np.nan]}, 500, seed=7)["m"]
    assert (summary["ci_low"], summary["ci_high"]) == a and summary["n_users"] == 200


def test_paired_bootstrap_sees_a_consistent_small_gain():
    rng = np.random.default_rng(1)
    base = rng.random(300)
    better = base + 0.01 + rng.normal(0, 0.005, 300)
    out = paired_bootstrap(better, base, 500, seed=0)
    assert out["ci_low"] > 0 and out["p_le_zero"] == 0.0
    # unpaired intervals of the two means overlap: the pairing is what resolves it
    assert bootstrap_ci(base, 500)[1] > bootstrap_ci(better, 500)[0]


def _implicit_fixture(seed: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    rng = np.random.default_rng(seed)
    n_users, n_items = 120, 80
    popularity = rng.power(3, n_items)
    dense = rng.random((n_users, n_items)) < 0.15 * popularity / popularity.mean()
    user, item = np.nonzero(dense)
    test_mask = rng.random(len(user)) < 0.25
    shape = (n_users, n_items)
    ones = np.ones(len(user), dtype=np.float32)
    train = sp.csr_matrix((ones[~test_mask], (user[~test_mask], item[~test_mask])), shape=shape)
    test = sp.csr_matrix((ones[test_mask], (user[test_mask], item[test_mask])), shape=shape)
    return train, test


@pytest.mark.parametrize("model_cls", [AlternatingLeastSquares, BayesianPersonalizedRanking])
@pytest.mark.parametrize("k", [5, 10])
def test_matches_implicit_ranking_metrics_where_definitions_coincide(model_cls, k):
    train, test = _implicit_fixture()
    with threadpool_limits(1, "blas"):
        model = model_cls(factors=8, iterations=10, random_state=0, num_threads=1)
        model.fit(train, show_progress=False)
    reference = ranking_metrics_at_k(model, train, test, K=k, show_progress=False)
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    ids, _ = model.recommend(users, train[users], N=k, filter_already_liked_items=True)
    hits = hit_matrix(ids, test[users])
    n_rel = np.diff(test[users].indptr)
    # implicit's ndcg and map are per-user means with ideal / AP over min(k, |R_u|)
    assert ndcg_at_k(hits, n_rel, k).mean() == pytest.approx(reference["ndcg"], abs=1e-12)
    assert average_precision_at_k(hits, n_rel, k).mean() == pytest.approx(reference["map"],
                                                                          abs=1e-12)
    # its precision is a micro-average over min(k, |R_u|), not the /k precision we report
    assert implicit_precision(hits, n_rel, k) == pytest.approx(reference["precision"], abs=1e-12)
    assert precision_at_k(hits, k).mean() < reference["precision"]


@pytest.mark.parametrize("module", [metrics, splits, ctr, protocol, report, tuning],
                         ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0
