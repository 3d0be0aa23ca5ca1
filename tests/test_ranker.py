"""Style-aware ranking: candidate pool, cold items, blend weight, score parts, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.ranker import StyleRanker
from recsys.taste import TasteProfiles


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _profiles(vectors: np.ndarray, weights: np.ndarray | None = None) -> TasteProfiles:
    vectors = _unit(np.asarray(vectors, dtype=np.float32))
    if vectors.ndim == 2:
        vectors = vectors[:, None]
    if weights is None:
        weights = np.ones(vectors.shape[:2], np.float32)
    n = len(vectors)
    return TasteProfiles(vectors, np.asarray(weights, np.float32), np.zeros(n, bool),
                         np.zeros(n, bool))


@pytest.fixture()
def catalog() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = np.array([f"item{j:03d}" for j in range(200)])
    return ids, _unit(rng.standard_normal((200, 16)))


def _brute(cf, vectors, profile, weight, pool, cold_cf):
    """Reference: the blend over an explicit pool, z-scores computed by hand."""
    cf_pool, taste = cf[pool], (vectors[pool] @ profile.T).max(axis=1)
    warm = ~np.isnan(cf_pool)
    cf_z = (cf_pool - cf_pool[warm].mean()) / cf_pool[warm].std()
    cf_z[~warm] = cold_cf
    taste_z = (taste - taste.mean()) / taste.std()
    return (1 - weight) * cf_z + weight * taste_z


def test_blend_matches_a_brute_force_reference(catalog):
    ids, vectors = catalog
    rng = np.random.default_rng(1)
    cf = rng.standard_normal((1, 200)).astype(np.float32)
    cf[0, 150:] = np.nan  # cold items
    profile = _unit(rng.standard_normal((2, 16)))
    ranker = StyleRanker(taste_weight=0.3, n_cf_candidates=20, n_taste_candidates=15,
                         cold_cf=0.25).fit(ids, vectors)
    ranking = ranker.rank(cf, _profiles(profile[None], [[0.7, 0.3]]), k=10)
    cf_top = np.argsort(-np.nan_to_num(cf[0], nan=-np.inf))[:20]
    taste_top = [np.argsort(-(vectors @ p))[:15] for p in profile]
    pool = np.unique(np.r_[cf_top, np.concatenate(taste_top)])
    score = _brute(cf[0], vectors, profile, 0.3, pool, 0.25)
    expected = pool[np.argsort(-score, kind="stable")[:10]]
    assert ranking.items[0].tolist() == expected.tolist()
    np.testing.assert_allclose(ranking.scores[0], np.sort(score)[::-1][:10], rtol=1e-5)
    np.testing.assert_allclose(ranking.scores, 0.7 * ranking.cf + 0.3 * ranking.taste,
                               rtol=1e-5, atol=1e-6)
    assert ranking.cold[0].tolist() == (ranking.items[0] >= 150).tolist()


def test_cold_items_are_reachable_through_taste(catalog):
    ids, vectors = catalog
    cf = np.full((1, 200), np.nan, np.float32)
    cf[0, :100] = np.linspace(1, 0, 100)
    target = 170  # cold: no CF score at all
    ranker = StyleRanker(taste_weight=0.9, n_cf_candidates=10, n_taste_candidates=5)
    ranking = ranker.fit(ids, vectors).rank(cf, _profiles(vectors[[target]]), k=3)
    assert ranking.items[0, 0] == target and ranking.cold[0, 0]


def test_weight_zero_is_cf_order_and_one_is_taste_order(catalog):
    ids, vectors = catalog
    rng = np.random.default_rng(2)
    cf = rng.standard_normal((3, 200)).astype(np.float32)
    profiles = _profiles(rng.standard_normal((3, 16)))
    cf_only = StyleRanker(0.0, n_cf_candidates=200).fit(ids, vectors).rank(cf, profiles, k=5)
    assert cf_only.items.tolist() == np.argsort(-cf, axis=1)[:, :5].tolist()
    taste_only = StyleRanker(1.0, n_cf_candidates=0, n_taste_candidates=5).fit(ids, vectors)
    ranking = taste_only.rank(cf, profiles, k=5)
    expected = np.argsort(-(profiles.vectors[:, 0] @ vectors.T), axis=1)[:, :5]
    assert ranking.items.tolist() == expected.tolist()


def test_excluded_items_never_come_back(catalog):
    ids, vectors = catalog
    cf = np.tile(np.linspace(1, 0, 200, dtype=np.float32), (2, 1))
    exclude = sp.csr_matrix(([1.0] * 4, ([0, 0, 1, 1], [0, 1, 5, 7])), shape=(2, 200))
    profiles = _profiles(vectors[[0, 5]])  # their taste points at the excluded items
    ranking = StyleRanker(0.5).fit(ids, vectors).rank(cf, profiles, k=20, exclude=exclude)
    assert not {0, 1} & set(ranking.items[0].tolist())
    assert not {5, 7} & set(ranking.items[1].tolist())


def test_mean_affinity_uses_profile_weights(catalog):
    ids, vectors = catalog
    cf = np.zeros((1, 200), np.float32)
    profile = vectors[[3, 4]][None]
    weights = np.array([[0.9, 0.1]], np.float32)
    ranker = StyleRanker(1.0, affinity="mean", n_taste_candidates=200).fit(ids, vectors)
    ranking = ranker.rank(cf, _profiles(profile, weights), k=1)
    mean = weights[0] @ (profile[0] @ vectors.T)
    assert ranking.items[0, 0] == int(np.argmax(mean))


def test_softmax_affinity_goes_from_max_to_weighted_mean(catalog):
    ids, vectors = catalog
    rng = np.random.default_rng(5)
    cf = rng.standard_normal((1, 200)).astype(np.float32)
    profiles = _profiles(vectors[[3, 4, 9]][None], np.array([[0.6, 0.3, 0.1]]))

    def taste(affinity, temperature=1.0):
        ranker = StyleRanker(1.0, n_cf_candidates=200, affinity=affinity,
                             temperature=temperature).fit(ids, vectors)
        pool = ranker.candidates(cf, profiles)
        return pool.items[0], pool.taste[0]

    items = taste("max")[0]
    for temperature, reference in ((1e-5, "max"), (1e3, "mean")):
        same_items, soft = taste("softmax", temperature)
        assert same_items.tolist() == items.tolist()
        np.testing.assert_allclose(soft, taste(reference)[1], atol=5e-3)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        StyleRanker(affinity="softmax", temperature=0).fit(ids, vectors)


def test_group_siblings_join_the_pool_and_get_the_bonus(catalog):
    ids, vectors = catalog
    groups = [f"g{j // 4}" if j < 100 else None for j in range(200)]  # 4 variants per group
    cf = np.linspace(1, 0, 200, dtype=np.float32)[None].repeat(2, axis=0)
    history = sp.csr_matrix(([1.0, 1.0], ([0, 1], [41, 150])), shape=(2, 200))
    profiles = _profiles(vectors[[41, 150]])
    ranker = StyleRanker(0.5, n_cf_candidates=5, n_taste_candidates=5, group_weight=10.0)
    ranker.fit(ids, vectors, item_groups=groups)
    ranking = ranker.rank(cf, profiles, k=3, exclude=history, history=history)
    assert sorted(ranking.items[0].tolist()) == [40, 42, 43]  # 41's siblings, not 41
    assert ranking.group[0].all() and not ranking.group[1].any()  # item 150 has no group
    plain = StyleRanker(0.5, n_cf_candidates=5, n_taste_candidates=5).fit(ids, vectors)
    assert not plain.rank(cf, profiles, k=3, exclude=history, history=history).group.any()
    with pytest.raises(ValueError, match="3 item groups for 200 items"):
        StyleRanker().fit(ids, vectors, item_groups=["a", "b", "c"])


def test_padding_when_the_pool_is_smaller_than_k(catalog):
    ids, vectors = catalog
    cf = np.full((1, 200), np.nan, np.float32)
    cf[0, :3] = [3, 2, 1]
    ranker = StyleRanker(0.0, n_cf_candidates=10, n_taste_candidates=0).fit(ids, vectors)
    ranking = ranker.rank(cf, _profiles(vectors[[0]]), k=5)
    assert ranking.items[0].tolist() == [0, 1, 2, -1, -1]
    assert np.isneginf(ranking.scores[0, 3:]).all() and np.isnan(ranking.cf[0, 3:]).all()


def test_batches_and_chunks_give_the_same_ranking(catalog):
    ids, vectors = catalog
    rng = np.random.default_rng(3)
    cf = rng.standard_normal((7, 200)).astype(np.float32)
    profiles = _profiles(rng.standard_normal((7, 3, 16)))
    ranker = StyleRanker(0.5, max_queries=2).fit(ids, vectors)
    whole = ranker.rank(cf, profiles, k=8, chunk_size=64)
    pieces = ranker.rank(cf, profiles, k=8, chunk_size=3)
    single = ranker.rank(cf[4:5], _profiles(profiles.vectors[4:5]), k=8)
    np.testing.assert_array_equal(whole.items, pieces.items)
    np.testing.assert_array_equal(whole.items[4], single.items[0])


def test_save_load_round_trip(tmp_path, catalog):
    ids, vectors = catalog
    rng = np.random.default_rng(4)
    cf = rng.standard_normal((2, 200)).astype(np.float32)
    profiles = _profiles(rng.standard_normal((2, 16)))
    ranker = StyleRanker(0.4, n_cf_candidates=30, affinity="mean", group_weight=1.0)
    ranker.fit(ids, vectors, "enc", item_groups=[f"g{j % 50}" for j in range(200)])
    loaded = StyleRanker.load(ranker.save(tmp_path / "ranker"), vectors)
    assert loaded.get_params() == ranker.get_params()
    history = sp.csr_matrix(([1.0], ([1], [7])), shape=(2, 200))
    a = ranker.rank(cf, profiles, k=6, history=history)
    b = loaded.rank(cf, profiles, k=6, history=history)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert b.group[1].any()
    with pytest.raises(ValueError, match="one row per item id"):
        StyleRanker.load(tmp_path / "ranker", vectors[:10])


def test_errors_name_the_problem(catalog):
    ids, vectors = catalog
    with pytest.raises(ValueError, match="taste_weight must be in"):
        StyleRanker(1.5).fit(ids, vectors)
    with pytest.raises(ValueError, match="affinity must be one of"):
        StyleRanker(affinity="min").fit(ids, vectors)
    with pytest.raises(RuntimeError, match="not fitted"):
        StyleRanker().rank(np.zeros((1, 200)), _profiles(vectors[[0]]))
    ranker = StyleRanker().fit(ids, vectors)
    with pytest.raises(ValueError, match=r"cf_scores must have shape \(n_users, 200\)"):
        ranker.rank(np.zeros((1, 10)), _profiles(vectors[[0]]))
    with pytest.raises(ValueError, match="different embedding spaces"):
        ranker.rank(np.zeros((1, 200)), _profiles(np.ones((1, 8))))
    with pytest.raises(ValueError, match="2 taste profiles for 1 users"):
        ranker.rank(np.zeros((1, 200)), _profiles(vectors[[0, 1]]))
