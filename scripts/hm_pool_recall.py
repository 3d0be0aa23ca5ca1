"""Candidate pool recall of the H&M backtest's ``learned-chain`` sources, fitted on the
whole H&M log (its label windows are the 10 weeks before 2020-09-22), and what the
no-harm rule chose. One JSON line out; run from the repository root with ``../shared``
beside it::

    OPENBLAS_NUM_THREADS=1 python scripts/hm_pool_recall.py --cache out/cache/embeddings
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from evaluation.adapters import LearnedSlates
from recsys.interactions import load_interactions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hm", type=Path, default=Path("../shared/data/hm"))
    parser.add_argument("--cache", default="out/cache/embeddings")
    parser.add_argument("--config", type=Path, default=Path("configs/hm_backtest.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    models = json.loads(args.config.read_text())["models"]
    params = next(m for m in models if m["name"] == "learned-chain")["params"]
    # the backtest's own adapter: the same embeddings, projection, groups and prices
    ranker = LearnedSlates(**params | {"cache_dir": args.cache}).fit(
        load_interactions(args.hm / "transactions.csv")).model_
    print(json.dumps({"n_candidates": ranker.n_candidates, "pool_recall": ranker.pool_recall_,
                      "choice": ranker.choice_, "validation_gain": ranker.validation_gain_}))


if __name__ == "__main__":
    main()
