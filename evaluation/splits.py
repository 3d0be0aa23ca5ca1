"""Train/test splits of an interaction log for offline evaluation.

Every splitter takes an :class:`~recsys.interactions.Interactions` and returns
``(train, test)``: two subsets of its events built with ``Interactions.select``,
so both keep the full id vocabulary and share one index space (item ``j`` of
the test matrix is item ``j`` of the training matrix). An event lands in at
most one side; the table says which test events a splitter drops. Splits are
deterministic: the random ones take a ``seed``.

What each splitter keeps in ``test``
------------------------------------
=====================  ==========================  ==========================
splitter               items unseen in train       users unseen in train
=====================  ==========================  ==========================
temporal_user_split    kept                        impossible (per-user cut)
temporal_global_split  kept                        dropped unless asked
leave_one_out_split    kept                        impossible (per-user cut)
stratified_split       kept                        impossible (per-user cut)
ratio_split            dropped (Cornac default)    dropped (Cornac default)
=====================  ==========================  ==========================

Time groups are never cut
-------------------------
Events of one user at the same timestamp form a *time group* whose internal order
is unknown (for date-only logs such as H&M's ``t_dat``: one day's basket). Every
temporal splitter puts a whole group on one side: cutting it would hold out "the
rest of today's basket" and reward whatever recommends what the user just bought.
:func:`time_resolution` says whether a log's times are dates only; the splitters
log it, and :func:`split_summary` records it.

Items unseen in training stay in the test set wherever the protocol allows:
on the H&M sample about 57% of the articles a customer buys in the last 20% of
their history were never bought by anyone in training, and dropping them would
hide exactly the cold items an image-based ranker exists to reach. A CF model
can never rank them, so they cap its recall; that is the honest number.

Examples
--------
The functions' examples below reuse these two imports.

>>> import pandas as pd
>>> from recsys.interactions import Interactions
>>> frame = pd.DataFrame({
...     "user_id": ["a"] * 5 + ["b"] * 2,
...     "item_id": ["x", "y", "z", "w", "v", "x", "y"],
...     "t": pd.date_range("2020-01-01", periods=7, freq="D"),
... })
>>> data = Interactions.from_frame(frame, time_col="t")
>>> train, test = temporal_user_split(data, test_fraction=0.2, min_items=5)
>>> len(train), len(test)  # user "b" has too few items to be evaluated
(6, 1)
>>> test.item_ids[test.events["item"]].tolist()
['v']
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from recsys.interactions import Interactions

log = logging.getLogger(__name__)

Split = tuple[Interactions, Interactions]


def _by_user_then_time(data: Interactions) -> np.ndarray:
    """Event positions ordered by (user, time, position in the log)."""
    events = data.events
    if events["time"].isna().any():
        raise ValueError("this split needs a time for every event; the log has missing times")
    # lexsort sorts by the last key first; the row position breaks time ties
    # so events on the same timestamp keep their order in the source file
    times = events["time"].to_numpy().astype("datetime64[ns]").astype(np.int64)
    return np.lexsort((np.arange(len(events)), times, events["user"].to_numpy()))


def time_resolution(times: pd.Series) -> str:
    """``"date"`` when every time is a midnight (a date-only column), ``"none"`` without
    times, else ``"timestamp"``.

    Examples
    --------
    >>> time_resolution(pd.Series(pd.to_datetime(["2020-09-01", "2020-09-02"])))
    'date'
    >>> time_resolution(pd.Series(pd.to_datetime(["2020-09-01 10:15"])))
    'timestamp'
    """
    if len(times) == 0 or times.isna().all():
        return "none"
    valid = times.dropna()
    return "date" if bool((valid == valid.dt.normalize()).all()) else "timestamp"


def _say_resolution(data: Interactions) -> None:
    if time_resolution(data.events["time"]) == "date":
        log.info("the time column holds dates only: a user's events of one day form one "
                 "group, which no split cuts")


def _group_ids(users_sorted: np.ndarray, times_sorted: np.ndarray) -> np.ndarray:
    """Id of each event's (user, time) group, for events ordered by (user, time)."""
    new = np.r_[True, (users_sorted[1:] != users_sorted[:-1])
                | (times_sorted[1:] != times_sorted[:-1])]
    return np.cumsum(new) - 1


