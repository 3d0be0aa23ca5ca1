"""The style-fit study: match shoppers to a style library and run the four checks of
:mod:`evaluation.style_fit` on a purchase log, next to the same checks with the label
judge itself as the matcher (:func:`~evaluation.style_fit.judge_as_matcher`: what
matching on the shoppers' colour labels alone reaches).

Two designs:

whole histories (``windows=0``)
    every customer's full history is matched (the demo set);
held-out windows (``windows > 0``)
    the last ``windows`` periods of ``window_days`` whole days; for each, the
    customers with at least ``min_items`` distinct articles in the
    ``history_days`` before it are matched on that history, and their purchases
    in the window of articles not in that history are the behaviour check's
    future. Each (customer, window) is one unit.

Descriptors come from an :class:`~recsys.embedding_store.EmbeddingStore` of the
``aesthetic`` encoder (computed once, resumable); only the articles of the
evaluated histories are described.

Examples
--------
>>> result = style_fit_study(transactions, articles, "data/images",
...                          StyleLibrary.from_folder("data/styles"), "cache")  # doctest: +SKIP
>>> result["colour"]["labels"]["mean_percentile"]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evaluation.style_fit import (
    Judges,
    behaviour_lift,
    colour_agreement,
    discrimination,
    judge_as_matcher,
    match_histories,
    mix_stability,
    near_sets,
    split_halves,
    stability,
    unit_histories,
)
from recsys.aesthetic import AestheticEncoder, AestheticMatcher, StyleLibrary, palette_colours
from recsys.catalog import Catalog
from recsys.interactions import Interactions

log = logging.getLogger(__name__)


def aesthetic_descriptors(ids: list[str], paths: list[str | Path], cache_dir: str | Path,
                          threads: int | None = 1,
                          encoder_params: Mapping[str, Any] | None = None
                          ) -> tuple[list[str], np.ndarray]:
    """Cached ``aesthetic`` descriptors of images (ids of the unreadable ones dropped);
    ``encoder_params``: :class:`~recsys.aesthetic.AestheticEncoder` options (e.g. the
    ``clip`` block's model and checkpoint)."""
    from recsys.embedding_store import EmbeddingStore
    from recsys.encoders import create_encoder

    encoder = create_encoder("aesthetic", device="cpu", num_threads=threads, num_workers=1,
                             **(encoder_params or {}))
    found = EmbeddingStore(cache_dir, encoder).get_or_compute(ids, paths)
    keep = np.flatnonzero(found.ok)
    return [ids[i] for i in keep], found.vectors[keep]


def history_units(transactions: pd.DataFrame, windows: int, window_days: int = 28,
                  history_days: int = 180, min_items: int = 3
                  ) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """The histories to match (column ``unit``) and, with windows, each unit's future.

    Days are whole: a window is ``(start, end]`` in calendar days, its history
    ``(start - history_days, start]``.
    """
    frame = transactions.assign(day=pd.to_datetime(transactions["t_dat"]).dt.normalize())
    if windows == 0:
        return frame.assign(unit=frame["customer_id"]), {}
    end = frame["day"].max()
    parts, future = [], {}
    for w in range(windows):
        stop = end - pd.Timedelta(days=window_days * w)
        start = stop - pd.Timedelta(days=window_days)
        history = frame[(frame["day"] <= start)
                        & (frame["day"] > start - pd.Timedelta(days=history_days))]
        window = frame[(frame["day"] > start) & (frame["day"] <= stop)]
        distinct = history.groupby("customer_id")["article_id"].nunique()
        eligible = set(distinct[distinct >= min_items].index) & set(window["customer_id"])
        for customer, bought in window[window["customer_id"].isin(eligible)].groupby(
                "customer_id")["article_id"]:
            seen = set(history.loc[history["customer_id"] == customer, "article_id"])
            new = sorted(set(bought) - seen)
            if new:
                future[f"{customer}@{start.date()}"] = new
        part = history[history["customer_id"].isin(eligible)]
        parts.append(part.assign(unit=part["customer_id"] + f"@{start.date()}"))
    frame = pd.concat(parts)
    return frame[frame["unit"].isin(future)], future


@dataclass(frozen=True)
class StudyData:
    """The matched histories (``frame``, column ``unit``), each unit's future (windows
    only) and the aesthetic descriptors of their articles and of the library."""

    catalog: Catalog
    frame: pd.DataFrame
    future: dict[str, list[str]]
    item_ids: list[str]
    item_desc: np.ndarray
    style_desc: np.ndarray


def study_data(transactions: pd.DataFrame, image_root: str | Path, library: StyleLibrary,
               cache_dir: str | Path, windows: int = 0, window_days: int = 28,
               history_days: int = 180, threads: int | None = 1,
               encoder_params: Mapping[str, Any] | None = None) -> StudyData:
    """Units of :func:`history_units` and the cached descriptors the study matches them
    with (only the articles of their histories are described)."""
    catalog = Catalog.from_directory(image_root)
    transactions = transactions.assign(article_id=transactions["article_id"].astype(str))
    frame, future = history_units(transactions, windows, window_days, history_days)
    needed = sorted(set(frame["article_id"]) & set(catalog.item_ids))
    log.info("style fit: %d units, %d articles to describe", frame["unit"].nunique(),
             len(needed))
    item_ids, item_desc = aesthetic_descriptors(
        needed, [catalog.path(i) for i in needed], cache_dir, threads, encoder_params)
    style_ids, style_desc = aesthetic_descriptors(library.ids, library.paths, cache_dir,
                                                  threads, encoder_params)
    if style_ids != library.ids:
        raise ValueError(f"unreadable style references: {set(library.ids) - set(style_ids)}")
    return StudyData(catalog, frame, future, item_ids, item_desc, style_desc)


def style_fit_study(
    transactions: pd.DataFrame,
    articles: pd.DataFrame,
    image_root: str | Path,
    library: StyleLibrary,
    cache_dir: str | Path,
    *,
    windows: int = 0,
    window_days: int = 28,
    history_days: int = 180,
    half_life_days: float | None = 60.0,
    block_weights: Mapping[str, float] | None = None,
    matcher_params: Mapping[str, Any] | None = None,
    near_fraction: float = 0.1,
    kmeans_judge: bool = True,
    threads: int | None = 1,
    encoder_params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the four checks; returns a JSON-ready dict (figures, parameters, per-unit rows).

    The matcher (:class:`~recsys.aesthetic.AestheticMatcher` with ``block_weights``,
    ``half_life_days`` and any other ``matcher_params``) learns its hubness correction,
    if any, on the matched histories themselves (never on a window's purchases).
    """
    started = time.time()
    data = study_data(transactions, image_root, library, cache_dir, windows, window_days,
                      history_days, threads, encoder_params)
    catalog, frame, future = data.catalog, data.frame, data.future
    item_ids, item_desc, style_desc = data.item_ids, data.item_desc, data.style_desc
    matcher = AestheticMatcher(block_weights, half_life_days=half_life_days,
                               **(matcher_params or {}))
    population = Interactions.from_frame(frame, "unit", "article_id", "t_dat")
    matcher.fit(library, style_desc, item_desc, library.magenta_vectors(),
                interactions=population, item_ids=item_ids)
    item_vectors = matcher.item_vectors(item_desc)

    def match(part: pd.DataFrame):
        return match_histories(part, matcher, item_ids, item_vectors, user_col="unit")

    matches = match(frame)
    older, newer = split_halves(frame, "unit", "day")
    m_old, m_new = match(older), match(newer)
    names = library.ids
    histories = unit_histories(frame)
    judges = Judges.build(library.paths, articles,
                          {i: str(catalog.path(i)) for i in item_ids} if kmeans_judge else None)
    result: dict[str, Any] = {
        "params": {"windows": windows, "window_days": window_days,
                   "history_days": history_days, "matcher": matcher.get_params(),
                   "block_weights": {b: w for b, w in matcher.space_._weights().items()
                                     if b in AestheticEncoder.split(style_desc[:1])},
                   "near_fraction": near_fraction,
                   "library": names, "n_styles": len(names), "articles_described": len(item_ids)},
        "colour": colour_agreement({u: histories[u] for u in matches.nearest}, matches.nearest,
                                   judges),
        "stability": stability({u: names[i] for u, i in m_old.nearest.items()},
                               {u: names[i] for u, i in m_new.nearest.items()}),
        "mix_stability": mix_stability({u: m.vector for u, m in m_old.mixes.items()},
                                       {u: m.vector for u, m in m_new.mixes.items()}),
        "discrimination": discrimination([names[i] for i in matches.nearest.values()],
                                         len(names)),
    }
    near = None
    if windows:
        near = near_sets(judges, articles["article_id"].astype(str).tolist(), near_fraction)
        result["behaviour"] = behaviour_lift(future, matches.nearest, near)
    result["judge_as_matcher"] = judge_as_matcher(
        {u: histories[u] for u in matches.nearest},
        unit_histories(older), unit_histories(newer),
        judges, names, matcher.max_share, future if windows else None, near)
    rows = {item: r for r, item in enumerate(item_ids)}
    result["units"] = [
        {"unit": u, "items": histories[u], "style": names[i],
         "palette": palette_colours(item_desc[[rows[t] for t in histories[u] if t in rows]]),
         "similarity": matches.similarity[u],
         "mix": dict(zip(matches.mixes[u].references, matches.mixes[u].weights, strict=True))}
        for u, i in matches.nearest.items()]
    result["seconds"] = round(time.time() - started, 1)
    return result
