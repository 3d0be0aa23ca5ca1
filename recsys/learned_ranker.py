"""A learned ranker over the union of several candidate sources (LightGBM lambdarank).

How it is trained, with nothing after the cut-off ``T`` (the latest event of the
fit log) and no label inside a feature:

1. **Windows.** The last ``(train_windows + validation_windows) * window_days`` days
   before ``T`` are cut into windows of whole days (date-only logs never split a
   day). For a window, the *history* is every event before it and the *labels* are
   the items each user bought inside it.
2. **Examples.** The candidate sources are fitted on the history only; their
   candidates for the window's buyers, united, get features computed from the
   history only, and label 1 when the user bought the item in the window.
3. **No default that can hurt.** A model trained on the older windows ranks the
   ``validation_windows`` most recent ones; MAP@12 is compared with each source's
   own ranking there. The *baseline* source (a ``chain`` of the simple sources when
   there is one) serves unless another source beats it with confidence (then the
   best of those serves); the model ranks only if it beats the serving source with
   confidence: its gain's one-sided bootstrap bound over the validation users at
   ``validation_confidence`` is above 0. A point comparison on a few hundred users
   lets whatever is ahead by chance serve: a model merely as good as its best
   source half the time, or the luckiest of several sources. ``choice_`` says what
   serves, :attr:`LearnedRanker.validation_` and ``validation_gain_`` say why; if
   the model ranks, it is retrained on every window.
4. **Serving.** The sources are refitted on the whole log.

Features of a (user, item) pair
-------------------------------
per source
    score and rank (NaN when the source did not propose the item), number of
    sources proposing it.
item
    events in the last 7 / 30 / 90 days and overall, days since its first and
    latest event, ``cold`` (no event), mean price.
user
    events overall and in the last 30 days, distinct items, days since the latest
    event, mean price.
pair
    times the user bought it, days since, the user's events in its family
    (``item_groups``), price relative to the user's mean price.
image (``use_images``)
    cosine to the user's taste (decayed mean), to the mean of the 5 latest items,
    to the nearest of the 20 latest items (the item itself excluded), to the
    style reference nearest the user's taste (with ``style_vectors``).

Examples
--------
>>> ranker = LearnedRanker(sources=[{"name": "repurchase"},
...                                 {"name": "recent-popularity"}])  # doctest: +SKIP
>>> ranker.fit(train, item_ids, item_vectors)  # doctest: +SKIP
>>> ranker.choice_, ranker.validation_  # doctest: +SKIP
('learned', {'learned': 0.021, 'repurchase': 0.015, 'recent-popularity': 0.006})
>>> items, scores = ranker.recommend(["c1"], k=12)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ground.files import (
    atomic_directory,
    read_meta,
    saved_directory,
    write_bytes_atomic,
    write_npz_atomic,
)
from ground.registry import Registry
from recsys.interactions import Interactions, _lookup
from recsys.ranker import StyleRanker
from recsys.sources import GIVEN_GROUPS, SOURCES, CandidateSource
from recsys.taste import _check_vectors, _normalise_rows
from recsys.visual_sources import UserQueries, VisualSource

log = logging.getLogger(__name__)

RANKERS: Registry = Registry("ranker", "stylerec.rankers",
                             builtins={"learned": "recsys.learned_ranker",
                                       "blend": "recsys.learned_ranker"})
RANKERS.register("blend")(StyleRanker)

FORMAT_VERSION = 1
MAP_K = 12
LABEL_SPLITS = ("time", "random")


class NotEnoughHistory(ValueError):
    """The log spans too little time (or too few buyers) for the ranker's label windows."""

POPULARITY_DAYS = (7, 30, 90)
IMAGE_FEATURES = ("cos_taste", "cos_recent", "cos_nearest", "cos_style")
DEFAULT_SOURCES = (
    {"name": "repurchase"},
    {"name": "cf", "params": {"model": "als", "params": {
        "factors": 32, "regularization": 0.1, "iterations": 15, "random_state": 0,
        "num_threads": 1}}},
    {"name": "cf", "params": {"model": "itemknn", "params": {"num_threads": 1}}},
    {"name": "recent-popularity"},
    {"name": "visual-neighbours"},
)
DEFAULT_MODEL_PARAMS = {
    "objective": "lambdarank", "learning_rate": 0.05, "num_leaves": 15,
    "min_data_in_leaf": 20, "feature_fraction": 0.8, "bagging_fraction": 0.8,
    "bagging_freq": 1, "lambdarank_truncation_level": MAP_K, "num_threads": 1,
    "deterministic": True, "force_row_wise": True, "verbose": -1,
}


def source_label(spec: Mapping[str, Any]) -> str:
    """A readable, unique-enough label of a source spec: ``cf-als``, ``recent-popularity``."""
    params = spec.get("params") or {}
    return spec["name"] + (f"-{params['model']}" if "model" in params else "")


@dataclass(frozen=True)
class Pool:
    """Candidate (user, item) pairs of a batch with their features.

    ``user`` indexes the batch, ``item`` holds external ids, ``features`` is
    ``[n_pairs, n_features]`` (NaN: not available); pairs of a user are contiguous.
    """

    user: np.ndarray
    item: np.ndarray
    features: np.ndarray


@dataclass(frozen=True)
class Ranked:
    """Top-``k`` items of a batch of users, best first.

    ``items`` (str, ``""`` pads) and ``scores`` (``-inf`` pads) are ``[n, k]``;
    ``features`` ``[n, k, n_features]`` and, when asked for, ``contributions``
    ``[n, k, n_features + 1]`` (LightGBM ``pred_contrib``: the last column is the
    bias; a row sums to the score) describe each entry.
    """

    items: np.ndarray
    scores: np.ndarray
    features: np.ndarray
    contributions: np.ndarray | None


