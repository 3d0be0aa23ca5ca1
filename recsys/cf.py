"""Collaborative-filtering models behind one batch-first interface.

Wraps implicit's ALS, BPR, LMF and item-kNN, and adds a popularity baseline.
Every model maps external string ids to its own dense indices, so callers never
see an index.

Examples
--------
>>> from recsys import load_interactions, create_model  # doctest: +SKIP
>>> data = load_interactions("data/transactions.csv")  # doctest: +SKIP
>>> model = create_model("als", factors=64, random_state=0).fit(data)  # doctest: +SKIP
>>> items, scores = model.recommend(["some-customer-id"], k=10)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
from implicit import nearest_neighbours
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from implicit.cpu.lmf import LogisticMatrixFactorization
from implicit.utils import ParameterWarning
from threadpoolctl import threadpool_limits

from recsys.interactions import Interactions, _lookup

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODELS: dict[str, type[Recommender]] = {}


def register_model(name: str) -> Callable[[type[Recommender]], type[Recommender]]:
    """Class decorator adding a model to the registry used by :func:`create_model`."""

    def add(cls: type[Recommender]) -> type[Recommender]:
        cls.name = name
        MODELS[name] = cls
        return cls

    return add


def create_model(name: str, **params: Any) -> Recommender:
    """Instantiate a registered CF model by name (``popularity``, ``als``, ``bpr``,
    ``lmf``, ``itemknn``) with its hyperparameters."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {sorted(MODELS)}") from None
    return cls(**params)


