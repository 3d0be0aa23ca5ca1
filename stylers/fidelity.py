"""Product fidelity: does the rendered product still look like the product?

Fidelity is the cosine similarity between ImageNet EfficientNet-Lite0 pooled
features of the product region before and after rendering. The region is the
product mask of the original photo: both images are composited on white
outside it and cropped to its bounding box, so a styled background does not
count against the product.

The protection study reported in ``docs/stylers.md`` runs from
``python -m evaluation.fidelity_study --shared ../shared``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import Styler
from .effnet import EfficientNetLite0Features
from .protection import ProtectedStyler, foreground_mask


def _product_crop(images: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    on_white = images * mask + (1 - mask)
    crops = []
    for image, m in zip(on_white, mask[:, 0] > 0.5, strict=True):
        rows, cols = m.any(1).nonzero(), m.any(0).nonzero()
        if len(rows) == 0:  # nothing found: use the whole image
            crops.append(image)
            continue
        crops.append(image[:, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
    return crops


def product_fidelity(
    originals: torch.Tensor,
    renders: torch.Tensor,
    masks: torch.Tensor | None = None,
    extractor: EfficientNetLite0Features | None = None,
) -> torch.Tensor:
    """Cosine similarity of product-region features before and after rendering.

    Parameters
    ----------
    originals, renders : Tensor
        ``[B, 3, H, W]`` in 0..1, same shape.
    masks : Tensor, optional
        ``[B, 1, H, W]`` product masks; default :func:`foreground_mask` of ``originals``.
    extractor : EfficientNetLite0Features, optional
        Reused across calls to save loading time.

    Returns
    -------
    Tensor
        ``[B]`` cosines in -1..1 (1: the product's features are unchanged).

    Examples
    --------
    >>> import torch
    >>> img = torch.ones(1, 3, 64, 64); img[:, :, 16:48, 16:48] = 0.3
    >>> round(product_fidelity(img, img).item(), 4)
    1.0
    """
    if originals.shape != renders.shape:
        raise ValueError(f"shapes differ: {tuple(originals.shape)} vs {tuple(renders.shape)}")
    extractor = extractor or EfficientNetLite0Features()
    device = next(extractor.parameters()).device
    originals, renders = originals.to(device).float(), renders.to(device).float()
    masks = foreground_mask(originals) if masks is None else masks.to(device).float()
    with torch.no_grad():
        feats = [
            torch.cat([extractor.pooled(c[None]) for c in _product_crop(x, masks)])
            for x in (originals, renders)
        ]
    return torch.nn.functional.cosine_similarity(feats[0], feats[1], dim=1)


def protection_study(
    styler: Styler,
    contents: torch.Tensor,
    styles: Sequence[torch.Tensor],
    strength: float = 1.0,
    protection: ProtectedStyler | None = None,
    extractor: EfficientNetLite0Features | None = None,
) -> dict[str, torch.Tensor]:
    """Product fidelity with protection off and on, at the same global strength.

    "Off" blends the styler's output with the content by ``strength``; "on"
    passes the same output through ``protection`` (default
    ``ProtectedStyler(styler, strength=strength)``). The styler runs once per style.

    Parameters
    ----------
    styler : Styler
        The styler to measure.
    contents : Tensor
        ``[N, 3, H, W]`` product photos.
    styles : sequence of Tensor
        ``[1, 3, h, w]`` style images.

    Returns
    -------
    dict
        ``"off"`` and ``"on"``: ``[len(styles), N]`` fidelity cosines.
    """
    protection = protection or ProtectedStyler(styler, strength=strength)
    extractor = extractor or EfficientNetLite0Features()
    masks = foreground_mask(contents)
    off, on = [], []
    for style in styles:
        with torch.no_grad():
            styled = styler.stylize(contents, style).float().cpu()
        plain = torch.lerp(contents, styled, strength)
        off.append(product_fidelity(contents, plain, masks, extractor))
        protected = protection.protect(contents, styled)
        on.append(product_fidelity(contents, protected, masks, extractor))
    return {"off": torch.stack(off), "on": torch.stack(on)}
