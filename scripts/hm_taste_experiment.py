"""Does visual taste help? Popularity, ALS, taste-only and the blend on the H&M sample.

Protocol
--------
* Split: :func:`evaluation.splits.temporal_user_split` (customers with at least 5
  distinct articles; each one's latest 20% of purchases held out; held-out
  articles that nobody bought in training are kept: about 57% of them).
* Validation: the same split applied to the training part. Every setting is
  chosen on validation; the test part is scored once, with the chosen settings.
* Relevant items: a user's held-out articles minus those already in their
  training purchases; those are never recommended (``filter seen``).
* Metrics (``evaluation.metrics``): NDCG@10 (binary gain, log2 discount, ideal
  DCG over ``min(10, |relevant|)``) and HR@10 (at least one relevant article in
  the top 10), averaged over evaluated users; 95% bootstrap intervals, and
  paired bootstraps of the differences between models on the same users.
* Candidates: all 17,033 articles (every one has a photo). An article nobody
  bought in the fitting data is *cold*: CF cannot score it, only taste can.

Models
------
popularity
    distinct training customers per article.
als
    implicit ALS; factors, regularisation and alpha chosen on validation.
taste
    :class:`recsys.ranker.StyleRanker` with ``taste_weight=1`` and only taste
    candidates: the articles nearest to the user's visual taste profile.
blend
    the same ranker over CF top-N ∪ taste candidates with a validated weight
    and CF part for cold articles: ALS + visual taste, no metadata.
als+family
    no visual signal: CF top-N ∪ the other articles of the product codes the
    customer bought from (colour variants), with a validated bonus for those.
blend+family
    the blend plus that product-code bonus.

Selection is staged (each stage keeps the previous winners): ALS grid; the
embedding space (each encoder as is and under PCA); the taste profile and
affinity; the candidate pool sizes; the product-code bonus. Every stage sweeps
the blend weight and the cold articles' CF part on a pool built once.

Run (the embeddings come from ``scripts/embed_catalog.py``)::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python scripts/hm_taste_experiment.py \\
        --encoder efficientnet-lite0 --encoder magenta-style --latency 300 --index HNSW32 \\
        --out /tmp/taste/hm.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from evaluation.metrics import hit_matrix, hit_rate_at_k, ndcg_at_k, paired_bootstrap, summarize
from evaluation.protocol import Protocol, relevance_sets
from evaluation.splits import temporal_user_split
from recsys.catalog import Catalog
from recsys.cf import create_model
from recsys.embedding_store import EmbeddingStore
from recsys.interactions import Interactions, load_interactions
from recsys.ranker import Candidates, StyleRanker
from recsys.taste import EmbeddingPCA, TasteModel

log = logging.getLogger("hm_taste")
K = 10


@dataclass
class Split:
    """A fitting log and what its evaluated users bought afterwards."""

    name: str
    fit: Interactions
    users: np.ndarray  # evaluated users, positions in the vocabulary
    relevant: sp.csr_matrix  # [n_users_eval, n_items]
    seen: sp.csr_matrix  # [n_users_eval, n_items]: training items, never recommended
    warm: np.ndarray  # bool [n_items]: bought by someone in ``fit``

    @classmethod
    def make(cls, name: str, fit: Interactions, held: Interactions) -> Split:
        relevant, seen, _ = relevance_sets(fit, held, Protocol(ks=(K,)))
        users = np.flatnonzero(np.diff(relevant.indptr) > 0)
        warm = np.zeros(fit.n_items, bool)
        warm[fit.events["item"].to_numpy()] = True
        return cls(name, fit, users, relevant[users], seen[users], warm)

    def per_user(self, items: np.ndarray) -> dict[str, np.ndarray]:
        hits = hit_matrix(items, self.relevant)
        n_rel = np.diff(self.relevant.indptr)
        return {"ndcg@10": ndcg_at_k(hits, n_rel, K), "hr@10": hit_rate_at_k(hits, K).astype(
            float)}

    def describe(self) -> dict[str, Any]:
        rel = self.relevant.tocoo()
        return {"fit_events": len(self.fit), "users": len(self.users),
                "relevant": int(rel.nnz), "cold_share": float((~self.warm[rel.col]).mean())}


def load_splits(hm: Path) -> tuple[Interactions, Split, Split]:
    data = load_interactions(hm / "transactions.csv")
    train, test = temporal_user_split(data, 0.2, min_items=5)
    fit, val = temporal_user_split(train, 0.2, min_items=5)
    return data, Split.make("validation", fit, val), Split.make("test", train, test)


def load_embeddings(store: Path, encoder: str, item_ids: np.ndarray,
                    catalog: Catalog) -> tuple[np.ndarray, str]:
    """Cached embeddings of every article for the encoder named ``encoder``.

    ``encoder`` is a registered name (``efficientnet-lite0``…); the model loads
    once, to tell its ``encoder_id``, and the store is read with that id alone
    (nothing is encoded: a miss is a failure).
    """
    from recsys.encoders import create_encoder

    encoder_id = create_encoder(encoder, device="cpu").encoder_id
    found = EmbeddingStore(store, encoder_id).get_or_compute(
        item_ids, [catalog.path(i) for i in item_ids], progress=False)
    if not found.ok.all():
        missing = item_ids[~found.ok]
        raise ValueError(f"{encoder}: {len(missing)} articles not embedded yet, e.g. "
                         f"{missing[:3].tolist()}; run scripts/embed_catalog.py "
                         f"--encoder {encoder} first")
    return found.vectors, encoder_id


def cf_scores(model: Any, split: Split) -> np.ndarray:
    """CF scores of the evaluated users; NaN for articles nobody bought (CF cannot rank them)."""
    scores = model.score(split.fit.user_ids[split.users]).astype(np.float32)
    scores[:, ~split.warm] = np.nan
    return scores


def top_k(scores: np.ndarray, split: Split) -> np.ndarray:
    scores = np.where(np.isnan(scores), -np.inf, scores)
    coo = split.seen.tocoo()
    scores[coo.row, coo.col] = -np.inf
    top = np.argpartition(-scores, K - 1, axis=1)[:, :K]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), 1), 1)


def mean_of(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: round(float(v.mean()), 5) for name, v in per_user.items()}


def fit_als(split: Split, params: dict) -> Any:
    return create_model("als", random_state=0, **params).fit(split.fit)


def product_codes(item_ids: np.ndarray) -> list[str]:
    """The product code of each H&M article: the first 7 digits of its id, shared by the
    colour variants of one garment."""
    return [i[:7] for i in item_ids]


def pools(split: Split, vectors: np.ndarray, cf: np.ndarray, taste: dict, ranker: dict,
          groups: bool = False) -> Candidates:
    profiles = TasteModel(**taste).fit(split.fit, split.fit.item_ids, vectors).transform(
        split.fit.user_ids[split.users])
    item_groups = product_codes(split.fit.item_ids) if groups else None
    model = StyleRanker(**ranker).fit(split.fit.item_ids, vectors, item_groups=item_groups)
    return model.candidates(cf, profiles, exclude=split.seen, history=split.seen)


def sweep(split: Split, pool: Candidates, group_weights: tuple[float, ...] = (0.0,),
          weights: tuple[float, ...] | None = None) -> dict[str, Any]:
    """Best blend of one pool over the weight, the cold items' CF part and the group bonus.

    None of them changes the pool, so the pool is built once and re-ranked here.
    """
    best: dict[str, Any] = {"ndcg@10": -1.0}
    grid = itertools.product(COLD_CF, group_weights, WEIGHTS if weights is None else weights)
    for cold_cf, group_weight, weight in grid:
        cf = np.where(pool.cold, np.float32(cold_cf), pool.cf)
        ranked = dataclasses.replace(pool, cf=cf).top(K, weight, group_weight)
        score = mean_of(split.per_user(ranked.items))
        if score["ndcg@10"] > best["ndcg@10"]:
            best = {"weight": weight, "cold_cf": cold_cf, "group_weight": group_weight, **score}
    return best


# -- the search on validation -------------------------------------------------------------

ALS_GRID = {"factors": [32, 64, 128], "regularization": [0.01, 0.1], "alpha": [1.0, 10.0, 40.0]}
SPACES = [None, (128, True), (256, True), (128, False)]  # (PCA dimension, whiten)
TASTES = [
    ({"method": "mean"}, "max"),
    ({"method": "mean", "half_life_days": 2}, "max"),
    ({"method": "mean", "half_life_days": 14}, "max"),
    ({"method": "kmeans", "items_per_centroid": 4, "half_life_days": 14}, "max"),
    ({"method": "kmeans", "items_per_centroid": 4, "half_life_days": 14}, "softmax"),
    ({"method": "kmeans", "items_per_centroid": 4, "half_life_days": 2}, "softmax"),
    ({"method": "kmeans", "items_per_centroid": 8, "half_life_days": 14}, "softmax"),
    ({"method": "items", "recent_items": 10, "half_life_days": 2}, "max"),
    ({"method": "items", "recent_items": 30, "half_life_days": 2}, "softmax"),
    ({"method": "items", "recent_items": 30, "half_life_days": 14}, "softmax"),
    ({"method": "items", "recent_items": 30, "half_life_days": 2}, "mean"),
]
CANDIDATES = [
    {"n_cf_candidates": 100, "n_taste_candidates": 50, "max_queries": 8},
    {"n_cf_candidates": 50, "n_taste_candidates": 20, "max_queries": 4},
    {"n_cf_candidates": 200, "n_taste_candidates": 100, "max_queries": 8},
]
WEIGHTS = tuple(i / 10 for i in range(11))
COLD_CF = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
GROUP_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)


def space_name(encoder: str, space: tuple[int, bool] | None) -> str:
    return encoder if space is None else f"{encoder}/pca{space[0]}{'w' if space[1] else ''}"


def embedding_spaces(raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every encoder's embeddings as encoded and under each PCA of :data:`SPACES`."""
    out = {}
    for encoder, vectors in raw.items():
        for space in SPACES:
            if space is None:
                out[space_name(encoder, space)] = vectors
            elif space[0] < vectors.shape[1]:
                pca = EmbeddingPCA(*space).fit(vectors)
                out[space_name(encoder, space)] = pca.transform(vectors)
    return out


