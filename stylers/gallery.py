"""Side-by-side views of renders: an HTML page and a contact-sheet image.

Each row is one (product, style) pair: the product photo, the style image, then
one render per styler.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from ground.files import atomic_write
from ground.tensors import save_image_atomic


@dataclass
class GalleryRow:
    """One (product, style) pair and its renders.

    Attributes
    ----------
    label : str
        Shown at the start of the row, e.g. ``"0554598066 × wave"``.
    product : Path
        The product photo.
    style : Path or None
        The style image (None for stylers with the style baked in).
    renders : dict of str to Path
        Column label (styler) -> render.
    """

    label: str
    product: Path
    style: Path | None
    renders: dict[str, Path] = field(default_factory=dict)


def _columns(rows: Sequence[GalleryRow]) -> list[str]:
    return list(dict.fromkeys(name for row in rows for name in row.renders))


def _linked_image(image: Path, base: Path) -> str:
    """An ``<img>`` linking to itself, by a path relative to the page's folder ``base``."""
    rel = html.escape(Path(os.path.relpath(Path(image).resolve(), base)).as_posix(), quote=True)
    return f'<a href="{rel}"><img src="{rel}" loading="lazy"></a>'


def write_html(
    rows: Sequence[GalleryRow], path: str | os.PathLike[str], title: str = "Renders"
) -> Path:
    """Write an HTML table (product | style | one render per styler) with relative links.

    Image links are relative to the page's folder, so the page and its images
    can be moved or served together.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> row = GalleryRow("a × b", d / "a.jpg", d / "b.jpg", {"wct": d / "r" / "c.png"})
    >>> 'src="r/c.png"' in write_html([row], d / "index.html").read_text()
    True
    """
    path = Path(path)
    base = path.parent.resolve()

    def cell(image: Path | None) -> str:
        return "<td>—</td>" if image is None else f"<td>{_linked_image(image, base)}</td>"

    columns = _columns(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["", "product", "style", *columns])
    body = []
    for row in rows:
        cells = [f"<th>{html.escape(row.label)}</th>", cell(row.product), cell(row.style)]
        cells += [cell(row.renders.get(c)) for c in columns]
        body.append("<tr>" + "".join(cells) + "</tr>")
    page = (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif} td img{max-width:200px;max-height:260px}"
        "th{font-weight:normal;font-size:13px;padding:4px}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><table><tr>{head}</tr>\n" + "\n".join(body)
        + "\n</table></body></html>\n"
    )
    with atomic_write(path, "w") as f:
        f.write(page)
    return path


