"""Ranking metrics at k, full-ranking AUC/AP, catalog metrics and bootstrap intervals.

The top-k metrics work on a *hit matrix*: ``hits[u, r]`` is true when the item
user ``u`` got at rank ``r + 1`` is relevant to ``u`` (held out in test). All
are per-user arrays; the reported number is their mean over evaluated users
(users with at least one relevant item), with a bootstrap interval.

Definitions (``R_u`` relevant items of user ``u``, ``rel_r`` 1 if the item at
rank ``r`` is in ``R_u``, ``k`` the cut-off)
-----------------------------------------------------------------------------
precision@k
    ``sum_{r<=k} rel_r / k``. Divides by ``k`` even when ``|R_u| < k`` (as Cornac,
    Microsoft Recommenders and Spark do). implicit's ``precision_at_k`` /
    ``ranking_metrics_at_k()["precision"]`` is a different number: it divides the
    total hits of all users by ``sum_u min(k, |R_u|)`` (a micro-average that can
    reach 1). We report the per-user ``/ k`` version;
    :func:`implicit_precision` computes implicit's, for comparison.
recall@k
    ``sum_{r<=k} rel_r / |R_u|``.
ndcg@k
    ``DCG / IDCG`` with binary gain and ``log2`` discount:
    ``DCG = sum_{r<=k} rel_r / log2(r + 1)``, IDCG the DCG of a ranking with all of
    ``R_u`` first, so over ``min(k, |R_u|)`` positions. Matches Cornac ``NDCG``,
    Microsoft Recommenders ``ndcg_at_k`` (binary score; its natural-log discount
    cancels in the ratio) and implicit's ``ndcg``.
map@k
    ``AP@k = sum_{r<=k} rel_r * precision@r / N``. ``N = min(k, |R_u|)``
    (``normalization="min"``, the default: implicit's ``map`` and Microsoft
    Recommenders' current ``map_at_k``) or ``N = |R_u|``
    (``normalization="relevant"``: Microsoft Recommenders' ``map``, which is the
    ``map_at_k`` of their published benchmarks before v1.2).
hit_rate@k
    1 if any of the top k is relevant.
mrr@k
    ``1 / rank`` of the first relevant item within the top k, else 0.
auc
    Per-user ROC AUC of the full ranking: the probability that a random relevant
    item outscores a random candidate non-relevant item (ties count one half),
    over *all* candidate items (every item not excluded as training history),
    not just the top k. Mean over users, as Cornac's ``AUC`` (which counts ties
    as 0; the two agree when scores have no ties).
map_full
    Uncut average precision over the whole candidate ranking, normalised by
    ``|R_u|``, with ties ranked pessimistically: Cornac's ``MAP``.
coverage@k
    Share of the catalog (the candidate items) that appears in at least one
    user's top k.
novelty@k
    Mean self-information of the recommended items, ``-log2 p(i)`` with
    ``p(i) = (n_i + 1) / (U + 1)``, ``n_i`` the number of training users of item
    ``i`` and ``U`` the number of training users; the +1 keeps items nobody
    interacted with in training (cold items) finite at the maximum.

Examples
--------
>>> hits = hit_matrix([[3, 1, 7]], [{1, 5}])
>>> hits.astype(int).tolist()
[[0, 1, 0]]
>>> float(precision_at_k(hits, 3)[0]), float(recall_at_k(hits, [2], 3)[0])
(0.3333333333333333, 0.5)
>>> round(float(ndcg_at_k(hits, [2], 3)[0]), 4)  # (1/log2 3) / (1 + 1/log2 3)
0.3869
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import scipy.sparse as sp
from scipy.stats import rankdata

RANK_METRICS = ("precision", "recall", "ndcg", "map", "hit_rate", "mrr")
FULL_METRICS = ("auc", "map_full")
CATALOG_METRICS = ("coverage", "novelty")
ALL_METRICS = RANK_METRICS + FULL_METRICS + CATALOG_METRICS
MAP_NORMALIZATIONS = ("min", "relevant")


def _as_recs(recommended: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
    recs = np.asarray(recommended)
    if recs.ndim != 2:
        raise ValueError(f"recommended must be 2-d [n_users, k], got shape {recs.shape}")
    return recs.astype(np.int64, copy=False)


def hit_matrix(
    recommended: np.ndarray | Sequence[Sequence[int]],
    relevant: sp.spmatrix | Sequence[Iterable[int]],
) -> np.ndarray:
    """Which recommended items are relevant: bool ``[n_users, k]``.

    Parameters
    ----------
    recommended : int array [n_users, k]
        Item indices, best first; ``-1`` marks padding (never a hit).
    relevant : sparse matrix [n_users, n_items] or sequence of sets
        Row ``u`` holds user ``u``'s relevant items (non-zeros of a sparse row).

    Examples
    --------
    >>> hit_matrix([[0, 2, -1]], [{2}]).tolist()
    [[False, True, False]]
    """
    recs = _as_recs(recommended)
    n_users, _ = recs.shape
    if sp.issparse(relevant):
        rel = sp.csr_matrix(relevant)
        rel.eliminate_zeros()
        if rel.shape[0] != n_users:
            raise ValueError(f"relevant has {rel.shape[0]} rows for {n_users} users")
        rel_users = np.repeat(np.arange(n_users), np.diff(rel.indptr))
        rel_items = rel.indices.astype(np.int64)
    else:
        sets = [np.fromiter(r, dtype=np.int64) for r in relevant]
        if len(sets) != n_users:
            raise ValueError(f"relevant has {len(sets)} rows for {n_users} users")
        rel_users = np.repeat(np.arange(n_users), [len(s) for s in sets])
        rel_items = np.concatenate(sets) if sets else np.zeros(0, dtype=np.int64)
    # one int64 key per (user, item) pair: membership is a sorted search, no dense matrix
    width = int(max(recs.max(initial=0), rel_items.max(initial=0))) + 1
    rel_keys = np.unique(rel_users * width + rel_items)
    rec_keys = np.arange(n_users)[:, None] * width + recs
    pos = np.searchsorted(rel_keys, rec_keys).clip(max=max(len(rel_keys) - 1, 0))
    found = rel_keys[pos] == rec_keys if len(rel_keys) else np.zeros(recs.shape, dtype=bool)
    return found & (recs >= 0)


def _cut(hits: np.ndarray, k: int) -> np.ndarray:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > hits.shape[1]:
        raise ValueError(f"k={k} exceeds the {hits.shape[1]} recommendations per user")
    return np.asarray(hits, dtype=bool)[:, :k]


def _n_relevant(n_relevant: np.ndarray | Sequence[int]) -> np.ndarray:
    n = np.asarray(n_relevant, dtype=np.float64)
    if (n < 1).any():
        raise ValueError("every evaluated user needs at least one relevant item")
    return n


def precision_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Per-user precision@k: hits in the top k divided by k.

    Examples
    --------
    >>> precision_at_k(np.array([[True, False, True, False]]), 4).tolist()
    [0.5]
    """
    return _cut(hits, k).sum(axis=1) / k


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray | Sequence[int], k: int) -> np.ndarray:
    """Per-user recall@k: hits in the top k divided by the number of relevant items.

    Examples
    --------
    >>> recall_at_k(np.array([[True, False, True]]), [4], 3).tolist()
    [0.5]
    """
    return _cut(hits, k).sum(axis=1) / _n_relevant(n_relevant)


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray | Sequence[int], k: int) -> np.ndarray:
    """Per-user NDCG@k: binary gain, log2 discount, ideal over ``min(k, |R_u|)``.

    Examples
    --------
    >>> ndcg_at_k(np.array([[True, False]]), [1], 2).tolist()
    [1.0]
    >>> round(float(ndcg_at_k(np.array([[False, True]]), [1], 2)[0]), 4)  # 1 / log2(3)
    0.6309
    """
    cut = _cut(hits, k)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = cut @ discount
    ideal = np.cumsum(discount)[np.minimum(_n_relevant(n_relevant), k).astype(int) - 1]
    return dcg / ideal


