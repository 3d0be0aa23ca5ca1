"""Collaborative-filtering models behind one batch-first interface.

Wraps implicit's ALS, BPR, LMF and item-kNN, and adds a popularity baseline and
a numpy BPR with uniformly sampled negatives (``bpr-uniform``).
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

import inspect
import json
import logging
import warnings
import zipfile
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
from implicit.recommender_base import ModelFitError
from implicit.utils import ParameterWarning
from threadpoolctl import ThreadpoolController, threadpool_limits

from ground.files import (
    atomic_directory,
    pack_strings,
    read_meta,
    saved_directory,
    unpack_strings,
)
from ground.registry import Registry
from recsys.interactions import MAX_ID_LENGTH, Interactions, _IdPositions, _lookup

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: ids packed as UTF-8 (1: fixed-width unicode arrays)
CF_MODELS: Registry[Recommender] = Registry("model", "stylerec.models")
# finding the loaded thread pools reads /proc (~10 ms): once, not on every fold-in request
_THREADPOOLS = ThreadpoolController()


def register_model(name: str) -> Callable[[type[Recommender]], type[Recommender]]:
    """Class decorator adding a model to :data:`CF_MODELS`, the registry behind
    :func:`create_model`; third-party packages use the entry-point group
    ``stylerec.models`` instead."""
    return CF_MODELS.register(name)


def create_model(name: str, **params: Any) -> Recommender:
    """Instantiate a registered CF model by name (``popularity``, ``als``, ``bpr``,
    ``bpr-uniform``, ``lmf``, ``itemknn``, or an installed plugin's) with its
    hyperparameters, checked.

    Raises
    ------
    ground.registry.UnknownNameError
        When no model has that name (the message lists the available ones).
    ValueError
        On a parameter the model does not take, or a value of the wrong type or range.
    """
    cls = CF_MODELS.get(name)
    accepted = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(params) - set(accepted) - {"self"})
    if unknown:
        valid = [p for p in accepted if p != "self"]
        raise ValueError(f"unknown parameter(s) {unknown} for model {name!r}; valid: {valid}")
    model = cls(**params)
    model._check_params()
    return model


class Recommender(_IdPositions, ABC):
    """Base class: id mapping, validation, batch recommendation, save/load.

    Subclasses implement ``_fit(user_items)`` and ``_scores(rows, user_items)``
    and may override ``_recommend`` with a faster top-k.
    """

    name: ClassVar[str] = "base"
    _array_names: ClassVar[tuple[str, ...]] = ()
    _folds_in: ClassVar[bool] = True  # scores of a new user come from their history

    @property
    def params(self) -> dict[str, Any]:
        """Constructor parameters (JSON-serialisable): what :func:`create_model` needs."""
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not
                k.startswith("_")}

    def identity(self) -> dict[str, Any]:
        """``{"name", "params"}``: the model's registry name and its parameters."""
        return {"name": self.name, "params": self.params}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    # parameters that must be >= 1 (an untrained or empty model otherwise)
    _at_least_one: ClassVar[tuple[str, ...]] = ("factors", "iterations", "neighbours",
                                                "batch_size", "neg_prop")

    def _check_params(self) -> None:
        """Raise ValueError naming a parameter whose value has the wrong type or range.

        Types follow the defaults: an int default takes an integer, a float default
        a finite number, a string default a string, ``None`` (a seed) an integer.
        """
        for name, param in inspect.signature(type(self).__init__).parameters.items():
            value, default = getattr(self, name, None), param.default
            if name == "self" or default is inspect.Parameter.empty or (
                    name == "random_state" and value is None):
                continue
            integer = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, int) or default is None:
                ok = integer or (default is None and value is None)
            elif isinstance(default, float):
                ok = (integer or isinstance(value, float)) and bool(np.isfinite(value))
            else:
                ok = isinstance(value, type(default))
            if not ok:
                kind = "an integer" if isinstance(default, int) or default is None else (
                    "a finite number" if isinstance(default, float) else
                    f"a {type(default).__name__}")
                raise ValueError(f"{self.name} parameter {name} must be {kind}, got {value!r}")
            if name in self._at_least_one and value < 1:
                raise ValueError(f"{self.name} parameter {name} must be >= 1, got {value!r}")
            if isinstance(default, (int, float)) and value < 0:
                raise ValueError(f"{self.name} parameter {name} must be >= 0, got {value!r}")

    # -- fitting --------------------------------------------------------------

    def fit(self, interactions: Interactions) -> Recommender:
        """Learn from an interaction log; returns ``self``."""
        if not isinstance(interactions, Interactions):
            raise TypeError(f"fit expects Interactions, got {type(interactions).__name__}")
        if interactions.matrix.nnz == 0:
            raise ValueError("cannot fit on an interaction log with no positive weights")
        self._check_params()
        self.user_ids_ = np.asarray(interactions.user_ids, dtype=str)
        self.item_ids_ = np.asarray(interactions.item_ids, dtype=str)
        self.user_items_ = interactions.matrix.astype(np.float32).tocsr()
        with threadpool_limits(limits=1, user_api="blas"):
            self._fit(self.user_items_)
        self._check_finite("fitting")
        log.info("fitted %r on %s", self, interactions)
        return self

    def _check_finite(self, when: str) -> None:
        for name in self._array_names:
            values = np.asarray(getattr(self, name))
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                raise ValueError(_non_finite(self.name, name, when))

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
        sub = history.matrix[rows].tocoo()
        present, at = np.unique(sub.col, return_inverse=True)  # history may hold a catalog
        cols = _lookup(self._item_pos, history.item_ids[present], "item", "ignore")[at]
        keep = cols >= 0
        rows = sp.csr_matrix(
            (sub.data[keep], (sub.row[keep], cols[keep])),
            shape=(len(user_ids), len(self.item_ids_)),
            dtype=np.float32,
        )
        empty = (np.diff(rows.indptr) == 0) & (_lookup(self._user_pos, user_ids, "user",
                                                        "ignore") < 0)
        if self._folds_in and empty.any():
            names = [user_ids[i] for i in np.flatnonzero(empty)[:5]]
            raise ValueError(
                f"user id(s) {names} ({int(empty.sum())} in all): none of their history items "
                "was seen at fit time, so there is nothing to fold in; use the popularity "
                "model for them (StyleRecommender falls back to it and sets Slate.fallback)")
        return rows

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
        ids, scores = self._recommend(known, rows, min(k, len(self.item_ids_)), filter_seen,
                                      cand)
        return self._to_external(ids, scores, k, rows if filter_seen else None, cand)

    def _recommend(
        self, known: np.ndarray, rows: sp.csr_matrix, k: int, filter_seen: bool,
        candidates: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        scores = self._scores(known, rows).astype(np.float32)
        return top_k(scores, k, rows if filter_seen else None, candidates)

    def _to_external(self, ids: np.ndarray, scores: np.ndarray, k: int,
                     seen: sp.csr_matrix | None, candidates: np.ndarray | None):
        """External ids, best first; padding, seen, duplicate and non-candidate items
        (implicit pads a short list with item 0) move to the end as ``""`` / ``-inf``."""
        ids = np.asarray(ids, dtype=np.int64).reshape(len(ids), -1)
        scores = np.asarray(scores, dtype=np.float32).reshape(len(ids), -1)
        valid = (ids >= 0) & np.isfinite(scores) & (scores > -1e30)
        n_items = len(self.item_ids_)
        keys = np.arange(len(ids))[:, None] * n_items + ids
        if seen is not None:
            coo = seen.tocoo()
            valid &= ~np.isin(keys, coo.row.astype(np.int64) * n_items + coo.col)
        if candidates is not None:
            valid &= np.isin(ids, candidates)
        # a repeated item keeps its first (best) place: a stable sort puts it first
        by_id = np.argsort(ids, axis=1, kind="stable")
        sorted_ids = np.take_along_axis(ids, by_id, axis=1)
        repeat = np.zeros(ids.shape, dtype=bool)
        repeat[:, 1:] = sorted_ids[:, 1:] == sorted_ids[:, :-1]
        np.put_along_axis(valid, by_id, np.take_along_axis(valid, by_id, axis=1) & ~repeat,
                          axis=1)
        order = np.argsort(~valid, axis=1, kind="stable")
        ids, scores, valid = (np.take_along_axis(a, order, axis=1) for a in (ids, scores, valid))
        out_ids = np.full((len(ids), k), "", dtype=self.item_ids_.dtype)
        out_scores = np.full((len(ids), k), -np.inf, dtype=np.float32)
        width = min(k, ids.shape[1])
        out_ids[:, :width] = np.where(valid, self.item_ids_[np.clip(ids, 0, None)], "")[:, :width]
        out_scores[:, :width] = np.where(valid, scores, -np.inf)[:, :width]
        return out_ids, out_scores

    # -- persistence ----------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the fitted model to a directory: ``model.json`` + ``arrays.npz``.

        No pickle: arrays are plain numeric numpy arrays (ids packed as UTF-8), the
        rest JSON. The directory is replaced atomically, and only if it is new, empty
        or a saved model (see :func:`ground.files.atomic_directory`).
        """
        self._check_fitted()
        ui = self.user_items_
        arrays = {
            **_pack_ids("user_ids", self.user_ids_), **_pack_ids("item_ids", self.item_ids_),
            "ui_data": ui.data, "ui_indices": ui.indices, "ui_indptr": ui.indptr,
            **{name: np.asarray(getattr(self, name)) for name in self._array_names},
        }
        meta = {"format": FORMAT_VERSION, "model": self.name, "params": self.params}
        with atomic_directory(path, "model.json") as tmp:
            np.savez(tmp / "arrays.npz", **arrays)
            (tmp / "model.json").write_text(json.dumps(meta, indent=2))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Recommender:
        """Load a model written by :meth:`save` (any registered model class)."""
        path = saved_directory(path, "model.json")
        meta = read_meta(path, "model.json", "model", (1, FORMAT_VERSION))
        model = create_model(meta["model"], **meta["params"])
        if cls is not Recommender and not isinstance(model, cls):
            raise TypeError(f"{path} holds a {meta['model']!r} model, not {cls.__name__}")
        try:
            with np.load(path / "arrays.npz", allow_pickle=False) as z:
                model.user_ids_ = _unpack_ids("user_ids", z)
                model.item_ids_ = _unpack_ids("item_ids", z)
                model.user_items_ = sp.csr_matrix(
                    (z["ui_data"], z["ui_indices"], z["ui_indptr"]),
                    shape=(len(model.user_ids_), len(model.item_ids_)),
                )
                model._restore({name: z[name] for name in model._array_names})
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path / 'arrays.npz'} is damaged or was not written by "
                             f"stylerec ({type(err).__name__}: {err}); fit the model again"
                             ) from err
        model._check_finite("loading")
        return model

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        for name, value in arrays.items():
            setattr(self, name, value)


def _non_finite(model: str, what: str, when: str) -> str:
    return (f"{model}: {what} became NaN or infinite when {when}; the confidence weights are "
            "probably too large: use weighting='log1p' or 'bm25' (--weighting), a smaller "
            "alpha or learning_rate, or more regularization")


def _pack_ids(name: str, ids: np.ndarray) -> dict[str, np.ndarray]:
    too_long = [i for i in ids if len(i) > MAX_ID_LENGTH]
    if too_long:
        raise ValueError(f"{name[:-1].replace('_', ' ')} {too_long[0][:40]!r}... is "
                         f"{len(too_long[0])} characters long; ids may have at most "
                         f"{MAX_ID_LENGTH}")
    return {f"{name}_{key}": value for key, value in pack_strings(ids).items()}


def _unpack_ids(name: str, arrays: Any) -> np.ndarray:
    if f"{name}_utf8" in arrays:
        return unpack_strings(arrays[f"{name}_utf8"], arrays[f"{name}_ends"])
    return arrays[name]  # format 1


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
    _folds_in = False

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
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # non-finite: checked below
                model.fit(user_items, show_progress=False)
        except ModelFitError as err:  # implicit's check for NaN factors
            raise ValueError(_non_finite(self.name, "the factors", "fitting")) from err
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
        with _THREADPOOLS.limit(limits=1, user_api="blas"):
            return np.asarray(self.model_.recalculate_user(np.arange(rows.shape[0]), rows),
                              dtype=np.float32)


@register_model("bpr")
class BPRRecommender(_FactorModel):
    """Bayesian Personalised Ranking (Rendle et al. 2009) via ``implicit``.

    implicit samples negative items in proportion to their popularity, not
    uniformly as in the paper; ``"bpr-uniform"`` (:class:`UniformBPRRecommender`)
    is the paper's sampler. implicit keeps an item-bias column in the factors.
    Users unseen at fit time get the confidence-weighted mean of their items'
    factors (item-to-item behaviour), since BPR has no closed-form fold-in.
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


@register_model("bpr-uniform")
class UniformBPRRecommender(Recommender):
    """Bayesian Personalised Ranking with uniformly sampled negatives (numpy).

    BPR as in Rendle et al. (2009) and as Cornac and LightFM implement it:
    for each training pair (user u, item i the user interacted with), draw an
    item j uniformly from the items u has *not* interacted with and take an SGD
    step on ``ln σ(x_ui − x_uj) − λ‖θ‖²``, with ``x_ui = p_u · q_i + b_i``
    (user factors ``p``, item factors ``q``, item bias ``b``).

    How it differs from ``"bpr"`` (implicit's BPR): implicit draws each
    negative as the item of a random non-zero of the training matrix, i.e. in
    proportion to popularity. Then every item is pushed down about as often as
    it is pushed up, the item bias learns little of popularity, and the model
    ranks popular items lower than uniform-negative BPR does. Where the
    evaluation rewards popular items (every held-out rating counts, as on
    MovieLens-100k) the uniform sampler scores markedly higher (MAP@10 +15%
    there, see docs/evaluation.md); popularity-proportional negatives are the
    "harder" ones and lean the ranking away from best-sellers, which may suit
    a catalogue where that is wanted. This model also differs in being pure
    numpy (single-threaded, no ``num_threads``) and in its fold-in (below).

    Training: each epoch visits every positive once in a random order, in
    mini-batches of ``batch_size`` pairs whose gradients are applied at once
    (summed per user / item, as ``batch_size`` concurrent per-sample SGD steps;
    ``learning_rate`` means what it means for per-sample SGD). A negative that
    turns out to be a positive is redrawn (up to 8 times, then the pair is
    skipped). Confidence weights are ignored: every non-zero is a positive.
    Seeded by ``random_state``, deterministic for a given seed. Per-epoch loss
    is logged at DEBUG level.

    Users unseen at fit time are folded in by the same SGD on their own
    factors with the item factors and biases frozen (``iterations`` epochs
    over their history, from the same seed), which, users being independent
    then, is exactly per-sample SGD. It takes ``iterations`` × (longest
    history) small steps: 4 s for 50 MovieLens users with up to 636 ratings
    at 30 epochs on two busy cores, and their folded-in top-10 shared 80%
    with the top-10 from their fit-time factors.

    Parameters
    ----------
    factors : int
        Latent dimensions (the item bias comes on top).
    learning_rate : float
        SGD step size.
    regularization : float
        L2 weight λ on the factors and biases touched by each step.
    iterations : int
        Epochs (passes over all positives).
    batch_size : int
        Pairs per vectorised SGD step; smaller is closer to sequential SGD and slower.
    random_state : int or None
        Seed of the initialisation and the sampling.
    """

    _array_names = ("user_factors_", "item_factors_", "item_bias_")
    _max_redraws = 8

    def __init__(self, factors: int = 64, learning_rate: float = 0.05,
                 regularization: float = 0.01, iterations: int = 30, batch_size: int = 1000,
                 random_state: int | None = 0) -> None:
        for name, value, low in (("factors", factors, 1), ("iterations", iterations, 1),
                                 ("batch_size", batch_size, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not np.isfinite(learning_rate) or learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
        if not np.isfinite(regularization) or regularization < 0:
            raise ValueError(f"regularization must be >= 0, got {regularization!r}")
        self.factors = int(factors)
        self.learning_rate = float(learning_rate)
        self.regularization = float(regularization)
        self.iterations = int(iterations)
        self.batch_size = int(batch_size)
        self.random_state = random_state

    def _init_factors(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return (rng.standard_normal((n, self.factors), dtype=np.float32)
                * np.float32(0.1 / np.sqrt(self.factors)))

    @staticmethod
    def _positives(user_items: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Users and items of the positive pairs, and their sorted ``u * n_items + i`` keys."""
        ui = user_items.tocsr().copy()
        ui.data = (ui.data > 0).astype(np.float32)
        ui.eliminate_zeros()
        ui.sort_indices()
        users = np.repeat(np.arange(ui.shape[0], dtype=np.int64), np.diff(ui.indptr))
        items = ui.indices.astype(np.int64)
        return users, items, users * ui.shape[1] + items  # CSR order: keys already sorted

    def _negatives(self, rng: np.random.Generator, users: np.ndarray, keys: np.ndarray,
                   n_items: int) -> tuple[np.ndarray, np.ndarray]:
        """One uniform non-positive item per user (and a mask of pairs that found one)."""
        neg = rng.integers(0, n_items, size=len(users))
        bad = np.ones(len(users), dtype=bool)
        for _ in range(self._max_redraws + 1):
            idx = np.flatnonzero(bad)
            if not len(idx):
                break
            if len(idx) < len(users):
                neg[idx] = rng.integers(0, n_items, size=len(idx))
            key = users[idx] * n_items + neg[idx]
            pos = np.minimum(np.searchsorted(keys, key), len(keys) - 1)
            bad[idx] = keys[pos] == key
        return neg, ~bad

    def _step(self, user_factors: np.ndarray, users: np.ndarray, pos: np.ndarray,
              neg: np.ndarray, update_items: bool = True) -> np.ndarray:
        """One vectorised SGD step on the pairs (in place); returns their ``x_ui − x_uj``.

        With ``update_items=False`` (fold-in) the ``users`` must be distinct.
        """
        lr = np.float32(self.learning_rate)
        decay = np.float32(self.learning_rate * self.regularization)
        items = np.concatenate((pos, neg))
        pu, q, bias = user_factors[users], self.item_factors_[items], self.item_bias_[items]
        diff = q[:len(pos)] - q[len(pos):]
        x = np.einsum("ij,ij->i", pu, diff) + (bias[:len(pos)] - bias[len(pos):])
        # lr · σ(−x), the step along the gradient of ln σ(x)
        step = lr / (1.0 + np.exp(np.clip(x, -30.0, 30.0), dtype=np.float32))
        if update_items:
            along = step[:, None] * pu
            _scatter_add(self.item_factors_, items,
                         np.concatenate((along, -along)) - decay * q)
            _scatter_add(self.item_bias_, items, np.concatenate((step, -step)) - decay * bias)
            _scatter_add(user_factors, users, step[:, None] * diff - decay * pu)
        else:
            user_factors[users] += step[:, None] * diff - decay * pu
        return x

    def _fit(self, user_items: sp.csr_matrix) -> None:
        rng = np.random.default_rng(self.random_state)
        n_users, n_items = user_items.shape
        self.user_factors_ = self._init_factors(rng, n_users)
        self.item_factors_ = self._init_factors(rng, n_items)
        self.item_bias_ = np.zeros(n_items, dtype=np.float32)
        users, items, keys = self._positives(user_items)
        for epoch in range(self.iterations):
            order = rng.permutation(len(users))
            loss, skipped = 0.0, 0
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                u, i = users[batch], items[batch]
                j, ok = self._negatives(rng, u, keys, n_items)
                if not ok.all():
                    u, i, j, skipped = u[ok], i[ok], j[ok], skipped + int((~ok).sum())
                x = self._step(self.user_factors_, u, i, j)
                loss += float(np.logaddexp(0.0, -x).sum())
            if log.isEnabledFor(logging.DEBUG):
                log.debug("bpr-uniform epoch %d/%d: mean -ln σ(x_uij) %.4f, %d pairs skipped",
                          epoch + 1, self.iterations, loss / max(len(users) - skipped, 1),
                          skipped)

    def _fold_in(self, rows: sp.csr_matrix) -> np.ndarray:
        """Factors for users unseen at fit time: per-sample SGD with the items frozen."""
        rng = np.random.default_rng(self.random_state)
        n_users, n_items = rows.shape
        users, items, keys = self._positives(rows)
        vectors = self._init_factors(rng, n_users)
        counts = np.bincount(users, minlength=n_users)
        # a pair's rank among its user's pairs, in CSR (user-sorted) order
        rank = np.arange(len(users)) - np.repeat(np.cumsum(counts) - counts, counts)
        bounds = np.cumsum(np.bincount(rank)) if len(rank) else np.zeros(0, dtype=np.int64)
        for _ in range(self.iterations):
            # shuffle each user's pairs, then step round by round: round r takes every
            # user's r-th pair, so each user moves once per step and, items being frozen,
            # the vectorised steps are exactly sequential SGD for each user
            shuffled = np.lexsort((rng.random(len(users)), users))
            by_round = shuffled[np.argsort(rank, kind="stable")]
            start = 0
            for stop in bounds:
                sel = by_round[start:stop]
                start = stop
                u, i = users[sel], items[sel]
                j, ok = self._negatives(rng, u, keys, n_items)
                self._step(vectors, u[ok], i[ok], j[ok], update_items=False)
        return vectors

    def _scores(self, known: np.ndarray, rows: sp.csr_matrix) -> np.ndarray:
        vectors = np.empty((len(known), self.factors), dtype=np.float32)
        old = known >= 0
        vectors[old] = self.user_factors_[known[old]]
        if (~old).any():
            vectors[~old] = self._fold_in(rows[np.flatnonzero(~old)])
        return vectors @ self.item_factors_.T + self.item_bias_


def _scatter_add(target: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
    """``target[index] += values`` with repeated indices summed (a faster ``np.add.at``).

    The sum is a sparse one-hot product; with few distinct rows in a large
    target, only the rows touched are formed.
    """
    if not len(index):
        return
    rows: np.ndarray | slice = slice(None)
    n_rows = len(target)
    if n_rows > 4 * len(index):
        rows, index = np.unique(index, return_inverse=True)
        n_rows = len(rows)
    onehot = sp.csr_matrix(
        (np.ones(len(index), dtype=values.dtype), index, np.arange(len(index) + 1)),
        shape=(len(index), n_rows),
    )
    summed = onehot.T @ values.reshape(len(index), -1)
    target[rows] += summed.reshape((n_rows,) + target.shape[1:])
