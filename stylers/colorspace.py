"""Colour-space conversions on batched image tensors ``[B, 3, H, W]`` (sRGB in 0..1).

Lab is CIE L*a*b* under D65 (L in 0..100); YUV is BT.601 YCbCr without offsets
(Y in 0..1, U and V centred on 0). All functions work on any device and are
differentiable.
"""

from __future__ import annotations

import torch

_RGB_TO_XYZ = torch.tensor(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_WHITE_D65 = torch.tensor([0.95047, 1.0, 1.08883])
_RGB_TO_YUV = torch.tensor(
    [
        [0.299, 0.587, 0.114],
        [-0.168736, -0.331264, 0.5],
        [0.5, -0.418688, -0.081312],
    ]
)
_XYZ_TO_RGB = torch.linalg.inv(_RGB_TO_XYZ.double()).float()
_YUV_TO_RGB = torch.linalg.inv(_RGB_TO_YUV.double()).float()
_EPS = 216 / 24389  # CIE constants for the cube-root / linear switch
_KAPPA = 24389 / 27


def _apply(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", matrix.to(x.device, x.dtype), x)


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """Undo the sRGB transfer curve."""
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp(min=0) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """Apply the sRGB transfer curve."""
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp(min=1e-12) ** (1 / 2.4) - 0.055)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB ``[B, 3, H, W]`` in 0..1 to CIE Lab.

    Examples
    --------
    >>> import torch
    >>> [round(v) for v in rgb_to_lab(torch.ones(1, 3, 1, 1)).flatten().tolist()]
    [100, 0, 0]
    """
    xyz = _apply(_RGB_TO_XYZ, srgb_to_linear(rgb))
    t = xyz / _WHITE_D65.to(rgb.device, rgb.dtype).view(1, 3, 1, 1)
    f = torch.where(t > _EPS, t.clamp(min=1e-12) ** (1 / 3), (_KAPPA * t + 16) / 116)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab to sRGB (not clamped: out-of-gamut colours leave 0..1).

    Examples
    --------
    >>> import torch
    >>> x = torch.rand(2, 3, 4, 4)
    >>> bool(torch.allclose(lab_to_rgb(rgb_to_lab(x)), x, atol=1e-4))
    True
    """
    L, a, b = lab.unbind(1)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=1)
    t = torch.where(f**3 > _EPS, f**3, (116 * f - 16) / _KAPPA)
    xyz = t * _WHITE_D65.to(lab.device, lab.dtype).view(1, 3, 1, 1)
    return linear_to_srgb(_apply(_XYZ_TO_RGB, xyz))


def rgb_to_yuv(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB to BT.601 YUV (Y in 0..1, U/V centred on 0)."""
    return _apply(_RGB_TO_YUV, rgb)


def yuv_to_rgb(yuv: torch.Tensor) -> torch.Tensor:
    """BT.601 YUV back to sRGB (not clamped).

    Examples
    --------
    >>> import torch
    >>> x = torch.rand(1, 3, 2, 2)
    >>> bool(torch.allclose(yuv_to_rgb(rgb_to_yuv(x)), x, atol=1e-5))
    True
    """
    return _apply(_YUV_TO_RGB, yuv)


def keep_chroma(styled: torch.Tensor, original: torch.Tensor, space: str = "yuv") -> torch.Tensor:
    """Luminance of ``styled`` with the colour (chroma) of ``original``.

    Parameters
    ----------
    styled, original : Tensor
        ``[B, 3, H, W]`` sRGB in 0..1, same shape.
    space : {"yuv", "lab"}
        Where to split luminance from chroma.

    Returns
    -------
    Tensor
        ``[B, 3, H, W]`` clamped to 0..1.

    Examples
    --------
    >>> import torch
    >>> grey = torch.full((1, 3, 2, 2), 0.5)
    >>> red = torch.zeros(1, 3, 2, 2); red[:, 0] = 1
    >>> keep_chroma(grey, red)[0, :, 0, 0].argmax().item()  # red hue kept
    0
    """
    if space == "yuv":
        to, back = rgb_to_yuv, yuv_to_rgb
    elif space == "lab":
        to, back = rgb_to_lab, lab_to_rgb
    else:
        raise ValueError(f"space must be 'yuv' or 'lab', got {space!r}")
    s, o = to(styled), to(original)
    return back(torch.cat([s[:, :1], o[:, 1:]], dim=1)).clamp(0, 1)
