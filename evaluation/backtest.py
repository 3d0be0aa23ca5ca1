"""Rolling-origin backtest: K consecutive test windows, each trained strictly before it.

What a deployment retrained every week sees. For each window the models are fitted
on every event before its cut-off, rank the window's declared catalog
(:mod:`evaluation.catalogs`), and are scored on the window's purchases of users with
history. Metrics are pooled over (user, window) pairs; bootstrap intervals resample
users (all of a user's windows together), and every model is compared with the best
baseline by a paired interval on the same pairs.

Tuning: one grid search on the ``tuning.n_windows`` windows immediately before the
first test cut-off (each also trained strictly before its own cut-off), so no test
window, and nothing after the first cut-off, informs a setting.

A config (``split.method = "rolling"``)::

    {"name": "hm-backtest",
     "data": {"path": "../shared/data/hm/transactions.csv"},
     "split": {"method": "rolling", "first_cutoff": "2020-07-01", "n_folds": 12,
               "window_days": 7},
     "catalog": [{"part": "train"}, {"part": "unevaluated-buyers"}],
     "tuning": {"n_windows": 4},
     "protocol": {"exclude_train": "none"},
     "k": [12], "metrics": ["map", "ndcg"], "headline_metric": "map@12",
     "baseline": "best",
     "models": [{"name": "repurchase", "model": "sources", "role": "baseline",
                 "params": {"chain": [{"source": "repurchase"}]}}, ...]}

``baseline: "best"`` picks the model with ``"role": "baseline"`` that has the best
headline mean over the test windows.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from evaluation.audit import cold_recall_note, leak_audit, pool_audits
from evaluation.catalogs import CatalogBuilder, DeclaredCatalog
from evaluation.metrics import paired_bootstrap, summarize
from evaluation.protocol import Protocol, evaluate, relevance_sets
from evaluation.splits import Fold, rolling_origin_folds
from evaluation.tuning import expand_grid
from recsys.interactions import Interactions

log = logging.getLogger(__name__)


def fit_model(spec: Mapping[str, Any], params: Mapping[str, Any], train: Interactions,
              catalog_items: Sequence[str] | None = None) -> tuple[Any, float]:
    """Build and fit a config's model; models whose ``fit`` takes ``catalog_items`` get
    the window's declared catalog. Returns the model and the fit seconds."""
    from evaluation.runner import build_model

    data = train.reweight(spec["weighting"]) if spec.get("weighting") else train
    started = time.perf_counter()
    model = build_model(spec["model"], params)
    if catalog_items is not None and "catalog_items" in inspect.signature(model.fit).parameters:
        model.fit(data, catalog_items=catalog_items)
    else:
        model.fit(data)
    return model, time.perf_counter() - started


