"""Taste profiles: weighting, recency, centroids, fallback, fold-in, persistence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.interactions import Interactions
from recsys.taste import EmbeddingPCA, TasteModel, TasteProfiles


def _log(rows: list[tuple[str, str, str]]) -> Interactions:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "t"])
    return Interactions.from_frame(frame, time_col="t")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture()
def space() -> tuple[list[str], np.ndarray]:
    """Six items in two tight clusters (a red look and a blue look) in 3-d."""
    ids = ["r1", "r2", "r3", "b1", "b2", "b3"]
    vectors = np.array([[1, 0.1, 0], [1, -0.1, 0], [1, 0, 0.1],
                        [0, 1, 0.1], [0.1, 1, 0], [0, 1, -0.1]], dtype=np.float32)
    return ids, vectors


def test_mean_is_confidence_weighted_and_normalised(space):
    ids, vectors = space
    data = _log([("u", "r1", "2020-01-01"), ("u", "r1", "2020-01-02"), ("u", "b1", "2020-01-03")])
    profiles = TasteModel().fit(data, ids, vectors).transform(["u"])
    expected = _unit(2 * _unit(vectors[0]) + _unit(vectors[3]))
    np.testing.assert_allclose(profiles.vectors[0, 0], expected, atol=1e-6)
    assert profiles.weights.tolist() == [[1.0]]
    assert not profiles.fallback[0] and not profiles.folded_in[0]


def test_half_life_counts_back_from_the_users_latest_event(space):
    ids, vectors = space
    rows = [("u", "r1", "2020-01-01"), ("u", "b1", "2020-01-11"),
            ("v", "r1", "2021-06-01"), ("v", "b1", "2021-06-11")]
    taste = TasteModel("items", half_life_days=10.0).fit(_log(rows), ids, vectors)
    profiles = taste.transform(["u", "v"])
    # latest item first, half the weight 10 days earlier: 2/3 and 1/3 for both users
    np.testing.assert_allclose(profiles.weights, [[2 / 3, 1 / 3]] * 2, rtol=1e-6)
    np.testing.assert_allclose(profiles.vectors[:, 0], _unit(vectors[[3, 3]]), atol=1e-6)


def test_items_method_keeps_the_latest_distinct_items(space):
    ids, vectors = space
    rows = [("u", i, f"2020-01-0{d}") for d, i in enumerate(["r1", "r2", "b1", "r1"], 1)]
    profiles = TasteModel("items", recent_items=2).fit(_log(rows), ids, vectors).transform(["u"])
    # r1 was bought again last: it and b1 are the two latest distinct items
    np.testing.assert_allclose(profiles.vectors[0], _unit(vectors[[0, 3]]), atol=1e-6)
    np.testing.assert_allclose(profiles.weights[0], [2 / 3, 1 / 3], rtol=1e-6)


def test_kmeans_finds_both_looks_and_weighs_them(space):
    ids, vectors = space
    rows = [("u", i, "2020-01-01") for i in ["r1", "r2", "r3", "b1"]]
    taste = TasteModel("kmeans", items_per_centroid=2).fit(_log(rows), ids, vectors)
    profiles = taste.transform(["u"])
    order = np.argsort(-profiles.weights[0])
    np.testing.assert_allclose(profiles.weights[0, order], [0.75, 0.25], rtol=1e-6)
    red, blue = profiles.vectors[0, order]
    assert red @ _unit(vectors[0]) > 0.99 and blue @ _unit(vectors[3]) > 0.99
    np.testing.assert_allclose(np.linalg.norm(profiles.vectors[0], axis=1), 1.0, rtol=1e-6)


def test_kmeans_centroid_count_follows_history_size(space):
    ids, vectors = space
    rows = [("small", "r1", "2020-01-01"), ("small", "b1", "2020-01-02")]
    rows += [("big", i, "2020-01-01") for i in ids]
    taste = TasteModel("kmeans", items_per_centroid=3, max_centroids=4)
    profiles = taste.fit(_log(rows), ids, vectors).transform(["small", "big"])
    assert (profiles.weights > 0).sum(axis=1).tolist() == [1, 2]


def test_kmeans_is_seeded_per_user_not_per_batch():
    rng = np.random.default_rng(0)
    ids = [f"i{j}" for j in range(40)]
    vectors = rng.standard_normal((40, 8)).astype(np.float32)
    rows = [(f"u{u}", ids[j], "2020-01-01") for u in range(5) for j in rng.choice(40, 12, False)]
    taste = TasteModel("kmeans", items_per_centroid=4).fit(_log(rows), ids, vectors)
    together = taste.transform(["u0", "u3"])
    alone = taste.transform(["u3"])
    width = alone.weights.shape[1]
    np.testing.assert_array_equal(together.vectors[1, :width], alone.vectors[0])
    again = TasteModel("kmeans", items_per_centroid=4).fit(_log(rows), ids, vectors)
    np.testing.assert_array_equal(again.vectors_, taste.vectors_)


def test_unknown_user_and_user_without_embedded_items_fall_back(space):
    ids, vectors = space
    rows = [("u", "r1", "2020-01-01"), ("u", "r2", "2020-01-02"), ("v", "no-image", "2020-01-01")]
    taste = TasteModel().fit(_log(rows), ids, vectors)
    profiles = taste.transform(["nobody", "v", "u"])
    assert profiles.fallback.tolist() == [True, True, False]
    np.testing.assert_allclose(profiles.vectors[0, 0], taste.global_)
    np.testing.assert_allclose(profiles.vectors[0, 0], _unit(vectors[0] + vectors[1]), atol=1e-6)


def test_fold_in_from_history_equals_fit_time_profile(space):
    ids, vectors = space
    rows = [("u", "r1", "2020-01-01"), ("u", "b1", "2020-02-01"), ("u", "b2", "2020-03-01"),
            ("w", "r3", "2020-01-05")]
    for method in ("mean", "kmeans", "items"):
        taste = TasteModel(method, half_life_days=20, items_per_centroid=1)
        fitted = taste.fit(_log(rows), ids, vectors).transform(["u"])
        history = _log([r for r in rows if r[0] == "u"] + [("new", "b3", "2020-01-01")])
        folded = taste.transform(["u", "new"], history=history)
        width = fitted.weights.shape[1]
        np.testing.assert_allclose(folded.vectors[0, :width], fitted.vectors[0], atol=1e-6)
        np.testing.assert_allclose(folded.weights[0, :width], fitted.weights[0], atol=1e-6)
        assert folded.folded_in.tolist() == [True, True]
        np.testing.assert_allclose(folded.vectors[1, 0], _unit(vectors[5]), atol=1e-6)


def test_history_without_the_user_keeps_fit_time_or_fallback(space):
    ids, vectors = space
    taste = TasteModel().fit(_log([("u", "r1", "2020-01-01")]), ids, vectors)
    profiles = taste.transform(["u", "ghost"], history=_log([("x", "b1", "2020-01-01")]))
    assert profiles.folded_in.tolist() == [False, False]
    assert profiles.fallback.tolist() == [False, True]


def test_save_load_round_trip(tmp_path, space):
    ids, vectors = space
    rows = [("u", i, f"2020-01-0{d}") for d, i in enumerate(["r1", "r2", "b1", "b2"], 1)]
    taste = TasteModel("kmeans", half_life_days=3, items_per_centroid=2).fit(
        _log(rows), ids, vectors)
    loaded = TasteModel.load(taste.save(tmp_path / "taste"))
    assert loaded.get_params() == taste.get_params()
    a, b = taste.transform(["u", "x"]), loaded.transform(["u", "x"])
    for name in ("vectors", "weights", "fallback", "folded_in"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_mean_vectors_collapse_a_profile(space):
    ids, vectors = space
    profiles = TasteProfiles(
        vectors=_unit(vectors[[0, 3]])[None], weights=np.array([[0.5, 0.5]], np.float32),
        fallback=np.zeros(1, bool), folded_in=np.zeros(1, bool))
    mean = profiles.mean_vectors()
    np.testing.assert_allclose(np.linalg.norm(mean, axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"method": "median"}, "method must be one of"),
    ({"half_life_days": 0}, "half_life_days must be > 0"),
    ({"max_centroids": 0}, "max_centroids must be >= 1"),
])
def test_bad_parameters_are_named(space, kwargs, message):
    ids, vectors = space
    with pytest.raises(ValueError, match=message):
        TasteModel(**kwargs).fit(_log([("u", "r1", "2020-01-01")]), ids, vectors)


def test_bad_inputs_name_the_problem(space):
    ids, vectors = space
    data = _log([("u", "r1", "2020-01-01")])
    zero = vectors.copy()
    zero[2] = 0
    with pytest.raises(ValueError, match="item 'r3' has a zero"):
        TasteModel().fit(data, ids, zero)
    with pytest.raises(ValueError, match="one row per item id"):
        TasteModel().fit(data, ids[:3], vectors)
    with pytest.raises(ValueError, match="no interaction has an item with an embedding"):
        TasteModel().fit(_log([("u", "zz", "2020-01-01")]), ids, vectors)
    with pytest.raises(RuntimeError, match="not fitted"):
        TasteModel().transform(["u"])
    with pytest.raises(TypeError, match="batch-first"):
        TasteModel().fit(data, ids, vectors).transform("u")
    frame = pd.DataFrame({"user_id": ["u"], "item_id": ["r1"]})
    with pytest.raises(ValueError, match="needs a time on every event"):
        TasteModel(half_life_days=5).fit(Interactions.from_frame(frame), ids, vectors)


def test_pca_matches_an_svd_of_the_centred_data_across_row_chunks():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((5_000, 12)) * np.linspace(4, 0.5, 12)).astype(np.float32)
    pca = EmbeddingPCA(n_components=5, whiten=True).fit(x)  # 3 chunks of rows
    centred = x.astype(np.float64) - x.astype(np.float64).mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(np.abs(pca.components_ @ vt[:5].T), np.eye(5), atol=1e-4)
    np.testing.assert_allclose(pca.scale_, singular[:5] / np.sqrt(len(x) - 1), rtol=1e-5)
    assert (pca.components_[np.arange(5), np.abs(pca.components_).argmax(axis=1)] > 0).all()


def test_pca_projects_onto_top_components_and_whitens():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    x = (rng.standard_normal((400, 6)) * [10, 5, 1, 0.1, 0.1, 0.1]) @ basis.T + 3.0
    pca = EmbeddingPCA(n_components=2, whiten=True).fit(x)
    # the components span the two strongest directions
    overlap = np.abs(pca.components_ @ basis[:, :2])
    np.testing.assert_allclose(np.sort(overlap.max(axis=1)), [1, 1], atol=1e-2)
    np.testing.assert_allclose(pca.scale_, [10, 5], rtol=0.15)
    z = ((x - pca.mean_) @ pca.components_.T) / pca.scale_
    np.testing.assert_allclose(z.std(axis=0, ddof=1), [1, 1], rtol=1e-3)
    out = pca.transform(x)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    plain = EmbeddingPCA(2, whiten=False).fit(x)
    assert (plain.scale_ == 1).all()
    again = EmbeddingPCA.from_arrays(pca.arrays(), whiten=True)
    np.testing.assert_array_equal(again.transform(x[:5]), out[:5])


def test_pca_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"n_components must be in \[1, 3\]"):
        EmbeddingPCA(5).fit(np.ones((3, 8)))
    with pytest.raises(RuntimeError, match="not fitted"):
        EmbeddingPCA(2).transform(np.ones((1, 4)))
    with pytest.raises(ValueError, match=r"vectors must be \[n, 4\]"):
        EmbeddingPCA(2).fit(np.random.default_rng(0).random((10, 4))).transform(np.ones((1, 3)))
