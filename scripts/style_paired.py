"""Paired comparison of ``stylerec style-report`` runs on the label judge.

The intervals in ``results.json`` are per run; two settings matched on the same shoppers
are compared better by the per-shopper difference of their matched references' label-judge
percentiles, with a bootstrap interval over shoppers (1,000 resamples, seeded). The first
run is the baseline. The runs must share the transactions, articles and library.

Run (from a checkout next to ``shared/``)::

    OPENBLAS_NUM_THREADS=1 python scripts/style_paired.py out/default out/coverage ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.style_fit import Judges, percentiles
from recsys.aesthetic import StyleLibrary


def label_percentiles(result: dict, judges: Judges, library: list[str]) -> dict[str, float]:
    """unit -> the label-judge percentile of its matched reference (units with labels)."""
    if result["params"]["library"] != library:
        raise ValueError("the runs were made with different style libraries")
    row = {s: i for i, s in enumerate(library)}
    out = {}
    for unit in result["units"]:
        d = judges.label_distances(unit["items"])
        if d is not None:
            out[unit["unit"]] = float(percentiles(d[None], np.array([row[unit["style"]]]))[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="style-report --out folders")
    parser.add_argument("--articles", type=Path, default=Path("data/articles.csv"))
    parser.add_argument("--styles", type=Path, default=Path("../shared/data/styles"))
    parser.add_argument("--exclude-licence", default="tests only")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    library = StyleLibrary.from_folder(args.styles, args.exclude_licence or None)
    articles = pd.read_csv(args.articles, dtype={"article_id": str})
    judges = Judges.build(library.paths, articles)
    runs = [label_percentiles(json.loads((r / "results.json").read_text()), judges,
                              library.ids) for r in args.runs]
    units = sorted(runs[0])
    resamples = np.random.default_rng(args.seed).integers(0, len(units), (1000, len(units)))
    rows = []
    for path, run in zip(args.runs[1:], runs[1:], strict=True):
        diff = np.array([run[u] - runs[0][u] for u in units])
        boot = diff[resamples].mean(1)
        rows.append({"run": str(path),
                     "label_percentile": round(float(np.mean([run[u] for u in units])), 3),
                     "minus_baseline": round(float(diff.mean()), 3),
                     "ci_low": round(float(np.percentile(boot, 2.5)), 3),
                     "ci_high": round(float(np.percentile(boot, 97.5)), 3)})
    print(json.dumps({"baseline": str(args.runs[0]), "shoppers": len(units), "runs": rows},
                     indent=1))


if __name__ == "__main__":
    main()
