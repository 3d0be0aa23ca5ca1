"""The ``stylerec`` command line: fit, recommend, demo, render, evaluate, bench."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from evaluation.bench import add_bench_parser
from ground.files import check_replaceable, saved_directory
from recsys.cf import CF_MODELS, Recommender
from recsys.interactions import TIME_UNITS, WEIGHTINGS
from recsys.spec import fit_pipeline
from stylerec.batch import add_batch_parsers
from stylerec.evaluate_cli import add_evaluate_parser
from stylerec.pipeline_args import add_spec_arguments, spec_from_args
from stylerec.render_cli import (
    add_render_parser,
    add_styler_arguments,
    renderer_from_args,
    write_slates_page,
)
from stylerec.serve import add_service_parsers
from stylerec.style_report import add_style_report_parser

log = logging.getLogger("stylerec")

# Errors whose message tells the user what to fix: CheckpointError and ImageLoadError
# are ValueErrors, unknown registry names LookupErrors, missing files OSErrors.
USER_ERRORS = (ValueError, LookupError, OSError)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that say how to read an interaction log."""
    group = parser.add_argument_group("interaction log")
    group.add_argument("--interactions", type=Path,
                       help="CSV/TSV/Parquet log (required unless --config gives "
                            "data.interactions); H&M transactions.csv and MovieLens u.data "
                            "are recognised without column options")
    group.add_argument("--user-col", help="column with user ids (recognised when named "
                       "user_id, user, customer_id, ...)")
    group.add_argument("--item-col", help="column with item ids")
    group.add_argument("--time-col", help="column with timestamps (optional)")
    group.add_argument("--value-col", help="column with ratings/quantities (optional)")
    group.add_argument("--time-unit", choices=TIME_UNITS,
                       help="unit of numeric times (default: told from their magnitude)")
    group.add_argument("--date-format", help="strftime format of text dates, e.g. %%d/%%m/%%Y "
                       "(needed when day and month order can't be told)")
    group.add_argument("--sep", help="field separator (default: sniffed from the first line)")
    group.add_argument("--no-header", dest="header", action="store_false",
                       help="the file has no header line (give --columns)")
    group.add_argument("--columns", type=lambda text: [c.strip() for c in text.split(",")],
                       metavar="NAME,NAME,...",
                       help="names of the file's columns, in order (e.g. user,item,plays)")
    group.add_argument("--encoding", help="text encoding (default: UTF-8, else Latin-1)")
    group.add_argument("--weighting", choices=WEIGHTINGS,
                       help="how interactions become confidence weights (default: count; "
                            "log1p or bm25 for heavy-tailed counts such as plays)")
    group.add_argument("--half-life-days", type=float,
                       help="half-life for --weighting recency")


def cmd_fit(args: argparse.Namespace) -> int:
    spec = spec_from_args(args, {"encoder.cache_dir": '"out/cache/embeddings"'})
    # checked before the data is read or an image encoded
    check_replaceable(args.out, "model.json" if spec.data.images is None else "recommender.json")
    model = fit_pipeline(spec)
    path = model.save(args.out)
    if spec.data.images is None:
        print(f"fitted {model!r} on {spec.data.interactions}; saved to {path}")
        return 0
    print(f"fitted StyleRecommender ({spec.cf.name} ⊕ {model.encoder_id_} taste, "
          f"{len(model.ranker_.item_ids_)} rankable items, {len(model.style_paths_)} "
          f"styles, {len(model.failures_)} images failed) on {spec.data.interactions}; "
          f"saved to {path}")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    args.model_dir = saved_directory(args.model_dir, "recommender.json")  # a killed save
    if (args.model_dir / "recommender.json").is_file():
        return _recommend_slates(args)
    if args.render:
        raise ValueError(f"{args.model_dir} holds a CF model only: --render needs a pipeline "
                         "fitted with --images and --styles")
    model = Recommender.load(args.model_dir)
    items, scores = model.recommend(args.user, k=args.k, filter_seen=not args.keep_seen)
    result = [
        {"user_id": u, "items": [
            {"item_id": i, "score": float(s)} for i, s in zip(row_i, row_s, strict=True) if i
        ]}
        for u, row_i, row_s in zip(args.user, items, scores, strict=True)
    ]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for slate in result:
            print(f"user {slate['user_id']}:")
            for rank, entry in enumerate(slate["items"], 1):
                print(f"  {rank:2d}. {entry['item_id']}  {entry['score']:.4f}")
    return 0


