"""Cold start on H&M: who finds the articles nobody had bought before the cut-off?

The final week of the sample (cut-off 2020-09-16, 7 days) is the one week whose catalog
of new articles is declared by data outside the evaluated customers:
``transactions_last_week_others.csv`` lists 104,619 purchases of 47,707 *other*
customers that week. Evaluated: customers with a purchase that week and one before.
Relevant: their purchases that week of articles with no purchase in the sample before
the cut-off. Catalog: articles with a training purchase plus every article of the
other customers' file; only those get embeddings (EfficientNet-Lite0 from the store,
128 whitened principal components fitted on the catalog).

Compared, each as a candidate source with ``n`` slots per customer:
``visual-neighbours`` (FAISS over the catalog, nearest to the customer's recent
articles and taste), ``new-arrivals`` ranked visually (the new articles nearest the
customer) and ranked by listings (``rank="listed"``: how often the other customers
bought each new article that week: popularity among new arrivals, which uses that
week's purchases of other people), and ``recent-popularity`` (7 days, what an
image-free recommender offers).

Run (from a checkout next to ``shared/``)::

    OPENBLAS_NUM_THREADS=1 python scripts/hm_cold_start.py --cache /work/cache/embeddings
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.adapters import _image_embeddings
from recsys.interactions import load_interactions
from recsys.sources import SOURCES
from recsys.taste import EmbeddingPCA
from recsys.visual_sources import VisualSource


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hm", type=Path, default=Path("../shared/data/hm"))
    parser.add_argument("--cache", default="out/cache/embeddings")
    parser.add_argument("--cut", default="2020-09-16")
    parser.add_argument("--out", type=Path, help="write the table as JSON here")
    args = parser.parse_args()
    others_file = args.hm / "transactions_last_week_others.csv"
    data = load_interactions(args.hm / "transactions.csv")
    times, cut = data.events["time"], pd.Timestamp(args.cut)
    train = data.select((times < cut).to_numpy())
    test = data.select(((times >= cut) & (times < cut + pd.Timedelta(days=7))).to_numpy())
    trained = set(train.item_ids[np.unique(train.events["item"])])
    known = set(train.user_ids[np.unique(train.events["user"])])
    users = [u for u in test.user_ids[np.unique(test.events["user"])] if u in known]
    relevant = {u: set(test.user_history(u)["item_id"]) - trained for u in users}
    users = [u for u in users if relevant[u]]
    others = set(pd.read_csv(others_file, dtype={"article_id": str})["article_id"])
    catalog = trained | others
    ids, vectors = _image_embeddings(str((args.hm / "images").resolve()), args.cache,
                                     "efficientnet-lite0")
    keep = np.isin(ids, np.asarray(sorted(catalog)))
    ids, vectors = ids[keep], EmbeddingPCA(128).fit(vectors[keep]).transform(vectors[keep])
    specs = {"visual-neighbours": ("visual-neighbours", {}),
             "new-arrivals (visual)": ("new-arrivals", {}),
             "new-arrivals (listed)": ("new-arrivals", {"catalog": str(others_file),
                                                        "rank": "listed"}),
             "recent-popularity-7d": ("recent-popularity", {"days": 7})}
    n_relevant = sum(len(r) for r in relevant.values())
    sizes = np.array([len(relevant[u]) for u in users])
    hits = {}
    table = {"customers": len(users), "cold_purchases": n_relevant,
             "reachable_in_catalog": sum(len(r & catalog) for r in relevant.values()),
             "new_articles_declared": len(others - trained), "recall": {}}
    for label, (name, params) in specs.items():
        source = SOURCES.create(name, **params)
        if isinstance(source, VisualSource):
            source.set_embeddings(ids, vectors)
        found, _ = source.fit(train).candidates(users, 100)
        hits[label] = {n: np.array([len(set(row[:n]) & relevant[u]) for u, row in
                                    zip(users, found, strict=True)]) for n in (12, 100)}
        table["recall"][label] = {f"@{n}": float(h.sum() / n_relevant)
                                  for n, h in hits[label].items()}
    # paired difference, resampling customers (95% interval of the ratio of sums)
    draw = np.random.default_rng(0).integers(0, len(users), (2000, len(users)))
    a, b = hits["new-arrivals (visual)"], hits["new-arrivals (listed)"]
    table["visual_minus_listed"] = {}
    for n in (12, 100):
        diff = (a[n] - b[n])[draw].sum(axis=1) / sizes[draw].sum(axis=1)
        low, high = np.quantile(diff, [0.025, 0.975])
        table["visual_minus_listed"][f"@{n}"] = {
            "diff": float((a[n] - b[n]).sum() / n_relevant), "ci_low": float(low),
            "ci_high": float(high)}
    print(json.dumps(table, indent=1))
    if args.out:
        args.out.write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
