"""Candidate sources that see the product photos: visual neighbours and new arrivals.

Both follow the :class:`~recsys.sources.CandidateSource` contract and are registered
in :data:`~recsys.sources.SOURCES`. They need item embeddings, given once with
:meth:`VisualSource.set_embeddings` before ``fit`` (the facade passes its projected
catalog embeddings; an evaluation passes the embeddings of the declared catalog only,
since an embedded item is a reachable item).

A user is described by **queries** in the embedding space: the embeddings of their
``recent_items`` latest distinct items and their taste vector (the mean of all their
items' embeddings, each weighted ``0.5 ** (age_days / half_life_days)`` back from the
cut-off). An item scores its highest cosine to any query.

``visual-neighbours``
    The items nearest the queries in a FAISS index over every embedded item
    (``index_factory``: ``"Flat"`` exact, ``"HNSW32"`` for large catalogs), so it
    reaches items nobody bought. An item is not its own neighbour: the user's own
    items are the ``repurchase`` source's job.
``new-arrivals``
    Items of a declared catalog with at most ``max_events`` events before the
    cut-off, ranked by visual similarity to the user (``rank="visual"``) or by how
    often the catalog lists them (``rank="listed"``; for a catalog made of other
    shoppers' purchases in the coming week this is their popularity there).

Examples
--------
>>> import numpy as np, pandas as pd
>>> from recsys.interactions import Interactions
>>> log = Interactions.from_frame(pd.DataFrame(
...     {"user_id": ["u"], "item_id": ["a"], "t": ["2020-01-01"]}), time_col="t")
>>> vectors = np.array([[1, 0], [0.8, 0.6], [0, 1]], dtype=np.float32)
>>> source = VisualNeighbours().set_embeddings(["a", "b", "c"], vectors).fit(log)
>>> items, scores = source.candidates(["u"], n=2)
>>> items.tolist(), scores.astype(float).round(2).tolist()
([['b', 'c']], [[0.8, 0.0]])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.interactions import Interactions, _lookup
from recsys.sources import SOURCES, CandidateSource
from recsys.style_index import StyleIndex
from recsys.taste import _check_vectors, _normalise_rows

RANKS = ("visual", "listed")
# neighbours kept per item query: enough for 40 candidates past 5 recent items and more
_NEIGHBOUR_CACHE_WIDTH = 64


class UserQueries:
    """Recent items and taste vectors of a log's users, in an embedding space.

    Built from events on or before ``now``; every weight decays from ``now``.

    Attributes
    ----------
    recent : ndarray of int64, shape (n_users, recent_items)
        Embedding rows of each user's latest distinct embedded items, latest first
        (-1 pads).
    taste : ndarray of float32, shape (n_users, dim)
        Decay-weighted mean of the user's embedded items, unit norm (zero: none).
    """

    def __init__(self, data: Interactions, item_rows: np.ndarray, vectors: np.ndarray,
                 recent_items: int, half_life_days: float, now: pd.Timestamp) -> None:
        events = data.events
        rows = item_rows[events["item"].to_numpy()]
        keep = rows >= 0
        age = ((now - events["time"]).dt.total_seconds().to_numpy() / 86400.0)[keep]
        user, rows = events["user"].to_numpy()[keep].astype(np.int64), rows[keep]
        weight = np.power(0.5, age / half_life_days)
        # one entry per (user, item): its latest age and summed weight (numpy, not a
        # pandas group-by: this runs per request for shoppers with online events)
        order = np.lexsort((rows, user))
        user, rows, age, weight = user[order], rows[order], age[order], weight[order]
        starts = np.flatnonzero(np.r_[True, (user[1:] != user[:-1]) | (rows[1:] != rows[:-1])])
        user, rows = user[starts], rows[starts]
        age = np.minimum.reduceat(age, starts) if len(starts) else age[:0]
        weight = np.add.reduceat(weight, starts) if len(starts) else weight[:0]
        order = np.lexsort((rows, age, user))  # each user's latest first
        user, rows, age, weight = user[order], rows[order], age[order], weight[order]
        rank = np.arange(len(user)) - np.searchsorted(user, user)
        self.recent = np.full((data.n_users, recent_items), -1, dtype=np.int64)
        latest = rank < recent_items
        self.recent[user[latest], rank[latest]] = rows[latest]
        taste = np.zeros((data.n_users, vectors.shape[1]), dtype=np.float64)
        np.add.at(taste, user, weight[:, None] * vectors[rows])
        self.taste = _normalise_rows(taste)

    def queries(self, vectors: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, ...]:
        """Query vectors ``[n, R + 1, dim]``, their validity ``[n, R + 1]`` and the users'
        own rows ``[n, R]`` for the log rows ``positions`` (-1: no row, no query)."""
        known = positions >= 0
        at = np.clip(positions, 0, None)
        own = np.where(known[:, None], self.recent[at], -1)
        q = np.concatenate([vectors[np.clip(own, 0, None)], self.taste[at][:, None]], axis=1)
        valid = np.concatenate([own >= 0, (np.abs(self.taste[at]).sum(axis=1) > 0)[:, None]
                                & known[:, None]], axis=1)
        q[~valid] = 0.0
        return q.astype(np.float32), valid, own


class VisualSource(CandidateSource):
    """Shared part of the visual sources: embeddings, cut-off and per-user queries."""

    recent_items: int
    half_life_days: float
    # the base class's event-table hooks are not used: visual sources reach items with
    # no event at all, so they implement fit and candidates themselves
    _fit = _candidates = None

    def set_embeddings(self, item_ids: Sequence[str], vectors: np.ndarray) -> VisualSource:
        """The items this source may return and their embeddings (rows unit-normalised).

        Returns
        -------
        self
        """
        self.item_ids_ = np.asarray(item_ids, dtype=str)
        self.vectors_ = _check_vectors(vectors, self.item_ids_)
        self._item_pos = {t: i for i, t in enumerate(self.item_ids_)}
        return self

    def _fit_queries(self, interactions: Interactions) -> None:
        if not hasattr(self, "vectors_"):
            raise RuntimeError(f"{self.name}: call set_embeddings(item_ids, vectors) before fit")
        if int(self.recent_items) < 1 or not self.half_life_days > 0:
            raise ValueError(f"{self.name}: recent_items must be >= 1 and half_life_days > 0, "
                             f"got {self.recent_items}, {self.half_life_days}")
        times = interactions.events["time"]
        if times.isna().any():
            raise ValueError(f"{self.name} needs a time on every event (recency weights)")
        self.now_ = times.max()
        self.user_ids_ = interactions.user_ids
        self._user_pos = {u: i for i, u in enumerate(self.user_ids_)}
        self.queries_ = self._queries_of(interactions)

    def _queries_of(self, data: Interactions) -> UserQueries:
        rows = _lookup(self._item_pos, data.item_ids, "item", "ignore")
        now = max(self.now_, data.events["time"].max())
        return UserQueries(data, rows, self.vectors_, int(self.recent_items),
                           float(self.half_life_days), now)

    def user_queries(self, user_ids: Sequence[str], history: Interactions | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(queries, valid, own)`` of :meth:`UserQueries.queries` for ``user_ids``:
        users in ``history`` from it, others from the fit data (none when unknown)."""
        user_ids = [str(u) for u in user_ids]
        q, valid, own = self.queries_.queries(
            self.vectors_, _lookup(self._user_pos, user_ids, "user", "ignore"))
        if history is not None:
            rows = history.user_index(user_ids, missing="ignore")
            have = rows >= 0
            if have.any():
                q[have], valid[have], own[have] = self._queries_of(history).queries(
                    self.vectors_, rows[have])
        return q, valid, own


