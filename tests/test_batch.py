"""Batch jobs on the local engine: listing only what is missing, resuming, bad images by id."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recsys.catalog import Catalog
from recsys.embedding_store import EmbeddingStore
from recsys.encoders import ImageEncoder
from stylerec.batch import distinct_pairs, embed_catalog, render_batch, render_pairs
from stylerec.cli import main
from stylers.color import ColorStyler
from stylers.renderer import Renderer


def count(log: str | Path) -> int:
    """Work items logged by the counting encoder / styler (one line each)."""
    return len(Path(log).read_text().splitlines()) if Path(log).exists() else 0


def _log_work(log: str, n: int) -> None:
    # O_APPEND: lines from several processes (Ray actors) interleave but are never lost
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, b"x\n" * n)
    finally:
        os.close(fd)


class CountingEncoder(ImageEncoder):
    """Mean colour of an 8x8 thumbnail; logs each image it encodes to ``log`` and, with
    ``fail_at``, raises before a forward once ``fail_at`` images are logged (a crash)."""

    name = "test-counting"

    def __init__(self, log: str, fail_at: int | None = None, **kwargs):
        super().__init__(device="cpu", num_workers=1, **kwargs)
        self.log, self.fail_at = str(log), fail_at

    def config(self):
        return {"size": 8}

    def weights_id(self):
        return "none"

    @property
    def dim(self):
        return 4

    def preprocess(self, image):
        return torch.from_numpy(np.asarray(image.resize((8, 8)), np.float32).copy())

    def forward(self, batch):
        if self.fail_at is not None and count(self.log) >= self.fail_at:
            raise RuntimeError("injected crash")
        _log_work(self.log, len(batch))
        return torch.cat([batch.mean((1, 2)), torch.ones(len(batch), 1)], 1)


class CountingColorStyler(ColorStyler):
    """The colour styler (same name, params and cache keys), logging each image it renders."""

    def __init__(self, log: str):
        super().__init__()
        self.log = str(log)

    def stylize(self, content, style):
        _log_work(self.log, len(content))
        return super().stylize(content, style)


def counting_renderer(cache_dir: str, log: str | None = None) -> Renderer:
    styler = ColorStyler() if log is None else CountingColorStyler(log)
    return Renderer(styler, cache_dir, device="cpu", batch_size=3, max_side=32, style_side=32,
                    progress=False)


def write_images(folder: Path, n: int, seed: int = 0, size: int = 24) -> list[Path]:
    """``n`` distinct tiny noise images ``img00.png``…"""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size + i % 3, 3), np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    write_images(folder, 12)
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    return folder


def test_embed_limit_then_rerun_computes_each_image_once(tmp_path, images):
    log = tmp_path / "work.log"
    make = functools.partial(CountingEncoder, str(log), batch_size=4)
    catalog = Catalog.from_directory(images)
    # the corrupt file sorts first: it takes one of the 5 slots, fails, and is reported
    first = embed_catalog(catalog, make, tmp_path / "store", limit=5, shard_size=4,
                          progress=False)
    assert (first.listed, first.cached, first.computed, first.left) == (13, 0, 4, 8)
    assert list(first.failures) == ["broken"] and "broken.jpg" in first.failures["broken"]
    second = embed_catalog(catalog, make, tmp_path / "store", shard_size=4, progress=False)
    assert (second.cached, second.computed, second.left) == (4, 8, 0)
    assert set(second.failures) == {"broken"}  # reported again, never fatal
    assert count(log) == 12  # nothing encoded twice
    store = EmbeddingStore(tmp_path / "store", make())
    assert len(store) == 12


def test_embed_crash_keeps_finished_shards(tmp_path, images):
    log = tmp_path / "work.log"
    catalog = Catalog.from_directory(images)
    # decoded batches: [broken + 3], [4], [4], ...; the crash comes before the third forward
    crashing = functools.partial(CountingEncoder, str(log), fail_at=6, batch_size=4)
    with pytest.raises(RuntimeError, match="injected crash"):
        embed_catalog(catalog, crashing, tmp_path / "store", shard_size=4, progress=False)
    assert count(log) == 7
    report = embed_catalog(catalog, functools.partial(CountingEncoder, str(log), batch_size=4),
                           tmp_path / "store", shard_size=4, progress=False)
    assert (report.cached, report.computed) == (7, 5) and count(log) == 12


def test_embed_command_prints_a_json_report(tmp_path, images, capsys):
    code = main(["embed", "--images", str(images), "--encoder", "efficientnet-lite0",
                 "--device", "cpu", "--cache-dir", str(tmp_path / "store"), "--limit", "3",
                 "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["engine"] == "local"
    assert (report["computed"], report["left"]) == (2, 10)  # broken.jpg took one of the 3
    assert list(report["failures"]) == ["broken"]


def test_render_work_is_distinct_pairs_and_skips_the_cache(tmp_path, images):
    items = sorted(images.glob("img*.png"))[:3]
    styles = write_images(tmp_path / "styles", 2, seed=1)
    renderer = counting_renderer(str(tmp_path / "renders"))
    pairs = [(p.stem, str(p), s.stem, str(s)) for s in styles for p in items]
    # the same renders asked by many users, plus one whose item file is gone
    todo, cached, failures, listed = distinct_pairs(
        renderer, pairs * 3 + [("gone", str(tmp_path / "gone.png"), "img00", str(styles[0]))])
    assert (len(todo), cached, listed) == (6, 0, 7) and list(failures) == ["gone/img00"]
    renderer.render(todo[:2])
    todo, cached, _, _ = distinct_pairs(renderer, pairs)
    assert (len(todo), cached) == (4, 2)
    assert [p[3] for p in todo] == sorted(p[3] for p in todo)  # grouped by style


def test_a_corrupt_image_fails_only_its_own_renders(tmp_path, images):
    items = sorted(images.glob("img*.png"))[:4] + [images / "broken.jpg"]
    style = write_images(tmp_path / "styles", 1, seed=1)[0]
    log = tmp_path / "work.log"
    renderer = counting_renderer(str(tmp_path / "renders"), str(log))
    pairs = [(p.stem, str(p), "s", str(style)) for p in items]
    failures = render_pairs(renderer, pairs)
    assert list(failures) == ["broken/s"] and "broken.jpg" in failures["broken/s"]
    assert count(log) == 4  # the good ones, each once, across the retry


def test_render_batch_limit_then_rerun_renders_each_pair_once(tmp_path, images):
    items = sorted(images.glob("img*.png"))[:4]
    styles = write_images(tmp_path / "styles", 2, seed=1)
    pairs = [(p.stem, str(p), s.stem, str(s)) for s in styles for p in items] * 2
    log = tmp_path / "work.log"
    make = functools.partial(counting_renderer, str(tmp_path / "renders"), str(log))
    first = render_batch(pairs, make, limit=3, progress=False)
    assert (first.listed, first.computed, first.left) == (8, 3, 5)
    second = render_batch(pairs, make, progress=False)
    assert (second.cached, second.computed, second.left) == (3, 5, 0)
    assert count(log) == 8
    assert len(list((tmp_path / "renders").rglob("*.png"))) == 8


def test_render_batch_command_renders_each_slate_pair_once(demo_dir, tmp_path, capsys):
    import shutil

    import pandas as pd

    from recsys.recommender import StyleRecommender

    log = pd.read_csv(demo_dir / "transactions.csv", dtype=str)
    small = log[log["customer_id"].isin(log["customer_id"].drop_duplicates().iloc[:5])]
    small.to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "images").mkdir()
    for item in small["article_id"].unique():
        shutil.copy(demo_dir / "images" / item[:3] / f"{item}.jpg", tmp_path / "images")
    styles = tmp_path / "styles"
    styles.mkdir()
    for name in ("wave", "mondrian"):
        shutil.copy(demo_dir / "styles" / f"{name}.jpg", styles)
    model = tmp_path / "model"
    assert main(["fit", "--interactions", str(tmp_path / "t.csv"), "--param", "factors=4",
                 "--images", str(tmp_path / "images"), "--styles", str(styles),
                 "--cache-dir", str(tmp_path / "emb"), "--out", str(model)]) == 0
    capsys.readouterr()
    render = ["render-batch", "--model-dir", str(model), "--styler", "color", "--max-side",
              "48", "--cache-dir", str(tmp_path / "renders"), "--json"]
    assert main([*render, "--users", "all", "-k", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    pipeline = StyleRecommender.load(model)
    slates = pipeline.recommend(list(small["customer_id"].unique()), k=3)
    expected = {(e.item_id, s.style.style_id) for s in slates for e in s.entries}
    assert (report["listed"], report["computed"], report["failures"]) == (len(expected),
                                                                          len(expected), {})
    assert len(list((tmp_path / "renders").rglob("*.png"))) == len(expected)
    assert main([*render, "--items", "all", "--styles", "wave", "mondrian"]) == 0
    grid = json.loads(capsys.readouterr().out)
    assert grid["listed"] == 2 * len(pipeline.item_paths_)
    assert grid["cached"] == len(expected)  # the slates' renders are part of the grid
    assert main([*render, "--users", "nobody-x", "--items", "all"]) == 2


def test_ray_is_imported_only_for_the_ray_engine():
    import subprocess
    import sys

    code = ("import sys, stylerec.cli\n"
            "stylerec.cli.build_parser().parse_args(['embed', '--images', '.',\n"
            "                                        '--cache-dir', '.'])\n"
            "print('ray' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert out.strip() == "False"
