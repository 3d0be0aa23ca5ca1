import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import spearmanr

from recsys import Interactions, Recommender, create_model
from recsys.cf import top_k

FACTOR_PARAMS = {
    # the data has rank two, so two factors (plus implicit's bias column for BPR) suffice
    "als": {"factors": 2, "iterations": 20, "regularization": 0.01, "alpha": 10.0},
    "bpr": {"factors": 3, "iterations": 300, "learning_rate": 0.05},
    "bpr-uniform": {"factors": 4, "iterations": 60, "batch_size": 64},
    "lmf": {"factors": 2, "iterations": 60},
    "itemknn": {"similarity": "cosine"},
}


@pytest.fixture(scope="module")
def blocks():
    """Two taste blocks: users u0..u19 buy only items a*, users v0..v19 only items b*.

    Each user has bought 6 of their block's 10 items, chosen at random.
    """
    rng = np.random.default_rng(0)
    rows = []
    for prefix, items in (("u", "a"), ("v", "b")):
        for u in range(20):
            for i in rng.choice(10, size=6, replace=False):
                rows.append((f"{prefix}{u}", f"{items}{i}"))
    return Interactions.from_frame(pd.DataFrame(rows, columns=["user_id", "item_id"]))


@pytest.mark.parametrize("name", ["als", "bpr", "bpr-uniform", "lmf", "itemknn"])
def test_recommendations_stay_in_the_users_block(blocks, name):
    model = create_model(name, **FACTOR_PARAMS[name]).fit(blocks)
    users = ["u0", "u7", "v3", "v19"]
    items, _ = model.recommend(users, k=4)
    for user, row in zip(users, items, strict=True):
        block = "a" if user.startswith("u") else "b"
        assert all(i.startswith(block) for i in row), (name, user, row)
        seen = set(blocks.user_history(user)["item_id"])
        assert not seen & set(row)


def test_refit_on_other_ids_forgets_the_old_ones():
    first = Interactions.from_frame(pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"]}))
    second = Interactions.from_frame(pd.DataFrame({"user_id": ["c", "d", "d"],
                                                   "item_id": ["y", "z", "w"]}))
    model = create_model("popularity").fit(first)
    assert model.recommend(["a"], k=1)[0].tolist() == [["y"]]  # builds the id maps
    model.fit(second)
    assert model.recommend(["c"], k=3)[0].tolist() == [["w", "z", ""]]
    with pytest.raises(KeyError, match="unknown user"):
        model.recommend(["a"], k=1)


def test_popularity_ranks_by_distinct_users():
    log = pd.DataFrame({"user_id": ["a", "a", "a", "b", "c", "c"],
                        "item_id": ["x", "x", "y", "y", "y", "z"]})
    model = create_model("popularity").fit(Interactions.from_frame(log))
    items, scores = model.recommend(["b"], k=3)
    # y: 3 users (seen by b, filtered), x: 1 user (a twice counts once), z: 1 user
    assert items[0].tolist() == ["x", "z", ""]
    assert scores[0, :2].tolist() == [1.0, 1.0] and scores[0, 2] == -np.inf


def test_itemknn_cosine_scores_match_a_direct_computation(blocks):
    model = create_model("itemknn", similarity="cosine", neighbours=50).fit(blocks)
    m = blocks.matrix.toarray()
    norms = np.linalg.norm(m, axis=0)
    cosine = (m.T @ m) / np.outer(norms, norms)
    expected = m[:3] @ cosine
    np.testing.assert_allclose(model.score(list(blocks.user_ids[:3])), expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["popularity", "als", "bpr", "bpr-uniform", "lmf", "itemknn"])
def test_save_load_round_trip(blocks, name, tmp_path):
    model = create_model(name, **FACTOR_PARAMS.get(name, {})).fit(blocks)
    users = list(blocks.user_ids[::5])
    before = model.recommend(users, k=5)
    loaded = Recommender.load(model.save(tmp_path / name))
    after = loaded.recommend(users, k=5)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(model.score(users), loaded.score(users))
    assert loaded.get_params() == model.get_params()
    with np.load(tmp_path / name / "arrays.npz") as z:  # loads without allow_pickle
        assert all(z[key].dtype.kind in "iuf" for key in z.files)  # ids packed as bytes


def test_candidates_and_keep_seen(blocks):
    model = create_model("als", **FACTOR_PARAMS["als"]).fit(blocks)
    items, _ = model.recommend(["u0"], k=3, candidates=["b1", "a0", "b2"], filter_seen=False)
    assert set(items[0]) == {"b1", "a0", "b2"} and items[0][0] == "a0"
    with pytest.raises(KeyError, match="unknown item id.*'nope'"):
        model.recommend(["u0"], k=3, candidates=["nope"])


def test_unknown_user_raises_and_history_folds_in(blocks):
    model = create_model("als", **FACTOR_PARAMS["als"]).fit(blocks)
    with pytest.raises(KeyError, match=r"unknown user id\(s\) \['new'\]"):
        model.recommend(["new"], k=3)
    newcomer = Interactions.from_frame(pd.DataFrame(
        {"user_id": ["new"] * 3, "item_id": ["b0", "b1", "b2"]}))
    for name in ("als", "bpr", "bpr-uniform", "itemknn", "popularity"):
        m = create_model(name, **FACTOR_PARAMS.get(name, {})).fit(blocks)
        items, _ = m.recommend(["new"], k=3, history=newcomer)
        assert not {"b0", "b1", "b2"} & set(items[0])
        if name != "popularity":
            assert all(i.startswith("b") for i in items[0]), (name, items)


def test_input_checks(blocks):
    model = create_model("als")
    with pytest.raises(RuntimeError, match="not fitted"):
        model.recommend(["u0"])
    model.fit(blocks)
    with pytest.raises(TypeError, match="batch-first"):
        model.recommend("u0")
    with pytest.raises(ValueError, match="k must be"):
        model.recommend(["u0"], k=0)
    with pytest.raises(ValueError, match="unknown model 'svd'"):
        create_model("svd")


def test_top_k_matches_a_full_sort():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(7, 50)).astype(np.float32)
    seen = sp.random(7, 50, density=0.2, random_state=2, format="csr")
    ids, vals = top_k(scores, 5, seen)
    masked = np.where(seen.toarray() > 0, -np.inf, scores)
    expected = np.argsort(-masked, axis=1)[:, :5]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(vals, np.take_along_axis(masked, expected, axis=1))


