"""A third-party plugin for stylerec: a CF model, an image encoder and a styler.

Nothing here is registered by import; stylerec finds the three through the entry points
in ``pyproject.toml`` and sets each class's ``name`` to its entry-point name.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from PIL import Image

from recsys.cf import Recommender
from recsys.encoders import ImageEncoder
from stylers.base import Styler


class ItemCountRecommender(Recommender):
    """Items by their total interaction weight, optionally damped: ``weight ** power``."""

    _array_names = ("counts_",)

    def __init__(self, power: float = 1.0) -> None:
        self.power = power

    def _fit(self, user_items: sp.csr_matrix) -> None:
        counts = np.asarray(user_items.sum(axis=0)).ravel()
        self.counts_ = (counts ** self.power).astype(np.float32)

    def _scores(self, known: np.ndarray, rows: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(self.counts_, (rows.shape[0], len(self.counts_)))


class MeanColourEncoder(ImageEncoder):
    """The mean RGB of an image (plus a constant so black is not a zero vector)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{"num_workers": 0, "channels_last": False, **kwargs})
        self.weights_id_ = "none"

    @property
    def params(self) -> dict[str, Any]:
        return {}

    @property
    def dim(self) -> int:
        return 3

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image.resize((4, 4)), np.float32) / 255.0)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.mean((1, 2)) + 0.05


class InvertStyler(Styler):
    """The negative of the content (ignores the style image)."""

    uses_style_image = False

    @property
    def params(self) -> dict[str, Any]:
        return {}

    def stylize(self, content: torch.Tensor, style: torch.Tensor | None) -> torch.Tensor:
        content, _ = self.check_inputs(content, style)
        return 1.0 - content