def search(split: Split, spaces: dict[str, np.ndarray], record: dict) -> dict:
    """Choose every setting on validation, one stage at a time (ALS, embedding space,
    taste profile, candidate pool, then the product-family bonus)."""
    best_als, best = None, -1.0
    for values in itertools.product(*ALS_GRID.values()):
        params = dict(zip(ALS_GRID, values, strict=True))
        score = mean_of(split.per_user(top_k(cf_scores(fit_als(split, params), split), split)))
        record["als"].append({"params": params, **score})
        if score["ndcg@10"] > best:
            best_als, best = params, score["ndcg@10"]
    log.info("ALS %s: NDCG@10 %.4f", best_als, best)
    cf = cf_scores(fit_als(split, best_als), split)

    def trial(stage: str, space: str, taste: dict, ranker: dict, groups: bool,
              weights: tuple[float, ...] | None = None) -> dict:
        start = time.perf_counter()
        result = sweep(split, pools(split, spaces[space], cf, taste, ranker, groups),
                       GROUP_WEIGHTS if groups else (0.0,), weights)
        row = {"stage": stage, "space": space, "taste": taste, "ranker": ranker, **result}
        record["blend"].append(row)
        log.info("%s %s %s %s: %s (%.0fs)", stage, space, taste, ranker,
                 {k: result[k] for k in ("ndcg@10", "weight", "cold_cf", "group_weight")},
                 time.perf_counter() - start)
        return row

    taste, affinity = TASTES[6]
    ranker = {**CANDIDATES[0], "affinity": affinity}
    rows = [trial("space", name, taste, ranker, False) for name in spaces]
    space = max(rows, key=lambda r: r["ndcg@10"])["space"]
    rows = [trial("taste", space, t, {**ranker, "affinity": a}, False) for t, a in TASTES]
    best_row = max(rows, key=lambda r: r["ndcg@10"])
    taste, ranker = best_row["taste"], best_row["ranker"]
    rows = [trial("candidates", space, taste, {**ranker, **c}, False) for c in CANDIDATES]
    visual = max(rows, key=lambda r: r["ndcg@10"])
    family = trial("family", space, taste, visual["ranker"], True)
    # the same without any visual signal: CF candidates and product families only
    no_visual = trial("als+family", space, taste, {**visual["ranker"], "n_taste_candidates": 0},
                      True, weights=(0.0,))
    return {"als": best_als, "space": space, "taste": taste,
            "ranker": {**visual["ranker"], "cold_cf": visual["cold_cf"]},
            "weight": visual["weight"],
            "family": {key: family[key] for key in ("cold_cf", "group_weight", "weight")},
            "als+family": {key: no_visual[key] for key in ("cold_cf", "group_weight")}}


