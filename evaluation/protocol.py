"""Score a fitted model against held-out interactions under an explicit protocol.

A protocol fixes everything the metric definitions leave open: which test events
count as relevant, which items may be recommended (the candidates), which are
removed because the user already has them, the cut-offs, and the MAP
normalisation. Publishing a number without these is how offline results stop
being comparable; :class:`Protocol` records them with every result.

Any model plugs in through one of two duck-typed interfaces:

* ``score(user_ids) -> float [n_users, n_items]`` with ``item_ids_`` naming the
  columns (every ``recsys.cf`` model). The protocol masks and ranks the scores
  itself, so every metric is available, including full-ranking AUC and MAP.
* ``recommend(user_ids, k, filter_seen=True) -> (item_ids [n, k], scores)``
  (string ids, ``""`` padding), e.g. a re-ranker that only produces slates.
  Only the top-k metrics are then computed; AUC and ``map_full`` are NaN.

Examples
--------
>>> from recsys.cf import create_model  # doctest: +SKIP
>>> model = create_model("bpr", random_state=0).fit(train)  # doctest: +SKIP
>>> result = evaluate(model, train, test, Protocol(ks=(10,)))  # doctest: +SKIP
>>> result.summary(n_resamples=1000)["ndcg@10"]["mean"]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from evaluation import ctr
from evaluation.metrics import (
    ALL_METRICS,
    MAP_NORMALIZATIONS,
    auc_per_user,
    average_precision_at_k,
    average_precision_full,
    catalog_coverage,
    hit_matrix,
    hit_rate_at_k,
    ndcg_at_k,
    novelty,
    precision_at_k,
    recall_at_k,
    reciprocal_rank_at_k,
    self_information,
    summarize,
)
from recsys.interactions import Interactions

log = logging.getLogger(__name__)

CTR_METRICS = ("expected_clicks", "slate_ctr")
# recall restricted to relevant items nobody interacted with in training
COLD_METRICS = ("cold_recall",)
PROTOCOL_METRICS = ALL_METRICS + CTR_METRICS + COLD_METRICS
EXCLUDE_TRAIN = ("all", "relevant", "none")
CANDIDATE_ITEMS = ("all", "train")


@dataclass(frozen=True)
class Protocol:
    """How recommendations are compared with held-out interactions.

    Parameters
    ----------
    ks : tuple of int
        Cut-offs for the top-k metrics.
    metrics : tuple of str
        Names from :data:`evaluation.metrics.ALL_METRICS`, ``expected_clicks``
        and ``slate_ctr`` (:mod:`evaluation.ctr`), and ``cold_recall``: recall@k
        over the relevant items that have no training event (NaN for users
        without one), the share of cold purchases a model reaches.
    relevance_threshold : float, optional
        A test event is relevant when its ``value`` is at least this (e.g. a
        rating of 4); None: every test event is relevant.
    exclude_train : {"all", "relevant", "none"}
        Items removed from a user's candidates because they are in the user's
        training events: all of them (what a production ``filter_seen`` does), only
        those with ``value >= relevance_threshold`` (Cornac's protocol: lower-rated
        training items stay as negatives), or none.
    candidate_items : {"all", "train"}
        Rank every item of the vocabulary (so cold items are reachable), or only
        items with at least one training event (Cornac with ``exclude_unknowns``).
    map_normalization : {"min", "relevant"}
        AP@k divided by ``min(k, |R_u|)`` or by ``|R_u|`` (see
        :func:`evaluation.metrics.average_precision_at_k`).
    position_model : str or tuple of float
        Examination model of the CTR proxies (see :mod:`evaluation.ctr`).
    p_relevant, p_irrelevant : float
        Click probabilities given examination, for relevant / other items.
    batch_size : int
        Users scored at a time (bounds the dense score matrix in memory).

    Notes
    -----
    A user's relevant set is their distinct relevant test items minus the items
    ``exclude_train`` removes for them: re-buying a training item is not what a
    slate that filters seen items can be judged on. Relevant items outside
    ``candidate_items`` (cold items when only training items are ranked) stay
    relevant but unreachable, as in Microsoft Recommenders: they count in
    recall's and MAP's denominators. AUC and ``map_full`` rank candidates only,
    so they ignore unreachable items. Users with no relevant item are not
    evaluated; their number is reported.
    """

    ks: tuple[int, ...] = (10,)
    metrics: tuple[str, ...] = ALL_METRICS
    relevance_threshold: float | None = None
    exclude_train: str = "all"
    candidate_items: str = "all"
    map_normalization: str = "min"
    position_model: str | tuple[float, ...] = "log2"
    p_relevant: float = 1.0
    p_irrelevant: float = 0.0
    batch_size: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "ks", tuple(sorted({int(k) for k in self.ks})))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if not self.ks or self.ks[0] < 1:
            raise ValueError(f"ks must be positive cut-offs, got {self.ks}")
        unknown = set(self.metrics) - set(PROTOCOL_METRICS)
        if unknown:
            raise ValueError(f"unknown metric(s) {sorted(unknown)}; available: {PROTOCOL_METRICS}")
        if self.exclude_train not in EXCLUDE_TRAIN:
            raise ValueError(f"exclude_train must be one of {EXCLUDE_TRAIN}")
        if self.exclude_train == "relevant" and self.relevance_threshold is None:
            raise ValueError("exclude_train='relevant' needs a relevance_threshold")
        if self.candidate_items not in CANDIDATE_ITEMS:
            raise ValueError(f"candidate_items must be one of {CANDIDATE_ITEMS}")
        if self.map_normalization not in MAP_NORMALIZATIONS:
            raise ValueError(f"map_normalization must be one of {MAP_NORMALIZATIONS}")
        if not isinstance(self.position_model, str):
            object.__setattr__(self, "position_model", tuple(self.position_model))
        ctr.examination_probabilities(max(self.ks), self.position_model)  # validates
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters."""
        out = asdict(self)
        out["ks"] = list(self.ks)
        out["metrics"] = list(self.metrics)
        if not isinstance(self.position_model, str):
            out["position_model"] = list(self.position_model)
        return out


