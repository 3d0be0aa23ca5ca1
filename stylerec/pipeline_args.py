"""``stylerec fit --config pipeline.json --set key.path=value``: a pipeline spec from the
command line.

The spec (:class:`recsys.spec.PipelineSpec`) comes from ``--config`` (or the defaults),
then the explicit flags of ``fit`` (``--interactions``, ``--model``, ``--param``,
``--images``…), then each ``--set``, in that order; the result is validated, so a bad
value is reported with its key (``cf.params.factors: expected int, got 'x'``).

Examples
--------
>>> import argparse
>>> parser = argparse.ArgumentParser()
>>> add_spec_arguments(parser)
>>> parser.add_argument("--model"); parser.add_argument("--param", action="append", default=[])
... # doctest: +ELLIPSIS
_StoreAction(...)
>>> args = parser.parse_args(["--model", "bpr", "--param", "factors=8",
...                           "--set", "cf.params.iterations=5"])
>>> flag_overrides(args, {"model": "cf.name"})
['cf.name="bpr"', 'cf.params.factors=8']
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recsys.spec import PipelineSpec, SpecError, apply_overrides, with_defaults
from stylerec.render_cli import parse_params

# flag dest -> spec key
FIT_FLAGS = {
    "interactions": "data.interactions", "user_col": "data.user_col",
    "item_col": "data.item_col", "time_col": "data.time_col", "value_col": "data.value_col",
    "weighting": "data.weighting", "half_life_days": "data.half_life_days",
    "time_unit": "data.time_unit", "date_format": "data.date_format", "sep": "data.sep",
    "columns": "data.columns", "encoding": "data.encoding",
    "images": "data.images", "styles": "styles", "model": "cf.name",
    "encoder": "encoder.name", "cache_dir": "encoder.cache_dir",
    "blend": "ranker.params.taste_weight",
}


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--set``."""
    group = parser.add_argument_group("pipeline spec")
    group.add_argument("--config", type=Path, metavar="PIPELINE.json",
                       help="pipeline spec (recsys.spec; e.g. configs/demo.json); flags and "
                            "--set override it")
    group.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY.PATH=VALUE",
                       help="set a spec key, repeatable (e.g. --set cf.params.factors=64 "
                            "--set encoder.name=efficientnet-lite0-style); VALUE is JSON "
                            "when it parses as JSON")


def flag_overrides(args: argparse.Namespace, flags: dict[str, str]) -> list[str]:
    """``key=json`` overrides for the flags given (not ``None``), then ``--param`` as
    ``cf.params.*``."""
    out = []
    for dest, key in flags.items():
        value = getattr(args, dest, None)
        if value is not None:
            out.append(f"{key}={json.dumps(str(value) if isinstance(value, Path) else value)}")
    for name, value in parse_params(getattr(args, "param", [])).items():
        out.append(f"cf.params.{name}={json.dumps(value)}")
    return out


def spec_from_args(args: argparse.Namespace, defaults: dict[str, str] | None = None
                   ) -> PipelineSpec:
    """The validated spec of ``--config``, the flags and ``--set``.

    ``defaults`` (spec key → JSON value) apply only without ``--config``.
    """
    if args.config is not None:
        if not args.config.is_file():
            raise FileNotFoundError(f"pipeline spec not found: {args.config}")
        try:
            data = json.loads(args.config.read_text())
        except json.JSONDecodeError as err:
            raise SpecError(f"{args.config}: not valid JSON: {err}") from None
        base: list[str] = []
    else:
        data = {}
        base = [f"{key}={value}" for key, value in (defaults or {}).items()]
    overrides = base + flag_overrides(args, FIT_FLAGS) + list(args.overrides)
    if getattr(args, "header", True) is False:  # --no-header
        overrides.insert(len(base), "data.header=false")
    return PipelineSpec.from_dict(apply_overrides(with_defaults(data), overrides)).validate()
