"""The end-to-end demo behind ``make demo``: fit on the bundled ``data/`` and show slates."""

from __future__ import annotations

import html
import logging
import os
import time
from pathlib import Path

import numpy as np

from recsys.catalog import Catalog
from recsys.cf import create_model
from recsys.files import write_bytes_atomic
from recsys.interactions import load_interactions

log = logging.getLogger(__name__)


def run_demo(data_dir: Path, out_dir: Path, n_customers: int = 3, k: int = 10,
             seed: int = 0) -> Path:
    """Fit ALS on ``data_dir``, print a few customers' histories and slates, write HTML.

    Returns the path of the HTML page.
    """
    start = time.perf_counter()
    data = load_interactions(data_dir / "transactions.csv")
    catalog = Catalog.from_directory(data_dir / "images")
    model = create_model("als", factors=64, iterations=15, random_state=seed).fit(data)
    print(f"fitted ALS on {data} in {time.perf_counter() - start:.1f}s")

    rng = np.random.default_rng(seed)
    users = list(rng.choice(data.user_ids, size=min(n_customers, data.n_users), replace=False))
    items, scores = model.recommend(users, k=k)
    sections = []
    for user, row_items, row_scores in zip(users, items, scores, strict=True):
        bought = data.user_history(user)["item_id"].drop_duplicates().tolist()
        print(f"\ncustomer {user[:12]}… bought {len(bought)}: {' '.join(bought[:8])}"
              f"{' …' if len(bought) > 8 else ''}")
        for rank, (item, score) in enumerate(zip(row_items, row_scores, strict=True), 1):
            print(f"  {rank:2d}. {item}  cf {score:.4f}")
        sections.append(_section(user, bought, list(row_items), catalog, out_dir))

    out_dir.mkdir(parents=True, exist_ok=True)
    page = out_dir / "index.html"
    write_bytes_atomic(page, _page("stylerec demo", "".join(sections)).encode())
    print(f"\nwrote {page} ({time.perf_counter() - start:.1f}s in all)")
    return page


def _thumbs(item_ids: list[str], catalog: Catalog, out_dir: Path) -> str:
    cells = []
    for item in item_ids:
        src = os.path.relpath(catalog.path(item), out_dir) if item in catalog else ""
        cells.append(f'<figure><img src="{html.escape(src)}" alt="{item}"><figcaption>'
                     f"{html.escape(item)}</figcaption></figure>")
    return '<div class="row">' + "".join(cells) + "</div>"


def _section(user: str, bought: list[str], recs: list[str], catalog: Catalog,
             out_dir: Path) -> str:
    return (f"<h2>customer {html.escape(user[:16])}…</h2><h3>bought</h3>"
            f"{_thumbs(bought, catalog, out_dir)}<h3>recommended</h3>"
            f"{_thumbs(recs, catalog, out_dir)}")


def _page(title: str, body: str) -> str:
    style = ("body{font-family:sans-serif;margin:2em}.row{display:flex;flex-wrap:wrap;gap:6px}"
             "figure{margin:0;font-size:11px;text-align:center}img{height:150px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{style}</style></head><body><h1>{title}</h1>{body}</body></html>")

