"""Config-driven offline evaluation: load, split, (tune,) fit, evaluate, report.

One JSON config describes a whole run, so the numbers in a report can be
regenerated with one command (``stylerec evaluate --config configs/x.json``)::

    {
      "name": "ml100k-cornac",
      "data": {"path": "../shared/data/ml-100k/u.data", "options": {}},
      "split": {"method": "ratio", "test_fraction": 0.2, "rating_threshold": 4.0, "seed": 123},
      "protocol": {"relevance_threshold": 4.0, "exclude_train": "relevant",
                   "candidate_items": "train", "map_normalization": "min"},
      "k": [5, 10, 20],
      "metrics": ["precision", "recall", "ndcg", "map", "auc", "map_full"],
      "models": [
        {"name": "popularity", "model": "popularity"},
        {"name": "bpr", "model": "bpr", "params": {"factors": 64, "random_state": 0},
         "tune": {"grid": {"regularization": [0.01, 0.1]}, "metric": "ndcg@10",
                  "validation": {"method": "ratio", "test_fraction": 0.2, "seed": 1}}}
      ],
      "bootstrap": {"n_resamples": 1000, "confidence": 0.95, "seed": 0},
      "output": "out/evaluate/ml100k_cornac"
    }

Keys
----
data.path, data.options
    File and keyword options of :func:`recsys.interactions.load_interactions`;
    ``data.extra_files`` lists more files to fingerprint (a catalog, embeddings).
split
    ``method`` (a key of :data:`evaluation.splits.SPLITTERS`) and its parameters, or
    ``"rolling"`` with ``first_cutoff``, ``n_folds``, ``window_days``: the
    rolling-origin backtest of :mod:`evaluation.backtest` (``tuning.n_windows``
    validation windows before the first cut-off; ``baseline: "best"``).
catalog
    The declared candidate items (:mod:`evaluation.catalogs`): a list of parts,
    default ``[{"part": "train"}]``. Without it a single split uses
    ``protocol.candidate_items``; ``"all"`` is refused when it would make items whose
    only events are test events candidates.
protocol, k, metrics
    :class:`evaluation.protocol.Protocol` fields; ``relevance_threshold``
    defaults to the split's ``rating_threshold``.
models
    ``name`` (label), ``model`` (a ``recsys.cf`` model name, a name added with
    :func:`register_model_builder`, or ``"package.module:factory"``), ``params``,
    optional ``weighting`` (refit on ``train.reweight(weighting)``), ``tune``
    (``grid``, ``metric``, ``validation``: grid search on a validation split of
    the training data; ``validation`` defaults to the test split's method and
    parameters), ``sweep``
    (``{"param": ..., "values": [...]}``: test metrics along one parameter, e.g.
    a blend weight, for the report; not a selection), and ``skip`` (a reason:
    the model is listed in the record as skipped).
baseline, compare_metrics
    Model the others are compared with (paired bootstrap; default the first)
    and on which metrics (default the headline metric).
headline_metric
    Metric of the distribution plot and the default comparison (default ``ndcg@max(k)``).
report.gallery
    Render entries (``render``, ``original``, ``user_id``, ``item_id``, ``lift``,
    ``fidelity``) or the path of a JSON file holding them, shown in the HTML.
output
    Output directory: ``record.json``, ``report.html``, ``per_user.csv``.

Relative paths are resolved against the working directory.

Plugging in a model
-------------------
Anything with ``fit(Interactions)`` and either ``score(user_ids)`` +
``item_ids_`` or ``recommend(user_ids, k, filter_seen=True)``: name its factory
as ``"model": "package.module:factory"`` (called with ``params``), or register a
builder once with :func:`register_model_builder`.

A ``module:factory`` name imports and runs that module's code, so a config that
names one runs only with ``run(..., allow_code=True)`` (``stylerec evaluate
--allow-code``): reading a config from someone else must not run their code.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from evaluation import report
from evaluation.audit import cold_recall_note, items_only_in_test, leak_audit
from evaluation.catalogs import LEAK_EXPLANATION, CatalogBuilder, CatalogLeakError
from evaluation.metrics import ALL_METRICS, paired_bootstrap
from evaluation.protocol import Protocol, evaluate, relevance_sets
from evaluation.splits import make_split, split_summary, validation_split
from evaluation.tuning import grid_search
from recsys.interactions import Interactions, load_interactions

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ModelBuilder = Callable[[dict[str, Any]], Any]
MODEL_BUILDERS: dict[str, ModelBuilder] = {}
# visual recommenders, imported only when a config names them
BUILTIN_FACTORIES = {"taste": "evaluation.adapters:taste_only",
                     "blend": "evaluation.adapters:StyleSlates",
                     "sources": "evaluation.adapters:SourceSlates"}
PROTOCOL_KEYS = ("relevance_threshold", "exclude_train", "candidate_items", "map_normalization",
                 "position_model", "p_relevant", "p_irrelevant", "batch_size")


def register_model_builder(name: str, builder: ModelBuilder) -> None:
    """Make ``"model": name`` in a config call ``builder(params)``.

    Examples
    --------
    >>> register_model_builder("blend", lambda p: MyBlend(**p))  # doctest: +SKIP
    """
    MODEL_BUILDERS[name] = builder


def build_model(kind: str, params: Mapping[str, Any]) -> Any:
    """An unfitted model from a config entry's ``model`` and ``params``.

    Looks ``kind`` up in :data:`MODEL_BUILDERS`, then :data:`BUILTIN_FACTORIES`
    (``taste``, ``blend``), then as ``"module:factory"``, then among ``recsys.cf``
    models.
    """
    params = dict(params)
    if kind in MODEL_BUILDERS:
        return MODEL_BUILDERS[kind](params)
    kind = BUILTIN_FACTORIES.get(kind, kind)
    if ":" in kind:
        module_name, _, attr = kind.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot import model factory {kind!r}: {err}") from None
        return factory(**params)
    from recsys.cf import MODELS, create_model

    if kind in MODELS:
        return create_model(kind, **params)
    known = sorted(MODELS) + sorted(MODEL_BUILDERS) + sorted(BUILTIN_FACTORIES)
    raise ValueError(f"unknown model {kind!r}; available: {known} or 'package.module:factory'")


def load_config(path: str | Path) -> dict[str, Any]:
    """Read and check a JSON evaluation config (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation config not found: {path}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None
    check_config(config)
    return config


def check_config(config: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first problem in a config (keys and their shapes)."""
    if not isinstance(config, Mapping):
        raise ValueError(f"a config is a JSON object, got {type(config).__name__}")
    for key in ("data", "split", "models"):
        if key not in config:
            raise ValueError(f"config needs a {key!r} section")
    for key, kind in (("data", Mapping), ("split", Mapping), ("models", list),
                      ("protocol", Mapping), ("bootstrap", Mapping), ("k", list),
                      ("metrics", list)):
        if key in config and not isinstance(config[key], kind):
            shape = "an object {...}" if kind is Mapping else "a list [...]"
            raise ValueError(f"config {key!r} must be {shape}, got {config[key]!r:.60}")
    if "path" not in config["data"]:
        raise ValueError("config data section needs a 'path'")
    if "method" not in config["split"]:
        raise ValueError("config split section needs a 'method'")
    if config["split"]["method"] == "rolling":
        missing = {"first_cutoff", "n_folds"} - set(config["split"])
        if missing:
            raise ValueError(f"a rolling split needs {sorted(missing)}")
    if "catalog" in config:
        from evaluation.catalogs import check_catalog

        check_catalog(config["catalog"])
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in config.get("k", [])):
        raise ValueError(f"config 'k' must list integers >= 1, got {config['k']}")
    for spec in config["models"]:
        if not isinstance(spec, Mapping):
            raise ValueError(f"each entry of 'models' must be an object, got {spec!r:.60}")
        for key, kind in (("params", Mapping), ("tune", Mapping), ("sweep", Mapping)):
            if key in spec and not isinstance(spec[key], kind):
                raise ValueError(f"model {spec.get('name')!r}: {key!r} must be an object, "
                                 f"got {spec[key]!r:.60}")
    names = [m.get("name") for m in config["models"]]
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"every model needs a unique 'name', got {names}")
    for spec in config["models"]:
        if "model" not in spec:
            raise ValueError(f"model {spec['name']!r} needs a 'model' (which model to build)")
    unknown = set(config.get("protocol", {})) - set(PROTOCOL_KEYS)
    if unknown:
        raise ValueError(f"unknown protocol key(s) {sorted(unknown)}; known: {PROTOCOL_KEYS}")


def check_code(config: Mapping[str, Any], allow_code: bool) -> None:
    """Refuse a config whose models name ``module:factory`` code unless ``allow_code``.

    Raises
    ------
    PermissionError
        Naming the models and the flag that allows them.
    """
    code = [spec["model"] for spec in config["models"]
            if spec.get("model") not in MODEL_BUILDERS and spec.get("model") not in
            BUILTIN_FACTORIES and ":" in str(spec.get("model"))]
    if code and not allow_code:
        raise PermissionError(f"the config names code to import and run ({', '.join(code)}); "
                              "if you trust it, pass --allow-code (run(..., allow_code=True))")


def protocol_from_config(config: Mapping[str, Any]) -> Protocol:
    """The :class:`Protocol` a config describes."""
    options = dict(config.get("protocol", {}))
    threshold = config["split"].get("rating_threshold")
    if threshold is not None:
        options.setdefault("relevance_threshold", threshold)
    return Protocol(ks=tuple(config.get("k", [10])),
                    metrics=tuple(config.get("metrics", ALL_METRICS)), **options)


def _headline(config: Mapping[str, Any], protocol: Protocol) -> str:
    if "headline_metric" in config:
        return config["headline_metric"]
    base = "ndcg" if "ndcg" in protocol.metrics else protocol.metrics[0]
    return base if base in ("auc", "map_full") else f"{base}@{max(protocol.ks)}"


def _gallery(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    gallery = config.get("report", {}).get("gallery")
    if isinstance(gallery, str):
        gallery = json.loads(Path(gallery).read_text())
    return list(gallery or [])


def _fit(
    spec: Mapping[str, Any], params: Mapping[str, Any], train: Interactions
) -> tuple[Any, float]:
    from evaluation.backtest import fit_model

    return fit_model(spec, params, train)


def _single_split_catalog(config: Mapping[str, Any], data: Interactions, train: Interactions,
                          test: Interactions, protocol: Protocol
                          ) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The declared catalog of a single split and its leak audit; refuses a candidate
    set that hands the ranker items whose only events are test events."""
    if "catalog" in config:
        times = test.events["time"]
        start, end = (times.min(), times.max() + pd.Timedelta(days=1)) if len(test) and \
            times.notna().all() else (pd.NaT, pd.NaT)
        cat = CatalogBuilder(config["catalog"], data).build(train, test, start, end)
        mask, parts, external = cat.mask, cat.parts, cat.external
    else:
        mask, parts, external = None, None, None
    relevant, _, candidates = relevance_sets(train, test, protocol, mask)
    if mask is None:
        leaked = int((items_only_in_test(data, test) & candidates).sum())
        if leaked:
            raise CatalogLeakError(
                f"protocol.candidate_items={protocol.candidate_items!r} makes {leaked} items "
                f"whose only events are test events candidates: {LEAK_EXPLANATION}")
        parts = {f"candidate_items:{protocol.candidate_items}": candidates}
    audit = leak_audit(data, train, test, relevant, candidates, parts, external)
    random = {"ratio", "stratified"} | ({"leave_one_out"} if config["split"].get("mode")
                                        == "random" else set())
    audit["split_order"] = "random" if config["split"]["method"] in random else "temporal"
    audit["cold_recall"] = cold_recall_note(config.get("catalog")) if "catalog" in config \
        else f"candidate_items={protocol.candidate_items!r}"
    return mask, audit


def _tune(spec: Mapping[str, Any], train: Interactions, protocol: Protocol, headline: str,
          split_cfg: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    tune = spec["tune"]
    # by default validation mirrors the test split, applied to the training set
    val_cfg = dict(tune.get("validation", split_cfg))
    fit_data, validation = validation_split(train, **val_cfg)
    if spec.get("weighting"):
        fit_data = fit_data.reweight(spec["weighting"])
    metric = tune.get("metric", headline)
    # score only what the choice needs: full-ranking metrics cost a pass per user
    base, _, k = metric.partition("@")
    narrow = replace(protocol, metrics=(base,), ks=(int(k),) if k else protocol.ks)
    result = grid_search(lambda p: build_model(spec["model"], p), tune["grid"], fit_data,
                         validation, narrow, metric, spec.get("params", {}))
    summary = result.to_dict()
    summary["validation"] = {**val_cfg, "summary": split_summary(fit_data, validation)}
    return result.best_params, summary


def _sweep(spec: Mapping[str, Any], params: Mapping[str, Any], train: Interactions,
           test: Interactions, protocol: Protocol, boot: Mapping[str, Any],
           headline: str) -> dict[str, Any]:
    sweep = spec["sweep"]
    metrics = sweep.get("metrics", [headline])
    points = []
    for value in sweep["values"]:
        model, fit_s = _fit(spec, {**params, sweep["param"]: value}, train)
        summary = evaluate(model, train, test, protocol).summary(**boot)
        points.append({"value": value, "fit_s": round(fit_s, 3),
                       "metrics": {m: summary[m] for m in metrics}})
    return {"param": sweep["param"], "points": points}


def _single_split_models(
    specs: Sequence[Mapping[str, Any]], train: Interactions, test: Interactions,
    protocol: Protocol, headline: str, boot: Mapping[str, Any], config: Mapping[str, Any],
    catalog: np.ndarray | None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    models_out: list[dict[str, Any]] = []
    per_user: dict[str, dict[str, np.ndarray]] = {}
    user_ids: dict[str, np.ndarray] = {}
    for spec in tqdm(specs, desc="models", unit="model"):
        entry: dict[str, Any] = {"name": spec["name"], "model": spec["model"],
                                 "weighting": spec.get("weighting")}
        if spec.get("skip"):
            entry["skipped"] = spec["skip"]
            models_out.append(entry)
            continue
        params = dict(spec.get("params", {}))
        if spec.get("tune"):
            params, entry["tuning"] = _tune(spec, train, protocol, headline, config["split"])
        model, fit_s = _fit(spec, params, train)
        result = evaluate(model, train, test, protocol, catalog=catalog)
        entry.update({
            "params": params,
            "fit_s": round(fit_s, 3),
            "score_s": round(result.timings["score_s"], 3),
            "n_users": len(result.user_ids),
            "n_skipped_users": result.n_skipped_users,
            "metrics": result.summary(**boot),
        })
        if spec.get("sweep"):
            entry["sweep"] = _sweep(spec, params, train, test, protocol, boot, headline)
        per_user[spec["name"]] = result.per_user
        user_ids[spec["name"]] = result.user_ids
        models_out.append(entry)
        log.info("%s: %s=%.4f (fit %.1fs)", spec["name"], headline,
                 entry["metrics"].get(headline, {}).get("mean", float("nan")), fit_s)
    return models_out, per_user, user_ids


def _compare(models_out: list[dict[str, Any]], per_user: Mapping[str, Mapping[str, np.ndarray]],
             user_ids: Mapping[str, np.ndarray], baseline: str, compare: Sequence[str],
             boot: Mapping[str, Any]) -> None:
    if baseline not in per_user:
        return
    for entry in models_out:
        name = entry["name"]
        if name == baseline or name not in per_user:
            continue
        if not np.array_equal(user_ids[name], user_ids[baseline]):
            raise RuntimeError("models were evaluated on different users")
        entry["vs_baseline"] = {
            m: paired_bootstrap(per_user[name][m], per_user[baseline][m], **boot)
            for m in compare if m in per_user[name] and m in per_user[baseline]}


def run(
    config: Mapping[str, Any],
    *,
    out_dir: str | Path | None = None,
    data_path: str | Path | None = None,
    only_models: Sequence[str] | None = None,
    html: bool = True,
    allow_code: bool = False,
) -> dict[str, Any]:
    """Run the evaluation a config describes and write its outputs.

    Parameters
    ----------
    config : mapping
        See the module docstring.
    out_dir : path, optional
        Overrides ``config["output"]``.
    data_path : path, optional
        Overrides ``config["data"]["path"]``.
    only_models : sequence of str, optional
        Evaluate only these model names (the baseline is always kept).
    html : bool
        Also write ``report.html``.
    allow_code : bool
        Run ``"package.module:factory"`` models (they import and run code).

    Returns
    -------
    dict
        The record written to ``record.json``.

    Examples
    --------
    >>> record = run(load_config("configs/ml100k_cornac.json"))  # doctest: +SKIP
    >>> record["models"][1]["metrics"]["ndcg@10"]["mean"]  # doctest: +SKIP
    """
    check_config(config)
    check_code(config, allow_code)
    env = report.environment()  # before fitting: the code that runs, not what is on disk later
    out = Path(out_dir or config.get("output") or f"out/evaluate/{config.get('name', 'run')}")
    data_cfg = config["data"]
    path = Path(data_path or data_cfg["path"])
    options = dict(data_cfg.get("options", {}))
    started = time.perf_counter()
    data = load_interactions(path, **options)
    split_cfg = dict(config["split"])
    method = split_cfg.pop("method")
    protocol = protocol_from_config(config)
    headline = _headline(config, protocol)
    boot = {"n_resamples": 1000, "confidence": 0.95, "seed": 0, **config.get("bootstrap", {})}
    specs = list(config["models"])
    baseline = config.get("baseline", "best" if method == "rolling" else specs[0]["name"])
    if only_models:
        missing = set(only_models) - {s["name"] for s in specs}
        if missing:
            raise ValueError(f"no model(s) named {sorted(missing)} in the config")
        keep = set(only_models) | {baseline}
        specs = [s for s in specs if s["name"] in keep
                 or (baseline == "best" and s.get("role") == "baseline")]
    log.info("evaluating %d model(s) on %s (%s split)", len(specs), data, method)
    if method == "rolling":
        from evaluation.backtest import run_backtest

        outcome = run_backtest(config, data, protocol, headline, boot, specs)
        per_user, user_ids = outcome.pop("per_pair"), outcome.pop("pair_ids")
        extra_files = outcome.pop("catalog_files")
        outcome.pop("catalog")
        sections = outcome
    else:
        train, test = make_split(data, method, **split_cfg)
        catalog, audit = _single_split_catalog(config, data, train, test, protocol)
        models_out, per_user, user_ids = _single_split_models(
            specs, train, test, protocol, headline, boot, config, catalog)
        _compare(models_out, per_user, user_ids, baseline,
                 config.get("compare_metrics", [headline]), boot)
        extra_files = [p["path"] for p in config.get("catalog", []) if "path" in p]
        sections = {"split": {"method": method, "params": split_cfg,
                              "summary": split_summary(train, test)},
                    "audit": audit, "baseline": baseline, "models": models_out}

    files = [path, *[Path(p) for p in [*data_cfg.get("extra_files", []), *extra_files]]]
    record = {
        "format": FORMAT_VERSION,
        "name": config.get("name", out.name),
        "output": str(out),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "audit": sections.pop("audit"),
        "data": {
            "files": [report.file_fingerprint(p) for p in files],
            "rows": data.source.get("rows"),
            "events": len(data), "users": data.n_users, "items": data.n_items,
            "loader": options,
        },
        "protocol": protocol.to_dict(),
        "catalog": config.get("catalog"),
        "bootstrap": boot,
        "headline_metric": headline,
        **sections,
        "environment": env,
        "config": dict(config),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(record, out / "record.json")
    report.write_per_user_csv(per_user, user_ids, out / "per_user.csv")
    if html:
        report.write_html(record, out / "report.html", per_user=per_user,
                          gallery=_gallery(config))
    return record
