"""``stylerec style-report``: does each shopper's matched style fit them? An HTML page.

Per shopper (a seeded sample): what they bought, the palette extracted from it,
the matched reference and the personal mix, and renders of their items in both
(the arbitrary styler behind :class:`~stylers.adaptive.AdaptiveStyler`); then
the four figures of :mod:`evaluation.style_fit` and a render quality table per
styler (:mod:`evaluation.render_quality`). ``results.json`` holds every number.

Examples
--------
>>> import argparse
>>> parser = argparse.ArgumentParser(prog="stylerec")
>>> _ = add_style_report_parser(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["style-report", "--windows", "4"])
>>> args.func is run_style_report, args.windows, args.styles.name
(True, 4, 'styles')
>>> _matcher_params(parser.parse_args(["style-report", "--hubness", "none", "--hub-k", "5"]))
{'hubness': None, 'hub_k': 5}
>>> _matcher_params(parser.parse_args(["style-report", "--hubness", "balanced",
...                                    "--max-share", "1.5"]))
{'hubness': 'balanced', 'max_share': 1.5}
>>> _matcher_params(parser.parse_args(["style-report", "--palette", "coverage",
...                                    "--mix-k", "3", "--temperature", "0.05"]))
{'palette': 'coverage', 'mix_k': 3, 'temperature': 0.05}
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def add_style_report_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``style-report`` sub-command to ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "style-report",
        help="match shoppers to styles, check the fit with independent judges, write HTML",
        description="Match every shopper (or every customer x held-out window with --windows) "
        "to the style library in the aesthetic space, run the colour-agreement, stability, "
        "discrimination (and, with windows, behaviour) checks, render a sample of shoppers' "
        "items, and write <out>/index.html and <out>/results.json.",
    )
    p.add_argument("--transactions", type=Path, default=Path("data/transactions.csv"),
                   help="H&M-format purchases (t_dat, customer_id, article_id)")
    p.add_argument("--articles", type=Path, default=Path("data/articles.csv"),
                   help="H&M articles.csv (colour_group_name: the label judge)")
    p.add_argument("--images", type=Path, default=Path("data/images"), help="product photos")
    p.add_argument("--styles", type=Path, default=Path("data/styles"),
                   help="style library folder (+ styles.csv)")
    p.add_argument("--exclude-licence", default="tests only",
                   help="leave out references whose licence contains this ('' keeps all)")
    p.add_argument("--cache-dir", type=Path, default=Path("out/cache/aesthetic"),
                   help="descriptor store (resumable, keyed by image hash)")
    p.add_argument("--windows", type=int, default=0,
                   help="held-out windows of whole days (0: whole histories, no behaviour check)")
    p.add_argument("--window-days", type=int, default=28)
    p.add_argument("--history-days", type=int, default=180)
    p.add_argument("--half-life-days", type=float, default=60.0)
    p.add_argument("--block-weight", action="append", default=[], metavar="BLOCK=W",
                   help="weight of an aesthetic block (palette, texture, style) in the match")
    p.add_argument("--hubness", choices=("none", "csls", "zscore", "isoftmax", "balanced"),
                   help="hubness correction of the match (default: the matcher's)")
    p.add_argument("--hub-k", type=int, help="neighbourhood of --hubness csls")
    p.add_argument("--hub-temperature", type=float, help="temperature of --hubness isoftmax")
    p.add_argument("--max-share", type=float,
                   help="cap of --hubness balanced: most shoppers per reference, as a multiple "
                        "(> 1) of its fair share")
    p.add_argument("--palette", choices=("bhattacharyya", "coverage", "nearest-colour"),
                   help="palette similarity: matching proportions, the share of the "
                        "shopper's colours the reference contains, or minus their mean "
                        "CIEDE2000 distance to the reference's nearest k-means colour "
                        "(default: the matcher's)")
    p.add_argument("--palette-power", type=float,
                   help="power of the items' palette histograms (1: as measured; default: the "
                        "matcher's)")
    p.add_argument("--max-centroids", type=int,
                   help="aesthetic vectors per shopper (1: the weighted mean)")
    p.add_argument("--items-per-centroid", type=int)
    p.add_argument("--mix-k", type=int, help="references mixed into a personal style")
    p.add_argument("--temperature", type=float,
                   help="softmax temperature of the personal mix's weights")
    p.add_argument("--clip-model", help="open_clip model name of the optional clip block")
    p.add_argument("--clip-checkpoint", type=Path,
                   help="local weights file of --clip-model (adds text-anchor aesthetics; "
                        "nothing is downloaded)")
    p.add_argument("--shoppers", type=int, default=6, help="shoppers shown with renders")
    p.add_argument("--render-items", type=int, default=2, help="renders per shopper")
    p.add_argument("--quality-pairs", type=int, default=3,
                   help="products (x the same number of styles) in the quality table; 0: none")
    p.add_argument("--weights", type=Path,
                   help="../shared/weights: adds wct and fast to the quality table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", type=Path, default=Path("out/style-report"))
    p.set_defaults(func=run_style_report)
    return p


def run_style_report(args: argparse.Namespace) -> int:
    """Handler of ``stylerec style-report``; returns the process exit code."""
    import numpy as np
    import pandas as pd
    import torch

    from evaluation.report import environment, file_fingerprint
    from evaluation.style_study import style_fit_study
    from ground.files import write_bytes_atomic
    from recsys.aesthetic import StyleLibrary

    torch.set_num_threads(args.threads)
    env = environment()  # before fitting: the code that runs, not what is on disk later
    transactions = pd.read_csv(args.transactions, dtype={"article_id": str, "customer_id": str})
    articles = pd.read_csv(args.articles, dtype={"article_id": str})
    library = StyleLibrary.from_folder(args.styles, args.exclude_licence or None)
    result = style_fit_study(
        transactions, articles, args.images, library, args.cache_dir, windows=args.windows,
        window_days=args.window_days, history_days=args.history_days,
        half_life_days=args.half_life_days, threads=args.threads,
        block_weights={k: float(v) for k, v in (w.split("=", 1) for w in args.block_weight)},
        matcher_params=_matcher_params(args),
        encoder_params={"clip_model": args.clip_model, "clip_checkpoint": args.clip_checkpoint}
        if args.clip_checkpoint else None)
    result["params"].update({"transactions": str(args.transactions), "images": str(args.images),
                             "styles": str(args.styles), "seed": args.seed,
                             "data": [file_fingerprint(p) for p in (args.transactions,
                                                                    args.articles)]})
    result["environment"] = env
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    units = result["units"]
    shown = [units[i] for i in sorted(rng.choice(len(units), min(args.shoppers, len(units)),
                                                 replace=False))]
    renders = _render_shoppers(shown, library, args) if args.render_items else {}
    quality = _quality_table(shown, library, args) if args.quality_pairs else []
    result["render_quality"] = quality
    write_bytes_atomic(args.out / "results.json", json.dumps(result, indent=1).encode())
    page = _write_page(result, shown, renders, library, args)
    print(_summary(result) + f"\n-> {page}")
    return 0


def _matcher_params(args: argparse.Namespace) -> dict[str, Any]:
    """The matcher options given on the command line (the others keep their defaults)."""
    given = {name: getattr(args, name) for name in ("hubness", "hub_k", "hub_temperature",
                                                    "max_share", "max_centroids",
                                                    "items_per_centroid", "palette",
                                                    "palette_power",
                                                    "mix_k", "temperature")}
    params = {k: v for k, v in given.items() if v is not None}
    if params.get("hubness") == "none":
        params["hubness"] = None
    return params


def _image_tensor(path: str | Path, max_side: int = 384) -> Any:
    from evaluation.render_quality import load_tensor

    return load_tensor(path, max_side)


def _render_shoppers(shown: list[dict], library: Any, args: argparse.Namespace
                     ) -> dict[str, list[tuple[str, str, str]]]:
    """unit -> [(item, render in the nearest style, render in the personal mix)]."""
    import numpy as np
    import torch

    from recsys.catalog import Catalog
    from stylers.adaptive import AdaptiveStyler
    from stylers.registry import create_styler

    catalog = Catalog.from_directory(args.images)
    styler = AdaptiveStyler(create_styler("arbitrary"))
    magenta = dict(zip(library.ids, library.magenta_vectors(), strict=True))
    folder = args.out / "renders"
    folder.mkdir(exist_ok=True)
    out: dict[str, list[tuple[str, str, str]]] = {}
    for unit in shown:
        mix = sum(w * magenta[s] for s, w in unit["mix"].items())
        style = _image_tensor(library[unit["style"]].path, 256)
        rows = []
        for item in unit["items"][:args.render_items]:
            content = _image_tensor(catalog.path(item))
            with torch.no_grad():
                nearest = styler.stylize(content, style)
                mixed = styler.stylize(content, torch.from_numpy(np.asarray(mix))[None].float())
            names = []
            for tag, image in (("nearest", nearest), ("mix", mixed)):
                name = f"renders/{_safe(unit['unit'])}-{item}-{tag}.jpg"
                _save(image, args.out / name)
                names.append(name)
            rows.append((item, *names))
        out[unit["unit"]] = rows
    return out


def _quality_table(shown: list[dict], library: Any, args: argparse.Namespace) -> list[dict]:
    from evaluation.bench_stylers import shared_stylers
    from evaluation.render_quality import render_quality
    from recsys.catalog import Catalog
    from stylers.adaptive import AdaptiveStyler
    from stylers.protection import ProtectedStyler
    from stylers.registry import create_styler

    catalog = Catalog.from_directory(args.images)
    items = [u["items"][0] for u in shown][:args.quality_pairs]
    styles = list(dict.fromkeys(u["style"] for u in shown))[:args.quality_pairs]
    stylers = {"arbitrary": create_styler("arbitrary"), "color": create_styler("color")}
    stylers["arbitrary (strength 0.5)"] = create_styler("arbitrary", strength=0.5)
    stylers["protected arbitrary"] = ProtectedStyler(stylers["arbitrary"])
    stylers["adaptive arbitrary"] = AdaptiveStyler(stylers["arbitrary"])
    if args.weights is not None:
        stylers.update(shared_stylers(args.weights, ["wct", "fast"]))
    contents = [_image_tensor(catalog.path(i)) for i in items]
    style_images = [_image_tensor(library[s].path, 256) for s in styles]
    rows = render_quality(stylers, contents, style_images)
    for row in rows:
        row["items"], row["styles"] = items, styles
    return rows


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:40]


def _save(image: Any, path: Path) -> None:
    from PIL import Image

    from ground.files import atomic_write

    arr = (image[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype("uint8")
    with atomic_write(path) as fh:
        Image.fromarray(arr).save(fh, format="JPEG", quality=88)


def _summary(result: dict) -> str:
    matcher = result["params"]["matcher"]
    lines = [f"matcher: block weights {result['params']['block_weights']}, palette "
             f"{matcher['palette']} (power {matcher.get('palette_power', 1.0)}), hubness "
             f"{matcher['hubness']} (k {matcher['hub_k']}, temperature "
             f"{matcher['hub_temperature']}, max share {matcher['max_share']}), "
             f"{matcher['max_centroids']} centroid(s) per shopper, personal mix of "
             f"{matcher['mix_k']} at temperature {matcher['temperature']}"]
    for judge, c in result["colour"].items():
        lines.append(f"colour agreement ({judge}): mean percentile {c['mean_percentile']:.3f} "
                     f"[{c['ci_low']:.3f}, {c['ci_high']:.3f}] over {c['users']} (random 0.5)")
    s = result["stability"]
    lines.append(f"stability: agreement {s['agreement']:.3f} vs chance {s['chance']:.3f} = "
                 f"{s['ratio']:.2f}x [{s['ratio_ci_low']:.2f}, {s['ratio_ci_high']:.2f}]")
    m = result["mix_stability"]
    lines.append(f"mix stability: same shopper {m['same_user']:.3f} vs random pair "
                 f"{m['random_pair']:.3f}, ratio {m['ratio']:.3f} "
                 f"[{m['ratio_ci_low']:.3f}, {m['ratio_ci_high']:.3f}]")
    d = result["discrimination"]
    lines.append(f"discrimination: normalised entropy {d['normalised_entropy']:.3f} "
                 f"[{d['entropy_ci_low']:.3f}, {d['entropy_ci_high']:.3f}], "
                 f"{d['styles_used']}/{d['n_styles']} styles used, top style "
                 f"{d['max_share_over_fair']:.2f}x its fair share "
                 f"[{d['max_share_ci_low']:.2f}, {d['max_share_ci_high']:.2f}]")
    if "behaviour" in result:
        b = result["behaviour"]
        lines.append(f"behaviour: {b['matched_share']:.4f} of later purchases near the matched "
                     f"style vs {b['random_share']:.4f} near a random one, lift {b['lift']:.2f} "
                     f"[{b['lift_ci_low']:.3f}, {b['lift_ci_high']:.3f}] (one-sided 95% bound "
                     f"{b['lift_one_sided_low']:.3f}) over {b['users']}")
    if "judge_as_matcher" in result:
        lines.append(_judge_summary(result["judge_as_matcher"]))
    return "\n".join(lines)


def _judge_summary(judge: dict) -> str:
    """What the label judge reaches as the matcher (judge_as_matcher), a line per variant."""
    lines = [f"the label judge as the matcher, for reference ({judge['users']} shoppers "
             "with labels)"]
    for name, label in (("plain", "nearest"), ("capped", f"capped at {judge['max_share']}x")):
        c = judge[name]
        s, d = c["stability"], c["discrimination"]
        line = (f"  {label}: colour {c['label_percentile']:.3f}, stability {s['ratio']:.2f}x "
                f"[{s['ratio_ci_low']:.2f}, {s['ratio_ci_high']:.2f}], entropy "
                f"{d['normalised_entropy']:.3f}, top {d['max_share_over_fair']:.2f}x")
        if "behaviour" in c:
            b = c["behaviour"]
            line += f", lift {b['lift']:.2f} [{b['lift_ci_low']:.2f}, {b['lift_ci_high']:.2f}]"
        lines.append(line)
    m = judge["colour_mode"]
    lines.append(f"  a shopper's most frequent colour, older vs newer half: {m['ratio']:.2f}x "
                 f"chance [{m['ratio_ci_low']:.2f}, {m['ratio_ci_high']:.2f}]")
    return "\n".join(lines)


def _write_page(result: dict, shown: list[dict], renders: dict, library: Any,
                args: argparse.Namespace) -> Path:
    from ground.files import atomic_write
    from recsys.catalog import Catalog

    catalog = Catalog.from_directory(args.images)
    base = args.out.resolve()

    def img(path: str | Path, height: int = 120) -> str:
        rel = Path(os.path.relpath(Path(path).resolve(), base)).as_posix()
        return f'<img src="{html.escape(rel, quote=True)}" style="height:{height}px">'

    def swatches(palette: list) -> str:
        return "".join(f'<span title="{share:.0%}" style="display:inline-block;width:28px;'
                       f'height:28px;background:{colour}"></span>' for colour, share in palette)

    parts = [f"<h1>Style fit: {html.escape(str(args.transactions))} × "
             f"{html.escape(str(args.styles))}</h1>",
             "<h2>The four figures</h2><pre>" + html.escape(_summary(result)) + "</pre>",
             "<p>Judges the matcher does not use: H&amp;M colour labels and k-means palettes of "
             "a fixed central crop, compared in CIEDE2000; see docs/aesthetic.md.</p>"]
    if result.get("render_quality"):
        keys = ["styler", "ssim_product", "hist_to_style", "ms_384", "ms_768"]
        head = "".join(f"<th>{k}</th>" for k in keys)
        body = "".join("<tr>" + "".join(
            f"<td>{r.get(k):.3f}</td>" if isinstance(r.get(k), float)
            else f"<td>{html.escape(str(r.get(k)))}</td>" for k in keys) + "</tr>"
            for r in result["render_quality"])
        parts.append(f"<h2>Render quality</h2><table border=1><tr>{head}</tr>{body}</table>")
    parts.append("<h2>Shoppers</h2>")
    for unit in shown:
        ref = library[unit["style"]]
        mix = ", ".join(f"{w:.2f} {html.escape(s)}" for s, w in unit["mix"].items())
        bought = "".join(img(catalog.path(i), 90) for i in unit["items"][:12]
                         if i in catalog)
        parts.append(
            f"<h3>{html.escape(unit['unit'])}</h3><p>bought ({len(unit['items'])}): {bought}</p>"
            f"<p>palette: {swatches(unit['palette'])}</p>"
            f"<p>matched: {img(ref.path)} <b>{html.escape(ref.style_id)}</b> "
            f"({html.escape(ref.artist)}; {html.escape(ref.licence)}) cosine "
            f"{unit['similarity']:.3f}; personal mix: {mix}</p>")
        for item, nearest, mixed in renders.get(unit["unit"], []):
            parts.append(f"<p>{img(catalog.path(item), 180)} → nearest "
                         f"{img(args.out / nearest, 180)} → mix {img(args.out / mixed, 180)}</p>")
    page = args.out / "index.html"
    with atomic_write(page, "w") as fh:
        fh.write("<!doctype html><html><head><meta charset='utf-8'><title>style fit</title>"
                 "</head><body style='font-family:sans-serif'>" + "\n".join(parts)
                 + "</body></html>\n")
    return page