class _Stats:
    """What the features need from one log as of ``now``: item and user statistics,
    the user × item and user × family counts, and (with embeddings) the users' queries."""

    def __init__(self, data: Interactions, now: pd.Timestamp, universe: dict[str, int],
                 groups: np.ndarray | None, prices: pd.DataFrame | None,
                 vectors: np.ndarray | None, vector_rows: np.ndarray | None) -> None:
        n_items = len(universe)
        ev = data.events
        item = _lookup(universe, data.item_ids, "item", "ignore")[ev["item"].to_numpy()]
        keep = item >= 0
        user, item = ev["user"].to_numpy()[keep], item[keep]
        age = ((now - ev["time"]).dt.total_seconds().to_numpy() / 86400.0)[keep]
        self.now = now
        self.user_pos = {u: i for i, u in enumerate(data.user_ids)}
        counts = [np.bincount(item[age < d], minlength=n_items) for d in POPULARITY_DAYS]
        counts.append(np.bincount(item, minlength=n_items))
        first = np.full(n_items, np.nan)
        last = np.full(n_items, np.nan)
        if len(item):
            order = np.argsort(age, kind="stable")
            last[item[order[::-1]]] = age[order[::-1]]  # the smallest age wins
            first[item[order]] = age[order]  # the largest age wins
        self.items = np.column_stack(counts + [first, last, counts[-1] == 0]).astype(np.float32)
        n_users = data.n_users
        user_events = np.bincount(user, minlength=n_users)
        recent = np.bincount(user[age < 30], minlength=n_users)
        latest = np.full(n_users, np.nan)
        if len(user):
            order = np.argsort(age, kind="stable")[::-1]
            latest[user[order]] = age[order]
        shape = (n_users, n_items)
        self.bought = sp.csr_matrix((np.ones(len(user), np.float32), (user, item)), shape=shape)
        self.bought.sum_duplicates()
        distinct = np.diff(self.bought.indptr)
        # latest purchase of each pair, stored as 1e5 - age so the sparse maximum finds it
        self.fresh = _pair_max(user, item, 1e5 - age, shape)
        self.family = None
        if groups is not None:
            g = groups[item]
            has = g >= 0
            self.family = sp.csr_matrix((np.ones(int(has.sum()), np.float32),
                                         (user[has], g[has])),
                                        shape=(n_users, int(groups.max(initial=-1)) + 1))
            self.family.sum_duplicates()
        self.item_price = np.full(n_items, np.nan, np.float32)
        user_price = np.full(n_users, np.nan, np.float32)
        if prices is not None:
            known = prices[prices["time"] <= now]
            mean_item = known.groupby("item")["price"].mean()
            at = _lookup(universe, mean_item.index, "item", "ignore")
            self.item_price[at[at >= 0]] = mean_item.to_numpy()[at >= 0]
            mean_user = known.groupby("user")["price"].mean()
            at = _lookup(self.user_pos, mean_user.index, "user", "ignore")
            user_price[at[at >= 0]] = mean_user.to_numpy()[at >= 0]
        self.users = np.column_stack([user_events, recent, distinct, latest,
                                      user_price]).astype(np.float32)
        self.queries = None
        if vectors is not None:
            self.queries = UserQueries(data, vector_rows, vectors, 20, 30.0, now)


