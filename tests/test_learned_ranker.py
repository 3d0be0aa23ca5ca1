"""Visual candidate sources and the learned ranker: hand-computed candidates, label
windows that never leak, the no-harm default, save/load and thread safety."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from recsys.interactions import Interactions
from recsys.learned_ranker import RANKERS, LearnedRanker, NotEnoughHistory
from recsys.ranker import StyleRanker
from recsys.sources import SOURCES
from recsys.visual_sources import NewArrivals, VisualNeighbours

# four items on a circle: a=0°, b=30°, c=90°, d=180°
ANGLES = {"a": 0, "b": 30, "c": 90, "d": 180}
VECTORS = np.array([[np.cos(np.radians(t)), np.sin(np.radians(t))] for t in ANGLES.values()],
                   dtype=np.float32)


def _log(rows: list[tuple[str, str, str]]) -> Interactions:
    return Interactions.from_frame(pd.DataFrame(rows, columns=["user_id", "item_id", "t"]),
                                   time_col="t")


@pytest.fixture()
def small_log() -> Interactions:
    # u bought c long ago and a on the last day; v bought d
    return _log([("u", "c", "2020-01-01"), ("u", "a", "2020-03-01"), ("v", "d", "2020-02-01")])


def test_visual_neighbours_match_hand_computed_cosines(small_log):
    source = VisualNeighbours(recent_items=1, half_life_days=1.0)
    source.set_embeddings(list(ANGLES), VECTORS).fit(small_log)
    items, scores = source.candidates(["u", "v", "stranger"], n=3)
    # u: queries a (latest item) and the taste vector (c 59 days older: weight 2^-59, so the
    # taste is a). Own items a is skipped; b cos 30° = 0.866, c cos 90° = 0, d cos 180° = -1
    assert items[0].tolist() == ["b", "c", "d"]
    np.testing.assert_allclose(scores[0], [np.cos(np.radians(30)), 0.0, -1.0], atol=1e-5)
    # v: query d; c at 90°, b at 150°, a at 180°
    assert items[1].tolist() == ["c", "b", "a"]
    np.testing.assert_allclose(scores[1], [0.0, np.cos(np.radians(150)), -1.0], atol=1e-5)
    assert items[2].tolist() == ["", "", ""] and np.isneginf(scores[2]).all()


def test_visual_neighbours_fold_in_history(small_log):
    source = VisualNeighbours(recent_items=1).set_embeddings(list(ANGLES), VECTORS)
    source.fit(small_log)
    history = _log([("new", "c", "2020-03-01")])
    items, _ = source.candidates(["new"], n=1, history=history)
    assert items.tolist() == [["b"]]  # nearest to c (90°) other than c: b at 60°


def test_new_arrivals_rank_only_unbought_catalog_items(small_log):
    catalog = ["a", "b", "b", "d", "c", "e"]  # b listed twice; e has no embedding
    visual = NewArrivals(catalog, recent_items=1, half_life_days=1.0)
    visual.set_embeddings(list(ANGLES), VECTORS)
    items, scores = visual.fit(small_log).candidates(["u", "v"], n=3)
    # new = never bought: b and e; e has no image, so visual ranking reaches b only
    assert items.tolist() == [["b", "", ""], ["b", "", ""]]
    np.testing.assert_allclose(scores[:, 0], [np.cos(np.radians(30)),
                                              np.cos(np.radians(150))], atol=1e-5)
    listed = NewArrivals(catalog, rank="listed").fit(small_log)
    items, scores = listed.candidates(["anyone"], n=3)
    assert items.tolist() == [["b", "e", ""]] and scores[0, :2].tolist() == [2.0, 1.0]
    assert NewArrivals(catalog, max_events=1, rank="listed").fit(small_log).candidates(
        ["x"], 5)[0].tolist() == [["b", "a", "c", "d", "e"]]


def test_new_arrivals_read_a_catalog_file(tmp_path, small_log):
    path = tmp_path / "week.csv"
    pd.DataFrame({"article_id": ["0b", "0b", "a"]}).to_csv(path, index=False)
    items, _ = NewArrivals(str(path), rank="listed").fit(small_log).candidates(["u"], 2)
    assert items.tolist() == [["0b", ""]]
    with pytest.raises(ValueError, match="needs an item id column 'sku'"):
        NewArrivals(str(path), id_column="sku", rank="listed").fit(small_log)


def test_visual_neighbours_equal_a_brute_force_search_at_any_width():
    # neighbour lists of item queries are cached at one width and widened on demand:
    # whatever the order of requests, slates equal the exhaustive max-cosine ranking
    rng = np.random.default_rng(3)
    items = [f"i{j:03d}" for j in range(300)]
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = [(f"u{u}", items[j], f"2020-01-{1 + d:02d}") for u in range(6)
            for d, j in enumerate(rng.choice(300, 7, replace=False))]
    log = Interactions.from_frame(pd.DataFrame(rows, columns=["user_id", "item_id", "t"]),
                                  time_col="t")
    source = VisualNeighbours().set_embeddings(items, vectors).fit(log)
    users = [f"u{u}" for u in range(6)]
    queries, valid, own = source.user_queries(users)
    for n in (3, 80, 3, 250):
        ids, scores = source.candidates(users, n)
        for u in range(6):
            best = np.max(np.where(valid[u][:, None], queries[u] @ vectors.T, -np.inf), axis=0)
            best[own[u][own[u] >= 0]] = -np.inf
            top = np.lexsort((np.arange(300), -best))[:n]
            top = top[np.isfinite(best[top])]
            assert ids[u, :len(top)].tolist() == [items[j] for j in top]
            np.testing.assert_allclose(scores[u, :len(top)], best[top], atol=1e-5)


def test_path_contributions_credit_only_the_features_split_on():
    lightgbm = pytest.importorskip("lightgbm")
    from recsys.learned_ranker import _path_contributions

    rng = np.random.default_rng(0)
    x = np.column_stack([rng.random(400), np.full(400, 0.5), rng.random(400)])
    y = (x[:, 0] > 0.5).astype(float) + 0.1 * x[:, 2]
    booster = lightgbm.train({"objective": "regression", "verbose": -1, "num_leaves": 4,
                              "min_data_in_leaf": 5}, lightgbm.Dataset(x, y), 10)
    table = _path_contributions(booster)
    leaves = booster.predict(x[:50], pred_leaf=True)
    parts = table[np.arange(leaves.shape[1]), leaves].sum(axis=1)
    np.testing.assert_allclose(parts.sum(axis=1), booster.predict(x[:50]), atol=1e-9)
    assert np.all(parts[:, 1] == 0)  # a constant feature is never split on
    # the step at 0.5 is feature 0's (10 rounds at rate 0.1 fit 1 - 0.9**10 of it);
    # feature 2's slope of 0.1 gets at most its range
    low, high = x[:50, 0] < 0.45, x[:50, 0] > 0.55
    assert parts[high, 0].min() - parts[low, 0].max() > 0.6
    assert np.abs(parts[:, 2]).max() < 0.1


def test_visual_sources_are_registered_and_need_embeddings(small_log):
    assert SOURCES.get("visual-neighbours") is VisualNeighbours
    assert SOURCES.get("new-arrivals") is NewArrivals
    with pytest.raises(RuntimeError, match="set_embeddings"):
        VisualNeighbours().fit(small_log)
    assert RANKERS.get("learned") is LearnedRanker and RANKERS.get("blend") is StyleRanker


def _weekly_shop(seed: int = 0, weeks: int = 14, planted: tuple | None = None) -> Interactions:
    """40 shoppers who rebuy their own favourite every week, plus random other buys."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2020-01-06")
    rows = []
    for u in range(40):
        favourite = f"i{u % 20:02d}"
        for w in range(weeks):
            day = start + pd.Timedelta(days=7 * w + int(rng.integers(0, 7)))
            rows.append((f"u{u:02d}", favourite, day))
            if rng.random() < 0.5:
                rows.append((f"u{u:02d}", f"i{int(rng.integers(20, 30)):02d}", day))
    if planted is not None:
        rows.append(planted)
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "t"])
    return Interactions.from_frame(frame, time_col="t")


