"""``stylerec embed`` and ``stylerec render-batch``: fill the embedding store or the render
cache for a whole catalog, on this machine or on a Ray cluster.

Both jobs list their work on the driver first and keep only what is missing: images
whose content hash is not in the :class:`~recsys.embedding_store.EmbeddingStore`,
(item, style) renders whose cache file does not exist. Renders are keyed by item
image × style image × styler, so the work is the distinct pairs, however many users
share them. The ``local`` engine then runs the work in this process; the ``ray``
engine (:mod:`stylerec.ray_jobs`, which alone imports Ray) runs it as a Ray Data job.
Both write through the same store and cache, atomically, so a killed job rerun does
only what is left, and an unreadable image is reported by id without stopping the job.

Examples
--------
From the shell::

    stylerec embed --images data/images --encoder efficientnet-lite0 --cache-dir out/emb
    stylerec embed --images data/images --encoder efficientnet-lite0 --cache-dir out/emb \\
        --engine ray --ray-address auto
    stylerec render-batch --model-dir out/model --users all --styler color \\
        --cache-dir out/renders --engine ray
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys.catalog import Catalog
from stylerec.render_cli import add_styler_arguments, renderer_from_args

if TYPE_CHECKING:
    from recsys.encoders import ImageEncoder
    from stylers.renderer import Renderer

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")


@dataclass
class RayOptions:
    """How a job runs on Ray.

    Parameters
    ----------
    address
        Cluster to join (``"auto"``, ``"ray://host:10001"``); ``None`` starts a local one.
    workers
        Actors, each holding one model; default: one per GPU of the cluster, else
        one per ``cpus_per_worker`` CPUs, less one CPU for Ray's own tasks.
    cpus_per_worker
        Logical CPUs reserved per actor (fractions allowed); on CPU it is also the
        actor's torch thread count (at least 1).
    gpus_per_worker
        GPUs per actor; default: 1 when the cluster has GPUs, else 0.
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None


@dataclass
class JobReport:
    """What a batch job did.

    ``listed``: distinct work units (images, item × style renders) asked for;
    ``cached``: of those, already in the store or cache; ``computed``: done by this
    run; ``left``: missing but not attempted (``limit``); ``failures``: id → reason;
    ``seconds``: wall time of the whole job (listing, cluster start, computing; not the
    interpreter's start); ``startup_seconds``: of starting or joining the Ray cluster;
    ``compute_seconds``: of the computing (on Ray: starting the actors, which load the
    model, and the work); ``compute_cpu_seconds``: CPU time of the computing, all
    threads (locally this process's; on Ray the actors' calls plus the driver's).
    """

    engine: str
    listed: int
    cached: int
    computed: int = 0
    left: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    startup_seconds: float = 0.0
    compute_seconds: float = 0.0
    compute_cpu_seconds: float = 0.0

    @property
    def per_second(self) -> float:
        """Work units computed per second of computing."""
        return self.computed / self.compute_seconds if self.compute_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"per_second": self.per_second}

    def summary(self, unit: str) -> str:
        text = (f"{self.engine}: {self.listed} {unit}, {self.cached} cached, {self.computed} "
                f"computed ({self.per_second:.1f}/s), {len(self.failures)} failed")
        return text + (f", {self.left} left (--limit)" if self.left else "")


# --------------------------------------------------------------------------- embedding


@dataclass
class EmbedWork:
    """Images to encode: parallel lists of item id, path and content hash."""

    item_ids: list[str]
    paths: list[str]
    hashes: list[str]

    def __len__(self) -> int:
        return len(self.item_ids)


