"""Encoder benchmarks: :func:`benchmark_encoder` (bare forward vs the whole pipeline) and
:class:`PrecomputedEncoder`, which serves embeddings computed beforehand to ``stylerec bench``.

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

import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ground.images import ImageLoadError, ImageSource, load_image
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
        self.weights_id_ = "table"

    @property
    def params(self) -> dict[str, Any]:
        return {"source": self.source}

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


def benchmark_encoder(
    encoder: ImageEncoder,
    paths: Sequence[str | Path],
    batch_size: int = 32,
    rounds: int = 3,
) -> dict[str, Any]:
    """Images/s of the bare forward vs the full pipeline, side by side, same batch size.

    ``bare``: :meth:`ImageEncoder.embed_batch` on batches decoded and preprocessed
    beforehand (model + normalisation + host→device copy only). ``pipeline``:
    :meth:`ImageEncoder.encode` on the file paths (decode, resize, forward, with
    the decoding threads overlapping the forward). The two are run alternately
    ``rounds`` times each and the best round of each is kept, so background load
    on a shared machine hits both alike. One warm-up batch runs first.

    Returns
    -------
    dict
        ``encoder_id``, ``device``, ``threads``, ``batch_size``, ``images``,
        ``bare_ips``, ``pipeline_ips``, ``ratio`` (pipeline / bare), and the per-round
        lists ``bare_rounds`` / ``pipeline_rounds``.

    Examples
    --------
    >>> from recsys.encoders import create_encoder
    >>> encoder = create_encoder("efficientnet-lite0")  # doctest: +SKIP
    >>> result = benchmark_encoder(encoder, paths[:256])  # doctest: +SKIP
    >>> result["ratio"] > 0.85  # doctest: +SKIP
    True
    """
    if len(paths) < batch_size:
        raise ValueError(f"need at least batch_size={batch_size} images, got {len(paths)}")
    paths = list(paths)[: len(paths) // batch_size * batch_size]
    batches = [torch.stack([torch.as_tensor(encoder.preprocess(load_image(p)))
                            for p in paths[i:i + batch_size]])
               for i in range(0, len(paths), batch_size)]
    encoder.embed_batch(batches[0])  # warm-up: allocator, kernels, caches

    def sync() -> None:
        if encoder.device_.type == "cuda":
            torch.cuda.synchronize(encoder.device_)

    bare, pipeline = [], []
    for _ in range(rounds):
        sync()
        start = time.perf_counter()
        for batch in batches:
            encoder.embed_batch(batch)
        sync()
        bare.append(len(paths) / (time.perf_counter() - start))
        start = time.perf_counter()
        encoder.encode(paths, batch_size=batch_size, progress=False)
        sync()
        pipeline.append(len(paths) / (time.perf_counter() - start))
    return {
        "encoder_id": encoder.encoder_id,
        "device": str(encoder.device_),
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "images": len(paths),
        "bare_ips": max(bare),
        "pipeline_ips": max(pipeline),
        "ratio": max(pipeline) / max(bare),
        "bare_rounds": bare,
        "pipeline_rounds": pipeline,
    }
