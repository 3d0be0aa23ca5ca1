"""The HTTP recommendation service behind ``stylerec serve`` (FastAPI).

:func:`create_app` serves one saved :class:`~recsys.recommender.StyleRecommender`:

``GET /recommend?uid=&k=&remove_seen=``
    Cornac's serving shape (``{"recommendations": [item ids], "query": {...}}``)
    plus ``items`` (score parts, ``render_url``, ``image_url``), the matched
    ``style``, the flags ``fallback`` (unknown shopper without history:
    popularity and the global taste) and ``folded_in`` (online events used),
    the shopper's experiment ``variant`` and the ``model_version``.
``GET /explain?uid=&item=``
    Why an item is (or is not) in the shopper's slate: rank, score parts, what
    brought it in, the shopper's items it looks most like, the matched style.
``GET /render/{uid}/{item}``
    The item in the shopper's matched style (``image/jpeg``), from the render
    cache or rendered now. ``GET /image/{item}``: the catalog photo. Only
    catalog items are served: an id is looked up, never used as a path.
``POST /feedback``
    One event, a list, or ``{"events": [...]}`` (fields in
    :mod:`recsys.feedback`), appended to the SQLite log; a 2xx means on disk.
``GET /healthz``, ``GET /metrics`` (Prometheus text), ``POST /admin/reload``.

Online updates
--------------
Every slate is computed with the shopper's engagements (click, add to cart,
purchase) that the log received after the model was saved: a new shopper is
folded in from them (CF fold-in, taste vector, matched style); a shopper known
at fit time is folded in from their fit-time items plus the new ones, under a
private alias so that the CF model solves their vector again (ALS: the exact
least-squares fold-in; item-kNN: their rows; BPR/LMF: the weighted mean of
their items' factors) instead of keeping the fit-time one. Fit-time events are
dated at the shopper's first online event (the model keeps no event times).
Because the log is the source, every worker process sees every event and a
restart loses nothing.

Concurrency
-----------
``/recommend`` requests are micro-batched: a worker thread takes every request
waiting and answers them with one batch-first ``recommend`` call, so cost per
request falls as load rises and nothing waits when the service is idle.
``/admin/reload`` loads the new model beside the old one and swaps a reference:
requests in flight finish on the model they started with.

Examples
--------
>>> app = create_app("out/demo/model", feedback_log="out/serve/feedback.db")  # doctest: +SKIP
>>> import uvicorn; uvicorn.run(app, port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from evaluation.live_ctr import VARIANTS, assign_variant
from ground.files import file_sha256
from recsys.feedback import ENGAGEMENTS, Event, FeedbackLog, check_id
from recsys.interactions import Interactions
from recsys.recommender import Slate, StyleRecommender

log = logging.getLogger(__name__)

ALIAS_PREFIX = "\x01online:"  # ids are printable (and stripped), so no shopper id has it
ENDPOINTS = ("/recommend", "/explain", "/render", "/image", "/feedback", "/healthz",
             "/metrics", "/admin/reload")


@dataclass(frozen=True)
class Limits:
    """Input limits: slate length, events per request, request body bytes, and how
    many of a shopper's online events are folded in (the latest)."""

    max_k: int = 100
    max_events: int = 1000
    max_body_bytes: int = 1 << 20
    online_events: int = 200
    explain_depth: int = 100
    slate_cache: int = 100_000
    default_k: int = 10