def _recommend_slates(args: argparse.Namespace) -> int:
    if args.keep_seen:
        raise ValueError("--keep-seen applies to CF models; a StyleRecommender never "
                         "recommends what a user already has")
    from recsys.recommender import StyleRecommender

    renderer = renderer_from_args(args) if args.render else None
    pipeline = StyleRecommender.load(args.model_dir, renderer=renderer)
    slates = pipeline.recommend(args.user, k=args.k, render=args.render)
    if args.json:
        print(json.dumps([slate.to_dict() for slate in slates], indent=2))
    else:
        print("\n\n".join(slate.explain() for slate in slates))
    if args.render:
        page = write_slates_page(slates, pipeline.item_paths_, args.out / "index.html")
        print(f"gallery: {page}", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from stylerec.demo import DEMO_SPEC, run_demo  # torch and faiss: only when needed

    run_demo(args.data, args.out, n_customers=args.customers, k=args.k, seed=args.seed,
             config=args.config or DEMO_SPEC, overrides=args.overrides)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stylerec",
        description="Visually personalised product recommendation: collaborative filtering, "
                    "image-based taste re-ranking, and renders of products in each shopper's "
                    "matched style.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v info and tracebacks of errors, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = sub.add_parser("fit", help="fit the pipeline (or a CF model alone) and save it",
                         description="With --images: fit every stage (CF model, image "
                                     "embeddings, taste vectors, style index with --styles, "
                                     "ranker) as a StyleRecommender. Without: fit the CF model "
                                     "alone. Saved as JSON + npz/FAISS files, no pickle.")
    add_data_arguments(fit)
    fit.add_argument("--model",
                     help=f"CF model (default: als; built-in or installed: "
                          f"{', '.join(CF_MODELS.names())})")
    fit.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                     help="CF hyperparameter, repeatable (e.g. --param factors=64)")
    visual = fit.add_argument_group("visual taste (the full pipeline)")
    visual.add_argument("--images", type=Path,
                        help="catalog image folder: <root>/**/<item id>.<jpg|png|...>")
    visual.add_argument("--styles", type=Path, help="folder of style reference images")
    visual.add_argument("--encoder",
                        help="image encoder (default: efficientnet-lite0, offline weights)")
    visual.add_argument("--cache-dir", type=Path,
                        help="embedding store (default: out/cache/embeddings)")
    visual.add_argument("--blend", type=float,
                        help="weight of taste in the final score, 0..1 (default: 0.5)")
    add_spec_arguments(fit)
    fit.add_argument("--out", type=Path, required=True, help="directory to save the model to")
    fit.set_defaults(func=cmd_fit)

    rec = sub.add_parser("recommend", help="top-k items for users from a saved model",
                         description="Print the top-k items for one or more users.")
    rec.add_argument("--model-dir", type=Path, required=True, help="directory written by fit")
    rec.add_argument("--user", action="append", required=True, help="user id, repeatable")
    rec.add_argument("-k", type=int, default=10, help="slate length (default: 10)")
    rec.add_argument("--keep-seen", action="store_true", help="do not drop items already seen")
    rec.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rec.add_argument("--render", action="store_true",
                     help="render each item in the user's matched style (pipelines only) and "
                          "write an HTML gallery of the slates to --out")
    rec.add_argument("--out", type=Path, default=Path("out/recommend"),
                     help="folder of the --render gallery (default: out/recommend)")
    add_styler_arguments(rec)
    rec.set_defaults(func=cmd_recommend)

    demo = sub.add_parser("demo", help="end-to-end demo on the bundled data/ folder",
                          description="Fit on data/, print slates for a few customers and "
                                      "write an HTML page of the results.")
    demo.add_argument("--data", type=Path, default=Path("data"))
    demo.add_argument("--out", type=Path, default=Path("out/demo"))
    demo.add_argument("--customers", type=int, default=3)
    demo.add_argument("-k", type=int, default=10)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--config", type=Path,
                      help="pipeline spec (default: configs/demo.json)")
    demo.add_argument("--set", dest="overrides", action="append", default=[],
                      metavar="KEY.PATH=VALUE", help="set a spec key, repeatable")
    demo.set_defaults(func=cmd_demo)

    add_render_parser(sub)
    add_evaluate_parser(sub)
    add_bench_parser(sub)
    add_style_report_parser(sub)
    add_batch_parsers(sub)
    add_service_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    np.set_printoptions(precision=4)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"stylerec {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line for the user; the traceback with -v
        if args.verbose:
            traceback.print_exc()
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        message = " ".join(str(message).split())
        if not isinstance(err, USER_ERRORS):
            message = (f"internal error ({type(err).__name__}: {message}); rerun with -v for "
                       "the traceback and report it")
        print(f"stylerec {args.command}: error: {message}", file=sys.stderr)
        return 2 if isinstance(err, USER_ERRORS) else 1


if __name__ == "__main__":
    sys.exit(main())