def evaluate(split: Split, spaces: dict[str, np.ndarray], chosen: dict) -> dict:
    """Popularity, ALS, taste-only, the blend and the blend with product families."""
    per_user = {}
    pop = create_model("popularity").fit(split.fit)
    per_user["popularity"] = split.per_user(top_k(cf_scores(pop, split), split))
    cf = cf_scores(fit_als(split, chosen["als"]), split)
    per_user["als"] = split.per_user(top_k(cf, split))
    vectors, taste, ranker = spaces[chosen["space"]], chosen["taste"], chosen["ranker"]
    taste_only = pools(split, vectors, cf, taste, {**ranker, "n_cf_candidates": 0})
    per_user["taste"] = split.per_user(taste_only.top(K, 1.0).items)
    blend = pools(split, vectors, cf, taste, ranker)
    per_user["blend"] = split.per_user(blend.top(K, chosen["weight"]).items)
    family = chosen["family"]
    pool = pools(split, vectors, cf, taste, {**ranker, "cold_cf": family["cold_cf"]},
                 groups=True)
    per_user["blend+family"] = split.per_user(
        pool.top(K, family["weight"], family["group_weight"]).items)
    no_visual = chosen["als+family"]
    pool = pools(split, vectors, cf, taste, {**ranker, "n_taste_candidates": 0,
                                             "cold_cf": no_visual["cold_cf"]}, groups=True)
    per_user["als+family"] = split.per_user(pool.top(K, 0.0, no_visual["group_weight"]).items)
    summary: dict[str, Any] = {name: summarize(values, n_resamples=1000, seed=0)
                               for name, values in per_user.items()}
    summary["blend+family_vs_als+family"] = {
        metric: paired_bootstrap(per_user["blend+family"][metric],
                                 per_user["als+family"][metric], seed=0)
        for metric in ("ndcg@10", "hr@10")}
    for name in ("taste", "blend", "blend+family"):
        summary[f"{name}_vs_als"] = {
            metric: paired_bootstrap(per_user[name][metric], per_user["als"][metric], seed=0)
            for metric in ("ndcg@10", "hr@10")}
    return summary


