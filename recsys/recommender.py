"""The ``StyleRecommender`` facade: CF + visual taste + style matching (+ rendering).

``fit`` builds every stage once: a CF model on the interactions, item embeddings
of the catalog images (through the :class:`~recsys.embedding_store.EmbeddingStore`
when a cache folder is given), per-user taste profiles, the item index of the
style-aware ranker and an index of the style reference images. ``recommend``
then costs a few matrix operations per user: nothing is re-encoded.

What a user gets
----------------
known user
    CF scores of the fitted model, the fit-time taste profile.
user in ``history`` (new or known)
    folded in: CF scores from the history (the CF model's fold-in), a taste
    profile computed from it; ``Slate.folded_in`` is set.
unknown user, no history (or a history of items the CF model never saw)
    the defined fallback: item popularity in place of CF scores and the global
    taste (mean over all shoppers; or the taste of the history's items when they
    have images); ``Slate.fallback`` is set.

Ranking: by default (``ranker="learned"``) a
:class:`~recsys.learned_ranker.LearnedRanker` over several candidate sources
(repurchase, the CF model, recent popularity, visual neighbours, and the chain of
the simple ones), trained on the last weeks of the log; items the user already has
may come back (shoppers rebuy). When the log is too short for its label windows, or
when it does not beat its best source on validation with confidence, the slate says
what ranked instead
(``Slate.ranked_by``). With ``ranker="blend"`` the fixed CF ⊕ taste blend of
:class:`~recsys.ranker.StyleRanker` ranks and items the user already has (fit-time
or in ``history``) are never recommended. Either way only catalog items with an
embedding can be recommended; catalog items nobody bought (cold items) are
reachable through the visual side.

Examples
--------
>>> from recsys import Catalog, load_interactions
>>> data = load_interactions("data/transactions.csv")  # doctest: +SKIP
>>> model = StyleRecommender(blend=0.5, cache_dir="cache/embeddings")  # doctest: +SKIP
>>> model.fit(data, Catalog.from_directory("data/images"), "data/styles")  # doctest: +SKIP
>>> slate = model.recommend([data.user_ids[0]], k=5)[0]  # doctest: +SKIP
>>> print(slate.explain())  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ground.files import (
    atomic_directory,
    file_sha256,
    read_meta,
    saved_directory,
    write_bytes_atomic,
    write_npz_atomic,
)
from recsys.catalog import Catalog
from recsys.cf import Recommender, create_model
from recsys.interactions import Interactions, _lookup
from recsys.learned_ranker import IMAGE_FEATURES, RANKERS, LearnedRanker, NotEnoughHistory
from recsys.ranker import StyleRanker
from recsys.sources import GIVEN_GROUPS
from recsys.taste import EmbeddingPCA, TasteModel

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


@dataclass(frozen=True)
class SlateEntry:
    """One recommended item and why it is there.

    ``cf`` and ``taste`` are the z-scored parts blended into ``score``; ``cold``
    marks an item nobody interacted with at fit time; ``group`` an item of a
    group (product family) the user already bought from, which earned the
    ranker's ``group_weight``; ``image`` is the rendered image when rendering
    was asked for (else ``None``); ``image_error`` says why an entry asked to be
    rendered was not (its image is missing, changed since fit, or outside the
    catalog root). With the learned ranker ``cf`` and ``taste`` are the summed
    contributions of its behavioural and image features, and ``reasons`` its three
    largest feature contributions.
    """

    item_id: str
    score: float
    cf: float
    taste: float
    cold: bool
    group: bool = False
    image: str | None = None
    image_error: str | None = None
    reasons: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class StyleMatch:
    """The style reference nearest to a user's aesthetic (``similarity``: the matcher's
    score in the aesthetic space of :mod:`recsys.aesthetic`, a cosine or its hubness
    correction) and the user's personal ``mix`` of their
    nearest references (``(style_id, weight)`` pairs, best first)."""

    style_id: str
    path: str
    similarity: float
    mix: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Slate:
    """A user's recommendations.

    Attributes
    ----------
    user_id : str
    entries : tuple of SlateEntry
        Best first; shorter than ``k`` only when fewer items are left.
    style : StyleMatch or None
        ``None`` when the recommender was fitted without style references.
    fallback : bool
        No usable history (none, or only items the CF model never saw):
        popularity stood in for the CF scores.
    folded_in : bool
        Computed from the ``history`` passed to ``recommend``.
    taste_fallback : bool
        The global taste was used (no history, or none of the user's items
        has an image).
    ranked_by : str
        ``"learned"``, ``"blend"``, or the candidate source that ranked because
        the learned ranker did not beat it on validation.
    """

    user_id: str
    entries: tuple[SlateEntry, ...]
    style: StyleMatch | None
    fallback: bool
    folded_in: bool
    taste_fallback: bool
    ranked_by: str = "blend"

    @property
    def item_ids(self) -> list[str]:
        return [e.item_id for e in self.entries]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (plain floats, strings and booleans)."""
        return asdict(self) | {"entries": [asdict(e) for e in self.entries]}

    def explain(self) -> str:
        """A few human-readable lines: flags, matched style, and each item's score parts."""
        flags = [name for name in ("fallback", "folded_in", "taste_fallback")
                 if getattr(self, name)]
        head = f"user {self.user_id}" + (f" [{', '.join(flags)}]" if flags else "")
        if self.style is not None:
            head += f"; style {self.style.style_id} (similarity {self.style.similarity:.3f})"
            if self.style.mix:
                head += " mix " + " + ".join(f"{w:.2f} {s}" for s, w in self.style.mix)
        head += f"; ranked by {self.ranked_by}"
        lines = [head]
        for rank, e in enumerate(self.entries, 1):
            tail = (" cold" if e.cold else "") + (" same-family" if e.group else "")
            tail += f" -> {e.image}" if e.image else ""
            tail += f" (not rendered: {e.image_error})" if e.image_error else ""
            if e.reasons:
                tail += "; " + ", ".join(f"{name} {value:+.3f}" for name, value in e.reasons)
            lines.append(f"{rank:3d}. {e.item_id}  score {e.score:+.3f} = cf {e.cf:+.3f} "
                         f"⊕ taste {e.taste:+.3f}{tail}")
        return "\n".join(lines)