def embed_catalog(
    catalog: Catalog,
    make_encoder: Callable[[], ImageEncoder],
    cache_dir: str | Path,
    engine: str = "local",
    batch_size: int | None = None,
    shard_size: int = 1024,
    limit: int | None = None,
    ray: RayOptions | None = None,
    progress: bool = True,
) -> JobReport:
    """Fill the embedding store under ``cache_dir`` with every catalog image it lacks.

    Parameters
    ----------
    catalog
        The images (item id → path).
    make_encoder
        Builds the encoder (called once here for its identity, and once per Ray
        actor); must be picklable for ``engine="ray"``, e.g.
        ``functools.partial(create_encoder, "efficientnet-lite0")``.
    cache_dir
        Root of the :class:`~recsys.embedding_store.EmbeddingStore`.
    engine
        ``"local"`` or ``"ray"``.
    batch_size
        Images per forward (default: the encoder's).
    shard_size
        Rows per store shard; on Ray also the rows one actor call encodes.
    limit
        Encode at most this many missing images (the rest is left for a rerun).
    ray
        Cluster and actor options for ``engine="ray"``.
    progress
        Show a progress bar.

    Returns
    -------
    JobReport

    Examples
    --------
    >>> from recsys.encoders import create_encoder
    >>> make = functools.partial(create_encoder, "efficientnet-lite0")
    >>> report = embed_catalog(Catalog.from_directory("data/images"), make,
    ...                        "out/emb", engine="ray")  # doctest: +SKIP
    """
    from recsys.embedding_store import EmbeddingStore

    _check_engine(engine)
    start = time.perf_counter()
    store = EmbeddingStore(cache_dir, make_encoder(), shard_size=shard_size)
    ids = catalog.item_ids
    hashes, todo, hits, failures = store.plan(ids, [catalog.path(i) for i in ids])
    first = list(todo.values())
    work = EmbedWork([ids[i] for i in first], [str(catalog.path(ids[i])) for i in first],
                     list(todo))
    report = JobReport(engine, listed=len(set(hashes) - {None}) + len(failures),
                       cached=hits, failures=failures)
    if limit is not None and len(work) > limit:
        report.left = len(work) - limit
        work = EmbedWork(work.item_ids[:limit], work.paths[:limit], work.hashes[:limit])
    log.info("embed %s: %d images listed, %d cached, %d to compute, %d unreadable",
             store.path_.name, len(ids), hits, len(work), len(failures))
    if len(work) and engine == "ray":
        report.startup_seconds = _connect(ray)
    compute_start, cpu_start = time.perf_counter(), time.process_time()
    worker_cpu = 0.0
    if len(work) and engine == "local":
        unreadable = store.write(work.item_ids, work.paths, work.hashes, batch_size, progress)
        report.computed = len(work) - len(unreadable)
        report.failures.update(unreadable)
    elif len(work):
        from stylerec.ray_jobs import embed_on_ray

        report.computed, ray_failures, worker_cpu = embed_on_ray(
            work, make_encoder, cache_dir, batch_size, shard_size, ray or RayOptions(),
            progress)
        report.failures.update(ray_failures)
    report.compute_seconds = time.perf_counter() - compute_start
    report.compute_cpu_seconds = time.process_time() - cpu_start + worker_cpu
    report.seconds = time.perf_counter() - start
    return report


# --------------------------------------------------------------------------- rendering

# (item id, item image, style id, style image or None for stylers that ignore it)
Pair = tuple[str, str, str, str | None]


def pair_id(pair: Pair) -> str:
    """How a render is named in reports: ``item/style``."""
    return f"{pair[0]}/{pair[2]}"


def distinct_pairs(renderer: Renderer, pairs: Iterable[Pair]
                   ) -> tuple[list[Pair], int, dict[str, str], int]:
    """Split renders into those to do and those cached; each cache key once.

    Returns
    -------
    tuple
        ``(todo, cached, failures, listed)``: pairs whose render is missing (grouped
        by style image, so a worker's batch shares its style), the number already in
        the cache, pair id → reason for pairs whose image files are missing, and the
        number of distinct renders asked for.
    """
    todo: dict[str, Pair] = {}
    cached: set[str] = set()
    failures: dict[str, str] = {}
    for pair in pairs:
        try:
            key = renderer.cache_key(pair[1], pair[3])
        except (FileNotFoundError, ValueError) as err:
            failures[pair_id(pair)] = str(err)
            continue
        if key in todo or key in cached:
            continue
        if renderer.cache_path(key).exists():
            cached.add(key)
        else:
            todo[key] = pair
    for pid, reason in failures.items():
        log.warning("render %s: %s", pid, reason)
    ordered = sorted(todo.values(), key=lambda p: (str(p[3]), p[0]))
    return ordered, len(cached), failures, len(todo) + len(cached) + len(failures)


def render_pairs(renderer: Renderer, pairs: Sequence[Pair]) -> dict[str, str]:
    """Render ``pairs`` through the cache; an unreadable image fails only its own pairs.

    :meth:`~stylers.renderer.Renderer.render` stops at the first image it cannot
    read (the error names the file); the pairs using that file are reported and the
    rest rendered again, which costs nothing for those already written.

    Returns
    -------
    dict
        Pair id → reason, for the pairs that could not be rendered.
    """
    from ground.images import ImageLoadError

    failures: dict[str, str] = {}
    pending = list(pairs)
    while pending:
        try:
            renderer.render(pending)
            break
        except ImageLoadError as err:
            bad = [p for p in pending if err.source in (str(p[1]), str(p[3]))]
            if not bad:
                raise
            for pair in bad:
                failures[pair_id(pair)] = str(err)
                log.warning("render %s: %s", pair_id(pair), err)
            pending = [p for p in pending if p not in bad]
    return failures