def average_precision_at_k(
    hits: np.ndarray,
    n_relevant: np.ndarray | Sequence[int],
    k: int,
    normalization: str = "min",
) -> np.ndarray:
    """Per-user AP@k: sum of precision@r at each hit rank r <= k, divided by N.

    ``normalization="min"``: ``N = min(k, |R_u|)`` (implicit; Microsoft
    Recommenders ``map_at_k``). ``"relevant"``: ``N = |R_u|`` (Microsoft
    Recommenders ``map``).

    Examples
    --------
    >>> h = np.array([[True, False, True]])  # hits at ranks 1 and 3
    >>> round(float(average_precision_at_k(h, [2], 3)[0]), 4)  # (1/1 + 2/3) / 2
    0.8333
    >>> round(float(average_precision_at_k(h, [4], 3, normalization="relevant")[0]), 4)  # / 4
    0.4167
    """
    if normalization not in MAP_NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {MAP_NORMALIZATIONS}")
    cut = _cut(hits, k)
    n = _n_relevant(n_relevant)
    precision_at_r = np.cumsum(cut, axis=1) / np.arange(1, k + 1)
    total = (precision_at_r * cut).sum(axis=1)
    return total / (np.minimum(n, k) if normalization == "min" else n)


def hit_rate_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Per-user hit rate@k: 1.0 when any of the top k is relevant.

    Examples
    --------
    >>> hit_rate_at_k(np.array([[False, True], [False, False]]), 2).tolist()
    [1.0, 0.0]
    """
    return _cut(hits, k).any(axis=1).astype(np.float64)


def reciprocal_rank_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Per-user reciprocal rank of the first relevant item in the top k (0 if none).

    Examples
    --------
    >>> reciprocal_rank_at_k(np.array([[False, False, True], [False, False, False]]), 3).tolist()
    [0.3333333333333333, 0.0]
    """
    cut = _cut(hits, k)
    first = cut.argmax(axis=1)
    return np.where(cut.any(axis=1), 1.0 / (first + 1), 0.0)


