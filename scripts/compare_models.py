"""Paired differences between models of one evaluation record, from its ``per_user.csv``.

Rows are users, or (user, window) pairs written ``user@cutoff`` by a backtest; the
interval resamples users (all of a user's windows together), so it matches the
record's own intervals. Usage::

    python scripts/compare_models.py out/evaluate/x/per_user.csv learned als \\
        --metric map@12 --metric ndcg@10
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd


def paired(a: pd.Series, b: pd.Series, resamples: int, seed: int) -> dict[str, float]:
    """Mean of ``a - b`` over shared rows, 95% interval resampling users."""
    rows = a.index.intersection(b.index)
    diff = (a[rows] - b[rows]).to_numpy(np.float64)
    users = pd.Index(rows).str.split("@").str[0]
    codes, index = np.unique(users, return_inverse=True)
    sums = np.bincount(index, weights=diff, minlength=len(codes))
    counts = np.bincount(index, minlength=len(codes))
    draw = np.random.default_rng(seed).integers(0, len(codes), (resamples, len(codes)))
    means = sums[draw].sum(axis=1) / counts[draw].sum(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return {"a": float(a[rows].mean()), "b": float(b[rows].mean()), "diff": float(diff.mean()),
            "ci_low": float(low), "ci_high": float(high), "rows": len(rows),
            "users": len(codes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("per_user")
    parser.add_argument("a")
    parser.add_argument("b", nargs="+")
    parser.add_argument("--metric", action="append", required=True)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    frame = pd.read_csv(args.per_user, dtype={"user_id": str})
    values = {(m, k): g.set_index("user_id")["value"] for (m, k), g in
              frame.groupby(["model", "metric"])}
    for b in args.b:
        for metric in args.metric:
            out = paired(values[(args.a, metric)], values[(b, metric)], args.resamples,
                         args.seed)
            print(f"{args.a} - {b} {metric}: {out['a']:.4f} - {out['b']:.4f} = "
                  f"{out['diff']:+.4f} [{out['ci_low']:+.4f}, {out['ci_high']:+.4f}] "
                  f"({out['rows']} rows, {out['users']} users)")


if __name__ == "__main__":
    main()
