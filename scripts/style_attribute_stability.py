"""How persistent is a shopper's taste? For each H&M article attribute (colour group, tone,
pattern, product type, ...), how often a shopper's most frequent value in the older half
of their history is also the most frequent in the newer half, against chance (the
study's halves and :func:`~evaluation.style_fit.stability`, the same figure as the
matched style's stability). No matcher and no library are involved: it says how stable
any descriptor of these shoppers can be expected to be.

Run (from a checkout next to ``shared/``; whole demo histories, or H&M windows)::

    python scripts/style_attribute_stability.py
    python scripts/style_attribute_stability.py --windows 4 \
        --transactions ../shared/data/hm/transactions.csv
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import pandas as pd

from evaluation.style_fit import split_halves, stability
from evaluation.style_study import history_units

ATTRIBUTES = ("colour_group_name", "perceived_colour_value_name",
              "perceived_colour_master_name", "graphical_appearance_name", "product_type_name",
              "garment_group_name", "index_group_name")


def most_frequent(part: pd.DataFrame, values: pd.Series) -> dict[str, str]:
    """unit -> its most frequent attribute value over its distinct articles (ties: the value
    of the first article in id order); articles without the attribute are skipped."""
    out = {}
    for unit, articles in part.groupby("unit")["article_id"]:
        found = [values[a] for a in sorted(set(articles)) if a in values.index]
        if found:
            out[unit] = str(Counter(found).most_common(1)[0][0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=Path, default=Path("data/transactions.csv"))
    parser.add_argument("--articles", type=Path, default=Path("../shared/data/hm/articles.csv"))
    parser.add_argument("--windows", type=int, default=0)
    args = parser.parse_args()

    transactions = pd.read_csv(args.transactions, dtype={"article_id": str, "customer_id": str})
    articles = pd.read_csv(args.articles, dtype={"article_id": str}).set_index("article_id")
    frame, _ = history_units(transactions, args.windows)
    older, newer = split_halves(frame, "unit", "day")
    out = {}
    for name in ATTRIBUTES:
        values = articles[name].dropna()
        s = stability(most_frequent(older, values), most_frequent(newer, values))
        out[name] = {k: round(v, 3) for k, v in s.items()}
    print(json.dumps({"transactions": str(args.transactions), "windows": args.windows,
                      "attributes": out}, indent=1))


if __name__ == "__main__":
    main()
