"""Candidate sources: cheap generators of the items a ranker (or an evaluation) looks at.

A source is fitted on the events before a cut-off and proposes, for each user, up to
``n`` items with scores, best first. The built-ins are the candidate generators of the
strongest simple recommenders for repeat-purchase retail (the H&M competition's winning
solutions start from them): the user's own past items (``repurchase``), items of the
same product family (``family``), what sold recently (``recent-popularity``), any
collaborative-filtering model (``cf``), and several of them in turn as one list
(``chain``). Visual sources live in ``recsys.visual_sources`` and register into the
same :data:`SOURCES` registry.

Conventions (shared by every source)
------------------------------------
- ``candidates`` returns ``(n_users, n)`` item ids (``""`` padding) and float32 scores
  (``-inf`` padding), best first, as :meth:`recsys.cf.Recommender.recommend` does.
- Seen items are not filtered: shoppers rebuy.
- Only items with an event in the fit data can be proposed; a shared id vocabulary
  (e.g. from :meth:`Interactions.select`) never leaks test-only items into a pool.
- "Now" is the latest event time in the fit data (the cut-off). Events given in
  ``history=`` are a deployment's online events, which come after the cut-off: they
  count, with ages from the latest of them (as the learned ranker's features do).
- Users unknown at fit time and absent from ``history`` get all-padding rows; sources
  that ignore the user (popularity) give everybody their global list.

Examples
--------
>>> from recsys.sources import SOURCES  # doctest: +SKIP
>>> source = SOURCES.create("repurchase", half_life_days=14).fit(train)  # doctest: +SKIP
>>> items, scores = source.candidates(["some-customer"], n=12)  # doctest: +SKIP
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ground.registry import Registry
from recsys.cf import create_model
from recsys.interactions import Interactions

SOURCES: Registry[CandidateSource] = Registry(
    "candidate source", "stylerec.sources",
    builtins={"repurchase": "recsys.sources", "family": "recsys.sources",
              "recent-popularity": "recsys.sources", "cf": "recsys.sources",
              "chain": "recsys.sources",
              "visual-neighbours": "recsys.visual_sources",
              "new-arrivals": "recsys.visual_sources"},
)

_DAY = np.timedelta64(86400, "s")
GIVEN_GROUPS = "item_groups"  # FamilySource(group=...): groups come from set_groups()
_EVIDENCE_MODELS = {"itemknn"}  # CF models whose score 0 means "no evidence at all"


class CandidateSource(ABC):
    """Base class: parameter bookkeeping, fit-time item space, padded top-``n`` output.

    Subclasses store their constructor arguments unchanged (scikit-learn style),
    implement ``_fit(events)`` and ``_candidates(user_ids, n, histories)``.
    """

    name: ClassVar[str] = "base"
    needs_groups: bool = False  # True: set_groups() must be called before fit()

    @property
    def params(self) -> dict[str, Any]:
        """JSON-serialisable constructor parameters."""
        return {k: v for k, v in vars(self).items()
                if not k.endswith("_") and not k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    def fit(self, interactions: Interactions) -> CandidateSource:
        """Learn from the events before the cut-off; returns ``self``."""
        if not isinstance(interactions, Interactions):
            raise TypeError(f"fit expects Interactions, got {type(interactions).__name__}")
        if len(interactions) == 0:
            raise ValueError(f"{self.name}: cannot fit on an interaction log with no events")
        events = _external_events(interactions)
        self.item_ids_, item_codes = np.unique(events["item_id"].to_numpy(str),
                                               return_inverse=True)
        events["item"] = item_codes
        self.now_ = events["time"].max()
        self.histories_ = _Histories(events["user_id"].to_numpy(str),
                                     events["item"].to_numpy(np.int64),
                                     events["time"].to_numpy(), self.now_)
        self._fit(events)
        return self

    @abstractmethod
    def _fit(self, events: pd.DataFrame) -> None: ...

    def candidates(
        self, user_ids: Sequence[str], n: int, history: Interactions | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``n`` items per user, best first.

        Parameters
        ----------
        user_ids : sequence of str
            External user ids (a batch).
        n : int
            Pool size per user.
        history : Interactions, optional
            Events that replace the fit-time ones for the users they contain (e.g.
            users who arrived after fitting). Events after the cut-off are ignored,
            and so are items with no event in the fit data.

        Returns
        -------
        item_ids : ndarray of str, shape (n_users, n)
        scores : ndarray of float32, shape (n_users, n)
            ``""`` / ``-inf`` padding where a user has fewer than ``n`` candidates.
        """
        if not hasattr(self, "item_ids_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet: call fit() first")
        if isinstance(user_ids, str):
            raise TypeError("user_ids must be a sequence of ids (batch-first), not a string")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        histories = self.histories_
        if history is not None:
            histories = histories.overridden_by(history, self.item_ids_)
        return self._candidates([str(u) for u in user_ids], int(n), histories)

    @abstractmethod
    def _candidates(self, user_ids: list[str], n: int,
                    histories: _Histories) -> tuple[np.ndarray, np.ndarray]: ...

    def _padded(self, rows: list[tuple[np.ndarray, np.ndarray]],
                n: int) -> tuple[np.ndarray, np.ndarray]:
        """Best ``n`` of each row's (item codes, scores); ties broken by item id."""
        ids = np.full((len(rows), n), "", dtype=self.item_ids_.dtype)
        scores = np.full((len(rows), n), -np.inf, dtype=np.float32)
        for r, (items, values) in enumerate(rows):
            keep = np.isfinite(values)
            items, values = items[keep], values[keep]
            order = np.lexsort((items, -values))[:n]  # items are sorted ids: stable ties
            ids[r, :len(order)] = self.item_ids_[items[order]]
            scores[r, :len(order)] = values[order]
        return ids, scores