SIMPLE = [{"name": "repurchase"}, {"name": "recent-popularity"}]


def test_label_windows_are_whole_days_and_never_see_the_future():
    data = _weekly_shop()
    ranker = LearnedRanker(SIMPLE, window_days=7, train_windows=3, validation_windows=1)
    windows = ranker.label_windows(data)
    assert len(windows) == 4
    last = data.events["time"].max()
    for j, (history, labels) in enumerate(windows):
        assert history.events["time"].max() < labels.events["time"].min()
        assert labels.events["time"].max() - labels.events["time"].min() < pd.Timedelta(days=7)
        assert labels.events["time"].max() <= last - pd.Timedelta(days=7 * (3 - j))
    # consecutive windows touch: the next history ends where this window ends
    for (_, labels), (history, _) in zip(windows, windows[1:], strict=False):
        assert history.events["time"].max() == labels.events["time"].max()


def test_random_label_windows_are_disjoint_shares_and_history_is_the_rest():
    data = _weekly_shop()
    ranker = LearnedRanker(SIMPLE, train_windows=3, validation_windows=1, label_split="random",
                           label_fraction=0.25)
    windows = ranker.label_windows(data)
    key = ["user", "item", "time"]
    everything = data.events[key].sort_values(key).reset_index(drop=True)
    held = []
    for history, labels in windows:
        assert abs(len(labels) - len(data) / 4) < 4 * np.sqrt(len(data) * 0.25 * 0.75)
        both = pd.concat([history.events[key], labels.events[key]])
        pd.testing.assert_frame_equal(both.sort_values(key).reset_index(drop=True), everything)
        held.append(labels.events[key])
    # no event is a label of two windows: four quarters hold out every event exactly once
    pd.testing.assert_frame_equal(pd.concat(held).sort_values(key).reset_index(drop=True),
                                  everything)
    with pytest.raises(ValueError, match="disjoint shares"):
        LearnedRanker(SIMPLE, train_windows=4, validation_windows=1, label_split="random",
                      label_fraction=0.25).fit(data)