def contact_sheet(
    rows: Sequence[GalleryRow],
    path: str | os.PathLike[str],
    cell: tuple[int, int] = (150, 200),
    quality: int = 85,
) -> Path:
    """Write a grid image of the gallery rows with a header of column labels.

    Images are letterboxed into ``cell`` (width, height) on white.

    Examples
    --------
    >>> import tempfile
    >>> from PIL import Image
    >>> d = Path(tempfile.mkdtemp())
    >>> Image.new("RGB", (30, 40), "red").save(d / "p.png")
    >>> out = contact_sheet([GalleryRow("p", d / "p.png", None, {"x": d / "p.png"})], d / "s.png")
    >>> Image.open(out).size
    (482, 240)
    """
    columns = ["product", "style", *_columns(rows)]
    pad, header = 8, 24
    width = pad + len(columns) * (cell[0] + pad)
    height = header + len(rows) * (cell[1] + pad) + pad
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for j, label in enumerate(columns):
        draw.text((pad + j * (cell[0] + pad) + 2, 6), label, fill="black")
    for i, row in enumerate(rows):
        renders = [row.renders.get(c) for c in columns[2:]]
        images: list[Path | None] = [row.product, row.style, *renders]
        top = header + i * (cell[1] + pad)
        for j, image in enumerate(images):
            if image is None:
                continue
            with Image.open(image) as im:
                thumb = ImageOps.contain(im.convert("RGB"), cell, Image.Resampling.LANCZOS)
            left = pad + j * (cell[0] + pad)
            offset = ((cell[0] - thumb.width) // 2, (cell[1] - thumb.height) // 2)
            sheet.paste(thumb, (left + offset[0], top + offset[1]))
    return save_image_atomic(sheet, path, quality)


def rows_from_grid(
    grids: Mapping[str, Mapping[tuple[str, str], Path]],
    items: Mapping[str, Path],
    styles: Mapping[str, Path | None],
) -> list[GalleryRow]:
    """Gallery rows from ``{styler label: Renderer.render_grid(...)}`` results.

    Examples
    --------
    >>> rows = rows_from_grid({"wct": {("a", "s"): Path("r.png")}}, {"a": Path("a.jpg")},
    ...                       {"s": Path("s.jpg")})
    >>> rows[0].label, rows[0].renders
    ('a × s', {'wct': PosixPath('r.png')})
    """
    rows = []
    for item_id, item_path in items.items():
        for style_id, style_path in styles.items():
            renders = {
                label: grid[item_id, style_id]
                for label, grid in grids.items()
                if (item_id, style_id) in grid
            }
            rows.append(GalleryRow(f"{item_id} × {style_id}", Path(item_path),
                                   None if style_path is None else Path(style_path), renders))
    return rows


def _thumb(image: str | os.PathLike[str], cell: tuple[int, int]) -> Image.Image:
    with Image.open(image) as im:
        return ImageOps.contain(im.convert("RGB"), cell, Image.Resampling.LANCZOS)


def grid_sheet(
    items: Mapping[str, str | os.PathLike[str]],
    styles: Mapping[str, str | os.PathLike[str] | None],
    renders: Mapping[tuple[str, str], str | os.PathLike[str] | None],
    path: str | os.PathLike[str],
    cell: tuple[int, int] = (150, 200),
    quality: int = 85,
) -> Path:
    """Write an item × style contact sheet: one row per item, one column per style.

    The first row shows the style images, the first column the product photos;
    cell (i, s) is the render of item i in style s (left blank when missing, e.g.
    a render skipped because its image was unreadable). Images are letterboxed
    into ``cell`` (width, height) on white, under a label line.

    Examples
    --------
    >>> import tempfile
    >>> from PIL import Image
    >>> d = Path(tempfile.mkdtemp())
    >>> Image.new("RGB", (30, 40), "red").save(d / "p.png")
    >>> out = grid_sheet({"a": d / "p.png", "b": d / "p.png"}, {"s": d / "p.png", "t": None},
    ...                  {("a", "s"): d / "p.png"}, d / "sheet.png", cell=(50, 60))
    >>> Image.open(out).size  # 3 columns (items, s, t) x 3 rows (styles, a, b)
    (182, 254)
    """
    pad, label = 8, 14
    step_x, step_y = cell[0] + pad, cell[1] + label + pad
    sheet = Image.new("RGB", (pad + (len(styles) + 1) * step_x, pad + (len(items) + 1) * step_y),
                      "white")
    draw = ImageDraw.Draw(sheet)

    def put(image: str | os.PathLike[str] | None, text: str, col: int, row: int) -> None:
        left, top = pad + col * step_x, pad + row * step_y
        draw.text((left + 2, top), text[:24], fill="black")
        if image is None:
            return
        thumb = _thumb(image, cell)
        sheet.paste(thumb, (left + (cell[0] - thumb.width) // 2,
                            top + label + (cell[1] - thumb.height) // 2))

    for col, (style_id, style_path) in enumerate(styles.items(), 1):
        put(style_path, style_id, col, 0)
    for row, (item_id, item_path) in enumerate(items.items(), 1):
        put(item_path, item_id, 0, row)
        for col, style_id in enumerate(styles, 1):
            put(renders.get((item_id, style_id)), "", col, row)
    return save_image_atomic(sheet, path, quality)


@dataclass
class StripRow:
    """One row of a strip page: a label, a lead image, then captioned image pairs.

    Attributes
    ----------
    label : str
        Row heading, e.g. ``"user c1 · style wave (0.812)"``.
    lead : Path or None
        The image the row is about (e.g. the matched style).
    cells : list of tuple
        ``(caption, original, render)``; either image may be None.
    """

    label: str
    lead: Path | None
    cells: list[tuple[str, Path | None, Path | None]] = field(default_factory=list)


def write_strips_html(
    rows: Sequence[StripRow], path: str | os.PathLike[str], title: str = "Renders"
) -> Path:
    """Write an HTML page with one strip per row: lead image, then each cell's original
    above its render, with the caption. Links are relative to the page's folder.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> row = StripRow("user u1", d / "s.jpg", [("1. a", d / "a.jpg", d / "r" / "a.png")])
    >>> page = write_strips_html([row], d / "index.html").read_text()
    >>> 'src="r/a.png"' in page and "user u1" in page
    True
    """
    path = Path(path)
    base = path.parent.resolve()

    def img(image: Path | None) -> str:
        return "<div class='none'>—</div>" if image is None else _linked_image(image, base)

    body = []
    for row in rows:
        cells = [f"<figure class='lead'>{img(row.lead)}<figcaption>style</figcaption></figure>"]
        cells += [f"<figure>{img(original)}{img(render)}<figcaption>{html.escape(caption)}"
                  "</figcaption></figure>" for caption, original, render in row.cells]
        body.append(f"<h2>{html.escape(row.label)}</h2><div class='strip'>{''.join(cells)}</div>")
    page = (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif} .strip{display:flex;flex-wrap:wrap;gap:8px}"
        "figure{margin:0;width:160px} figure img{display:block;max-width:160px;max-height:200px}"
        ".lead{border-right:2px solid #888;padding-right:8px} figcaption{font-size:12px}"
        "h2{font-size:15px;font-weight:normal}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    with atomic_write(path, "w") as f:
        f.write(page)
    return path
