"""FAISS nearest-neighbour index over embeddings with string ids.

Used for style references (user taste vector → nearest style) and, with item
embeddings, for candidate generation (taste vector → nearest items); it only
knows ids and vectors. Exact inner product by default; any FAISS
``index_factory`` string (``"IVF64,Flat"``, ``"HNSW32"``, ``"IVF256,PQ32"``…)
for large sets, trained on the fitted vectors when the index needs it.

The index remembers the ``encoder_id`` of its vectors and refuses queries from
another encoder, and saves as ``index.faiss`` (FAISS's own format) plus
``meta.json`` (ids, encoder id, options): no pickle.

Examples
--------
>>> import numpy as np
>>> vectors = np.eye(3, dtype=np.float32)
>>> index = StyleIndex().fit(["a", "b", "c"], vectors)
>>> ids, sims = index.search(vectors[:1], k=2)
>>> ids[0].tolist(), sims[0].round(3).tolist()
[['a', 'b'], [1.0, 0.0]]
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ground.files import write_bytes_atomic

from .catalog import IMAGE_SUFFIXES, Catalog
from .encoders import ImageEncoder

log = logging.getLogger(__name__)

_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
_FORMAT = 1


class EncoderMismatchError(ValueError):
    """Vectors from one encoder used against an index built with another."""


class StyleIndex:
    """Nearest neighbours of query vectors among fitted ``(id, vector)`` pairs.

    Parameters
    ----------
    factory
        FAISS ``index_factory`` string; ``"Flat"`` (default) is exact.
    metric
        ``"ip"`` (inner product: cosine for L2-normalised vectors; default) or ``"l2"``
        (squared Euclidean distance, smaller is nearer).
    nprobe
        Inverted lists visited per query by IVF indexes (ignored otherwise);
        more is slower and more exact.
    ef_search
        Search breadth of HNSW indexes (ignored otherwise).

    Attributes
    ----------
    ids_ : np.ndarray
        The fitted ids (str), in insertion order.
    index_ : faiss.Index
    encoder_id_ : str or None
        Encoder of the fitted vectors, when known.
    dim_ : int

    Examples
    --------
    >>> index = StyleIndex("HNSW32")  # doctest: +SKIP
    >>> index.build("../shared/data/styles", create_encoder("efficientnet-lite0-style"))
    >>> index.search(taste_vectors, k=1)  # doctest: +SKIP
    """

    def __init__(
        self,
        factory: str = "Flat",
        metric: str = "ip",
        nprobe: int = 8,
        ef_search: int = 64,
    ) -> None:
        self.factory = factory
        self.metric = metric
        self.nprobe = nprobe
        self.ef_search = ef_search
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")

    # -- building --------------------------------------------------------------

    def fit(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        encoder_id: str | None = None,
    ) -> StyleIndex:
        """Index ``vectors`` (``[n, d]``) under ``ids``, training the index if it needs it.

        Parameters
        ----------
        ids
            One unique string id per row.
        vectors
            float ``[n, d]``; for ``metric="ip"`` pass L2-normalised vectors to get cosines.
        encoder_id
            The encoder that produced them; queries from another encoder are refused.

        Returns
        -------
        StyleIndex
            ``self``.
        """
        vectors = self._as_matrix(vectors, "vectors")
        ids = np.asarray([str(i) for i in ids], dtype=object)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids but {len(vectors)} vectors")
        counts = Counter(ids.tolist())
        if len(counts) != len(ids):
            dup = next(i for i, n in counts.items() if n > 1)
            raise ValueError(f"id {dup!r} appears {counts[dup]} times")
        if not len(ids):
            raise ValueError("cannot fit an index on zero vectors")
        dim = vectors.shape[1]
        try:
            index = faiss.index_factory(dim, self.factory, _METRICS[self.metric])
        except RuntimeError as err:
            raise ValueError(f"bad FAISS factory string {self.factory!r}: {err}") from None
        if not index.is_trained:
            self._train(index, vectors)
        index.add(vectors)
        self.index_, self.ids_, self.dim_ = index, ids, dim
        self.encoder_id_ = encoder_id
        self._apply_search_params()
        return self

    def _train(self, index: faiss.Index, vectors: np.ndarray) -> None:
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None and len(vectors) < ivf.nlist:
            raise ValueError(f"factory {self.factory!r} has {ivf.nlist} inverted lists but only "
                             f"{len(vectors)} vectors to train on; use fewer lists or 'Flat'")
        try:
            index.train(vectors)
        except RuntimeError as err:
            raise ValueError(f"training {self.factory!r} on {len(vectors)} vectors failed: "
                             f"{err}") from None

    def _apply_search_params(self) -> None:
        ivf = faiss.try_extract_index_ivf(self.index_)
        if ivf is not None:
            ivf.nprobe = self.nprobe
        hnsw = getattr(faiss.downcast_index(self.index_), "hnsw", None)
        if hnsw is not None:
            hnsw.efSearch = self.ef_search

    def build(
        self,
        folder: str | Path,
        encoder: ImageEncoder,
        suffixes: Sequence[str] = IMAGE_SUFFIXES,
    ) -> StyleIndex:
        """Encode every image in ``folder`` (id = file stem) and :meth:`fit` on them.

        Images that cannot be loaded are skipped with a warning naming them.

        Examples
        --------
        >>> index = StyleIndex().build("../shared/data/styles", encoder)  # doctest: +SKIP
        """
        catalog = Catalog.from_directory(folder, pattern="*", suffixes=suffixes)
        paths = [catalog.path(i) for i in catalog.item_ids]
        ids, vectors = [], []
        for batch in encoder.encode_batches(paths, progress=False):
            for j, err in batch.failures.items():
                log.warning("skipping style reference %s: %s", paths[j].name, err)
            ids.extend(paths[j].stem for j in batch.indices)
            vectors.append(batch.vectors)
        return self.fit(ids, np.concatenate(vectors), encoder_id=encoder.encoder_id)

    # -- querying --------------------------------------------------------------

    def search(
        self,
        vectors: np.ndarray,
        k: int = 1,
        encoder_id: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest fitted ids of each query vector.

        Parameters
        ----------
        vectors
            ``[n, d]`` (or ``[d]``) queries in the fitted vectors' space.
        k
            Neighbours per query; capped at the number of fitted vectors.
        encoder_id
            The queries' encoder; must equal the fitted one when both are known.

        Returns
        -------
        ids : np.ndarray
            ``object [n, k]`` of str, best first (``None`` where an approximate
            index found fewer than ``k``).
        sims : np.ndarray
            ``float32 [n, k]``: inner products (``metric="ip"``, larger is nearer)
            or squared distances (``"l2"``, smaller is nearer).
        """
        self._check_fitted()
        if encoder_id is not None and self.encoder_id_ is not None \
                and encoder_id != self.encoder_id_:
            raise EncoderMismatchError(
                f"queries come from encoder {encoder_id!r} but the index holds embeddings of "
                f"{self.encoder_id_!r}; re-encode with the same encoder or rebuild the index")
        queries = self._as_matrix(vectors, "queries")
        if queries.shape[1] != self.dim_:
            raise ValueError(f"queries have dimension {queries.shape[1]} but the index holds "
                             f"{self.dim_}-d vectors (encoder {self.encoder_id_ or 'unknown'})")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, len(self.ids_))
        sims, rows = self.index_.search(queries, k)
        ids = np.full(rows.shape, None, dtype=object)
        found = rows >= 0
        ids[found] = self.ids_[rows[found]]
        return ids, sims

    def search_encoded(self, images: Sequence[Any], encoder: ImageEncoder,
                       k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Encode ``images`` with ``encoder`` and :meth:`search` (encoder checked)."""
        return self.search(encoder.encode(images, progress=False), k, encoder.encoder_id)

    def reconstruct(self, ids: Sequence[str]) -> np.ndarray:
        """The stored vectors of ``ids`` (exact for Flat/HNSW, approximate for PQ)."""
        self._check_fitted()
        position = {item: row for row, item in enumerate(self.ids_.tolist())}
        missing = [i for i in ids if i not in position]
        if missing:
            raise KeyError(f"ids not in the index: {missing[:5]}")
        if isinstance(faiss.downcast_index(self.index_), faiss.IndexIVF):
            faiss.extract_index_ivf(self.index_).make_direct_map()
        return np.stack([self.index_.reconstruct(position[i]) for i in ids])

    def __len__(self) -> int:
        return len(self.ids_) if hasattr(self, "ids_") else 0

    def __repr__(self) -> str:
        size = f"{len(self)} x {self.dim_}" if hasattr(self, "ids_") else "unfitted"
        return f"StyleIndex({self.factory!r}, {self.metric!r}, {size})"

    # -- persistence -----------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write ``index.faiss`` and ``meta.json`` into the folder ``path``.

        Each file is written atomically; ``meta.json`` (written last) holds the
        index file's SHA-256, so a half-replaced pair is detected on load.

        Examples
        --------
        >>> index.save("out/styles.index")  # doctest: +SKIP
        """
        self._check_fitted()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        data = faiss.serialize_index(self.index_).tobytes()
        write_bytes_atomic(folder / "index.faiss", data)
        meta = {
            "format": _FORMAT, "factory": self.factory, "metric": self.metric,
            "nprobe": self.nprobe, "ef_search": self.ef_search, "dim": self.dim_,
            "encoder_id": self.encoder_id_, "index_sha256": hashlib.sha256(data).hexdigest(),
            "ids": self.ids_.tolist(),
        }
        write_bytes_atomic(folder / "meta.json", json.dumps(meta).encode())
        return folder

    @classmethod
    def load(cls, path: str | Path) -> StyleIndex:
        """Read an index written by :meth:`save`.

        Examples
        --------
        >>> index = StyleIndex.load("out/styles.index")  # doctest: +SKIP
        """
        folder = Path(path)
        meta_path, index_path = folder / "meta.json", folder / "index.faiss"
        for needed in (meta_path, index_path):
            if not needed.is_file():
                raise FileNotFoundError(f"{needed} is missing: not a saved StyleIndex")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{meta_path}: unsupported format {meta.get('format')!r}")
        data = index_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta["index_sha256"]:
            raise ValueError(f"{index_path} does not match {meta_path} (interrupted save?)")
        self = cls(meta["factory"], meta["metric"], meta["nprobe"], meta["ef_search"])
        self.index_ = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        self.ids_ = np.asarray(meta["ids"], dtype=object)
        self.dim_ = meta["dim"]
        self.encoder_id_ = meta["encoder_id"]
        if self.index_.ntotal != len(self.ids_) or self.index_.d != self.dim_:
            raise ValueError(f"{folder}: index holds {self.index_.ntotal} x {self.index_.d} "
                             f"but meta.json lists {len(self.ids_)} ids of dim {self.dim_}")
        self._apply_search_params()
        return self

    # -- helpers ---------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "index_"):
            raise RuntimeError("StyleIndex is not fitted: call fit() or build() first")

    @staticmethod
    def _as_matrix(vectors: np.ndarray, what: str) -> np.ndarray:
        matrix = np.asarray(vectors, dtype=np.float32)
        if matrix.ndim == 1:
            matrix = matrix[None]
        if matrix.ndim != 2:
            raise ValueError(f"{what} must be [n, d], got shape {matrix.shape}")
        if not np.isfinite(matrix).all():
            raise ValueError(f"{what} contain NaN or infinite values")
        return np.ascontiguousarray(matrix)
