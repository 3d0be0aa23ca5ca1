"""Classical colour-statistics transfer: Reinhard et al. (2001) and histogram matching.

No weights; always available; the cheapest styler (it changes colours, not texture).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Styler
from .colorspace import lab_to_rgb, rgb_to_lab
from .registry import register_styler

METHODS = ("reinhard", "histogram")
SPACES = ("lab", "rgb")


def reinhard_transfer(
    content: torch.Tensor, style: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Give each channel of ``content`` the mean and standard deviation of ``style``'s.

    Works channel-wise on whatever space the tensors are in (Reinhard used lαβ;
    :class:`ColorStyler` uses CIE Lab).

    Parameters
    ----------
    content : Tensor
        ``[B, C, H, W]``.
    style : Tensor
        ``[B, C, h, w]`` (any spatial size).
    eps : float
        Floor on the content's standard deviation (flat channels stay flat).

    Returns
    -------
    Tensor
        ``[B, C, H, W]`` with per-image, per-channel mean/std equal to the style's.

    Examples
    --------
    >>> import torch
    >>> c, s = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 5, 5) * 2 + 1
    >>> out = reinhard_transfer(c, s)
    >>> bool(torch.allclose(out.mean((2, 3)), s.mean((2, 3)), atol=1e-5))
    True
    """
    c_mean, c_std = content.mean((2, 3), keepdim=True), content.std((2, 3), keepdim=True)
    s_mean, s_std = style.mean((2, 3), keepdim=True), style.std((2, 3), keepdim=True)
    return (content - c_mean) / c_std.clamp(min=eps) * s_std + s_mean


def match_histograms(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Map each channel of ``content`` through the style's inverse CDF.

    Equal content values map to equal outputs (ties take their mid-rank), so
    flat areas such as a white product background stay flat.

    Parameters
    ----------
    content : Tensor
        ``[B, C, H, W]``.
    style : Tensor
        ``[B, C, h, w]``.

    Returns
    -------
    Tensor
        ``[B, C, H, W]`` whose per-channel value distribution is the style's.

    Examples
    --------
    >>> import torch
    >>> c = torch.arange(4.0).view(1, 1, 2, 2)
    >>> s = torch.tensor([10.0, 20, 30, 40]).view(1, 1, 2, 2)
    >>> match_histograms(c, s).flatten().tolist()
    [10.0, 20.0, 30.0, 40.0]
    """
    b, c, h, w = content.shape
    x = content.reshape(b, c, h * w).contiguous()
    s_sorted = style.reshape(b, c, -1).sort(dim=-1).values
    x_sorted = x.sort(dim=-1).values
    n, m = x.shape[-1], s_sorted.shape[-1]
    lo = torch.searchsorted(x_sorted, x, right=False)
    hi = torch.searchsorted(x_sorted, x, right=True)
    quantile = (lo + hi).to(s_sorted.dtype) / (2 * n)  # mid-rank CDF position in (0, 1)
    pos = (quantile * m - 0.5).clamp(0, m - 1)
    i0 = pos.floor().long()
    i1 = (i0 + 1).clamp(max=m - 1)
    frac = pos - i0
    v0, v1 = s_sorted.gather(-1, i0), s_sorted.gather(-1, i1)
    return (v0 + frac * (v1 - v0)).reshape(b, c, h, w)


@register_styler("color")
class ColorStyler(Styler):
    """Colour transfer from the style image: Reinhard statistics or histogram matching.

    Parameters
    ----------
    method : {"reinhard", "histogram"}
        Match mean/std per channel, or the whole per-channel distribution.
    space : {"lab", "rgb"}, optional
        Colour space; default Lab for Reinhard (decorrelated channels) and RGB
        for histograms (matching Lab marginals can leave the sRGB gamut).
    strength : float
        0 returns the content, 1 the full transfer; linear in between.

    Examples
    --------
    >>> import torch
    >>> styler = ColorStyler("histogram")
    >>> styler.stylize(torch.rand(2, 3, 16, 16), torch.rand(1, 3, 8, 8)).shape
    torch.Size([2, 3, 16, 16])
    """

    def __init__(self, method: str = "reinhard", space: str | None = None, strength: float = 1.0):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        space = space or ("lab" if method == "reinhard" else "rgb")
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in 0..1, got {strength}")
        self.method = method
        self.space = space
        self.strength = float(strength)

    @property
    def params(self) -> dict[str, Any]:
        return {"method": self.method, "space": self.space, "strength": self.strength}

    def stylize(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        content, style = self.check_inputs(content, style)
        content, style = content.float(), style.float()  # Lab's cube roots are not fp16-safe
        to_space, from_space = (rgb_to_lab, lab_to_rgb) if self.space == "lab" else (_same, _same)
        transfer = reinhard_transfer if self.method == "reinhard" else match_histograms
        out = from_space(transfer(to_space(content), to_space(style))).clamp(0, 1)
        return torch.lerp(content, out, self.strength)


def _same(x: torch.Tensor) -> torch.Tensor:
    return x
