"""Live click-through rate from the service's feedback log, per variant and position.

Variants
--------
:func:`assign_variant` buckets each shopper into an experiment arm by a hash
of ``salt:uid``: the same shopper always lands in the same arm, on any
process or machine, and arms get equal shares. The service records the arm
with every impression.

Definitions
-----------
impression clicked
    An impression of item ``i`` to shopper ``u`` (at time ``t``) is clicked
    when a ``click`` on ``(u, i)`` follows it within ``window`` seconds and
    no later impression of ``(u, i)`` came before that click (a click counts
    for the latest impression of the pair before it, once).
CTR
    clicked impressions / impressions, per variant and per (variant, position).
interval of a CTR
    Wilson score interval (impressions treated as independent trials).
difference between variants
    CTR(variant) - CTR(baseline), with a percentile interval from a bootstrap
    that resamples *shoppers* within each arm (a shopper's impressions are
    correlated; resampling them as a block keeps the interval honest).
offline prediction
    The position-based click model of :mod:`evaluation.ctr` that the offline
    metrics assume: CTR at rank ``r`` is ``a * e(r)`` with ``e`` the examination
    curve (``1 / log2(r + 1)`` by default) and one attractiveness ``a`` per
    variant fitted by maximum likelihood on that variant's impressions
    (``a = clicks / sum over impressions of e(r)``). Observed CTRs far from it
    say the offline position discount does not describe these shoppers.

Examples
--------
>>> assign_variant("customer-1", ("styled", "plain")) in ("styled", "plain")
True
>>> [round(x, 4) for x in wilson_interval(5, 10)]
[0.2366, 0.7634]
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evaluation.ctr import examination_probabilities
from recsys.feedback import FeedbackLog

VARIANTS = ("styled", "plain")
Z95 = 1.959963984540054


def assign_variant(uid: str, variants: Sequence[str] = VARIANTS, salt: str = "stylerec") -> str:
    """The experiment arm of shopper ``uid``: uniform over ``variants``, fixed by ``salt``."""
    if not variants:
        raise ValueError("need at least one variant")
    digest = hashlib.sha256(f"{salt}:{uid}".encode()).digest()
    share = int.from_bytes(digest[:8], "big") / 2.0**64
    return variants[int(share * len(variants))]


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (``(nan, nan)`` without trials)."""
    if trials == 0:
        return (float("nan"), float("nan"))
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def label_impressions(events: pd.DataFrame, window: float = 86400.0) -> pd.DataFrame:
    """The impressions of a feedback log with a ``clicked`` column (see the definitions).

    Parameters
    ----------
    events : DataFrame
        Columns ``uid, item, type, ts, variant, position`` (as
        :meth:`recsys.feedback.FeedbackLog.to_frame` gives).
    window : float
        Seconds after an impression within which a click counts for it.
    """
    if window <= 0:
        raise ValueError(f"window must be > 0 seconds, got {window}")
    imp = events[events["type"] == "impression"].copy()
    imp["variant"] = imp["variant"].fillna("(none)")
    imp = imp.sort_values("ts", kind="stable").reset_index(drop=True)
    imp["row"] = np.arange(len(imp))
    clicks = events[events["type"] == "click"].sort_values("ts", kind="stable")
    imp["clicked"] = False
    if len(imp) and len(clicks):
        matched = pd.merge_asof(clicks[["uid", "item", "ts"]], imp[["uid", "item", "ts", "row"]],
                                on="ts", by=["uid", "item"], direction="backward",
                                tolerance=window)
        hit = matched["row"].dropna().astype(np.int64).unique()
        imp.loc[hit, "clicked"] = True
    return imp.drop(columns="row")


def _cell(impressions: pd.DataFrame) -> dict[str, Any]:
    n, c = len(impressions), int(impressions["clicked"].sum())
    low, high = wilson_interval(c, n)
    return {"impressions": n, "clicks": c, "ctr": c / n if n else float("nan"),
            "ci95": [low, high]}