class Recommender(ABC):
    """Base class: id mapping, validation, batch recommendation, save/load.

    Subclasses implement ``_fit(user_items)`` and ``_scores(rows, user_items)``
    and may override ``_recommend`` with a faster top-k.
    """

    name: ClassVar[str] = "base"
    _array_names: ClassVar[tuple[str, ...]] = ()

    def get_params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not
                k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- fitting --------------------------------------------------------------

    def fit(self, interactions: Interactions) -> Recommender:
        """Learn from an interaction log; returns ``self``."""
        if not isinstance(interactions, Interactions):
            raise TypeError(f"fit expects Interactions, got {type(interactions).__name__}")
        if interactions.matrix.nnz == 0:
            raise ValueError("cannot fit on an interaction log with no positive weights")
        self.user_ids_ = np.asarray(interactions.user_ids, dtype=str)
        self.item_ids_ = np.asarray(interactions.item_ids, dtype=str)
        self.user_items_ = interactions.matrix.astype(np.float32).tocsr()
        with threadpool_limits(limits=1, user_api="blas"):
            self._fit(self.user_items_)
        log.info("fitted %r on %s", self, interactions)
        return self

    @abstractmethod
    def _fit(self, user_items: sp.csr_matrix) -> None: ...

    # -- scoring --------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "item_ids_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet: call fit() first")

    def _rows(
        self, user_ids: Sequence[str], history: Interactions | None
    ) -> tuple[np.ndarray, sp.csr_matrix]:
        """Fit-time indices (-1 for new users) and the users' item rows in model space."""
        self._check_fitted()
        if isinstance(user_ids, str):
            raise TypeError("user_ids must be a sequence of ids (batch-first), not a string")
        user_ids = [str(u) for u in user_ids]
        known = _lookup(self._user_pos, user_ids, "user", "ignore")
        if history is None:
            unknown = [u for u, i in zip(user_ids, known, strict=True) if i < 0]
            if unknown:
                raise KeyError(
                    f"unknown user id(s) {unknown[:5]} ({len(unknown)} in all): not seen at fit "
                    "time; pass history= with their interactions to fold them in"
                )
            return known, self.user_items_[known]
        return known, self._history_rows(user_ids, history)

    def _history_rows(self, user_ids: list[str], history: Interactions) -> sp.csr_matrix:
        rows = history.user_index(user_ids, missing="ignore")
        absent = [u for u, r in zip(user_ids, rows, strict=True) if r < 0]
        if absent:
            raise KeyError(f"user id(s) {absent[:5]} have no events in history")
        # translate history's item indices into this model's; unknown items drop out
        to_model = _lookup(self._item_pos, history.item_ids, "item", "ignore")
        sub = history.matrix[rows].tocoo()
        cols = to_model[sub.col]
        keep = cols >= 0
        return sp.csr_matrix(
            (sub.data[keep], (sub.row[keep], cols[keep])),
            shape=(len(user_ids), len(self.item_ids_)),
            dtype=np.float32,
        )

    @property
    def _user_pos(self) -> dict[str, int]:
        if getattr(self, "_user_pos_cache", None) is None:
            self._user_pos_cache = {u: i for i, u in enumerate(self.user_ids_)}
        return self._user_pos_cache

    @property
    def _item_pos(self) -> dict[str, int]:
        if getattr(self, "_item_pos_cache", None) is None:
            self._item_pos_cache = {t: i for i, t in enumerate(self.item_ids_)}
        return self._item_pos_cache

    def score(self, user_ids: Sequence[str], history: Interactions | None = None) -> np.ndarray:
        """Raw scores of every item for each user: float32 ``[n_users, n_items]``.

        Columns follow ``item_ids_``. Users unseen at fit time need ``history``
        (their interactions); how they are folded in depends on the model.
        """
        known, rows = self._rows(user_ids, history)
        return self._scores(known, rows).astype(np.float32, copy=False)

    @abstractmethod
    def _scores(self, known: np.ndarray, rows: sp.csr_matrix) -> np.ndarray: ...

    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        filter_seen: bool = True,
        candidates: Sequence[str] | None = None,
        history: Interactions | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for each user.

        Parameters
        ----------
        user_ids : sequence of str
            External user ids (a batch).
        k : int
            Slate length.
        filter_seen : bool
            Drop items the user already interacted with.
        candidates : sequence of str, optional
            Rank only these item ids (unknown ids raise).
        history : Interactions, optional
            Interactions to use instead of the fit-time ones: for users unseen at
            fit time (folded in), and for what ``filter_seen`` removes.

        Returns
        -------
        item_ids : ndarray of str, shape (n_users, k)
        scores : ndarray of float32, shape (n_users, k)
            Best first. Where fewer than ``k`` items remain, the tail is padded
            with ``""`` and ``-inf``.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        known, rows = self._rows(user_ids, history)
        cand = None
        if candidates is not None:
            cand = np.unique(_lookup(self._item_pos, candidates, "item", "raise"))
        ids, scores = self._recommend(known, rows, k, filter_seen, cand)
        return self._to_external(ids, scores, k)

    def _recommend(
        self, known: np.ndarray, rows: sp.csr_matrix, k: int, filter_seen: bool,
        candidates: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        scores = self._scores(known, rows).astype(np.float32)
        return top_k(scores, k, rows if filter_seen else None, candidates)

    def _to_external(self, ids: np.ndarray, scores: np.ndarray, k: int):
        ids = np.asarray(ids).reshape(len(ids), -1)
        scores = np.asarray(scores, dtype=np.float32).reshape(len(ids), -1)
        valid = (ids >= 0) & np.isfinite(scores) & (scores > -1e30)
        out_ids = np.full((len(ids), k), "", dtype=self.item_ids_.dtype)
        out_scores = np.full((len(ids), k), -np.inf, dtype=np.float32)
        width = min(k, ids.shape[1])
        out_ids[:, :width] = np.where(valid, self.item_ids_[np.clip(ids, 0, None)], "")[:, :width]
        out_scores[:, :width] = np.where(valid, scores, -np.inf)[:, :width]
        return out_ids, out_scores

    # -- persistence ----------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the fitted model to a directory: ``model.json`` + ``arrays.npz``.

        No pickle: arrays are plain numeric/unicode numpy arrays, the rest JSON.
        The directory is replaced atomically.
        """
        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        ui = self.user_items_
        arrays = {
            "user_ids": self.user_ids_, "item_ids": self.item_ids_,
            "ui_data": ui.data, "ui_indices": ui.indices, "ui_indptr": ui.indptr,
            **{name: np.asarray(getattr(self, name)) for name in self._array_names},
        }
        np.savez(tmp / "arrays.npz", **arrays)
        meta = {"format": FORMAT_VERSION, "model": self.name, "params": self.get_params()}
        (tmp / "model.json").write_text(json.dumps(meta, indent=2))
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            os.replace(path, old)
            os.replace(tmp, path)
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
        else:
            os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Recommender:
        """Load a model written by :meth:`save` (any registered model class)."""
        path = Path(path)
        meta_file = path / "model.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"no saved model at {path} (model.json missing)")
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported model format {meta.get('format')}")
        model = create_model(meta["model"], **meta["params"])
        if cls is not Recommender and not isinstance(model, cls):
            raise TypeError(f"{path} holds a {meta['model']!r} model, not {cls.__name__}")
        with np.load(path / "arrays.npz", allow_pickle=False) as z:
            model.user_ids_ = z["user_ids"]
            model.item_ids_ = z["item_ids"]
            model.user_items_ = sp.csr_matrix(
                (z["ui_data"], z["ui_indices"], z["ui_indptr"]),
                shape=(len(model.user_ids_), len(model.item_ids_)),
            )
            model._restore({name: z[name] for name in model._array_names})
        return model

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        for name, value in arrays.items():
            setattr(self, name, value)


def top_k(
    scores: np.ndarray, k: int, seen: sp.csr_matrix | None = None,
    candidates: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` best scores per row, best first.

    ``seen`` items (non-zeros of a CSR with one row per score row) and items
    outside ``candidates`` get ``-inf`` and come back as index -1.
    """
    scores = np.array(scores, dtype=np.float32, copy=True)
    if candidates is not None:
        mask = np.ones(scores.shape[1], dtype=bool)
        mask[candidates] = False
        scores[:, mask] = -np.inf
    if seen is not None:
        coo = seen.tocoo()
        scores[coo.row, coo.col] = -np.inf
    k_eff = min(k, scores.shape[1])
    part = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    ids[~np.isfinite(vals)] = -1
    return ids, vals


@register_model("popularity")
class PopularityRecommender(Recommender):
    """Most popular items first: score = number of distinct users per item.

    New users need no fold-in: everybody gets the same ranking (minus what they
    have seen).
    """

    _array_names = ("popularity_",)

    def _fit(self, user_items: sp.csr_matrix) -> None:
        self.popularity_ = np.bincount(user_items.indices, minlength=user_items.shape[1]).astype(
            np.float32
        )

    def _scores(self, known: np.ndarray, rows: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(self.popularity_, (rows.shape[0], len(self.popularity_)))


class _ImplicitModel(Recommender):
    """Shared plumbing for implicit's models (CPU)."""

    def _implicit(self) -> Any:  # the bare implicit model
        raise NotImplementedError

    def _build(self) -> Any:
        # implicit checks the BLAS thread pool when a model is constructed
        with threadpool_limits(limits=1, user_api="blas"):
            return self._implicit()

    def _fit(self, user_items: sp.csr_matrix) -> None:
        model = self._build()
        model.fit(user_items, show_progress=False)
        self.model_ = model


class _FactorModel(_ImplicitModel):
    _array_names = ("user_factors_", "item_factors_")

    def _fit(self, user_items: sp.csr_matrix) -> None:
        super()._fit(user_items)
        self.user_factors_ = np.asarray(self.model_.user_factors, dtype=np.float32)
        self.item_factors_ = np.asarray(self.model_.item_factors, dtype=np.float32)

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        super()._restore(arrays)
        self.model_ = self._build()
        self.model_.user_factors = self.user_factors_
        self.model_.item_factors = self.item_factors_

    def _fold_in(self, rows: sp.csr_matrix) -> np.ndarray:
        """Factors for users unseen at fit time: weighted mean of their items' factors."""
        weights = sp.diags(1.0 / np.maximum(rows.sum(axis=1).A1, 1e-12)) @ rows
        return np.asarray(weights @ self.item_factors_, dtype=np.float32)

    def _user_vectors(self, known: np.ndarray, rows: sp.csr_matrix) -> np.ndarray:
        vectors = np.empty((len(known), self.item_factors_.shape[1]), dtype=np.float32)
        old = known >= 0
        vectors[old] = self.user_factors_[known[old]]
        if (~old).any():
            vectors[~old] = self._fold_in(rows[np.flatnonzero(~old)])
        return vectors

    def _scores(self, known: np.ndarray, rows: sp.csr_matrix) -> np.ndarray:
        return self._user_vectors(known, rows) @ self.item_factors_.T

    def _recommend(self, known, rows, k, filter_seen, candidates):
        if (known < 0).any():
            return super()._recommend(known, rows, k, filter_seen, candidates)
        # all users known: implicit's multithreaded top-k is the fast path
        return self.model_.recommend(
            known, rows, N=k, filter_already_liked_items=filter_seen, items=candidates
        )


@register_model("als")
class ALSRecommender(_FactorModel):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008) via ``implicit``.

    Users unseen at fit time are folded in exactly, by solving their least-squares
    problem against the fixed item factors (implicit's ``recalculate_user``).

    Parameters
    ----------
    factors, regularization, alpha, iterations, random_state
        As in :class:`implicit.als.AlternatingLeastSquares`; ``alpha`` scales
        the confidence weights.
    """

    def __init__(self, factors: int = 64, regularization: float = 0.01, alpha: float = 1.0,
                 iterations: int = 15, random_state: int | None = 0,
                 num_threads: int = 0) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.random_state = random_state
        self.num_threads = num_threads

    def _implicit(self):
        return AlternatingLeastSquares(
            factors=self.factors, regularization=self.regularization, alpha=self.alpha,
            iterations=self.iterations, random_state=self.random_state,
            num_threads=self.num_threads,
        )

    def _fold_in(self, rows: sp.csr_matrix) -> np.ndarray:
        with threadpool_limits(limits=1, user_api="blas"):
            return np.asarray(self.model_.recalculate_user(np.arange(rows.shape[0]), rows),
                              dtype=np.float32)


@register_model("bpr")
class BPRRecommender(_FactorModel):
    """Bayesian Personalised Ranking (Rendle et al. 2009) via ``implicit``.

    implicit keeps an item-bias column in the factors. Users unseen at fit time
    get the confidence-weighted mean of their items' factors (item-to-item
    behaviour), since BPR has no closed-form fold-in.
    """

    def __init__(self, factors: int = 64, learning_rate: float = 0.01,
                 regularization: float = 0.01, iterations: int = 100,
                 random_state: int | None = 0, num_threads: int = 0) -> None:
        self.factors = factors
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.iterations = iterations
        self.random_state = random_state
        self.num_threads = num_threads

    def _implicit(self):
        return BayesianPersonalizedRanking(
            factors=self.factors, learning_rate=self.learning_rate,
            regularization=self.regularization, iterations=self.iterations,
            random_state=self.random_state, num_threads=self.num_threads,
        )

    def _fold_in(self, rows: sp.csr_matrix) -> np.ndarray:
        vectors = super()._fold_in(rows)
        vectors[:, -1] = 1.0  # the user side of implicit's item-bias column is a constant 1
        return vectors


@register_model("lmf")
class LMFRecommender(_FactorModel):
    """Logistic matrix factorisation (Johnson 2014) via ``implicit``.

    Fold-in for new users: confidence-weighted mean of their items' factors.
    """

    def __init__(self, factors: int = 30, learning_rate: float = 1.0,
                 regularization: float = 0.6, iterations: int = 30, neg_prop: int = 30,
                 random_state: int | None = 0, num_threads: int = 0) -> None:
        self.factors = factors
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.iterations = iterations
        self.neg_prop = neg_prop
        self.random_state = random_state
        self.num_threads = num_threads

    def _implicit(self):
        return LogisticMatrixFactorization(
            factors=self.factors, learning_rate=self.learning_rate,
            regularization=self.regularization, iterations=self.iterations,
            neg_prop=self.neg_prop, random_state=self.random_state,
            num_threads=self.num_threads,
        )


@register_model("itemknn")
class ItemKNNRecommender(_ImplicitModel):
    """Item-based k-nearest neighbours via ``implicit`` (cosine, BM25 or TF-IDF).

    score(u, i) = sum over the user's items j of weight(u, j) * sim(j, i), keeping
    each item's ``neighbours`` most similar items. New users need no fold-in:
    their history rows are scored directly.
    """

    _array_names = ("sim_data_", "sim_indices_", "sim_indptr_")

    def __init__(self, similarity: str = "cosine", neighbours: int = 100, bm25_k1: float = 1.2,
                 bm25_b: float = 0.75, num_threads: int = 0) -> None:
        self.similarity = similarity
        self.neighbours = neighbours
        self.bm25_k1 = bm25_k1
        self.bm25_b = bm25_b
        self.num_threads = num_threads

    def _implicit(self):
        knn, threads = nearest_neighbours, self.num_threads
        if self.similarity == "cosine":
            return knn.CosineRecommender(K=self.neighbours, num_threads=threads)
        if self.similarity == "bm25":
            return knn.BM25Recommender(K=self.neighbours, K1=self.bm25_k1, B=self.bm25_b,
                                       num_threads=threads)
        if self.similarity == "tfidf":
            return knn.TFIDFRecommender(K=self.neighbours, num_threads=threads)
        raise ValueError(f"similarity must be cosine, bm25 or tfidf, got {self.similarity!r}")

    def _fit(self, user_items: sp.csr_matrix) -> None:
        with warnings.catch_warnings():
            # implicit converts its own COO intermediate to CSR and warns about it
            warnings.simplefilter("ignore", ParameterWarning)
            super()._fit(user_items)
        sim = self.model_.similarity.tocsr().astype(np.float32)
        self.sim_data_, self.sim_indices_, self.sim_indptr_ = sim.data, sim.indices, sim.indptr

    @property
    def similarity_(self) -> sp.csr_matrix:
        """Item × item similarity (each row keeps its ``neighbours`` best)."""
        n = len(self.item_ids_)
        return sp.csr_matrix((self.sim_data_, self.sim_indices_, self.sim_indptr_), shape=(n, n))

    def _scores(self, known: np.ndarray, rows: sp.csr_matrix) -> np.ndarray:
        # sparse × sparse, then dense: one matrix product for the whole batch
        return (rows @ self.similarity_).toarray().astype(np.float32, copy=False)

    def _recommend(self, known, rows, k, filter_seen, candidates):
        return Recommender._recommend(self, known, rows, k, filter_seen, candidates)
