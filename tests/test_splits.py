"""Splits: what goes where, reproducibility, shared vocabulary, reference algorithms."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from evaluation.splits import (
    leave_one_out_split,
    make_split,
    ratio_split,
    split_summary,
    stratified_split,
    temporal_global_split,
    temporal_user_split,
    validation_split,
)
from recsys.interactions import Interactions, load_interactions


def _log(n_users: int = 30, seed: int = 0, ratings: bool = False) -> Interactions:
    """Users with 1..12 events on random items and days (repeat items possible).

    Every event has a distinct time (a day plus the row number in seconds), so
    an event can be found again by its fields.
    """
    rng = np.random.default_rng(seed)
    day = pd.Timedelta(days=1)
    rows = []
    for u in range(n_users):
        for _ in range(1 + u % 12):
            when = pd.Timestamp("2020-01-01") + int(rng.integers(60)) * day
            rows.append({"user_id": f"u{u}", "item_id": f"i{rng.integers(40)}",
                         "t": when + pd.Timedelta(seconds=len(rows)),
                         "r": int(rng.integers(1, 6))})
    frame = pd.DataFrame(rows)
    return Interactions.from_frame(frame, time_col="t", value_col="r" if ratings else None)


def _pairs(data: Interactions) -> pd.DataFrame:
    return data.events[["user", "item", "time", "value"]]


def _check_partition(data: Interactions, train: Interactions, test: Interactions) -> None:
    assert train.user_ids is data.user_ids and test.item_ids is data.item_ids
    both = pd.concat([_pairs(train), _pairs(test)])
    assert len(both) <= len(data)
    merged = both.merge(_pairs(data).drop_duplicates(), how="left", indicator=True)
    assert (merged["_merge"] == "both").all()


def test_temporal_user_split_holds_out_the_latest_events_of_eligible_users():
    data = _log()
    train, test = temporal_user_split(data, test_fraction=0.2, min_items=5)
    _check_partition(data, train, test)
    assert len(train) + len(test) == len(data)
    distinct = data.events.groupby("user")["item"].nunique()
    for user, events in data.events.groupby("user"):
        held = test.events[test.events["user"] == user]
        if distinct[user] < 5:
            assert held.empty
            continue
        n = len(events)
        assert len(held) == max(1, min(n - 1, math.floor(0.2 * n + 0.5)))
        kept = train.events[train.events["user"] == user]
        assert held["time"].min() >= kept["time"].max()


def test_temporal_user_split_never_cuts_a_day():
    frame = pd.DataFrame({"user_id": ["a"] * 5, "item_id": list("vwxyz"),
                          "t": ["2020-01-01"] * 3 + ["2020-01-02"] * 2})
    data = Interactions.from_frame(frame, time_col="t")
    _, test = temporal_user_split(data, test_k=1, min_items=2)
    assert sorted(test.item_ids[test.events["item"]].tolist()) == ["y", "z"]
    # 3 of 5 would cut 2020-01-01; holding out both days leaves nothing to train on
    train, test = temporal_user_split(data, test_k=3, min_items=2)
    assert len(test) == 0 and len(train) == 5


def test_temporal_user_split_keeps_items_unseen_in_train():
    frame = pd.DataFrame({"user_id": ["a"] * 5, "item_id": list("vwxyz"),
                          "t": pd.date_range("2020-01-01", periods=5)})
    train, test = temporal_user_split(Interactions.from_frame(frame, time_col="t"), min_items=5)
    summary = split_summary(train, test)
    assert summary["cold_item_share"] == 1.0 and summary["test_events"] == 1


def test_temporal_user_split_needs_times():
    data = Interactions.from_frame(pd.DataFrame({"user_id": ["a"], "item_id": ["x"]}))
    with pytest.raises(ValueError, match="time"):
        temporal_user_split(data)


def test_temporal_global_split_cuts_every_user_at_one_time():
    data = _log()
    cut = pd.Timestamp("2020-02-01")
    train, test = temporal_global_split(data, cut, keep_cold_users=True)
    assert (train.events["time"] < cut).all() and (test.events["time"] >= cut).all()
    assert len(train) + len(test) == len(data)
    _, warm = temporal_global_split(data, cut)
    warm_users = set(train.events["user"])
    assert set(warm.events["user"]) <= warm_users
    _, by_share = temporal_global_split(data, test_fraction=0.3)
    assert len(by_share) >= 0.25 * len(data)
    with pytest.raises(ValueError, match="exactly one"):
        temporal_global_split(data)


@pytest.mark.parametrize("mode", ["last", "random"])
def test_leave_one_out_holds_out_one_item_per_user(mode):
    data = _log()
    train, test = leave_one_out_split(data, mode=mode, seed=3)
    _check_partition(data, train, test)
    per_user = test.events.groupby("user")["item"].nunique()
    assert (per_user == 1).all()
    eligible = data.events.groupby("user")["item"].nunique() >= 2
    assert set(per_user.index) == set(eligible[eligible].index)
    if mode == "last":  # the latest event; the item may have been bought before
        return
    # the held-out item is gone from the user's training events
    pairs = set(zip(train.events["user"], train.events["item"], strict=True))
    assert not any(p in pairs for p in zip(test.events["user"], test.events["item"], strict=True))


def test_leave_one_out_last_is_the_latest_and_random_is_seeded():
    data = _log()
    _, last = leave_one_out_split(data, mode="last")
    latest = data.events.sort_values("time", kind="stable").groupby("user").tail(1)
    eligible = data.events.groupby("user")["item"].nunique() >= 2
    latest = latest[latest["user"].map(eligible)]
    held = last.events.groupby("user")["item"].first()
    assert (held.loc[latest["user"]].to_numpy() == latest["item"].to_numpy()).all()
    a = leave_one_out_split(data, mode="random", seed=1)[1].events
    b = leave_one_out_split(data, mode="random", seed=1)[1].events
    c = leave_one_out_split(data, mode="random", seed=2)[1].events
    assert a.equals(b) and not a.equals(c)


def _ms_stratified_reference(frame: pd.DataFrame, ratio: float, seed: int) -> pd.DataFrame:
    """Microsoft Recommenders' python_stratified_split, step by step (filter_by="user")."""
    data = frame.copy()
    # the reference's own legacy global-RNG calls, verbatim
    np.random.seed(seed)  # noqa: NPY002
    data["random"] = np.random.rand(data.shape[0])  # noqa: NPY002
    data = data.sort_values(["user_id", "random"])
    groups = data.groupby("user_id")
    data["count"] = groups["user_id"].transform("count")
    data["rank"] = groups.cumcount() + 1
    return data[data["rank"] <= round(ratio * data["count"])]