class _Histories:
    """Each user's events (fit item codes and ages in days at the cut-off)."""

    def __init__(self, users: np.ndarray, items: np.ndarray, times: np.ndarray,
                 now: pd.Timestamp) -> None:
        # arrays, not a frame: this also runs per request for users with online events
        if pd.notna(now):
            missing = np.isnat(times)
            keep = missing | (times <= np.datetime64(now))
            age = np.where(missing, 0.0, (np.datetime64(now) - times) / _DAY)[keep]
            users, items = users[keep], items[keep]
        else:
            age = np.zeros(len(users))
        order = np.argsort(users, kind="stable")
        users = users[order]
        self.items = items.astype(np.int64)[order]
        self.ages = age.astype(np.float64)[order]
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else []
        bounds = np.r_[starts, len(users)].astype(int)
        self.spans = {users[s]: (s, e) for s, e in zip(bounds[:-1], bounds[1:], strict=True)}
        self.now = now
        self.overridden: frozenset[str] = frozenset()  # users whose events came from history=
        self.base: _Histories | None = None  # everyone else's (see overridden_by)

    def __contains__(self, user_id: str) -> bool:
        return user_id in self.spans or (self.base is not None and user_id in self.base)

    def get(self, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(item codes, ages in days) of the user's events; empty when unknown."""
        if user_id not in self.spans and self.base is not None:
            return self.base.get(user_id)
        start, stop = self.spans.get(user_id, (0, 0))
        return self.items[start:stop], self.ages[start:stop]

    def overridden_by(self, history: Interactions, item_ids: np.ndarray) -> _Histories:
        """The users of ``history`` with their events there, everyone else's from ``self``
        (looked up, not copied: a request's history holds a few users)."""
        ev = history.events
        ids = history.item_ids[ev["item"].to_numpy()].astype(str)
        codes = np.minimum(np.searchsorted(item_ids, ids), len(item_ids) - 1)  # sorted at fit
        known = item_ids[codes] == ids
        times = ev["time"].to_numpy()[known]
        now = self.now  # a served model's online events come after its fit cut-off
        if pd.notna(now) and len(times) and not np.isnat(times).all():
            now = max(now, pd.Timestamp(times[~np.isnat(times)].max()))
        fresh = _Histories(history.user_ids[ev["user"].to_numpy()[known]].astype(str),
                           codes[known], times, now)
        fresh.base = self
        fresh.overridden = frozenset(fresh.spans)
        return fresh


def _external_events(interactions: Interactions) -> pd.DataFrame:
    ev = interactions.events
    return pd.DataFrame({
        "user_id": interactions.user_ids[ev["user"].to_numpy()],
        "item_id": interactions.item_ids[ev["item"].to_numpy()],
        "time": ev["time"].to_numpy(),
    })


def _recency(ages: np.ndarray, half_life_days: float) -> np.ndarray:
    return np.power(0.5, ages / half_life_days)


def _check_half_life(value: float) -> None:
    if isinstance(value, bool) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"half_life_days must be a number > 0, got {value!r}")


