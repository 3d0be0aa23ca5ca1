"""Keep the product recognisable: a foreground mask and a styler wrapper that uses it.

Catalog photos show one product on a plain, light background. The mask is found
from the photo alone: the background colour is estimated from the image border,
pixels far enough from it are foreground, morphology closes gaps and removes
specks, enclosed holes are filled (a white shirt on white is found from its
outline), and the edge is feathered. :class:`ProtectedStyler` then styles the
background fully and the product lightly, optionally keeping the product's own
colours (only its luminance takes the style).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .base import Styler
from .colorspace import keep_chroma


def _odd(n: float) -> int:
    k = max(1, int(round(n)))
    return k if k % 2 else k + 1


def _dilate(x: torch.Tensor, k: int) -> torch.Tensor:
    return F.max_pool2d(x, k, stride=1, padding=k // 2) if k > 1 else x


def _erode(x: torch.Tensor, k: int) -> torch.Tensor:
    return 1 - _dilate(1 - x, k) if k > 1 else x


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return x
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _fill_holes(mask: torch.Tensor) -> torch.Tensor:
    from scipy.ndimage import binary_fill_holes

    filled = np.stack([binary_fill_holes(m) for m in mask[:, 0].bool().cpu().numpy()])
    return torch.from_numpy(filled).to(mask.device, mask.dtype).unsqueeze(1)


def border_pixels(images: torch.Tensor, width: int) -> torch.Tensor:
    """The ``width``-pixel frame of each image as ``[B, C, N]``.

    Examples
    --------
    >>> import torch
    >>> border_pixels(torch.zeros(1, 3, 10, 10), 1).shape
    torch.Size([1, 3, 36])
    """
    b, c, h, w = images.shape
    width = max(1, min(width, h // 2, w // 2))
    frame = torch.ones(h, w, dtype=torch.bool, device=images.device)
    frame[width:h - width, width:w - width] = False
    return images[:, :, frame]


def foreground_mask(
    images: torch.Tensor,
    threshold: float | None = None,
    border: float = 0.02,
    close: float = 0.03,
    open_: float = 0.01,
    feather: float = 0.006,
    fill_holes: bool = True,
    edge_threshold: float = 0.04,
) -> torch.Tensor:
    """Soft product mask of catalog photos (product on a plain background).

    Sizes are fractions of the image's shorter side, so the result does not
    depend on resolution.

    Parameters
    ----------
    images : Tensor
        ``[B, 3, H, W]`` RGB in 0..1.
    threshold : float, optional
        RGB distance from the background colour above which a pixel is product.
        Default: adaptive, ``max(0.06, 3 x the 99th percentile of the border's
        own distances)`` (photo noise and vignetting stay background).
    border : float
        Width of the frame the background colour (its median) is taken from.
    close, open_ : float
        Kernel sizes of the morphological closing (bridges gaps in the outline)
        and opening (removes specks).
    feather : float
        Gaussian sigma of the soft edge.
    fill_holes : bool
        Fill background regions enclosed by the product.

    Returns
    -------
    Tensor
        ``[B, 1, H, W]`` in 0..1 (1 = product), on the images' device.

    Examples
    --------
    >>> import torch
    >>> img = torch.ones(1, 3, 64, 64); img[:, :, 16:48, 16:48] = 0.2
    >>> m = foreground_mask(img)
    >>> round(m[0, 0, 32, 32].item(), 2), round(m[0, 0, 2, 2].item(), 2)
    (1.0, 0.0)
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
    x = images.float()
    side = min(x.shape[-2:])
    sigma = 0.5 + 0.002 * side
    x_smooth = _gaussian_blur(x, sigma)  # JPEG noise is neither product nor edge
    frame = border_pixels(x_smooth, _odd(border * side))
    background = frame.median(dim=2).values[:, :, None, None]
    dist = (x_smooth - background).norm(dim=1, keepdim=True)
    if threshold is None:
        # the border's typical deviation (noise, vignetting), robust to stray product pixels
        frame_dist = (frame - background[..., 0]).norm(dim=1)
        thr = (4 * frame_dist.median(dim=1).values).clamp(0.05, 0.15).view(-1, 1, 1, 1)
    else:
        thr = torch.full((x.shape[0], 1, 1, 1), float(threshold), device=x.device)
    # outlines count too: a white shirt on white differs from the background mostly at its edges
    luma = x_smooth.mean(dim=1, keepdim=True)
    grad = torch.zeros_like(luma)
    grad[..., 1:-1, 1:-1] = (
        (luma[..., 1:-1, 2:] - luma[..., 1:-1, :-2]) ** 2
        + (luma[..., 2:, 1:-1] - luma[..., :-2, 1:-1]) ** 2
    ).sqrt()
    mask = ((dist > thr) | (grad > edge_threshold)).float()
    k_close, k_open = _odd(close * side), _odd(open_ * side)
    mask = _erode(_dilate(mask, k_close), k_close)
    mask = _dilate(_erode(mask, k_open), k_open)
    if fill_holes:
        mask = _fill_holes(mask)
    # blur and edge response spread the outline outwards: trim a rim of that width where
    # the unblurred colour says background
    sharp = ((x - background).norm(dim=1, keepdim=True) > thr).float()
    rim = mask - _erode(mask, _odd(4 * sigma + 1))
    mask = mask - rim * (1 - sharp)
    return _gaussian_blur(mask, feather * side).clamp(0, 1)