def space_params(space: str) -> dict[str, Any]:
    """``StyleRecommender`` arguments for an embedding space name (``encoder[/pca128w]``)."""
    encoder, _, pca = space.partition("/")
    if not pca:
        return {"encoder": encoder, "embedding_dim": None}
    return {"encoder": encoder, "embedding_dim": int(pca[3:].rstrip("w")),
            "whiten": pca.endswith("w")}


def measure_latency(hm: Path, store: Path, chosen: dict, n_requests: int, index: str,
                    seed: int = 0) -> dict[str, Any]:
    """Fit :class:`StyleRecommender` on the whole log and time single-user ``recommend`` calls.

    The chosen settings with product families; embeddings come from the store
    (nothing is encoded). Each request is one customer drawn at random, ``k=10``.
    Returns percentiles in milliseconds.
    """
    from recsys.recommender import StyleRecommender

    data = load_interactions(hm / "transactions.csv")
    catalog = Catalog.from_directory(hm / "images")
    family = chosen["family"]
    model = StyleRecommender(
        "als", {**chosen["als"], "random_state": 0}, cache_dir=store,
        **space_params(chosen["space"]), taste_params=chosen["taste"], blend=family["weight"],
        ranker_params={**chosen["ranker"], "cold_cf": family["cold_cf"],
                       "group_weight": family["group_weight"], "index_factory": index})
    start = time.perf_counter()
    styles = hm.parent / "styles"
    model.fit(data, catalog, styles if styles.is_dir() else None,
              item_groups=dict(zip(catalog.item_ids, product_codes(catalog.item_ids),
                                   strict=True)))
    fit_seconds = time.perf_counter() - start
    users = np.random.default_rng(seed).choice(data.user_ids, size=n_requests)
    for user in users[:20]:  # warm-up
        model.recommend([user], k=K)
    times = []
    for user in users:
        t0 = time.perf_counter()
        model.recommend([user], k=K)
        times.append(1000 * (time.perf_counter() - t0))
    times = np.asarray(times)
    return {"requests": n_requests, "index": index, "fit_seconds": round(fit_seconds, 1),
            **{f"p{q}_ms": round(float(np.percentile(times, q)), 2) for q in (50, 90, 99)},
            "max_ms": round(float(times.max()), 2)}