@SOURCES.register("repurchase")
class RepurchaseSource(CandidateSource):
    """The user's own past items, score = Σ over their events of ``0.5 ** (age / half_life)``.

    ``age`` is the days from the event to the cut-off; an item bought twice scores twice.

    Parameters
    ----------
    half_life_days : float
        Age at which an event counts half.
    """

    def __init__(self, half_life_days: float = 14.0) -> None:
        _check_half_life(half_life_days)
        self.half_life_days = half_life_days

    def _fit(self, events: pd.DataFrame) -> None:
        pass

    def _candidates(self, user_ids, n, histories):
        rows = []
        for user in user_ids:
            items, ages = histories.get(user)
            weights = np.bincount(items, _recency(ages, self.half_life_days),
                                  minlength=len(self.item_ids_))
            mine = np.flatnonzero(weights)
            rows.append((mine, weights[mine]))
        return self._padded(rows, n)


@SOURCES.register("family")
class FamilySource(CandidateSource):
    """Items sharing a group (product family) with the user's items.

    score(j) = w_u(g(j)) × popularity(j), where w_u(g) is the user's recency weight of
    group g (Σ ``0.5 ** (age / half_life)`` over their events of items in g) and
    popularity(j) the number of fit events of item j. The user's own items are
    included (they belong to their groups too).

    Parameters
    ----------
    group : str
        ``"prefix:K"``: the first K characters of the item id (H&M: 7 = product code);
        ``"item_groups"``: the item → group mapping given to :meth:`set_groups` (the
        learned ranker passes its ``item_groups``); otherwise a column of the
        ``metadata`` CSV (e.g. ``"product_code"``).
    metadata : str, optional
        CSV with ``id_column`` and the ``group`` column (H&M ``articles.csv``). Items
        it does not list form a group of their own.
    id_column : str
        The item id column of ``metadata``.
    half_life_days : float
        Half-life of the user's group weights.
    """

    def __init__(self, group: str = "prefix:7", metadata: str | None = None,
                 id_column: str = "article_id", half_life_days: float = 14.0) -> None:
        _check_half_life(half_life_days)
        prefix = group.startswith("prefix:")
        if prefix and not group[7:].isdigit():
            raise ValueError(f"group {group!r}: write 'prefix:K' with K a whole number")
        if not prefix and group != GIVEN_GROUPS and metadata is None:
            raise ValueError(f"group {group!r} names a metadata column: pass metadata= (a CSV)")
        self.group = group
        self.metadata = metadata
        self.id_column = id_column
        self.half_life_days = half_life_days

    @property
    def needs_groups(self) -> bool:
        """Whether :meth:`set_groups` must be called before :meth:`fit`."""
        return self.group == GIVEN_GROUPS

    def set_groups(self, groups: Mapping[str, str]) -> FamilySource:
        """Give the item → group mapping of ``group="item_groups"``; returns ``self``."""
        self._given = {str(k): str(v) for k, v in groups.items()}
        return self

    def _group_keys(self) -> np.ndarray:
        if self.group.startswith("prefix:"):
            width = int(self.group[7:])
            return np.array([i[:width] for i in self.item_ids_])
        if self.group == GIVEN_GROUPS:
            mapping = getattr(self, "_given", None)
            if mapping is None:
                raise ValueError("family source with group='item_groups': call set_groups() "
                                 "before fit (the learned ranker does, given item_groups)")
        else:
            path = Path(self.metadata)
            if not path.is_file():
                raise FileNotFoundError(f"family metadata not found: {path}")
            table = pd.read_csv(path, usecols=[self.id_column, self.group], dtype=str)
            mapping = dict(zip(table[self.id_column].str.strip(), table[self.group],
                               strict=True))
        # items the metadata does not list are their own family
        return np.array([mapping.get(i) or f"\0{i}" for i in self.item_ids_])

    def _fit(self, events: pd.DataFrame) -> None:
        self.groups_, self.item_group_ = np.unique(self._group_keys(), return_inverse=True)
        self.popularity_ = np.bincount(events["item"].to_numpy(),
                                       minlength=len(self.item_ids_)).astype(np.float64)
        order = np.argsort(self.item_group_, kind="stable")
        self._members = np.split(order, np.cumsum(np.bincount(self.item_group_))[:-1])

    def _candidates(self, user_ids, n, histories):
        rows = []
        for user in user_ids:
            items, ages = histories.get(user)
            weight = np.bincount(self.item_group_[items], _recency(ages, self.half_life_days),
                                 minlength=len(self.groups_))
            groups = np.flatnonzero(weight)
            if not len(groups):
                rows.append((np.zeros(0, np.int64), np.zeros(0)))
                continue
            members = np.concatenate([self._members[g] for g in groups])
            rows.append((members, weight[self.item_group_[members]] * self.popularity_[members]))
        return self._padded(rows, n)


