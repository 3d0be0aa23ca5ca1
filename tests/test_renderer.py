"""Renderer: cache keys and hits, batching, errors, OOM fallbacks; gallery; CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ground.tensors import load_image
from stylerec.render_cli import add_render_parser, parse_params, resolve_image
from stylers import ImageLoadError, Renderer, create_styler
from stylers.base import Styler
from stylers.gallery import GalleryRow, contact_sheet, write_html


class Recorder(Styler):
    """Pointwise styler (output = 1 - content + style mean) that records every batch it sees."""

    name = "recorder"

    def __init__(self, fail_above_batch: int | None = None, fail_above_side: int | None = None):
        super().__init__()
        self.batches: list[tuple[int, tuple[int, int]]] = []
        self.fail_above_batch = fail_above_batch
        self.fail_above_side = fail_above_side

    @property
    def params(self):
        return {"kind": "invert"}

    def stylize(self, content, style):
        content, style = self.check_inputs(content, style)
        b, side = content.shape[0], max(content.shape[-2:])
        if (self.fail_above_batch and b > self.fail_above_batch) or (
            self.fail_above_side and side > self.fail_above_side
        ):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        self.batches.append((b, tuple(content.shape[-2:])))
        return (1 - content + style.mean((1, 2, 3), keepdim=True) - 0.5).clamp(0, 1)


def write_image(path: Path, size=(40, 30), seed=0, mode="RGB") -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return path


@pytest.fixture
def images(tmp_path):
    items = {f"item{i}": write_image(tmp_path / f"item{i}.png", seed=i) for i in range(3)}
    items["tall"] = write_image(tmp_path / "tall.png", size=(20, 50), seed=9)
    styles = {f"style{i}": write_image(tmp_path / f"style{i}.png", seed=10 + i) for i in range(2)}
    return items, styles


def test_grid_renders_once_then_hits_the_cache(tmp_path, images):
    items, styles = images
    styler = Recorder()
    renderer = Renderer(styler, tmp_path / "cache", device="cpu", batch_size=2, progress=False)
    grid = renderer.render_grid(items, styles)
    assert len(grid) == 8 and renderer.stats == {"requested": 8, "hits": 0, "rendered": 8,
                                                          "skipped": 0}
    # batched by style and size: per style, 3 same-size items -> 2 + 1, and the tall one alone
    assert sorted(styler.batches) == sorted([(2, (30, 40)), (1, (30, 40)), (1, (50, 20))] * 2)
    render = load_image(grid["item1", "style0"])
    expected = (1 - load_image(items["item1"]) + load_image(styles["style0"]).mean() - 0.5)
    assert torch.allclose(render, expected.clamp(0, 1), atol=1 / 255 + 1e-6)

    again = Renderer(Recorder(), tmp_path / "cache", device="cpu", progress=False)
    assert again.render_grid(items, styles) == grid
    assert again.stats == {"requested": 8, "hits": 8, "rendered": 0, "skipped": 0}
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # atomic writes leave nothing behind


def test_cache_key_follows_content_style_params_and_size(tmp_path, images):
    items, styles = images
    a = Renderer(create_styler("color"), tmp_path, device="cpu")
    key = a.cache_key(items["item0"], styles["style0"])
    assert key == a.cache_key(items["item0"], styles["style0"])
    assert key != a.cache_key(items["item1"], styles["style0"])
    assert key != a.cache_key(items["item0"], styles["style1"])
    assert key != Renderer(create_styler("color", strength=0.5), tmp_path).cache_key(
        items["item0"], styles["style0"]
    )
    assert key != Renderer(create_styler("color"), tmp_path, max_side=64).cache_key(
        items["item0"], styles["style0"]
    )
    write_image(items["item0"], seed=99)  # same path, new content -> new key
    assert key != a.cache_key(items["item0"], styles["style0"])


def test_styler_without_style_image_ignores_the_style_in_keys(tmp_path, images):
    items, styles = images

    class Baked(Recorder):
        uses_style_image = False

        def stylize(self, content, style):
            content, _ = self.check_inputs(content, None)
            self.batches.append((content.shape[0], tuple(content.shape[-2:])))
            return 1 - content

    styler = Baked()
    renderer = Renderer(styler, tmp_path / "c", device="cpu", progress=False)
    grid = renderer.render_grid({"item0": items["item0"]}, {**styles, "none": None})
    assert len(set(grid.values())) == 1 and styler.batches == [(1, (30, 40))]
    with pytest.raises(ValueError, match="needs a style image"):
        Renderer(Recorder(), tmp_path / "c").render([("a", items["item0"], "s", None)])


def test_images_are_loaded_as_rgb_and_downscaled(tmp_path):
    grey = write_image(tmp_path / "grey.png", size=(80, 60), mode="L")
    cmyk = write_image(tmp_path / "cmyk.jpg", size=(80, 60), mode="CMYK")
    rgba = Image.new("RGBA", (80, 60), (255, 0, 0, 0))
    rgba.save(tmp_path / "clear.png")
    renderer = Renderer(Recorder(), tmp_path / "c", device="cpu", max_side=40, progress=False)
    paths = renderer.render([(n, p, "s", grey) for n, p in
                             [("g", grey), ("c", cmyk), ("a", tmp_path / "clear.png")]])
    assert all(Image.open(p).size == (40, 30) for p in paths)
    assert torch.allclose(load_image(tmp_path / "clear.png"), torch.ones(3, 60, 80))  # on white


def test_corrupt_or_missing_images_name_the_file(tmp_path, images):
    items, styles = images
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    renderer = Renderer(Recorder(), tmp_path / "c", device="cpu", progress=False)
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        renderer.render([("x", bad, "s", styles["style0"])])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        renderer.render([("x", tmp_path / "nope.png", "s", styles["style0"])])
    tiny = write_image(tmp_path / "tiny.png", size=(4, 4))
    with pytest.raises(ImageLoadError, match="tiny.png.*under 8 px"):
        renderer.render([("x", tiny, "s", styles["style0"])])


def test_huge_images_are_refused(tmp_path, monkeypatch):
    import functools

    import ground.tensors

    small_limit = functools.partial(ground.tensors.load_rgb, max_pixels=1000)
    monkeypatch.setattr(ground.tensors, "load_rgb", small_limit)
    path = write_image(tmp_path / "huge.png", size=(40, 30))
    with pytest.raises(ImageLoadError, match="huge.png: 40x30 = 1,200 pixels exceeds"):
        load_image(path)


def test_out_of_memory_splits_the_batch_then_tiles(tmp_path, images):
    items, styles = images
    pairs = [(n, items[n], "s", styles["style0"]) for n in ("item0", "item1", "item2")]
    reference = Renderer(Recorder(), tmp_path / "ref", device="cpu", batch_size=3,
                         progress=False).render(pairs)

    split = Recorder(fail_above_batch=1)
    out = Renderer(split, tmp_path / "split", device="cpu", batch_size=3, progress=False)
    paths = out.render(pairs)
    assert [b for b, _ in split.batches] == [1, 1, 1]
    for p, r in zip(paths, reference, strict=True):
        assert torch.equal(load_image(p), load_image(r))

    tiles = Recorder(fail_above_side=20)
    out = Renderer(tiles, tmp_path / "tiles", device="cpu", batch_size=1, progress=False)
    paths = out.render(pairs[:1])
    assert all(max(shape) <= 20 for _, shape in tiles.batches) and len(tiles.batches) > 1
    with pytest.raises(torch.cuda.OutOfMemoryError, match="even on 16-32 px tiles"):
        Renderer(Recorder(fail_above_side=8), tmp_path / "t8", device="cpu").render(pairs[:1])
    # a pointwise styler tiled with blended overlaps equals the untiled result
    assert torch.allclose(load_image(paths[0]), load_image(reference[0]), atol=1 / 255 + 1e-6)


def test_tile_size_bounds_the_input_size(tmp_path, images):
    items, styles = images
    styler = Recorder()
    renderer = Renderer(styler, tmp_path / "c", device="cpu", tile_size=32, progress=False)
    renderer.render([("i", items["item0"], "s", styles["style0"])])
    assert all(max(shape) <= 32 for _, shape in styler.batches)


def test_device_and_dtype_choice_on_cpu(tmp_path):
    renderer = Renderer(create_styler("color"), tmp_path, device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert renderer.device.type == expected
    assert Renderer(create_styler("color"), tmp_path, device="cpu")._autocast_dtype is None
    with pytest.raises(ValueError, match="dtype"):
        Renderer(create_styler("color"), tmp_path, dtype="float8")


def test_gallery_html_has_relative_links_and_sheet_has_every_cell(tmp_path, images):
    items, styles = images
    renders = tmp_path / "renders"
    renders.mkdir()
    render = write_image(renders / "r.png")
    row = GalleryRow("item0 × <style0>", items["item0"], styles["style0"], {"color": render})
    page = write_html([row], tmp_path / "site" / "index.html", title="t")
    text = page.read_text()
    assert 'src="../renders/r.png"' in text and 'src="../item0.png"' in text
    assert "&lt;style0&gt;" in text  # labels are escaped
    sheet = contact_sheet([row, row], tmp_path / "sheet.jpg", cell=(50, 60))
    assert Image.open(sheet).size == (8 + 3 * 58, 24 + 2 * 68 + 8)


def test_cli_render_writes_renders_and_a_gallery(tmp_path, images, capsys):
    items, styles = images
    parser = argparse.ArgumentParser(prog="stylerec")
    add_render_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args([
        "render", "--item", str(items["item0"]), "--item", "item1", "--item-root", str(tmp_path),
        "--style", f"mine={styles['style0']}", "--styler", "color",
        "--param", "method=histogram", "--protect", "--cache-dir", str(tmp_path / "cache"),
        "--out", str(tmp_path / "out"), "--device", "cpu", "--no-progress",
    ])
    assert args.func(args) == 0
    assert "2 renders (0 cached)" in capsys.readouterr().out
    html = (tmp_path / "out" / "index.html").read_text()
    assert "item1 × mine" in html
    # the contact sheet is an item x style grid: a header row of styles, a column of items
    sheet = Image.open(tmp_path / "out" / "contact_sheet.jpg")
    assert sheet.size == (8 + 2 * 158, 8 + 3 * 222)  # (1 + 1 style) columns, (1 + 2 items) rows
    assert len(list((tmp_path / "cache" / "protected-color").rglob("*.png"))) == 2


def test_cli_helpers():
    assert parse_params(["a=1", "b=[1, 2]", "c=x.pth", 'd="3"']) == {
        "a": 1, "b": [1, 2], "c": "x.pth", "d": "3"
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_params(["novalue"])
    assert resolve_image("id=some/where.jpg", None) == ("id", Path("some/where.jpg"))
    with pytest.raises(FileNotFoundError, match="item-root"):
        resolve_image("0123", None)
    assert json.loads(json.dumps(create_styler("color").params))  # params are JSON


def test_grid_sheet_puts_each_render_at_its_item_row_and_style_column(tmp_path):
    from stylers.gallery import grid_sheet

    colours = {"grey": (128, 128, 128), "red": (255, 0, 0), "blue": (0, 0, 255)}
    paths = {}
    for name, rgb in colours.items():
        paths[name] = tmp_path / f"{name}.png"
        Image.new("RGB", (50, 60), rgb).save(paths[name])
    sheet = Image.open(grid_sheet(
        {"a": paths["grey"], "b": paths["grey"]}, {"s": paths["grey"], "t": None},
        {("a", "s"): paths["red"], ("b", "t"): paths["blue"]}, tmp_path / "sheet.png",
        cell=(50, 60))).convert("RGB")

    def centre(col: int, row: int) -> tuple[int, ...]:
        return sheet.getpixel((8 + col * 58 + 25, 8 + row * 82 + 14 + 30))

    assert centre(1, 1) == colours["red"] and centre(2, 2) == colours["blue"]
    assert centre(2, 1) == centre(1, 2) == (255, 255, 255)  # no render: blank cell
    assert centre(0, 1) == centre(1, 0) == colours["grey"]  # item photos, style images


def test_unreadable_images_skip_their_renders_not_the_batch(tmp_path, images):
    items, styles = images
    (tmp_path / "broken.png").write_bytes(b"not a png")
    batch = {"item0": items["item0"], "gone": tmp_path / "gone.png",
             "broken": tmp_path / "broken.png", "item1": items["item1"]}
    renderer = Renderer(create_styler("color"), tmp_path / "cache", device="cpu", max_side=32,
                        progress=False)
    with pytest.raises(FileNotFoundError, match="gone.png"):
        renderer.render_grid(batch, {"style0": styles["style0"]})
    grid = renderer.render_grid(batch, {"style0": styles["style0"]}, skip_unreadable=True)
    assert grid["gone", "style0"] is None and grid["broken", "style0"] is None
    assert Image.open(grid["item0", "style0"]).size == (32, 24)
    assert grid["item1", "style0"].is_file()
    assert set(renderer.skipped) == {("gone", "style0"), ("broken", "style0")}
    assert "gone.png" in renderer.skipped["gone", "style0"]
    assert renderer.stats["rendered"] == 2 and renderer.stats["skipped"] == 2
