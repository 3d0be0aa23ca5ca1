"""The Ray Data engine of the batch jobs in :mod:`stylerec.batch`: the only module importing Ray.

The driver's list of missing work becomes a dataset (one block per actor call),
mapped by an actor pool with :meth:`ray.data.Dataset.map_batches`: each actor loads
the encoder or styler once and writes its results itself, through the same
:class:`~recsys.embedding_store.EmbeddingStore` (one shard per call) or
:class:`~stylers.renderer.Renderer` cache as the local engine, so a job killed
mid-way keeps every finished call. Actors return one small row per work item
(its id, the error if any, and its share of the call's CPU time), which the driver
counts for the progress bar and the report. Workers must be able to import this
project (a local cluster inherits the driver's environment; on a remote cluster
install it on every node).

Ray 2.60 spells the pool size ``compute=ray.data.ActorPoolStrategy(size=n)``
(``concurrency=`` is deprecated since 2.51).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import ray
from tqdm.auto import tqdm

from stylerec.batch import EmbedWork, Pair, RayOptions, pair_id, render_pairs

if TYPE_CHECKING:
    from recsys.encoders import ImageEncoder
    from stylers.renderer import Renderer

log = logging.getLogger(__name__)


class EmbedWorker:
    """Ray actor: one encoder; each call encodes a batch and writes it as one store shard."""

    def __init__(self, make_encoder: Callable[[], ImageEncoder], cache_dir: str,
                 batch_size: int | None, shard_size: int, threads: int | None) -> None:
        from recsys.embedding_store import EmbeddingStore

        _limit_threads(threads)
        self.store = EmbeddingStore(cache_dir, make_encoder(), shard_size=shard_size)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cpu_start = time.process_time()
        ids = [str(i) for i in batch["item_id"]]
        failures = self.store.write(ids, list(batch["path"]), list(batch["hash"]),
                                    self.batch_size, progress=False)
        return _statuses(ids, failures, [i not in failures for i in ids], cpu_start)


class RenderWorker:
    """Ray actor: one renderer (styler loaded once); each call renders a batch of pairs."""

    def __init__(self, make_renderer: Callable[[], Renderer], threads: int | None) -> None:
        _limit_threads(threads)
        self.renderer = make_renderer()
        self.renderer.progress = False

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cpu_start = time.process_time()
        pairs: list[Pair] = list(zip(
            batch["item_id"].tolist(), batch["item_path"].tolist(), batch["style_id"].tolist(),
            batch["style_path"].tolist(), strict=True))
        # a render another job finished meanwhile is a cache hit, not work done here
        done_before = [self.renderer.cache_path(self.renderer.cache_key(p[1], p[3])).exists()
                       for p in pairs]
        failures = render_pairs(self.renderer, pairs)
        ids = [pair_id(p) for p in pairs]
        computed = [not before and i not in failures
                    for i, before in zip(ids, done_before, strict=True)]
        return _statuses(ids, failures, computed, cpu_start)


def embed_on_ray(work: EmbedWork, make_encoder: Callable[[], ImageEncoder],
                 cache_dir: str | Path, batch_size: int | None, shard_size: int,
                 options: RayOptions, progress: bool) -> tuple[int, dict[str, str], float]:
    """Encode ``work`` on Ray into the store under ``cache_dir``: ``(computed, failures,
    the actors' CPU seconds)``."""
    rows = [{"item_id": i, "path": p, "hash": h}
            for i, p, h in zip(work.item_ids, work.paths, work.hashes, strict=True)]
    return _run(rows, EmbedWorker, shard_size, options, progress, "embed",
                lambda threads: {"make_encoder": make_encoder, "cache_dir": str(cache_dir),
                                 "batch_size": batch_size, "shard_size": shard_size,
                                 "threads": threads})


def render_on_ray(todo: list[Pair], make_renderer: Callable[[], Renderer], shard_size: int,
                  options: RayOptions, progress: bool) -> tuple[int, dict[str, str], float]:
    """Render ``todo`` on Ray into the renderer's cache: ``(rendered, failures, the actors'
    CPU seconds)``."""
    rows = [{"item_id": i, "item_path": str(ip), "style_id": s,
             "style_path": None if sp is None else str(sp)} for i, ip, s, sp in todo]
    return _run(rows, RenderWorker, shard_size, options, progress, "render",
                lambda threads: {"make_renderer": make_renderer, "threads": threads})


def connect(options: RayOptions) -> None:
    """Join the cluster at ``options.address`` (or start a local one) unless connected."""
    if not ray.is_initialized():
        ray.init(address=options.address, include_dashboard=False)


def _run(rows: list[dict[str, Any]], worker: type, shard_size: int, options: RayOptions,
         progress: bool, desc: str, constructor_kwargs: Callable[[int | None], dict[str, Any]]
         ) -> tuple[int, dict[str, str], float]:
    connect(options)
    workers, cpus, gpus = actor_resources(options)
    threads = None if gpus else max(1, int(cpus))
    log.info("%s on Ray: %d items, %d actors (%s CPU, %s GPU each), %d per call",
             desc, len(rows), workers, cpus, gpus, shard_size)
    ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts items
    dataset = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / shard_size))
    results = dataset.map_batches(
        worker, fn_constructor_kwargs=constructor_kwargs(threads), batch_size=shard_size,
        batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus, num_gpus=gpus or None)
    computed, failures, cpu = 0, {}, 0.0
    with tqdm(total=len(rows), desc=f"{desc} (ray, {workers} actors)", unit="item",
              disable=not progress, smoothing=0.1) as bar:
        for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
            computed += int(batch["computed"].sum())
            cpu += float(batch["cpu_seconds"].sum())
            for item, error in zip(batch["id"].tolist(), batch["error"].tolist(), strict=True):
                if error:
                    failures[item] = error
            bar.update(len(batch["id"]))
    return computed, failures, cpu


def actor_resources(options: RayOptions) -> tuple[int, float, float]:
    """``(actors, CPUs per actor, GPUs per actor)`` for the connected cluster.

    GPUs: ``gpus_per_worker``, else 1 when the cluster has any. Actors: ``workers``,
    else one per GPU share, else one per ``cpus_per_worker`` CPUs less one CPU.
    """
    resources = ray.cluster_resources()
    cluster_gpus = resources.get("GPU", 0.0)
    gpus = options.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if cluster_gpus > 0 else 0.0
    if gpus > cluster_gpus:
        raise ValueError(f"{gpus} GPU(s) per worker asked, the cluster has {cluster_gpus}")
    if options.workers is not None:
        workers = options.workers
    elif gpus > 0:
        workers = int(cluster_gpus // gpus)
    else:
        workers = int((resources.get("CPU", 1.0) - 1.0) // options.cpus_per_worker)
    if workers < 1:
        raise ValueError("no Ray actor fits the cluster: lower --cpus-per-worker or give "
                         "--workers")
    return workers, options.cpus_per_worker, gpus


def _limit_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _statuses(ids: list[str], failures: dict[str, str], computed: list[bool],
              cpu_start: float) -> dict[str, np.ndarray]:
    """One row per item: id, error ("" when none), computed here, share of the call's CPU."""
    cpu = (time.process_time() - cpu_start) / max(1, len(ids))
    return {"id": np.array(ids, dtype=object),
            "error": np.array([failures.get(i, "") for i in ids], dtype=object),
            "computed": np.array(computed, dtype=bool),
            "cpu_seconds": np.full(len(ids), cpu)}
