"""``stylerec render``: render an item x style grid from the command line, with an HTML gallery.

Wire it into the main CLI with :func:`add_render_parser`; the parsed arguments
carry their handler as ``args.func``.

Examples
--------
>>> import argparse
>>> parser = argparse.ArgumentParser(prog="stylerec")
>>> _ = add_render_parser(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["render", "--item", "a.jpg", "--style", "wave=w.jpg"])
>>> args.func is run_render, args.styler
(True, 'arbitrary')
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys.catalog import Catalog
from stylers.registry import available_stylers, create_styler

if TYPE_CHECKING:
    from stylers.renderer import Renderer

log = logging.getLogger(__name__)


def add_render_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``render`` sub-command to ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "render",
        help="render items in styles (item x style grid) and write an HTML gallery",
        description="Render every --item in every --style with one styler, through the "
        "render cache, and write <out>/index.html. An item or style is PATH, ID=PATH, or an "
        "ID looked up as <root>/**/<ID>.<image suffix> under --item-root/--style-root.",
    )
    p.add_argument("--item", action="append", required=True, metavar="[ID=]PATH|ID",
                   help="product image (repeatable)")
    p.add_argument("--style", action="append", default=[], metavar="[ID=]PATH|ID",
                   help="style image (repeatable; not needed by stylers with baked-in styles)")
    p.add_argument("--item-root", type=Path, help="folder to look item ids up in")
    p.add_argument("--style-root", type=Path, help="folder to look style ids up in")
    add_styler_arguments(p)
    p.add_argument("--out", type=Path, default=Path("out/render"), help="gallery folder")
    p.set_defaults(func=run_render)
    return p


def add_styler_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that choose a styler, its product protection and the renderer."""
    g = parser.add_argument_group("rendering")
    g.add_argument("--styler", default="arbitrary",
                   help=f"styler name (built-in: {', '.join(available_stylers())})")
    g.add_argument("--param", dest="styler_param", action="append", default=[],
                   metavar="KEY=VALUE", help="styler option; VALUE is parsed as JSON when it "
                   "can be (e.g. --param weights=candy.pth --param alpha=0.6)")
    g.add_argument("--protect", action="store_true", help="protect the product (see --product-*)")
    g.add_argument("--adaptive", action="store_true",
                   help="choose per image: protect the product on a plain background, else "
                   "blend the whole image at --global-strength (overrides --protect)")
    g.add_argument("--global-strength", type=float, default=0.5,
                   help="strength for full-bleed images with --adaptive")
    g.add_argument("--product-strength", type=float, default=0.3)
    g.add_argument("--background-strength", type=float, default=1.0)
    g.add_argument("--no-preserve-color", dest="preserve_color", action="store_false",
                   help="let the product take the style's colours too")
    g.add_argument("--strength", type=float, default=1.0, help="global strength with --protect")
    g.add_argument("--cache-dir", type=Path, default=Path("out/renders"),
                   help="render cache (default: out/renders)")
    g.add_argument("--device", default="auto")
    g.add_argument("--batch-size", type=int, default=4)
    g.add_argument("--max-side", type=int, default=768)
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    g.add_argument("--format", default="png", choices=["png", "jpg"])
    g.add_argument("--no-progress", dest="progress", action="store_false")


def renderer_from_args(args: argparse.Namespace) -> Renderer:
    """The :class:`Renderer` that :func:`add_styler_arguments`' options describe."""
    from stylers.protection import ProtectedStyler
    from stylers.renderer import Renderer

    styler = create_styler(args.styler, **parse_params(args.styler_param))
    if args.adaptive:
        from stylers.adaptive import AdaptiveStyler

        styler = AdaptiveStyler(
            styler, global_strength=args.global_strength,
            product_strength=args.product_strength,
            background_strength=args.background_strength, preserve_color=args.preserve_color,
        )
    elif args.protect:
        styler = ProtectedStyler(
            styler, product_strength=args.product_strength,
            background_strength=args.background_strength,
            preserve_color=args.preserve_color, strength=args.strength,
        )
    return Renderer(
        styler, args.cache_dir, device=args.device, batch_size=args.batch_size,
        max_side=args.max_side, dtype=args.dtype, image_format=args.format,
        progress=args.progress,
    )


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``["k=v", ...]`` to a dict, values parsed as JSON when possible.

    Examples
    --------
    >>> parse_params(["alpha=0.6", "levels=[3,2]", "weights=candy.pth"])
    {'alpha': 0.6, 'levels': [3, 2], 'weights': 'candy.pth'}
    """
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param needs KEY=VALUE, got {pair!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def resolve_image(spec: str, root: Catalog | None) -> tuple[str, Path]:
    """``PATH``, ``ID=PATH`` or a bare ``ID`` (looked up in ``root``) to ``(id, path)``.

    Raises
    ------
    FileNotFoundError
        When neither the path nor the id under ``root`` exists.
    """
    ident, sep, rest = spec.partition("=")
    if sep:
        return ident, Path(rest)
    path = Path(spec)
    if path.is_file():
        return path.stem, path
    if root is not None and spec in root:
        return spec, root.path(spec)
    where = (f" or as an id under {root.root}" if root is not None
             else " (give --item-root/--style-root for ids)")
    raise FileNotFoundError(f"image {spec!r} not found as a file{where}")


def run_render(args: argparse.Namespace) -> int:
    """Handler of ``stylerec render``; returns the process exit code."""
    from stylers.gallery import contact_sheet, rows_from_grid, write_html

    # each root is listed once (Catalog: ids are file stems, paths confined to the root)
    item_root, style_root = (None if root is None else Catalog.from_directory(root)
                             for root in (args.item_root, args.style_root))
    items = dict(resolve_image(s, item_root) for s in args.item)
    styles = dict(resolve_image(s, style_root) for s in args.style)
    renderer = renderer_from_args(args)
    title, note = f"stylerec render: {args.styler}", ""
    if not renderer.styler.uses_style_image and styles:
        from stylers.fast import warn_style_ignored

        note = warn_style_ignored(renderer.styler)
        title += f" ({note})"
        styles = {}
    if not styles:
        if renderer.styler.uses_style_image:
            raise SystemExit(f"styler {args.styler!r} needs at least one --style")
        styles = {"baked": None}
    grid = renderer.render_grid(items, styles)
    rows = rows_from_grid({args.styler: grid}, items, styles)
    page = write_html(rows, args.out / "index.html", title=title)
    contact_sheet(rows, args.out / "contact_sheet.jpg")
    print(f"{len(grid)} renders ({renderer.stats['hits']} cached) -> {page}"
          + (f"; note: {note}" if note else ""))
    return 0
