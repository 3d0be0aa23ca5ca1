"""``stylerec serve`` (the HTTP service on uvicorn), ``stylerec ctr`` (live CTR report)
and ``stylerec bench-service`` (the service's load test).

Register them with :func:`add_service_parsers`.

Examples
--------
From the shell::

    stylerec serve --model-dir out/demo/model --port 8000
    stylerec ctr --log out/serve/feedback.db
    stylerec bench-service --model-dir out/hm-model --out out/bench-service
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from evaluation.live_ctr import VARIANTS, ctr_report, format_report, load_log
from stylerec.render_cli import add_styler_arguments, renderer_from_args

log = logging.getLogger(__name__)

CONFIG_ENV = "STYLEREC_SERVE_CONFIG"  # how the worker processes get their settings
API_KEY_ENV = "STYLEREC_API_KEY"


def add_service_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve``, ``ctr`` and ``bench-service`` to the ``stylerec`` subcommands."""
    from evaluation.bench_service import add_bench_service_parser

    add_serve_parser(subparsers)
    add_ctr_parser(subparsers)
    add_bench_service_parser(subparsers)


def add_serve_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve", help="serve a fitted pipeline over HTTP (FastAPI + uvicorn)",
        description="Serve /recommend, /explain, /render, /image, /feedback, /healthz, "
                    "/metrics and /admin/reload for a model written by `stylerec fit "
                    "--images`. Binds to loopback; any other address needs --api-key.")
    p.add_argument("--model-dir", type=Path, required=True, help="directory written by fit")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes (default 1); they share the feedback log, each "
                        "holds its own model and reports its own /metrics")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"require this X-API-Key header (default: ${API_KEY_ENV})")
    p.add_argument("--feedback-log", type=Path, default=Path("out/serve/feedback.db"),
                   help="SQLite feedback log (default: out/serve/feedback.db)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="experiment arms, comma-separated (default: styled,plain; 'styled' "
                        "shows renders, others the catalog photo)")
    p.add_argument("--experiment", default="stylerec",
                   help="salt of the shopper-to-arm hash (default: stylerec)")
    p.add_argument("--max-k", type=int, default=100, help="largest slate (default: 100)")
    p.add_argument("--slate-cache", type=int, default=100_000,
                   help="slates kept per worker, by (shopper, k, online events) (default "
                        "100000; 0: compute every request)")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS/OpenMP/FAISS threads per worker (default 1: requests are "
                        "batched, and spinning thread pools stall a busy machine)")
    p.add_argument("--no-render", dest="render", action="store_false",
                   help="no /render and no styled arm (no styler is loaded)")
    add_styler_arguments(p)
    p.set_defaults(func=cmd_serve, format="jpg", progress=False)
    return p


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    if not _is_loopback(args.host) and not args.api_key:
        raise ValueError(f"--host {args.host} is not loopback: give --api-key (or "
                         f"${API_KEY_ENV}) so that only your front end can call the service")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.slate_cache < 0:
        raise ValueError(f"--slate-cache must be >= 0, got {args.slate_cache}")
    if args.format != "jpg":
        raise ValueError("the service serves JPEG renders: --format must be jpg")
    config = {name: (str(value) if isinstance(value, Path) else value)
              for name, value in vars(args).items() if name != "func"}
    if not (args.model_dir / "recommender.json").is_file():
        raise FileNotFoundError(f"no saved StyleRecommender at {args.model_dir}: fit one with "
                                "`stylerec fit --images ... --styles ... --out DIR`")
    print(f"serving {args.model_dir} on http://{args.host}:{args.port} "
          f"({args.workers} worker{'s' * (args.workers > 1)}; feedback log {args.feedback_log})",
          file=sys.stderr)
    if args.workers == 1:
        uvicorn.run(app_from_config(config), host=args.host, port=args.port,
                    log_level="warning", access_log=False)
    else:
        os.environ[CONFIG_ENV] = json.dumps(config)
        uvicorn.run("stylerec.serve:app_from_env", factory=True, host=args.host,
                    port=args.port, workers=args.workers, log_level="warning",
                    access_log=False)
    return 0


def app_from_config(config: dict[str, Any]) -> Any:
    """The app that ``stylerec serve`` options (as a dict) describe."""
    from stylerec.service import Limits, create_app

    args = argparse.Namespace(**config)
    limit_threads(args.threads)
    renderer = renderer_from_args(args) if args.render else None
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    return create_app(args.model_dir, args.feedback_log, renderer, args.api_key, variants,
                      args.experiment, Limits(max_k=args.max_k, slate_cache=args.slate_cache))


def limit_threads(n: int) -> None:
    """Cap this process's BLAS and OpenMP pools (FAISS's included) at ``n`` threads."""
    import faiss
    from threadpoolctl import threadpool_limits

    if n < 1:
        raise ValueError(f"--threads must be >= 1, got {n}")
    threadpool_limits(limits=n)
    faiss.omp_set_num_threads(n)


def app_from_env() -> Any:
    """uvicorn's factory in each worker process (settings in ``$STYLEREC_SERVE_CONFIG``)."""
    return app_from_config(json.loads(os.environ[CONFIG_ENV]))


def add_ctr_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "ctr", help="live CTR per variant and position from the service's feedback log",
        description="Impressions and clicks from the feedback log: CTR per variant and per "
                    "position with Wilson intervals, the difference between variants with a "
                    "shopper bootstrap, and the offline position-based click model's "
                    "prediction beside each position.")
    p.add_argument("--log", type=Path, required=True, help="feedback log (SQLite) of the service")
    p.add_argument("--window", type=float, default=86400.0,
                   help="seconds after an impression a click counts for it (default: 86400)")
    p.add_argument("--baseline", help="arm to compare with (default: plain, else the first)")
    p.add_argument("--position-model", default="log2", choices=("log2", "reciprocal"),
                   help="examination curve of the offline click model (default: log2)")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    p.set_defaults(func=cmd_ctr)
    return p


def cmd_ctr(args: argparse.Namespace) -> int:
    report = ctr_report(load_log(args.log), args.window, args.baseline, args.position_model,
                        args.resamples, args.seed)
    if not report["variants"]:
        raise ValueError(f"{args.log}: no impressions in the log")
    report["log"] = str(args.log)
    print(format_report(report), end="")
    if args.json is not None:
        from ground.files import write_bytes_atomic

        write_bytes_atomic(args.json, json.dumps(report, indent=2).encode())
    return 0
