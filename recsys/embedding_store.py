"""On-disk embedding cache keyed by (encoder id, image content hash).

Layout of a store directory::

    <directory>/<encoder slug>-<sha256(encoder_id)[:12]>/
        encoder.json                {"encoder_id": ..., "dim": ...}
        shard-<time>-<pid>-<random>.npy
                                    structured rows: key (32-byte SHA-256 digest of the
                                    image file), vector (float32[dim])

Each shard is written to a temporary file in the same folder and renamed into place,
so a shard is either complete or absent: a run killed mid-way loses at most the rows
it had not flushed, and the next run reuses every finished shard. Shards are read
memory-mapped. There is no index file: the index is rebuilt from the shards, and
shard names carry 64 random bits, so several processes (or machines sharing the
folder, where process ids repeat) can write one store at once without overwriting
each other's shards. Images are identified by the SHA-256 of their bytes, so renaming or
moving a file costs nothing and an edited image is recomputed.

Examples
--------
>>> from recsys.catalog import Catalog
>>> from recsys.encoders import create_encoder
>>> catalog = Catalog.from_directory("../shared/data/hm/images")  # doctest: +SKIP
>>> store = EmbeddingStore("/work/cache/embeddings", create_encoder("efficientnet-lite0"))
>>> ids = catalog.item_ids  # doctest: +SKIP
>>> result = store.get_or_compute(ids, [catalog.path(i) for i in ids])  # doctest: +SKIP
>>> result.vectors.shape, result.failures  # doctest: +SKIP
((17033, 1280), {})
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ground.files import atomic_write, write_bytes_atomic
from ground.images import ImageLoadError, content_hash

from .encoders import ImageEncoder

log = logging.getLogger(__name__)

_DIGEST_BYTES = 32


class StorePlan(NamedTuple):
    """Result of :meth:`EmbeddingStore.plan`: what a set of images needs.

    ``hashes``: content hash of each input (``None``: unreadable); ``todo``: each hash
    not in the store → the first input position with it; ``hits``: inputs found in
    the store; ``failures``: item id → reason, for unreadable inputs.
    """

    hashes: list[str | None]
    todo: dict[str, int]
    hits: int
    failures: dict[str, str]


class StoreLookup(NamedTuple):
    """Result of :meth:`EmbeddingStore.get_or_compute`.

    ``vectors``: ``float32 [n, dim]`` in input order (rows of failed items are zero);
    ``ok``: ``bool [n]``; ``failures``: item id → reason, for the items that failed.
    """

    vectors: np.ndarray
    ok: np.ndarray
    failures: dict[str, str]


def _digests(rows: np.ndarray) -> list[bytes]:
    """The 32-byte keys of a shard as ``bytes``, read raw.

    Raw bytes, not ``tolist()``: a fixed-width bytes field (``S32``, as early shards
    used) drops trailing NUL bytes when converted, which would lose 1 in 256 digests.
    """
    raw = np.ascontiguousarray(rows["key"]).view(np.uint8).reshape(len(rows), -1).tobytes()
    return [raw[i:i + _DIGEST_BYTES] for i in range(0, len(raw), _DIGEST_BYTES)]


class EmbeddingStore:
    """Cache of one encoder's embeddings under ``directory``.

    Parameters
    ----------
    directory
        Root of the store; each encoder gets its own sub-folder, so several
        encoders can share one root.
    encoder
        The encoder, or just its ``encoder_id`` string for read-only use (looking
        up cached embeddings without loading the model; misses are then failures).
    shard_size
        Rows buffered before a shard is written (the most a crash can lose).
    hash_workers
        Threads hashing image files.

    Attributes
    ----------
    path_ : Path
        This encoder's folder.
    hits_, misses_ : int
        Counts of the last :meth:`get_or_compute` call (cached / computed now).

    Examples
    --------
    >>> store = EmbeddingStore("/tmp/emb", create_encoder("efficientnet-lite0"))  # doctest: +SKIP
    >>> vectors, ok, failures = store.get_or_compute(["a", "b"], ["a.jpg", "b.jpg"])
    """

    def __init__(
        self,
        directory: str | Path,
        encoder: ImageEncoder | str,
        shard_size: int = 1024,
        hash_workers: int = 4,
    ) -> None:
        self.directory = Path(directory)
        self.encoder = encoder
        self.shard_size = shard_size
        self.hash_workers = hash_workers
        if isinstance(encoder, str):
            self.encoder_id_, self.dim_ = encoder, None
        else:
            self.encoder_id_, self.dim_ = encoder.encoder_id, encoder.dim
        self.path_ = self.directory / self.folder_name(self.encoder_id_)
        self.hits_ = self.misses_ = 0
        self._index: dict[bytes, tuple[int, int]] = {}
        self._shards: list[np.ndarray] = []
        self._seen_files: set[str] = set()
        self._open()

    @staticmethod
    def folder_name(encoder_id: str) -> str:
        """``<readable prefix>-<12 hex of sha256(encoder_id)>``."""
        slug = re.sub(r"[^a-z0-9]+", "-", encoder_id.split("(")[0].lower()).strip("-")
        return f"{slug or 'encoder'}-{hashlib.sha256(encoder_id.encode()).hexdigest()[:12]}"

    def _open(self) -> None:
        meta_path = self.path_ / "encoder.json"
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            if meta["encoder_id"] != self.encoder_id_:
                raise ValueError(f"{meta_path} belongs to encoder {meta['encoder_id']!r}, "
                                 f"not {self.encoder_id_!r}")
            if self.dim_ is not None and meta["dim"] != self.dim_:
                raise ValueError(f"{meta_path}: dim {meta['dim']} != encoder dim {self.dim_}")
            self.dim_ = meta["dim"]
        elif isinstance(self.encoder, ImageEncoder):
            self.path_.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"encoder_id": self.encoder_id_, "dim": self.dim_}, indent=1)
            write_bytes_atomic(meta_path, text.encode())
        else:
            raise FileNotFoundError(f"no embeddings of encoder {self.encoder_id_!r} under "
                                    f"{self.directory} (expected {self.path_})")
        self.refresh()

    def refresh(self) -> None:
        """Pick up shards written since opening (e.g. by another process)."""
        for shard_path in sorted(self.path_.glob("shard-*.npy")):
            if shard_path.name in self._seen_files:
                continue
            try:
                rows = np.load(shard_path, mmap_mode="r")
            except (ValueError, OSError) as err:
                log.warning("skipping unreadable shard %s: %s", shard_path, err)
                continue
            if (rows.dtype.names != ("key", "vector") or rows.dtype["key"].itemsize != _DIGEST_BYTES
                    or rows["vector"].shape[1:] != (self.dim_,)):
                log.warning("skipping shard %s: unexpected layout %s", shard_path, rows.dtype)
                continue
            self._seen_files.add(shard_path.name)
            self._add_shard(rows)

    def _add_shard(self, rows: np.ndarray) -> None:
        shard = len(self._shards)
        self._shards.append(rows)
        for row, key in enumerate(_digests(rows)):
            self._index.setdefault(key, (shard, row))

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, image_hash: object) -> bool:
        return isinstance(image_hash, str) and bytes.fromhex(image_hash) in self._index

    def _dtype(self) -> np.dtype:
        return np.dtype([("key", "u1", (_DIGEST_BYTES,)), ("vector", "<f4", (self.dim_,))])

    def lookup(self, image_hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Cached vectors of content hashes: ``(float32 [n, dim], found bool [n])``.

        Rows not found are zero. Reads only the needed rows of the memory-mapped shards.
        """
        out = np.zeros((len(image_hashes), self.dim_), np.float32)
        found = np.zeros(len(image_hashes), bool)
        by_shard: dict[int, tuple[list[int], list[int]]] = {}
        for i, image_hash in enumerate(image_hashes):
            where = self._index.get(bytes.fromhex(image_hash))
            if where is not None:
                targets, rows = by_shard.setdefault(where[0], ([], []))
                targets.append(i)
                rows.append(where[1])
        for shard, (targets, rows) in by_shard.items():
            out[targets] = self._shards[shard]["vector"][rows]
            found[targets] = True
        return out, found

    def _hash_all(self, item_ids: Sequence[str], paths: Sequence[str | Path]
                  ) -> tuple[list[str | None], dict[str, str]]:
        def one(path: str | Path) -> str | ImageLoadError:
            try:
                return content_hash(path)
            except ImageLoadError as err:
                return err

        with ThreadPoolExecutor(self.hash_workers) as pool:
            results = list(pool.map(one, paths))
        hashes: list[str | None] = []
        failures: dict[str, str] = {}
        for item_id, result in zip(item_ids, results, strict=True):
            if isinstance(result, ImageLoadError):
                failures[str(item_id)] = str(result)
                log.warning("item %s: %s", item_id, result)
                hashes.append(None)
            else:
                hashes.append(result)
        return hashes, failures

    def get_or_compute(
        self,
        item_ids: Sequence[str],
        paths: Sequence[str | Path],
        batch_size: int | None = None,
        progress: bool = True,
    ) -> StoreLookup:
        """Embeddings of the images at ``paths``, computing only those not cached.

        Each image is hashed (SHA-256 of its bytes); cached hashes are read from the
        shards, the rest are encoded (each distinct image once) and flushed to new
        shards every ``shard_size`` rows. A missing, corrupt or truncated image is
        logged with its item id and reported in ``failures``; it never stops the run.

        Parameters
        ----------
        item_ids
            One id per path (used in logs and ``failures``).
        paths
            Image files.
        batch_size
            Encoder batch size (default: the encoder's).
        progress
            tqdm progress bar while encoding.

        Returns
        -------
        StoreLookup
            ``(vectors float32 [n, dim], ok bool [n], failures {item_id: reason})``.

        Examples
        --------
        >>> vectors, ok, failures = store.get_or_compute(ids, paths)  # doctest: +SKIP
        >>> store.misses_  # a second run computes nothing  # doctest: +SKIP
        0
        """
        start = time.perf_counter()
        hashes, todo, hits, failures = self.plan(item_ids, paths)
        self.hits_, self.misses_ = hits, len(todo)
        log.info("%s: %d images, %d cached, %d to compute, %d unreadable",
                 self.path_.name, len(paths), hits, len(todo), len(failures))
        if todo and isinstance(self.encoder, ImageEncoder):
            first = list(todo.values())
            failures.update(self.write([item_ids[i] for i in first], [paths[i] for i in first],
                                       list(todo), batch_size, progress))
        elif todo:
            for i in todo.values():
                failures[str(item_ids[i])] = "not in the store (opened read-only by encoder id)"
        present = [i for i, h in enumerate(hashes) if h is not None]
        vectors = np.zeros((len(hashes), self.dim_), np.float32)
        ok = np.zeros(len(hashes), bool)
        vectors[present], ok[present] = self.lookup([hashes[i] for i in present])
        log.info("%s: done in %.1fs, %d ok, %d failed", self.path_.name,
                 time.perf_counter() - start, int(ok.sum()), len(failures))
        return StoreLookup(vectors, ok, failures)

    def plan(self, item_ids: Sequence[str], paths: Sequence[str | Path]) -> StorePlan:
        """Hash the images at ``paths`` and split them into cached and still to compute.

        Picks up shards other processes wrote first (:meth:`refresh`). Identical
        images (same bytes) are one entry of ``todo``.

        Examples
        --------
        >>> hashes, todo, hits, failures = store.plan(ids, paths)  # doctest: +SKIP
        >>> store.write([ids[i] for i in todo.values()], [paths[i] for i in todo.values()],
        ...             list(todo))  # doctest: +SKIP
        """
        if len(item_ids) != len(paths):
            raise ValueError(f"{len(item_ids)} item ids but {len(paths)} paths")
        self.refresh()
        hashes, failures = self._hash_all(item_ids, paths)
        todo: dict[str, int] = {}
        hits = 0
        for i, image_hash in enumerate(hashes):
            if image_hash is None:
                continue
            if bytes.fromhex(image_hash) in self._index:
                hits += 1
            else:
                todo.setdefault(image_hash, i)
        return StorePlan(hashes, todo, hits, failures)

    def write(
        self,
        item_ids: Sequence[str],
        paths: Sequence[str | Path],
        hashes: Sequence[str],
        batch_size: int | None = None,
        progress: bool = True,
    ) -> dict[str, str]:
        """Encode the images at ``paths`` and store them under their content ``hashes``.

        Rows are flushed to a new shard every ``shard_size`` rows and at the end, so
        everything computed by a call that returns is stored. Several processes may
        call this on one store folder at once (the batch jobs' workers do).

        Returns
        -------
        dict
            Item id → reason, for the images that could not be decoded.
        """
        if not isinstance(self.encoder, ImageEncoder):
            raise TypeError(f"store of {self.encoder_id_!r} was opened read-only (by encoder "
                            "id); pass the encoder to compute embeddings")
        if not len(item_ids) == len(paths) == len(hashes):
            raise ValueError(f"{len(item_ids)} item ids, {len(paths)} paths, "
                             f"{len(hashes)} hashes")
        failures: dict[str, str] = {}
        buffer_keys: list[str] = []
        buffer_vectors: list[np.ndarray] = []
        for batch in self.encoder.encode_batches(paths, batch_size, progress):
            for j, err in batch.failures.items():
                failures[str(item_ids[j])] = str(err)
                log.warning("item %s: %s", item_ids[j], err)
            buffer_keys.extend(hashes[j] for j in batch.indices)
            buffer_vectors.append(batch.vectors)
            if len(buffer_keys) >= self.shard_size:
                self._flush(buffer_keys, buffer_vectors)
                buffer_keys, buffer_vectors = [], []
        if buffer_keys:
            self._flush(buffer_keys, buffer_vectors)
        return failures

    def _flush(self, keys: list[str], vectors: list[np.ndarray]) -> None:
        rows = np.empty(len(keys), self._dtype())
        rows["key"] = np.frombuffer(bytes.fromhex("".join(keys)), np.uint8).reshape(-1, 32)
        rows["vector"] = np.concatenate(vectors)
        name = self._shard_name()
        with atomic_write(self.path_ / name) as handle:
            np.save(handle, rows)
        self._seen_files.add(name)
        self._add_shard(np.load(self.path_ / name, mmap_mode="r"))
        log.debug("wrote %s (%d rows)", name, len(keys))

    @staticmethod
    def _shard_name() -> str:
        # time first (names sort by age); pid for the logs; random bits for uniqueness
        # across machines, where the time and the pid can both repeat
        return f"shard-{time.time_ns()}-{os.getpid()}-{secrets.token_hex(8)}.npy"

    def compact(self) -> Path | None:
        """Merge all shards into one (atomically), then delete the merged ones.

        Returns the new shard's path, or ``None`` when there was at most one shard.
        Safe while readers hold the old shards memory-mapped (POSIX keeps unlinked
        files alive); not meant to run while another process writes this store.
        """
        self.refresh()
        if len(self._shards) <= 1:
            return None
        old = sorted(self._seen_files)
        keys, rows = [], []
        for key, (shard, row) in self._index.items():
            keys.append(key)
            rows.append((shard, row))
        merged = np.empty(len(keys), self._dtype())
        merged["key"] = np.frombuffer(b"".join(keys), np.uint8).reshape(-1, _DIGEST_BYTES)
        for i, (shard, row) in enumerate(rows):
            merged["vector"][i] = self._shards[shard]["vector"][row]
        name = self._shard_name()
        with atomic_write(self.path_ / name) as handle:
            np.save(handle, merged)
        for old_name in old:
            (self.path_ / old_name).unlink(missing_ok=True)
        self._index, self._shards, self._seen_files = {}, [], set()
        self.refresh()
        return self.path_ / name
