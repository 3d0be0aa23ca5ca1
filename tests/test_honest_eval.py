"""One test per leak: same-day baskets are never cut, catalogs derived from test events
are refused, and the leak audit reports hand-computed values; plus the rolling backtest,
user-resampled intervals and the H&M MAP@12."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation.audit import cut_time_groups, leak_audit, train_events_after_test_start
from evaluation.catalogs import CatalogBuilder, CatalogLeakError, check_catalog
from evaluation.metrics import average_precision_at_k, bootstrap_ci, paired_bootstrap
from evaluation.protocol import Protocol, relevance_sets
from evaluation.runner import load_config, run
from evaluation.splits import (
    leave_one_out_split,
    rolling_origin_folds,
    temporal_global_split,
    temporal_user_split,
    time_resolution,
)
from recsys.interactions import Interactions

REPO = Path(__file__).resolve().parents[1]

# three shoppers, daily dates; baskets of several articles on one day
BASKETS = [
    ("a", "x1", "2020-01-01"), ("a", "x2", "2020-01-01"),
    ("a", "y1", "2020-01-05"), ("a", "y2", "2020-01-05"), ("a", "y3", "2020-01-05"),
    ("b", "x1", "2020-01-02"), ("b", "z1", "2020-01-06"), ("b", "z2", "2020-01-06"),
    ("c", "x2", "2020-01-03"), ("c", "y1", "2020-01-03"),
    ("c", "w1", "2020-01-07"), ("c", "w2", "2020-01-07"),
]


def _log(rows=BASKETS) -> Interactions:
    return Interactions.from_frame(pd.DataFrame(rows, columns=["user_id", "item_id", "t"]),
                                   time_col="t")


def _days(data: Interactions, part: Interactions) -> set[tuple[str, str]]:
    ev = part.events
    return set(zip(data.user_ids[ev["user"]], ev["time"].dt.strftime("%m-%d"), strict=True))


def test_date_only_times_are_detected():
    assert time_resolution(_log().events["time"]) == "date"
    stamped = _log([("a", "x", "2020-01-01 10:00"), ("a", "y", "2020-01-01 11:30")])
    assert time_resolution(stamped.events["time"]) == "timestamp"


@pytest.mark.parametrize("split", [
    lambda d: temporal_user_split(d, test_fraction=0.2, min_items=2),
    lambda d: temporal_user_split(d, test_k=1, min_items=2),
    lambda d: leave_one_out_split(d, mode="last"),
    lambda d: temporal_global_split(d, "2020-01-05", test_days=2),
])
def test_no_temporal_split_cuts_a_same_day_basket(split):
    data = _log()
    train, test = split(data)
    assert cut_time_groups(train, test) == 0
    assert not _days(data, train) & _days(data, test)
    assert len(test) > 0


def test_the_held_out_share_rounds_to_whole_days():
    data = _log()
    # 20% of a's 5 events is 1 event, the last of the 3 on 01-05: the whole day goes
    train, test = temporal_user_split(data, test_fraction=0.2, min_items=2)
    held = {(data.user_ids[u], data.item_ids[i]) for u, i in
            zip(test.events["user"], test.events["item"], strict=True)}
    assert held == {("a", "y1"), ("a", "y2"), ("a", "y3"), ("b", "z1"), ("b", "z2"),
                    ("c", "w1"), ("c", "w2")}
    assert len(train) == 5


def test_rolling_windows_train_strictly_before_each_cut_off():
    data = _log()
    folds = rolling_origin_folds(data, "2020-01-05", n_folds=2, window_days=2)
    assert [f.label for f in folds] == ["2020-01-05", "2020-01-07"]
    for fold in folds:
        assert (fold.train.events["time"] < fold.cutoff).all()
        assert fold.test.events["time"].between(fold.cutoff, fold.end, inclusive="left").all()
    # window 1: a's 01-05 basket and b's 01-06 basket (c has no events in it)
    assert len(folds[0].test) == 5 and len(folds[1].test) == 2


def test_a_catalog_derived_from_test_events_is_refused(tmp_path):
    for part in ("test", "all"):
        with pytest.raises(CatalogLeakError, match="held-out purchases would decide"):
            check_catalog([{"part": "train"}, {"part": part}])
    # the per-user split with every item of the log a candidate: y3, z1, z2, w1, w2 are
    # only ever bought in test
    log = tmp_path / "log.csv"
    pd.DataFrame(BASKETS, columns=["user_id", "item_id", "t_dat"]).to_csv(log, index=False)
    config = {"data": {"path": str(log), "options": {"time_col": "t_dat"}},
              "split": {"method": "temporal_user", "test_k": 1, "min_items": 2},
              "protocol": {"candidate_items": "all"}, "k": [2],
              "models": [{"name": "popularity", "model": "popularity"}],
              "bootstrap": {"n_resamples": 0}, "output": str(tmp_path / "out")}
    with pytest.raises(CatalogLeakError, match="makes 6 items whose only events are test"):
        run(config, html=False)
    # a "population" that shares a user with the evaluated ones is no independent catalog
    others = tmp_path / "others.csv"
    others.write_text("customer_id,article_id,t_dat\nq,n1,2020-01-05\nb,z1,2020-01-06\n")
    builder = CatalogBuilder([{"part": "train"}, {"part": "purchases", "path": str(others)}],
                             _log())
    fold = rolling_origin_folds(_log(), "2020-01-05", 1, 2)[0]
    with pytest.raises(CatalogLeakError, match="1 of its buyers"):
        builder.build(fold.train, fold.test, fold.cutoff, fold.end)


def test_audit_values_on_a_hand_checked_window(tmp_path):
    rows = BASKETS + [("d", "z2", "2020-01-05"), ("e", "n9", "2020-01-01")]
    data = _log(rows)
    others = tmp_path / "others.csv"
    others.write_text("customer_id,article_id,t_dat\nq,y3,2020-01-05\nq,new,2020-01-06\n"
                      "r,x1,2020-01-09\n")
    fold = rolling_origin_folds(data, "2020-01-05", 1, 2)[0]
    spec = [{"part": "train"}, {"part": "unevaluated-buyers"},
            {"part": "purchases", "path": str(others)}]
    cat = CatalogBuilder(spec, data).build(fold.train, fold.test, fold.cutoff, fold.end)
    in_vocab = set(data.item_ids[cat.mask])
    # training items x1 x2 y1 n9; d (no history) bought z2; q bought y3 (and "new")
    assert in_vocab == {"x1", "x2", "y1", "n9", "z2", "y3"}
    assert "new" in cat.item_ids and "w1" not in cat.item_ids
    protocol = Protocol(ks=(2,), exclude_train="none")
    relevant, _, candidates = relevance_sets(fold.train, fold.test, protocol, cat.mask)
    audit = leak_audit(data, fold.train, fold.test, relevant, candidates, cat.parts,
                       cat.external)
    # positives: a y1 y2 y3, b z1 z2; cold (no training event): y2 y3 z1 z2
    assert audit["cut_time_groups"] == 0 and audit["test_only_candidates"] == 0
    assert audit["train_events_after_test_start"] == 0.0
    assert (audit["test_positives"], audit["cold_positives"]) == (5, 4)
    assert audit["cold_positive_share"] == pytest.approx(0.8)
    assert audit["cold_positive_reach"] == {"unevaluated-buyers": 1,
                                            "purchases:others.csv": 1, "unreachable": 2}
    # every item a candidate: y2, y3 and z1 have no event but a's and b's test purchases
    # in the log; the other customers' file vouches for y3
    everything = np.ones(data.n_items, dtype=bool)
    assert leak_audit(data, fold.train, fold.test, relevant, everything)[
        "test_only_candidates"] == 3
    assert leak_audit(data, fold.train, fold.test, relevant, everything, external=cat.external)[
        "test_only_candidates"] == 2


def test_train_events_after_test_start_of_a_per_user_split():
    data = _log()
    train, test = temporal_user_split(data, test_k=1, min_items=2)
    # training days 01-01..01-03 all precede every user's first test day (01-05..01-07)
    assert train_events_after_test_start(train, test) == 0.0
    mask = (data.events["user"] == 2).to_numpy() & (data.events["time"] < "2020-01-05").to_numpy()
    per_user_train, per_user_test = data.select(~mask), data.select(mask)
    # c's test day 01-03: training events on or after it are a's 3 + b's 2 + c's 2 of 10
    assert train_events_after_test_start(per_user_train, per_user_test) == pytest.approx(0.7)


def test_hm_map_at_12_divides_by_min_of_actual_and_12():
    hits = np.zeros((2, 12), dtype=bool)
    hits[0, [0, 2]] = True  # 3 actual purchases, hits at ranks 1 and 3
    hits[1, [1]] = True     # 20 actual purchases, one hit at rank 2
    ap = average_precision_at_k(hits, [3, 20], 12)
    assert ap[0] == pytest.approx((1 + 2 / 3) / 3)
    assert ap[1] == pytest.approx((1 / 2) / 12)


def test_intervals_resample_users_not_pairs():
    # user a has 4 windows at 1, user b one at 0: a resample holds aa, ab or bb
    values = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    users = np.array(["a"] * 4 + ["b"])
    low, high = bootstrap_ci(values, n_resamples=400, seed=0, groups=users)
    assert low == pytest.approx(0.0) and high == pytest.approx(1.0)
    paired = paired_bootstrap(values, values - 0.5, n_resamples=50, seed=0, groups=users)
    assert paired["ci_low"] == pytest.approx(0.5) == paired["ci_high"]


def test_rolling_backtest_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for u in range(40):
        for day in sorted(rng.choice(60, size=6, replace=False)):
            date = (pd.Timestamp("2020-01-01") + pd.Timedelta(days=int(day))).date()
            # each shopper rebuys their two favourites, plus a popular article
            rows += [(f"u{u}", f"fav{u}-{day % 2}", str(date)),
                     (f"u{u}", f"pop{rng.integers(3)}", str(date))]
    log = tmp_path / "log.csv"
    pd.DataFrame(rows, columns=["customer_id", "article_id", "t_dat"]).to_csv(log, index=False)
    config = {
        "name": "synthetic-backtest",
        "data": {"path": str(log)},
        "split": {"method": "rolling", "first_cutoff": "2020-02-05", "n_folds": 3,
                  "window_days": 7},
        "catalog": [{"part": "train"}, {"part": "unevaluated-buyers"}],
        "tuning": {"n_windows": 2},
        "protocol": {"exclude_train": "none"},
        "k": [2, 12], "metrics": ["map", "ndcg", "hit_rate", "cold_recall"],
        "headline_metric": "map@12", "compare_metrics": ["map@12"],
        "models": [
            {"name": "popularity", "model": "sources", "role": "baseline",
             "params": {"chain": [{"source": "recent-popularity", "params": {"days": 30}}]}},
            {"name": "repurchase", "model": "sources", "role": "baseline",
             "params": {"chain": [{"source": "repurchase"}]},
             "tune": {"grid": {"chain": [[{"source": "repurchase",
                                           "params": {"half_life_days": h}}] for h in (1, 30)]}}},
            {"name": "als", "model": "sources",
             "params": {"chain": [{"source": "cf", "params": {"model": "als", "params": {
                 "factors": 4, "iterations": 3, "num_threads": 1}}}]}},
        ],
        "bootstrap": {"n_resamples": 100, "seed": 0},
        "output": str(tmp_path / "out"),
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    record = run(load_config(path))
    saved = json.loads((tmp_path / "out" / "record.json").read_text())
    assert saved["audit"]["cut_time_groups"] == 0 and saved["audit"]["windows"] == 3
    assert saved["audit"]["test_only_candidates"] == 0
    models = {m["name"]: m for m in record["models"]}
    # rebuying favourites wins; it is the best baseline and ALS is compared with it
    assert record["baseline"] == "repurchase"
    assert models["repurchase"]["metrics"]["map@12"]["mean"] > models["popularity"][
        "metrics"]["map@12"]["mean"]
    assert set(models["als"]["vs_baseline"]) == {"map@12"}
    pairs = sum(w["test_users"] for w in record["split"]["windows"])
    assert models["als"]["n_pairs"] == pairs and models["als"]["n_users"] <= 40
    assert [w["cutoff"] for w in record["split"]["windows"]] == [
        "2020-02-05", "2020-02-12", "2020-02-19"]
    assert models["repurchase"]["tuning"]["windows"] == ["2020-01-22", "2020-01-29"]
    assert "2020-01-22" in record["tuning_protocol"]
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.index("Leak audit") < page.index("Metrics")


def test_shipped_backtest_config_is_honest():
    config = load_config(REPO / "configs" / "hm_backtest.json")
    assert config["split"] == {"method": "rolling", "first_cutoff": "2020-07-01",
                               "n_folds": 12, "window_days": 7}
    parts = [p["part"] for p in config["catalog"]]
    assert parts == ["train", "unevaluated-buyers", "purchases"]
    assert config["protocol"]["exclude_train"] == "none"
    roles = {m["name"]: m.get("role") for m in config["models"]}
    assert {"repurchase", "family", "recent-popularity-7d", "itemknn", "als",
            "popularity"} <= {n for n, r in roles.items() if r == "baseline"}
