"""Render 6 H&M products x 3 styles with every styler; write an HTML gallery and a contact sheet.

Needs the read-only ``../shared`` folder (H&M photos, style images, weights).
Renders are cached under ``<out>/cache``, so a second run only rebuilds the pages.

    .venv/bin/python scripts/make_gallery.py --shared ../shared --out out/gallery \
        --sheet docs/img/stylers_gallery.jpg
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from evaluation.fidelity_study import DEFAULT_ITEMS
from stylers import ProtectedStyler, Renderer, create_styler
from stylers.gallery import contact_sheet, rows_from_grid, write_html

# the three styles that also have fast-style networks, so every column shows the same style
STYLES = ("candy", "mosaic", "udnie")
MAX_SHEET_BYTES = 1_500_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--out", type=Path, default=Path("out/gallery"))
    parser.add_argument("--sheet", type=Path, default=Path("docs/img/stylers_gallery.jpg"))
    parser.add_argument("--max-side", type=int, default=256)
    parser.add_argument("--gatys-steps", type=int, default=60)
    parser.add_argument("--gatys-max-side", type=int, default=160,
                        help="gatys optimises every pixel: render it smaller (the sheet cells are)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    hm = args.shared / "data" / "hm" / "images"
    items = {i: hm / i[:3] / f"{i}.jpg" for i in DEFAULT_ITEMS}
    styles = {s: args.shared / "data" / "styles" / f"{s}.jpg" for s in STYLES}
    vgg = args.shared / "weights" / "vgg19_normalised_partial"
    stylers = {
        "arbitrary": create_styler("arbitrary"),
        "arbitrary, protected": ProtectedStyler(create_styler("arbitrary")),
        "wct": create_styler("wct", weights_dir=vgg),
        "gatys": create_styler("gatys", weights_dir=vgg, steps=args.gatys_steps),
        "color": create_styler("color"),
    }
    grids = {}
    for label, styler in stylers.items():
        max_side = args.gatys_max_side if label == "gatys" else args.max_side
        renderer = Renderer(styler, args.out / "cache", device=args.device,
                            max_side=max_side, image_format="jpg")
        grids[label] = renderer.render_grid(items, styles)
    # fast networks have the style baked in: one network per style column
    grids["fast"] = {}
    for style_id in STYLES:
        weights = args.shared / "weights" / "fast_style" / f"{style_id}.pth"
        renderer = Renderer(create_styler("fast", weights=weights), args.out / "cache",
                            device=args.device, max_side=args.max_side, image_format="jpg")
        grids["fast"].update(renderer.render_grid(items, {style_id: styles[style_id]}))

    rows = rows_from_grid(grids, items, styles)
    title = "stylerec stylers: 6 products x 3 styles"
    page = write_html(rows, args.out / "index.html", title=title)
    for quality in (85, 75, 65, 55):
        sheet = contact_sheet(rows, args.sheet, cell=(120, 160), quality=quality)
        if sheet.stat().st_size < MAX_SHEET_BYTES:
            break
    print(f"{page}\n{sheet} ({sheet.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