class StyleRecommender:
    """Collaborative filtering re-ranked by visual taste, with a matched style per user.

    Parameters
    ----------
    cf_model : str
        A :func:`recsys.cf.create_model` name (``als``, ``bpr``, ``itemknn``…).
    cf_params : dict, optional
        Its hyperparameters.
    encoder : str or ImageEncoder
        Image encoder name for :func:`recsys.encoders.create_encoder`, or an
        encoder instance. Items and style references are embedded with it.
    encoder_params : dict, optional
        Options of a named encoder (``device``, ``batch_size``…).
    cache_dir : str or Path, optional
        Embedding store folder: embeddings are cached by (encoder, image hash)
        and reused by later fits. ``None`` encodes without caching.
    embedding_dim : int or None
        Project the embeddings onto this many principal components of the
        catalog's (:class:`~recsys.taste.EmbeddingPCA`; capped by the embedding
        dimension and the catalog size); ``None`` keeps them as encoded.
    whiten : bool
        Whiten the principal components (with ``embedding_dim``).
    taste_params : dict, optional
        :class:`~recsys.taste.TasteModel` parameters (``method``,
        ``half_life_days``…).
    blend : float
        Weight of the taste part in the final score (``StyleRanker.taste_weight``).
    ranker_params : dict, optional
        Other :class:`~recsys.ranker.StyleRanker` parameters.
    style_encoder : str or ImageEncoder
        Descriptor encoder of the style matcher (:class:`~recsys.aesthetic.AestheticEncoder`
        by default); its descriptors are cached in ``cache_dir`` too.
    style_params : dict, optional
        :class:`~recsys.aesthetic.AestheticMatcher` parameters (``block_weights``,
        ``hubness``, ``max_centroids``, ``half_life_days``, ``mix_k``…); a hubness
        correction is learned on the users of the log ``fit`` is given.
    style_encoder_params : dict, optional
        Options of a named ``style_encoder`` (e.g. the ``clip_model`` and
        ``clip_checkpoint`` of :class:`~recsys.aesthetic.AestheticEncoder`).
    renderer : stylers.Renderer, optional
        Used by ``recommend(render=True)``: anything with a
        ``render([(item_id, item_image, style_id, style_image), ...]) -> [path, ...]``
        method. Not saved with the model (pass it to :meth:`load`).
    ranker : {"learned", "blend"}
        A :data:`~recsys.learned_ranker.RANKERS` name: the learned ranker over
        several candidate sources, or the fixed blend (``blend``, ``ranker_params``).
    learned_params : dict, optional
        :class:`~recsys.learned_ranker.LearnedRanker` parameters; by default its
        sources are repurchase, same family (when ``fit`` gets ``item_groups``), this
        CF model, recent popularity, visual neighbours (over the ``index_factory``
        of ``ranker_params``) and the chain repurchase → same family → recent
        popularity (the strongest simple baseline, which the ranker can hand its
        slates to when the model does not beat it on validation).

    Attributes
    ----------
    cf_ : Recommender
    pca_ : EmbeddingPCA or None
        The projection applied to item and style embeddings.
    taste_ : TasteModel
    ranker_ : StyleRanker
        The fixed blend (also what ranks when the learned ranker cannot be trained).
    learned_ : LearnedRanker or None
        ``None`` with ``ranker="blend"`` or when the log was too short to train it.
    styles_ : AestheticMatcher or None
        Matches a user's aesthetic vector (from the descriptors of the images they
        engaged with) to the style library.
    style_taste_ : TasteModel or None
        Users' aesthetic vectors in the matcher's space.
    style_paths_ : dict of str to str
        Style reference id → image path.
    item_paths_ : dict of str to str
        Rankable item id → image path (what the renderer stylizes).
    image_roots_ : dict of str to str
        Catalog root folders of the items and styles: a path that resolves
        outside them is not rendered.
    image_digests_ : dict of str to str
        Image path → SHA-256 at fit time: an image changed since is not rendered.
    encoder_id_ : str
    popularity_ : ndarray of float32
        Distinct users per rankable item (the fallback's CF scores).
    failures_ : dict of str to str
        Catalog items whose image could not be embedded, with the reason.

    Examples
    --------
    >>> model = StyleRecommender("als", {"factors": 64}, blend=0.4)  # doctest: +SKIP
    >>> model.fit(data, catalog, "data/styles").save("out/model")  # doctest: +SKIP
    >>> slates = StyleRecommender.load("out/model").recommend(["c1", "c2"], k=10)  # doctest: +SKIP
    """

    def __init__(
        self,
        cf_model: str = "als",
        cf_params: dict[str, Any] | None = None,
        encoder: Any = "efficientnet-lite0",
        encoder_params: dict[str, Any] | None = None,
        cache_dir: str | Path | None = None,
        embedding_dim: int | None = 128,
        whiten: bool = True,
        taste_params: dict[str, Any] | None = None,
        blend: float = 0.5,
        ranker_params: dict[str, Any] | None = None,
        style_encoder: Any = "aesthetic",
        style_params: dict[str, Any] | None = None,
        style_encoder_params: dict[str, Any] | None = None,
        renderer: Any = None,
        ranker: str = "learned",
        learned_params: dict[str, Any] | None = None,
    ) -> None:
        self.cf_model = cf_model
        self.cf_params = cf_params
        self.encoder = encoder
        self.encoder_params = encoder_params
        self.cache_dir = cache_dir
        self.embedding_dim = embedding_dim
        self.whiten = whiten
        self.taste_params = taste_params
        self.blend = blend
        self.ranker_params = ranker_params
        self.style_encoder = style_encoder
        self.style_params = style_params
        self.style_encoder_params = style_encoder_params
        self.renderer = renderer
        self.ranker = ranker
        self.learned_params = learned_params

    def get_params(self) -> dict[str, Any]:
        """This pipeline as a :class:`~recsys.spec.PipelineSpec` dictionary (JSON-ready)."""
        from recsys.spec import spec_of

        return spec_of(self).to_dict()

    @classmethod
    def from_params(cls, params: Any, renderer: Any = None) -> StyleRecommender:
        """An unfitted recommender from a :class:`~recsys.spec.PipelineSpec` (or its
        dictionary), validated; its renderer is built from the spec's ``styler`` and
        ``renderer`` sections unless ``renderer`` is given."""
        from recsys.spec import PipelineSpec, build_renderer, recommender_arguments

        spec = params if isinstance(params, PipelineSpec) else PipelineSpec.from_dict(params)
        spec.validate()
        model = cls(**recommender_arguments(spec),
                    renderer=renderer if renderer is not None else build_renderer(spec))
        model._spec = spec
        return model

    # -- fitting --------------------------------------------------------------

    def fit(
        self,
        interactions: Interactions,
        catalog: Catalog,
        styles: str | Path | Catalog | None = None,
        item_groups: Mapping[str, str] | None = None,
    ) -> StyleRecommender:
        """Fit every stage.

        Parameters
        ----------
        interactions : Interactions
            The interaction log.
        catalog : Catalog
            Item images; only items with a readable image can be recommended.
        styles : folder, Catalog, StyleLibrary or None
            Style references (a folder: id = file stem, metadata from its
            ``styles.csv``); ``None`` fits without style matching.
        item_groups : mapping of str to str, optional
            Item id → group key (e.g. the product code of H&M articles, shared
            by the colour variants of a garment): the learned ranker's ``family``
            source and feature, the blend's group part (``ranker_params=
            {"group_weight": ...}``). Items not in it have none.

        Returns
        -------
        self
        """
        if not isinstance(catalog, Catalog):
            raise TypeError(f"catalog must be a Catalog, got {type(catalog).__name__}")
        RANKERS.get(self.ranker)  # an unknown name fails before any work
        # a bad style folder fails here, before hours of encoding
        library = None if styles is None else _style_library(styles)
        ranker = StyleRanker(taste_weight=self.blend, **(self.ranker_params or {}))
        taste = TasteModel(**(self.taste_params or {}))
        ranker._check_params()
        taste._check_params()
        encoder = self._make_encoder()
        self.encoder_id_ = encoder.encoder_id
        self.cf_ = create_model(self.cf_model, **(self.cf_params or {})).fit(interactions)

        item_ids = np.asarray(catalog.item_ids, dtype=str)
        vectors, ok, self.failures_ = self._embed(encoder, item_ids, catalog)
        if not ok.any():
            raise ValueError(f"none of the {len(item_ids)} catalog images could be embedded")
        item_ids, vectors = item_ids[ok], vectors[ok]
        self.item_paths_ = {item: str(catalog.path(item)) for item in item_ids}
        self.pca_ = None
        if self.embedding_dim is not None:
            dim = min(int(self.embedding_dim), *vectors.shape)
            self.pca_ = EmbeddingPCA(dim, self.whiten).fit(vectors)
            vectors = self.pca_.transform(vectors)
        self.taste_ = taste.fit(interactions, item_ids, vectors)
        groups = None if item_groups is None else [item_groups.get(i) for i in item_ids]
        self.ranker_ = ranker.fit(item_ids, self.taste_.item_vectors_, self.encoder_id_, groups)

        self.styles_, self.style_taste_, self.style_paths_ = None, None, {}
        self.image_roots_ = {"items": str(catalog.root)}
        if library is not None:
            self.image_roots_["styles"] = str(library.catalog().root)
            self._fit_styles(interactions, catalog, library)

        self.learned_ = None
        if self.ranker == "learned":
            # the learned ranker's cos_style feature lives in the taste space
            taste_styles = None if library is None else self._taste_space_styles(encoder,
                                                                                  library)
            self.learned_ = self._fit_learned(interactions, item_ids, item_groups, taste_styles)
        self.image_digests_ = {path: file_sha256(path) for path in
                               (*self.item_paths_.values(), *self.style_paths_.values())}
        users_per_item = np.bincount(interactions.matrix.indices, minlength=interactions.n_items)
        in_log = interactions.item_index(item_ids, missing="ignore")
        self.popularity_ = np.where(in_log >= 0, users_per_item[np.clip(in_log, 0, None)],
                                    0).astype(np.float32)
        self._index_columns()
        n_cold = int((self._rank_to_cf < 0).sum())
        log.info("StyleRecommender: %d rankable items (%d cold, %d without image), %d users",
                 len(item_ids), n_cold, len(self.failures_), len(self.cf_.user_ids_))
        return self

    def _fit_learned(self, interactions: Interactions, item_ids: np.ndarray,
                     item_groups: Mapping[str, str] | None, styles: np.ndarray | None
                     ) -> LearnedRanker | None:
        sources = learned_sources(self.cf_model, self.cf_params,
                                  (self.ranker_params or {}).get("index_factory", "Flat"),
                                  item_groups is not None)
        params = {"sources": sources} | (self.learned_params or {})
        try:
            return LearnedRanker(**params).fit(interactions, item_ids, self.taste_.item_vectors_,
                                               styles, item_groups)
        except NotEnoughHistory as err:
            log.warning("learned ranker not trained, the blend ranks: %s", err)
            return None

    def _taste_space_styles(self, encoder: Any, library: Any) -> np.ndarray:
        """The style references embedded like the items (taste encoder, PCA)."""
        vectors, ok, failures = self._embed(encoder, np.asarray(library.ids, dtype=str),
                                            library.catalog())
        if not ok.all():
            raise ValueError(f"style references could not be embedded: {failures}")
        return vectors if self.pca_ is None else self.pca_.transform(vectors)

    def _make_encoder(self) -> Any:
        if isinstance(self.encoder, str):
            from recsys.encoders import create_encoder

            return create_encoder(self.encoder, **(self.encoder_params or {}))
        if self.encoder_params:
            raise ValueError("encoder_params apply to a named encoder, not an encoder instance")
        return self.encoder

    def _fit_styles(self, interactions: Interactions, catalog: Catalog, styles: Any) -> None:
        """The aesthetic matcher: descriptors of the catalog and the references (a
        :class:`~recsys.aesthetic.StyleLibrary`), users' aesthetic vectors from what they
        engaged with."""
        from recsys.aesthetic import AestheticMatcher
        from recsys.encoders import create_encoder

        if isinstance(self.style_encoder, str):
            encoder = create_encoder(self.style_encoder, **(self.style_encoder_params or {}))
        elif self.style_encoder_params:
            raise ValueError("style_encoder_params apply to a named style_encoder, not an "
                             "encoder instance")
        else:
            encoder = self.style_encoder
        item_ids = self.ranker_.item_ids_
        items, ok, _ = self._embed(encoder, item_ids, catalog)
        refs, ref_ok, failures = self._embed(encoder, np.asarray(styles.ids, dtype=str),
                                             styles.catalog())
        if not ref_ok.all():
            raise ValueError(f"style references could not be described: {failures}")
        matcher = AestheticMatcher(**(self.style_params or {}))
        self.styles_ = matcher.fit(styles, refs, items[ok], styles.magenta_vectors(),
                                   interactions=interactions, item_ids=item_ids[ok])
        self.style_taste_ = matcher.taste_model().fit(interactions, item_ids[ok],
                                                      matcher.item_vectors(items[ok]))
        self.style_paths_ = dict(self.styles_.style_paths_)

    def _embed(self, encoder: Any, ids: np.ndarray, catalog: Catalog
               ) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
        paths = [catalog.path(i) for i in ids]
        if self.cache_dir is not None:
            from recsys.embedding_store import EmbeddingStore

            found = EmbeddingStore(self.cache_dir, encoder).get_or_compute(ids, paths)
            return found.vectors, found.ok, dict(found.failures)
        vectors = np.zeros((len(ids), encoder.dim), np.float32)
        ok = np.zeros(len(ids), bool)
        failures = {}
        for batch in encoder.encode_batches(paths, progress=False):
            vectors[batch.indices], ok[batch.indices] = batch.vectors, True
            failures.update({str(ids[j]): str(err) for j, err in batch.failures.items()})
        for item, reason in failures.items():
            log.warning("item %s has no embedding: %s", item, reason)
        return vectors, ok, failures

    def _index_columns(self) -> None:
        """Id lookups and the maps between CF and ranker columns (read-only afterwards)."""
        self._user_pos = {u: i for i, u in enumerate(self.cf_.user_ids_)}
        self._rank_pos = {t: i for i, t in enumerate(self.ranker_.item_ids_)}
        self._cf_to_rank = _lookup(self._rank_pos, self.cf_.item_ids_, "item", "ignore")
        self._rank_to_cf = np.full(len(self.ranker_.item_ids_), -1, dtype=np.int64)
        has = self._cf_to_rank >= 0
        self._rank_to_cf[self._cf_to_rank[has]] = np.flatnonzero(has)
        # an item nobody interacted with is cold even when the CF vocabulary lists it
        self._rank_to_cf[self.popularity_ == 0] = -1
        users = np.arange(len(self.cf_.user_ids_))
        self._seen = _place(self.cf_.user_items_, users, len(users), self._cf_to_rank,
                            len(self._rank_to_cf))
        # build the other stages' lazy lookups now, before threads share them
        self.taste_.transform([])
        if self.style_taste_ is not None:
            self.style_taste_.transform([])
        self.cf_.score(self.cf_.user_ids_[:1])

    def _check_fitted(self) -> None:
        if not hasattr(self, "ranker_"):
            raise RuntimeError("StyleRecommender is not fitted yet: call fit() first")

    # -- recommending ---------------------------------------------------------

    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        history: Interactions | None = None,
        render: bool = False,
    ) -> list[Slate]:
        """Slates for a batch of users (thread-safe: reads fitted state only).

        Parameters
        ----------
        user_ids : sequence of str
            External user ids.
        k : int
            Items per slate.
        history : Interactions, optional
            Interactions to fold in: every requested user with events in it
            gets a taste profile from them and CF scores from the CF model's
            fold-in (new users need this; the CF model may keep a known user's
            fit-time factors). Their items, like a known user's fit-time
            items, are not recommended.
        render : bool
            Render each entry in the user's matched style (needs ``renderer``
            and style references): their personal mix when the renderer's styler
            takes a style code, the nearest reference otherwise.

        Returns
        -------
        list of Slate
            One per user, in order.
        """
        self._check_fitted()
        if isinstance(user_ids, str):
            raise TypeError("user_ids must be a sequence of ids (batch-first), not a string")
        if render:
            self._check_can_render()  # before the ranking work, not after
        user_ids = [str(u) for u in user_ids]
        if self.learned_ is not None:
            return self._learned_slates(user_ids, k, history, render)
        cf, seen, known, folded = self._cf_scores(user_ids, history)
        profiles = self.taste_.transform(user_ids, history)
        ranking = self.ranker_.rank(cf, profiles, k, exclude=seen, history=seen)
        style = self._match_styles(user_ids, history)
        items = [self.ranker_.item_ids_[row[row >= 0]] for row in ranking.items]
        empty = [[None] * len(i) for i in items]
        images, image_errors = self.render(items, style) if render else (empty, empty)
        slates = []
        for row, user in enumerate(user_ids):
            keep = ranking.items[row] >= 0
            entries = tuple(
                SlateEntry(str(item), float(s), float(c), float(t), bool(cold), bool(g), image,
                           error)
                for item, s, c, t, cold, g, image, error in zip(
                    items[row], ranking.scores[row][keep], ranking.cf[row][keep],
                    ranking.taste[row][keep], ranking.cold[row][keep],
                    ranking.group[row][keep], images[row], image_errors[row], strict=True))
            slates.append(Slate(user, entries, style[row],
                                fallback=bool(not known[row] and not folded[row]),
                                folded_in=bool(folded[row]),
                                taste_fallback=bool(profiles.fallback[row])))
        return slates

    def _learned_slates(self, user_ids: list[str], k: int, history: Interactions | None,
                        render: bool) -> list[Slate]:
        """Slates of the learned ranker, each entry with its feature contributions."""
        ranked = self.learned_.rank(user_ids, k, history, candidates=self._rank_pos.keys(),
                                    contributions=True)
        names = self.learned_.feature_names_
        image = np.array([n in IMAGE_FEATURES or n.startswith(("visual-", "new-arrivals"))
                          for n in names])
        cold_at, family_at = names.index("cold"), names.index("family_events")
        profiles = self.taste_.transform(user_ids, history)
        style = self._match_styles(user_ids, history)
        items = [row[row != ""] for row in ranked.items]
        empty = [[None] * len(i) for i in items]
        images, image_errors = self.render(items, style) if render else (empty, empty)
        known = _lookup(self._user_pos, user_ids, "user", "ignore") >= 0
        folded = np.zeros(len(user_ids), bool)
        if history is not None:
            folded = history.user_index(user_ids, missing="ignore") >= 0
        slates = []
        for row, user in enumerate(user_ids):
            entries = []
            for j, item in enumerate(items[row]):
                feats = ranked.features[row, j]
                parts = (np.zeros(len(names) + 1) if ranked.contributions is None
                         else ranked.contributions[row, j])
                top = np.argsort(-np.abs(parts[:-1]), kind="stable")[:3]
                reasons = tuple((names[i], float(parts[i])) for i in top if parts[i] != 0)
                entries.append(SlateEntry(
                    str(item), float(ranked.scores[row, j]), float(parts[:-1][~image].sum()),
                    float(parts[:-1][image].sum()), bool(feats[cold_at] == 1),
                    bool(feats[family_at] > 0), images[row][j], image_errors[row][j],
                    reasons))
            slates.append(Slate(user, tuple(entries), style[row],
                                fallback=bool(not known[row] and not folded[row]),
                                folded_in=bool(folded[row]),
                                taste_fallback=bool(profiles.fallback[row]),
                                ranked_by=self.learned_.choice_))
        return slates

    def _cf_scores(
        self, user_ids: list[str], history: Interactions | None
    ) -> tuple[np.ndarray, sp.csr_matrix, np.ndarray, np.ndarray]:
        """CF scores in ranker columns (NaN: cold), seen items, known and folded-in masks."""
        n, n_rank = len(user_ids), len(self.ranker_.item_ids_)
        positions = _lookup(self._user_pos, user_ids, "user", "ignore")
        known = positions >= 0
        folded = in_history = np.zeros(n, dtype=bool)
        if history is not None:
            history_rows = history.user_index(user_ids, missing="ignore")
            in_history = history_rows >= 0
            # a new user whose items the CF model never saw has nothing to fold in
            in_cf = _lookup(self.cf_._item_pos, history.item_ids, "item", "ignore") >= 0
            rows = history.matrix[np.clip(history_rows, 0, None)]
            usable = np.asarray((rows @ sp.diags(in_cf.astype(np.float32))).getnnz(axis=1)) > 0
            folded = in_history & (usable | known)
        cf_rows = np.full((n, len(self.cf_.item_ids_)), np.nan, dtype=np.float32)
        # fit-time items of known users (rows of unknown users emptied)
        seen = self._seen[np.clip(positions, 0, None)]
        if not known.all():
            seen = sp.diags(known.astype(np.float32)) @ seen
        if folded.any():
            idx = np.flatnonzero(folded)
            cf_rows[idx] = self.cf_.score([user_ids[i] for i in idx], history=history)
        if in_history.any():
            idx = np.flatnonzero(in_history)
            columns = _lookup(self._rank_pos, history.item_ids, "item", "ignore")
            seen = seen + _place(history.matrix[history_rows[idx]], idx, n, columns, n_rank)
        plain = known & ~folded
        if plain.any():
            cf_rows[plain] = self.cf_.score([user_ids[i] for i in np.flatnonzero(plain)])
        has = self._rank_to_cf >= 0
        cf = np.full((n, n_rank), np.nan, dtype=np.float32)
        cf[:, has] = cf_rows[:, self._rank_to_cf[has]]
        cf[~known & ~folded] = self.popularity_
        return cf, seen.tocsr(), known, folded

    def _match_styles(self, user_ids: list[str], history: Interactions | None
                      ) -> list[StyleMatch | None]:
        if self.styles_ is None:
            return [None] * len(user_ids)
        profiles = self.style_taste_.transform(user_ids, history)
        ids, sims = self.styles_.match(profiles, 1)
        mixes = self.styles_.personal_style(profiles)
        return [StyleMatch(str(i), self.style_paths_[str(i)], float(s),
                           tuple(zip(m.references, m.weights, strict=True)))
                for i, s, m in zip(ids[:, 0], sims[:, 0], mixes, strict=True)]

    def render(self, items: Sequence[Sequence[str]], styles: Sequence[StyleMatch]
               ) -> tuple[list[list[str | None]], list[list[str | None]]]:
        """Render each user's items in their matched style (one ``renderer.render`` call).

        A styler with a continuous style code (``style_code_dim``, the Magenta vector)
        renders the user's personal mix; others the nearest reference's image.

        Parameters
        ----------
        items : sequence of sequence of str
            Item ids per user.
        styles : sequence of StyleMatch
            Each user's match (``Slate.style``).

        Returns
        -------
        images, errors : list of list
            Per user and item, the rendered file (``None`` if not rendered) and why not
            (the item or style image is missing, changed since fit, or outside its root;
            reported, the others still render).
        """
        self._check_can_render()
        problems = {}
        pairs, skipped = [], []
        code_dim = getattr(getattr(self.renderer, "styler", None), "style_code_dim", None)
        for row, style in zip(items, styles, strict=True):
            mixed = bool(style.mix) and code_dim == self.styles_.magenta_.shape[1]
            images = [(self.item_paths_[str(item)], "items") for item in row]
            if not mixed:
                images.append((style.path, "styles"))
            for image, root in images:
                if image not in problems:
                    problems[image] = self._image_problem(image, root)
            style_problem = None if mixed else problems[style.path]
            target = ((_mix_label(style.mix), self.styles_.mix_vector(style.mix)) if mixed
                      else (style.style_id, style.path))
            for item in row:
                path = self.item_paths_[str(item)]
                problem = problems[path] or style_problem
                skipped.append(problem)
                if problem is None:
                    pairs.append((str(item), path, *target))
        for image, problem in problems.items():
            if problem:
                log.warning("not rendering with %s: %s", image, problem)
        rendered = iter(self.renderer.render(pairs)) if pairs else iter(())
        flat = iter(skipped)
        images, errors = [], []
        for row in items:
            reasons = [next(flat) for _ in row]
            images.append([None if r else str(next(rendered)) for r in reasons])
            errors.append(reasons)
        return images, errors

    def _check_can_render(self) -> None:
        if self.renderer is None or self.styles_ is None:
            raise ValueError("render=True needs a renderer and style references: pass "
                             "renderer= to StyleRecommender and styles= to fit")

    def _image_problem(self, path: str, root: str) -> str | None:
        """Why the image at ``path`` can't be rendered now, or None."""
        base = self.image_roots_.get(root)
        resolved = Path(path).resolve()
        if base is not None and not resolved.is_relative_to(Path(base).resolve()):
            return f"{path} now resolves outside {base}"
        if not resolved.is_file():
            return f"{path} is missing"
        digest = self.image_digests_.get(path)
        if digest is not None and file_sha256(resolved) != digest:
            return f"{path} changed since the model was fitted"
        return None

    # -- persistence ----------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the fitted pipeline to the folder ``path``, replacing it atomically.

        Layout: ``recommender.json`` (parameters, encoder id, style paths),
        ``arrays.npz`` (popularity, the PCA projection), and the stages' own folders ``cf/``,
        ``taste/`` (with the item embeddings), ``ranker/`` and ``styles/``. No
        pickle anywhere. The renderer is not saved: pass it to :meth:`load`.
        """
        self._check_fitted()
        with atomic_directory(path, "recommender.json") as tmp:
            self.cf_.save(tmp / "cf")
            self.taste_.save(tmp / "taste")
            self.ranker_.save(tmp / "ranker")
            if self.styles_ is not None:
                self.styles_.save(tmp / "styles")
                self.style_taste_.save(tmp / "style_taste")
            if self.learned_ is not None:
                self.learned_.save(tmp / "learned")
            pca = {} if self.pca_ is None else self.pca_.arrays()
            write_npz_atomic(tmp / "arrays.npz", {"popularity": self.popularity_, **pca})
            params = {name: getattr(self, name) for name in (
                "cf_model", "cf_params", "encoder_params", "cache_dir", "embedding_dim",
                "whiten", "taste_params", "blend", "ranker_params", "style_params", "ranker",
                "learned_params", "style_encoder_params")}
            params["encoder"] = self.encoder if isinstance(self.encoder, str) else None
            params["style_encoder"] = (self.style_encoder if isinstance(self.style_encoder, str)
                                       else None)
            params["cache_dir"] = None if self.cache_dir is None else str(self.cache_dir)
            meta = {"format": FORMAT_VERSION, "params": params, "encoder_id": self.encoder_id_,
                    "style_paths": self.style_paths_, "item_paths": self.item_paths_,
                    "image_roots": self.image_roots_, "image_digests": self.image_digests_,
                    "failures": self.failures_, "spec": self.get_params()}
            write_bytes_atomic(tmp / "recommender.json", json.dumps(meta, indent=2).encode())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, renderer: Any = None) -> StyleRecommender:
        """Load a pipeline written by :meth:`save` (no image is re-encoded).

        Image paths are re-checked when rendering: an image that went missing,
        changed or now resolves outside its catalog root is skipped and reported
        (``SlateEntry.image_error``), the rest of the batch renders.
        """
        path = saved_directory(path, "recommender.json")
        meta = read_meta(path, "recommender.json", "StyleRecommender", FORMAT_VERSION)
        model = cls(**meta["params"], renderer=renderer)
        model.encoder_id_ = meta["encoder_id"]
        model.style_paths_ = meta["style_paths"]
        model.item_paths_ = meta["item_paths"]
        model.failures_ = meta["failures"]
        model.image_roots_ = meta.get("image_roots", {})
        model.image_digests_ = meta.get("image_digests", {})
        if "spec" in meta:  # models saved before the pipeline spec have none
            from recsys.spec import PipelineSpec

            model._spec = PipelineSpec.from_dict(meta["spec"])
        model.cf_ = Recommender.load(path / "cf")
        try:
            model.taste_ = TasteModel.load(path / "taste")
            model.ranker_ = StyleRanker.load(path / "ranker", model.taste_.item_vectors_)
            model.styles_ = model.style_taste_ = None
            if (path / "styles").is_dir():
                from recsys.aesthetic import AestheticMatcher

                model.styles_ = AestheticMatcher.load(path / "styles")
                model.style_taste_ = TasteModel.load(path / "style_taste")
            model.learned_ = (LearnedRanker.load(path / "learned")
                              if (path / "learned").is_dir() else None)
            with np.load(path / "arrays.npz", allow_pickle=False) as z:
                model.popularity_ = z["popularity"]
                model.pca_ = (EmbeddingPCA.from_arrays(dict(z), model.whiten)
                              if "pca_components" in z else None)
        except (OSError, KeyError, EOFError, RuntimeError, zipfile.BadZipFile) as err:
            # faiss reports a truncated index as a RuntimeError
            raise ValueError(f"{path} holds a damaged saved pipeline ({type(err).__name__}: "
                             f"{' '.join(str(err).split())[:300]}); fit it again") from err
        model._index_columns()
        return model


def learned_sources(cf_model: str, cf_params: Mapping[str, Any] | None,
                    index_factory: str = "Flat", item_groups: bool = False
                    ) -> list[dict[str, Any]]:
    """The candidate sources of :class:`StyleRecommender`'s learned ranker: repurchase,
    same family (with ``item_groups``), the CF model, recent popularity, visual
    neighbours over ``index_factory``, and the chain of the simple ones.

    Examples
    --------
    >>> [s["name"] for s in learned_sources("als", None, item_groups=True)]
    ['repurchase', 'family', 'cf', 'recent-popularity', 'visual-neighbours', 'chain']
    """
    sources = [{"name": "repurchase"},
               {"name": "cf", "params": {"model": cf_model, "params": dict(cf_params or {})}},
               {"name": "recent-popularity"},
               {"name": "visual-neighbours", "params": {"index_factory": index_factory}}]
    baseline = [{"name": "repurchase"}, {"name": "recent-popularity"}]
    if item_groups:  # siblings of bought items (H&M: same product code)
        sources.insert(1, {"name": "family", "params": {"group": GIVEN_GROUPS}})
        baseline.insert(1, sources[1])
    # the strongest simple baseline as one list: a feature, and the fallback the
    # no-harm check can hand the slates to as a whole
    sources.append({"name": "chain", "params": {"chain": baseline}})
    return sources


def _mix_label(mix: tuple[tuple[str, float], ...]) -> str:
    """The style id of a rendered mix, e.g. ``mix:wave=0.70+kiss=0.30``."""
    return "mix:" + "+".join(f"{s}={w:.2f}" for s, w in mix)


def _style_library(styles: Any) -> Any:
    """A :class:`~recsys.aesthetic.StyleLibrary` from a folder, a Catalog or a library."""
    from recsys.aesthetic import StyleLibrary

    if isinstance(styles, StyleLibrary):
        return styles
    if isinstance(styles, Catalog):
        return StyleLibrary.from_catalog(styles)
    return StyleLibrary.from_folder(styles)


def _place(rows: sp.spmatrix, at: np.ndarray, n: int, columns: np.ndarray,
           width: int) -> sp.csr_matrix:
    """``rows`` moved to rows ``at`` of an ``n × width`` matrix, column ``j`` to ``columns[j]``
    (columns mapped to -1 are dropped)."""
    coo = sp.coo_matrix(rows)
    cols = columns[coo.col]
    keep = cols >= 0
    return sp.csr_matrix((coo.data[keep], (at[coo.row[keep]], cols[keep])), shape=(n, width))
