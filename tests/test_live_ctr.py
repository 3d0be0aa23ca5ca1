"""Live CTR from a feedback log: click attribution, per-variant/position CTR with Wilson
intervals, the offline click model beside it, variant bucketing, and ``stylerec ctr``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from evaluation.live_ctr import (
    assign_variant,
    ctr_report,
    label_impressions,
    wilson_interval,
)
from recsys.feedback import Event, FeedbackLog


def _events(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["uid", "item", "type", "ts", "variant", "position"])


# u1, u2 styled; u3 plain. Hand-labelled: which impressions were clicked.
ROWS = [
    ("u1", "A", "impression", 0.0, "styled", 1),   # clicked at t=10
    ("u1", "B", "impression", 0.0, "styled", 2),
    ("u1", "A", "click", 10.0, "styled", None),
    ("u2", "A", "impression", 0.0, "styled", 1),   # the click comes after the window
    ("u2", "A", "click", 100_000.0, "styled", None),
    ("u3", "C", "impression", 0.0, "plain", 1),    # shown again before the click: not this one
    ("u3", "D", "impression", 0.0, "plain", 2),    # clicked at t=5
    ("u3", "D", "click", 5.0, "plain", None),
    ("u3", "E", "click", 6.0, "plain", None),      # never shown: ignored
    ("u3", "C", "impression", 20.0, "plain", 1),   # clicked at t=30
    ("u3", "C", "click", 30.0, "plain", None),
    ("u3", "C", "click", 31.0, "plain", None),     # a double click counts once
]


def test_clicks_are_attributed_to_the_latest_impression_within_the_window():
    imp = label_impressions(_events(ROWS), window=86400)
    got = {(r.uid, r.item, r.ts): r.clicked for r in imp.itertuples()}
    assert got == {("u1", "A", 0.0): True, ("u1", "B", 0.0): False, ("u2", "A", 0.0): False,
                   ("u3", "C", 0.0): False, ("u3", "D", 0.0): True, ("u3", "C", 20.0): True}


def test_report_matches_hand_computed_ctr_and_click_model():
    report = ctr_report(_events(ROWS), window=86400, n_resamples=500)
    styled, plain = report["variants"]["styled"], report["variants"]["plain"]
    assert (styled["impressions"], styled["clicks"], styled["users"]) == (3, 1, 2)
    assert (plain["impressions"], plain["clicks"], plain["users"]) == (3, 2, 1)
    assert styled["ctr"] == pytest.approx(1 / 3) and plain["ctr"] == pytest.approx(2 / 3)
    assert report["baseline"] == "plain"
    (diff,) = report["differences"]
    assert diff["variant"] == "styled" and diff["difference"] == pytest.approx(-1 / 3)
    assert diff["relative"] == pytest.approx(-0.5)
    assert -1 <= diff["ci95"][0] <= diff["difference"] <= diff["ci95"][1] <= 1
    cells = {(r["variant"], r["position"]): r for r in report["positions"]}
    assert {k: (c["impressions"], c["clicks"]) for k, c in cells.items()} == {
        ("plain", 1): (2, 1), ("plain", 2): (1, 1), ("styled", 1): (2, 1), ("styled", 2): (1, 0)}
    # PBM with e(r) = 1/log2(r+1): a = clicks / sum of e over impressions
    e2 = 1 / np.log2(3)
    a_styled, a_plain = 1 / (2 + e2), 2 / (2 + e2)
    assert cells["styled", 1]["predicted"] == pytest.approx(a_styled)
    assert cells["styled", 2]["predicted"] == pytest.approx(a_styled * e2)
    assert cells["plain", 2]["predicted"] == pytest.approx(a_plain * e2)


def test_wilson_interval_known_values():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(1.959964**2 / (10 + 1.959964**2))
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert all(np.isnan(wilson_interval(0, 0)))


def test_bootstrap_resamples_shoppers_not_impressions():
    # one arm: half the shoppers click everything, half nothing (200 impressions each);
    # per impression the interval would be ~±1 point, per shopper it is ~±20 points
    rows = []
    for arm in ("styled", "plain"):
        for u in range(20):
            for j in range(200):
                rows.append((f"{arm}{u}", f"i{j}", "impression", 0.0, arm, 1))
                if u % 2 == 0 and arm == "styled":
                    rows.append((f"{arm}{u}", f"i{j}", "click", 1.0, arm, None))
            if arm == "plain" and u % 2 == 0:
                rows.append((f"{arm}{u}", "i0", "click", 1.0, arm, None))
    (diff,) = ctr_report(_events(rows), n_resamples=1000, seed=0)["differences"]
    assert diff["difference"] == pytest.approx(0.5 - 10 / 4000)
    assert diff["ci95"][1] - diff["ci95"][0] > 0.2


def test_variants_are_deterministic_balanced_and_salted():
    users = [f"c{i}" for i in range(20_000)]
    arms = [assign_variant(u) for u in users]
    assert arms == [assign_variant(u) for u in users]
    assert abs(arms.count("styled") / len(arms) - 0.5) < 0.015
    other = [assign_variant(u, salt="exp-2") for u in users]
    assert 0.4 < np.mean(np.array(arms) == np.array(other)) < 0.6
    assert {assign_variant(u, ("a", "b", "c")) for u in users[:200]} == {"a", "b", "c"}
    with pytest.raises(ValueError, match="at least one"):
        assign_variant("u", ())


def test_ctr_command_reads_the_service_log(tmp_path, capsys):
    from stylerec.cli import main

    log = FeedbackLog(tmp_path / "feedback.db")
    log.append([Event(u, i, t, ts, v, p) for u, i, t, ts, v, p in ROWS])
    code = main(["ctr", "--log", str(tmp_path / "feedback.db"), "--json",
                 str(tmp_path / "ctr.json"), "--resamples", "200"])
    out = capsys.readouterr().out
    assert code == 0
    assert "styled" in out and "33.33%" in out and "66.67%" in out and "predicted" in out
    saved = json.loads((tmp_path / "ctr.json").read_text())
    assert saved["variants"]["plain"]["clicks"] == 2
    assert main(["ctr", "--log", str(tmp_path / "missing.db")]) == 2