def test_a_planted_future_event_changes_labels_but_no_feature():
    last = _weekly_shop().events["time"].max()
    planted = ("u00", "i29", last)  # bought on the last day: a label of the last window only
    clean, dirty = _weekly_shop(), _weekly_shop(planted=planted)
    ranker = LearnedRanker(SIMPLE, train_windows=1, validation_windows=0)
    ranker._prepare(dirty, None, None, None, None, None)
    (h_clean, l_clean), = ranker.label_windows(clean)
    (h_dirty, l_dirty), = ranker.label_windows(dirty)
    assert len(h_clean) == len(h_dirty) and len(l_dirty) == len(l_clean) + 1
    a, b = ranker._examples(h_clean, l_clean), ranker._examples(h_dirty, l_dirty)
    np.testing.assert_array_equal(a["pool"].item, b["pool"].item)
    np.testing.assert_array_equal(a["pool"].features, b["pool"].features)
    row = np.flatnonzero((b["pool"].item == "i29") & (b["pool"].user == 0))
    assert len(row) == 1 and b["y"][row[0]] == 1 and a["y"][row[0]] == 0


def test_pool_recall_counts_the_window_purchases_each_source_reaches():
    """History to Jan 3: u1 bought A, u2 and u3 B. Window Jan 8-14: u1 buys A and C, u2
    buys A. One candidate per source: repurchase gives u1 A (a hit) and u2 B; recent
    popularity gives both B. 3 purchases: repurchase 1/3, popularity 0, union 1/3."""
    data = _log([("u1", "A", "2020-01-01"), ("u2", "B", "2020-01-02"),
                 ("u3", "B", "2020-01-03"), ("u1", "A", "2020-01-10"),
                 ("u1", "C", "2020-01-12"), ("u2", "A", "2020-01-14")])
    ranker = LearnedRanker(SIMPLE, n_candidates=1, train_windows=1, validation_windows=0,
                           n_rounds=2).fit(data)
    assert ranker.pool_recall_ == pytest.approx(
        {"repurchase": 1 / 3, "recent-popularity": 0.0, "union": 1 / 3})


def test_a_window_catalog_never_comes_from_its_own_label_purchases():
    """i31 is first bought, by a known shopper, inside the last window: it was not known
    to be on sale before, so no source may propose it there; i30, bought in the window
    by a newcomer, is declared by that purchase and may be proposed."""
    last = _weekly_shop().events["time"].max()
    data = _weekly_shop(planted=("u00", "i31", last))
    data = Interactions.from_frame(pd.concat([
        pd.DataFrame({"user_id": data.user_ids[data.events["user"]],
                      "item_id": data.item_ids[data.events["item"]], "t": data.events["time"]}),
        pd.DataFrame({"user_id": ["newcomer"], "item_id": ["i30"], "t": [last]})]), time_col="t")
    items = [f"i{j:02d}" for j in range(32)]
    vectors = np.random.default_rng(2).standard_normal((32, 8)).astype(np.float32)
    ranker = LearnedRanker([{"name": "new-arrivals"}], n_candidates=5, train_windows=1,
                           validation_windows=0)
    ranker._prepare(data, items, vectors, None, None, None)
    (history, labels), = ranker.label_windows(data)
    example = ranker._examples(history, labels)
    proposed = set(example["pool"].item)
    assert "i31" not in proposed and "i30" in proposed
    assert all("i31" not in row for ids in example["source_items"] for row in ids)


