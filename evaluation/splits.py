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

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from recsys.interactions import Interactions

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
    are ordered by time (ties keep their order in the log) and the last
    ``test_k`` events, or the last ``round_half_up(test_fraction * n_events)``
    events, go to ``test``; always at least one and at most ``n_events - 1``.
    Users with fewer distinct items stay entirely in ``train`` (they are not
    evaluated). Test items that nobody bought in ``train`` are kept.

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
    """
    if test_k is None:
        _check_fraction("test_fraction", test_fraction)
    elif test_k < 1:
        raise ValueError(f"test_k must be >= 1, got {test_k}")
    order = _by_user_then_time(data)
    users = data.events["user"].to_numpy()[order]
    rank, length = _rank_within_user(users)
    eligible = _distinct_items_per_user(data)[users] >= max(min_items, 2)
    held = rank >= length - _n_test(length, test_fraction, test_k)
    test_mask = np.zeros(len(data), dtype=bool)
    test_mask[order[held & eligible]] = True
    return _split_mask(data, test_mask)


def temporal_global_split(
    data: Interactions,
    cutoff: str | pd.Timestamp | None = None,
    *,
    test_fraction: float | None = None,
    keep_cold_users: bool = False,
) -> Split:
    """Split every user at one moment: events at or after ``cutoff`` are test.

    This simulates deploying a model trained up to a date. Give either a
    ``cutoff`` time or a ``test_fraction``: the cut-off is then the time of the
    event at that quantile, and every event at that exact time goes to test, so
    the test share can exceed the fraction when timestamps are coarse (daily).

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
    times = data.events["time"]
    if times.isna().any():
        raise ValueError("this split needs a time for every event; the log has missing times")
    if cutoff is None:
        _check_fraction("test_fraction", test_fraction)
        ordered = np.sort(times.to_numpy())
        cut = ordered[len(ordered) - max(1, int(round(test_fraction * len(ordered))))]
    else:
        cut = pd.Timestamp(cutoff).to_datetime64()
    test_mask = np.array(times >= cut, dtype=bool)
    train_mask = ~test_mask
    if not keep_cold_users:
        test_mask &= _known_in(data.events["user"], test_mask, data.n_users)
    return data.select(train_mask), data.select(test_mask)


def leave_one_out_split(
    data: Interactions,
    *,
    mode: str = "last",
    seed: int = 0,
    min_items: int = 2,
) -> Split:
    """Hold out one item per user: the latest one, or one chosen at random.

    For each user with at least ``min_items`` distinct items, one item is
    chosen: the item of the user's latest event (``mode="last"``; ties keep log
    order) or a uniformly random one of the user's distinct items
    (``mode="random"``, seeded). *All* of the user's events with that item go to
    test, so the held-out item is really unseen for that user in training.

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
        order = _by_user_then_time(data)
        users = events["user"].to_numpy()[order]
        is_last = np.r_[users[1:] != users[:-1], True]
        chosen = pd.DataFrame({"user": users[is_last],
                               "item": events["item"].to_numpy()[order][is_last]})
    else:
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