@SOURCES.register("recent-popularity")
class RecentPopularitySource(CandidateSource):
    """The best sellers of the last ``days`` before the cut-off; the same list for everyone.

    An event is in a ``d``-day window when it is less than ``d`` days before the
    cut-off (for daily dates: the cut-off day and the ``d - 1`` days before it).
    With several windows, score = Σ over windows of the item's share of the window's
    events, so each window weighs the same whatever its length.

    Parameters
    ----------
    days : int or list of int
        Window length(s) in days.
    """

    def __init__(self, days: int | list[int] = 7) -> None:
        windows = [days] if np.isscalar(days) else list(days)
        if not windows or any(isinstance(d, bool) or not np.isfinite(d) or d <= 0
                              for d in windows):
            raise ValueError(f"days must be a positive number or a list of them, got {days!r}")
        self.days = days

    def _fit(self, events: pd.DataFrame) -> None:
        if events["time"].isna().any():
            raise ValueError("recent-popularity needs a time for every event")
        windows = [self.days] if np.isscalar(self.days) else list(self.days)
        age = ((self.now_ - events["time"]) / _DAY).to_numpy(np.float64)
        items = events["item"].to_numpy()
        score = np.zeros(len(self.item_ids_))
        for days in windows:
            inside = age < days
            if inside.any():
                score += np.bincount(items[inside], minlength=len(score)) / inside.sum()
        ranked = np.flatnonzero(score)
        self.ranking_ = ranked[np.lexsort((ranked, -score[ranked]))]
        self.scores_ = score[self.ranking_].astype(np.float32)

    def _candidates(self, user_ids, n, histories):
        top, values = self.ranking_[:n], self.scores_[:n]
        ids = np.full((len(user_ids), n), "", dtype=self.item_ids_.dtype)
        scores = np.full((len(user_ids), n), -np.inf, dtype=np.float32)
        ids[:, :len(top)] = self.item_ids_[top]
        scores[:, :len(top)] = values
        return ids, scores


@SOURCES.register("cf")
class CFSource(CandidateSource):
    """Any registered collaborative-filtering model's top-``n`` (seen items kept).

    The model is fitted on the fit data restricted to items and users with events,
    so no test-only item can appear. Item-kNN scores are sums of similarities to the
    user's items: a 0 means no evidence, and such items are left out (padding) rather
    than listed in arbitrary order.

    Parameters
    ----------
    model : str
        A name from :data:`recsys.cf.CF_MODELS` (``"als"``, ``"itemknn"``, ``"popularity"``...).
    params : dict, optional
        The model's hyperparameters.
    """

    def __init__(self, model: str = "als", params: dict | None = None) -> None:
        create_model(model, **(params or {}))  # validates the name and parameters now
        self.model = model
        self._model_params = dict(params or {})

    @property
    def params(self) -> dict[str, Any]:
        return {"model": self.model, "params": dict(self._model_params)}

    def _fit(self, events: pd.DataFrame) -> None:
        users, user_codes = np.unique(events["user_id"].to_numpy(str), return_inverse=True)
        compact = pd.DataFrame({"user": user_codes.astype(np.int32),
                                "item": events["item"].to_numpy(np.int32),
                                "time": events["time"].to_numpy(), "value": 1.0})
        self._train = Interactions(compact, users, self.item_ids_)
        self.model_ = create_model(self.model, **self._model_params).fit(self._train)

    def _candidates(self, user_ids, n, histories):
        ids = np.full((len(user_ids), n), "", dtype=self.item_ids_.dtype)
        scores = np.full((len(user_ids), n), -np.inf, dtype=np.float32)
        # fit-time users keep their learned state; users given in history= are folded in
        fitted = [r for r, u in enumerate(user_ids)
                  if u in histories and u not in histories.overridden]
        folded = [r for r, u in enumerate(user_ids) if u in histories.overridden]
        if fitted:
            users = [user_ids[r] for r in fitted]
            ids[fitted], scores[fitted] = self.model_.recommend(users, k=n, filter_seen=False)
        if folded:
            users = [user_ids[r] for r in folded]
            events = [histories.get(u)[0] for u in users]
            frame = pd.DataFrame({
                "user": np.repeat(np.arange(len(users), dtype=np.int32), [len(e) for e in events]),
                "item": np.concatenate(events).astype(np.int32), "time": pd.NaT, "value": 1.0,
            })
            history = Interactions(frame, np.array(users), self.item_ids_)
            ids[folded], scores[folded] = self.model_.recommend(
                users, k=n, filter_seen=False, history=history)
        if self.model in _EVIDENCE_MODELS:
            no_evidence = scores <= 0
            ids[no_evidence], scores[no_evidence] = "", -np.inf
        return ids, scores