def _pair_max(rows: np.ndarray, cols: np.ndarray, values: np.ndarray,
              shape: tuple[int, int]) -> sp.csr_matrix:
    if not len(rows):
        return sp.csr_matrix(shape, dtype=np.float64)
    order = np.lexsort((-values, cols, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    first = np.r_[True, (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])]
    return sp.csr_matrix((values[first], (rows[first], cols[first])), shape=shape)


def _pairs(matrix: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``matrix[rows[i], cols[i]]`` for every i (0 where a row or column is -1)."""
    ok = (rows >= 0) & (cols >= 0)
    out = np.zeros(len(rows))
    if ok.any():
        out[ok] = np.asarray(matrix[rows[ok], cols[ok]]).ravel()
    return out


@RANKERS.register("learned")
class LearnedRanker:
    """Rank the union of several candidate sources with LightGBM lambdarank.

    Parameters
    ----------
    sources : list of dict
        ``{"name": <SOURCES name>, "params": {...}}`` per source; a
        ``visual-neighbours`` or ``new-arrivals`` source needs ``item_vectors`` at fit.
    n_candidates : int
        Candidates taken from each source per user.
    window_days : int
        Length of each label window, in days.
    train_windows, validation_windows : int
        Windows the model learns from, and the most recent ones on which it must
        beat the serving source (``validation_windows=0`` skips the check).
    validation_confidence : float or None
        The model ranks only if the lower bound of its MAP@12 gain over the serving
        source on the validation windows, at this one-sided confidence (2,000
        bootstrap resamples of the validation users, seeded by ``random_state``), is
        above 0; a source replaces the baseline by the same rule. ``None`` compares
        point estimates (the best source serves unless the model is ahead).
    baseline : str, optional
        Label of the source that serves unless the model or another source beats it
        with confidence. Default: the ``chain`` source when there is one (the strongest
        simple baseline as one list), else the best source on validation.
    label_split : {"time", "random"}
        ``"time"``: label windows are the last days before the cut-off (what a
        deployment predicts: the next purchases). ``"random"``: each window holds
        out a random ``label_fraction`` of the events instead, for data judged on
        random held-out events (the MovieLens protocols); the ranker then learns
        the task it is judged on. The windows are disjoint, so no validation label
        was ever a training label.
    label_fraction : float
        Share of events held out per ``"random"`` window; the windows together
        hold out at most all of them.
    exclude_seen : bool
        Never rank items the user already has, in training, validation and
        serving (for data where nobody re-consumes, e.g. ratings); by default
        they compete (shoppers rebuy).
    label_threshold : float, optional
        Only window events with a value (rating) at least this are labels, for data
        judged on ratings above a threshold; the other events still count as history
        of later windows.
    use_images : bool
        Compute the image features (``False``: the same ranker without them, for
        an ablation; visual sources still propose candidates).
    model_params : dict, optional
        LightGBM parameters over :data:`DEFAULT_MODEL_PARAMS`.
    n_rounds : int
        Boosting rounds (fixed: nothing is tuned on the validation windows).
    random_state : int
        LightGBM seed.

    Attributes
    ----------
    sources_ : list of CandidateSource
        Fitted on the whole log (serving).
    booster_ : lightgbm.Booster or None
        ``None`` when a single source won the validation.
    choice_ : str
        ``"learned"`` or the label of the source that ranks.
    validation_ : dict
        MAP@12 on the validation windows of the model and of each source, and the
        number of (user, window) pairs.
    pool_recall_ : dict of str to float
        Recall of each source's ``n_candidates`` candidates, and of their union
        (``"union"``), over the purchases of all label windows (pooled): how much of
        what was bought the model could rank at best.
    validation_gain_ : dict
        The model's MAP@12 gain on validation over the source that serves otherwise:
        ``versus`` (that source), ``gain``, ``low`` (the bound the rule compares with 0),
        ``confidence`` and ``users``; empty without validation.
    feature_names_ : list of str
    feature_importances_ : dict of str to float
        Total gain of each feature.
    """

    def __init__(self, sources: Sequence[Mapping[str, Any]] = DEFAULT_SOURCES,
                 n_candidates: int = 40, window_days: int = 7, train_windows: int = 8,
                 validation_windows: int = 2, validation_confidence: float | None = 0.95,
                 baseline: str | None = None, label_split: str = "time",
                 label_fraction: float = 0.2, exclude_seen: bool = False,
                 label_threshold: float | None = None,
                 use_images: bool = True,
                 model_params: Mapping[str, Any] | None = None, n_rounds: int = 150,
                 random_state: int = 0) -> None:
        self.sources = sources
        self.n_candidates = n_candidates
        self.window_days = window_days
        self.train_windows = train_windows
        self.validation_windows = validation_windows
        self.validation_confidence = validation_confidence
        self.baseline = baseline
        self.label_split = label_split
        self.label_fraction = label_fraction
        self.exclude_seen = exclude_seen
        self.label_threshold = label_threshold
        self.use_images = use_images
        self.model_params = model_params
        self.n_rounds = n_rounds
        self.random_state = random_state

    def get_params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not
                k.startswith("_")}

    def __repr__(self) -> str:
        return f"LearnedRanker({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    def _check_params(self) -> None:
        specs = list(self.sources)
        if not specs:
            raise ValueError("sources must name at least one candidate source")
        for spec in specs:
            if not isinstance(spec, Mapping) or "name" not in spec:
                raise ValueError(f"each source is {{'name': ..., 'params': {{...}}}}, got {spec!r}")
            SOURCES.get(spec["name"])  # unknown names raise here, listing the known ones
        labels = [source_label(s) for s in specs]
        if len(set(labels)) != len(labels):
            raise ValueError(f"two sources share a label {labels}: give each a distinct "
                             "'label'")
        if self.baseline is not None and self.baseline not in labels:
            raise ValueError(f"baseline {self.baseline!r} is not one of the sources {labels}")
        for name in ("n_candidates", "window_days", "train_windows"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.validation_windows) < 0:
            raise ValueError(f"validation_windows must be >= 0, got {self.validation_windows}")
        if self.validation_confidence is not None and not 0 < self.validation_confidence < 1:
            raise ValueError("validation_confidence must be in (0, 1) or None, got "
                             f"{self.validation_confidence}")
        if self.label_split not in LABEL_SPLITS:
            raise ValueError(f"label_split must be one of {LABEL_SPLITS}, got "
                             f"{self.label_split!r}")
        if not 0 < self.label_fraction < 1:
            raise ValueError(f"label_fraction must be in (0, 1), got {self.label_fraction}")
        n_windows = int(self.train_windows) + int(self.validation_windows)
        if self.label_split == "random" and n_windows * self.label_fraction > 1 + 1e-9:
            raise ValueError(f"label_split='random' holds out disjoint shares: {n_windows} "
                             f"windows of label_fraction={self.label_fraction} exceed all "
                             "the events; lower one of them")

    # -- fitting --------------------------------------------------------------

    def fit(self, interactions: Interactions, item_ids: Sequence[str] | None = None,
            item_vectors: np.ndarray | None = None, style_vectors: np.ndarray | None = None,
            item_groups: Mapping[str, str] | None = None,
            prices: pd.DataFrame | None = None) -> LearnedRanker:
        """Learn the ranker from ``interactions`` (see the module docstring).

        Parameters
        ----------
        interactions : Interactions
            The log, with a time on every event.
        item_ids, item_vectors : optional
            Embedded items (the catalog the visual sources may return) and their
            embeddings ``[n, dim]``.
        style_vectors : ndarray, optional
            Style reference embeddings in the same space (the ``cos_style`` feature).
        item_groups : mapping of str to str, optional
            Item → family key (the family feature).
        prices : DataFrame, optional
            Columns ``user``, ``item``, ``time``, ``price`` (e.g. H&M transactions);
            only rows up to each window's cut-off are used.

        Returns
        -------
        self
        """
        import lightgbm

        self._check_params()
        if interactions.events["time"].isna().any() and self.label_split == "time":
            raise NotEnoughHistory("the learned ranker needs a time on every event (its label "
                                   "windows are cut in time); use label_split='random' for "
                                   "logs without times")
        self._prepare(interactions, item_ids, item_vectors, style_vectors, item_groups, prices)
        examples = [None if labels is None else self._examples(history, labels)
                    for history, labels in self.label_windows(interactions)]
        usable = [e for e in examples if e is not None]
        if not usable:
            raise NotEnoughHistory("no label window has events both before and inside it: the "
                                   "log spans too few days for "
                                   f"{self.train_windows} + {self.validation_windows} windows "
                                   f"of {self.window_days} days")
        params = {**DEFAULT_MODEL_PARAMS, **(self.model_params or {}), "seed": self.random_state}
        n_val = int(self.validation_windows)
        train, valid = examples[:len(examples) - n_val], examples[len(examples) - n_val:]
        train, valid = [e for e in train if e is not None], [e for e in valid if e is not None]
        self.choice_, self.validation_, self.validation_gain_ = "learned", {}, {}
        if valid and train:
            booster = self._train(lightgbm, params, train)
            self.validation_, ap, users = self._validate(booster, valid)
            best = self._serving_source(ap, users)
            gain = self._gain(ap["learned"] - ap[best], users)
            self.validation_gain_ = {"versus": best, **gain}
            if not gain["low"] > 0:
                self.choice_ = best
                log.warning("learned ranker: MAP@12 %.4f on validation does not beat source "
                            "%s (%.4f; gain %+.4f, %s bound %+.4f): %s ranks",
                            self.validation_["learned"], best, self.validation_[best],
                            gain["gain"], gain["confidence"], gain["low"], best)
        self.booster_ = (self._train(lightgbm, params, usable) if self.choice_ == "learned"
                         else None)
        self.feature_importances_ = {} if self.booster_ is None else dict(zip(
            self.feature_names_, self.booster_.feature_importance("gain").tolist(), strict=True))
        self.pool_recall_ = self._pool_recall(usable)
        log.info("learned ranker: recall@%d of the candidate pools over the label windows: "
                 "%s", int(self.n_candidates), ", ".join(
                     f"{k} {v:.3f}" for k, v in self.pool_recall_.items()))
        self._serve_on(interactions)
        return self

    def _pool_recall(self, examples: list[dict]) -> dict[str, float]:
        """Share of the label windows' purchases (pooled) that each source's
        ``n_candidates`` and the union of all of them reach: what the model can rank
        at best, and which source brings it."""
        relevant = sum(len(t) for e in examples for t in e["truth"])
        hits = dict.fromkeys([*self.source_labels_, "union"], 0)
        for e in examples:
            for label, ids in zip(self.source_labels_, e["source_items"], strict=True):
                hits[label] += sum(len(t.intersection(row)) for row, t in zip(ids, e["truth"],
                                                                               strict=True))
            hits["union"] += int(e["y"].sum())
        return {k: v / max(relevant, 1) for k, v in hits.items()}

    def label_windows(self, interactions: Interactions
                      ) -> list[tuple[Interactions, Interactions | None]]:
        """``(history, labels)`` of each window, oldest first.

        With ``label_split="time"`` windows are whole days ending on the log's last
        day; ``history`` holds every event before the window's first day, ``labels``
        the window's events (``None`` when the window or its history is empty).
        With ``"random"`` each window is a seeded random share of the events, no
        event in two windows; ``history`` is every event outside the window.
        """
        n_windows = int(self.train_windows) + int(self.validation_windows)
        out = []
        if self.label_split == "random":
            draw = np.random.default_rng(int(self.random_state)).random(len(interactions))
            slot = np.floor(draw / float(self.label_fraction))
            for j in range(n_windows):
                inside = slot == j
                out.append((interactions.select(~inside), interactions.select(inside)))
            return out
        times = interactions.events["time"]
        days = times.dt.normalize()
        last_day = days.max()
        for j in range(n_windows, 0, -1):
            start = last_day - pd.Timedelta(days=j * int(self.window_days) - 1)
            end = start + pd.Timedelta(days=int(self.window_days))
            before = (days < start).to_numpy()
            inside = ((days >= start) & (days < end)).to_numpy()
            empty = not before.any() or not inside.any()
            out.append((interactions.select(before),
                        None if empty else interactions.select(inside)))
        return out

    def _prepare(self, interactions: Interactions, item_ids: Sequence[str] | None,
                 item_vectors: np.ndarray | None, style_vectors: np.ndarray | None,
                 item_groups: Mapping[str, str] | None, prices: pd.DataFrame | None) -> None:
        """Item universe, embeddings, families, prices and source templates."""
        self.embedded_ids_ = None if item_ids is None else np.asarray(item_ids, dtype=str)
        self.item_vectors_ = None
        if item_vectors is not None:
            self.item_vectors_ = _check_vectors(item_vectors, self.embedded_ids_)
        self.style_vectors_ = (None if style_vectors is None
                               else _normalise_rows(np.asarray(style_vectors, np.float32)))
        ids = [interactions.item_ids] + ([] if item_ids is None else [self.embedded_ids_])
        self.universe_ids_ = np.unique(np.concatenate(ids)).astype(str)
        self._universe = {t: i for i, t in enumerate(self.universe_ids_)}
        self._vector_rows = None
        if self.item_vectors_ is not None:
            self._vector_rows = np.full(len(self.universe_ids_), -1, dtype=np.int64)
            self._vector_rows[_lookup(self._universe, self.embedded_ids_, "item", "raise")] = (
                np.arange(len(self.embedded_ids_)))
        self.item_groups_ = None
        self._groups = None
        if item_groups is not None:
            self.item_groups_ = {str(k): str(v) for k, v in item_groups.items()}
            keys = np.array([self.item_groups_.get(t, "") for t in self.universe_ids_])
            _, codes = np.unique(keys, return_inverse=True)
            self._groups = np.where(keys == "", -1, codes).astype(np.int64)
        self.prices_ = None
        if prices is not None:
            missing = {"user", "item", "time", "price"} - set(prices.columns)
            if missing:
                raise ValueError(f"prices needs columns user, item, time, price; lacks "
                                 f"{sorted(missing)}")
            self.prices_ = prices[["user", "item", "time", "price"]].astype(
                {"user": str, "item": str})
        self._templates = []
        for spec in self.sources:
            source = SOURCES.create(spec["name"], **(spec.get("params") or {}))
            if isinstance(source, VisualSource):
                if self.item_vectors_ is None:
                    raise ValueError(f"source {spec['name']!r} needs item_ids and "
                                     "item_vectors at fit")
                source.set_embeddings(self.embedded_ids_, self.item_vectors_)
            if source.needs_groups:
                if self.item_groups_ is None:
                    raise ValueError(f"source {spec['name']!r} with group={GIVEN_GROUPS!r} "
                                     "needs item_groups at fit")
                source.set_groups(self.item_groups_)
            self._templates.append(source)
        self.source_labels_ = [source_label(s) for s in self.sources]
        names = []
        for label in self.source_labels_:
            names += [f"{label}_score", f"{label}_rank"]
        names += ["n_sources"]
        names += [f"item_events_{d}d" for d in POPULARITY_DAYS]
        names += ["item_events", "item_age_days", "item_idle_days", "cold", "item_price"]
        names += ["user_events", "user_events_30d", "user_items", "user_idle_days",
                  "user_price", "pair_bought", "pair_idle_days", "family_events",
                  "price_ratio"]
        if self.use_images and self.item_vectors_ is not None:
            names += list(IMAGE_FEATURES)
        self.feature_names_ = names

    def _fit_sources(self, data: Interactions) -> list[CandidateSource]:
        return [copy.copy(t).fit(data) for t in self._templates]

    def _stats(self, data: Interactions, now: pd.Timestamp | None = None) -> _Stats:
        images = self.use_images and self.item_vectors_ is not None
        return _Stats(data, data.events["time"].max() if now is None else now, self._universe,
                      self._groups, self.prices_, self.item_vectors_ if images else None,
                      self._vector_rows)

    def _examples(self, history: Interactions, labels: Interactions) -> dict[str, Any]:
        """Candidates of the window's buyers with features (from ``history``) and labels."""
        sources = self._fit_sources(history)
        stats = self._stats(history)
        if self.label_threshold is not None:
            labels = labels.select((labels.events["value"] >= self.label_threshold).to_numpy())
        users = np.asarray(labels.user_ids[np.unique(labels.events["user"].to_numpy())])
        pool, source_items = self._pool(sources, stats, users.tolist(), None,
                                        int(self.n_candidates))
        bought = labels.matrix[labels.user_index(users)]
        truth = [set(labels.item_ids[bought[i].indices]) for i in range(len(users))]
        # the window's catalog is declared as an evaluation declares a test window's: items
        # with an earlier event, and items the window's buyers without history bought;
        # an item known only from a label user's purchase in the window would be the
        # leak of a catalog derived from test events
        known = set(history.item_ids[np.unique(history.events["item"].to_numpy())])
        newcomers = ~np.isin(labels.user_ids[labels.events["user"].to_numpy()],
                             history.user_ids[np.unique(history.events["user"].to_numpy())])
        known |= set(labels.item_ids[labels.events["item"].to_numpy()[newcomers]])
        listed = np.fromiter((t in known for t in pool.item), bool, count=len(pool.item))
        pool = Pool(pool.user[listed], pool.item[listed], pool.features[listed])
        source_items = [[[t for t in row if t in known] for row in ids] for ids in source_items]
        if self.exclude_seen:
            seen = self._seen(stats, users.tolist(), None)
            keep = np.fromiter((pool.item[j] not in seen[pool.user[j]]
                                for j in range(len(pool.item))), bool, count=len(pool.item))
            pool = Pool(pool.user[keep], pool.item[keep], pool.features[keep])
            source_items = [[[t for t in row if t not in seen[r]] for r, row in
                             enumerate(ids)] for ids in source_items]
        y = np.fromiter((pool.item[j] in truth[pool.user[j]] for j in range(len(pool.item))),
                        dtype=np.float32, count=len(pool.item))
        return {"pool": pool, "y": y, "truth": truth, "source_items": source_items,
                "users": users}

    def _seen(self, stats: _Stats, user_ids: list[str], history: Interactions | None
              ) -> list[set[str]]:
        """Each user's items: from ``history`` for users in it, else from ``stats``."""
        rows = _lookup(stats.user_pos, user_ids, "user", "ignore")
        out = [set(self.universe_ids_[stats.bought[r].indices]) if r >= 0 else set()
               for r in rows]
        if history is not None:
            for i, r in enumerate(history.user_index(user_ids, missing="ignore")):
                if r >= 0:
                    out[i] = set(history.item_ids[history.matrix[r].indices])
        return out

    def _pool(self, sources: list[CandidateSource], stats: _Stats, user_ids: list[str],
              history: Interactions | None, width: int) -> tuple[Pool, list[np.ndarray]]:
        found = [s.candidates(user_ids, width, history) for s in sources]
        users, items = [], []
        for ids, _ in found:
            valid = ids != ""
            users.append(np.nonzero(valid)[0])
            items.append(ids[valid])
        users, items = np.concatenate(users), np.concatenate(items)
        items = items.astype(str)
        order = np.lexsort((items, users))
        users, items = users[order], items[order]
        first = np.r_[True, (users[1:] != users[:-1]) | (items[1:] != items[:-1])]
        user, item = users[first].astype(np.int64), items[first]
        lookup = {key: j for j, key in enumerate(zip(user, item, strict=True))}
        columns = []
        for ids, scores in found:
            score = np.full(len(user), np.nan, np.float32)
            rank = np.full(len(user), np.nan, np.float32)
            rows, cols = np.nonzero(ids != "")
            at = np.fromiter((lookup[(r, ids[r, c])] for r, c in zip(rows, cols, strict=True)),
                             dtype=np.int64, count=len(rows))
            score[at], rank[at] = scores[rows, cols], cols
            columns += [score, rank]
        hits = np.sum([~np.isnan(c) for c in columns[::2]], axis=0)
        features = np.column_stack(columns + [hits] + self._features(stats, user_ids, user,
                                                                      item, history))
        return Pool(user, item, features.astype(np.float32)), [ids for ids, _ in found]

    def _features(self, stats: _Stats, user_ids: list[str], user: np.ndarray,
                  item: np.ndarray, history: Interactions | None) -> list[np.ndarray]:
        col = _lookup(self._universe, item, "item", "ignore")
        item_stats = np.where(col[:, None] >= 0, stats.items[np.clip(col, 0, None)], np.nan)
        item_price = np.where(col >= 0, stats.item_price[np.clip(col, 0, None)], np.nan)
        own, row_of = stats, _lookup(stats.user_pos, user_ids, "user", "ignore")
        if history is not None:
            hist_rows = history.user_index(user_ids, missing="ignore")
            if (hist_rows >= 0).any():
                own = self._stats(history, max(stats.now, history.events["time"].max()))
                row_of = hist_rows
        rows = row_of[user]
        user_stats = np.where(rows[:, None] >= 0, own.users[np.clip(rows, 0, None)], np.nan)
        bought = _pairs(own.bought, rows, col)
        fresh = _pairs(own.fresh, rows, col)
        pair_idle = np.where(fresh > 0, 1e5 - fresh, np.nan)
        family = np.full(len(user), np.nan)
        if own.family is not None:
            g = np.where(col >= 0, self._groups[np.clip(col, 0, None)], -1)
            family = _pairs(own.family, rows, g)
        price_ratio = item_price / user_stats[:, 4]
        out = [item_stats[:, j] for j in range(item_stats.shape[1])] + [item_price]
        out += [user_stats[:, j] for j in range(user_stats.shape[1])]
        out += [bought, pair_idle, family, price_ratio]
        if own.queries is not None:
            out += self._image_features(own, rows, col)
        return out

    def _image_features(self, stats: _Stats, rows: np.ndarray, col: np.ndarray
                        ) -> list[np.ndarray]:
        vec_row = np.where(col >= 0, self._vector_rows[np.clip(col, 0, None)], -1)
        has = (vec_row >= 0) & (rows >= 0)
        out = [np.full(len(rows), np.nan, np.float32) for _ in IMAGE_FEATURES]
        if not has.any():
            return out
        r, v, own = rows[has], self.item_vectors_[vec_row[has]], vec_row[has]
        # per user, not per pair: a pair-wise gather of every recent item's vector costs
        # pairs x recent x dim (tens of MB for one slate batch)
        users, at = np.unique(r, return_inverse=True)
        taste = stats.queries.taste[users]
        recent_rows = stats.queries.recent[users]
        recent = self.item_vectors_[np.clip(recent_rows, 0, None)] * (recent_rows >= 0)[..., None]
        lead = _normalise_rows(recent[:, :5].sum(axis=1))
        sims = np.empty((len(r), recent_rows.shape[1]), np.float32)
        order = np.argsort(at, kind="stable")
        bounds = np.searchsorted(at[order], np.arange(len(users) + 1))
        for u in range(len(users)):
            pairs = order[bounds[u]:bounds[u + 1]]
            sims[pairs] = v[pairs] @ recent[u].T
        sims[(recent_rows[at] < 0) | (recent_rows[at] == own[:, None])] = np.nan
        with np.errstate(all="ignore"):
            out[0][has] = np.where(np.abs(taste).sum(1)[at] > 0, (v * taste[at]).sum(1), np.nan)
            out[1][has] = np.where(np.abs(lead).sum(1)[at] > 0, (v * lead[at]).sum(1), np.nan)
            nearest = np.nanmax(np.where(np.isnan(sims), -np.inf, sims), axis=1)
            out[2][has] = np.where(np.isfinite(nearest), nearest, np.nan)
            if self.style_vectors_ is not None:
                style = self.style_vectors_[np.argmax(taste @ self.style_vectors_.T, axis=1)]
                out[3][has] = np.where(np.abs(taste).sum(1)[at] > 0,
                                       (v * style[at]).sum(1), np.nan)
        return out

    def _train(self, lightgbm: Any, params: dict, examples: list[dict]) -> Any:
        xs, ys, groups = [], [], []
        for e in examples:
            pool, y = e["pool"], e["y"]
            has = np.zeros(pool.user.max(initial=-1) + 1, bool)
            has[pool.user[y > 0]] = True  # a user with no relevant candidate teaches nothing
            keep = has[pool.user]
            xs.append(pool.features[keep])
            ys.append(y[keep])
            groups.append(np.bincount(pool.user[keep], minlength=len(has))[has])
        x, y, group = np.concatenate(xs), np.concatenate(ys), np.concatenate(groups)
        if not y.any():
            raise NotEnoughHistory("no candidate of any training window was bought: the sources "
                             "reach none of the labels, so there is nothing to learn")
        data = lightgbm.Dataset(x, y, group=group, feature_name=self.feature_names_,
                                free_raw_data=True)
        log.info("learned ranker: %d examples, %d queries, %.3f%% positive", len(y),
                 len(group), 100 * y.mean())
        return lightgbm.train(params, data, num_boost_round=int(self.n_rounds))

    def _validate(self, booster: Any, examples: list[dict]
                  ) -> tuple[dict[str, float], dict[str, np.ndarray], np.ndarray]:
        """MAP@12 of the model and of each source on the validation windows, with the
        AP of every (user, window) pair and the pairs' users."""
        ap = {"learned": []} | {label: [] for label in self.source_labels_}
        users = np.concatenate([e["users"] for e in examples])
        for e in examples:
            pool, truth = e["pool"], e["truth"]
            ranked = _slates(pool, booster.predict(pool.features, num_threads=1), len(truth),
                             MAP_K)
            ap["learned"] += [_ap(r, t) for r, t in zip(ranked, truth, strict=True)]
            for label, ids in zip(self.source_labels_, e["source_items"], strict=True):
                ap[label] += [_ap(list(row[:MAP_K]), t) for row, t in zip(ids, truth,
                                                                          strict=True)]
        out = {name: float(np.mean(v)) for name, v in ap.items()}
        out["pairs"] = len(ap["learned"])
        return out, {name: np.asarray(v) for name, v in ap.items()}, users

    def _serving_source(self, ap: dict[str, np.ndarray], users: np.ndarray) -> str:
        """The source that serves if the model does not rank: the baseline, or the best
        of the sources that beat it with confidence."""
        labels = self.source_labels_
        if self.validation_confidence is None:
            return max(labels, key=self.validation_.get)
        chains = [label for spec, label in zip(self.sources, labels, strict=True)
                  if spec["name"] == "chain"]
        baseline = self.baseline or (chains[0] if chains else
                                     max(labels, key=self.validation_.get))
        better = [s for s in labels if s != baseline
                  and self._gain(ap[s] - ap[baseline], users)["low"] > 0]
        if better:
            log.info("learned ranker: %s beat%s the baseline %s on validation with confidence",
                     ", ".join(better), "s" if len(better) == 1 else "", baseline)
        return max(better, key=self.validation_.get) if better else baseline

    def _gain(self, diff: np.ndarray, users: np.ndarray, resamples: int = 2000
              ) -> dict[str, Any]:
        """Mean of the per-pair ``diff`` and its lower bound at ``validation_confidence``
        (resampling users, as a user's pairs in two windows are not independent)."""
        _, user = np.unique(users, return_inverse=True)
        total = np.bincount(user, weights=diff)
        count = np.bincount(user).astype(np.float64)
        out = {"gain": float(diff.mean()), "low": float(diff.mean()),
               "confidence": self.validation_confidence, "users": len(total)}
        if self.validation_confidence is None:
            return out
        rng = np.random.default_rng(self.random_state)
        means = []
        for start in range(0, resamples, 100):  # bounded memory for large validations
            draw = rng.integers(0, len(total), size=(min(100, resamples - start), len(total)))
            means.append(total[draw].sum(1) / count[draw].sum(1))
        out["low"] = float(np.quantile(np.concatenate(means), 1 - self.validation_confidence))
        return out

    def _serve_on(self, interactions: Interactions) -> None:
        """Fit the sources and statistics that serving uses on the whole log."""
        self.events_ = interactions
        self.sources_ = self._fit_sources(interactions)
        self._serve_stats = self._stats(interactions)
        if self.booster_ is not None:
            self._paths = _path_contributions(self.booster_)

    def _check_fitted(self) -> None:
        if not hasattr(self, "sources_"):
            raise RuntimeError("LearnedRanker is not fitted yet: call fit() first")

    # -- ranking --------------------------------------------------------------

    def rank(self, user_ids: Sequence[str], k: int = 12, history: Interactions | None = None,
             exclude: Sequence[set[str]] | None = None, candidates: set[str] | None = None,
             contributions: bool = False) -> Ranked:
        """Top-``k`` items per user (thread-safe: reads fitted state only).

        Parameters
        ----------
        user_ids : sequence of str
        k : int
        history : Interactions, optional
            Events of users to fold in (see the sources' ``candidates``).
        exclude : sequence of set of str, optional
            Items never returned, per user (e.g. what they already have, for
            protocols that filter seen items).
        candidates : set of str, optional
            The only items that may be returned (e.g. the items with an image).
        contributions : bool
            Also compute each entry's per-feature contributions.

        Returns
        -------
        Ranked
        """
        self._check_fitted()
        if isinstance(user_ids, str):
            raise TypeError("user_ids must be a sequence of ids (batch-first), not a string")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        user_ids = [str(u) for u in user_ids]
        n = len(user_ids)
        if self.exclude_seen:
            seen = self._seen(self._serve_stats, user_ids, history)
            exclude = seen if exclude is None else [a | set(b) for a, b in zip(
                seen, exclude, strict=True)]
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        if self.booster_ is None:
            pool, score = self._handed_over(user_ids, history, int(self.n_candidates) + extra)
        else:
            pool, _ = self._pool(self.sources_, self._serve_stats, user_ids, history,
                                 int(self.n_candidates) + extra)
            # one thread: a slate's few hundred rows cost less than waking a thread pool
            score = (self.booster_.predict(pool.features, num_threads=1) if len(pool.item)
                     else np.zeros(0))
        drop = np.zeros(len(pool.item), dtype=bool)
        if exclude is not None or candidates is not None:
            drop = np.fromiter(
                ((exclude is not None and pool.item[j] in exclude[pool.user[j]])
                 or (candidates is not None and pool.item[j] not in candidates)
                 for j in range(len(pool.item))), bool, count=len(pool.item))
        score = np.where(drop, -np.inf, score)
        order = np.lexsort((pool.item, -score, pool.user))
        user, item, score = pool.user[order], pool.item[order], score[order]
        first = np.searchsorted(user, np.arange(n))
        place = np.arange(len(user)) - first[user]
        keep = (place < k) & np.isfinite(score)
        at = (user[keep], place[keep])
        out_ids = np.full((n, k), "", dtype=object)
        out_scores = np.full((n, k), -np.inf, dtype=np.float32)
        features = np.full((n, k, pool.features.shape[1]), np.nan, np.float32)
        out_ids[at], out_scores[at] = item[keep], score[keep]
        features[at] = pool.features[order[keep]]
        contrib = None
        if contributions and self.booster_ is not None:
            contrib = np.zeros((n, k, len(self.feature_names_) + 1), np.float32)
            if keep.any():
                leaves = self.booster_.predict(pool.features[order[keep]], num_threads=1,
                                               pred_leaf=True).reshape(int(keep.sum()), -1)
                contrib[at] = self._paths[np.arange(leaves.shape[1]), leaves].sum(axis=1)
        return Ranked(out_ids.astype(str), out_scores, features, contrib)

    def _handed_over(self, user_ids: list[str], history: Interactions | None, width: int
                     ) -> tuple[Pool, np.ndarray]:
        """The pool of the source the model handed over to, best first (descending place
        scores). A user it gives fewer than ``width`` items (a new shopper, for
        repurchase or visual neighbours) gets the next sources' items after them, in the
        order of their validation MAP@12, so no slate is short for want of history."""
        order = sorted(range(len(self.sources_)), key=lambda i: (
            self.source_labels_[i] != self.choice_,
            -self.validation_.get(self.source_labels_[i], 0.0)))
        lists: list[dict[str, None]] = [{} for _ in user_ids]
        for i in order:
            short = [r for r, listed in enumerate(lists) if len(listed) < width]
            if not short:
                break
            ids, _ = self.sources_[i].candidates([user_ids[r] for r in short], width, history)
            for r, row in zip(short, ids, strict=True):
                for item in row:
                    if item and len(lists[r]) < width:
                        lists[r].setdefault(str(item))
        user = np.repeat(np.arange(len(user_ids)), [len(listed) for listed in lists])
        item = np.array([t for listed in lists for t in listed], dtype=str)
        place = np.concatenate([np.arange(len(listed)) for listed in lists] + [np.zeros(0)])
        pool = Pool(user, item, np.zeros((len(item), len(self.feature_names_)), np.float32))
        return pool, (width - place).astype(np.float64)

    # -- persistence ----------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the ranker to the folder ``path`` (replaced atomically), no pickle.

        ``ranker.json`` (parameters, choice, validation, feature names),
        ``model.txt`` (LightGBM's text format), ``arrays.npz`` (the fit log's events,
        embeddings, prices). :meth:`load` refits the sources on the saved log
        (deterministic for seeded sources) instead of storing each source's state.
        """
        self._check_fitted()
        data = self.events_
        arrays = {"user_ids": data.user_ids, "item_ids": data.item_ids,
                  "user": data.events["user"].to_numpy(), "item": data.events["item"].to_numpy(),
                  "time": data.events["time"].to_numpy().astype("datetime64[ns]").astype(
                      np.int64), "value": data.events["value"].to_numpy()}
        if self.item_vectors_ is not None:
            arrays |= {"embedded_ids": self.embedded_ids_, "item_vectors": self.item_vectors_}
        if self.style_vectors_ is not None:
            arrays["style_vectors"] = self.style_vectors_
        if self.prices_ is not None:
            arrays |= {f"price_{c}": self.prices_[c].to_numpy() for c in ("user", "item",
                                                                          "price")}
            arrays["price_time"] = self.prices_["time"].to_numpy().astype(
                "datetime64[ns]").astype(np.int64)
        params = self.get_params() | {"sources": [dict(s) for s in self.sources]}
        meta = {"format": FORMAT_VERSION, "params": params, "choice": self.choice_,
                "validation": self.validation_, "validation_gain": self.validation_gain_,
                "pool_recall": self.pool_recall_,
                "feature_names": self.feature_names_,
                "weighting": data.weighting, "half_life_days": data.half_life_days,
                "item_groups": self.item_groups_}
        with atomic_directory(path, "ranker.json") as tmp:
            write_npz_atomic(tmp / "arrays.npz", {
                k: np.asarray(v).astype(str) if np.asarray(v).dtype == object else np.asarray(v)
                for k, v in arrays.items()})
            if self.booster_ is not None:
                write_bytes_atomic(tmp / "model.txt", self.booster_.model_to_string().encode())
            write_bytes_atomic(tmp / "ranker.json", json.dumps(meta, indent=2).encode())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> LearnedRanker:
        """Load a ranker written by :meth:`save`."""
        import lightgbm

        path = saved_directory(path, "ranker.json")
        meta = read_meta(path, "ranker.json", "learned ranker", FORMAT_VERSION)
        ranker = cls(**meta["params"])
        with np.load(path / "arrays.npz", allow_pickle=False) as z:
            events = pd.DataFrame({"user": z["user"], "item": z["item"],
                                   "time": pd.to_datetime(z["time"]), "value": z["value"]})
            data = Interactions(events, z["user_ids"], z["item_ids"], meta["weighting"],
                                meta["half_life_days"])
            embedded = z["embedded_ids"] if "embedded_ids" in z else None
            vectors = z["item_vectors"] if "item_vectors" in z else None
            styles = z["style_vectors"] if "style_vectors" in z else None
            prices = None
            if "price_user" in z:
                prices = pd.DataFrame({"user": z["price_user"], "item": z["price_item"],
                                       "time": pd.to_datetime(z["price_time"]),
                                       "price": z["price_price"]})
        ranker._check_params()
        ranker._prepare(data, embedded, vectors, styles, meta["item_groups"], prices)
        if ranker.feature_names_ != meta["feature_names"]:
            raise ValueError(f"{path}: saved features {meta['feature_names']} differ from "
                             f"this version's {ranker.feature_names_}")
        ranker.choice_, ranker.validation_ = meta["choice"], meta["validation"]
        ranker.validation_gain_ = meta.get("validation_gain", {})
        ranker.pool_recall_ = meta.get("pool_recall", {})
        ranker.booster_ = None
        ranker.feature_importances_ = {}
        if (path / "model.txt").is_file():
            ranker.booster_ = lightgbm.Booster(model_str=(path / "model.txt").read_text())
            ranker.feature_importances_ = dict(zip(
                ranker.feature_names_, ranker.booster_.feature_importance("gain").tolist(),
                strict=True))
        ranker._serve_on(data)
        return ranker


def _path_contributions(booster: Any) -> np.ndarray:
    """Each leaf's contributions ``[n_trees, max_leaves, n_features + 1]`` (root value last).

    Along the path to a leaf, each split's feature is credited with the change of the
    node value it caused (Saabas; ``treeinterpreter``, XGBoost's ``approx_contribs``);
    the parts of a row's leaves sum to its score. A look-up after ``pred_leaf``,
    about 60x cheaper than LightGBM's TreeSHAP ``pred_contrib`` on a served slate.
    """
    trees = booster.dump_model()["tree_info"]
    n_features = booster.num_feature()
    table = np.zeros((len(trees), max(t["num_leaves"] for t in trees), n_features + 1))
    for t, tree in enumerate(trees):
        root = tree["tree_structure"]
        parts = np.zeros(n_features + 1)
        parts[-1] = root.get("internal_value", root.get("leaf_value"))
        stack = [(root, parts)]
        while stack:
            node, parts = stack.pop()
            if "leaf_index" in node or "split_feature" not in node:
                table[t, node.get("leaf_index", 0)] = parts
                continue
            for child in (node["left_child"], node["right_child"]):
                value = child.get("internal_value", child.get("leaf_value"))
                step = parts.copy()
                step[node["split_feature"]] += value - node["internal_value"]
                stack.append((child, step))
    return table


def _slates(pool: Pool, score: np.ndarray, n_users: int, k: int) -> list[list[str]]:
    order = np.lexsort((pool.item, -score, pool.user))
    out: list[list[str]] = [[] for _ in range(n_users)]
    for j in order:
        row = out[pool.user[j]]
        if len(row) < k:
            row.append(str(pool.item[j]))
    return out


def _ap(ranked: Sequence[str], relevant: set[str], k: int = MAP_K) -> float:
    """AP@k with the H&M competition's normalisation ``min(k, |relevant|)``."""
    hits, total = 0, 0.0
    for i, item in enumerate(list(ranked)[:k]):
        if item and item in relevant:
            hits += 1
            total += hits / (i + 1)
    return total / min(k, len(relevant)) if relevant else 0.0
