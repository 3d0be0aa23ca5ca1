"""Paired comparison of ``stylerec style-report`` runs on the label judge.

The intervals in ``results.json`` are per run; two settings matched on the same shoppers
are compared better by the per-shopper difference of their matched references' label-judge
percentiles, with a bootstrap interval over shoppers (1,000 resamples, seeded). The first
run is the baseline. The runs must share the transactions, articles and library. Runs on
held-out windows also get the paired difference of their behaviour lifts (the same units
resampled for both runs); give the articles of the declared catalog (``--articles``), as
the report was.

Run (from a checkout next to ``shared/``)::

    OPENBLAS_NUM_THREADS=1 python scripts/style_paired.py out/default out/coverage ...
    python scripts/style_paired.py out/hm-round5 out/hm-round6 \
        --articles ../shared/data/hm/articles.csv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.style_fit import Judges, near_sets, near_shares, record_label_percentiles
from evaluation.style_study import history_units
from recsys.aesthetic import StyleLibrary


def window_shares(result: dict, future: dict[str, list[str]], near: list[set[str]],
                  library: list[str]) -> dict[str, tuple[float, float]]:
    """unit -> (share of its window purchases near its matched reference, the mean of that
    share over all references), as :func:`evaluation.style_fit.behaviour_lift` counts."""
    row = {s: i for i, s in enumerate(library)}
    out = {}
    for unit in result["units"]:
        bought = future.get(unit["unit"])
        if bought:
            shares = near_shares(bought, near)
            out[unit["unit"]] = (float(shares[row[unit["style"]]]), float(shares.mean()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="style-report --out folders")
    parser.add_argument("--articles", type=Path, default=Path("data/articles.csv"))
    parser.add_argument("--styles", type=Path, default=Path("../shared/data/styles"))
    parser.add_argument("--exclude-licence", default="tests only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transactions", type=Path,
                        help="the runs' log (default: the first run's); with windows, the "
                             "lifts are compared too")
    args = parser.parse_args()

    library = StyleLibrary.from_folder(args.styles, args.exclude_licence or None)
    articles = pd.read_csv(args.articles, dtype={"article_id": str})
    judges = Judges.build(library.paths, articles)
    results = [json.loads((r / "results.json").read_text()) for r in args.runs]
    runs = [record_label_percentiles(result, judges, library.ids) for result in results]
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
    params = results[0]["params"]
    if params["windows"]:
        _, future = history_units(
            pd.read_csv(args.transactions or params["transactions"],
                        dtype={"article_id": str, "customer_id": str}),
            params["windows"], params["window_days"], params["history_days"])
        near = near_sets(judges, articles["article_id"].tolist(), params["near_fraction"])
        shares = [window_shares(result, future, near, library.ids) for result in results]
        held = sorted(shares[0])
        picks = np.random.default_rng(args.seed).integers(0, len(held), (1000, len(held)))

        def lifts(run: dict[str, tuple[float, float]]) -> tuple[float, np.ndarray]:
            """The lift on all units and on each resample of them."""
            matched, random = (np.array([run[u][j] for u in held]) for j in (0, 1))
            return (matched.mean() / random.mean(),
                    matched[picks].mean(1) / random[picks].mean(1))

        base, base_boot = lifts(shares[0])
        for row, run in zip(rows, shares[1:], strict=True):
            lift, boot = lifts(run)
            diff = boot - base_boot
            row |= {"lift": round(float(lift), 3),
                    "lift_minus_baseline": round(float(lift - base), 3),
                    "lift_ci_low": round(float(np.percentile(diff, 2.5)), 3),
                    "lift_ci_high": round(float(np.percentile(diff, 97.5)), 3)}
    print(json.dumps({"baseline": str(args.runs[0]), "shoppers": len(units), "runs": rows},
                     indent=1))


if __name__ == "__main__":
    main()