def _user_totals(impressions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    grouped = impressions.groupby("uid")["clicked"].agg(["sum", "count"])
    return grouped["sum"].to_numpy(np.float64), grouped["count"].to_numpy(np.float64)


def _bootstrap_difference(a: pd.DataFrame, b: pd.DataFrame, n_resamples: int,
                          rng: np.random.Generator) -> list[float]:
    (ca, na), (cb, nb) = _user_totals(a), _user_totals(b)
    ia = rng.integers(0, len(na), size=(n_resamples, len(na)))
    ib = rng.integers(0, len(nb), size=(n_resamples, len(nb)))
    diff = ca[ia].sum(1) / na[ia].sum(1) - cb[ib].sum(1) / nb[ib].sum(1)
    return [float(x) for x in np.percentile(diff, [2.5, 97.5])]


def ctr_report(
    events: pd.DataFrame,
    window: float = 86400.0,
    baseline: str | None = None,
    position_model: str = "log2",
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """CTR per variant and per (variant, position), differences to a baseline arm.

    Parameters
    ----------
    events : DataFrame
        The feedback log (:meth:`recsys.feedback.FeedbackLog.to_frame`).
    window : float
        Click attribution window in seconds.
    baseline : str, optional
        The arm the others are compared with; default ``"plain"`` when present,
        else the first arm in sorted order.
    position_model : {"log2", "reciprocal"}
        Examination curve of the offline click model shown beside the positions.
    n_resamples, seed
        Shopper bootstrap of the differences.

    Returns
    -------
    dict
        ``variants`` (per arm: impressions, clicks, ctr, ci95, users),
        ``positions`` (rows: variant, position, impressions, clicks, ctr, ci95,
        predicted), ``differences`` (rows: variant, baseline, difference, ci95,
        relative) and the parameters.
    """
    imp = label_impressions(events, window)
    arms = sorted(imp["variant"].unique())
    if baseline is None:
        baseline = "plain" if "plain" in arms else (arms[0] if arms else None)
    elif baseline not in arms:
        raise ValueError(f"baseline variant {baseline!r} has no impressions; arms: {arms}")
    report: dict[str, Any] = {"window_s": window, "baseline": baseline,
                              "position_model": position_model, "n_resamples": n_resamples,
                              "seed": seed, "variants": {}, "positions": [], "differences": []}
    positioned = imp.dropna(subset=["position"]).astype({"position": np.int64})
    max_position = int(positioned["position"].max()) if len(positioned) else 0
    examination = examination_probabilities(max_position, position_model) if max_position else []
    for arm in arms:
        rows = imp[imp["variant"] == arm]
        report["variants"][arm] = _cell(rows) | {"users": int(rows["uid"].nunique())}
        placed = positioned[positioned["variant"] == arm]
        exposure = float(np.sum(np.asarray(examination)[placed["position"].to_numpy() - 1])) \
            if len(placed) else 0.0
        attractiveness = placed["clicked"].sum() / exposure if exposure else float("nan")
        for position, cell in placed.groupby("position"):
            predicted = attractiveness * examination[position - 1]
            report["positions"].append({"variant": arm, "position": int(position)} | _cell(cell)
                                       | {"predicted": float(predicted)})
    rng = np.random.default_rng(seed)
    for arm in arms:
        if arm == baseline:
            continue
        a, b = imp[imp["variant"] == arm], imp[imp["variant"] == baseline]
        diff = report["variants"][arm]["ctr"] - report["variants"][baseline]["ctr"]
        base_ctr = report["variants"][baseline]["ctr"]
        report["differences"].append({
            "variant": arm, "baseline": baseline, "difference": diff,
            "ci95": _bootstrap_difference(a, b, n_resamples, rng),
            "relative": diff / base_ctr if base_ctr else float("nan")})
    return report


def load_log(path: str | Path) -> pd.DataFrame:
    """The events of a feedback log file written by the service."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feedback log not found: {path}")
    log = FeedbackLog(path)
    try:
        return log.to_frame()
    finally:
        log.close()


def format_report(report: dict[str, Any]) -> str:
    """The report as plain-text tables."""
    def pct(x: float) -> str:
        return "   n/a" if not np.isfinite(x) else f"{100 * x:6.2f}%"

    def ci(pair: Sequence[float]) -> str:
        return f"[{pct(pair[0])}, {pct(pair[1])}]"

    lines = [f"live CTR (click within {report['window_s']:g} s of the impression; "
             "Wilson 95% intervals)", "",
             f"{'variant':<12}{'users':>8}{'impr.':>9}{'clicks':>8}{'CTR':>9}  95% interval"]
    for arm, cell in report["variants"].items():
        lines.append(f"{arm:<12}{cell['users']:>8}{cell['impressions']:>9}{cell['clicks']:>8}"
                     f"{pct(cell['ctr']):>9}  {ci(cell['ci95'])}")
    if report["differences"]:
        lines += ["", f"difference to {report['baseline']!r} (shopper bootstrap, "
                  f"{report['n_resamples']} resamples, 95%)"]
        for d in report["differences"]:
            rel = "n/a" if not np.isfinite(d["relative"]) else f"{100 * d['relative']:+.1f}%"
            lines.append(f"{d['variant']:<12}{100 * d['difference']:+7.2f} points  "
                         f"[{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}]  "
                         f"relative {rel}")
    if report["positions"]:
        lines += ["", f"by position (offline click model: CTR = a * e(r), e = "
                  f"{report['position_model']}, a fitted per variant)",
                  f"{'variant':<12}{'pos':>4}{'impr.':>9}{'clicks':>8}{'CTR':>9}  "
                  f"{'95% interval':<20}{'predicted':>10}"]
        for row in report["positions"]:
            lines.append(f"{row['variant']:<12}{row['position']:>4}{row['impressions']:>9}"
                         f"{row['clicks']:>8}{pct(row['ctr']):>9}  {ci(row['ci95']):<20}"
                         f"{pct(row['predicted']):>10}")
    return "\n".join(lines) + "\n"