def table(record: dict) -> str:
    """The results as a Markdown table."""
    lines = ["| model | split | NDCG@10 [95% CI] | HR@10 [95% CI] |", "|---|---|---|---|"]
    for stage in ("validation", "test"):
        for name in ("popularity", "als", "taste", "blend", "als+family", "blend+family"):
            s = record[stage][name]
            cells = [f"{s[m]['mean']:.4f} [{s[m]['ci_low']:.4f}, {s[m]['ci_high']:.4f}]"
                     for m in ("ndcg@10", "hr@10")]
            lines.append(f"| {name} | {stage} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hm", type=Path, default=Path("../shared/data/hm"))
    parser.add_argument("--store", type=Path, default=Path("/work/cache/embeddings"))
    parser.add_argument("--encoder", action="append",
                        help="encoder(s) whose stored embeddings to try, repeatable "
                             "(default: efficientnet-lite0)")
    parser.add_argument("--latency", type=int, default=0, metavar="N",
                        help="also time N single-user requests of the fitted StyleRecommender")
    parser.add_argument("--index", default="Flat", help="FAISS factory of the item index "
                        "for --latency (default: Flat)")
    parser.add_argument("--out", type=Path, required=True, help="JSON record of every run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    data, val, test = load_splits(args.hm)
    catalog = Catalog.from_directory(args.hm / "images")
    raw, encoder_ids = {}, {}
    for name in args.encoder or ["efficientnet-lite0"]:
        raw[name], encoder_ids[name] = load_embeddings(args.store, name, data.item_ids, catalog)
    spaces = embedding_spaces(raw)
    record: dict[str, Any] = {"splits": {"validation": val.describe(), "test": test.describe()},
                              "encoders": encoder_ids, "als": [], "blend": []}
    start = time.perf_counter()
    record["chosen"] = search(val, spaces, record)
    record["validation"] = evaluate(val, spaces, record["chosen"])
    record["test"] = evaluate(test, spaces, record["chosen"])
    record["seconds"] = round(time.perf_counter() - start, 1)
    if args.latency:
        record["latency"] = measure_latency(args.hm, args.store, record["chosen"],
                                            args.latency, args.index)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(json.dumps({k: record[k] for k in ("splits", "chosen", "seconds")}, indent=1))
    print(table(record))
    for stage in ("validation", "test"):
        for name, base in (("taste", "als"), ("blend", "als"), ("blend+family", "als"),
                           ("blend+family", "als+family")):
            diff = record[stage][f"{name}_vs_{base}"]["ndcg@10"]
            print(f"{stage} {name} - {base} NDCG@10: {diff['diff']:+.4f} "
                  f"[{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}]")
    if args.latency:
        print("latency", json.dumps(record["latency"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
