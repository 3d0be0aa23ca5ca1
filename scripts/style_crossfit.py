"""Spread of the matched styles over shoppers the hubness correction was *not* learned on.

``stylerec style-report`` learns the correction on the very shoppers it then measures, so
a cap imposed at fit (``hubness="balanced"``) holds there by construction. Here the
shoppers are split at random into two halves; the matcher is fitted with one half's
histories as its population and matches the other half, and the other way round, so
every shopper is matched by a correction learned without them. Each split gives the
normalised entropy and the top reference's share over its fair share, as in the study.

Run (from a checkout next to ``shared/``; the descriptors come from the cache)::

    OPENBLAS_NUM_THREADS=1 python scripts/style_crossfit.py --styles ../shared/data/styles \
        --cache-dir /work/cache/aesthetic --params '{"hubness": "balanced", "max_share": 2}'
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.style_fit import discrimination, match_histories
from evaluation.style_study import study_data
from recsys.aesthetic import AestheticMatcher, StyleLibrary
from recsys.interactions import Interactions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=Path, default=Path("data/transactions.csv"))
    parser.add_argument("--images", type=Path, default=Path("data/images"))
    parser.add_argument("--styles", type=Path, default=Path("../shared/data/styles"))
    parser.add_argument("--exclude-licence", default="tests only")
    parser.add_argument("--cache-dir", type=Path, default=Path("/work/cache/aesthetic"))
    parser.add_argument("--params", default="{}",
                        help="AestheticMatcher parameters as JSON (block_weights included)")
    parser.add_argument("--half-life-days", type=float, default=60.0)
    parser.add_argument("--splits", type=int, default=5, help="random halvings (seeds 0..)")
    args = parser.parse_args()

    transactions = pd.read_csv(args.transactions, dtype={"article_id": str,
                                                         "customer_id": str})
    library = StyleLibrary.from_folder(args.styles, args.exclude_licence or None)
    study = study_data(transactions, args.images, library, args.cache_dir)
    frame, item_ids, item_desc = study.frame, study.item_ids, study.item_desc
    style_desc = study.style_desc
    params = json.loads(args.params)
    units = np.array(sorted(frame["unit"].unique()))
    splits = []
    for seed in range(args.splits):
        half = np.random.default_rng(seed).permutation(len(units)) % 2
        matched = {}
        for k in (0, 1):
            population = frame[frame["unit"].isin(units[half == k])]
            matcher = AestheticMatcher(half_life_days=args.half_life_days, **params).fit(
                library, style_desc, item_desc, item_ids=item_ids,
                interactions=Interactions.from_frame(population, "unit", "article_id",
                                                     "t_dat"))
            held_out = match_histories(frame[frame["unit"].isin(units[half != k])], matcher,
                                       item_ids, matcher.item_vectors(item_desc),
                                       user_col="unit")
            matched |= {u: library.ids[i] for u, i in held_out.nearest.items()}
        d = discrimination(list(matched.values()), len(library), n_resamples=200)
        splits.append({"seed": seed, "shoppers": len(matched),
                       "normalised_entropy": round(d["normalised_entropy"], 3),
                       "max_share_over_fair": round(d["max_share_over_fair"], 2)})
    print(json.dumps({"params": params, "splits": splits}, indent=1))


if __name__ == "__main__":
    main()
