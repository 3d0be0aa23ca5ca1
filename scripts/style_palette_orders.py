"""How each palette similarity orders the references for each shopper, before any hubness
correction: the judges' mean percentile of every shopper's 1st..5th reference, the mean
Spearman correlation (per shopper, over the references) between the similarity and minus
the judge's distance, and how the 1st choices pile up. Block weights palette 1, texture 0,
style 0, items' palettes as measured (power 1, rounds 4 and 5) unless ``--params`` says
otherwise; whole demo histories, half-life 60 days.

Run (from a checkout next to ``shared/``; descriptors from the cache)::

    OPENBLAS_NUM_THREADS=1 python scripts/style_palette_orders.py \
        --cache-dir /work/cache/aesthetic
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from evaluation.style_fit import Judges, percentiles, unit_histories
from evaluation.style_study import study_data
from recsys.aesthetic import PALETTE_SIMILARITIES, AestheticMatcher, StyleLibrary
from recsys.interactions import Interactions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=Path, default=Path("data/transactions.csv"))
    parser.add_argument("--articles", type=Path, default=Path("data/articles.csv"))
    parser.add_argument("--images", type=Path, default=Path("data/images"))
    parser.add_argument("--styles", type=Path, default=Path("../shared/data/styles"))
    parser.add_argument("--exclude-licence", default="tests only")
    parser.add_argument("--cache-dir", type=Path, default=Path("/work/cache/aesthetic"))
    parser.add_argument("--params", default='{"block_weights": {"palette": 1, "texture": 0, '
                        '"style": 0}, "hubness": null, "palette_power": 1}',
                        help="AestheticMatcher parameters as JSON (palette is set per row)")
    parser.add_argument("--half-life-days", type=float, default=60.0)
    args = parser.parse_args()

    transactions = pd.read_csv(args.transactions, dtype={"article_id": str,
                                                         "customer_id": str})
    articles = pd.read_csv(args.articles, dtype={"article_id": str})
    library = StyleLibrary.from_folder(args.styles, args.exclude_licence or None)
    study = study_data(transactions, args.images, library, args.cache_dir)
    frame, item_ids, item_desc = study.frame, study.item_ids, study.item_desc
    style_desc = study.style_desc
    judges = Judges.build(library.paths, articles,
                          {i: str(study.catalog.path(i)) for i in item_ids})
    data = Interactions.from_frame(frame, "unit", "article_id", "t_dat")
    histories = unit_histories(frame)
    params = json.loads(args.params)
    out = {"params": params}
    for palette in PALETTE_SIMILARITIES:
        matcher = AestheticMatcher(**params | {"palette": palette,
                                               "half_life_days": args.half_life_days}).fit(
            library, style_desc, item_desc)
        taste = matcher.taste_model().fit(data, item_ids, matcher.item_vectors(item_desc))
        users = list(taste.user_ids_)
        scores = taste.transform(users).vectors[:, 0] @ matcher.style_vectors_.T
        order = np.argsort(-scores, 1, kind="stable")
        row: dict = {}
        for judge, distances in (("labels", judges.label_distances),
                                 ("kmeans", judges.kmeans_distances)):
            by_rank, rho = [], []
            for r, user in enumerate(users):
                d = distances(histories[user])
                if d is not None:
                    by_rank.append(percentiles(np.repeat(d[None], 5, 0), order[r, :5]))
                    rho.append(spearmanr(scores[r], -d).statistic)
            row[judge] = {"percentile_of_choice_1_to_5": np.mean(by_rank, 0).round(3).tolist(),
                          "spearman": round(float(np.mean(rho)), 3), "shoppers": len(rho)}
        firsts = np.bincount(order[:, 0], minlength=len(library))
        row["first_choices_top5"] = sorted(firsts.tolist(), reverse=True)[:5]
        row["references_used"] = int((firsts > 0).sum())
        out[palette] = row
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
