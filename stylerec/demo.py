"""The end-to-end demo behind ``make demo``: every stage on the bundled ``data/``.

Fits the :class:`~recsys.recommender.StyleRecommender` that ``configs/demo.json``
describes (a pipeline spec, :mod:`recsys.spec`: ALS ⊕ EfficientNet-Lite0 taste, the
style references, the protected ``arbitrary`` styler), prints a few customers'
slates with their matched style, renders each recommended product in that style, and
writes ``index.html``: per customer what they bought, the matched style, and the
recommendations beside their renders. Embeddings and renders are cached under
``out_dir``, so a second run is quick.
"""

from __future__ import annotations

import html
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ground.files import write_bytes_atomic
from recsys.catalog import Catalog
from recsys.interactions import load_interactions
from recsys.recommender import Slate
from recsys.spec import fit_pipeline, load_spec

log = logging.getLogger(__name__)

DEMO_SPEC = Path(__file__).resolve().parents[1] / "configs" / "demo.json"


def run_demo(data_dir: Path, out_dir: Path, n_customers: int = 3, k: int = 10,
             seed: int = 0, config: Path = DEMO_SPEC, overrides: Sequence[str] = ()) -> Path:
    """Fit the pipeline of ``config`` on ``data_dir``, show slates for a few customers,
    write HTML.

    Parameters
    ----------
    data_dir : Path
        Folder with ``transactions.csv``, ``articles.csv``, ``images/``, ``styles/``
        (replaces the spec's data paths).
    out_dir : Path
        Where the page, the fitted model and the caches go (replaces the spec's
        cache folders).
    n_customers, k : int
        Customers shown (drawn with ``seed``) and slate length.
    seed : int
        Draws the customers; also the CF model's ``random_state``.
    config : Path
        Pipeline spec (default ``configs/demo.json``); without a ``styler`` the demo
        does not render.
    overrides : sequence of str
        ``key.path=value`` settings applied last (``stylerec demo --set``).

    Returns
    -------
    Path
        The HTML page.
    """
    start = time.perf_counter()
    spec = load_spec(config, [
        f"data.interactions={json.dumps(str(data_dir / 'transactions.csv'))}",
        f"data.images={json.dumps(str(data_dir / 'images'))}",
        f"data.item_groups={json.dumps(str(data_dir / 'articles.csv'))}",
        f"styles={json.dumps(str(data_dir / 'styles'))}",
        f"encoder.cache_dir={json.dumps(str(out_dir / 'cache' / 'embeddings'))}",
        f"renderer.cache_dir={json.dumps(str(out_dir / 'renders'))}",
        f"cf.params.random_state={seed}", *overrides])
    data = load_interactions(spec.data.interactions)
    catalog = Catalog.from_directory(spec.data.images)
    articles = _articles(data_dir / "articles.csv")
    model = fit_pipeline(spec)
    renderer = model.renderer
    model.save(out_dir / "model")
    print(f"fitted {len(model.ranker_.item_ids_)} items, {data.n_users} customers, "
          f"{len(model.style_paths_)} styles in {time.perf_counter() - start:.1f}s "
          f"(saved to {out_dir / 'model'})")

    rng = np.random.default_rng(seed)
    users = list(rng.choice(data.user_ids, size=min(n_customers, data.n_users), replace=False))
    slates = model.recommend(users, k=k, render=renderer is not None)
    sections = []
    for slate in slates:
        bought = data.user_history(slate.user_id)["item_id"].drop_duplicates().tolist()
        print(f"\nbought {len(bought)}: {' '.join(bought[:8])}{' …' if len(bought) > 8 else ''}")
        print(slate.explain())
        sections.append(_section(slate, bought, catalog, articles, out_dir))

    page = out_dir / "index.html"
    styler = "none" if spec.styler is None else spec.styler.name
    protected = ", product protected" if spec.renderer.protect is not None else ""
    intro = (f"<p>{data.n_users} customers, {data.n_items} articles, "
             f"{len(model.style_paths_)} style references. Scores: z-scored "
             f"{html.escape(spec.cf.name)} ⊕ {html.escape(spec.encoder.name)} taste "
             f"(weight {model.blend}); renders: {html.escape(styler)}{protected}.</p>")
    write_bytes_atomic(page, _page("stylerec demo", intro + "".join(sections)).encode())
    if renderer is not None:
        print(f"\nrenders: {renderer.stats}")
    print(f"wrote {page} ({time.perf_counter() - start:.1f}s in all)")
    return page


def _articles(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=["product_code", "prod_name"])
    frame = pd.read_csv(path, dtype=str, usecols=["article_id", "product_code", "prod_name"])
    return frame.set_index("article_id")


def _figure(src: str | os.PathLike[str] | None, caption: str, out_dir: Path) -> str:
    rel = html.escape(os.path.relpath(src, out_dir)) if src else ""
    return (f'<figure><img src="{rel}" alt="{html.escape(caption)}" loading="lazy">'
            f"<figcaption>{caption}</figcaption></figure>")


def _name(item: str, articles: pd.DataFrame) -> str:
    name = articles["prod_name"].get(item, "")
    return html.escape(f"{item} {name}" if isinstance(name, str) else item)


def _section(slate: Slate, bought: list[str], catalog: Catalog, articles: pd.DataFrame,
             out_dir: Path) -> str:
    history = "".join(_figure(catalog.path(i) if i in catalog else None, _name(i, articles),
                              out_dir) for i in bought)
    style = ""
    if slate.style is not None:
        style = _figure(slate.style.path, f"{html.escape(slate.style.style_id)} "
                        f"(cos {slate.style.similarity:.2f})", out_dir)
    recs = []
    for rank, e in enumerate(slate.entries, 1):
        parts = (f"#{rank} {_name(e.item_id, articles)}<br>score {e.score:+.2f} = "
                 f"cf {e.cf:+.2f} ⊕ taste {e.taste:+.2f}{' · cold' if e.cold else ''}")
        pair = _figure(catalog.path(e.item_id), parts, out_dir)
        if e.image:
            pair += _figure(e.image, "in their style", out_dir)
        recs.append(f'<div class="pair">{pair}</div>')
    return (f"<h2>customer {html.escape(slate.user_id[:16])}…</h2>"
            f'<div class="top"><div><h3>bought</h3><div class="row">{history}</div></div>'
            f"<div><h3>matched style</h3>{style}</div></div>"
            f'<h3>recommended</h3><div class="row">{"".join(recs)}</div>')


def _page(title: str, body: str) -> str:
    style = ("body{font-family:sans-serif;margin:2em}.row{display:flex;flex-wrap:wrap;gap:8px}"
             ".top{display:flex;gap:2em}.pair{display:flex;gap:2px;border:1px solid #ddd;"
             "padding:4px}figure{margin:0;font-size:11px;text-align:center;max-width:170px}"
             "img{height:160px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{style}</style></head><body><h1>{title}</h1>{body}</body></html>")
