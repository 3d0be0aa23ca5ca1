"""Leak audit of a split and its candidate set: the numbers every record starts with.

``cut_time_groups``
    (user, time) groups with events on both sides of the split (for date-only logs:
    a day's basket cut in two). Must be 0 for a temporal split.
``test_only_candidates``
    Candidate items whose only events (in the log and the declared catalog files)
    are the evaluated users' test events: each is an answer handed to the ranker.
    Must be 0.
``train_events_after_test_start``
    Mean over evaluated users of the share of training events dated at or after the
    user's first test event: 0 for a global cut-off, large for per-user splits (the
    model learns from other shoppers' future).
``cold_positive_share``
    Share of relevant (user, item) test pairs whose item has no training event.
``cold_positive_reach``
    How each cold positive could be reached: the number in each declared catalog
    part, and ``unreachable`` (not a candidate at all). With no availability data
    (no ``availability`` or ``purchases`` part), cold recall is an upper bound.

Examples
--------
>>> audit = leak_audit(data, train, test, relevant, candidates)  # doctest: +SKIP
>>> audit["cut_time_groups"]  # doctest: +SKIP
0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from evaluation.splits import time_resolution
from recsys.interactions import Interactions


def cut_time_groups(train: Interactions, test: Interactions) -> int:
    """Number of (user, time) groups with events in both ``train`` and ``test``."""
    if train.events["time"].isna().any() or test.events["time"].isna().any():
        return 0  # no times, no time groups

    def keys(d: Interactions) -> set[tuple[int, int]]:
        t = d.events["time"].to_numpy().astype("datetime64[ns]").astype(np.int64)
        return set(zip(d.events["user"].to_numpy().tolist(), t.tolist(), strict=True))

    return len(keys(train) & keys(test))


def items_only_in_test(data: Interactions, test: Interactions,
                    external: np.ndarray | None = None) -> np.ndarray:
    """Bool per vocabulary item: every event of it in ``data`` is one of ``test``'s events.

    ``external`` marks items with evidence outside the log (declared catalog files).
    """
    def counts(d: Interactions) -> np.ndarray:
        return np.bincount(d.events["item"].to_numpy(), minlength=d.n_items)

    total, in_test = counts(data), counts(test)
    only = (in_test > 0) & (in_test == total)
    if external is not None:
        only &= ~external
    return only


def train_events_after_test_start(train: Interactions, test: Interactions) -> float | None:
    """Mean over test users of the share of training events at or after their first test
    event (None without times)."""
    if len(train) == 0 or len(test) == 0 or train.events["time"].isna().any():
        return None
    first = test.events.groupby("user")["time"].min().to_numpy().astype("datetime64[ns]")
    times = np.sort(train.events["time"].to_numpy().astype("datetime64[ns]"))
    later = len(times) - np.searchsorted(times, first, side="left")
    return float(np.mean(later / len(times)))


def leak_audit(
    data: Interactions,
    train: Interactions,
    test: Interactions,
    relevant: sp.csr_matrix,
    candidates: np.ndarray,
    parts: Mapping[str, np.ndarray] | None = None,
    external: np.ndarray | None = None,
) -> dict[str, Any]:
    """The audit of one split (see the module docstring).

    Parameters
    ----------
    data : Interactions
        The whole log the split came from.
    train, test : Interactions
        The split (one vocabulary).
    relevant : csr_matrix [n_users, n_items]
        The protocol's relevant test pairs.
    candidates : bool ndarray [n_items]
        The items that may be recommended.
    parts : mapping of str to bool ndarray, optional
        The declared catalog parts (label → items), to say how cold positives are reached.
    external : bool ndarray [n_items], optional
        Items the declared catalog files list (evidence outside the log).
    """
    trained = np.zeros(train.n_items, dtype=bool)
    trained[train.events["item"].to_numpy()] = True
    coo = relevant.tocoo()
    cold = ~trained[coo.col]
    reach: dict[str, int] = {}
    for label, mask in (parts or {}).items():
        n = int(mask[coo.col[cold]].sum())
        if n:
            reach[label] = n
    reach["unreachable"] = int((~candidates[coo.col[cold]]).sum())
    n_pos = int(relevant.nnz)
    return {
        "time_resolution": time_resolution(data.events["time"]),
        "cut_time_groups": cut_time_groups(train, test),
        "test_only_candidates": int((items_only_in_test(data, test, external) & candidates).sum()),
        "train_events_after_test_start": train_events_after_test_start(train, test),
        "test_positives": n_pos,
        "cold_positives": int(cold.sum()),
        "cold_positive_share": float(cold.sum() / n_pos) if n_pos else None,
        "cold_positive_reach": reach,
        "candidates": int(candidates.sum()),
    }


def cold_recall_note(parts: Sequence[Mapping[str, Any]] | None) -> str:
    """How to read cold recall under a catalog spec (list of parts)."""
    kinds = {p["part"] for p in parts or [{"part": "train"}]}
    if "availability" in kinds:
        return "exact: an availability file declares which new items were on sale"
    if kinds <= {"train"}:
        return "0 by construction: only items with a training event are candidates"
    return ("upper bound: new items enter through other buyers' purchases, not through "
            "availability data a deployment would have")


def pool_audits(audits: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One audit for a backtest: counts summed over windows, shares pooled."""
    total: dict[str, Any] = {"time_resolution": audits[0]["time_resolution"],
                             "windows": len(audits)}
    for key in ("cut_time_groups", "test_only_candidates", "test_positives", "cold_positives"):
        total[key] = int(sum(a[key] for a in audits))
    after = [a["train_events_after_test_start"] for a in audits
             if a["train_events_after_test_start"] is not None]
    total["train_events_after_test_start"] = float(np.mean(after)) if after else None
    total["cold_positive_share"] = (total["cold_positives"] / total["test_positives"]
                                    if total["test_positives"] else None)
    reach: dict[str, int] = {}
    for a in audits:
        for label, n in a["cold_positive_reach"].items():
            reach[label] = reach.get(label, 0) + n
    total["cold_positive_reach"] = reach
    total["candidates_per_window"] = [a["candidates"] for a in audits]
    return total