def test_the_default_never_loses_to_a_clearly_best_source_on_validation():
    """Everyone rebuys one favourite each week: repurchase is (nearly) perfect, so the
    ranker either beats it on the validation windows or hands the slates to it."""
    ranker = LearnedRanker(SIMPLE, n_candidates=10, train_windows=4, validation_windows=2,
                           n_rounds=30, model_params={"min_data_in_leaf": 5})
    ranker.fit(_weekly_shop(weeks=14))
    scores = {k: v for k, v in ranker.validation_.items() if k != "pairs"}
    assert max(("repurchase", "recent-popularity"), key=scores.get) == "repurchase"
    assert scores["repurchase"] > 0.5 > scores["recent-popularity"]
    served = "learned" if ranker.choice_ == "learned" else ranker.choice_
    assert scores[served] >= scores["repurchase"]
    assert ranker.choice_ == "repurchase" or scores["learned"] > scores["repurchase"]


def test_the_ranker_hands_over_to_the_source_it_cannot_beat():
    data = _weekly_shop(weeks=12)
    ranker = LearnedRanker([{"name": "recent-popularity"}, {"name": "repurchase"}],
                           n_candidates=5, train_windows=3, validation_windows=2, n_rounds=5,
                           model_params={"min_data_in_leaf": 1000}).fit(data)  # a stump
    assert ranker.choice_ == "repurchase" and ranker.booster_ is None
    users = ["u00", "u07"]
    expected = SOURCES.create("repurchase").fit(data).candidates(users, 3)[0]
    np.testing.assert_array_equal(ranker.rank(users, 3).items, expected)
    # a shopper repurchase knows nothing of gets the next source's items, not an empty slate
    popular = SOURCES.create("recent-popularity").fit(data).candidates(["nobody"], 3)[0]
    np.testing.assert_array_equal(ranker.rank(["nobody"], 3).items, popular)
    # a short repurchase list is followed by the next source's items it lacks
    lists = SOURCES.create("repurchase").fit(data).candidates(list(data.user_ids), 40)[0]
    user, own = next((u, [t for t in row if t]) for u, row in zip(data.user_ids, lists,
                                                               strict=True)
                     if 0 < np.count_nonzero(row) < 5)  # 5: n_candidates, the pool's width
    top = ranker.rank([user], 5).items[0].tolist()
    assert top[:len(own)] == own and all(top)
    assert not set(top[len(own):]) & set(own)
    # a served shopper's online events come after the fit's cut-off, and count
    later = data.events["time"].max() + pd.Timedelta(days=30)
    clicks = _log([("online", "i05", str(later.date())), ("online", "i09", str(later.date()))])
    assert set(ranker.rank(["online"], 3, history=clicks).items[0][:2]) == {"i05", "i09"}


def test_the_ranker_can_hand_over_to_a_chain_of_its_sources():
    data = _weekly_shop(weeks=12)
    chain = {"name": "chain", "params": {"chain": SIMPLE}}  # own items, then best sellers
    ranker = LearnedRanker([{"name": "recent-popularity"}, chain], n_candidates=5,
                           train_windows=3, validation_windows=2, n_rounds=5,
                           model_params={"min_data_in_leaf": 1000}).fit(data)  # a stump
    assert ranker.choice_ == "chain" and ranker.validation_["chain"] > 0.5
    users = ["u00", "u07"]
    expected = SOURCES.create("chain", chain=SIMPLE).fit(data).candidates(users, 4)[0]
    np.testing.assert_array_equal(ranker.rank(users, 4).items, expected)


