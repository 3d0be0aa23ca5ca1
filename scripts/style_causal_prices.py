"""The H&M style study with capacity prices a deployment could have learned at each cut-off.

``stylerec style-report --windows N`` learns the matcher's hubness correction once, on
the histories of every unit; the histories of later windows hold purchases made inside
earlier windows, so the oldest windows' matches use prices learned partly on their own
future. Here each window's units are matched by a matcher whose correction is learned
only on the histories that end at or before that window's start (its own window's and
older ones'). Prints the label judge, the behaviour lift and the spread over all units.

Run (from a checkout next to ``shared/``; the descriptors come from the cache)::

    OPENBLAS_NUM_THREADS=1 python scripts/style_causal_prices.py --windows 12 \
        --cache-dir /work/cache/aesthetic --params '{}'
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from evaluation.style_fit import (
    Judges,
    behaviour_lift,
    colour_agreement,
    discrimination,
    match_histories,
    near_sets,
    unit_histories,
)
from evaluation.style_study import study_data
from recsys.aesthetic import AestheticMatcher, StyleLibrary
from recsys.interactions import Interactions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=Path,
                        default=Path("../shared/data/hm/transactions.csv"))
    parser.add_argument("--articles", type=Path, default=Path("../shared/data/hm/articles.csv"))
    parser.add_argument("--images", type=Path, default=Path("../shared/data/hm/images"))
    parser.add_argument("--styles", type=Path, default=Path("../shared/data/styles"))
    parser.add_argument("--exclude-licence", default="tests only")
    parser.add_argument("--cache-dir", type=Path, default=Path("/work/cache/aesthetic"))
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--params", default="{}", help="AestheticMatcher parameters as JSON")
    parser.add_argument("--half-life-days", type=float, default=60.0)
    args = parser.parse_args()

    transactions = pd.read_csv(args.transactions, dtype={"article_id": str,
                                                         "customer_id": str})
    articles = pd.read_csv(args.articles, dtype={"article_id": str})
    library = StyleLibrary.from_folder(args.styles, args.exclude_licence or None)
    study = study_data(transactions, args.images, library, args.cache_dir, args.windows)
    frame = study.frame.assign(start=study.frame["unit"].str.split("@").str[1])
    params = json.loads(args.params)
    matched: dict[str, int] = {}
    for start in sorted(frame["start"].unique()):  # ISO dates: text order is time order
        known = frame[frame["start"] <= start]  # histories ending by this window's start
        matcher = AestheticMatcher(half_life_days=args.half_life_days, **params).fit(
            library, study.style_desc, study.item_desc, item_ids=study.item_ids,
            interactions=Interactions.from_frame(known, "unit", "article_id", "t_dat"))
        matched |= match_histories(frame[frame["start"] == start], matcher, study.item_ids,
                                   matcher.item_vectors(study.item_desc),
                                   user_col="unit").nearest
    judges = Judges.build(library.paths, articles)
    histories = unit_histories(frame)
    near = near_sets(judges, articles["article_id"].tolist())
    print(json.dumps({
        "windows": args.windows, "params": params,
        "colour": colour_agreement({u: histories[u] for u in matched}, matched, judges),
        "behaviour": behaviour_lift(study.future, matched, near),
        "discrimination": discrimination([library.ids[i] for i in matched.values()],
                                         len(library))}, indent=1))


if __name__ == "__main__":
    main()
