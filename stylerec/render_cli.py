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
import inspect
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsys.catalog import Catalog
from stylers.registry import available_stylers, get_styler_factory

if TYPE_CHECKING:
    from recsys.recommender import Slate
    from stylers.base import Styler
    from stylers.renderer import Renderer

log = logging.getLogger(__name__)

# styler parameters naming a weights file or folder: resolved from the working directory
WEIGHTS_PARAMS = ("weights", "weights_dir", "checkpoint")


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

    styler = create_styler_checked(args.styler, parse_params(args.styler_param))
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


def create_styler_checked(name: str, params: dict[str, Any]) -> Styler:
    """The styler ``name`` built from ``--param`` values, with errors that say what to pass.

    Unknown and missing parameter names are reported with the ones the styler
    takes; a weights path is taken relative to the working directory, and when it
    is not there the message says where it looked.

    Raises
    ------
    LookupError
        Unknown styler name.
    ValueError, FileNotFoundError
        Unknown, missing or unusable parameters; a weights path that does not exist.
    """
    factory = get_styler_factory(name)
    accepted = inspect.signature(factory).parameters
    takes = [p for p in accepted if accepted[p].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                          inspect.Parameter.KEYWORD_ONLY)]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(params) - set(takes))
        if unknown:
            raise ValueError(f"unknown --param {', '.join(unknown)} for styler {name!r}; it "
                             f"takes: {', '.join(takes) or 'no parameters'}")
    missing = [p for p in takes if accepted[p].default is inspect.Parameter.empty
               and p not in params]
    if missing:
        raise ValueError(f"styler {name!r} needs " + " ".join(f"--param {p}=..." for p in missing)
                         + (" (a file or folder of weights; see ../shared/README.md)"
                            if set(missing) & set(WEIGHTS_PARAMS) else ""))
    params = dict(params)
    for key in set(params) & set(WEIGHTS_PARAMS):
        if isinstance(params[key], str):
            where = Path(params[key]).expanduser()
            if not where.exists():
                raise FileNotFoundError(
                    f"--param {key}={params[key]}: not found (looked for {where.absolute()}; "
                    f"a relative path is taken from the working directory {Path.cwd()})")
            params[key] = str(where.resolve())
    try:
        return factory(**params)
    except TypeError as err:
        raise ValueError(f"styler {name!r}: bad --param value ({err})") from err


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
    from stylers.gallery import grid_sheet, rows_from_grid, write_html

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
            raise ValueError(f"styler {args.styler!r} needs at least one --style")
        styles = {"baked": None}
    grid = renderer.render_grid(items, styles, skip_unreadable=True)
    rows = rows_from_grid({args.styler: grid}, items, styles)
    page = write_html(rows, args.out / "index.html", title=title)
    grid_sheet(items, styles, grid, args.out / "contact_sheet.jpg")
    skipped = f", {len(renderer.skipped)} skipped: unreadable image" if renderer.skipped else ""
    print(f"{len(grid) - len(renderer.skipped)} renders ({renderer.stats['hits']} cached"
          f"{skipped}) -> {page}" + (f"; note: {note}" if note else ""))
    return 0


def write_slates_page(slates: Sequence[Slate], item_paths: Mapping[str, str],
                      path: str | Path) -> Path:
    """An HTML gallery of rendered slates: per user, the matched style, then each
    item's photo above its render (with rank, id and score; why it was not rendered)."""
    from stylers.gallery import StripRow, write_strips_html

    rows = []
    for slate in slates:
        label = f"user {slate.user_id}"
        if slate.style is not None:
            label += f" · style {slate.style.style_id} ({slate.style.similarity:.3f})"
        cells = []
        for rank, entry in enumerate(slate.entries, 1):
            caption = f"{rank}. {entry.item_id} {entry.score:+.3f}"
            caption += f" (not rendered: {entry.image_error})" if entry.image_error else ""
            original = item_paths.get(entry.item_id)
            cells.append((caption, None if original is None else Path(original),
                          None if entry.image is None else Path(entry.image)))
        rows.append(StripRow(label, None if slate.style is None else Path(slate.style.path),
                             cells))
    return write_strips_html(rows, path, title="stylerec recommend --render")
