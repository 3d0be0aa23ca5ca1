"""User taste profiles: weighted sets of unit vectors in an item-embedding space.

A user's taste is computed from the embeddings of the items they engaged with,
each weighted by its confidence (from :class:`~recsys.interactions.Interactions`)
times a recency decay ``0.5 ** (age_days / half_life_days)``, where the age is
counted back from the user's own latest event (so the profile does not drift
with the wall clock). Three methods:

``mean``
    one vector per user: the L2-normalised weighted mean of the item embeddings.
``kmeans``
    several centroids per user for shoppers with several tastes: weighted
    spherical k-means on the user's item embeddings, seeded per user, with
    ``ceil(n_items / items_per_centroid)`` centroids (at most ``max_centroids``);
    each centroid weighs the share of the user's weight it holds.
``items``
    the embeddings of the user's ``recent_items`` latest distinct items
    themselves, weighted by decayed confidence: taste affinity then becomes a
    nearest-item similarity (see :mod:`recsys.ranker`).

Users with no usable history (unknown, or none of their items has an
embedding) get the global taste, the normalised weighted mean over all
interactions, and are flagged in :attr:`TasteProfiles.fallback`. Users unseen at
fit time are folded in from a ``history`` with the same computation, so a
user's profile from ``history`` equals the fit-time one for the same events.

Examples
--------
>>> import numpy as np, pandas as pd
>>> from recsys.interactions import Interactions
>>> frame = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["x", "y", "y"]})
>>> data = Interactions.from_frame(frame)
>>> vectors = np.array([[1, 0], [0, 1]], dtype=np.float32)
>>> taste = TasteModel().fit(data, ["x", "y"], vectors)
>>> profiles = taste.transform(["a", "b", "nobody"])
>>> profiles.vectors[:, 0].astype(float).round(3).tolist()
[[0.707, 0.707], [0.0, 1.0], [0.447, 0.894]]
>>> profiles.fallback.tolist()
[False, False, True]
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ground.files import read_meta, write_bytes_atomic, write_npz_atomic
from recsys.interactions import Interactions, _IdPositions, _lookup

log = logging.getLogger(__name__)

METHODS = ("mean", "kmeans", "items")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TasteProfiles:
    """Taste profiles of a batch of users, padded to a common number of vectors.

    Attributes
    ----------
    vectors : ndarray of float32, shape (n_users, n_vectors, dim)
        Unit vectors; padding rows are zero.
    weights : ndarray of float32, shape (n_users, n_vectors)
        Non-negative, summing to 1 per user; 0 marks padding.
    fallback : ndarray of bool, shape (n_users,)
        The user had no usable history: the global taste was used.
    folded_in : ndarray of bool, shape (n_users,)
        The profile was computed from the ``history`` given at request time.
    """

    vectors: np.ndarray
    weights: np.ndarray
    fallback: np.ndarray
    folded_in: np.ndarray

    def __len__(self) -> int:
        return len(self.weights)

    def mean_vectors(self) -> np.ndarray:
        """One unit vector per user: the weighted mean of the profile, renormalised."""
        mean = np.einsum("uc,ucd->ud", self.weights, self.vectors)
        return _normalise_rows(mean)


class TasteModel(_IdPositions):
    """Per-user taste profiles from item embeddings.

    Parameters
    ----------
    method : {"mean", "kmeans", "items"}
        How the profile is built (see the module docstring).
    half_life_days : float, optional
        Half-life of the recency decay, counted back from each user's latest
        event; ``None`` disables it. Needs times on every event.
    max_centroids : int
        Most centroids per user (``kmeans``).
    items_per_centroid : int
        One centroid per this many distinct items (``kmeans``): a user with 9
        items and ``items_per_centroid=4`` gets 3 centroids.
    recent_items : int
        How many of a user's latest distinct items to keep (``items``).
    n_iter : int
        Spherical k-means iterations (``kmeans``).
    random_state : int
        Seed of the k-means initialisation; combined with the user id, so a
        user's centroids do not depend on the batch they are computed in.

    Attributes
    ----------
    user_ids_ : ndarray of str
        Users seen at fit time.
    item_ids_ : ndarray of str
        Items with an embedding, in the row order of ``item_vectors_``.
    item_vectors_ : ndarray of float32, shape (n_items, dim)
        Unit-norm item embeddings.
    vectors_, weights_, offsets_ : ndarray
        Ragged profiles: user ``u``'s vectors are
        ``vectors_[offsets_[u]:offsets_[u + 1]]`` (none for a fallback user).
    global_ : ndarray of float32, shape (dim,)
        The fallback taste.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from recsys.interactions import Interactions
    >>> frame = pd.DataFrame({"user_id": ["a"] * 4, "item_id": list("wxyz"),
    ...                       "t": ["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-04"]})
    >>> data = Interactions.from_frame(frame, time_col="t")
    >>> vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]])  # two looks
    >>> taste = TasteModel("kmeans", items_per_centroid=2).fit(data, list("wxyz"), vectors)
    >>> taste.transform(["a"]).weights.tolist()
    [[0.5, 0.5]]
    >>> recent = TasteModel("items", half_life_days=1.0, recent_items=2)
    >>> recent.fit(data, list("wxyz"), vectors).transform(["a"]).weights.astype(float).round(3)
    array([[0.667, 0.333]])
    """

    def __init__(
        self,
        method: str = "mean",
        half_life_days: float | None = None,
        max_centroids: int = 4,
        items_per_centroid: int = 8,
        recent_items: int = 20,
        n_iter: int = 15,
        random_state: int = 0,
    ) -> None:
        self.method = method
        self.half_life_days = half_life_days
        self.max_centroids = max_centroids
        self.items_per_centroid = items_per_centroid
        self.recent_items = recent_items
        self.n_iter = n_iter
        self.random_state = random_state

    def get_params(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and not
                k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"TasteModel({args})"

    # -- fitting --------------------------------------------------------------

    def _check_params(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.half_life_days is not None and not self.half_life_days > 0:
            raise ValueError(f"half_life_days must be > 0 or None, got {self.half_life_days}")
        for name in ("max_centroids", "items_per_centroid", "recent_items", "n_iter"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def fit(
        self, interactions: Interactions, item_ids: Sequence[str], item_vectors: np.ndarray
    ) -> TasteModel:
        """Compute the profiles of every user in ``interactions``.

        Parameters
        ----------
        interactions : Interactions
            The log; its confidence weighting weighs the items.
        item_ids : sequence of str
            Ids of the embedded items, one per row of ``item_vectors``.
            Interactions with items outside it are ignored (they have no image).
        item_vectors : array-like of shape (n_items, dim)
            Item embeddings; rows are L2-normalised here.

        Returns
        -------
        self
        """
        self._check_params()
        if not isinstance(interactions, Interactions):
            raise TypeError(f"fit expects Interactions, got {type(interactions).__name__}")
        self.item_ids_ = np.asarray(item_ids, dtype=str)
        self.item_vectors_ = _check_vectors(item_vectors, self.item_ids_)
        self.user_ids_ = np.asarray(interactions.user_ids, dtype=str)
        weights, order = self._user_item_weights(interactions)
        self.vectors_, self.weights_, self.offsets_ = self._profiles(
            weights, order, self.user_ids_
        )
        total = np.asarray(weights.sum(axis=0)).ravel()
        if not total.any():
            raise ValueError(
                "no interaction has an item with an embedding: check that the catalog and the "
                "log use the same item ids"
            )
        self.global_ = _normalise_rows((total @ self.item_vectors_)[None])[0]
        n_fallback = int((np.diff(self.offsets_) == 0).sum())
        log.info("taste profiles for %d users (%d without usable history), method=%s",
                 len(self.user_ids_), n_fallback, self.method)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "offsets_"):
            raise RuntimeError("TasteModel is not fitted yet: call fit() first")

    @property
    def dim(self) -> int:
        """Dimension of the embedding space."""
        self._check_fitted()
        return int(self.item_vectors_.shape[1])

    def _user_item_weights(self, data: Interactions) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """Decayed confidence per (user, embedded item), and a recency order per pair.

        Returns two CSR matrices over (data's users × embedded items) with the
        same pattern: the weights, and for each pair ``1 + rank`` of its latest
        event in the log's time order (higher = more recent).
        """
        events = data.events
        weight = np.asarray(data.event_weights, dtype=np.float64)
        users = events["user"].to_numpy()
        times = events["time"]
        if self.half_life_days is not None:
            if times.isna().any():
                raise ValueError("half_life_days needs a time on every event; the log has gaps")
            days = times.to_numpy().astype("datetime64[s]").astype(np.float64) / 86400.0
            latest = np.full(data.n_users, -np.inf)
            np.maximum.at(latest, users, days)
            weight = weight * np.power(0.5, (latest[users] - days) / self.half_life_days)
        # ties and missing times: the position in the log decides what is recent
        if times.isna().any():
            order = np.arange(len(events), dtype=np.float64)
        else:
            stamp = times.to_numpy().astype("datetime64[ns]").astype(np.int64)
            order = np.empty(len(events))
            order[np.lexsort((np.arange(len(events)), stamp))] = np.arange(len(events))
        cols = _lookup(self._item_pos, data.item_ids, "item", "ignore")[events["item"].to_numpy()]
        keep = (cols >= 0) & (weight > 0)
        if not keep.all():
            log.debug("taste: %d events without an embedded item ignored", int((~keep).sum()))
        shape = (data.n_users, len(self.item_ids_))
        w = sp.csr_matrix((weight[keep], (users[keep], cols[keep])), shape=shape)
        w.sum_duplicates()
        w.sort_indices()
        rank = _max_duplicates(
            sp.coo_matrix((order[keep] + 1.0, (users[keep], cols[keep])), shape=shape)
        )
        rank.sort_indices()
        return w, rank

    def _profiles(
        self, weights: sp.csr_matrix, order: sp.csr_matrix, user_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ragged (vectors, weights, offsets) for every row of ``weights``."""
        n_users, dim = weights.shape[0], self.item_vectors_.shape[1]
        if self.method == "mean":
            counts = (np.diff(weights.indptr) > 0).astype(np.int64)
            # float32 on both sides: a float64 operand would copy the whole catalog's vectors
            mean = np.asarray(weights.astype(np.float32) @ self.item_vectors_)[counts > 0]
            offsets = np.r_[0, np.cumsum(counts)]
            return _normalise_rows(mean), np.ones(len(mean), np.float32), offsets
        vectors, vector_weights, counts = [], [], np.zeros(n_users, dtype=np.int64)
        for u in range(n_users):
            lo, hi = weights.indptr[u], weights.indptr[u + 1]
            if hi == lo:
                continue
            cols, w = weights.indices[lo:hi], weights.data[lo:hi]
            if self.method == "items":
                recent = np.argsort(-order.data[lo:hi], kind="stable")[: self.recent_items]
                vecs, vw = self.item_vectors_[cols[recent]], w[recent]
            else:
                vecs, vw = self._centroids(self.item_vectors_[cols], w, user_ids[u])
            vectors.append(vecs)
            vector_weights.append((vw / vw.sum()).astype(np.float32))
            counts[u] = len(vw)
        offsets = np.r_[0, np.cumsum(counts)]
        if not vectors:
            return np.zeros((0, dim), np.float32), np.zeros(0, np.float32), offsets
        return (np.concatenate(vectors).astype(np.float32), np.concatenate(vector_weights),
                offsets)

    def _centroids(
        self, vectors: np.ndarray, weights: np.ndarray, user_id: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Weighted spherical k-means of one user's item vectors, seeded by the user id."""
        n = len(vectors)
        k = int(min(self.max_centroids, -(-n // self.items_per_centroid), n))
        if k == 1:
            return _normalise_rows((weights @ vectors)[None]), np.array([weights.sum()])
        rng = np.random.default_rng([self.random_state, zlib.crc32(user_id.encode())])
        # k-means++ seeding on cosine distance, weighted by confidence
        centres = [int(rng.choice(n, p=weights / weights.sum()))]
        for _ in range(1, k):
            dist = np.clip(1.0 - (vectors @ vectors[centres].T).max(axis=1), 0.0, None)
            p = weights * dist
            if p.sum() <= 0:
                break
            centres.append(int(rng.choice(n, p=p / p.sum())))
        centroids = vectors[centres].astype(np.float64)
        for _ in range(self.n_iter):
            assign = np.argmax(vectors @ centroids.T, axis=1)
            mass = np.zeros((len(centroids), vectors.shape[1]))
            np.add.at(mass, assign, weights[:, None] * vectors)
            filled = np.bincount(assign, minlength=len(centroids)) > 0
            new = _normalise_rows(mass[filled])
            if new.shape == centroids.shape and np.allclose(new, centroids, atol=1e-7):
                break
            centroids = new
        assign = np.argmax(vectors @ centroids.T, axis=1)
        share = np.bincount(assign, weights=weights, minlength=len(centroids))
        used = share > 0
        return centroids[used].astype(np.float32), share[used]

    # -- profiles -------------------------------------------------------------

    def transform(
        self, user_ids: Sequence[str], history: Interactions | None = None
    ) -> TasteProfiles:
        """Taste profiles of a batch of users.

        Parameters
        ----------
        user_ids : sequence of str
            External user ids.
        history : Interactions, optional
            Events to compute profiles from at request time (folded in): used
            for every requested user that has events in it. Other users get
            their fit-time profile, or the fallback when unknown.

        Returns
        -------
        TasteProfiles
        """
        self._check_fitted()
        if isinstance(user_ids, str):
            raise TypeError("user_ids must be a sequence of ids (batch-first), not a string")
        user_ids = [str(u) for u in user_ids]
        known = _lookup(self._user_pos, user_ids, "user", "ignore")
        parts = [self._stored(i) for i in known]
        folded = np.zeros(len(user_ids), dtype=bool)
        if history is not None:
            rows = history.user_index(user_ids, missing="ignore")
            have = np.flatnonzero(rows >= 0)
            if len(have):
                weights, order = self._user_item_weights(history)
                sub_ids = np.asarray(user_ids, dtype=str)[have]
                vec, w, off = self._profiles(weights[rows[have]], order[rows[have]], sub_ids)
                for j, pos in enumerate(have):
                    parts[pos] = (vec[off[j]:off[j + 1]], w[off[j]:off[j + 1]])
                folded[have] = True
        return self._pad(parts, folded)

    def _stored(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        if row < 0:
            return self.vectors_[:0], self.weights_[:0]
        lo, hi = self.offsets_[row], self.offsets_[row + 1]
        return self.vectors_[lo:hi], self.weights_[lo:hi]

    def _pad(self, parts: list[tuple[np.ndarray, np.ndarray]], folded: np.ndarray) -> TasteProfiles:
        width = max([1] + [len(w) for _, w in parts])
        vectors = np.zeros((len(parts), width, self.dim), dtype=np.float32)
        weights = np.zeros((len(parts), width), dtype=np.float32)
        fallback = np.zeros(len(parts), dtype=bool)
        for i, (vec, w) in enumerate(parts):
            if len(w) == 0:
                vectors[i, 0], weights[i, 0], fallback[i] = self.global_, 1.0, True
            else:
                vectors[i, : len(w)], weights[i, : len(w)] = vec, w
        return TasteProfiles(vectors, weights, fallback, folded & ~fallback)

    # -- persistence ----------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write ``taste.json`` + ``taste.npz`` into the directory ``path`` (no pickle)."""
        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_npz_atomic(path / "taste.npz", {
            "user_ids": self.user_ids_, "item_ids": self.item_ids_,
            "item_vectors": self.item_vectors_, "vectors": self.vectors_,
            "weights": self.weights_, "offsets": self.offsets_, "global": self.global_,
        })
        write_bytes_atomic(path / "taste.json", json.dumps(
            {"format": FORMAT_VERSION, "params": self.get_params()}, indent=2).encode())
        return path

    @classmethod
    def load(cls, path: str | Path) -> TasteModel:
        """Load a model written by :meth:`save`."""
        path = Path(path)
        meta = read_meta(path, "taste.json", "taste model", FORMAT_VERSION)
        model = cls(**meta["params"])
        with np.load(path / "taste.npz", allow_pickle=False) as z:
            model.user_ids_, model.item_ids_ = z["user_ids"], z["item_ids"]
            model.item_vectors_, model.vectors_ = z["item_vectors"], z["vectors"]
            model.weights_, model.offsets_, model.global_ = z["weights"], z["offsets"], z["global"]
        return model


class EmbeddingPCA:
    """Project embeddings onto their top principal components, optionally whitened.

    Fitted on the catalog's item embeddings; the same projection is applied to
    everything compared with them (taste vectors are built from projected items,
    style references are projected too). Rows come out L2-normalised, so inner
    products stay cosines. A low dimension makes nearest-item search several
    times cheaper; whitening (dividing each component by its standard
    deviation) stops the few dominant directions of an ImageNet feature space
    (background, pose, lighting) from swamping the ones that separate looks.

    Parameters
    ----------
    n_components : int
        Output dimension (at most the input dimension and the number of rows).
    whiten : bool
        Scale each component to unit variance before normalising.

    Attributes
    ----------
    mean_ : ndarray of float32, shape (dim,)
    components_ : ndarray of float32, shape (n_components, dim)
    scale_ : ndarray of float32, shape (n_components,)
        Standard deviation of each component (all ones without whitening).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> vectors = rng.standard_normal((50, 8)) * np.arange(1, 9)
    >>> pca = EmbeddingPCA(n_components=3).fit(vectors)
    >>> out = pca.transform(vectors)
    >>> out.shape, bool(np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5))
    ((50, 3), True)
    """

    def __init__(self, n_components: int = 128, whiten: bool = True) -> None:
        self.n_components = n_components
        self.whiten = whiten

    def fit(self, vectors: np.ndarray) -> EmbeddingPCA:
        """Learn the components from ``vectors`` ``[n, dim]``; returns ``self``."""
        x = np.asarray(vectors)
        if x.ndim != 2 or not all(np.isfinite(c).all() for c in _row_chunks(x)):
            raise ValueError(f"vectors must be a finite [n, dim] array, got shape {x.shape}")
        k = int(self.n_components)
        if not 1 <= k <= min(x.shape):
            raise ValueError(f"n_components must be in [1, {min(x.shape)}] for {x.shape[0]} "
                             f"vectors of dimension {x.shape[1]}, got {k}")
        # eigenvectors of the dim x dim covariance, accumulated over row chunks in
        # float64: memory O(dim^2), not the O(n * dim) copies of an SVD of the data
        mean = sum(c.sum(axis=0, dtype=np.float64) for c in _row_chunks(x)) / len(x)
        cov = np.zeros((x.shape[1], x.shape[1]))
        for chunk in _row_chunks(x):
            centred = chunk.astype(np.float64) - mean
            cov += centred.T @ centred
        eigenvalues, eigenvectors = np.linalg.eigh(cov)
        order = np.argsort(eigenvalues)[::-1]
        singular = np.sqrt(np.clip(eigenvalues[order], 0, None))
        vt = eigenvectors[:, order].T
        # a deterministic sign per component: its largest coordinate is positive
        signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
        self.mean_ = mean.astype(np.float32)
        self.components_ = (vt[:k] * signs[:k, None]).astype(np.float32)
        std = singular[:k] / np.sqrt(max(len(x) - 1, 1))
        self.scale_ = (np.where(std > 1e-12, std, 1.0) if self.whiten
                       else np.ones(k)).astype(np.float32)
        return self

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """Projected, unit-norm rows: float32 ``[n, n_components]``."""
        if not hasattr(self, "components_"):
            raise RuntimeError("EmbeddingPCA is not fitted yet: call fit() first")
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.components_.shape[1]:
            raise ValueError(f"vectors must be [n, {self.components_.shape[1]}], "
                             f"got shape {x.shape}")
        # centred row chunks: no [n, dim] copy (projecting first and subtracting the
        # projected mean would cancel badly in float32 on weak whitened components)
        z = np.empty((len(x), len(self.components_)), dtype=np.float32)
        start = 0
        for chunk in _row_chunks(x):
            z[start:start + len(chunk)] = (chunk - self.mean_) @ self.components_.T
            start += len(chunk)
        return _normalise_rows(z / self.scale_)

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted state, for an ``npz`` file."""
        return {"pca_mean": self.mean_, "pca_components": self.components_,
                "pca_scale": self.scale_}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], whiten: bool) -> EmbeddingPCA:
        """Rebuild a fitted projection from :meth:`arrays`."""
        pca = cls(len(arrays["pca_components"]), whiten)
        pca.mean_ = arrays["pca_mean"]
        pca.components_ = arrays["pca_components"]
        pca.scale_ = arrays["pca_scale"]
        return pca


def _check_vectors(vectors: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(item_ids):
        raise ValueError(
            f"item_vectors must be 2-D with one row per item id: got shape {vectors.shape} "
            f"for {len(item_ids)} ids"
        )
    if len(np.unique(item_ids)) != len(item_ids):
        raise ValueError("item_ids must be unique")
    norms = np.linalg.norm(vectors, axis=1)
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        raise ValueError(
            f"item {str(item_ids[np.flatnonzero(bad)[0]])!r} has a zero or non-finite embedding "
            f"({int(bad.sum())} in all)"
        )
    if np.allclose(norms, 1.0, atol=1e-5):
        return np.ascontiguousarray(vectors)  # already unit rows: no copy of a large matrix
    return np.ascontiguousarray(vectors / norms[:, None], dtype=np.float32)


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _max_duplicates(coo: sp.coo_matrix) -> sp.csr_matrix:
    """CSR of a COO matrix keeping the largest value of duplicate entries."""
    order = np.lexsort((-coo.data, coo.col, coo.row))
    row, col, data = coo.row[order], coo.col[order], coo.data[order]
    first = np.r_[True, (row[1:] != row[:-1]) | (col[1:] != col[:-1])][: len(row)]
    return sp.csr_matrix((data[first], (row[first], col[first])), shape=coo.shape)


def _row_chunks(x: np.ndarray, rows: int = 2048) -> Iterator[np.ndarray]:
    for start in range(0, len(x), rows):
        yield x[start:start + rows]