def render_batch(
    pairs: Iterable[Pair],
    make_renderer: Callable[[], Renderer],
    engine: str = "local",
    shard_size: int = 64,
    limit: int | None = None,
    ray: RayOptions | None = None,
    progress: bool = True,
) -> JobReport:
    """Fill the render cache with every distinct (item, style) render of ``pairs``.

    Parameters
    ----------
    pairs
        ``(item_id, item_image, style_id, style_image)``, repeats allowed.
    make_renderer
        Builds the :class:`~stylers.renderer.Renderer` (here for the cache keys, and
        once per Ray actor); must be picklable for ``engine="ray"``.
    engine
        ``"local"`` or ``"ray"``.
    shard_size
        Renders one Ray actor call does (and the unit of the progress bar).
    limit
        Render at most this many missing pairs.
    ray
        Cluster and actor options for ``engine="ray"``.
    progress
        Show a progress bar.
    """
    _check_engine(engine)
    start = time.perf_counter()
    renderer = make_renderer()
    todo, cached, failures, listed = distinct_pairs(renderer, pairs)
    report = JobReport(engine, listed=listed, cached=cached, failures=failures)
    if limit is not None and len(todo) > limit:
        report.left = len(todo) - limit
        todo = todo[:limit]
    log.info("render-batch %s: %d renders listed, %d cached, %d to render, %d failed",
             renderer.styler.name, listed, cached, len(todo), len(failures))
    if todo and engine == "ray":
        report.startup_seconds = _connect(ray)
    compute_start, cpu_start = time.perf_counter(), time.process_time()
    worker_cpu = 0.0
    if todo and engine == "local":
        renderer.progress = progress
        before = renderer.stats["rendered"]
        report.failures.update(render_pairs(renderer, todo))
        report.computed = renderer.stats["rendered"] - before
    elif todo:
        from stylerec.ray_jobs import render_on_ray

        report.computed, ray_failures, worker_cpu = render_on_ray(
            todo, make_renderer, shard_size, ray or RayOptions(), progress)
        report.failures.update(ray_failures)
    report.compute_seconds = time.perf_counter() - compute_start
    report.compute_cpu_seconds = time.process_time() - cpu_start + worker_cpu
    report.seconds = time.perf_counter() - start
    return report


