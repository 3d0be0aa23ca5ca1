"""Embed every image of a catalog directory into an embedding store, for one or more encoders.

Resumable: finished shards are reused, so rerunning after an interruption (or over
a grown catalog) only computes what is missing.

Examples
--------
Embed the H&M photos with the offline encoders::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/embed_catalog.py \\
        --images ../shared/data/hm/images --store /work/cache/embeddings \\
        --encoder efficientnet-lite0 --encoder efficientnet-lite0-style \\
        --encoder magenta-style --threads 1

Measure throughput instead (bare forward vs full pipeline, side by side)::

    .venv/bin/python scripts/embed_catalog.py --images ../shared/data/hm/images \
        --encoder efficientnet-lite0 --benchmark 256 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import torch

from evaluation.bench_encoder import benchmark_encoder
from recsys.catalog import Catalog
from recsys.embedding_store import EmbeddingStore
from recsys.encoders import available_encoders, create_encoder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, help="catalog root (id = file stem)")
    parser.add_argument("--store", help="embedding store directory")
    parser.add_argument("--encoder", action="append", required=True,
                        help=f"encoder name, repeatable; one of {available_encoders()}")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="decoding threads")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: best)")
    parser.add_argument("--limit", type=int, default=None, help="first N items only")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--benchmark", type=int, metavar="N", default=None,
                        help="instead of embedding: time bare forward vs pipeline on N images")
    parser.add_argument("--rounds", type=int, default=3, help="benchmark rounds")
    args = parser.parse_args(argv)
    if args.store is None and args.benchmark is None:
        parser.error("--store is required (or --benchmark N)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    if args.threads:
        torch.set_num_threads(args.threads)
    catalog = Catalog.from_directory(args.images)
    ids = catalog.item_ids[: args.limit]
    if args.benchmark:  # spread over the catalog rather than its first folder
        ids = catalog.item_ids[:: max(1, len(catalog) // args.benchmark)][: args.benchmark]
    paths = [catalog.path(i) for i in ids]
    for name in args.encoder:
        encoder = create_encoder(name, device=args.device, batch_size=args.batch_size,
                                 num_workers=args.workers)
        if args.benchmark:
            result = benchmark_encoder(encoder, paths[: args.benchmark], args.batch_size,
                                       args.rounds)
            print(json.dumps(result), flush=True)
            continue
        store = EmbeddingStore(args.store, encoder)
        start = time.perf_counter()
        vectors, ok, failures = store.get_or_compute(ids, paths, progress=not args.no_progress)
        print(json.dumps({
            "encoder": name, "encoder_id": encoder.encoder_id, "folder": str(store.path_),
            "items": len(ids), "ok": int(ok.sum()), "failed": len(failures),
            "computed": store.misses_, "seconds": round(time.perf_counter() - start, 1),
            "norm_min": float(np.linalg.norm(vectors[ok], axis=1).min()) if ok.any() else None,
        }), flush=True)
        for item_id, reason in failures.items():
            print(f"failed {item_id}: {reason}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