@dataclass
class EvalResult:
    """Per-user metric values of one model under one protocol.

    Attributes
    ----------
    user_ids : ndarray of str
        The evaluated users, in the order of every per-user array.
    per_user : dict of str to ndarray
        ``"ndcg@10"`` -> value per evaluated user.
    catalog : dict of str to float
        Metrics of the whole set of slates (``"coverage@10"``).
    recommended : ndarray of int [n_users, max(ks)]
        Item indices (in the training vocabulary) recommended, -1 for padding.
    n_relevant : ndarray of int
        Relevant items per evaluated user.
    timings : dict of str to float
        Seconds spent scoring.
    n_skipped_users : int
        Test users with no relevant item left after the protocol's filters.
    """

    user_ids: np.ndarray
    per_user: dict[str, np.ndarray]
    catalog: dict[str, float]
    recommended: np.ndarray
    n_relevant: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    n_skipped_users: int = 0

    def summary(self, n_resamples: int = 1000, confidence: float = 0.95,
                seed: int = 0) -> dict[str, dict[str, float]]:
        """Means with bootstrap intervals (see :func:`evaluation.metrics.summarize`)."""
        out = summarize(self.per_user, n_resamples, confidence, seed)
        for name, value in self.catalog.items():
            out[name] = {"mean": value, "ci_low": float("nan"), "ci_high": float("nan"),
                         "n_users": len(self.user_ids)}
        return out


def _binary(users: np.ndarray, items: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=shape)
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def _event_matrix(data: Interactions, min_value: float | None) -> sp.csr_matrix:
    """Binary users × items matrix of the events with ``value >= min_value``."""
    events = data.events
    keep = np.ones(len(events), dtype=bool)
    if min_value is not None:
        keep = events["value"].to_numpy() >= min_value
    return _binary(events["user"].to_numpy()[keep], events["item"].to_numpy()[keep],
                   (data.n_users, data.n_items))


