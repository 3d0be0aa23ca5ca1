"""Safe image loading: any PIL format to RGB, size guards, content hashes, parallel decoding.

Everything that turns a file into pixels goes through :func:`load_image`, so every
encoder sees the same RGB conversion (alpha composited on white, EXIF orientation
applied) and every failure names the file at fault. :func:`decode_batches` runs
decoding and per-image preprocessing in a thread pool (Pillow releases the GIL while
it decodes and resizes), so the next batch is decoded while the model runs on this one.
"""

from __future__ import annotations

import logging
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .files import file_sha256

log = logging.getLogger(__name__)

ImageSource = str | Path | Image.Image

MAX_PIXELS = 40_000_000
MIN_SIDE = 8
WHITE = (255, 255, 255)
# 16-bit and float modes need rescaling to 8 bits; convert("L") would clip them
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class ImageLoadError(ValueError):
    """An image that cannot be used; ``source`` names the file (or ``<PIL image>``)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def describe_source(source: ImageSource) -> str:
    """A short name for error messages: the path, or ``<PIL image WxH>``."""
    if isinstance(source, Image.Image):
        return f"<PIL image {source.width}x{source.height}>"
    return str(source)


def to_rgb(image: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Convert a decoded image of any mode to RGB.

    Transparency (RGBA, LA, PA, or a palette/RGB/L image with a transparency key)
    is composited over ``background``; CMYK and YCbCr go through Pillow's
    conversion; 16-bit and float grayscale are scaled to 8 bits instead of clipped.

    Examples
    --------
    >>> from PIL import Image
    >>> to_rgb(Image.new("RGBA", (2, 2), (0, 0, 0, 0))).getpixel((0, 0))
    (255, 255, 255)
    """
    if image.mode in _WIDE_MODES:
        values = np.asarray(image, dtype=np.float32)
        top = float(values.max()) if values.size else 0.0
        if image.mode == "F" and top <= 1.0:
            values = values * 255.0
        elif top > 255.0:
            values = values / 257.0
        image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = MAX_PIXELS,
    min_side: int = MIN_SIDE,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode an image file (or take a PIL image) to an RGB ``PIL.Image``.

    Parameters
    ----------
    source
        A path or an already opened ``PIL.Image``.
    max_pixels
        Refuse images with more pixels than this (checked from the header,
        before decoding, so a decompression bomb never allocates its pixels).
    min_side
        Refuse images whose shorter side is below this.
    draft_size
        If set, JPEGs are decoded with DCT scaling to the smallest size whose
        sides are both at least ``draft_size`` (a large speed-up for big photos
        that will be resized anyway). ``None`` decodes at full size.

    Returns
    -------
    PIL.Image.Image
        Mode ``RGB``, EXIF orientation applied, alpha composited on white.

    Raises
    ------
    ImageLoadError
        Missing, unreadable, corrupt or truncated file, or absurd dimensions;
        the message starts with the file name.

    Examples
    --------
    >>> image = load_image("photo.png")  # doctest: +SKIP
    >>> image.mode
    'RGB'
    """
    name = describe_source(source)
    if isinstance(source, Image.Image):
        _check_size(name, source.size, max_pixels, min_side)
        return to_rgb(ImageOps.exif_transpose(source))
    path = Path(source)
    if not path.is_file():
        raise ImageLoadError(name, "no such file" if not path.exists() else "not a regular file")
    try:
        with warnings.catch_warnings():
            # our own max_pixels check replaces Pillow's bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_size(name, image.size, max_pixels, min_side)
                if draft_size is not None and image.format == "JPEG":
                    image.draft("RGB", (draft_size, draft_size))
                image.load()
                image = ImageOps.exif_transpose(image)
                return to_rgb(image)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not a recognised image format (corrupt?)") from None
    except Image.DecompressionBombError as err:
        raise ImageLoadError(name, f"refused as a decompression bomb ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        # Pillow reports truncated and corrupt data as OSError/SyntaxError
        raise ImageLoadError(name, f"cannot decode ({err})") from None


def _check_size(name: str, size: tuple[int, int], max_pixels: int, min_side: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageLoadError(
            name, f"{width}x{height} = {width * height:,} pixels exceeds the limit {max_pixels:,}"
        )
    if min(width, height) < min_side:
        raise ImageLoadError(name, f"{width}x{height} has a side under {min_side} px")


def content_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes, as hex: the cache key of an image (memoised).

    Raises ``ImageLoadError`` naming the file when it cannot be read.

    Examples
    --------
    >>> content_hash("photo.jpg")  # doctest: +SKIP
    '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08'
    """
    try:
        return file_sha256(path)
    except OSError as err:
        raise ImageLoadError(str(path), f"cannot read ({err.strerror or err})") from None