class Backtest:
    """The windows of a rolling backtest with their catalogs, built once and reused by
    every model.

    Parameters
    ----------
    data : Interactions
        The whole log.
    first_cutoff, n_folds, window_days
        See :func:`evaluation.splits.rolling_origin_folds`.
    catalog : list of dict, optional
        Catalog parts (:mod:`evaluation.catalogs`); default: items with a training event.
    protocol : Protocol
        Relevance, exclusion and cut-offs.
    """

    def __init__(self, data: Interactions, first_cutoff: str, n_folds: int,
                 window_days: float, catalog: Sequence[Mapping[str, Any]] | None,
                 protocol: Protocol) -> None:
        self.data = data
        self.protocol = protocol
        self.catalogs = CatalogBuilder(catalog, data)
        self.folds: list[Fold] = [f for f in rolling_origin_folds(
            data, first_cutoff, n_folds, window_days) if len(f.test)]
        if not self.folds:
            raise ValueError(f"no test events in the {n_folds} windows from {first_cutoff}")
        self.windows: list[DeclaredCatalog] = [
            self.catalogs.build(f.train, f.test, f.cutoff, f.end) for f in self.folds]

    def audit(self) -> dict[str, Any]:
        """Pooled leak audit, with each window's."""
        audits = []
        for fold, cat in zip(self.folds, self.windows, strict=True):
            relevant, _, _ = relevance_sets(fold.train, fold.test, self.protocol, cat.mask)
            audits.append({"window": fold.label, **leak_audit(
                self.data, fold.train, fold.test, relevant, cat.mask, cat.parts, cat.external)})
        return {**pool_audits(audits), "cold_recall": cold_recall_note(self.catalogs.parts),
                "per_window": audits}

    def summary(self) -> list[dict[str, Any]]:
        """Sizes of each window."""
        return [{"cutoff": f.label, "end": f.end.strftime("%Y-%m-%d"),
                 "train_events": len(f.train), "test_events": len(f.test),
                 "test_users": int(f.test.events["user"].nunique()),
                 "catalog": int(c.mask.sum()), "catalog_outside_log": int(
                     len(c.item_ids) - c.mask.sum())}
                for f, c in zip(self.folds, self.windows, strict=True)]

    def evaluate(self, spec: Mapping[str, Any], params: Mapping[str, Any],
                 protocol: Protocol | None = None, desc: str | None = None
                 ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, Any]]:
        """Fit and score one model on every window.

        Returns
        -------
        per_pair : dict of str to ndarray
            Metric values per (user, window) pair.
        pair_ids : ndarray of str
            ``user@cutoff`` of each pair.
        users : ndarray of str
            The user of each pair (the bootstrap's resampling unit).
        info : dict
            Fit and score seconds, each window's metric means, catalog metrics.
        """
        protocol = protocol or self.protocol
        per_pair: dict[str, list[np.ndarray]] = {}
        pair_ids, users, windows = [], [], []
        fit_s = score_s = 0.0
        catalog_metrics: dict[str, list[float]] = {}
        for fold, cat in tqdm(list(zip(self.folds, self.windows, strict=True)),
                              desc=desc or spec["name"], unit="window", leave=False):
            model, seconds = fit_model(spec, params, fold.train, cat.item_ids)
            fit_s += seconds
            result = evaluate(model, fold.train, fold.test, protocol, catalog=cat.mask)
            score_s += result.timings["score_s"]
            for name, values in result.per_user.items():
                per_pair.setdefault(name, []).append(values)
            for name, value in result.catalog.items():
                catalog_metrics.setdefault(name, []).append(value)
            users.append(result.user_ids)
            pair_ids.append(np.char.add(result.user_ids.astype(str), "@" + fold.label))
            windows.append({"cutoff": fold.label, "pairs": len(result.user_ids),
                            **{n: float(np.nanmean(v)) if np.isfinite(v).any() else None
                               for n, v in result.per_user.items()}})
        info = {"fit_s": round(fit_s, 2), "score_s": round(score_s, 2), "per_window": windows,
                "catalog_metrics": {n: float(np.mean(v)) for n, v in catalog_metrics.items()}}
        return ({n: np.concatenate(v) for n, v in per_pair.items()},
                np.concatenate(pair_ids), np.concatenate(users), info)


def _tune(spec: Mapping[str, Any], validation: Backtest, metric: str) -> tuple[dict, dict]:
    base, _, k = metric.partition("@")
    narrow = replace(validation.protocol, metrics=(base,),
                     ks=(int(k),) if k else validation.protocol.ks)
    trials = []
    grid = expand_grid(spec["tune"]["grid"])
    for i, point in enumerate(tqdm(grid, desc=f"{spec['name']} tuning", unit="setting",
                                   leave=False)):
        params = {**spec.get("params", {}), **point}
        per_pair, _, _, info = validation.evaluate(
            spec, params, narrow, desc=f"{spec['name']} setting {i + 1}/{len(grid)}")
        trials.append({"params": point, "metrics": {metric: float(np.nanmean(per_pair[metric]))},
                       "fit_s": info["fit_s"]})
    best = max(trials, key=lambda t: np.nan_to_num(t["metrics"][metric], nan=-np.inf))
    return ({**spec.get("params", {}), **best["params"]},
            {"metric": metric, "best_params": best["params"],
             "best_value": best["metrics"][metric], "trials": trials,
             "windows": [w["cutoff"] for w in validation.summary()]})


