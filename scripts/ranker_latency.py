"""Single-user latency of the learned ranker's LightGBM path on H&M (HNSW32 item index).

``validation_windows=0`` forces the model to rank (no hand-over to a single source), so
the timing is the learned path: the sources of ``StyleRecommender``'s default learned
ranker given item groups (repurchase, family, ALS, recent popularity, visual neighbours
and the chain repurchase → family → recent popularity), features, LightGBM scores and
per-entry contributions. Run with ``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1``; one JSON line out::

    python scripts/ranker_latency.py --hm ../shared/data/hm --cache out/cache/embeddings
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from evaluation.adapters import _image_embeddings
from recsys.interactions import load_interactions
from recsys.learned_ranker import LearnedRanker
from recsys.recommender import learned_sources
from recsys.taste import EmbeddingPCA

ALS = {"factors": 64, "iterations": 15, "random_state": 0, "num_threads": 1}
SOURCES = learned_sources("als", ALS, "HNSW32", item_groups=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hm", type=Path, default=Path("../shared/data/hm"))
    parser.add_argument("--cache", default="out/cache/embeddings")
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    data = load_interactions(args.hm / "transactions.csv")
    ids, vectors = _image_embeddings(str((args.hm / "images").resolve()), args.cache,
                                     "efficientnet-lite0")
    vectors = EmbeddingPCA(128).fit(vectors).transform(vectors)
    ranker = LearnedRanker(SOURCES, train_windows=3, validation_windows=0).fit(
        data, ids, vectors, item_groups={i: i[:7] for i in ids})
    users = list(np.random.default_rng(6).choice(data.user_ids, args.calls))
    for user in users[:10]:
        ranker.rank([user], 10, contributions=True)
    latencies = []
    for user in users:
        start = time.perf_counter()
        ranker.rank([user], 10, contributions=True)
        latencies.append((time.perf_counter() - start) * 1000)
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    print(json.dumps({"items": len(ids), "calls": len(users), "p50_ms": round(p50, 2),
                      "p95_ms": round(p95, 2), "p99_ms": round(p99, 2),
                      "load_average": os.getloadavg()}))


if __name__ == "__main__":
    main()
