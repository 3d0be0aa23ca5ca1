"""Adapters that give the visual recommenders the interface the protocol scores.

:class:`recsys.recommender.StyleRecommender` returns a list of ``Slate`` objects
from ``recommend(user_ids, k)`` and is fitted with a catalog as well as the
interactions. :class:`StyleSlates` wraps it as ``fit(Interactions)`` +
``recommend(user_ids, k, filter_seen=True) -> (item_ids, scores)``, so the
runner evaluates it like any CF model, including tuning (e.g. the blend weight
on a validation split) and sweeps.

The runner knows them as ``"model": "taste"`` (:func:`taste_only`: ``blend=1``
and only taste candidates) and ``"model": "blend"`` (:class:`StyleSlates`:
CF ⊕ taste). :class:`SourceSlates` (``"model": "sources"``) turns a chain of
candidate sources (:mod:`recsys.sources`) into a recommender, so the baselines a
practitioner would beat first (repurchase, product family, recent popularity) are
evaluated with the same protocol.

Both are fitted like a deployment would be: on the events before the cut-off, with
only the items that have one known to the CF part; the visual models rank the
declared catalog of the window (``fit(..., catalog_items=...)``).

Examples
--------
A config entry (the embedding cache makes refits cheap)::

    {"name": "blend", "model": "blend",
     "params": {"images": "../shared/data/hm/images", "cache_dir": "cache/embeddings",
                "cf_params": {"factors": 64, "regularization": 0.1, "alpha": 10.0}},
     "tune": {"grid": {"blend": [0.25, 0.5, 0.75]}, "metric": "recall@50",
              "validation": {"method": "temporal_user", "test_fraction": 0.2}}}
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.interactions import Interactions


def observed(interactions: Interactions) -> Interactions:
    """The same events with only the users and items that have one in the vocabulary.

    :meth:`Interactions.select` keeps the whole vocabulary, so a training split still
    knows every test item; a deployed model would not.
    """
    ev = interactions.events
    users, user_codes = np.unique(ev["user"].to_numpy(), return_inverse=True)
    items, item_codes = np.unique(ev["item"].to_numpy(), return_inverse=True)
    events = ev.assign(user=user_codes.astype(np.int32), item=item_codes.astype(np.int32))
    return Interactions(events.reset_index(drop=True), interactions.user_ids[users],
                        interactions.item_ids[items], interactions.weighting,
                        interactions.half_life_days, interactions.source)


class SourceSlates:
    """A chain of candidate sources as a recommender: each source's items in turn.

    Slots are filled from the first source, then the next one's items not listed yet,
    and so on (e.g. repurchase, then product family, then recent best sellers: the
    H&M competition's strongest simple baseline). Scores are descending ranks.

    Parameters
    ----------
    chain : list of dict
        ``{"source": name in recsys.sources.SOURCES, "params": {...}}`` entries.
    images, cache_dir, encoder, embedding_dim
        For visual sources (``visual-neighbours``, ``new-arrivals``): the embeddings
        they search, as :class:`LearnedSlates` builds them (restricted to the
        window's declared catalog, whitened principal components).

    Examples
    --------
    >>> model = SourceSlates([{"source": "repurchase", "params": {"half_life_days": 14}},
    ...                       {"source": "recent-popularity", "params": {"days": 7}}])
    >>> [s.name for s in model.sources]
    ['repurchase', 'recent-popularity']
    """

    def __init__(self, chain: Sequence[dict[str, Any]], images: str | None = None,
                 cache_dir: str = "out/cache/embeddings", encoder: str = "efficientnet-lite0",
                 embedding_dim: int = 128) -> None:
        from recsys.sources import SOURCES
        from recsys.visual_sources import VisualSource

        if not chain:
            raise ValueError("chain needs at least one source")
        self.chain = [dict(c) for c in chain]
        self.sources = [SOURCES.create(c["source"], **c.get("params", {})) for c in self.chain]
        if images is None and any(isinstance(s, VisualSource) for s in self.sources):
            raise ValueError("a visual source in the chain needs images= (the image folder)")
        self.images = images
        self.cache_dir = cache_dir
        self.encoder = encoder
        self.embedding_dim = embedding_dim

    def fit(self, interactions: Interactions,
            catalog_items: Sequence[str] | None = None) -> SourceSlates:
        """Fit every source on the events before the cut-off; visual sources search the
        embeddings of ``catalog_items`` (the window's declared catalog; default: every
        image)."""
        from recsys.visual_sources import VisualSource

        if self.images is not None:
            ids, vectors = _catalog_vectors(self.images, self.cache_dir, self.encoder,
                                            self.embedding_dim, catalog_items)
        for source in self.sources:
            if isinstance(source, VisualSource):
                source.set_embeddings(ids, vectors)
            source.fit(interactions)
        self.user_ids_ = interactions.user_ids
        self.seen_ = interactions
        return self

    def recommend(
        self, user_ids: Sequence[str], k: int = 10, filter_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` item ids per user (``""`` / ``-inf`` padding), seen items kept
        unless ``filter_seen``."""
        user_ids = [str(u) for u in user_ids]
        seen: list[set[str]] = [set() for _ in user_ids]
        if filter_seen:
            ev = self.seen_.events
            frame = pd.DataFrame({"u": self.seen_.user_ids[ev["user"].to_numpy()],
                                  "i": self.seen_.item_ids[ev["item"].to_numpy()]})
            mine = frame[frame["u"].isin(set(user_ids))].groupby("u")["i"].agg(set)
            seen = [mine.get(u, set()) for u in user_ids]
        # ask each source for enough to fill k after dropping repeats and seen items
        pools = [source.candidates(user_ids, k + max(map(len, seen), default=0))[0]
                 for source in self.sources]
        ids = np.full((len(user_ids), k), "", dtype=object)
        for row in range(len(user_ids)):
            taken: list[str] = []
            skip = set(seen[row])
            for pool in pools:
                for item in pool[row]:
                    if len(taken) == k:
                        break
                    if item and item not in skip:
                        taken.append(item)
                        skip.add(item)
            ids[row, :len(taken)] = taken
        filled = ids != ""
        scores = np.where(filled, (k - np.arange(k)).astype(np.float32), -np.inf)
        return ids.astype(str), scores.astype(np.float32)


@lru_cache(maxsize=4)
def _image_catalog(images: str) -> Any:
    """The image folder's catalog, listed once per process (a backtest refits per window)."""
    from recsys.catalog import Catalog

    return Catalog.from_directory(images)


class StyleSlates:
    """``StyleRecommender`` behind the batch ``recommend`` interface of the CF models.

    Parameters
    ----------
    images : str or Path
        Catalog image folder (``Catalog.from_directory``: the id is the file stem).
    blend : float
        Weight of the taste part (``StyleRecommender(blend=...)``).
    groups : str or Path, optional
        CSV of item groups for the ranker's group part (``ranker_params=
        {"group_weight": ...}``), e.g. H&M ``articles.csv`` whose ``product_code``
        is shared by the colour variants of one garment.
    group_columns : pair of str
        The item id and group columns of ``groups``.
    group_prefix : int, optional
        Instead of a file: items whose ids share their first ``group_prefix``
        characters form a group (H&M: the first 7 digits of an article id are
        its product code, the last 3 the colour variant).
    **options
        Other ``StyleRecommender`` arguments: ``cf_model``, ``cf_params``,
        ``encoder``, ``encoder_params``, ``cache_dir``, ``taste_params``,
        ``ranker_params``.

    Examples
    --------
    >>> model = StyleSlates("../shared/data/hm/images", blend=0.5,
    ...                     cache_dir="cache/embeddings").fit(train)  # doctest: +SKIP
    >>> item_ids, scores = model.recommend(["c1"], k=10)  # doctest: +SKIP
    """

    def __init__(self, images: str | Path, blend: float = 0.5, groups: str | Path | None = None,
                 group_columns: Sequence[str] = ("article_id", "product_code"),
                 group_prefix: int | None = None, **options: Any) -> None:
        if groups is not None and group_prefix is not None:
            raise ValueError("give groups (a CSV) or group_prefix, not both")
        self.images = images
        self.blend = blend
        self.groups = groups
        self.group_columns = group_columns
        self.group_prefix = group_prefix
        self.options = options

    def fit(self, interactions: Interactions,
            catalog_items: Sequence[str] | None = None) -> StyleSlates:
        """Fit on the events before the cut-off; ``catalog_items`` (the window's declared
        catalog) limits the rankable items, which are otherwise every image."""
        from recsys.catalog import Catalog
        from recsys.recommender import StyleRecommender

        self.model_ = StyleRecommender(blend=self.blend, **{"ranker": "blend", **self.options})
        catalog = _image_catalog(str(Path(self.images).resolve()))
        if catalog_items is not None:
            keep = [i for i in map(str, catalog_items) if i in catalog]
            catalog = Catalog(catalog.root, {i: catalog.relative_path(i) for i in keep})
        self.model_.fit(observed(interactions), catalog,
                        item_groups=self._item_groups(catalog.item_ids))
        return self

    def _item_groups(self, item_ids: Sequence[str]) -> dict[str, str] | None:
        if self.group_prefix is not None:
            return {item: item[:self.group_prefix] for item in item_ids}
        if self.groups is None:
            return None
        from recsys.spec import read_item_groups

        return read_item_groups(self.groups, self.group_columns)

    def recommend(
        self, user_ids: Sequence[str], k: int = 10, filter_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` item ids and blended scores per user (``""`` / ``-inf`` pad).

        ``StyleRecommender`` always removes items the user has, so with
        ``filter_seen=False`` (protocols where rebuying counts) it simply never
        proposes a repurchase: a handicap the evaluation measures, not hides.
        """
        slates = self.model_.recommend(list(user_ids), k=k)
        ids = np.full((len(slates), k), "", dtype=object)
        scores = np.full((len(slates), k), -np.inf, dtype=np.float32)
        for row, slate in enumerate(slates):
            ids[row, :len(slate.entries)] = slate.item_ids
            scores[row, :len(slate.entries)] = [e.score for e in slate.entries]
        return ids.astype(str), scores


def taste_only(images: str | Path, **options: Any) -> StyleSlates:
    """A taste-only ranker: ``blend=1`` and no CF candidates, so only the items
    nearest to the user's taste compete (cold items included)."""
    ranker = {"n_cf_candidates": 0, **options.pop("ranker_params", {})}
    return StyleSlates(images, **{"blend": 1.0, **options}, ranker_params=ranker)


def from_pipeline(pipeline: str | Path, **overrides: Any) -> StyleSlates:
    """The recommender a pipeline spec file describes (:mod:`recsys.spec`), evaluated
    on the runner's split (the spec's ``data.interactions`` is not read).

    ``overrides`` are dotted spec keys, e.g. ``{"ranker.params.taste_weight": 0.25}``
    (what a tuning grid varies).

    Examples
    --------
    A config entry::

        {"name": "demo pipeline", "model": "pipeline",
         "params": {"pipeline": "configs/demo.json", "encoder.cache_dir": "cache/embeddings"},
         "tune": {"grid": {"ranker.params.taste_weight": [0.25, 0.5, 0.75]}}}
    """
    import json

    from recsys.spec import load_spec, recommender_arguments

    spec = load_spec(pipeline, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    if spec.data.images is None:
        raise ValueError(f"{pipeline}: data.images is needed to evaluate a pipeline")
    options = recommender_arguments(spec)
    return StyleSlates(spec.data.images, blend=options.pop("blend"),
                       groups=spec.data.item_groups, group_columns=spec.data.group_columns,
                       **options)


@lru_cache(maxsize=2)
def _image_embeddings(images: str, cache_dir: str, encoder: str) -> tuple[np.ndarray, np.ndarray]:
    """Ids and embeddings of every readable image of the folder, from the store (once per
    process)."""
    from recsys.embedding_store import EmbeddingStore
    from recsys.encoders import create_encoder

    catalog = _image_catalog(images)
    ids = np.asarray(catalog.item_ids, dtype=str)
    found = EmbeddingStore(cache_dir, create_encoder(encoder)).get_or_compute(
        ids, [catalog.path(i) for i in ids])
    return ids[found.ok], found.vectors[found.ok]


def _catalog_vectors(images: str, cache_dir: str, encoder: str, embedding_dim: int,
                     catalog_items: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
    """Ids and embeddings of the catalog's images, projected on ``embedding_dim`` whitened
    principal components fitted on that catalog."""
    from recsys.taste import EmbeddingPCA

    ids, vectors = _image_embeddings(str(Path(images).resolve()), str(cache_dir), encoder)
    if catalog_items is not None:
        keep = np.isin(ids, np.asarray(list(map(str, catalog_items))))
        ids, vectors = ids[keep], vectors[keep]
    dim = min(int(embedding_dim), *vectors.shape)
    return ids, EmbeddingPCA(dim, whiten=True).fit(vectors).transform(vectors)


@lru_cache(maxsize=2)
def _prices(path: str, user_col: str, item_col: str, time_col: str,
            price_col: str) -> pd.DataFrame:
    raw = pd.read_csv(path, dtype={user_col: str, item_col: str})
    return pd.DataFrame({"user": raw[user_col], "item": raw[item_col],
                         "time": pd.to_datetime(raw[time_col]), "price": raw[price_col]})


class LearnedSlates:
    """:class:`recsys.learned_ranker.LearnedRanker` behind the batch ``recommend`` interface.

    Parameters
    ----------
    images : str, optional
        Image folder: its embeddings (from the store at ``cache_dir``, encoder
        ``encoder``), restricted to the window's declared catalog and projected on
        ``embedding_dim`` whitened principal components fitted on that catalog, feed
        the visual sources and image features. ``None``: no images.
    group_prefix : int, optional
        Items sharing their first ``group_prefix`` characters form a family.
    prices : str, optional
        CSV with ``price_columns`` (user, item, time, price), e.g. H&M transactions.
    **params
        :class:`~recsys.learned_ranker.LearnedRanker` parameters.

    ``recommend(filter_seen=True)`` removes each user's training items; only the
    declared catalog's items are recommended.

    Examples
    --------
    A config entry::

        {"name": "learned-cf", "model": "evaluation.adapters:LearnedSlates",
         "params": {"sources": [{"name": "cf", "params": {"model": "als"}},
                                {"name": "cf", "params": {"model": "itemknn"}}]}}
    """

    def __init__(self, images: str | None = None, cache_dir: str = "out/cache/embeddings",
                 encoder: str = "efficientnet-lite0", embedding_dim: int = 128,
                 group_prefix: int | None = None, prices: str | None = None,
                 price_columns: Sequence[str] = ("customer_id", "article_id", "t_dat", "price"),
                 **params: Any) -> None:
        self.images = images
        self.cache_dir = cache_dir
        self.encoder = encoder
        self.embedding_dim = embedding_dim
        self.group_prefix = group_prefix
        self.prices = prices
        self.price_columns = price_columns
        self.params = params

    def fit(self, interactions: Interactions,
            catalog_items: Sequence[str] | None = None) -> LearnedSlates:
        from recsys.learned_ranker import LearnedRanker

        data = observed(interactions)
        ids = vectors = None
        if self.images is not None:
            ids, vectors = _catalog_vectors(self.images, self.cache_dir, self.encoder,
                                            self.embedding_dim, catalog_items)
        groups = None
        if self.group_prefix is not None:
            items = data.item_ids if ids is None else np.union1d(data.item_ids, ids)
            groups = {i: i[:self.group_prefix] for i in items}
        prices = None if self.prices is None else _prices(self.prices, *self.price_columns)
        self.model_ = LearnedRanker(**self.params).fit(data, ids, vectors, item_groups=groups,
                                                       prices=prices)
        self.seen_ = data
        self.catalog_ = None if catalog_items is None else set(map(str, catalog_items))
        return self

    def recommend(
        self, user_ids: Sequence[str], k: int = 10, filter_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` item ids and ranker scores per user (``""`` / ``-inf`` pad)."""
        exclude = None
        if filter_seen:
            rows = self.seen_.user_index(list(user_ids), missing="ignore")
            matrix = self.seen_.matrix
            exclude = [set(self.seen_.item_ids[matrix[r].indices]) if r >= 0 else set()
                       for r in rows]
        ranked = self.model_.rank(list(user_ids), k, exclude=exclude, candidates=self.catalog_)
        return ranked.items, ranked.scores