@dataclass
class LoadedModel:
    """A loaded model with what the service derives from it once."""

    model: StyleRecommender
    path: Path
    version: str
    saved: float  # modification time of recommender.json: events after it are online events
    loaded: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        # slates by (shopper, k, online events seen): a slate is a pure function of the
        # model and those events, so a hit is exact; a reload starts a new model's cache
        self.slates: OrderedDict[tuple, Slate] = OrderedDict()
        self.slates_lock = threading.Lock()
        cf = self.model.cf_
        self.catalog: dict[str, str] = self.model.item_paths_
        self.user_pos = {u: i for i, u in enumerate(cf.user_ids_)}
        self.item_pos = {t: i for i, t in enumerate(self.model.ranker_.item_ids_)}

    @classmethod
    def load(cls, path: str | Path, renderer: Any = None) -> LoadedModel:
        path = Path(path)
        meta = path / "recommender.json"
        if not meta.is_file():
            raise FileNotFoundError(f"no saved StyleRecommender at {path} (recommender.json "
                                    "missing; fit one with stylerec fit --images ...)")
        saved, version = meta.stat().st_mtime, file_sha256(meta)[:12]
        return cls(StyleRecommender.load(path, renderer=renderer), path, version, saved)

    def fit_items(self, uid: str) -> tuple[np.ndarray, np.ndarray]:
        """A fit-time shopper's items and confidence weights (empty for others)."""
        pos = self.user_pos.get(uid)
        cf = self.model.cf_
        if pos is None:
            return np.zeros(0, dtype=cf.item_ids_.dtype), np.zeros(0, np.float32)
        matrix = cf.user_items_  # CSR: the row's slice of indices and data, no row copy
        lo, hi = matrix.indptr[pos], matrix.indptr[pos + 1]
        return cf.item_ids_[matrix.indices[lo:hi]], matrix.data[lo:hi]