def run_backtest(config: Mapping[str, Any], data: Interactions, protocol: Protocol,
                 headline: str, boot: Mapping[str, Any], specs: Sequence[Mapping[str, Any]]
                 ) -> dict[str, Any]:
    """Evaluate every model spec on the configured windows (the runner's rolling path).

    Returns the record's ``split``, ``audit``, ``tuning_protocol``, ``models`` and
    ``baseline`` entries, plus ``per_pair`` and ``pair_ids`` (per model) for the
    per-user CSV and the report.
    """
    split = dict(config["split"])
    split.pop("method")
    first = pd.Timestamp(split["first_cutoff"])
    n_folds, window = int(split["n_folds"]), float(split.get("window_days", 7))
    test = Backtest(data, first, n_folds, window, config.get("catalog"), protocol)
    n_val = int(config.get("tuning", {}).get("n_windows", 4))
    validation = None
    if any(s.get("tune") for s in specs):
        validation = Backtest(data, first - pd.Timedelta(days=n_val * window), n_val, window,
                              config.get("catalog"), protocol)

    models_out, per_pair, pair_ids, pair_users = [], {}, {}, {}
    for spec in specs:
        entry: dict[str, Any] = {"name": spec["name"], "model": spec["model"],
                                 "role": spec.get("role", "model")}
        if spec.get("skip"):
            models_out.append({**entry, "skipped": spec["skip"]})
            continue
        params = dict(spec.get("params", {}))
        if spec.get("tune"):
            params, entry["tuning"] = _tune(spec, validation,
                                            spec["tune"].get("metric", headline))
        values, ids, users, info = test.evaluate(spec, params)
        entry.update({"params": params, "n_pairs": len(ids),
                      "n_users": int(np.unique(users).size), **info,
                      "metrics": summarize(values, **boot, groups=users)})
        for name, value in info["catalog_metrics"].items():
            entry["metrics"][name] = {"mean": value, "ci_low": float("nan"),
                                      "ci_high": float("nan"), "n_users": len(ids)}
        per_pair[spec["name"]], pair_ids[spec["name"]] = values, ids
        pair_users[spec["name"]] = users
        models_out.append(entry)
        log.info("%s: %s=%.4f", spec["name"], headline,
                 entry["metrics"].get(headline, {}).get("mean", float("nan")))

    baseline = config.get("baseline", "best")
    if baseline == "best":
        ranked = [m for m in models_out if m.get("role") == "baseline" and "metrics" in m]
        if not ranked:
            raise ValueError("baseline 'best' needs models with \"role\": \"baseline\"")
        baseline = max(ranked, key=lambda m: m["metrics"][headline]["mean"])["name"]
    compare = config.get("compare_metrics", [headline])
    for entry in models_out:
        name = entry["name"]
        if name == baseline or name not in per_pair or baseline not in per_pair:
            continue
        if not np.array_equal(pair_ids[name], pair_ids[baseline]):
            raise RuntimeError("models were evaluated on different (user, window) pairs")
        entry["vs_baseline"] = {
            m: paired_bootstrap(per_pair[name][m], per_pair[baseline][m], **boot,
                                groups=pair_users[name])
            for m in compare if m in per_pair[name] and m in per_pair[baseline]}
    return {
        "split": {"method": "rolling", "params": split, "windows": test.summary()},
        "audit": test.audit(),
        "tuning_protocol": (
            None if validation is None else
            f"one grid search per tuned model on the {n_val} windows of {window:g} days "
            f"before the first test cut-off {first.date()} (validation windows "
            f"{', '.join(w['cutoff'] for w in validation.summary())}), each trained "
            "strictly before its own cut-off; the test windows never inform a setting"),
        "catalog": test.catalogs.parts,
        "catalog_files": test.catalogs.files,
        "baseline": baseline,
        "models": models_out,
        "per_pair": per_pair,
        "pair_ids": pair_ids,
    }
