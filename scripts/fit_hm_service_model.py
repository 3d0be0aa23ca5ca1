"""Fit the H&M pipeline that the service load test serves (docs/serve.md).

The settings: ALS (32 factors, alpha 40) ⊕ EfficientNet-Lite0 taste in 256 whitened
dimensions (mean profile, 2-day half-life), the ranker's pool of 200 CF and 100 taste
candidates, cold items' CF part 0.5, blend 0.5 (the base parameters of the ``blend``
model in configs/hm_backtest.json) and the product-code part (``group_weight`` 1).
It is fitted on every purchase: a service serves the latest model, not an
evaluation split. Embeddings come from the embedding store, so point
``--cache-dir`` at a filled one to avoid encoding 17k images.

Examples
--------
::

    OPENBLAS_NUM_THREADS=1 nice python scripts/fit_hm_service_model.py \\
        --data ../shared/data/hm --styles ../shared/data/styles \\
        --cache-dir /work/cache/embeddings --out out/hm-model
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from recsys.catalog import Catalog
from recsys.interactions import load_interactions
from recsys.recommender import StyleRecommender


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/hm"))
    parser.add_argument("--styles", type=Path, default=Path("../shared/data/styles"))
    parser.add_argument("--cache-dir", type=Path, required=True, help="embedding store")
    parser.add_argument("--out", type=Path, default=Path("out/hm-model"))
    parser.add_argument("--index-factory", default="Flat",
                        help="FAISS factory of the ranker's item index (default: Flat, exact)")
    parser.add_argument("--ranker", choices=("learned", "blend"), default="learned",
                        help="how slates are ranked (default: learned, the library default)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    start = time.perf_counter()
    data = load_interactions(args.data / "transactions.csv")
    catalog = Catalog.from_directory(args.data / "images")
    model = StyleRecommender(
        "als", {"factors": 32, "regularization": 0.01, "alpha": 40.0, "iterations": 15,
                "random_state": 0, "num_threads": 1},
        cache_dir=args.cache_dir, embedding_dim=256,
        taste_params={"method": "mean", "half_life_days": 2}, blend=0.5, ranker=args.ranker,
        ranker_params={"n_cf_candidates": 200, "n_taste_candidates": 100, "max_queries": 8,
                       "affinity": "max", "cold_cf": 0.5, "group_weight": 1.0,
                       "index_factory": args.index_factory},
    ).fit(data, catalog, args.styles, item_groups={i: i[:7] for i in catalog.item_ids})
    model.save(args.out)
    print(f"fitted on {data}: {len(model.ranker_.item_ids_)} items, {len(model.style_paths_)} "
          f"styles in {time.perf_counter() - start:.0f} s; saved to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
