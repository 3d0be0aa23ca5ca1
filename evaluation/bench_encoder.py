"""An encoder that serves embeddings computed beforehand, for ``stylerec bench``.

The serve stage times :class:`~recsys.recommender.StyleRecommender` on
*precomputed* embeddings: its ``fit`` must not spend minutes encoding 17k
photos (or 16 × 17k at scale 16, where replicas share their original's photo).
:class:`PrecomputedEncoder` is an :class:`~recsys.encoders.ImageEncoder` whose
:meth:`~PrecomputedEncoder.encode_batches` looks the vectors up by image
path instead of running a model. Importing this module imports torch.

Examples
--------
>>> import numpy as np
>>> encoder = PrecomputedEncoder({"/img/a.jpg": np.ones(4, np.float32)}, "demo")
>>> batch = next(encoder.encode_batches(["/img/a.jpg", "/img/b.jpg"]))
>>> batch.indices, sorted(batch.failures), encoder.dim
([0], [1], 4)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ground.images import ImageLoadError, ImageSource
from recsys.encoders import EncodedBatch, ImageEncoder


class PrecomputedEncoder(ImageEncoder):
    """Embeddings by image path from a table (no model, no decoding).

    Parameters
    ----------
    vectors : mapping of str to ndarray
        Image path, as the catalog gives it (resolved), → embedding (one dimension).
    source : str
        Where the vectors come from (an encoder id, or ``"synthetic"``); part of
        :attr:`encoder_id`, so they never mix with another encoder's.
    """

    name = "precomputed"

    def __init__(self, vectors: Mapping[str, np.ndarray], source: str) -> None:
        super().__init__(device="cpu", num_workers=0)
        if not vectors:
            raise ValueError("no precomputed vectors")
        self.vectors = {str(k): np.asarray(v, np.float32) for k, v in vectors.items()}
        self.source = source
        self.dim_ = len(next(iter(self.vectors.values())))

    def config(self) -> dict[str, Any]:
        return {"source": self.source}

    def weights_id(self) -> str:
        return "table"

    @property
    def dim(self) -> int:
        return self.dim_

    def encode_batches(
        self, images: Sequence[ImageSource], batch_size: int | None = None,
        progress: bool = True,
    ) -> Iterator[EncodedBatch]:
        """One batch with the vectors of every known path; unknown ones are failures."""
        indices, rows, failures = [], [], {}
        for i, image in enumerate(images):
            vector = self.vectors.get(str(image)) if isinstance(image, (str, Path)) else None
            if vector is None:
                failures[i] = ImageLoadError(str(image), "no precomputed embedding")
            else:
                indices.append(i)
                rows.append(vector)
        vectors = np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)
        yield EncodedBatch(indices, vectors, failures)
