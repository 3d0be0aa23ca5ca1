"""The label judge of a ``stylerec style-report`` run, split by whether a unit's customer
is one of the shoppers whose histories chose the matcher's settings (the demo set), and,
for a run on held-out windows, the behaviour lift split the same way (their whole
histories overlap the windows).

Run (from a checkout next to ``shared/``) on an H&M report's ``results.json``::

    python scripts/style_heldout_customers.py out/style-report-hm/results.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from evaluation.metrics import bootstrap_ci
from evaluation.style_fit import Judges, behaviour_lift, near_sets, record_label_percentiles
from evaluation.style_study import history_units
from recsys.aesthetic import StyleLibrary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--chosen-on", type=Path, default=Path("data/transactions.csv"),
                        help="transactions of the shoppers the settings were chosen on")
    parser.add_argument("--styles", type=Path, default=Path("../shared/data/styles"))
    parser.add_argument("--exclude-licence", default="tests only")
    parser.add_argument("--articles", type=Path, default=Path("../shared/data/hm/articles.csv"))
    args = parser.parse_args()

    result = json.loads(args.results.read_text())
    library = StyleLibrary.from_folder(args.styles, args.exclude_licence or None)
    articles = pd.read_csv(args.articles, dtype={"article_id": str})
    judges = Judges.build(library.paths, articles, None)
    chosen_on = set(pd.read_csv(args.chosen_on, dtype=str)["customer_id"])
    groups: dict[str, list[float]] = {"chosen-on customers": [], "other customers": []}
    for unit, percentile in record_label_percentiles(result, judges, library.ids).items():
        seen = unit.split("@")[0] in chosen_on
        groups["chosen-on customers" if seen else "other customers"].append(percentile)
    out = {}
    for name, values in groups.items():
        low, high = bootstrap_ci(values) if values else (float("nan"), float("nan"))
        out[name] = {"units": len(values), "label_percentile": round(float(np.mean(values)), 3)
                     if values else None, "ci": [round(low, 3), round(high, 3)]}
    params = result["params"]
    if params["windows"]:
        _, future = history_units(
            pd.read_csv(params["transactions"], dtype={"article_id": str, "customer_id": str}),
            params["windows"], params["window_days"], params["history_days"])
        near = near_sets(judges, articles["article_id"].tolist(), params["near_fraction"])
        matched = {u["unit"]: library.ids.index(u["style"]) for u in result["units"]}
        for name, seen in (("chosen-on customers", True), ("other customers", False)):
            lift = behaviour_lift({u: f for u, f in future.items()
                                   if (u.split("@")[0] in chosen_on) == seen}, matched, near)
            out[name]["lift"] = [round(lift[k], 3) for k in ("lift", "lift_ci_low",
                                                              "lift_ci_high")]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