def test_fit_does_not_warn_about_blas_threads():
    # Without OPENBLAS_NUM_THREADS the BLAS pool has several threads; fitting must limit it.
    env = {k: v for k, v in os.environ.items() if not k.endswith("NUM_THREADS")}
    code = (
        "import pandas as pd; from recsys import Interactions, create_model\n"
        "d = Interactions.from_frame(pd.DataFrame({'user_id': list('aabbc'),"
        " 'item_id': list('xyxzz')}))\n"
        "for n in ('als', 'bpr', 'bpr-uniform', 'lmf', 'itemknn'):"
        " create_model(n, iterations=2).fit(d)"
        " if n != 'itemknn' else create_model(n).fit(d)\n"
    )
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -- bpr-uniform: BPR with uniformly sampled negatives ------------------------


def test_uniform_bpr_item_bias_learns_popularity():
    # the planted answer: item k is bought with probability (12 - k) / 13, so with
    # uniform negatives the item bias must order items by how many users bought them
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{k:02d}") for u in range(40) for k in range(12)
            if rng.random() < (12 - k) / 13]
    data = Interactions.from_frame(pd.DataFrame(rows, columns=["user_id", "item_id"]))
    model = create_model("bpr-uniform", factors=4, iterations=50, batch_size=64).fit(data)
    buyers = np.bincount(data.matrix.tocoo().col, minlength=data.n_items)
    assert spearmanr(model.item_bias_, buyers).statistic > 0.95


def test_uniform_bpr_never_samples_a_positive_as_negative(blocks):
    model = create_model("bpr-uniform")
    users, items, keys = model._positives(blocks.matrix.tocsr())
    rng = np.random.default_rng(0)
    neg, ok = model._negatives(rng, np.repeat(users, 20), keys, blocks.n_items)
    assert ok.all()
    seen = blocks.matrix.toarray() > 0
    assert not seen[np.repeat(users, 20), neg].any()
    # negatives are spread over every item the users have not seen (uniform)
    assert set(neg) == set(range(blocks.n_items))


def test_uniform_bpr_is_seeded_and_deterministic(blocks):
    params = FACTOR_PARAMS["bpr-uniform"]
    first = create_model("bpr-uniform", random_state=3, **params).fit(blocks)
    again = create_model("bpr-uniform", random_state=3, **params).fit(blocks)
    other = create_model("bpr-uniform", random_state=4, **params).fit(blocks)
    for name in ("user_factors_", "item_factors_", "item_bias_"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.item_factors_, other.item_factors_)
    newcomer = Interactions.from_frame(pd.DataFrame(
        {"user_id": ["new"] * 3, "item_id": ["a0", "a1", "a2"]}))
    np.testing.assert_array_equal(first.score(["new"], history=newcomer),
                                  again.score(["new"], history=newcomer))


def test_uniform_bpr_candidates_and_keep_seen(blocks):
    model = create_model("bpr-uniform", **FACTOR_PARAMS["bpr-uniform"]).fit(blocks)
    seen = sorted(blocks.user_history("u0")["item_id"])
    items, _ = model.recommend(["u0"], k=3, candidates=["b1", seen[0], "b2"],
                               filter_seen=False)
    assert set(items[0]) == {"b1", seen[0], "b2"} and items[0][0] == seen[0]
    items, scores = model.recommend(["u0"], k=3, candidates=["b1", seen[0]])
    assert items[0].tolist() == ["b1", "", ""] and scores[0, 1] == -np.inf


@pytest.mark.parametrize("params, message", [
    ({"factors": 0}, "factors must be an integer >= 1"),
    ({"factors": 2.5}, "factors must be an integer"),
    ({"iterations": 0}, "iterations must be an integer >= 1"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"learning_rate": 0.0}, "learning_rate must be > 0"),
    ({"learning_rate": float("nan")}, "learning_rate must be > 0"),
    ({"regularization": -0.1}, "regularization must be >= 0"),
])
def test_uniform_bpr_rejects_bad_parameters(params, message):
    with pytest.raises(ValueError, match=message):
        create_model("bpr-uniform", **params)
