"""``stylerec evaluate``: run an offline evaluation from a JSON config.

The ``stylerec`` entry point (``stylerec.cli``) calls :func:`add_evaluate_parser`
to register the subcommand; the handler returns the process exit status.

Examples
--------
.. code-block:: console

    $ stylerec evaluate --config configs/ml100k_cornac.json
    $ stylerec evaluate --config configs/hm_backtest.json --model als --out /tmp/hm
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from evaluation.report import audit_lines
from evaluation.runner import load_config, run


def add_evaluate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``evaluate`` subcommand on an ``argparse`` subparsers object.

    Examples
    --------
    >>> parser = argparse.ArgumentParser(prog="stylerec")
    >>> sub = parser.add_subparsers(dest="command")
    >>> _ = add_evaluate_parser(sub)
    >>> parser.parse_args(["evaluate", "--config", "c.json"]).func is cmd_evaluate
    True
    """
    parser = subparsers.add_parser(
        "evaluate", help="offline evaluation of recommenders from a JSON config",
        description="Split an interaction log, fit and (optionally) tune the configured "
                    "models, and write ranking metrics with bootstrap intervals to "
                    "record.json, report.html and per_user.csv. See docs/evaluation.md.")
    parser.add_argument("--config", type=Path, required=True, help="evaluation config (JSON)")
    parser.add_argument("--out", type=Path, help="output directory (overrides the config)")
    parser.add_argument("--data", type=Path,
                        help="interaction log path (overrides the config's data.path)")
    parser.add_argument("--model", action="append", metavar="NAME",
                        help="evaluate only this configured model (repeatable; the baseline "
                             "is always kept)")
    parser.add_argument("--bootstrap", type=int, metavar="N",
                        help="bootstrap resamples (overrides the config; 0 disables intervals)")
    parser.add_argument("--no-html", action="store_true", help="skip report.html")
    parser.add_argument("--allow-code", action="store_true",
                        help="run models named as 'package.module:factory' in the config "
                             "(that imports and runs their code: only for configs you trust)")
    parser.set_defaults(func=cmd_evaluate)
    return parser


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"


def _cell(summary: dict[str, Any]) -> str:
    """``mean [low, high]`` (the interval only where there is one)."""
    mean, low = summary.get("mean"), summary.get("ci_low")
    if low is None or math.isnan(low):
        return _fmt(mean)
    return f"{_fmt(mean)} [{_fmt(low)}, {_fmt(summary.get('ci_high'))}]"


def _columns(record: dict[str, Any]) -> list[str]:
    """The headline cut-off's metrics, headline first."""
    headline = record["headline_metric"]
    _, _, k = headline.partition("@")
    names = [n for m in record["models"] for n in m.get("metrics", {})]
    wanted = record.get("config", {}).get("print_metrics")
    if wanted:
        return list(wanted)
    columns = [c for c in dict.fromkeys(names) if "@" not in c or not k or c.endswith(f"@{k}")]
    return [headline] + [c for c in columns if c != headline]


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Handler of ``stylerec evaluate``: run, then print a one-table summary."""
    config: dict[str, Any] = load_config(args.config)
    if args.bootstrap is not None:
        config["bootstrap"] = {**config.get("bootstrap", {}), "n_resamples": args.bootstrap}
    record = run(config, out_dir=args.out, data_path=args.data, only_models=args.model,
                 html=not args.no_html, allow_code=args.allow_code)
    for line in audit_lines(record.get("audit")):
        print(line)
    if record.get("tuning_protocol"):
        print(f"tuning: {record['tuning_protocol']}")
    # one cut-off keeps the table readable; record.json and report.html have them all
    columns = _columns(record)
    width = max([len(m["name"]) for m in record["models"]] + [5])
    print(f"{'model':<{width}}  " + "  ".join(f"{c:>24}" for c in columns)
          + f"  {'vs ' + str(record.get('baseline')):>28}")
    for model in record["models"]:
        if "skipped" in model:
            print(f"{model['name']:<{width}}  skipped: {model['skipped']}")
            continue
        cells = [_cell(model["metrics"].get(c, {})) for c in columns]
        diff = (model.get("vs_baseline") or {}).get(record["headline_metric"])
        versus = "" if diff is None else (f"{diff['diff']:+.4f} [{diff['ci_low']:+.4f}, "
                                          f"{diff['ci_high']:+.4f}]")
        print(f"{model['name']:<{width}}  " + "  ".join(f"{c:>24}" for c in cells)
              + f"  {versus:>28}")
    out = Path(record["output"])
    print(f"wrote {out / 'record.json'}" + ("" if args.no_html else f" and {out / 'report.html'}"))
    tuned = {m["name"]: m["params"] for m in record["models"] if m.get("tuning")}
    if tuned:
        print("tuned on validation: " + json.dumps(tuned))
    return 0