def implicit_precision(hits: np.ndarray, n_relevant: np.ndarray | Sequence[int], k: int) -> float:
    """implicit's precision: total hits / ``sum_u min(k, |R_u|)`` (one number, not per user).

    Examples
    --------
    >>> implicit_precision(np.array([[True, False], [True, True]]), [1, 5], 2)  # 3 / (1 + 2)
    1.0
    """
    n = _n_relevant(n_relevant)
    return float(_cut(hits, k).sum() / np.minimum(n, k).sum())


def _rows(mask: np.ndarray | sp.spmatrix) -> np.ndarray:
    return mask.toarray().astype(bool) if sp.issparse(mask) else np.asarray(mask, dtype=bool)


def _candidate_rows(
    scores: np.ndarray, relevant: np.ndarray | sp.spmatrix, candidates: np.ndarray | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each user's scores (float64) and relevance (bool) over their candidate items."""
    scores = np.asarray(scores, dtype=np.float64)
    pos_all = _rows(relevant)
    cand_all = np.ones_like(pos_all) if candidates is None else _rows(candidates)
    for u in range(len(scores)):
        yield scores[u][cand_all[u]], pos_all[u][cand_all[u]]


def auc_per_user(
    scores: np.ndarray,
    relevant: np.ndarray | sp.spmatrix,
    candidates: np.ndarray | None = None,
) -> np.ndarray:
    """Per-user ROC AUC over the full ranking of candidate items.

    Parameters
    ----------
    scores : float array [n_users, n_items]
    relevant : bool array or sparse matrix [n_users, n_items]
        Relevant (positive) items; each must be a candidate.
    candidates : bool array [n_users, n_items], optional
        Items that take part (default: all). Non-relevant candidates are the
        negatives, so pass ``~seen`` to leave out training items.

    Returns
    -------
    ndarray of float
        ``P(score(pos) > score(neg)) + 0.5 * P(tie)``; NaN for a user without a
        positive or without a negative.

    Examples
    --------
    >>> s = np.array([[0.9, 0.1, 0.5, 0.3]])
    >>> auc_per_user(s, np.array([[True, False, False, True]])).tolist()  # 3 of 4 pairs
    [0.75]
    """
    out = np.full(len(scores), np.nan)
    for u, (s, pos) in enumerate(_candidate_rows(scores, relevant, candidates)):
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        ranks = rankdata(s)  # average ranks: ties count one half
        out[u] = (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out


def average_precision_full(
    scores: np.ndarray,
    relevant: np.ndarray | sp.spmatrix,
    candidates: np.ndarray | None = None,
) -> np.ndarray:
    """Per-user uncut average precision over the candidate ranking (Cornac's ``MAP``).

    ``AP = mean over relevant i of (rank of i among relevant) / (rank of i among
    candidates)``, both ranks with ties counted pessimistically (``max``).

    Examples
    --------
    >>> s = np.array([[0.9, 0.8, 0.7, 0.6]])
    >>> ap = average_precision_full(s, np.array([[True, False, True, False]]))
    >>> round(float(ap[0]), 4)  # (1/1 + 2/3) / 2
    0.8333
    """
    out = np.full(len(scores), np.nan)
    for u, (s, pos) in enumerate(_candidate_rows(scores, relevant, candidates)):
        if not pos.any():
            continue
        rank = rankdata(-s, method="max")[pos]
        among = rankdata(-s[pos], method="max")
        out[u] = float(np.mean(among / rank))
    return out


def catalog_coverage(recommended: np.ndarray, catalog_size: int) -> float:
    """Share of a catalog of ``catalog_size`` items that anyone was recommended.

    Examples
    --------
    >>> catalog_coverage(np.array([[0, 1], [1, -1]]), 4)
    0.5
    """
    recs = _as_recs(recommended)
    return float(np.unique(recs[recs >= 0]).size / catalog_size)


def self_information(item_users: np.ndarray, n_users: int) -> np.ndarray:
    """``log2((n_users + 1) / (n_i + 1))`` per item, from training users per item.

    Examples
    --------
    >>> self_information(np.array([3, 0]), 3).tolist()  # everybody / nobody
    [0.0, 2.0]
    """
    return np.log2((n_users + 1.0) / (np.asarray(item_users, dtype=np.float64) + 1.0))


def novelty(recommended: np.ndarray, item_information: np.ndarray) -> np.ndarray:
    """Per-user mean self-information of the recommended items (padding ignored).

    Examples
    --------
    >>> novelty(np.array([[0, 1], [1, -1]]), np.array([0.0, 2.0])).tolist()
    [1.0, 2.0]
    """
    recs = _as_recs(recommended)
    valid = recs >= 0
    info = np.where(valid, np.asarray(item_information)[recs.clip(min=0)], 0.0)
    return np.divide(info.sum(axis=1), valid.sum(axis=1),
                     out=np.full(len(recs), np.nan), where=valid.any(axis=1))


def _resample_means(values: np.ndarray, n_resamples: int, seed: int,
                    groups: np.ndarray | None = None) -> np.ndarray:
    """Means of ``n_resamples`` bootstrap resamples (same indices for every column).

    With ``groups`` (one label per value) whole groups are resampled — e.g. every
    (user, window) pair of one user — and each resample's mean is over its values.
    """
    rng = np.random.default_rng(seed)
    if groups is not None:
        _, codes = np.unique(np.asarray(groups), return_inverse=True)
        n_groups = int(codes.max()) + 1 if len(codes) else 0
        sums = np.zeros((n_groups,) + values.shape[1:])
        np.add.at(sums, codes, values)
        counts = np.bincount(codes, minlength=n_groups).astype(np.float64)
        means = np.empty((n_resamples,) + values.shape[1:])
        block = max(1, 4_000_000 // max(n_groups, 1))
        for start in range(0, n_resamples, block):
            stop = min(start + block, n_resamples)
            idx = rng.integers(0, n_groups, size=(stop - start, n_groups))
            total = counts[idx].sum(axis=1)
            means[start:stop] = sums[idx].sum(axis=1) / total.reshape(
                (-1,) + (1,) * (values.ndim - 1))
        return means
    n = len(values)
    means = np.empty((n_resamples,) + values.shape[1:])
    block = max(1, 4_000_000 // max(n, 1))  # bound the index matrix to ~32 MB
    for start in range(0, n_resamples, block):
        stop = min(start + block, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[idx].mean(axis=1)
    return means


def bootstrap_ci(
    values: np.ndarray | Sequence[float],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    groups: np.ndarray | Sequence[str] | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-user values.

    Users are resampled with replacement ``n_resamples`` times from a
    ``numpy.random.default_rng(seed)`` stream; NaNs are dropped first. With no
    values or ``n_resamples=0`` the interval is ``(nan, nan)``. With ``groups``
    (the user of each value, when values are per (user, window) pair) whole users
    are resampled: a user's windows are not independent draws.

    Examples
    --------
    >>> low, high = bootstrap_ci(np.r_[np.zeros(50), np.ones(50)], seed=0)
    >>> 0.39 < low < 0.5 < high < 0.61
    True
    """
    v = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(v)
    v = v[keep]
    if len(v) == 0 or n_resamples < 1:
        return float("nan"), float("nan")
    means = _resample_means(v, n_resamples, seed,
                            None if groups is None else np.asarray(groups)[keep])
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_bootstrap(
    a: np.ndarray | Sequence[float],
    b: np.ndarray | Sequence[float],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    groups: np.ndarray | Sequence[str] | None = None,
) -> dict[str, float]:
    """Mean difference ``a - b`` of paired per-user values, with a bootstrap interval.

    Both arrays hold the same users in the same order; one resample of users is
    applied to both, so the interval reflects the per-user pairing (what an A/B
    pre-check wants: is B better than A on the *same* shoppers?). ``p_le_zero``
    is the share of resampled differences at or below zero. ``groups`` resamples
    whole users, as in :func:`bootstrap_ci`.

    Examples
    --------
    >>> out = paired_bootstrap(np.linspace(0.1, 1, 40), np.linspace(0, 0.9, 40), seed=1)
    >>> round(out["diff"], 3), out["p_le_zero"]
    (0.1, 0.0)
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal shapes, got {a.shape} and {b.shape}")
    d = a - b
    keep = ~np.isnan(d)
    d = d[keep]
    nan = float("nan")
    if len(d) == 0 or n_resamples < 1:
        return {"diff": float(d.mean()) if len(d) else nan, "ci_low": nan, "ci_high": nan,
                "p_le_zero": nan}
    means = _resample_means(d, n_resamples, seed,
                            None if groups is None else np.asarray(groups)[keep])
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return {"diff": float(d.mean()), "ci_low": float(low), "ci_high": float(high),
            "p_le_zero": float((means <= 0).mean())}


def summarize(
    per_user: dict[str, np.ndarray],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    groups: np.ndarray | Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Mean, bootstrap interval and user count of each per-user metric.

    ``groups`` (the user of each row) makes the intervals resample whole users;
    ``n_users`` then counts the rows (e.g. (user, window) pairs).

    Every metric is resampled with the same ``seed``: the same resampled sets of
    users, so intervals of different metrics (and models evaluated on the same
    users) are computed on common random numbers.

    Examples
    --------
    >>> out = summarize({"ndcg@10": np.array([0.0, 1.0, 0.5])}, n_resamples=200, seed=3)
    >>> out["ndcg@10"]["mean"], out["ndcg@10"]["n_users"]
    (0.5, 3)
    """
    out = {}
    for name, values in per_user.items():
        v = np.asarray(values, dtype=np.float64)
        keep = ~np.isnan(v)
        valid = v[keep]
        low, high = bootstrap_ci(valid, n_resamples, confidence, seed,
                                 None if groups is None else np.asarray(groups)[keep])
        out[name] = {"mean": float(valid.mean()) if len(valid) else float("nan"),
                     "ci_low": low, "ci_high": high, "n_users": int(len(valid))}
    return out