def test_a_source_replaces_the_baseline_chain_only_when_it_beats_it_with_confidence():
    data = _weekly_shop(weeks=12)
    stump = {"n_candidates": 5, "train_windows": 3, "validation_windows": 2, "n_rounds": 5,
             "model_params": {"min_data_in_leaf": 1000}}
    # repurchase alone is close to the chain that starts with it: the chain keeps serving
    chain = {"name": "chain", "params": {"chain": SIMPLE}}
    ranker = LearnedRanker([{"name": "repurchase"}, chain], **stump).fit(data)
    assert ranker.choice_ == "chain" and ranker.validation_gain_["versus"] == "chain"
    # a chain of best sellers alone is the baseline, and repurchase beats it clearly
    weak = {"name": "chain", "params": {"chain": SIMPLE[1:]}}
    ranker = LearnedRanker([{"name": "repurchase"}, weak], **stump).fit(data)
    assert ranker.validation_["repurchase"] > 0.5 > ranker.validation_["chain"]
    assert ranker.choice_ == "repurchase" == ranker.validation_gain_["versus"]
    # a named baseline stays unless beaten: the chain beats best sellers alone
    ranker = LearnedRanker([{"name": "recent-popularity"}, chain], baseline="recent-popularity",
                           **stump).fit(data)
    assert ranker.choice_ == "chain"
    with pytest.raises(ValueError, match="baseline 'family' is not one of the sources"):
        LearnedRanker(SIMPLE, baseline="family").fit(data)


def test_too_short_a_log_is_a_clear_error():
    data = _log([("u", "a", "2020-01-01"), ("u", "b", "2020-01-01")])
    with pytest.raises(NotEnoughHistory, match="too few days"):
        LearnedRanker(SIMPLE).fit(data)
    with pytest.raises(ValueError, match="share a label"):
        LearnedRanker([{"name": "repurchase"}, {"name": "repurchase"}]).fit(data)


@pytest.fixture(scope="module")
def visual_ranker():
    data = _weekly_shop(weeks=12)
    items = [f"i{j:02d}" for j in range(32)]  # i30, i31: never bought
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((len(items), 8)).astype(np.float32)
    prices = data.events.assign(user=data.user_ids[data.events["user"]],
                                item=data.item_ids[data.events["item"]],
                                price=0.01 * (1 + data.events["item"] % 5))
    sources = SIMPLE + [{"name": "visual-neighbours"}, {"name": "new-arrivals"}]
    ranker = LearnedRanker(sources, n_candidates=8, train_windows=3, validation_windows=0,
                           n_rounds=20, model_params={"min_data_in_leaf": 5})
    ranker.fit(data, items, vectors, style_vectors=vectors[:3],
               item_groups={i: i[:2] for i in items}, prices=prices)
    return ranker


def test_image_features_and_contributions_explain_the_score(visual_ranker):
    names = visual_ranker.feature_names_
    assert {"cos_taste", "cos_recent", "cos_nearest", "cos_style", "price_ratio",
            "family_events", "visual-neighbours_score", "new-arrivals_rank"} <= set(names)
    ranked = visual_ranker.rank(["u00", "u03"], 5, contributions=True)
    valid = ranked.items != ""
    np.testing.assert_allclose(ranked.contributions.sum(axis=2)[valid], ranked.scores[valid],
                               rtol=1e-4, atol=1e-4)
    assert set(visual_ranker.feature_importances_) == set(names)


def test_save_load_gives_the_same_slates(tmp_path, visual_ranker):
    users = ["u00", "u05", "u39", "stranger"]
    before = visual_ranker.rank(users, 6)
    loaded = LearnedRanker.load(visual_ranker.save(tmp_path / "ranker"))
    after = loaded.rank(users, 6)
    np.testing.assert_array_equal(before.items, after.items)
    np.testing.assert_allclose(before.scores, after.scores, rtol=1e-6)
    assert not list(tmp_path.rglob("*.pkl")) and (tmp_path / "ranker" / "model.txt").is_file()
    for attribute in ("choice_", "validation_", "validation_gain_", "pool_recall_"):
        assert getattr(loaded, attribute) == getattr(visual_ranker, attribute)


def test_rank_is_thread_safe_and_batch_independent(visual_ranker):
    users = [f"u{u:02d}" for u in range(40)]
    serial = [visual_ranker.rank([u], 5).items[0].tolist() for u in users]
    assert visual_ranker.rank(users, 5).items.tolist() == serial
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda u: visual_ranker.rank([u], 5).items[0].tolist(), users))
    assert threaded == serial


