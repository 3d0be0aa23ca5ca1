"""The learned ranker against ALS inside a MovieLens protocol's training split only.

The protocol's test split is never scored: its training events are split again the
way the config's tuning validation splits them, both models are fitted on the inner
training part and scored on the inner held-out part with every rated film removed
(``exclude_train="all"``), users paired. Variants of the ranker's parameters
(``--variant NAME '{"param": value}'``) are compared there, so a change can be chosen
without looking at the test split. Usage::

    python scripts/ml100k_ranker_check.py configs/ml100k_cornac.json \\
        --variant fine '{"label_fraction": 0.1, "train_windows": 6}'

``--report-test`` scores the same models on the protocol's own split instead (fitted
on its training split, every rated film removed): only to report a comparison once
every choice has been made on the inner split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import pandas as pd
from compare_models import paired

from evaluation.protocol import evaluate
from evaluation.runner import build_model, load_config, protocol_from_config
from evaluation.splits import make_split, validation_split
from recsys.interactions import load_interactions

METRICS = ("ndcg@10", "precision@10", "recall@10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--model", default="learned-cf", help="the ranker's config entry")
    parser.add_argument("--variant", nargs=2, action="append", default=[],
                        metavar=("NAME", "JSON"), help="parameters over the config's")
    parser.add_argument("--out", help="write the results (JSON) here")
    parser.add_argument("--report-test", action="store_true",
                        help="score on the protocol's test split (reporting only)")
    args = parser.parse_args()
    config = load_config(args.config)
    specs = {s["name"]: s for s in config["models"]}
    ranker = specs[args.model]
    als_params = next(s["params"]["params"] for s in ranker["params"]["sources"]
                      if s["params"].get("model") == "als")
    data = load_interactions(config["data"]["path"], **config["data"].get("options", {}))
    split = dict(config["split"])
    fit, held = make_split(data, split.pop("method"), **split)
    inner = dict(specs["als"]["tune"]["validation"])
    if not args.report_test:  # the test split is dropped
        fit, held = validation_split(fit, inner.pop("method"), **inner)
    protocol = dataclasses.replace(protocol_from_config(config), exclude_train="all")
    scores, out = {}, {"config": args.config, "als_params": als_params, "models": {},
                       "scored_on": "test split" if args.report_test else
                       f"inner split of the training split {specs['als']['tune']['validation']}"}
    runs = [("als", "als", als_params)]
    runs += [(name, ranker["model"], {**ranker["params"], **json.loads(extra)})
             for name, extra in [("learned", "{}"), *args.variant]]
    for name, kind, params in runs:
        started = time.perf_counter()
        model = build_model(kind, params).fit(fit)
        result = evaluate(model, fit, held, protocol)
        scores[name] = {m: pd.Series(result.per_user[m], index=result.user_ids)
                        for m in METRICS}
        entry = {m: float(v.mean()) for m, v in scores[name].items()}
        entry["seconds"] = round(time.perf_counter() - started, 1)
        if name != "als":
            entry |= {"choice": model.model_.choice_, "validation": model.model_.validation_,
                      "validation_gain": model.model_.validation_gain_, "params": params}
            entry |= {f"vs_als {m}": paired(scores[name][m], scores["als"][m], 2000, 0)
                      for m in METRICS}
        out["models"][name] = entry
        print(name, json.dumps({k: v for k, v in entry.items() if k != "params"},
                               default=float), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1, default=float)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
