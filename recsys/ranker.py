"""Style-aware ranking: blend collaborative-filtering scores with visual taste affinity.

For each user the ranker builds a candidate pool, scores it and keeps the top
``k``:

1. **Candidates**: the ``n_cf_candidates`` best items by CF score, united with
   the ``n_taste_candidates`` items nearest (FAISS, via
   :class:`~recsys.style_index.StyleIndex`) to each of the user's
   ``max_queries`` heaviest taste vectors. Items nobody interacted with (cold
   items: an image but no CF score) enter through the taste side.
2. **Parts**: the CF part is the CF score, the taste part the affinity of the
   item to the user's :class:`~recsys.taste.TasteProfiles`: the highest cosine
   over the profile's vectors (``affinity="max"``), their weighted mean
   (``"mean"``), or a weighted soft maximum (``"softmax"``). With
   ``TasteModel(method="items")`` the ``max`` affinity is a nearest-item
   similarity to the user's recent purchases.
3. **Blend**: both parts are z-scored over the user's pool (so they share a
   scale whatever the CF model); cold items, which have no CF score, get the
   CF part ``cold_cf`` (0: an average candidate; above 0 a prior for new
   items, which is what shoppers buy in fashion), and
   ``score = (1 - taste_weight) * cf + taste_weight * taste``.
4. **Groups** (optional): with ``item_groups`` (e.g. the product code shared by
   the colour variants of a garment), items in a group the user bought from
   join the pool and get ``group_weight`` added to their score.

Each ranked entry keeps its two normalised parts, so a slate can say why an
item is there.

Examples
--------
>>> import numpy as np
>>> from recsys.taste import TasteProfiles
>>> vectors = np.array([[1, 0], [0.8, 0.6], [0, 1]], dtype=np.float32)
>>> ranker = StyleRanker(taste_weight=0.5).fit(["a", "b", "c"], vectors)
>>> cf = np.array([[3.0, 1.0, np.nan]], dtype=np.float32)  # "c" is cold
>>> profiles = TasteProfiles(vectors=np.array([[[0.0, 1.0]]], dtype=np.float32),
...                          weights=np.ones((1, 1), np.float32),
...                          fallback=np.zeros(1, bool), folded_in=np.zeros(1, bool))
>>> ranking = ranker.rank(cf, profiles, k=3)  # the cold item wins on taste
>>> ranker.item_ids_[ranking.items[0]].tolist()
['c', 'a', 'b']
>>> ranking.cold[0].tolist()
[True, False, False]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ground.files import read_meta, write_bytes_atomic, write_npz_atomic
from recsys.style_index import StyleIndex
from recsys.taste import TasteProfiles, _check_vectors

log = logging.getLogger(__name__)

AFFINITIES = ("max", "mean", "softmax")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Candidates:
    """Candidate pools of a batch of users with their normalised score parts.

    Attributes
    ----------
    items : ndarray of int64, shape (n_users, pool_size)
        Positions in the ranker's ``item_ids_``; -1 pads.
    cf, taste : ndarray of float32, shape (n_users, pool_size)
        Z-scored over the user's pool (NaN for padding); cold items get the
        ranker's ``cold_cf`` as CF part.
    cold : ndarray of bool, shape (n_users, pool_size)
        The item had no CF score.
    group : ndarray of bool, shape (n_users, pool_size)
        The item shares a group (e.g. a product family) with an item of the
        user's history; always false without item groups.
    """

    items: np.ndarray
    cf: np.ndarray
    taste: np.ndarray
    cold: np.ndarray
    group: np.ndarray

    def top(self, k: int, taste_weight: float, group_weight: float = 0.0) -> Ranking:
        """The ``k`` best of each pool under one blend of the parts.

        ``score = (1 - taste_weight) * cf + taste_weight * taste + group_weight * group``.
        Blending is cheap once the pools are built, so a sweep over weights calls
        :meth:`StyleRanker.candidates` once and this many times.

        Examples
        --------
        >>> pool = ranker.candidates(cf_scores, profiles)  # doctest: +SKIP
        >>> rankings = {w: pool.top(10, w) for w in (0.3, 0.5, 0.7)}  # doctest: +SKIP
        """
        if not 0.0 <= taste_weight <= 1.0:
            raise ValueError(f"taste_weight must be in [0, 1], got {taste_weight}")
        n, width = self.items.shape
        valid = self.items >= 0
        blend = (1.0 - taste_weight) * self.cf + taste_weight * self.taste
        blend = blend + group_weight * self.group
        score = np.where(valid, blend, -np.inf).astype(np.float32)
        k_eff = min(k, width)
        top = np.argpartition(-score, k_eff - 1, axis=1)[:, :k_eff]
        # best first; ties broken by item position so the order never depends on the pool
        key = np.take_along_axis(score, top, axis=1)
        order = np.lexsort((np.take_along_axis(self.items, top, axis=1), -key), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        keep = np.take_along_axis(valid, top, axis=1)

        def pick(values: np.ndarray, fill: float | bool) -> np.ndarray:
            out = np.full((n, k), fill, dtype=values.dtype)
            out[:, :k_eff] = np.where(keep, np.take_along_axis(values, top, axis=1), fill)
            return out

        return Ranking(pick(self.items, -1), pick(score, -np.inf), pick(self.cf, np.nan),
                       pick(self.taste, np.nan), pick(self.cold, False), pick(self.group, False))


@dataclass(frozen=True)
class Ranking:
    """Top-``k`` items of a batch of users, best first, with the parts of each score.

    Attributes
    ----------
    items : ndarray of int64, shape (n_users, k)
        Positions in the ranker's ``item_ids_``; -1 pads rows with fewer than
        ``k`` candidates.
    scores : ndarray of float32, shape (n_users, k)
        Blended scores (``-inf`` for padding).
    cf, taste : ndarray of float32, shape (n_users, k)
        The z-scored CF part and taste part of each score (NaN for padding).
    cold : ndarray of bool, shape (n_users, k)
        The item had no CF score (it entered through the taste side).
    group : ndarray of bool, shape (n_users, k)
        The item shares a group with an item of the user's history.
    """

    items: np.ndarray
    scores: np.ndarray
    cf: np.ndarray
    taste: np.ndarray
    cold: np.ndarray
    group: np.ndarray


class StyleRanker:
    """Blend CF scores and taste affinity over a pool of CF and taste candidates.

    Parameters
    ----------
    taste_weight : float
        Weight of the taste part in ``[0, 1]``; 0 ranks the pool by CF alone,
        1 by taste alone.
    n_cf_candidates : int
        Best CF items per user put in the pool.
    n_taste_candidates : int
        Nearest items per taste query put in the pool.
    max_queries : int
        At most this many of a user's taste vectors (the heaviest) are searched.
    affinity : {"max", "mean", "softmax"}
        Taste affinity of an item from its cosines ``s_c`` to the user's taste
        vectors (weights ``w_c``): the highest ``max_c s_c``; the weighted mean
        ``sum_c w_c s_c``; or ``softmax``, ``T log sum_c w_c exp(s_c / T)``, which
        goes from the max (small ``T``) to the mean (large ``T``) and, unlike the
        max, lets a heavy or recent taste vector count more than a light one.
    temperature : float
        ``T`` of the ``softmax`` affinity.
    cold_cf : float
        CF part of items the CF model cannot score (nobody interacted with
        them), in z-score units of the pool's warm items: 0 treats a new item
        like an average candidate, a positive value favours new items.
    group_weight : float
        Bonus (in z-score units) for an item that shares a group with an item
        of the user's history, e.g. another colour of a product they bought;
        needs ``item_groups`` at fit and ``history`` when ranking. Such items
        also join the pool.
    index_factory : str
        FAISS factory string of the item index (``"Flat"`` is exact; e.g.
        ``"HNSW32"`` for large catalogues).

    Attributes
    ----------
    item_ids_ : ndarray of str
        Items that can be ranked (those with an embedding).
    item_vectors_ : ndarray of float32, shape (n_items, dim)
    index_ : StyleIndex
        Nearest-item index over ``item_vectors_``.
    groups_ : ndarray of int64 or None
        Group code of each item (-1: no group), when fitted with ``item_groups``.

    Examples
    --------
    >>> ranker = StyleRanker(taste_weight=0.3, affinity="max")  # doctest: +SKIP
    >>> ranker.fit(item_ids, item_vectors, encoder_id=encoder.encoder_id)  # doctest: +SKIP
    >>> ranking = ranker.rank(cf_scores, taste.transform(users), k=10)  # doctest: +SKIP
    """

    def __init__(
        self,
        taste_weight: float = 0.5,
        n_cf_candidates: int = 100,
        n_taste_candidates: int = 50,
        max_queries: int = 8,
        affinity: str = "max",
        temperature: float = 0.05,
        cold_cf: float = 0.0,
        group_weight: float = 0.0,
        index_factory: str = "Flat",
    ) -> None:
        self.taste_weight = taste_weight
        self.n_cf_candidates = n_cf_candidates
        self.n_taste_candidates = n_taste_candidates
        self.max_queries = max_queries
        self.affinity = affinity
        self.temperature = temperature
        self.cold_cf = cold_cf
        self.group_weight = group_weight
        self.index_factory = index_factory

    def get_params(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not
                k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"StyleRanker({args})"

    def _check_params(self) -> None:
        if not 0.0 <= self.taste_weight <= 1.0:
            raise ValueError(f"taste_weight must be in [0, 1], got {self.taste_weight}")
        if self.affinity not in AFFINITIES:
            raise ValueError(f"affinity must be one of {AFFINITIES}, got {self.affinity!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for name in ("n_cf_candidates", "n_taste_candidates", "max_queries"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.n_cf_candidates == 0 and self.n_taste_candidates == 0:
            raise ValueError("n_cf_candidates and n_taste_candidates cannot both be 0")

    # -- fitting --------------------------------------------------------------

    def fit(
        self,
        item_ids: Sequence[str],
        item_vectors: np.ndarray,
        encoder_id: str | None = None,
        item_groups: Sequence[str | None] | None = None,
    ) -> StyleRanker:
        """Index the rankable items.

        Parameters
        ----------
        item_ids : sequence of str
            One id per row of ``item_vectors``; CF score columns passed to
            :meth:`rank` follow this order.
        item_vectors : array-like of shape (n_items, dim)
            Item embeddings (rows are L2-normalised here).
        encoder_id : str, optional
            Encoder of the vectors, recorded in the index.
        item_groups : sequence of str or None, optional
            A group key per item (``None``: no group), e.g. the product code
            shared by the colour variants of one garment.

        Returns
        -------
        self
        """
        self._check_params()
        self.item_ids_ = np.asarray(item_ids, dtype=str)
        self.item_vectors_ = _check_vectors(item_vectors, self.item_ids_)
        self.index_ = StyleIndex(self.index_factory).fit(
            self.item_ids_, self.item_vectors_, encoder_id=encoder_id)
        self.groups_ = None
        if item_groups is not None:
            if len(item_groups) != len(self.item_ids_):
                raise ValueError(f"{len(item_groups)} item groups for {len(self.item_ids_)} items")
            keys = np.asarray(["" if g is None else str(g) for g in item_groups])
            _, codes = np.unique(keys, return_inverse=True)
            self.groups_ = np.where(keys == "", -1, codes).astype(np.int64)
        self._build_siblings()
        return self

    def _build_siblings(self) -> None:
        self._siblings = None
        if self.groups_ is not None:
            # item x item: 1 where two items share a group (groups are small families)
            has = self.groups_ >= 0
            members = sp.csr_matrix(
                (np.ones(int(has.sum()), np.float32), (np.flatnonzero(has), self.groups_[has])),
                shape=(len(self.groups_), int(self.groups_.max(initial=-1)) + 1))
            self._siblings = (members @ members.T).tocsr()

    def _check_fitted(self) -> None:
        if not hasattr(self, "index_"):
            raise RuntimeError("StyleRanker is not fitted yet: call fit() first")

    # -- ranking --------------------------------------------------------------

    def candidates(
        self,
        cf_scores: np.ndarray,
        profiles: TasteProfiles,
        exclude: sp.spmatrix | None = None,
        history: sp.spmatrix | None = None,
        chunk_size: int = 64,
    ) -> Candidates:
        """Each user's candidate pool with its normalised score parts (no blending yet).

        Parameters
        ----------
        cf_scores : ndarray of float, shape (n_users, n_items)
            CF scores in ``item_ids_`` order; NaN where the CF model cannot
            score an item (cold items).
        profiles : TasteProfiles
            One profile per row of ``cf_scores``.
        exclude : sparse matrix of shape (n_users, n_items), optional
            Non-zeros are never candidates (e.g. items already bought).
        history : sparse matrix of shape (n_users, n_items), optional
            The users' items (non-zeros), for the group part: items sharing a
            group with them join the pool and are flagged. Ignored without
            ``item_groups``.
        chunk_size : int
            Users processed together (bounds the memory of the pool embeddings).

        Returns
        -------
        Candidates
        """
        self._check_fitted()
        cf_scores = np.asarray(cf_scores, dtype=np.float32)
        n_items = len(self.item_ids_)
        if cf_scores.ndim != 2 or cf_scores.shape[1] != n_items:
            raise ValueError(f"cf_scores must have shape (n_users, {n_items}), "
                             f"got {cf_scores.shape}")
        if len(profiles) != len(cf_scores):
            raise ValueError(f"{len(profiles)} taste profiles for {len(cf_scores)} users")
        if profiles.vectors.shape[2] != self.item_vectors_.shape[1]:
            raise ValueError(f"taste vectors have dimension {profiles.vectors.shape[2]}, items "
                             f"{self.item_vectors_.shape[1]}: different embedding spaces")
        matrices = {"exclude": exclude, "history": history}
        for name, matrix in matrices.items():
            if matrix is not None:
                matrices[name] = sp.csr_matrix(matrix)
                if matrix.shape != cf_scores.shape:
                    raise ValueError(f"{name} has shape {matrix.shape}, "
                                     f"expected {cf_scores.shape}")
        if self._siblings is None:
            matrices["history"] = None
        parts = []
        for lo in range(0, len(cf_scores), chunk_size):
            hi = min(lo + chunk_size, len(cf_scores))
            parts.append(self._chunk(
                cf_scores[lo:hi], profiles.vectors[lo:hi], profiles.weights[lo:hi],
                *(None if m is None else m[lo:hi] for m in matrices.values())))
        fills = (-1, np.nan, np.nan, False, False)
        if not parts:
            return Candidates(*(np.full((0, 1), f) for f in fills))
        width = max(p[0].shape[1] for p in parts)
        return Candidates(*(np.concatenate([_widen(p[i], width, fills[i]) for p in parts])
                            for i in range(len(fills))))

    def rank(
        self,
        cf_scores: np.ndarray,
        profiles: TasteProfiles,
        k: int = 10,
        exclude: sp.spmatrix | None = None,
        history: sp.spmatrix | None = None,
        chunk_size: int = 64,
    ) -> Ranking:
        """Top ``k`` of each user's pool under this ranker's ``taste_weight``.

        Same parameters as :meth:`candidates`, plus the slate length ``k``.

        Returns
        -------
        Ranking
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        pool = self.candidates(cf_scores, profiles, exclude, history, chunk_size)
        return pool.top(k, self.taste_weight, self.group_weight)

    def _pool(
        self, cf: np.ndarray, vectors: np.ndarray, weights: np.ndarray,
        blocked: np.ndarray, related: np.ndarray | None,
    ) -> np.ndarray:
        """Candidate positions per user, ``[n, P]``, -1 for padding, no repeats."""
        n, n_items = cf.shape
        columns = []
        n_cf = min(self.n_cf_candidates, n_items)
        if n_cf:
            masked = np.where(np.isnan(cf) | blocked, -np.inf, cf)
            top = np.argpartition(-masked, n_cf - 1, axis=1)[:, :n_cf]
            top[~np.isfinite(np.take_along_axis(masked, top, axis=1))] = -1
            columns.append(top)
        n_taste = min(self.n_taste_candidates, n_items)
        n_queries = min(self.max_queries, weights.shape[1])
        if n_taste and n_queries:
            heaviest = np.argsort(-weights, axis=1, kind="stable")[:, :n_queries]
            used = np.take_along_axis(weights, heaviest, axis=1) > 0
            queries = vectors[np.arange(n)[:, None], heaviest][used]
            # the index holds the items in ``item_ids_`` order: its rows are our positions
            _, rows = self.index_.index_.search(np.ascontiguousarray(queries, np.float32),
                                                n_taste)
            found = np.full((n, n_queries, rows.shape[1]), -1, dtype=np.int64)
            found[used] = rows
            columns.append(found.reshape(n, -1))
        if related is not None:
            rows, cols = np.nonzero(related)
            if len(rows):
                # each row's related items, padded with -1
                counts = np.bincount(rows, minlength=n)
                at = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
                padded = np.full((n, int(counts.max())), -1, dtype=np.int64)
                padded[rows, at] = cols
                columns.append(padded)
        pool = np.concatenate(columns, axis=1)
        rows = np.arange(n)[:, None]
        pool[(pool >= 0) & blocked[rows, np.clip(pool, 0, None)]] = -1
        pool.sort(axis=1)
        pool[:, 1:][pool[:, 1:] == pool[:, :-1]] = -1
        return pool

    def _chunk(
        self, cf: np.ndarray, vectors: np.ndarray, weights: np.ndarray,
        exclude: sp.csr_matrix | None, history: sp.csr_matrix | None,
    ) -> tuple[np.ndarray, ...]:
        n = len(cf)
        blocked = np.zeros(cf.shape, dtype=bool)
        if exclude is not None:
            coo = exclude.tocoo()
            blocked[coo.row, coo.col] = coo.data != 0
        related = None
        if history is not None:
            related = (((history != 0) @ self._siblings).toarray() > 0) & ~blocked
        pool = self._pool(cf, vectors, weights, blocked, related)
        valid = pool >= 0
        safe = np.where(valid, pool, 0)
        # taste part: cosine of each candidate to each taste vector, [n, C, P]
        sims = np.einsum("ucd,upd->ucp", vectors, self.item_vectors_[safe], optimize=True)
        if self.affinity == "mean":
            taste = np.einsum("uc,ucp->up", weights, sims)
        elif self.affinity == "max":
            sims[np.broadcast_to((weights <= 0)[:, :, None], sims.shape)] = -np.inf
            taste = sims.max(axis=1)
        else:  # log-sum-exp: a max that lets heavier vectors count more
            t = float(self.temperature)
            with np.errstate(divide="ignore"):
                logits = sims.astype(np.float64) / t + np.log(weights)[:, :, None]
            top = logits.max(axis=1, keepdims=True)
            taste = t * (top[:, 0] + np.log(np.exp(logits - top).sum(axis=1)))
        cf_raw = cf[np.arange(n)[:, None], safe]
        cold = valid & np.isnan(cf_raw)
        cf_part = np.where(cold, np.float32(self.cold_cf), _zscore(cf_raw, valid & ~cold))
        group = np.zeros(pool.shape, bool) if related is None else (
            valid & related[np.arange(n)[:, None], safe])
        return (pool, cf_part.astype(np.float32), _zscore(taste, valid).astype(np.float32),
                cold, group)

    # -- persistence ----------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write ``ranker.json``, the item index (``index/``) and item groups into ``path``.

        The item vectors are not written again: :meth:`load` takes them back
        (the facade keeps them once, in its taste model).
        """
        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.index_.save(path / "index")
        if self.groups_ is not None:
            write_npz_atomic(path / "groups.npz", {"groups": self.groups_})
        write_bytes_atomic(path / "ranker.json", json.dumps(
            {"format": FORMAT_VERSION, "params": self.get_params()}, indent=2).encode())
        return path

    @classmethod
    def load(cls, path: str | Path, item_vectors: np.ndarray) -> StyleRanker:
        """Load a ranker written by :meth:`save`, with the item vectors it was fitted on."""
        path = Path(path)
        meta = read_meta(path, "ranker.json", "ranker", FORMAT_VERSION)
        ranker = cls(**meta["params"])
        ranker.index_ = StyleIndex.load(path / "index")
        ranker.item_ids_ = np.asarray(ranker.index_.ids_.tolist(), dtype=str)
        ranker.item_vectors_ = _check_vectors(item_vectors, ranker.item_ids_)
        ranker.groups_ = None
        if (path / "groups.npz").is_file():
            with np.load(path / "groups.npz", allow_pickle=False) as z:
                ranker.groups_ = z["groups"]
        ranker._build_siblings()
        return ranker


def _widen(values: np.ndarray, width: int, fill: float | bool) -> np.ndarray:
    out = np.full((len(values), width), fill, dtype=values.dtype)
    out[:, : values.shape[1]] = values
    return out


def _zscore(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-row z-score over the ``valid`` entries (0 where a row has no spread)."""
    counts = valid.sum(axis=1, keepdims=True)
    safe = np.where(valid, values, 0.0)
    mean = safe.sum(axis=1, keepdims=True) / np.maximum(counts, 1)
    var = (np.where(valid, values - mean, 0.0) ** 2).sum(axis=1, keepdims=True)
    std = np.sqrt(var / np.maximum(counts, 1))
    return np.where(valid, (safe - mean) / np.where(std > 1e-12, std, 1.0), np.nan)