def _whole_groups(held: np.ndarray, users_sorted: np.ndarray,
                  times_sorted: np.ndarray) -> np.ndarray:
    """Extend a per-event held-out mask (in (user, time) order) to whole time groups.

    A group with any held-out event is held out entirely; a user whose every event
    would then be held out keeps them all in training (nothing left to learn from).
    """
    gid = _group_ids(users_sorted, times_sorted)
    group_held = np.zeros(gid[-1] + 1 if len(gid) else 0, dtype=bool)
    np.logical_or.at(group_held, gid, held)
    held = group_held[gid]
    all_held = pd.Series(held).groupby(users_sorted).transform("all").to_numpy()
    return held & ~all_held


def _rank_within_user(users_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based rank of each event within its user's run, and the run's length."""
    n = len(users_sorted)
    starts = np.flatnonzero(np.r_[True, users_sorted[1:] != users_sorted[:-1]])
    lengths = np.diff(np.r_[starts, n])
    first = np.repeat(starts, lengths)
    return np.arange(n) - first, np.repeat(lengths, lengths)


def _distinct_items_per_user(data: Interactions) -> np.ndarray:
    pairs = data.events[["user", "item"]].drop_duplicates()
    return np.bincount(pairs["user"].to_numpy(), minlength=data.n_users)


def _n_test(n: np.ndarray, test_fraction: float | None, test_k: int | None) -> np.ndarray:
    """Events to hold out per user: ``test_k``, or the fraction rounded half up;
    at least 1 and at most ``n - 1`` so every evaluated user keeps some history."""
    if test_k is not None:
        want = np.full_like(n, test_k)
    else:
        want = np.floor(test_fraction * n + 0.5).astype(n.dtype)
    return np.clip(want, 1, np.maximum(n - 1, 1))


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")


def _split_mask(data: Interactions, test_mask: np.ndarray) -> Split:
    return data.select(~test_mask), data.select(test_mask)


def temporal_user_split(
    data: Interactions,
    test_fraction: float = 0.2,
    *,
    test_k: int | None = None,
    min_items: int = 5,
) -> Split:
    """Hold out the latest events of every user with enough history.

    For each user with at least ``min_items`` *distinct* items, the user's events
    are ordered by time and the last ``test_k`` events, or the last
    ``round_half_up(test_fraction * n_events)`` events, are chosen; then the cut
    moves to a time-group boundary: a group (same user, same timestamp; for dates,
    same day) with any chosen event goes to ``test`` whole, so the test share can
    exceed the fraction. A user whose every event would be held out (one group)
    stays in ``train``. Users with fewer distinct items stay entirely in ``train``
    (they are not evaluated). Test items that nobody bought in ``train`` are kept.

    Note that other users' events after a user's cut-off stay in ``train``: the
    per-user cut is the standard "predict each shopper's next purchases"
    protocol, not a simulation of one deployment date (use
    :func:`temporal_global_split` for that).

    Parameters
    ----------
    data : Interactions
        Log with a time for every event.
    test_fraction : float
        Share of each eligible user's events to hold out (ignored with ``test_k``).
    test_k : int, optional
        Hold out exactly this many events per eligible user instead.
    min_items : int
        Minimum number of distinct items for a user to be split (evaluated).

    Returns
    -------
    train, test : Interactions

    Examples
    --------
    >>> frame = pd.DataFrame({"user_id": ["a"] * 4, "item_id": list("wxyz"),
    ...                       "t": ["2020-01-04", "2020-01-01", "2020-01-03", "2020-01-02"]})
    >>> train, test = temporal_user_split(Interactions.from_frame(frame, time_col="t"),
    ...                                   test_k=2, min_items=3)
    >>> sorted(test.item_ids[test.events["item"]].tolist())
    ['w', 'y']
    >>> same_day = frame.assign(t=["2020-01-02", "2020-01-01", "2020-01-02", "2020-01-02"])
    >>> _, test = temporal_user_split(Interactions.from_frame(same_day, time_col="t"),
    ...                               test_k=1, min_items=3)
    >>> sorted(test.item_ids[test.events["item"]].tolist())  # the whole last day
    ['w', 'y', 'z']
    """
    if test_k is None:
        _check_fraction("test_fraction", test_fraction)
    elif test_k < 1:
        raise ValueError(f"test_k must be >= 1, got {test_k}")
    _say_resolution(data)
    order = _by_user_then_time(data)
    users = data.events["user"].to_numpy()[order]
    times = data.events["time"].to_numpy()[order]
    rank, length = _rank_within_user(users)
    eligible = _distinct_items_per_user(data)[users] >= max(min_items, 2)
    held = rank >= length - _n_test(length, test_fraction, test_k)
    held = _whole_groups(held, users, times)
    test_mask = np.zeros(len(data), dtype=bool)
    test_mask[order[held & eligible]] = True
    return _split_mask(data, test_mask)


def temporal_global_split(
    data: Interactions,
    cutoff: str | pd.Timestamp | None = None,
    *,
    test_fraction: float | None = None,
    test_days: float | None = None,
    keep_cold_users: bool = False,
) -> Split:
    """Split every user at one moment: events at or after ``cutoff`` are test.

    This simulates deploying a model trained up to a date. Give either a
    ``cutoff`` time or a ``test_fraction``: the cut-off is then the time of the
    event at that quantile, and every event at that exact time goes to test, so
    the test share can exceed the fraction when timestamps are coarse (daily).
    A time group is never cut: all its events share one time. With ``test_days``
    the test window is the ``test_days`` days from the cut-off (the H&M
    competition protocol: the 7 days after it); later events are in neither side.

    Test events of users with no training events (cold users) are dropped unless
    ``keep_cold_users``; a CF model has nothing to rank them from. Test items
    unseen in training are kept.

    Parameters
    ----------
    data : Interactions
        Log with a time for every event.
    cutoff : str or Timestamp, optional
        First moment of the test period.
    test_fraction : float, optional
        Share of events (by time) to hold out instead of a ``cutoff``.
    test_days : float, optional
        Length of the test window in days (default: everything after the cut-off).
    keep_cold_users : bool
        Keep test events of users with no training event.

    Returns
    -------
    train, test : Interactions

    Examples
    --------
    >>> frame = pd.DataFrame({"user_id": ["a", "a", "b", "c"], "item_id": list("xyzx"),
    ...                       "t": ["2020-01-01", "2020-02-01", "2020-01-05", "2020-03-01"]})
    >>> train, test = temporal_global_split(Interactions.from_frame(frame, time_col="t"),
    ...                                     "2020-01-15")
    >>> len(train), len(test)  # "c" only appears after the cut-off
    (2, 1)
    """
    if (cutoff is None) == (test_fraction is None):
        raise ValueError("give exactly one of cutoff or test_fraction")
    if test_days is not None and not test_days > 0:
        raise ValueError(f"test_days must be > 0, got {test_days}")
    times = data.events["time"]
    if times.isna().any():
        raise ValueError("this split needs a time for every event; the log has missing times")
    _say_resolution(data)
    if cutoff is None:
        _check_fraction("test_fraction", test_fraction)
        ordered = np.sort(times.to_numpy())
        cut = ordered[len(ordered) - max(1, int(round(test_fraction * len(ordered))))]
    else:
        cut = pd.Timestamp(cutoff).to_datetime64()
    train_mask = np.array(times < cut, dtype=bool)
    test_mask = ~train_mask
    if test_days is not None:
        test_mask &= np.array(times < cut + pd.Timedelta(days=test_days), dtype=bool)
    if not keep_cold_users:
        test_mask &= _known_in(data.events["user"], ~train_mask, data.n_users)
    return data.select(train_mask), data.select(test_mask)


@dataclass(frozen=True)
class Fold:
    """One window of a rolling-origin backtest: train strictly before ``cutoff``,
    test in ``[cutoff, end)``."""

    cutoff: pd.Timestamp
    end: pd.Timestamp
    train: Interactions
    test: Interactions

    @property
    def label(self) -> str:
        return self.cutoff.strftime("%Y-%m-%d")


def rolling_origin_folds(
    data: Interactions,
    first_cutoff: str | pd.Timestamp,
    n_folds: int,
    window_days: float = 7,
    *,
    keep_cold_users: bool = False,
) -> list[Fold]:
    """K consecutive test windows, each trained on every event before its cut-off.

    Fold ``i`` has cut-off ``first_cutoff + i * window_days`` and tests the
    ``window_days`` days from it (:func:`temporal_global_split` with ``test_days``):
    what a deployment retrained every window sees. Results are pooled over
    (user, window) pairs.

    Examples
    --------
    >>> frame = pd.DataFrame({"user_id": list("aabab"), "item_id": list("xyzxw"),
    ...                       "t": ["2020-01-01", "2020-01-02", "2020-01-02",
    ...                             "2020-01-04", "2020-01-06"]})
    >>> data = Interactions.from_frame(frame, time_col="t")
    >>> folds = rolling_origin_folds(data, "2020-01-03", n_folds=2, window_days=2)
    >>> [(f.label, len(f.train), len(f.test)) for f in folds]
    [('2020-01-03', 3, 1), ('2020-01-05', 4, 1)]
    """
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 1:
        raise ValueError(f"n_folds must be an integer >= 1, got {n_folds!r}")
    first = pd.Timestamp(first_cutoff)
    folds = []
    for i in range(n_folds):
        cut = first + pd.Timedelta(days=i * window_days)
        train, test = temporal_global_split(data, cut, test_days=window_days,
                                            keep_cold_users=keep_cold_users)
        folds.append(Fold(cut, cut + pd.Timedelta(days=window_days), train, test))
    return folds


def leave_one_out_split(
    data: Interactions,
    *,
    mode: str = "last",
    seed: int = 0,
    min_items: int = 2,
) -> Split:
    """Hold out one item per user: the latest one(s), or one chosen at random.

    For each user with at least ``min_items`` distinct items: with ``mode="last"``
    the user's latest time group goes to test (one event where timestamps are
    distinct; on daily dates the whole last basket, since the order inside a day
    is unknown; a user with one time group is not evaluated); with
    ``mode="random"`` a uniformly random one of the user's distinct items, seeded,
    and *all* of the user's events with it go to test, so the held-out item is
    really unseen for that user in training.

    Parameters
    ----------
    data : Interactions
        Log; ``mode="last"`` needs a time for every event.
    mode : {"last", "random"}
        Which item to hold out.
    seed : int
        Seed of ``mode="random"``.
    min_items : int
        Minimum number of distinct items for a user to be evaluated (at least 2).

    Returns
    -------
    train, test : Interactions

    Examples
    --------
    >>> frame = pd.DataFrame({"user_id": ["a"] * 3, "item_id": list("xyz"),
    ...                       "t": ["2020-01-01", "2020-01-03", "2020-01-02"]})
    >>> train, test = leave_one_out_split(Interactions.from_frame(frame, time_col="t"))
    >>> test.item_ids[test.events["item"]].tolist()
    ['y']
    """
    if mode not in ("last", "random"):
        raise ValueError(f"mode must be 'last' or 'random', got {mode!r}")
    events = data.events
    eligible = _distinct_items_per_user(data) >= max(min_items, 2)
    if mode == "last":
        _say_resolution(data)
        order = _by_user_then_time(data)
        users = events["user"].to_numpy()[order]
        is_last = np.r_[users[1:] != users[:-1], True]
        held = _whole_groups(is_last, users, events["time"].to_numpy()[order])
        test_mask = np.zeros(len(data), dtype=bool)
        test_mask[order[held & eligible[users]]] = True
        return _split_mask(data, test_mask)
    pairs = events[["user", "item"]].drop_duplicates().sort_values(["user", "item"])
    rng = np.random.default_rng(seed)
    pick = pairs.assign(key=rng.random(len(pairs))).sort_values(["user", "key"])
    chosen = pick.drop_duplicates("user")[["user", "item"]]
    chosen = chosen[eligible[chosen["user"].to_numpy()]]
    key = events["user"].to_numpy().astype(np.int64) * data.n_items + events["item"].to_numpy()
    held = chosen["user"].to_numpy().astype(np.int64) * data.n_items + chosen["item"].to_numpy()
    return _split_mask(data, np.isin(key, held))


def stratified_split(
    data: Interactions,
    test_fraction: float = 0.25,
    *,
    seed: int = 42,
    min_events: int = 1,
) -> Split:
    """Random per-user split that keeps each user's train/test ratio.

    Reproduces Microsoft Recommenders' ``python_stratified_split(data,
    ratio=1 - test_fraction, min_rating=min_events, filter_by="user", seed=seed)``
    event for event when the log is in the same row order: a uniform random key
    per event from ``numpy.random.RandomState(seed)`` in log order; each user's
    events sorted by it; the first ``round((1 - test_fraction) * n)`` go to train
    (``round`` is NumPy's, half to even), the rest to test. Users with fewer than
    ``min_events`` events are dropped from both sides, as there.

    Parameters
    ----------
    data : Interactions
        Log, in the row order the reference implementation saw.
    test_fraction : float
        Share of each user's events to hold out (MS Recommenders' ``1 - ratio``).
    seed : int
        Seed of the per-event random key.
    min_events : int
        Users with fewer events are dropped (MS Recommenders' ``min_rating``).

    Returns
    -------
    train, test : Interactions

    Examples
    --------
    >>> frame = pd.DataFrame({"user_id": ["a"] * 4 + ["b"] * 8,
    ...                       "item_id": [str(i) for i in range(12)]})
    >>> train, test = stratified_split(Interactions.from_frame(frame), test_fraction=0.25)
    >>> len(train), len(test)
    (9, 3)
    """
    _check_fraction("test_fraction", test_fraction)
    n = len(data)
    users = data.events["user"].to_numpy()
    key = np.random.RandomState(seed).rand(n)  # legacy RNG: the stream MS Recommenders uses
    order = np.lexsort((key, users))
    rank, length = _rank_within_user(users[order])
    n_train = np.round((1.0 - test_fraction) * length)
    train_sorted = rank < n_train
    keep = np.bincount(users, minlength=data.n_users)[users] >= min_events
    train_mask = np.zeros(n, dtype=bool)
    train_mask[order[train_sorted]] = True
    return data.select(train_mask & keep), data.select(~train_mask & keep)


def ratio_split(
    data: Interactions,
    test_fraction: float = 0.2,
    *,
    rating_threshold: float | None = None,
    exclude_unknowns: bool = True,
    seed: int | None = 123,
) -> Split:
    """Global random split of events, as Cornac's ``RatioSplit``.

    Reproduces ``cornac.eval_methods.RatioSplit(data, test_size=test_fraction,
    rating_threshold=..., exclude_unknowns=..., seed=seed)`` for a log in the same
    row order: ``numpy.random.RandomState(seed).permutation(n_events)``; the last
    ``ceil(test_fraction * n_events)`` positions of the permutation are test, the
    rest train. With ``exclude_unknowns`` test events whose user or item has no
    training event are dropped (Cornac ignores them when evaluating). With a
    ``rating_threshold`` only test events with ``value >= rating_threshold`` are
    kept: they are Cornac's positives; the others would only be negatives, which
    every non-training item already is.

    Parameters
    ----------
    data : Interactions
        Log, in the row order the reference implementation saw.
    test_fraction : float
        Share of events to hold out, or (at least 1) their number (Cornac's
        ``test_size``).
    rating_threshold : float, optional
        Keep only test events with ``value`` at least this.
    exclude_unknowns : bool
        Drop test events whose user or item has no training event.
    seed : int, optional
        Seed of the permutation (None: nondeterministic, as Cornac).

    Returns
    -------
    train, test : Interactions

    Examples
    --------
    >>> frame = pd.DataFrame({"user_id": list("aabbccdd"), "item_id": list("xyxyxyxy"),
    ...                       "r": [5, 3, 4, 2, 5, 5, 1, 4]})
    >>> data = Interactions.from_frame(frame, value_col="r")
    >>> train, test = ratio_split(data, 0.25, rating_threshold=4.0, seed=1)
    >>> len(train), len(test) <= 2
    (6, True)
    """
    n = len(data)
    n_test = math.ceil(test_fraction * n) if test_fraction < 1 else int(test_fraction)
    if not 0 < n_test < n:
        raise ValueError(f"test_fraction={test_fraction} leaves {n_test} of {n} events for test")
    perm = np.random.RandomState(seed).permutation(n)  # legacy RNG: Cornac's get_rng(seed)
    test_mask = np.zeros(n, dtype=bool)
    test_mask[perm[n - n_test:]] = True
    events = data.events
    keep = test_mask.copy()
    if exclude_unknowns:
        keep &= _known_in(events["user"], test_mask, data.n_users)
        keep &= _known_in(events["item"], test_mask, data.n_items)
    if rating_threshold is not None:
        keep &= events["value"].to_numpy() >= rating_threshold
    return data.select(~test_mask), data.select(keep)


def _known_in(codes: pd.Series, test_mask: np.ndarray, size: int) -> np.ndarray:
    """Whether each event's user/item also occurs outside ``test_mask``."""
    codes = codes.to_numpy()
    seen = np.zeros(size, dtype=bool)
    seen[codes[~test_mask]] = True
    return seen[codes]


SPLITTERS: dict[str, Callable[..., Split]] = {
    "temporal_user": temporal_user_split,
    "temporal_global": temporal_global_split,
    "leave_one_out": leave_one_out_split,
    "stratified": stratified_split,
    "ratio": ratio_split,
}


def make_split(data: Interactions, method: str, **params: Any) -> Split:
    """Run the splitter registered as ``method`` (a key of :data:`SPLITTERS`).

    Examples
    --------
    >>> train, test = make_split(data, "ratio", test_fraction=0.2, seed=123)  # doctest: +SKIP
    """
    try:
        splitter = SPLITTERS[method]
    except KeyError:
        raise ValueError(f"unknown split {method!r}; available: {sorted(SPLITTERS)}") from None
    return splitter(data, **params)


def validation_split(train: Interactions, method: str = "ratio", **params: Any) -> Split:
    """Carve a validation set out of a training set, for tuning.

    Same splitters as for the test split, applied to ``train`` only, so the test
    events are never seen while choosing hyperparameters. Returns
    ``(fit, validation)``, both sharing ``train``'s vocabulary.

    Examples
    --------
    >>> fit, val = validation_split(train, "stratified", seed=7)  # doctest: +SKIP
    """
    return make_split(train, method, **params)


def split_summary(train: Interactions, test: Interactions) -> dict[str, Any]:
    """Counts that say what a split holds: sizes, and how much of test is cold.

    ``cold_item_share`` is the share of test events whose item has no training
    event; ``repeat_share`` the share of test events whose (user, item) pair also
    occurs in training.
    """
    train_items = np.zeros(train.n_items, dtype=bool)
    train_items[train.events["item"].to_numpy()] = True
    train_users = np.zeros(train.n_users, dtype=bool)
    train_users[train.events["user"].to_numpy()] = True
    t_users = test.events["user"].to_numpy()
    t_items = test.events["item"].to_numpy()
    pair = train.matrix[t_users, t_items] if len(test) else np.zeros((1, 0))
    n_test = max(len(test), 1)
    return {
        "time_resolution": time_resolution(train.events["time"]),
        "train_events": len(train),
        "test_events": len(test),
        "train_users": int(train_users.sum()),
        "test_users": int(np.unique(t_users).size),
        "train_items": int(train_items.sum()),
        "test_items": int(np.unique(t_items).size),
        "cold_item_share": float((~train_items[t_items]).sum() / n_test),
        "cold_user_share": float((~train_users[t_users]).sum() / n_test),
        "repeat_share": float((np.asarray(pair).ravel() > 0).sum() / n_test),
    }