def relevance_sets(
    train: Interactions, test: Interactions, protocol: Protocol,
    catalog: np.ndarray | None = None,
) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
    """The protocol's relevant items, excluded items and candidate items.

    ``catalog`` (bool per vocabulary item), when given, is the declared candidate
    set (see :mod:`evaluation.catalogs`) and replaces ``protocol.candidate_items``.

    Returns
    -------
    relevant : csr_matrix [n_users, n_items]
        Relevant test items per user, minus the user's excluded items.
    excluded : csr_matrix [n_users, n_items]
        Training items removed from each user's candidates.
    candidates : bool ndarray [n_items]
        Items that may be recommended at all.
    """
    if not (np.array_equal(train.item_ids, test.item_ids)
            and np.array_equal(train.user_ids, test.user_ids)):
        raise ValueError("train and test must share one vocabulary (build both with select())")
    shape = (train.n_users, train.n_items)
    if protocol.exclude_train == "none":
        excluded = sp.csr_matrix(shape, dtype=np.float32)
    else:
        threshold = protocol.relevance_threshold if protocol.exclude_train == "relevant" else None
        excluded = _event_matrix(train, threshold)
    candidates = np.ones(train.n_items, dtype=bool)
    if catalog is not None:
        candidates = np.asarray(catalog, dtype=bool)
        if candidates.shape != (train.n_items,):
            raise ValueError(f"catalog mask has shape {candidates.shape}, the vocabulary "
                             f"{train.n_items} items")
    elif protocol.candidate_items == "train":
        candidates[:] = False
        candidates[train.events["item"].to_numpy()] = True
    relevant = _event_matrix(test, protocol.relevance_threshold)
    relevant = (relevant - relevant.multiply(excluded)).tocsr()
    relevant.eliminate_zeros()
    return relevant, excluded.tocsr(), candidates


