"""Image loading: mode conversion, EXIF, error messages, size guards, hashing, parallel decode."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ground.images import (
    ImageLoadError,
    content_hash,
    decode_batches,
    fit_square,
    load_image,
)


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def test_grayscale_png_becomes_rgb(tmp_path):
    path = _save(Image.new("L", (20, 12), 77), tmp_path / "gray.png")
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (20, 12)
    assert image.getpixel((3, 3)) == (77, 77, 77)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    array = np.full((10, 10), 32768, np.uint16)
    path = _save(Image.fromarray(array), tmp_path / "deep.png")
    assert load_image(path).getpixel((0, 0)) == (127, 127, 127)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    # pure cyan ink: no red, full green and blue
    path = _save(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), tmp_path / "cmyk.jpg", quality=95)
    image = load_image(path)
    assert image.mode == "RGB"
    red, green, blue = image.getpixel((8, 8))
    assert red < 30 and green > 220 and blue > 220


def test_rgba_png_transparent_pixels_become_white(tmp_path):
    array = np.zeros((10, 10, 4), np.uint8)
    array[..., 0] = 200  # red everywhere
    array[:, 5:, 3] = 255  # right half opaque, left half fully transparent
    array[0, 0, 3] = 128  # one half-transparent pixel
    path = _save(Image.fromarray(array, "RGBA"), tmp_path / "alpha.png")
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.getpixel((1, 5)) == (255, 255, 255)
    assert image.getpixel((7, 5)) == (200, 0, 0)
    assert image.getpixel((0, 0)) == (227, 127, 127)  # 50 % red over white


def test_palette_with_transparency_becomes_white(tmp_path):
    image = Image.new("P", (10, 10), 1)
    image.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    path = _save(image, tmp_path / "pal.png", transparency=1)
    assert load_image(path).getpixel((4, 4)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (30, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    path = _save(image, tmp_path / "rotated.jpg", exif=exif)
    assert load_image(path).size == (10, 30)


def test_missing_file_error_names_the_file(tmp_path):
    with pytest.raises(ImageLoadError, match="nope.jpg: no such file"):
        load_image(tmp_path / "nope.jpg")


def test_corrupt_file_error_names_the_file(tmp_path):
    path = tmp_path / "garbage.jpg"
    path.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageLoadError, match="garbage.jpg"):
        load_image(path)


def test_truncated_jpeg_error_names_the_file(tmp_path):
    rng = np.random.default_rng(0)
    full = _save(Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)), tmp_path / "f.jpg")
    cut = tmp_path / "truncated.jpg"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ImageLoadError, match=r"truncated\.jpg: cannot decode"):
        load_image(cut)


def test_absurd_sizes_are_refused_before_decoding(tmp_path):
    tiny = _save(Image.new("RGB", (4, 50)), tmp_path / "sliver.png")
    with pytest.raises(ImageLoadError, match=r"sliver\.png: 4x50 has a side under 8 px"):
        load_image(tiny)
    # a 1 MB PNG of a 10000 x 5000 white image: a decompression bomb for our limit
    big = _save(Image.new("1", (10000, 5000), 1), tmp_path / "bomb.png")
    with pytest.raises(ImageLoadError, match=r"bomb\.png: 10000x5000 .* exceeds"):
        load_image(big, max_pixels=40_000_000)


def test_pil_image_input_is_checked_and_converted():
    assert load_image(Image.new("LA", (9, 9), (0, 0))).getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ImageLoadError, match="PIL image 3x3"):
        load_image(Image.new("RGB", (3, 3)))


def test_content_hash_is_sha256_of_bytes(tmp_path):
    path = _save(Image.new("RGB", (10, 10)), tmp_path / "a.png")
    assert content_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ImageLoadError, match="gone.png"):
        content_hash(tmp_path / "gone.png")


def test_fit_square_modes():
    image = Image.new("RGB", (20, 40), (0, 0, 0))
    padded = np.asarray(fit_square(image, 10, "pad"))
    assert padded.shape == (10, 10, 3)
    assert (padded[:, 0] == 255).all() and (padded[:, 5] == 0).all()  # white bars at the sides
    assert (np.asarray(fit_square(image, 10, "crop")) == 0).all()
    with pytest.raises(ValueError, match="fit mode"):
        fit_square(image, 10, "zoom")


@pytest.mark.parametrize("workers", [0, 3])
def test_decode_batches_keeps_order_and_reports_failures(tmp_path, workers):
    paths = []
    for i in range(7):
        paths.append(_save(Image.new("RGB", (12, 12), (i * 30, 0, 0)), tmp_path / f"{i}.png"))
    paths[4] = tmp_path / "missing.png"

    def red(image):
        return np.asarray(image)[:1, :1, 0].copy()

    batches = list(decode_batches(paths, red, batch_size=3, num_workers=workers))
    assert [b.indices for b in batches] == [[0, 1, 2], [3, 5], [6]]
    assert list(batches[1].failures) == [4] and "missing.png" in str(batches[1].failures[4])
    reds = np.concatenate([b.tensor.numpy().ravel() for b in batches])
    assert reds.tolist() == [0, 30, 60, 90, 150, 180]
