"""Reading images as RGB tensors and writing them atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .files import atomic_write
from .images import load_image as load_rgb

_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def load_image(path: str | os.PathLike[str], max_side: int | None = None) -> torch.Tensor:
    """Read an image file as an RGB float tensor in 0..1.

    Grayscale, palette and CMYK images are converted to RGB; transparency is
    composited on white (catalog photos are products on white); EXIF rotation is
    applied. With ``max_side`` the image is downscaled (never upscaled) so that
    its longer side is at most that many pixels.

    Parameters
    ----------
    path : str or os.PathLike
        Image file (anything Pillow reads).
    max_side : int, optional
        Cap on the longer side in pixels.

    Returns
    -------
    Tensor
        ``[3, H, W]`` float32 in 0..1, on the CPU.

    Raises
    ------
    ImageLoadError
        If the file is missing or unreadable, or the image is smaller than
        ``ground.images.MIN_SIDE`` or larger than ``MAX_PIXELS``; the message names the file.

    Examples
    --------
    >>> import tempfile
    >>> from PIL import Image
    >>> p = tempfile.mktemp(suffix=".png")
    >>> Image.new("LA", (40, 20), (0, 0)).save(p)
    >>> load_image(p, max_side=10).shape
    torch.Size([3, 5, 10])
    """
    img = load_rgb(path, draft_size=max_side)
    if max_side and max(img.size) > max_side:
        scale = max_side / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS)
    return pil_to_tensor(img)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB Pillow image as a ``[3, H, W]`` float32 tensor in 0..1.

    Examples
    --------
    >>> from PIL import Image
    >>> pil_to_tensor(Image.new("RGB", (2, 1), (255, 0, 0)))[:, 0, 0]
    tensor([1., 0., 0.])
    """
    arr = np.array(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """A ``[3, H, W]`` tensor in 0..1 (any device/dtype) as an RGB Pillow image.

    Examples
    --------
    >>> import torch
    >>> tensor_to_pil(torch.ones(3, 4, 5)).size
    (5, 4)
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a [3, H, W] image, got shape {tuple(image.shape)}")
    arr = image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


def save_image_atomic(img: Image.Image, path: str | os.PathLike[str], quality: int = 92) -> Path:
    """Write an image so that readers never see a partial file.

    The image goes to a temporary file in the destination folder first and is
    then renamed over ``path`` (``os.replace`` is atomic on one filesystem).
    The format follows the suffix: ``.png``, ``.jpg``/``.jpeg`` or ``.webp``.

    Parameters
    ----------
    img : PIL.Image.Image
        The picture.
    path : str or os.PathLike
        Destination; parent folders are created.
    quality : int
        JPEG/WebP quality.

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> from PIL import Image
    >>> out = save_image_atomic(Image.new("RGB", (4, 4)), tempfile.mkdtemp() + "/a/b.jpg")
    >>> out.name
    'b.jpg'
    """
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"unsupported suffix {path.suffix!r} for {path}; use {sorted(_FORMATS)}")
    kwargs = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    with atomic_write(path) as f:
        img.save(f, format=fmt, **kwargs)
    return path
