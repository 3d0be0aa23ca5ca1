"""H&M rolling weekly backtest of the learned ranker, its ablation and every candidate source.

Protocol (the honest-evaluation issue's backtest)
-------------------------------------------------
* Folds: weekly cut-offs ``--first`` … ``--last`` (default 2020-07-01 … 2020-09-16,
  12 folds). Training = purchases dated before the cut-off (whole days); test = the
  7 days from it. Evaluated: (customer, week) pairs of test buyers with at least one
  training purchase. Nothing is filtered (shoppers rebuy).
* Declared catalog per fold: articles with a training purchase, plus articles bought
  that week by customers *without* training history (not evaluated), plus for the
  final week every article of ``transactions_last_week_others.csv``. Only catalog
  articles get embeddings, so only they are reachable; the PCA of the embeddings is
  fitted per fold on the catalog's.
* Metrics per pair: MAP@12 (H&M: AP normalised by ``min(12, |R|)``), NDCG@10 (binary
  gain). Means with 95% bootstrap intervals over pairs; differences with paired
  bootstraps (same pairs resampled).
* Cold start, final week: recall@12 and @100 on relevant articles nobody bought
  before the cut-off, for the visual sources, popularity among new arrivals
  (``new-arrivals rank=listed``: listings in the other customers' file, which uses
  that week's purchases of other people) and the learned ranker.

Models: every source on its own (its own order), ``learned`` (all sources, image
features), ``learned-no-images`` (no visual source, no image feature).

Run::

    OPENBLAS_NUM_THREADS=1 nice .venv/bin/python scripts/hm_ranker_backtest.py \\
        --cache /work/cache/embeddings --out docs/results/hm_ranker.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.catalog import Catalog
from recsys.interactions import load_interactions
from recsys.learned_ranker import LearnedRanker, source_label
from recsys.sources import SOURCES
from recsys.taste import EmbeddingPCA
from recsys.visual_sources import VisualSource

log = logging.getLogger("hm_ranker_backtest")
HM = Path("../shared/data/hm")  # --hm overrides
ALS = {"model": "als", "params": {"factors": 32, "regularization": 0.1, "iterations": 15,
                                  "random_state": 0, "num_threads": 1}}
NON_VISUAL = [
    {"name": "repurchase"},
    {"name": "family", "params": {"group": "prefix:7"}},
    {"name": "recent-popularity", "params": {"days": 7}},
    {"name": "cf", "params": ALS},
    {"name": "cf", "params": {"model": "itemknn", "params": {"num_threads": 1}}},
]
VISUAL = [{"name": "visual-neighbours"}, {"name": "new-arrivals", "params": {"catalog": None}}]


def ap_at(ranked: list[str], relevant: set[str], k: int = 12) -> float:
    hits, total = 0, 0.0
    for i, item in enumerate(ranked[:k]):
        if item in relevant:
            hits += 1
            total += hits / (i + 1)
    return total / min(k, len(relevant))


def ndcg_at(ranked: list[str], relevant: set[str], k: int = 10) -> float:
    dcg = sum(1 / np.log2(i + 2) for i, item in enumerate(ranked[:k]) if item in relevant)
    ideal = sum(1 / np.log2(i + 2) for i in range(min(k, len(relevant))))
    return dcg / ideal


def by_user_interval(values: np.ndarray, users: np.ndarray, resamples: int,
                     seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the mean over (user, week) pairs, resampling users."""
    codes, index = np.unique(users, return_inverse=True)
    sums = np.bincount(index, weights=values, minlength=len(codes))
    counts = np.bincount(index, minlength=len(codes))
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, len(codes), size=(resamples, len(codes)))
    means = sums[draw].sum(axis=1) / counts[draw].sum(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)