@SOURCES.register("chain")
class ChainSource(CandidateSource):
    """Several sources as one list: the first one's items, then each next one's items not
    listed yet (e.g. repurchase → same family → recent best sellers, the H&M
    competition's strongest simple baseline). Scores are descending places ``n, n-1, ...``.

    In a learned ranker a chain is one more candidate list, rank feature and fallback
    that the no-harm check compares with, so the ranker can hand its slates to the
    chain itself rather than to one of its parts.

    Parameters
    ----------
    chain : list of dict
        ``{"name": <SOURCES name>, "params": {...}}`` per source, in order; sources that
        need embeddings cannot be members. A ``family`` member with
        ``group="item_groups"`` takes the mapping given to :meth:`set_groups`.
    """

    # fits and asks its member sources instead of the base class's event-table hooks
    _fit = _candidates = None

    def __init__(self, chain: Sequence[Mapping[str, Any]]) -> None:
        if not chain:
            raise ValueError("chain needs at least one source")
        for spec in chain:
            if not isinstance(spec, Mapping) or "name" not in spec:
                raise ValueError(f"each chain member is {{'name': ..., 'params': {{...}}}}, "
                                 f"got {spec!r}")
            if hasattr(SOURCES.get(spec["name"]), "set_embeddings"):
                raise ValueError(f"chain member {spec['name']!r} needs embeddings: a chain "
                                 "holds only sources that do not")
        self.chain = [dict(spec) for spec in chain]

    @property
    def needs_groups(self) -> bool:
        """Whether a member needs :meth:`set_groups` before :meth:`fit`."""
        return any(m.needs_groups for m in self._members())

    def set_groups(self, groups: Mapping[str, str]) -> ChainSource:
        """Give the item → group mapping to the members that need it; returns ``self``."""
        self._given = groups
        return self

    def _members(self) -> list[CandidateSource]:
        return [SOURCES.create(s["name"], **(s.get("params") or {})) for s in self.chain]

    def fit(self, interactions: Interactions) -> ChainSource:
        """Fit every member on the events before the cut-off; returns ``self``."""
        members = self._members()
        for member in members:
            if member.needs_groups:
                if not hasattr(self, "_given"):
                    raise ValueError("chain member 'family' with group='item_groups': call "
                                     "set_groups() before fit (the learned ranker does, given "
                                     "item_groups)")
                member.set_groups(self._given)
        self.sources_ = [member.fit(interactions) for member in members]
        self.item_ids_ = np.unique(np.concatenate([s.item_ids_ for s in self.sources_]))
        return self

    def candidates(
        self, user_ids: Sequence[str], n: int, history: Interactions | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``n`` items per user, best first (see :meth:`CandidateSource.candidates`)."""
        if not hasattr(self, "sources_"):
            raise RuntimeError("ChainSource is not fitted yet: call fit() first")
        pools = [s.candidates(user_ids, n, history)[0] for s in self.sources_]
        ids = np.full((len(pools[0]), n), "", dtype=self.item_ids_.dtype)
        for row in range(len(ids)):
            listed = list(dict.fromkeys(t for pool in pools for t in pool[row] if t))[:n]
            ids[row, :len(listed)] = listed
        places = np.broadcast_to((n - np.arange(n)).astype(np.float32), ids.shape)
        return ids, np.where(ids != "", places, np.float32(-np.inf)).astype(np.float32)
