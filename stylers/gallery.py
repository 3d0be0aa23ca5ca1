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
        if image is None:
            return "<td>—</td>"
        rel = html.escape(Path(os.path.relpath(Path(image).resolve(), base)).as_posix(), quote=True)
        return f'<td><a href="{rel}"><img src="{rel}" loading="lazy"></a></td>'

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
