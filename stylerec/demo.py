"""The end-to-end demo behind ``make demo``: every stage on the bundled ``data/``.

Fits a :class:`~recsys.recommender.StyleRecommender` (ALS ⊕ EfficientNet-Lite0
taste, the style references), prints a few customers' slates with their
matched style, renders each recommended product in that style with the
protected ``arbitrary`` styler, and writes ``index.html``: per customer what
they bought, the matched style, and the recommendations beside their renders.
Embeddings and renders are cached under ``out_dir``, so a second run is quick.
"""

from __future__ import annotations

import html
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ground.files import write_bytes_atomic
from recsys.catalog import Catalog
from recsys.interactions import load_interactions
from recsys.recommender import Slate, StyleRecommender

log = logging.getLogger(__name__)


def run_demo(data_dir: Path, out_dir: Path, n_customers: int = 3, k: int = 10,
             seed: int = 0, styler: str = "arbitrary", device: str = "auto",
             render_side: int = 384) -> Path:
    """Fit every stage on ``data_dir``, show slates for a few customers, write HTML.

    Parameters
    ----------
    data_dir : Path
        Folder with ``transactions.csv``, ``articles.csv``, ``images/``, ``styles/``.
    out_dir : Path
        Where the page, the fitted model and the caches go.
    n_customers, k : int
        Customers shown (drawn with ``seed``) and slate length.
    styler : str
        Registered styler for the renders; ``"none"`` skips rendering.
    device : str
        Render device (``"auto"``: CUDA when present).
    render_side : int
        Longer side of the renders.

    Returns
    -------
    Path
        The HTML page.
    """
    start = time.perf_counter()
    data = load_interactions(data_dir / "transactions.csv")
    catalog = Catalog.from_directory(data_dir / "images")
    articles = _articles(data_dir / "articles.csv")
    renderer = None if styler == "none" else _renderer(styler, out_dir / "renders", device,
                                                        render_side)
    model = StyleRecommender(
        "als", {"factors": 64, "iterations": 15, "random_state": seed},
        cache_dir=out_dir / "cache" / "embeddings", blend=0.5,
        ranker_params={"group_weight": 0.5}, renderer=renderer,
    ).fit(data, catalog, data_dir / "styles",
          item_groups=articles["product_code"].to_dict())
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
    intro = (f"<p>{data.n_users} customers, {data.n_items} articles, "
             f"{len(model.style_paths_)} style references. Scores: z-scored ALS ⊕ "
             f"EfficientNet-Lite0 taste (weight {model.blend}); renders: "
             f"{html.escape(styler)}, product protected.</p>")
    write_bytes_atomic(page, _page("stylerec demo", intro + "".join(sections)).encode())
    if renderer is not None:
        print(f"\nrenders: {renderer.stats}")
    print(f"wrote {page} ({time.perf_counter() - start:.1f}s in all)")
    return page


def _renderer(styler: str, cache_dir: Path, device: str, side: int):
    from stylers import ProtectedStyler, Renderer, create_styler

    protected = ProtectedStyler(create_styler(styler), product_strength=0.3)
    return Renderer(protected, cache_dir, device=device, max_side=side, style_side=256,
                    image_format="jpg")


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