def pipeline_pairs(model_dir: Path, users: Sequence[str] | None, items: Sequence[str] | None,
                   styles: Sequence[str] | None, k: int,
                   score_budget: int = 100_000_000) -> Iterable[Pair]:
    """The renders a saved pipeline needs: each user's slate in their matched style, or
    the ``items`` × ``styles`` grid (``["all"]``: every rankable item / every style).

    Slates are computed for as many users at a time as keep the dense users × items
    score matrices within ``score_budget`` entries (1000 users for 100k items, 10 for
    10M), so memory does not grow with the catalog."""
    from recsys.recommender import StyleRecommender

    model = StyleRecommender.load(model_dir)
    chunk = max(1, min(1000, score_budget // max(1, len(model.item_paths_))))
    if model.styles_ is None:
        raise ValueError(f"{model_dir} was fitted without style references (fit --styles)")
    if users is None:
        item_ids = _resolve_ids(items, model.item_paths_, "item", model_dir)
        style_ids = _resolve_ids(styles, model.style_paths_, "style", model_dir)
        return ((i, model.item_paths_[i], s, model.style_paths_[s])
                for s in style_ids for i in item_ids)
    if list(users) == ["all"]:
        users = [str(u) for u in model.cf_.user_ids_]

    def slates() -> Iterable[Pair]:
        for begin in range(0, len(users), chunk):
            for slate in model.recommend(users[begin:begin + chunk], k=k):
                for entry in slate.entries:
                    yield (entry.item_id, model.item_paths_[entry.item_id],
                           slate.style.style_id, slate.style.path)

    return slates()


def _resolve_ids(asked: Sequence[str] | None, known: dict[str, str], what: str,
                 model_dir: Path) -> list[str]:
    if not asked:
        raise ValueError("give --users, or both --items and --styles")
    if list(asked) == ["all"]:
        return list(known)
    unknown = [i for i in asked if i not in known]
    if unknown:
        raise KeyError(f"{what}(s) {unknown[:5]} not in the pipeline at {model_dir}")
    return list(asked)


def _connect(options: RayOptions | None) -> float:
    """Start or join the Ray cluster; returns the seconds it took."""
    from stylerec.ray_jobs import connect

    start = time.perf_counter()
    connect(options or RayOptions())
    return time.perf_counter() - start


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")


# --------------------------------------------------------------------------- CLI


def add_batch_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``embed`` and ``render-batch`` sub-commands to ``subparsers``."""
    embed = subparsers.add_parser(
        "embed", help="fill the embedding store for a catalog (locally or on Ray)",
        description="Encode every image under --images that the embedding store lacks "
                    "(keyed by encoder and image content), locally or as a Ray Data job. "
                    "Resumable: rerun after a crash and only the rest is computed.")
    embed.add_argument("--images", type=Path, required=True,
                       help="catalog image folder: <root>/**/<item id>.<jpg|png|...>")
    embed.add_argument("--encoder", default="efficientnet-lite0",
                       help="image encoder (default: efficientnet-lite0)")
    embed.add_argument("--cache-dir", type=Path, required=True, help="embedding store root")
    embed.add_argument("--batch-size", type=int, help="images per forward (default: the "
                                                      "encoder's)")
    embed.add_argument("--device", help="encoder device (default: CUDA when present)")
    _add_engine_arguments(embed, shard_size=1024)
    embed.set_defaults(func=cmd_embed)

    render = subparsers.add_parser(
        "render-batch", help="fill the render cache for many users' slates or a grid",
        description="Render, through the render cache, each user's slate in their matched "
                    "style (--users) or every --items x --styles pair of a saved pipeline. "
                    "Work is the distinct item x style renders; cached ones are skipped.")
    render.add_argument("--model-dir", type=Path, required=True,
                        help="pipeline saved by `stylerec fit --images ... --styles ...`")
    render.add_argument("--users", nargs="+", metavar="ID",
                        help="user ids, or `all` (every fitted user)")
    render.add_argument("--items", nargs="+", metavar="ID", help="item ids, or `all`")
    render.add_argument("--styles", nargs="+", metavar="ID", help="style ids, or `all`")
    render.add_argument("-k", type=int, default=10, help="slate length with --users")
    add_styler_arguments(render)
    _add_engine_arguments(render, shard_size=64)
    render.set_defaults(func=cmd_render_batch)


def _add_engine_arguments(parser: argparse.ArgumentParser, shard_size: int) -> None:
    g = parser.add_argument_group("engine")
    g.add_argument("--engine", choices=ENGINES, default="local",
                   help="run here (local) or as a Ray Data job (ray)")
    g.add_argument("--ray-address", help="Ray cluster to join (e.g. auto); default: start "
                                         "a local one")
    g.add_argument("--workers", type=int, help="Ray actors (default: one per GPU, else per "
                                               "--cpus-per-worker CPUs less one)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0,
                   help="CPUs per Ray actor; its torch threads on CPU (default 1)")
    g.add_argument("--gpus-per-worker", type=float,
                   help="GPUs per Ray actor (default: 1 when the cluster has GPUs)")
    g.add_argument("--shard-size", type=int, default=shard_size,
                   help=f"work per store shard / Ray actor call (default {shard_size})")
    g.add_argument("--limit", type=int, help="compute at most N missing items, leave the rest")
    g.add_argument("--json", action="store_true", help="print the job report as JSON")


def _ray_options(args: argparse.Namespace) -> RayOptions:
    return RayOptions(args.ray_address, args.workers, args.cpus_per_worker,
                      args.gpus_per_worker)


def _print_report(report: JobReport, args: argparse.Namespace, unit: str) -> int:
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(report.summary(unit))
        for what, reason in sorted(report.failures.items()):
            print(f"  failed {what}: {reason}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """Handler of ``stylerec embed``."""
    from recsys.encoders import create_encoder

    options = {} if args.device is None else {"device": args.device}
    make_encoder = functools.partial(create_encoder, args.encoder, **options)
    report = embed_catalog(Catalog.from_directory(args.images), make_encoder, args.cache_dir,
                           args.engine, args.batch_size, args.shard_size, args.limit,
                           _ray_options(args), progress=not args.json)
    return _print_report(report, args, "images")


def cmd_render_batch(args: argparse.Namespace) -> int:
    """Handler of ``stylerec render-batch``."""
    if (args.users is None) == (args.items is None and args.styles is None):
        raise ValueError("give either --users or --items with --styles")
    pairs = pipeline_pairs(args.model_dir, args.users, args.items, args.styles, args.k)
    args.progress = args.progress and not args.json
    make_renderer = functools.partial(renderer_from_args, args)
    report = render_batch(pairs, make_renderer, args.engine, args.shard_size, args.limit,
                          _ray_options(args), progress=args.progress)
    return _print_report(report, args, "renders")