def test_stratified_split_reproduces_microsoft_recommenders():
    data = _log(n_users=40)
    frame = pd.DataFrame({"user_id": data.user_ids[data.events["user"]],
                          "row": np.arange(len(data))})
    expected = set(_ms_stratified_reference(frame, 0.75, 42)["row"])
    train, test = stratified_split(data, test_fraction=0.25, seed=42)
    assert set(_rows_of(data, train)) == expected
    assert len(train) + len(test) == len(data)
    counts = data.events.groupby("user").size()
    assert (train.events.groupby("user").size().reindex(counts.index, fill_value=0)
            == np.round(0.75 * counts)).all()


def _rows_of(data: Interactions, part: Interactions) -> np.ndarray:
    """Row positions in ``data`` of a subset's events (every event is unique in ``_log``)."""
    key = data.events.reset_index()
    merged = part.events.merge(key, on=["user", "item", "time", "value"], how="left")
    return merged["index"].to_numpy()


def test_stratified_split_min_events_drops_light_users():
    data = _log()
    train, test = stratified_split(data, seed=0, min_events=5)
    kept = set(train.events["user"]) | set(test.events["user"])
    counts = data.events.groupby("user").size()
    assert kept == set(counts[counts >= 5].index)


def test_ratio_split_reproduces_cornac_permutation_and_filters():
    data = _log(ratings=True)
    n = len(data)
    perm = np.random.RandomState(123).permutation(n)
    n_test = math.ceil(0.2 * n)
    raw_test = np.sort(perm[-n_test:])
    train, test = ratio_split(data, 0.2, exclude_unknowns=False, seed=123)
    assert len(train) == n - n_test and len(test) == n_test
    assert np.array_equal(np.sort(_rows_of(data, test)), raw_test)
    _, known = ratio_split(data, 0.2, seed=123)
    assert set(known.events["user"]) <= set(train.events["user"])
    assert set(known.events["item"]) <= set(train.events["item"])
    _, positives = ratio_split(data, 0.2, rating_threshold=4.0, seed=123)
    assert (positives.events["value"] >= 4).all() and len(positives) < len(known)


def test_validation_split_never_sees_test_events():
    data = _log()
    train, test = stratified_split(data, seed=1)
    fit, val = validation_split(train, "stratified", test_fraction=0.25, seed=2)
    train_rows = set(_rows_of(data, train))
    assert set(_rows_of(data, fit)) | set(_rows_of(data, val)) <= train_rows
    assert not set(_rows_of(data, val)) & set(_rows_of(data, test))
    with pytest.raises(ValueError, match="unknown split"):
        make_split(data, "nope")


def test_splits_are_reproducible():
    data = _log()
    for method, params in [("ratio", {"seed": 5}), ("stratified", {"seed": 5}),
                           ("leave_one_out", {"mode": "random", "seed": 5}),
                           ("temporal_user", {"min_items": 3})]:
        a, b = make_split(data, method, **params), make_split(data, method, **params)
        assert a[1].events.equals(b[1].events), method


def test_hm_temporal_split_keeps_cold_items(hm_dir):
    data = load_interactions(hm_dir / "transactions.csv")
    train, test = temporal_user_split(data, test_fraction=0.2, min_items=5)
    summary = split_summary(train, test)
    # most held-out purchases are of articles nobody bought in training: they stay
    assert 0.5 < summary["cold_item_share"] < 0.6
    # 887 customers have >= 5 articles; 111 of them bought everything the held-out
    # share reaches on their first day, and whole days are never cut
    assert summary["test_users"] == 776 and summary["cold_user_share"] == 0.0
    assert summary["time_resolution"] == "date"
    train_days = set(zip(train.events["user"], train.events["time"], strict=True))
    assert not train_days & set(zip(test.events["user"], test.events["time"], strict=True))


def test_ml100k_cornac_ratio_split_sizes(ml100k_dir):
    data = load_interactions(ml100k_dir / "u.data")
    train, test = ratio_split(data, 0.2, rating_threshold=4.0, seed=123)
    assert len(train) == 80_000
    summary = split_summary(train, test)
    assert summary["cold_item_share"] == 0.0 and summary["cold_user_share"] == 0.0
    assert (test.events["value"] >= 4).all()