def _model_columns(model: Any, item_ids: np.ndarray) -> np.ndarray | None:
    """Vocabulary index of each of the model's score columns (None: identical)."""
    model_items = np.asarray(model.item_ids_, dtype=str)
    if np.array_equal(model_items, item_ids):
        return None
    lookup = {t: i for i, t in enumerate(item_ids)}
    return np.fromiter((lookup.get(t, -1) for t in model_items), dtype=np.int64,
                       count=len(model_items))


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best finite scores per row, best first; -1 pads."""
    k_eff = min(k, scores.shape[1])
    part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    top = np.take_along_axis(part, order, axis=1)
    top[~np.isfinite(np.take_along_axis(vals, order, axis=1))] = -1
    if k_eff < k:
        top = np.hstack([top, np.full((len(top), k - k_eff), -1, dtype=top.dtype)])
    return top


def _scores_in_vocab(model: Any, user_ids: np.ndarray, n_items: int,
                     columns: np.ndarray | None) -> np.ndarray:
    raw = np.asarray(model.score(list(user_ids)), dtype=np.float64)
    if columns is None:
        return raw.copy()
    # items the model does not know cannot be recommended by it
    scores = np.full((len(user_ids), n_items), -np.inf)
    known = columns >= 0
    scores[:, columns[known]] = raw[:, known]
    return scores


def _recommended_in_vocab(model: Any, user_ids: np.ndarray, k: int,
                          train: Interactions, filter_seen: bool) -> np.ndarray:
    item_ids, _ = model.recommend(list(user_ids), k=k, filter_seen=filter_seen)
    item_ids = np.asarray(item_ids, dtype=str).reshape(len(user_ids), -1)
    flat = train.item_index(item_ids.ravel().tolist(), missing="ignore")
    recs = flat.reshape(item_ids.shape)
    if recs.shape[1] < k:
        recs = np.hstack([recs, np.full((len(recs), k - recs.shape[1]), -1)])
    return recs[:, :k]


def evaluate(
    model: Any,
    train: Interactions,
    test: Interactions,
    protocol: Protocol | None = None,
    catalog: np.ndarray | None = None,
) -> EvalResult:
    """Per-user metrics of a fitted ``model`` on ``test`` under ``protocol``.

    Parameters
    ----------
    model : object
        Fitted on ``train``; exposes ``score`` + ``item_ids_`` or ``recommend``
        (see the module docstring).
    train, test : Interactions
        A split sharing one vocabulary (see :mod:`evaluation.splits`).
    protocol : Protocol, optional
        Defaults to ``Protocol()``: all test events relevant, training items
        excluded, every item a candidate, k = 10.
    catalog : bool ndarray [n_items], optional
        The declared candidate items (replaces ``protocol.candidate_items``).
        A recommended item outside it is a wasted slot.

    Returns
    -------
    EvalResult

    Examples
    --------
    >>> result = evaluate(model, train, test, Protocol(ks=(5, 10)))  # doctest: +SKIP
    >>> result.per_user["recall@10"].mean()  # doctest: +SKIP
    """
    protocol = protocol or Protocol()
    relevant, excluded, candidates = relevance_sets(train, test, protocol, catalog)
    n_rel_all = np.diff(relevant.indptr)
    users = np.flatnonzero(n_rel_all > 0)
    test_users = np.unique(test.events["user"].to_numpy())
    n_skipped = int(np.setdiff1d(test_users, users).size)
    if len(users) == 0:
        raise ValueError("no test user has a relevant item under this protocol")
    k_max = max(protocol.ks)
    want_full = bool({"auc", "map_full"} & set(protocol.metrics))
    use_scores = hasattr(model, "score") and hasattr(model, "item_ids_")
    columns = _model_columns(model, train.item_ids) if use_scores else None
    if want_full and not use_scores:
        log.info("%s has no score(): auc and map_full are not computed",
                    type(model).__name__)

    recs = np.empty((len(users), k_max), dtype=np.int64)
    auc = np.full(len(users), np.nan)
    ap_full = np.full(len(users), np.nan)
    started = time.perf_counter()
    for start in range(0, len(users), protocol.batch_size):
        batch = users[start:start + protocol.batch_size]
        rows = slice(start, start + len(batch))
        ids = train.user_ids[batch]
        if use_scores:
            scores = _scores_in_vocab(model, ids, train.n_items, columns)
            allowed = np.broadcast_to(candidates, scores.shape).copy()
            ex = excluded[batch].tocoo()
            allowed[ex.row, ex.col] = False
            scores[~allowed] = -np.inf
            recs[rows] = _top_k(scores, k_max)
            if want_full:
                rel = relevant[batch]
                auc[rows] = auc_per_user(scores, rel, allowed)
                ap_full[rows] = average_precision_full(scores, rel, allowed)
        else:
            got = _recommended_in_vocab(model, ids, k_max, train,
                                        filter_seen=protocol.exclude_train != "none")
            # slots the protocol does not allow are wasted: they count as misses
            ex = excluded[batch].toarray().astype(bool)
            blocked = (got < 0) | ~candidates[got.clip(min=0)]
            blocked |= np.take_along_axis(ex, got.clip(min=0), axis=1)
            got[blocked] = -1
            recs[rows] = got
    elapsed = time.perf_counter() - started

    rel_users = relevant[users]
    n_rel = n_rel_all[users]
    hits = hit_matrix(recs, rel_users)
    per_user: dict[str, np.ndarray] = {}
    catalog_metrics: dict[str, float] = {}
    wanted = set(protocol.metrics)
    item_info = None
    if "novelty" in wanted:
        train_users_per_item = np.diff(_event_matrix(train, None).tocsc().indptr)
        n_train_users = int(np.unique(train.events["user"].to_numpy()).size)
        item_info = self_information(train_users_per_item, n_train_users)
    cold_hits, n_cold = None, None
    if "cold_recall" in wanted:
        cold = np.ones(train.n_items, dtype=bool)
        cold[train.events["item"].to_numpy()] = False
        cold_hits = hits & cold[recs.clip(min=0)]
        n_cold = np.asarray(rel_users[:, cold].sum(axis=1)).ravel()
    exam = ctr.examination_probabilities(k_max, protocol.position_model)
    rho = ctr.click_probabilities(hits, protocol.p_relevant, protocol.p_irrelevant)
    at_k = {
        "precision": lambda k: precision_at_k(hits, k),
        "recall": lambda k: recall_at_k(hits, n_rel, k),
        "ndcg": lambda k: ndcg_at_k(hits, n_rel, k),
        "map": lambda k: average_precision_at_k(hits, n_rel, k, protocol.map_normalization),
        "hit_rate": lambda k: hit_rate_at_k(hits, k),
        "mrr": lambda k: reciprocal_rank_at_k(hits, k),
        "novelty": lambda k: novelty(recs[:, :k], item_info),
        "expected_clicks": lambda k: ctr.expected_clicks(rho[:, :k], exam[:k]),
        "slate_ctr": lambda k: ctr.slate_ctr(rho[:, :k], exam[:k]),
        "cold_recall": lambda k: np.divide(cold_hits[:, :k].sum(axis=1), n_cold,
                                           out=np.full(len(n_cold), np.nan), where=n_cold > 0),
    }
    for k in protocol.ks:
        for name in protocol.metrics:
            if name in at_k:
                per_user[f"{name}@{k}"] = at_k[name](k)
        if "coverage" in wanted:
            catalog_metrics[f"coverage@{k}"] = catalog_coverage(recs[:, :k], int(candidates.sum()))
    if "auc" in wanted:
        per_user["auc"] = auc
    if "map_full" in wanted:
        per_user["map_full"] = ap_full
    return EvalResult(
        user_ids=train.user_ids[users],
        per_user=per_user,
        catalog=catalog_metrics,
        recommended=recs,
        n_relevant=n_rel,
        timings={"score_s": elapsed},
        n_skipped_users=n_skipped,
    )