class ProtectedStyler(Styler):
    """Wrap a styler so the product stays recognisable.

    ``out = mask * product + (1 - mask) * background`` where ``background`` is
    the content blended towards the stylized image by
    ``background_strength * strength`` and ``product`` by
    ``product_strength * strength``, taking only the stylized luminance when
    ``preserve_color``.

    Parameters
    ----------
    styler : Styler
        Any styler.
    product_strength, background_strength : float
        How much style the product and the background get, 0..1.
    preserve_color : bool
        Keep the product's colours (luminance-only transfer on the product).
    color_space : {"yuv", "lab"}
        Where luminance is split from colour.
    strength : float
        Global multiplier of both strengths.
    mask_threshold : float, optional
        Fixed foreground threshold (default adaptive, see :func:`foreground_mask`).

    Examples
    --------
    >>> import torch
    >>> from stylers.color import ColorStyler
    >>> styler = ProtectedStyler(ColorStyler(), product_strength=0.0)
    >>> img = torch.ones(1, 3, 64, 64); img[:, :, 16:48, 16:48] = 0.2
    >>> out = styler.stylize(img, torch.rand(1, 3, 32, 32))
    >>> bool(torch.allclose(out[..., 24:40, 24:40], img[..., 24:40, 24:40]))
    True
    """

    name = "protected"

    def __init__(
        self,
        styler: Styler,
        product_strength: float = 0.3,
        background_strength: float = 1.0,
        preserve_color: bool = True,
        color_space: str = "yuv",
        strength: float = 1.0,
        mask_threshold: float | None = None,
    ):
        super().__init__()
        for label, value in (
            ("product_strength", product_strength),
            ("background_strength", background_strength),
            ("strength", strength),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{label} must be in 0..1, got {value}")
        if color_space not in ("yuv", "lab"):
            raise ValueError(f"color_space must be 'yuv' or 'lab', got {color_space!r}")
        self.styler = styler
        self.name = f"protected-{styler.name}"  # cache folder and labels say what is inside
        self.product_strength = float(product_strength)
        self.background_strength = float(background_strength)
        self.preserve_color = bool(preserve_color)
        self.color_space = color_space
        self.strength = float(strength)
        self.mask_threshold = None if mask_threshold is None else float(mask_threshold)
        # the wrapper behaves like the wrapped styler towards the renderer
        self.uses_style_image = styler.uses_style_image
        self.fp16_safe = styler.fp16_safe
        self.style_code_dim = styler.style_code_dim

    @property
    def device(self) -> torch.device:
        return self.styler.device

    @property
    def params(self) -> dict[str, Any]:
        return {
            "styler": self.styler.identity(),
            "product_strength": self.product_strength,
            "background_strength": self.background_strength,
            "preserve_color": self.preserve_color,
            "color_space": self.color_space,
            "strength": self.strength,
            "mask_threshold": self.mask_threshold,
        }

    def mask(self, content: torch.Tensor) -> torch.Tensor:
        """The product mask ``[B, 1, H, W]`` used for ``content``."""
        return foreground_mask(content, threshold=self.mask_threshold)

    def stylize(self, content: torch.Tensor, style: torch.Tensor | None) -> torch.Tensor:
        content = content.to(self.device).float()
        return self.protect(content, self.styler.stylize(content, style))

    def protect(self, content: torch.Tensor, styled: torch.Tensor) -> torch.Tensor:
        """Blend ``content`` with the wrapped styler's output ``styled`` (``[B, 3, H, W]``)."""
        content, styled = content.float(), styled.float().to(content.device)
        mask = self.mask(content)
        product = keep_chroma(styled, content, self.color_space) if self.preserve_color else styled
        product = torch.lerp(content, product, self.product_strength * self.strength)
        background = torch.lerp(content, styled, self.background_strength * self.strength)
        return (mask * product + (1 - mask) * background).clamp(0, 1)
