"""Test doubles shared by the test files: a small, weight-free image encoder and a tiny
OpenCLIP architecture.

Import with ``from doubles import ColourEncoder`` (pytest puts ``tests/`` on the path).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from recsys.encoders import ImageEncoder

TINY_CLIP = {  # an OpenCLIP config small enough to build with random weights in a test
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                   "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                 "layers": 1},
}


class ColourEncoder(ImageEncoder):
    """Mean RGB (0..1, plus 0.05 so black is not a zero vector) of each cell of a
    ``grid`` × ``grid`` division of the image: ``3·grid²`` dimensions, no weights.

    Counts its work (``batches_``, ``encoded_``) and, with ``fail_after_batches``,
    raises in a later forward (a crash in the middle of a run).
    """

    name = "test-colour"

    def __init__(self, grid: int = 1, fail_after_batches: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**{"device": "cpu", "num_workers": 0, "channels_last": False,
                            **kwargs})
        self.grid = grid
        self.fail_after_batches = fail_after_batches
        self.weights_id_ = "none"
        self.batches_ = 0
        self.encoded_ = 0

    @property
    def params(self) -> dict[str, Any]:
        return {"grid": self.grid}

    @property
    def dim(self) -> int:
        return 3 * self.grid ** 2

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        small = image.resize((self.grid, self.grid), Image.BOX)
        return torch.from_numpy(np.asarray(small, np.float32) / 255.0).permute(2, 0, 1)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.fail_after_batches is not None and self.batches_ >= self.fail_after_batches:
            raise RuntimeError("simulated crash")
        self.batches_ += 1
        self.encoded_ += len(batch)
        return batch.flatten(1) + 0.05
