"""Render quality per styler: product kept, style taken, time spent.

For each styler, over (product photo, style) pairs:

``ssim_product``
    SSIM (scikit-image, on luminance) between the render and the photo, averaged
    over the product region (the photo's foreground mask): 1 = product unchanged.
``hist_to_style``
    Hellinger distance between the RGB colour histograms (8 bins per channel) of
    the render and of the style image: 0 = the render has the style's colours,
    1 = no colour in common.
``ms_384``, ``ms_768``
    Milliseconds per image at 384² and 768² (fastest of a few runs, after a
    warm-up; :func:`evaluation.bench_stylers.benchmark_stylers`).

Examples
--------
>>> import torch
>>> x = torch.rand(1, 3, 32, 32)
>>> round(product_ssim(x, x, torch.ones(1, 1, 32, 32)), 3)
1.0
>>> round(histogram_distance(x, x), 3)
0.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.bench_stylers import benchmark_stylers
from stylers.base import Styler


def product_ssim(content: torch.Tensor, render: torch.Tensor, mask: torch.Tensor) -> float:
    """SSIM of the luminance of ``[1, 3, H, W]`` images averaged over ``mask`` ``[1, 1, H, W]``."""
    from skimage.metrics import structural_similarity

    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    a, b = ((t.float().cpu() * weights).sum(1)[0].numpy() for t in (content, render))
    _, smap = structural_similarity(a, b, data_range=1.0, full=True)
    m = mask[0, 0].float().cpu().numpy()
    return float((smap * m).sum() / max(m.sum(), 1e-6))


def histogram_distance(a: torch.Tensor, b: torch.Tensor, bins: int = 8) -> float:
    """Hellinger distance of the RGB histograms of two ``[1, 3, H, W]`` images (0..1)."""
    def hist(x: torch.Tensor) -> np.ndarray:
        q = (x[0].float().cpu().clamp(0, 1) * (bins - 1e-6)).long().flatten(1)
        codes = (q[0] * bins + q[1]) * bins + q[2]
        h = np.bincount(codes.numpy(), minlength=bins ** 3).astype(np.float64)
        return h / h.sum()

    bc = np.sqrt(hist(a) * hist(b)).sum()
    return float(np.sqrt(max(0.0, 1.0 - bc)))


def render_quality(
    stylers: Mapping[str, Styler],
    contents: Sequence[torch.Tensor],
    styles: Sequence[torch.Tensor],
    sizes: Sequence[int] = (384, 768),
    reps: int = 2,
) -> list[dict[str, Any]]:
    """One row per styler: mean ``ssim_product`` and ``hist_to_style`` over every
    (content, style) pair, and ms/image at each size.

    ``contents`` and ``styles`` are ``[1, 3, H, W]`` tensors in 0..1.
    """
    from stylers.protection import foreground_mask

    masks = [foreground_mask(c) for c in contents]
    timing = benchmark_stylers(stylers, contents[0][0], styles[0][0], sizes, reps,
                               reference=False)
    rows = []
    for label, styler in stylers.items():
        ssim, dist = [], []
        with torch.no_grad():
            for content, mask in zip(contents, masks, strict=True):
                for style in styles:
                    out = styler.stylize(content, style).cpu()
                    ssim.append(product_ssim(content, out, mask))
                    dist.append(histogram_distance(out, style))
        row = {"styler": label, "pairs": len(ssim), "ssim_product": float(np.mean(ssim)),
               "hist_to_style": float(np.mean(dist))}
        row.update({f"ms_{t['size']}": t["ms"] for t in timing if t["styler"] == label})
        rows.append(row)
    return rows


def load_tensor(path: str | Path, max_side: int | None = None) -> torch.Tensor:
    """An image file as ``[1, 3, H, W]`` in 0..1 (longer side at most ``max_side``)."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        if max_side:
            img.thumbnail((max_side, max_side), Image.LANCZOS)
        arr = np.asarray(img, np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()
