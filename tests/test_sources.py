"""Candidate sources against hand-computed pools (recsys/sources.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ground.registry import UnknownNameError
from recsys import Interactions, create_model
from recsys.sources import SOURCES, CandidateSource

# now = 2020-01-15 (the latest training day); d's 2020-01-20 purchase is a test event
EVENTS = [
    ("a", "p1a", "2020-01-01"), ("a", "p2a", "2020-01-08"), ("a", "p1a", "2020-01-15"),
    ("b", "p1b", "2020-01-14"), ("b", "p3a", "2020-01-15"),
    ("c", "p2b", "2020-01-10"),
    ("d", "p9z", "2020-01-20"),
]


@pytest.fixture(scope="module")
def train() -> Interactions:
    frame = pd.DataFrame(EVENTS, columns=["user_id", "item_id", "t_dat"])
    log = Interactions.from_frame(frame, time_col="t_dat")
    # select() keeps the whole vocabulary: p9z is known to the log but has no training event
    return log.select(log.events["time"] <= pd.Timestamp("2020-01-15"))


def rows(ids, scores):
    return [[(i, round(float(s), 4)) for i, s in zip(r, sc, strict=True) if i]
            for r, sc in zip(ids, scores, strict=True)]


def test_repurchase_is_recency_weighted_own_history(train):
    source = SOURCES.create("repurchase", half_life_days=7).fit(train)
    ids, scores = source.candidates(["a", "b", "zz"], n=3)
    # a: p1a 0.5**(14/7) + 0.5**0 = 1.25, p2a 0.5**(7/7) = 0.5; b: p1b 0.5**(1/7)
    assert rows(ids, scores) == [[("p1a", 1.25), ("p2a", 0.5)],
                                 [("p3a", 1.0), ("p1b", 0.9057)], []]
    assert ids.shape == (3, 3) and ids[0, 2] == "" and scores[0, 2] == -np.inf
    assert scores.dtype == np.float32


def test_family_ranks_group_weight_times_popularity(train):
    source = SOURCES.create("family", group="prefix:2", half_life_days=7).fit(train)
    ids, scores = source.candidates(["a", "b"], n=5)
    # popularity: p1a 2, others 1; a's groups p1 1.25, p2 0.5; b's p1 0.9057, p3 1.0
    assert rows(ids, scores) == [
        [("p1a", 2.5), ("p1b", 1.25), ("p2a", 0.5), ("p2b", 0.5)],
        [("p1a", 1.8114), ("p3a", 1.0), ("p1b", 0.9057)],
    ]


def test_family_from_a_metadata_column(train, tmp_path):
    meta = tmp_path / "articles.csv"
    meta.write_text("article_id,product_code\np1a,X\np2b,X\np1b,Y\np3a,Y\n")
    source = SOURCES.create("family", group="product_code", metadata=str(meta),
                            half_life_days=7).fit(train)
    ids, scores = source.candidates(["c", "a"], n=4)
    # c bought p2b (family X = p1a, p2b); a's p2a is unlisted: a family of its own
    # c: X weight 0.5**(5/7) = 0.6095; a: X weight 1.25, its own p2a 0.5
    assert rows(ids, scores) == [[("p1a", 1.219), ("p2b", 0.6095)],
                                 [("p1a", 2.5), ("p2b", 1.25), ("p2a", 0.5)]]
    with pytest.raises(ValueError, match="pass metadata="):
        SOURCES.create("family", group="product_code")


def test_recent_popularity_windows(train):
    week = SOURCES.create("recent-popularity", days=7).fit(train)
    ids, scores = week.candidates(["a", "nobody"], n=5)
    # ages < 7 days: p1a (0), p1b (1), p3a (0), p2b (5); each a quarter of the window
    expected = [("p1a", 0.25), ("p1b", 0.25), ("p2b", 0.25), ("p3a", 0.25)]
    assert rows(ids, scores) == [expected, expected]
    both = SOURCES.create("recent-popularity", days=[1, 7]).fit(train)
    # the 1-day window holds p1a and p3a (half each)
    assert rows(*both.candidates(["a"], n=5)) == [
        [("p1a", 0.75), ("p3a", 0.75), ("p1b", 0.25), ("p2b", 0.25)]]


@pytest.mark.parametrize("model", ["itemknn", "als"])
def test_cf_matches_its_model_and_never_proposes_untrained_items(train, model):
    params = {"factors": 2, "iterations": 5, "random_state": 0} if model == "als" else {}
    source = SOURCES.create("cf", model=model, params=params).fit(train)
    assert source.params == {"model": model, "params": params}
    ids, scores = source.candidates(["a", "b", "zz"], n=6)
    assert "p9z" not in set(ids.ravel())
    assert (ids[2] == "").all()
    # the same model fitted on the training events only, seen items kept
    frame = pd.DataFrame({"user_id": train.user_ids[train.events["user"]],
                          "item_id": train.item_ids[train.events["item"]]})
    ref = create_model(model, **params).fit(Interactions.from_frame(frame))
    ref_ids, ref_scores = ref.recommend(["a", "b"], k=6, filter_seen=False)
    if model == "itemknn":  # a zero similarity sum is no evidence: not a candidate
        ref_ids[ref_scores <= 0], ref_scores[ref_scores <= 0] = "", -np.inf
    np.testing.assert_array_equal(ids[:2], ref_ids)
    np.testing.assert_allclose(scores[:2], ref_scores, rtol=1e-5)


def test_history_replaces_fit_events_and_online_events_after_the_cut_off_count(train):
    source = SOURCES.create("repurchase", half_life_days=7).fit(train)
    later = pd.DataFrame([("new", "p2b", "2020-01-08"), ("new", "p1b", "2020-01-29"),
                          ("new", "zzz", "2020-01-08")], columns=["user_id", "item_id", "t"])
    history = Interactions.from_frame(later, time_col="t")
    ids, scores = source.candidates(["new", "a"], n=2, history=history)
    # p1b on Jan 29 is an online event after the Jan 15 cut-off: ages now count from it
    # (p1b 0, p2b 21 days: 0.5 ** 3); zzz has no training event; a keeps its fit events
    assert rows(ids, scores) == [[("p1b", 1.0), ("p2b", 0.125)],
                                 [("p1a", 1.25), ("p2a", 0.5)]]
    cf = SOURCES.create("cf", model="itemknn").fit(train)
    folded, _ = cf.candidates(["new"], n=3, history=history)
    # p2b is only similar to itself, p1b to itself and to p3a (b bought both): cosine 1
    # each; the other items have zero similarity and are no candidates
    assert sorted(folded[0]) == ["p1b", "p2b", "p3a"]


def test_registry_params_and_errors(train):
    assert {"repurchase", "family", "recent-popularity", "cf"} <= set(SOURCES.names())
    for name in ("repurchase", "family", "recent-popularity", "cf"):
        source = SOURCES.create(name)
        assert isinstance(source, CandidateSource) and source.name == name
        assert SOURCES.create(name, **source.params).params == source.params
    with pytest.raises(UnknownNameError, match="unknown candidate source"):
        SOURCES.create("telepathy")
    with pytest.raises(RuntimeError, match="not fitted"):
        SOURCES.create("repurchase").candidates(["a"], n=1)
    with pytest.raises(ValueError, match="half_life_days"):
        SOURCES.create("repurchase", half_life_days=0)
    with pytest.raises(ValueError, match="days"):
        SOURCES.create("recent-popularity", days=[7, -1])
    with pytest.raises(ValueError, match="unknown model"):
        SOURCES.create("cf", model="nope")
    source = SOURCES.create("repurchase").fit(train)
    with pytest.raises(TypeError, match="batch-first"):
        source.candidates("a", n=1)
    with pytest.raises(ValueError, match="n must be"):
        source.candidates(["a"], n=0)


def test_a_chain_lists_each_source_in_turn_without_repeats(train):
    chain = SOURCES.create("chain", chain=[
        {"name": "repurchase", "params": {"half_life_days": 7}},
        {"name": "family", "params": {"group": "prefix:2", "half_life_days": 7}}]).fit(train)
    ids, scores = chain.candidates(["a", "b", "zz"], n=4)
    # a: own p1a, p2a, then family's p1b, p2b (p1a, p2a already listed); b: p3a, p1b, p1a
    assert rows(ids, scores) == [[("p1a", 4.0), ("p2a", 3.0), ("p1b", 2.0), ("p2b", 1.0)],
                                 [("p3a", 4.0), ("p1b", 3.0), ("p1a", 2.0)], []]
    with pytest.raises(ValueError, match="needs embeddings"):
        SOURCES.create("chain", chain=[{"name": "visual-neighbours"}])
    with pytest.raises(ValueError, match="at least one"):
        SOURCES.create("chain", chain=[])


def test_a_chain_passes_given_groups_to_its_family_member(train):
    members = [{"name": "repurchase", "params": {"half_life_days": 7}},
               {"name": "family", "params": {"group": "item_groups", "half_life_days": 7}}]
    chain = SOURCES.create("chain", chain=members)
    assert chain.needs_groups
    with pytest.raises(ValueError, match="call set_groups"):
        chain.fit(train)
    groups = {i: i[:2] for i in train.item_ids}  # the prefix:2 families of the test above
    ids, scores = chain.set_groups(groups).fit(train).candidates(["a", "b", "zz"], n=4)
    assert rows(ids, scores) == [[("p1a", 4.0), ("p2a", 3.0), ("p1b", 2.0), ("p2b", 1.0)],
                                 [("p3a", 4.0), ("p1b", 3.0), ("p1a", 2.0)], []]
    assert not SOURCES.create("chain", chain=members[:1]).needs_groups