def fit_square(image: Image.Image, size: int, mode: str = "pad") -> Image.Image:
    """Resize an RGB image to ``size`` × ``size``.

    ``mode="pad"`` keeps the whole image (the long side fits, the rest is white,
    which suits product photos on white), ``"crop"`` fills the square and centre
    crops the long side, ``"stretch"`` ignores the aspect ratio.

    Examples
    --------
    >>> from PIL import Image
    >>> fit_square(Image.new("RGB", (224, 336)), 224).size
    (224, 224)
    """
    if mode == "stretch":
        return image.resize((size, size), Image.BILINEAR)
    width, height = image.size
    if mode == "crop":
        return ImageOps.fit(image, (size, size), Image.BILINEAR)
    if mode != "pad":
        raise ValueError(f"fit mode must be 'pad', 'crop' or 'stretch', got {mode!r}")
    scale = size / max(width, height)
    inner = (max(1, round(width * scale)), max(1, round(height * scale)))
    canvas = Image.new("RGB", (size, size), WHITE)
    canvas.paste(image.resize(inner, Image.BILINEAR),
                 ((size - inner[0]) // 2, (size - inner[1]) // 2))
    return canvas


@dataclass
class DecodedBatch:
    """One batch from :func:`decode_batches`.

    ``tensor`` stacks the preprocessed images that decoded (``None`` when none
    did); ``indices`` are their positions in the input sequence; ``failures``
    maps the positions that failed to their ``ImageLoadError``.
    """

    indices: list[int]
    tensor: torch.Tensor | None
    failures: dict[int, ImageLoadError] = field(default_factory=dict)


def _decode_one(
    source: ImageSource, preprocess: Callable[[Image.Image], Any], draft_size: int | None
) -> Any:
    return preprocess(load_image(source, draft_size=draft_size))


def decode_batches(
    sources: Sequence[ImageSource],
    preprocess: Callable[[Image.Image], Any],
    batch_size: int = 32,
    *,
    num_workers: int = 2,
    prefetch_batches: int = 2,
    draft_size: int | None = None,
) -> Iterator[DecodedBatch]:
    """Decode and preprocess images in a thread pool, yielding batches in input order.

    Up to ``prefetch_batches`` batches beyond the one being consumed are decoded
    ahead, so while the caller runs a model on batch *i* the workers decode
    batch *i + 1*. Memory stays bounded by ``(prefetch_batches + 1) * batch_size``
    images.

    Parameters
    ----------
    sources
        Paths or PIL images.
    preprocess
        ``RGB PIL.Image -> torch.Tensor | np.ndarray`` of a fixed shape; runs in
        the worker threads (resize, crop, to tensor).
    batch_size
        Images per yielded batch (the last may be shorter).
    num_workers
        Decoding threads; ``0`` decodes in the calling thread (no overlap).
    prefetch_batches
        How many batches to decode ahead.
    draft_size
        Passed to :func:`load_image` (JPEG DCT-domain downscaling).

    Yields
    ------
    DecodedBatch
        A failed image never stops the stream: it is reported in ``failures``.

    Examples
    --------
    >>> import numpy as np
    >>> to_array = lambda im: np.asarray(fit_square(im, 32))
    >>> for batch in decode_batches(["a.jpg", "b.png"], to_array, 2):  # doctest: +SKIP
    ...     print(batch.indices, batch.tensor.shape)
    [0, 1] torch.Size([2, 32, 32, 3])
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    starts = range(0, len(sources), batch_size)
    if num_workers <= 0:
        for start in starts:
            chunk = range(start, min(start + batch_size, len(sources)))
            yield _collect(chunk, (_run(_decode_one, sources[i], preprocess, draft_size)
                                   for i in chunk))
        return
    with ThreadPoolExecutor(num_workers, thread_name_prefix="decode") as pool:
        pending: deque[tuple[range, list[Future]]] = deque()
        start_iter = iter(starts)

        def submit_next() -> None:
            start = next(start_iter, None)
            if start is not None:
                chunk = range(start, min(start + batch_size, len(sources)))
                pending.append((chunk, [pool.submit(_decode_one, sources[i], preprocess,
                                                    draft_size) for i in chunk]))

        for _ in range(prefetch_batches + 1):
            submit_next()
        try:
            while pending:
                chunk, futures = pending.popleft()
                submit_next()
                yield _collect(chunk, (_result(f) for f in futures))
        finally:
            for _, futures in pending:
                for future in futures:
                    future.cancel()


def _run(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except ImageLoadError as err:
        return err


def _result(future: Future) -> Any:
    try:
        return future.result()
    except ImageLoadError as err:
        return err


def _collect(chunk: Iterable[int], results: Iterable[Any]) -> DecodedBatch:
    indices: list[int] = []
    arrays: list[torch.Tensor] = []
    failures: dict[int, ImageLoadError] = {}
    for index, result in zip(chunk, results, strict=True):
        if isinstance(result, ImageLoadError):
            failures[index] = result
        else:
            indices.append(index)
            arrays.append(torch.as_tensor(result))
    return DecodedBatch(indices, torch.stack(arrays) if arrays else None, failures)