def embeddings(cache: str, images: Path) -> tuple[np.ndarray, np.ndarray]:
    from recsys.embedding_store import EmbeddingStore
    from recsys.encoders import create_encoder

    catalog = Catalog.from_directory(images)
    ids = np.asarray(catalog.item_ids, dtype=str)
    found = EmbeddingStore(cache, create_encoder("efficientnet-lite0")).get_or_compute(
        ids, [catalog.path(i) for i in ids])
    return ids[found.ok], found.vectors[found.ok]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hm", type=Path, default=HM, help="H&M data folder")
    parser.add_argument("--cache", default="/work/cache/embeddings")
    parser.add_argument("--first", default="2020-07-01")
    parser.add_argument("--last", default="2020-09-16")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("implicit").setLevel(logging.WARNING)
    logging.getLogger("recsys.cf").setLevel(logging.WARNING)
    started = time.time()
    data = load_interactions(args.hm / "transactions.csv")
    raw = pd.read_csv(args.hm / "transactions.csv", dtype={"customer_id": str, "article_id": str})
    prices = pd.DataFrame({"user": raw["customer_id"], "item": raw["article_id"],
                           "time": pd.to_datetime(raw["t_dat"]), "price": raw["price"]})
    others = pd.read_csv(args.hm / "transactions_last_week_others.csv", dtype={"article_id": str})
    groups = {i: i[:7] for i in data.item_ids}
    image_ids, image_vectors = embeddings(args.cache, args.hm / "images")
    image_pos = {t: i for i, t in enumerate(image_ids)}
    times = data.events["time"]
    cuts = pd.date_range(args.first, args.last, freq="7D")
    models = ([source_label(s) for s in NON_VISUAL + VISUAL]
              + ["learned", "learned-no-images"])
    per_pair: dict[str, dict[str, list[float]]] = {m: {"map@12": [], "ndcg@10": []}
                                                   for m in models}
    pairs, folds, cold = [], [], {}
    for cut in cuts:
        train = data.select((times < cut).to_numpy())
        test = data.select(((times >= cut) & (times < cut + pd.Timedelta(days=7))).to_numpy())
        train_users = set(train.user_ids[np.unique(train.events["user"])])
        buyers = test.user_ids[np.unique(test.events["user"])]
        users = [u for u in buyers if u in train_users]
        newcomers = [u for u in buyers if u not in train_users]
        bought = test.matrix
        relevant = {u: set(test.item_ids[bought[test.user_index(u)[0]].indices]) for u in users}
        trained_items = set(train.item_ids[np.unique(train.events["item"])])
        declared = set()
        if newcomers:
            declared = set(test.item_ids[bought[test.user_index(newcomers)].indices])
        final = cut + pd.Timedelta(days=6) >= pd.Timestamp("2020-09-22")
        if final:
            declared |= set(others["article_id"])
        catalog = sorted(trained_items | declared)
        embedded = np.array([t for t in catalog if t in image_pos])
        vectors = image_vectors[[image_pos[t] for t in embedded]]
        vectors = EmbeddingPCA(128, whiten=True).fit(vectors).transform(vectors)
        in_catalog = set(catalog)
        fold = {"cut": str(cut.date()), "pairs": len(users), "catalog": len(catalog),
                "declared_new": len(declared - trained_items),
                "relevant_cold": sum(len(r - trained_items) for r in relevant.values()),
                "relevant_cold_in_catalog": sum(len((r - trained_items) & in_catalog)
                                                for r in relevant.values())}
        log.info("fold %s: %d pairs, catalog %d (%d new)", fold["cut"], len(users),
                 len(catalog), fold["declared_new"])
        slates: dict[str, list[list[str]]] = {}
        for spec in NON_VISUAL + VISUAL:
            source = SOURCES.create(spec["name"], **(spec.get("params") or {}))
            if isinstance(source, VisualSource):
                source.set_embeddings(embedded, vectors)
            ids, _ = source.fit(train).candidates(users, 100)
            slates[source_label(spec)] = [[t for t in row if t and t in in_catalog]
                                          for row in ids]
        for name, sources, images in (("learned", NON_VISUAL + VISUAL, True),
                                      ("learned-no-images", NON_VISUAL, False)):
            ranker = LearnedRanker(sources=sources, use_images=images).fit(
                train, embedded, vectors, item_groups=groups, prices=prices)
            slates[name] = [[t for t in row if t] for row in ranker.rank(users, 100).items]
            fold[name] = {"choice": ranker.choice_, "validation": ranker.validation_,
                          "top_features": sorted(ranker.feature_importances_.items(),
                                                 key=lambda kv: -kv[1])[:10]}
            log.info("fold %s %s: choice %s, validation %s", fold["cut"], name,
                     ranker.choice_, ranker.validation_)
        for name in models:
            for user, ranked in zip(users, slates[name], strict=True):
                per_pair[name]["map@12"].append(ap_at(ranked, relevant[user]))
                per_pair[name]["ndcg@10"].append(ndcg_at(ranked, relevant[user]))
        if final:
            listed = SOURCES.create("new-arrivals", rank="listed", catalog=str(
                args.hm / "transactions_last_week_others.csv")).fit(train)
            ids, _ = listed.candidates(users, 100)
            slates["new-arrivals-listed"] = [[t for t in row if t] for row in ids]
            for name in ("visual-neighbours", "new-arrivals", "new-arrivals-listed", "learned",
                         "learned-no-images", "recent-popularity"):
                row = {}
                for n in (12, 100):
                    found = sum(len(set(s[:n]) & (relevant[u] - trained_items))
                                for u, s in zip(users, slates[name], strict=True))
                    row[f"recall@{n}"] = found / max(fold["relevant_cold"], 1)
                    row[f"found@{n}"] = found
                cold[name] = row
        pairs += [(fold["cut"], u) for u in users]
        folds.append(fold)
    pair_users = np.array([u for _, u in pairs])
    summary = {}
    for name in models:
        summary[name] = {}
        for metric, values in per_pair[name].items():
            low, high = by_user_interval(np.asarray(values), pair_users, args.resamples)
            summary[name][metric] = {"mean": float(np.mean(values)), "ci_low": low,
                                     "ci_high": high}
    best = max((source_label(s) for s in NON_VISUAL),
               key=lambda m: summary[m]["map@12"]["mean"])
    comparisons = {}
    for a, b in [("learned", best), ("learned-no-images", best),
                 ("learned", "learned-no-images")] + [
                     ("learned", source_label(s)) for s in NON_VISUAL + VISUAL]:
        comparisons[f"{a} - {b}"] = {}
        for m in ("map@12", "ndcg@10"):
            diff = np.asarray(per_pair[a][m]) - np.asarray(per_pair[b][m])
            low, high = by_user_interval(diff, pair_users, args.resamples)
            comparisons[f"{a} - {b}"][m] = {"diff": float(diff.mean()), "ci_low": low,
                                            "ci_high": high}
    record = {"protocol": __doc__.split("Models:")[0].strip(), "folds": folds,
              "n_pairs": len(pairs), "best_non_visual": best, "summary": summary,
              "comparisons": comparisons, "cold_start_final_week": cold,
              "sources": {"non_visual": NON_VISUAL, "visual": VISUAL},
              "seconds": round(time.time() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    for name in models:
        s = summary[name]
        print(f"{name:22s} MAP@12 {s['map@12']['mean']:.4f} [{s['map@12']['ci_low']:.4f}, "
              f"{s['map@12']['ci_high']:.4f}]  NDCG@10 {s['ndcg@10']['mean']:.4f}")
    for key, value in comparisons.items():
        m = value["map@12"]
        print(f"{key:40s} dMAP@12 {m['diff']:+.4f} [{m['ci_low']:+.4f}, {m['ci_high']:+.4f}]")
    print(json.dumps(cold, indent=1))


if __name__ == "__main__":
    main()