class _Batcher:
    """Answers queued requests in batches: one ``run(uids, k)`` call per batch."""

    def __init__(self, run: Callable[[list[str], int], Any], max_batch: int = 64) -> None:
        self._run = run
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="recommend-batcher",
                                        daemon=True)
        self._thread.start()

    def submit(self, uid: str, k: int) -> Future:
        future: Future = Future()
        self._queue.put((uid, k, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            while batch[-1] is not None and len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1] is None
            batch = [b for b in batch if b is not None]
            if batch:
                try:
                    loaded, slates = self._run([uid for uid, _, _ in batch],
                                               max(k for _, k, _ in batch))
                except Exception as err:  # every waiting request gets the error
                    for _, _, future in batch:
                        future.set_exception(err)
                else:
                    for (_, k, future), slate in zip(batch, slates, strict=True):
                        future.set_result((loaded, _truncate(slate, k)))
            if stop:
                return


def _truncate(slate: Slate, k: int) -> Slate:
    if len(slate.entries) <= k:
        return slate
    return replace(slate, entries=slate.entries[:k])


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("stylerec_requests_total", "HTTP requests",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram(
            "stylerec_request_seconds", "HTTP request latency", ["endpoint"], registry=r,
            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.batch_size = Histogram("stylerec_recommend_batch_size",
                                    "Users per batched recommend call", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64))
        self.slate_cache = Counter("stylerec_slate_cache_total",
                                   "Slates by cache result", ["result"], registry=r)
        self.renders = Counter("stylerec_render_cache_total", "Render requests by cache result",
                               ["result"], registry=r)
        self.feedback = Counter("stylerec_feedback_events_total", "Feedback events stored",
                                ["type"], registry=r)
        self.model = Gauge("stylerec_model_info", "The model being served (value 1)",
                           ["version", "path"], registry=r)
        self.reloads = Counter("stylerec_model_reloads_total", "Model reloads", ["result"],
                               registry=r)


class Service:
    """State of one service process: the model, the feedback log, the renderer."""

    def __init__(self, model_dir: str | Path, feedback_log: str | Path, renderer: Any = None,
                 variants: Sequence[str] = VARIANTS, experiment: str = "stylerec",
                 limits: Limits = Limits()) -> None:
        self.metrics = _Metrics()
        self.renderer = renderer
        self.log = FeedbackLog(feedback_log)
        # without renders every shopper sees the catalog photo: there is one arm
        self.variants = tuple(variants) if renderer is not None else ("plain",)
        self.experiment = experiment
        self.limits = limits
        self.current = self.warm(LoadedModel.load(model_dir, renderer))
        self._set_model_metric(None, self.current)
        self._render_lock = threading.Lock()
        self._reload_lock = asyncio.Lock()
        self.batcher = _Batcher(self.slates)

    # -- slates ---------------------------------------------------------------

    def slates(self, uids: list[str], k: int, loaded: LoadedModel | None = None
               ) -> tuple[LoadedModel, list[Slate]]:
        """Slates for ``uids`` with their online events folded in (thread-safe).

        A shopper's slate is computed once per (model, k, online events) and kept in
        an LRU cache of ``Limits.slate_cache`` slates: a new engagement in the log
        changes the key, so the next request recomputes it.
        """
        loaded = loaded or self.current
        events = self.log.user_events(uids, ENGAGEMENTS, since=loaded.saved,
                                      limit=self.limits.online_events)
        # a shopper the model never saw, without events, gets the one fallback slate
        keys = {uid: (uid if uid in loaded.user_pos or uid in events else "", k,
                      len(events.get(uid, ())), events[uid][-1]["seq"] if uid in events else 0)
                for uid in uids}
        with loaded.slates_lock:
            found = {uid: loaded.slates[key] for uid, key in keys.items()
                     if key in loaded.slates}
            for uid in found:
                loaded.slates.move_to_end(keys[uid])
        self.metrics.slate_cache.labels("hit").inc(len(found))
        missing = [uid for uid in keys if uid not in found]
        if missing:
            self.metrics.slate_cache.labels("miss").inc(len(missing))
            ids, history = self._online_history(loaded, missing, events)
            computed = loaded.model.recommend(ids, k=k, history=history)
            self.metrics.batch_size.observe(len(missing))
            with loaded.slates_lock:
                for uid, slate in zip(missing, computed, strict=True):
                    found[uid] = slate
                    if self.limits.slate_cache > 0:
                        loaded.slates[keys[uid]] = slate
                while len(loaded.slates) > self.limits.slate_cache:
                    loaded.slates.popitem(last=False)
        return loaded, [found[uid] if found[uid].user_id == uid
                        else replace(found[uid], user_id=uid) for uid in uids]

    def warm(self, loaded: LoadedModel, batch: int = 64) -> LoadedModel:
        """Compute the ``default_k`` slate of every fit-time shopper (as many as the cache
        holds) before ``loaded`` serves: a request is then a look-up until the shopper's
        events change, also right after a start or a reload."""
        uids = list(loaded.user_pos)[:self.limits.slate_cache]
        if not uids:
            return loaded
        start = time.perf_counter()
        for at in range(0, len(uids), batch):
            self.slates(uids[at:at + batch], self.limits.default_k, loaded)
        log.info("computed the %d-item slates of %d shoppers in %.1f s", self.limits.default_k,
                 len(uids), time.perf_counter() - start)
        return loaded

    def _online_history(self, loaded: LoadedModel, uids: list[str],
                        events: dict[str, list]) -> tuple[list[str], Interactions | None]:
        """Request ids (aliases for fit-time shoppers with online events) and their history."""
        aliases, rows = {}, []
        for uid in dict.fromkeys(uids):  # a shopper asking twice in one batch counts once
            mine = [e for e in events.get(uid, ()) if e["item"] in loaded.catalog]
            if not mine:
                continue
            alias = uid
            items, weights = loaded.fit_items(uid)
            if len(items):
                alias = aliases[uid] = ALIAS_PREFIX + uid
                first = min(e["ts"] for e in mine)
                rows += [(alias, str(i), first, float(w))
                         for i, w in zip(items, weights, strict=True)]
            rows += [(alias, e["item"], e["ts"], 1.0) for e in mine]
        ids = [aliases.get(uid, uid) for uid in uids]
        if not rows:
            return ids, None
        users, items, times, values = zip(*rows, strict=True)
        # ids and values were validated on the way in: index them without from_frame's checks
        user_ids, user_codes = np.unique(np.asarray(users, dtype=str), return_inverse=True)
        item_ids, item_codes = np.unique(np.asarray(items, dtype=str), return_inverse=True)
        events = pd.DataFrame({"user": user_codes.astype(np.int32),
                               "item": item_codes.astype(np.int32),
                               "time": pd.to_datetime(np.asarray(times), unit="s"),
                               "value": np.asarray(values, dtype=np.float64)})
        return ids, Interactions(events, user_ids, item_ids, weighting="value")

    def history_items(self, loaded: LoadedModel, uid: str) -> list[str]:
        """The shopper's items: fit-time ones, then online engagements."""
        items = [str(i) for i in loaded.fit_items(uid)[0]]
        online = self.log.user_events([uid], ENGAGEMENTS, since=loaded.saved,
                                      limit=self.limits.online_events).get(uid, [])
        return list(dict.fromkeys(items + [e["item"] for e in online]))

    def variant(self, uid: str) -> str:
        return assign_variant(uid, self.variants, self.experiment)

    # -- model swaps ----------------------------------------------------------

    def _set_model_metric(self, old: LoadedModel | None, new: LoadedModel) -> None:
        if old is not None:
            self.metrics.model.remove(old.version, str(old.path))
        self.metrics.model.labels(new.version, str(new.path)).set(1)

    async def reload(self, model_dir: str | Path | None) -> LoadedModel:
        async with self._reload_lock:
            old = self.current
            new = await run_in_threadpool(LoadedModel.load, model_dir or old.path,
                                          self.renderer)
            await run_in_threadpool(self.warm, new)
            self.current = new  # one reference swap: in-flight requests keep the old model
            self._set_model_metric(old, new)
            return new

    # -- rendering ------------------------------------------------------------

    def render(self, loaded: LoadedModel, slate: Slate, item: str) -> Path:
        """The item in the shopper's style, as ``recommend(render=True)`` renders it (the
        personal mix for a styler with a style code); ``LookupError`` if it can't be."""
        with self._render_lock:  # one styler, one render at a time
            hits = self.renderer.stats["hits"]
            (paths,), (errors,) = loaded.model.render([[item]], [slate.style])
            hit = self.renderer.stats["hits"] > hits
        if errors[0]:
            raise LookupError(f"cannot render {item}: {errors[0]}")
        self.metrics.renders.labels("hit" if hit else "miss").inc()
        return Path(paths[0])


# -- the app ------------------------------------------------------------------


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


def _endpoint(path: str) -> str:
    for name in ENDPOINTS:
        if path == name or path.startswith(name + "/"):
            return name
    return "other"


class _Guard:
    """ASGI middleware: API key check, request counts and latency per endpoint."""

    def __init__(self, app: Any, service: Service, api_key: str | None) -> None:
        self.app, self.service = app, service
        self.api_key = None if api_key is None else api_key.encode()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = _endpoint(scope["path"])
        status = [500]

        async def record(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        start = time.perf_counter()
        try:
            if self.api_key is not None and endpoint != "/healthz":
                given = dict(scope["headers"]).get(b"x-api-key", b"")
                if not hmac.compare_digest(given, self.api_key):
                    await _error(401, "missing or wrong X-API-Key header")(scope, receive,
                                                                             record)
                    return
            await self.app(scope, receive, record)
        finally:
            metrics = self.service.metrics
            metrics.requests.labels(endpoint, str(status[0])).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


def _check_uid(uid: str | None) -> str:
    if uid is None:
        raise HTTPException(400, "uid is required")
    try:
        return check_id(uid, "uid")
    except ValueError as err:
        raise HTTPException(400, str(err)) from None


def _check_item(loaded: LoadedModel, item: str | None) -> str:
    if item is None:
        raise HTTPException(400, "item is required")
    try:
        check_id(item, "item")
    except ValueError as err:
        raise HTTPException(400, str(err)) from None
    if item not in loaded.catalog:
        raise HTTPException(404, f"item {item!r} is not in the catalog")
    return item


def _style(slate: Slate) -> dict[str, Any] | None:
    if slate.style is None:
        return None
    return {"id": slate.style.style_id, "similarity": round(slate.style.similarity, 6)}


def _number(x: float) -> float | None:
    return round(float(x), 6) if math.isfinite(x) else None


def create_app(
    model_dir: str | Path,
    feedback_log: str | Path = "out/serve/feedback.db",
    renderer: Any = None,
    api_key: str | None = None,
    variants: Sequence[str] = VARIANTS,
    experiment: str = "stylerec",
    limits: Limits = Limits(),
) -> FastAPI:
    """The service app for the model saved in ``model_dir``.

    Parameters
    ----------
    model_dir : str or Path
        A folder written by ``StyleRecommender.save`` (``stylerec fit --images``).
    feedback_log : str or Path
        SQLite file of the feedback events (created when absent).
    renderer : stylers.Renderer, optional
        Renders for ``/render`` (JPEG); ``None`` disables rendering and the
        styled variant (every shopper sees the catalog photo).
    api_key : str, optional
        Required in the ``X-API-Key`` header of every request but ``/healthz``.
    variants : sequence of str
        Experiment arms; ``"styled"`` shows renders, any other arm the photo.
    experiment : str
        Salt of the variant hash (a new experiment reshuffles the shoppers).
    limits : Limits
        Input limits.
    """
    if renderer is not None and getattr(renderer, "image_format", "jpg") != "jpg":
        raise ValueError("the service serves JPEG renders: build the Renderer with "
                         "image_format='jpg'")
    service = Service(model_dir, feedback_log, renderer, variants, experiment, limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.batcher.close()
        service.log.close()

    app = FastAPI(title="stylerec", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.service = service

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, err: RequestValidationError) -> JSONResponse:
        parts = [f"{e['loc'][-1]}: {e['msg']}" for e in err.errors()]
        return _error(400, "; ".join(parts) or "bad request")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, f"internal error: {type(err).__name__}")

    def item_json(uid: str, variant: str, entry: Any) -> dict[str, Any]:
        render = (f"/render/{quote(uid, safe='')}/{quote(entry.item_id, safe='')}"
                  if service.renderer is not None else None)
        image = f"/image/{quote(entry.item_id, safe='')}"
        return {"item": entry.item_id, "score": _number(entry.score), "cf": _number(entry.cf),
                "taste": _number(entry.taste), "cold": entry.cold, "same_family": entry.group,
                "render_url": render,
                "image_url": render if variant == "styled" and render else image}

    @app.get("/recommend")
    async def recommend(uid: str | None = None, k: int = limits.default_k,
                        remove_seen: bool = True) -> JSONResponse:
        uid = _check_uid(uid)
        if not 1 <= k <= service.limits.max_k:
            raise HTTPException(400, f"k must be from 1 to {service.limits.max_k}, got {k}")
        if not remove_seen:
            raise HTTPException(400, "remove_seen=false is not supported: a StyleRecommender "
                                     "never recommends what the shopper already has")
        loaded, slate = await asyncio.wrap_future(service.batcher.submit(uid, k))
        variant = service.variant(uid)
        return JSONResponse({
            "recommendations": slate.item_ids,
            "query": {"uid": uid, "k": k, "remove_seen": remove_seen},
            "items": [item_json(uid, variant, e) for e in slate.entries],
            "style": _style(slate), "fallback": slate.fallback, "folded_in": slate.folded_in,
            "variant": variant, "model_version": loaded.version,
        })

    @app.get("/explain")
    async def explain(uid: str | None = None, item: str | None = None) -> JSONResponse:
        uid = _check_uid(uid)
        loaded = service.current
        item = _check_item(loaded, item)
        depth = service.limits.explain_depth
        loaded, (slate,) = await run_in_threadpool(service.slates, [uid], depth)
        history = await run_in_threadpool(service.history_items, loaded, uid)
        body: dict[str, Any] = {
            "uid": uid, "item": item, "rank": None, "depth": depth,
            "seen": item in history, "style": _style(slate), "fallback": slate.fallback,
            "folded_in": slate.folded_in, "taste_fallback": slate.taste_fallback,
            "similar_history": _similar(loaded, item, history), "sources": [],
            "reasons": [], "ranked_by": slate.ranked_by, "model_version": loaded.version}
        for rank, entry in enumerate(slate.entries, 1):
            if entry.item_id == item:
                body |= {"rank": rank, "score": _number(entry.score), "cf": _number(entry.cf),
                         "taste": _number(entry.taste), "cold": entry.cold,
                         "same_family": entry.group,
                         "sources": (["popularity" if slate.fallback else "cf"]
                                     if not entry.cold else []) + ["taste"]
                         + (["same-family"] if entry.group else []),
                         # the learned ranker's largest feature contributions
                         "reasons": [{"feature": name, "contribution": _number(value)}
                                     for name, value in entry.reasons]}
                break
        return JSONResponse(body)

    @app.get("/render/{uid}/{item}")
    async def render(uid: str, item: str) -> FileResponse:
        uid = _check_uid(uid)
        loaded = service.current
        item = _check_item(loaded, item)
        if service.renderer is None:
            raise HTTPException(404, "rendering is disabled on this service")
        if loaded.model.styles_ is None:
            raise HTTPException(404, "the model has no style references to render in")
        loaded, (slate,) = await run_in_threadpool(service.slates, [uid], 1)
        try:
            path = await run_in_threadpool(service.render, loaded, slate, item)
        except LookupError as err:
            raise HTTPException(404, str(err)) from None
        return FileResponse(path, media_type="image/jpeg")

    @app.get("/image/{item}")
    async def image(item: str) -> FileResponse:
        item = _check_item(service.current, item)
        return FileResponse(service.current.catalog[item])

    @app.post("/feedback")
    async def feedback(request: Request) -> JSONResponse:
        events = _parse_events(await _read_body(request, service.limits.max_body_bytes),
                               service)
        stored = await run_in_threadpool(service.log.append, events)
        for event in events:
            service.metrics.feedback.labels(event.type).inc()
        return JSONResponse({"accepted": len(events), "stored": stored})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        loaded = service.current
        return JSONResponse({"status": "ok", "model_version": loaded.version,
                             "model_dir": str(loaded.path), "items": len(loaded.catalog),
                             "users": len(loaded.user_pos), "variants": list(service.variants)})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload")
    async def reload(request: Request) -> JSONResponse:
        raw = await _read_body(request, service.limits.max_body_bytes)
        body = _json(raw) if raw.strip() else {}
        if not isinstance(body, dict) or set(body) - {"model_dir"}:
            raise HTTPException(400, 'the body must be empty or {"model_dir": "..."}')
        previous = service.current.version
        try:
            loaded = await service.reload(body.get("model_dir"))
        except (FileNotFoundError, ValueError, KeyError, TypeError) as err:
            service.metrics.reloads.labels("failed").inc()
            raise HTTPException(400, f"reload failed, still serving {previous}: {err}") from None
        service.metrics.reloads.labels("ok").inc()
        return JSONResponse({"model_version": loaded.version, "previous": previous,
                             "model_dir": str(loaded.path)})

    app.add_middleware(_Guard, service=service, api_key=api_key)
    return app


def _similar(loaded: LoadedModel, item: str, history: list[str], n: int = 3
             ) -> list[dict[str, Any]]:
    """The shopper's items that look most like ``item`` (cosine of the item embeddings)."""
    vectors = loaded.model.ranker_.item_vectors_
    at = loaded.item_pos.get(item)
    mine = [(h, loaded.item_pos[h]) for h in history if h in loaded.item_pos and h != item]
    if at is None or not mine:
        return []
    sims = vectors[[p for _, p in mine]] @ vectors[at]
    best = np.argsort(-sims, kind="stable")[:n]
    return [{"item": mine[j][0], "similarity": round(float(sims[j]), 6)} for j in best]


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HTTPException(413, f"request body over the {limit}-byte limit")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"request body over the {limit}-byte limit")
    return bytes(body)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HTTPException(400, f"the body is not valid JSON: {err}") from None


def _parse_events(raw: bytes, service: Service) -> list[Event]:
    body = _json(raw)
    if isinstance(body, dict) and "events" in body:
        if set(body) != {"events"} or not isinstance(body["events"], list):
            raise HTTPException(400, 'a batch is {"events": [event, ...]}')
        body = body["events"]
    items = body if isinstance(body, list) else [body]
    if not items:
        raise HTTPException(400, "no events in the body")
    if len(items) > service.limits.max_events:
        raise HTTPException(400, f"{len(items)} events in one request; the limit is "
                                 f"{service.limits.max_events}")
    now, events = time.time(), []
    for n, raw_event in enumerate(items):
        try:
            event = Event.parse(raw_event, now)
        except ValueError as err:
            where = f"event {n}: " if isinstance(body, list) else ""
            raise HTTPException(400, f"{where}{err}") from None
        if event.variant is None:
            event = Event(event.uid, event.item, event.type, event.ts,
                          service.variant(event.uid), event.position, event.event_id)
        elif event.variant not in service.variants:
            raise HTTPException(400, f"event {n}: variant {event.variant!r} is not one of "
                                     f"{list(service.variants)}")
        events.append(event)
    return events
