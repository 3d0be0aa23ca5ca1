"""Hyperparameter search on a validation split carved from training data.

The test split is never touched here: :func:`grid_search` fits each candidate
on ``fit`` data and scores it on ``validation`` data, both produced by
:func:`evaluation.splits.validation_split` from the *training* set. The runner
then refits the winner on the whole training set and evaluates it once on test.

Examples
--------
>>> expand_grid({"factors": [32, 64], "regularization": [0.1]})
[{'factors': 32, 'regularization': 0.1}, {'factors': 64, 'regularization': 0.1}]
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evaluation.protocol import Protocol, evaluate
from recsys.interactions import Interactions

log = logging.getLogger(__name__)


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in a fixed order (last key varies fastest)."""
    for name, values in grid.items():
        if isinstance(values, str) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"grid values of {name!r} must be a non-empty list, got {values!r}")
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]


@dataclass
class Trial:
    """One grid point: its parameters, validation metrics (means) and fit time."""

    params: dict[str, Any]
    metrics: dict[str, float]
    fit_s: float


@dataclass
class TuneResult:
    """Outcome of a grid search: the best parameters and every trial."""

    metric: str
    best_params: dict[str, Any]
    best_value: float
    trials: list[Trial] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "best_params": self.best_params,
            "best_value": self.best_value,
            "trials": [{"params": t.params, "metrics": t.metrics, "fit_s": t.fit_s}
                       for t in self.trials],
        }


def grid_search(
    build: Callable[[dict[str, Any]], Any],
    grid: Mapping[str, Sequence[Any]],
    fit_data: Interactions,
    validation: Interactions,
    protocol: Protocol,
    metric: str = "ndcg@10",
    base_params: Mapping[str, Any] | None = None,
) -> TuneResult:
    """Pick the grid point with the best mean ``metric`` on ``validation``.

    Parameters
    ----------
    build : callable
        ``params -> unfitted model`` (anything with ``fit(Interactions)``).
    grid : mapping of str to list
        Values to try per hyperparameter; merged over ``base_params``.
    fit_data, validation : Interactions
        A split of the *training* data (see :func:`evaluation.splits.validation_split`).
    protocol : Protocol
        The evaluation protocol; must produce ``metric``.
    metric : str
        Name of a per-user metric, e.g. ``"ndcg@10"``; higher is better. Ties
        keep the earlier grid point.

    Returns
    -------
    TuneResult

    Examples
    --------
    >>> from recsys.cf import create_model  # doctest: +SKIP
    >>> best = grid_search(lambda p: create_model("als", **p), {"factors": [32, 64]},
    ...                    fit, val, Protocol(ks=(10,)))  # doctest: +SKIP
    >>> best.best_params  # doctest: +SKIP
    """
    base = dict(base_params or {})
    result = TuneResult(metric=metric, best_params={}, best_value=-math.inf)
    for point in expand_grid(grid):
        params = {**base, **point}
        started = time.perf_counter()
        model = build(params)
        model.fit(fit_data)
        fit_s = time.perf_counter() - started
        scores = evaluate(model, fit_data, validation, protocol).per_user
        if metric not in scores:
            raise ValueError(f"tuning metric {metric!r} is not computed; have {sorted(scores)}")
        means = {name: float(np.nanmean(values)) for name, values in scores.items()}
        result.trials.append(Trial(params=params, metrics=means, fit_s=round(fit_s, 3)))
        log.info("tune %s -> %s=%.4f (%.1fs)", params, metric, means[metric], fit_s)
        if means[metric] > result.best_value:
            result.best_value, result.best_params = means[metric], params
    return result