def test_exclude_and_candidates_restrict_the_slate(visual_ranker):
    top = visual_ranker.rank(["u00"], 3).items[0]
    again = visual_ranker.rank(["u00"], 3, exclude=[{top[0]}]).items[0]
    assert top[0] not in again and again[0] == top[1]
    only = visual_ranker.rank(["u00"], 3, candidates={"i30", "i31"}).items[0]
    assert set(only) <= {"i30", "i31", ""}


@pytest.fixture(scope="module")
def weekly_images(tmp_path_factory):
    """Colour images of i00..i31 and three colour styles."""
    from test_recommender import COLOURS, _image

    root = tmp_path_factory.mktemp("weekly")
    colours = list(COLOURS.values())
    for j in range(32):
        _image(root / "images" / f"i{j:02d}.jpg", colours[j % 3], 4 * (j // 3) - 20)
    for name, rgb in COLOURS.items():
        _image(root / "styles" / f"{name}.jpg", rgb, 0)
    return root


def _pipeline(**params):
    from doubles import ColourEncoder

    from recsys.recommender import StyleRecommender

    return StyleRecommender(encoder=ColourEncoder(grid=2), embedding_dim=4,
                            cf_params={"factors": 4, "iterations": 2, "random_state": 0},
                            **params)


@pytest.fixture(scope="module")
def weekly_pipeline(weekly_images):
    from recsys.catalog import Catalog

    model = _pipeline(learned_params={"train_windows": 3, "validation_windows": 1,
                                      "n_candidates": 8, "n_rounds": 20,
                                      "model_params": {"min_data_in_leaf": 5}})
    catalog = Catalog.from_directory(weekly_images / "images")
    return model.fit(_weekly_shop(weeks=10), catalog, weekly_images / "styles")


def test_style_recommender_ranks_with_the_learned_ranker_by_default(tmp_path, weekly_pipeline):
    model = weekly_pipeline
    assert model.ranker == "learned" and model.learned_ is not None
    slate = model.recommend(["u00"], k=4)[0]
    assert slate.ranked_by == model.learned_.choice_ and len(slate.entries) == 4
    assert f"ranked by {slate.ranked_by}" in slate.explain()
    if slate.ranked_by == "learned":
        assert all(e.reasons for e in slate.entries)
    loaded = type(model).load(model.save(tmp_path / "pipeline"))
    assert loaded.recommend(["u00", "u11"], k=4) == model.recommend(["u00", "u11"], k=4)


def test_the_service_explains_a_learned_slate_by_its_feature_contributions(tmp_path,
                                                                         weekly_images):
    from fastapi.testclient import TestClient

    from recsys.catalog import Catalog
    from stylerec.service import create_app

    model = _pipeline(learned_params={"train_windows": 3, "validation_windows": 0,
                                      "n_candidates": 8, "n_rounds": 20,
                                      "model_params": {"min_data_in_leaf": 5}})
    model.fit(_weekly_shop(weeks=10), Catalog.from_directory(weekly_images / "images"),
              weekly_images / "styles").save(tmp_path / "model")
    with TestClient(create_app(tmp_path / "model", tmp_path / "feedback.db")) as client:
        top = client.get("/recommend", params={"uid": "u00", "k": 3}).json()["items"][0]
        body = client.get("/explain", params={"uid": "u00", "item": top["item"]}).json()
    entry = model.recommend(["u00"], k=3)[0].entries[0]
    assert body["ranked_by"] == "learned" and body["rank"] == 1
    assert [r["feature"] for r in body["reasons"]] == [name for name, _ in entry.reasons]
    assert [r["contribution"] for r in body["reasons"]] == pytest.approx(
        [value for _, value in entry.reasons], abs=1e-6)
    assert {r["feature"] for r in body["reasons"]} <= set(model.learned_.feature_names_)


def test_too_short_a_log_falls_back_to_the_blend(weekly_images):
    from recsys.catalog import Catalog

    data = _log([("u", "i00", "2020-01-01"), ("v", "i01", "2020-01-02"),
                 ("u", "i03", "2020-01-02")])
    model = _pipeline().fit(data, Catalog.from_directory(weekly_images / "images"))
    slate = model.recommend(["u"], k=3)[0]
    assert model.learned_ is None and slate.ranked_by == "blend" and len(slate.entries) == 3
    assert "i00" not in slate.item_ids  # the blend filters what the user has


def test_the_default_style_recommender_never_loses_to_a_clearly_best_source(weekly_images):
    """Everyone rebuys one favourite each week, so repurchase (and the default chain that
    starts with it) is clearly the best source: the facade with its default learned
    ranker either beats it on the validation windows with confidence or serves exactly
    the best source's slates."""
    from recsys.catalog import Catalog

    data = _weekly_shop(weeks=14)
    model = _pipeline().fit(data, Catalog.from_directory(weekly_images / "images"))
    learned = model.learned_
    assert (learned.train_windows, learned.validation_windows) == (8, 2)  # the defaults
    sources = {k: learned.validation_[k] for k in learned.source_labels_}
    runner_up = max(v for k, v in sources.items() if k not in ("repurchase", "chain"))
    assert sources["repurchase"] > 0.5 > runner_up
    best = learned.validation_gain_["versus"]
    assert best in ("repurchase", "chain") and sources[best] == max(sources.values())
    assert learned.validation_[learned.choice_] >= sources["repurchase"]
    # on this log the model is ahead by the point estimate but not with confidence
    gain = learned.validation_gain_
    assert gain["gain"] > 0 >= gain["low"] and learned.choice_ == best
    users = ["u00", "u07", "u21"]
    slates = model.recommend(users, k=3)
    assert {s.ranked_by for s in slates} == {best}
    expected = learned.sources_[learned.source_labels_.index(best)].candidates(users, 3)[0]
    assert [s.item_ids for s in slates] == [[i for i in row if i] for row in expected]


def test_the_model_ranks_only_when_its_gain_is_above_zero_with_confidence():
    ranker = LearnedRanker(validation_confidence=0.95, random_state=0)
    users = np.array(["a", "b", "c", "d", "e"])
    same = ranker._gain(np.full(5, 0.02), users)
    assert same["gain"] == pytest.approx(0.02) and same["low"] == pytest.approx(0.02)
    # one lucky user: a resample leaves them out with probability (4/5)^5 = 0.33 > 0.05
    lucky = ranker._gain(np.array([0.5, 0, 0, 0, 0]), users)
    assert lucky["gain"] == pytest.approx(0.1) and lucky["low"] == 0.0
    # a user's pairs in two windows move together: users a, a, b -> 2 of 3 pairs
    pooled = ranker._gain(np.array([0.3, 0.3, -0.3]), np.array(["a", "a", "b"]))
    assert pooled["gain"] == pytest.approx(0.1) and pooled["users"] == 2
    assert pooled["low"] == pytest.approx(-0.3)  # the resample of b alone
    point = LearnedRanker(validation_confidence=None)._gain(np.array([0.5, 0, 0]),
                                                            users[:3])
    assert point["low"] == point["gain"] == pytest.approx(0.5 / 3)
    with pytest.raises(ValueError, match="validation_confidence must be in"):
        LearnedRanker(validation_confidence=1.0)._check_params()


def test_item_groups_give_the_default_learned_ranker_a_family_source(tmp_path, weekly_images,
                                                                     weekly_pipeline):
    from recsys.catalog import Catalog

    catalog = Catalog.from_directory(weekly_images / "images")
    data = _weekly_shop(weeks=10)
    model = _pipeline(learned_params=weekly_pipeline.learned_params).fit(
        data, catalog, item_groups={i: i[:2] for i in catalog.item_ids})
    assert "family" not in weekly_pipeline.learned_.source_labels_  # no groups, no family
    labels = model.learned_.source_labels_
    assert labels[:2] == ["repurchase", "family"]
    users = ["u00", "u13", "u39"]
    expected = SOURCES.create("family", group="prefix:2").fit(data).candidates(users, 8)[0]
    np.testing.assert_array_equal(model.learned_.sources_[1].candidates(users, 8)[0], expected)
    loaded = type(model).load(model.save(tmp_path / "pipeline"))
    assert loaded.learned_.source_labels_ == labels
    assert loaded.recommend(users, k=4) == model.recommend(users, k=4)


def test_a_family_source_of_given_groups_needs_them():
    with pytest.raises(ValueError, match="call set_groups"):
        SOURCES.create("family", group="item_groups").fit(_weekly_shop(weeks=2))
    with pytest.raises(ValueError, match="needs item_groups at fit"):
        LearnedRanker([{"name": "family", "params": {"group": "item_groups"}}]).fit(
            _weekly_shop(weeks=14))