def _to_external(item_ids: np.ndarray, rows: np.ndarray, scores: np.ndarray, n: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    out_ids = np.full((len(rows), n), "", dtype=item_ids.dtype)
    out_scores = np.full((len(rows), n), -np.inf, dtype=np.float32)
    width = min(n, rows.shape[1])
    valid = (rows[:, :width] >= 0) & np.isfinite(scores[:, :width])
    out_ids[:, :width] = np.where(valid, item_ids[np.clip(rows[:, :width], 0, None)], "")
    out_scores[:, :width] = np.where(valid, scores[:, :width], -np.inf)
    return out_ids, out_scores


def _top(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Column positions and values of each row's ``n`` best finite scores, best first
    (ties: lower position first); -1 / -inf pad."""
    n_eff = min(n, scores.shape[1])
    if n_eff == 0:
        return np.full((len(scores), n), -1), np.full((len(scores), n), -np.inf, np.float32)
    top = np.argpartition(-scores, n_eff - 1, axis=1)[:, :n_eff]
    val = np.take_along_axis(scores, top, axis=1)
    order = np.lexsort((top, -val), axis=1)
    top, val = np.take_along_axis(top, order, axis=1), np.take_along_axis(val, order, axis=1)
    top[~np.isfinite(val)] = -1
    return top, val.astype(np.float32)


@SOURCES.register("visual-neighbours")
class VisualNeighbours(VisualSource):
    """Items nearest (FAISS) to a user's recent items and taste vector.

    Parameters
    ----------
    recent_items : int
        Latest distinct items of the user used as queries (plus the taste vector).
    half_life_days : float
        Recency decay of the taste vector's weights.
    index_factory : str
        FAISS factory string of the item index (``"Flat"``: exact).

    Attributes
    ----------
    index_ : StyleIndex
        Inner-product index over the embeddings.
    """

    def __init__(self, recent_items: int = 5, half_life_days: float = 30.0,
                 index_factory: str = "Flat") -> None:
        self.recent_items = recent_items
        self.half_life_days = half_life_days
        self.index_factory = index_factory

    def set_embeddings(self, item_ids: Sequence[str], vectors: np.ndarray) -> VisualNeighbours:
        super().set_embeddings(item_ids, vectors)
        self.index_ = StyleIndex(self.index_factory).fit(self.item_ids_, self.vectors_)
        self._neighbours: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        return self

    def fit(self, interactions: Interactions) -> VisualNeighbours:
        """Record the users' queries as of the log's latest event; returns ``self``."""
        self._fit_queries(interactions)
        return self

    def _item_neighbours(self, rows: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Similarities and rows of the ``width`` items nearest each embedded item ``rows``.

        Each item is searched once and kept (thread-safe: entries are only added or
        widened whole): a shopper's recent items are the queries of every request.
        """
        cache = self._neighbours
        missing = [r for r in np.unique(rows).tolist()
                   if r not in cache or len(cache[r][0]) < width]
        if missing:
            keep = min(max(width, _NEIGHBOUR_CACHE_WIDTH), len(self.item_ids_))
            found_sims, found = self.index_.index_.search(self.vectors_[missing], keep)
            cache.update(zip(missing, zip(found_sims, found, strict=True), strict=True))
        sims = np.empty((len(rows), width), np.float32)
        found = np.empty((len(rows), width), np.int64)
        for j, r in enumerate(rows.tolist()):
            sims[j], found[j] = cache[r][0][:width], cache[r][1][:width]
        return sims, found

    def candidates(self, user_ids: Sequence[str], n: int,
                   history: Interactions | None = None) -> tuple[np.ndarray, np.ndarray]:
        q, valid, own = self.user_queries(user_ids, history)
        n_users, n_q = valid.shape
        if not valid.any():
            return _to_external(self.item_ids_, np.full((n_users, n), -1),
                                np.full((n_users, n), -np.inf, np.float32), n)
        # own items are found first (similarity 1): ask for that many more
        width = min(n + own.shape[1] + 1, len(self.item_ids_))
        rows = np.full((n_users, n_q, width), -1, dtype=np.int64)
        sims = np.full((n_users, n_q, width), -np.inf, dtype=np.float32)
        item_query = valid[:, :-1]
        sims[:, :-1][item_query], rows[:, :-1][item_query] = self._item_neighbours(
            own[item_query], width)
        taste = valid[:, -1]
        if taste.any():
            sims[taste, -1], rows[taste, -1] = self.index_.index_.search(
                np.ascontiguousarray(q[taste, -1]), width)
        rows, sims = rows.reshape(n_users, -1), sims.reshape(n_users, -1)
        mine = (rows[:, :, None] == own[:, None, :]).any(axis=2) | (rows < 0)
        sims[mine] = -np.inf
        # best similarity per item: sort by (row, -sim) and keep each row's first
        order = np.lexsort((-sims, rows), axis=1)
        rows, sims = np.take_along_axis(rows, order, 1), np.take_along_axis(sims, order, 1)
        repeat = np.zeros(rows.shape, dtype=bool)
        repeat[:, 1:] = rows[:, 1:] == rows[:, :-1]
        sims[repeat] = -np.inf
        top, val = _top(sims, n)
        picked = np.where(top >= 0, np.take_along_axis(rows, np.clip(top, 0, None), 1), -1)
        return _to_external(self.item_ids_, picked, val, n)


@SOURCES.register("new-arrivals")
class NewArrivals(VisualSource):
    """Items of a declared catalog that (almost) nobody bought before the cut-off.

    Parameters
    ----------
    catalog : str, list of str or None
        The declared catalog: a CSV file (one row per listing, e.g. H&M
        ``transactions_last_week_others.csv``), a list of item ids (repeats count
        as listings), or ``None``: the embedded items (``set_embeddings``) are the
        catalog. Never derive it from the evaluated users' test events.
    id_column : str
        Item id column of a CSV catalog (read as strings).
    max_events : int
        An item is new when it has at most this many events before the cut-off.
    rank : {"visual", "listed"}
        Rank new items by their highest cosine to the user's queries (users without
        history get none), or by how many listings the catalog has of each (the same
        global list for every user).
    recent_items, half_life_days
        The user's queries (see :class:`VisualNeighbours`).

    Attributes
    ----------
    arrival_ids_ : ndarray of str
        The new items (``rank="visual"`` keeps those with an embedding only).
    listed_ : ndarray of float32
        Listings of each new item.
    """

    def __init__(self, catalog: str | list[str] | None = None, id_column: str = "article_id",
                 max_events: int = 0, rank: str = "visual", recent_items: int = 5,
                 half_life_days: float = 30.0) -> None:
        self.catalog = catalog
        self.id_column = id_column
        self.max_events = max_events
        self.rank = rank
        self.recent_items = recent_items
        self.half_life_days = half_life_days

    def _listings(self) -> pd.Series:
        if self.catalog is None:
            if self.rank == "listed":
                raise ValueError("new-arrivals: rank='listed' needs a declared catalog")
            return pd.Series(1, index=self.item_ids_)
        if isinstance(self.catalog, str | Path):
            try:
                ids = pd.read_csv(self.catalog, dtype={self.id_column: str},
                                  usecols=[self.id_column])[self.id_column]
            except ValueError as err:
                raise ValueError(f"{self.catalog}: needs an item id column "
                                 f"{self.id_column!r} ({err})") from None
        else:
            ids = pd.Series([str(i) for i in self.catalog], dtype=object)
        return ids.dropna().value_counts(sort=False).sort_index()  # ties: by id

    def fit(self, interactions: Interactions) -> NewArrivals:
        """Find the catalog's new items as of the log's latest event; returns ``self``."""
        if self.rank not in RANKS:
            raise ValueError(f"rank must be one of {RANKS}, got {self.rank!r}")
        if self.rank == "visual":
            self._fit_queries(interactions)
        listed = self._listings()
        events = np.bincount(interactions.events["item"].to_numpy(),
                             minlength=interactions.n_items)
        in_log = interactions.item_index(listed.index, missing="ignore")
        before = np.where(in_log >= 0, events[np.clip(in_log, 0, None)], 0)
        new = listed[before <= int(self.max_events)]
        if self.rank == "listed":
            self.arrival_ids_ = new.index.to_numpy(str)
            self.listed_ = new.to_numpy(np.float32)
            return self
        rows = _lookup(self._item_pos, new.index, "item", "ignore")
        self.arrival_ids_ = self.item_ids_[rows[rows >= 0]]
        self.arrivals_ = rows[rows >= 0]
        self.listed_ = new.to_numpy(np.float32)[rows >= 0]
        return self

    def candidates(self, user_ids: Sequence[str], n: int,
                   history: Interactions | None = None) -> tuple[np.ndarray, np.ndarray]:
        n_users = len(user_ids)
        if self.rank == "listed":
            top, val = _top(self.listed_[None], n)
            return _to_external(self.arrival_ids_, np.repeat(top, n_users, 0),
                                np.repeat(val, n_users, 0), n)
        q, valid, _ = self.user_queries(user_ids, history)
        if not len(self.arrivals_):
            return _to_external(self.item_ids_, np.full((n_users, n), -1),
                                np.full((n_users, n), -np.inf, np.float32), n)
        sims = np.einsum("uqd,ad->uqa", q, self.vectors_[self.arrivals_], optimize=True)
        sims[~np.broadcast_to(valid[:, :, None], sims.shape)] = -np.inf
        top, val = _top(sims.max(axis=1, initial=-np.inf), n)
        rows = np.where(top >= 0, self.arrivals_[np.clip(top, 0, None)], -1)
        return _to_external(self.item_ids_, rows, val, n)
