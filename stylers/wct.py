"""Universal style transfer by whitening and colouring transforms (Li et al., NeurIPS 2017).

Coarse to fine: at each level (relu3_1, relu2_1, relu1_1) the content image is
encoded, its features are whitened (decorrelated) and coloured with the style
features' covariance and mean, blended with the content features by ``alpha``,
and decoded back to an image that feeds the next level.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ground.files import file_sha256

from .base import Styler, pad_to_multiple, resize_max_side
from .registry import register_styler
from .vgg import LEVELS, load_vgg_decoder, load_vgg_encoder

EIG_FLOOR = 1e-5  # eigenvalues below this are treated as zero (as in the reference code)


def _centred_cov(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mean = f.mean(-1, keepdim=True)
    f = f - mean
    cov = f @ f.transpose(1, 2) / max(f.shape[-1] - 1, 1)
    return f, mean, cov


def wct(
    content: torch.Tensor, style: torch.Tensor, alpha: float = 1.0, content_reg: float = 1.0
) -> torch.Tensor:
    """Whitening-colouring transform of feature maps.

    The content features are centred and whitened with the inverse square root
    of their covariance, then coloured with the square root of the style
    covariance and shifted to the style mean, so their mean and covariance become
    the style's. Returns the input dtype.

    Parameters
    ----------
    content : Tensor
        ``[B, C, H, W]`` features.
    style : Tensor
        ``[B, C, h, w]`` or ``[1, C, h, w]`` features.
    alpha : float
        Blend: 0 returns ``content``, 1 the fully transformed features.
    content_reg : float
        Added to the diagonal of the content covariance before whitening, as the
        reference implementation does, so that near-empty feature directions are
        not amplified into noise. 0 gives an exact covariance match.

    Returns
    -------
    Tensor
        ``[B, C, H, W]``.

    Examples
    --------
    >>> import torch
    >>> c, s = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 8, 8) * 3 + 1
    >>> out = wct(c, s, content_reg=0.0).flatten(2)
    >>> bool(torch.allclose(torch.cov(out[0]), torch.cov(s.flatten(2)[0]), atol=1e-3))
    True
    """
    b, c, h, w = content.shape
    with torch.autocast(content.device.type, enabled=False):
        fc, _, cov_c = _centred_cov(content.reshape(b, c, -1).float())
        _, mean_s, cov_s = _centred_cov(style.reshape(style.shape[0], c, -1).float())
        eye = torch.eye(c, dtype=torch.float64, device=cov_c.device)
        # eigendecompositions of the small C x C matrices in float64; the big products in float32
        ev_c, vec_c = torch.linalg.eigh(cov_c.double() + content_reg * eye)
        ev_s, vec_s = torch.linalg.eigh(cov_s.double())
        inv_sqrt = torch.where(ev_c > EIG_FLOOR, ev_c.clamp(min=EIG_FLOOR).rsqrt(), 0.0)
        sqrt_s = torch.where(ev_s > EIG_FLOOR, ev_s.clamp(min=0).sqrt(), 0.0)
        whiten = vec_c @ torch.diag_embed(inv_sqrt) @ vec_c.transpose(1, 2)
        colour = vec_s @ torch.diag_embed(sqrt_s) @ vec_s.transpose(1, 2)
        out = (colour @ whiten).float() @ fc + mean_s
        out = out.reshape(b, c, h, w).to(content.dtype)
    return torch.lerp(content, out, alpha)


@register_styler("wct")
class WCTStyler(Styler):
    """Multi-level WCT with the partial normalised VGG19 encoders and decoders.

    Parameters
    ----------
    weights_dir : str or os.PathLike
        Folder with ``vgg_normalised_conv{k}_1.pth`` and
        ``feature_invertor_conv{k}_1.pth`` for the levels used.
    levels : sequence of int
        Levels to apply, coarse to fine; default ``(3, 2, 1)``.
    alpha : float or sequence of float
        Style strength per level (one value for all, or one per level).
    style_size : int
        The style image is downscaled to this longer side before encoding (its
        encoding costs as much as the content's; 384 suits catalog-size renders).
    content_reg : float
        Covariance regulariser, see :func:`wct`.

    Examples
    --------
    >>> styler = WCTStyler("../shared/weights/vgg19_normalised_partial")  # doctest: +SKIP
    >>> styler.stylize(content, style).shape  # doctest: +SKIP
    torch.Size([1, 3, 336, 224])
    """

    fp16_safe = True  # convolutions only; the transform itself runs in float64

    def __init__(
        self,
        weights_dir: str | os.PathLike[str],
        levels: Sequence[int] = (3, 2, 1),
        alpha: float | Sequence[float] = 0.8,
        style_size: int = 384,
        content_reg: float = 1.0,
    ):
        super().__init__()
        self.levels = tuple(int(k) for k in levels)
        if not self.levels or any(k not in LEVELS for k in self.levels):
            raise ValueError(f"levels must be a non-empty subset of {LEVELS}, got {levels}")
        alphas = [alpha] * len(self.levels) if isinstance(alpha, (int, float)) else list(alpha)
        if len(alphas) != len(self.levels) or not all(0.0 <= a <= 1.0 for a in alphas):
            raise ValueError(f"alpha must be one value or one per level, each in 0..1; got {alpha}")
        self.alpha = tuple(float(a) for a in alphas)
        self.weights_dir = Path(weights_dir)
        self.style_size = int(style_size)
        self.content_reg = float(content_reg)
        self.encoders = nn.ModuleDict(
            {str(k): load_vgg_encoder(self.weights_dir, k) for k in self.levels}
        )
        self.decoders = nn.ModuleDict(
            {str(k): load_vgg_decoder(self.weights_dir, k) for k in self.levels}
        )
        deepest = self.encoders[str(max(self.levels))].layers.state_dict()
        # the shared files are truncations of one VGG; then one pass gives every level's style
        self._one_style_pass = all(
            all(torch.equal(v, deepest[k]) for k, v in enc.layers.state_dict().items())
            for enc in self.encoders.values()
        )
        digest = hashlib.sha256()
        for k in sorted(set(self.levels)):
            for stem in (f"vgg_normalised_conv{k}_1", f"feature_invertor_conv{k}_1"):
                digest.update(file_sha256(self.weights_dir / f"{stem}.pth").encode())
        self._sha256 = digest.hexdigest()

    @property
    def params(self) -> dict[str, Any]:
        return {
            "levels": list(self.levels),
            "alpha": list(self.alpha),
            "style_size": self.style_size,
            "content_reg": self.content_reg,
            "weights_sha256": self._sha256,
        }

    def stylize(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        content, style = self.check_inputs(content, style)
        if style.shape[0] > 1 and style.stride(0) == 0:
            style = style[:1]  # one style broadcast over the batch: encode it once
        style = resize_max_side(style, self.style_size)
        taps = [f"relu{k}_1" for k in self.levels]
        if self._one_style_pass:
            style_feats = self.encoders[str(max(self.levels))](style, taps)
        else:
            style_feats = {}
            for level, tap in zip(self.levels, taps, strict=True):
                style_feats[tap] = self.encoders[str(level)](style, [tap])[tap]
        x = content
        for level, tap, alpha in zip(self.levels, taps, self.alpha, strict=True):
            encoder, decoder = self.encoders[str(level)], self.decoders[str(level)]
            padded, (h, w) = pad_to_multiple(x, 2 ** (level - 1))
            features = wct(encoder(padded, [tap])[tap], style_feats[tap], alpha, self.content_reg)
            x = decoder(features)[..., :h, :w].float().clamp(0, 1)
        return x
