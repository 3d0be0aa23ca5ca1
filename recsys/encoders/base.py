"""The encoder contract (:class:`ImageEncoder`) and the encoder registry.

:data:`ENCODERS` is a :class:`ground.registry.Registry` (entry-point group
``stylerec.encoders``); built-ins are imported on first use.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ground.device import resolve_device
from ground.images import ImageLoadError, ImageSource, decode_batches
from ground.registry import Registry

E = TypeVar("E", bound="ImageEncoder")

ENCODERS: Registry[ImageEncoder] = Registry("encoder", "stylerec.encoders", builtins={
    "efficientnet-lite0": "recsys.encoders.efficientnet",
    "efficientnet-lite0-style": "recsys.encoders.efficientnet",
    "openclip": "recsys.encoders.openclip",
    "magenta-style": "recsys.encoders.magenta_style",
    "aesthetic": "recsys.aesthetic",
})


class MissingWeightsError(FileNotFoundError):
    """Encoder weights that are not on this machine (and must not be silently replaced)."""


def register_encoder(name: str, **defaults: Any) -> Callable[[type[E]], type[E]]:
    """Class decorator registering an :class:`ImageEncoder` subclass under ``name``.

    ``defaults`` are constructor options applied before the caller's, so one class
    can be registered under several names with different presets (the class keeps
    its own ``name``, which the preset's ids share).

    Examples
    --------
    >>> @register_encoder("doc-tiny-lite", image_size=64)  # doctest: +SKIP
    ... class Tiny(EfficientNetLite0Encoder):
    ...     pass
    """

    def decorate(cls: type[E]) -> type[E]:
        if not defaults:
            return ENCODERS.register(name)(cls)
        preset = functools.partial(_preset, cls, defaults)
        ENCODERS.register(name)(preset)
        return cls

    return decorate


def _preset(cls: type[E], defaults: dict[str, Any], **options: Any) -> E:
    return cls(**{**defaults, **options})


def create_encoder(name: str, **options: Any) -> ImageEncoder:
    """Build a registered (or installed) encoder by name.

    Raises
    ------
    ground.registry.UnknownNameError
        When no encoder has that name (the message lists the available ones).

    Examples
    --------
    >>> create_encoder("efficientnet-lite0", device="cpu").dim  # doctest: +SKIP
    1280
    """
    return ENCODERS.create(name, **options)


def available_encoders() -> list[str]:
    """Names accepted by :func:`create_encoder`.

    Examples
    --------
    >>> "efficientnet-lite0" in available_encoders()
    True
    """
    return ENCODERS.names()


def _format_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)


@dataclass
class EncodedBatch:
    """One batch of :meth:`ImageEncoder.encode_batches`.

    ``vectors[j]`` is the embedding of input ``indices[j]``; ``failures`` maps the
    input positions that could not be loaded to their error.
    """

    indices: list[int]
    vectors: np.ndarray
    failures: dict[int, ImageLoadError] = field(default_factory=dict)


class ImageEncoder:
    """Base class: batched, pipelined image → embedding with a stable identity.

    Subclasses implement :attr:`params`, :attr:`dim`, :meth:`preprocess` (PIL →
    fixed-shape tensor, runs in decoding threads) and :meth:`forward` (a device batch
    → raw embeddings), and set ``weights_id_`` (``sha256:<16 hex>`` of the weights
    file, or a pretrained tag) at construction; the registry sets ``name``.

    Parameters
    ----------
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``…; ``None`` picks CUDA when present.
    batch_size
        Default images per forward.
    num_workers
        Decoding threads (0: decode in the calling thread, no overlap).
    channels_last
        Run convolutions in NHWC memory format (faster on CPU and on tensor cores).
    num_threads
        If set, ``torch.set_num_threads(num_threads)`` (process-wide) at construction.
    """

    name: ClassVar[str] = ""

    def __init__(
        self,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 32,
        num_workers: int = 2,
        channels_last: bool = True,
        num_threads: int | None = None,
    ) -> None:
        self.device = device
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.channels_last = channels_last
        self.num_threads = num_threads
        self.device_ = resolve_device(device)
        if num_threads is not None:
            torch.set_num_threads(num_threads)

    # -- identity --------------------------------------------------------------

    weights_id_: str

    @property
    def params(self) -> dict[str, Any]:
        """Options that change the embedding (not device, batch size, threads); JSON-ready."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """``{"name", "params", "weights"}``: everything that fixes the embedding space."""
        return {"name": self.name, "params": self.params, "weights": self.weights_id_}

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        raise NotImplementedError

    @property
    def encoder_id(self) -> str:
        """:meth:`identity` as one string, ``name(option=value,…)@weights``: equal ids ⇔
        embeddings in the same space (the embedding store and the style index key on it)."""
        identity = self.identity()
        options = ",".join(f"{k}={_format_value(v)}" for k, v in sorted(identity["params"].items()))
        return f"{identity['name']}({options})@{identity['weights']}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.encoder_id}, device={self.device_})"

    # -- pipeline --------------------------------------------------------------

    def preprocess(self, image: Image.Image) -> torch.Tensor | np.ndarray:
        """One RGB image to a fixed-shape tensor or uint8 array (runs in worker threads)."""
        raise NotImplementedError

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """A stacked batch already on :attr:`device_` to ``[b, dim]`` (not yet normalised)."""
        raise NotImplementedError

    def embed_batch(self, batch: torch.Tensor) -> np.ndarray:
        """Run the model on a collated CPU batch: ``[b, dim]`` float32, L2-normalised."""
        pinned = self.device_.type == "cuda"
        batch = batch.pin_memory() if pinned else batch
        with torch.inference_mode():
            out = self.forward(batch.to(self.device_, non_blocking=pinned))
            out = F.normalize(out.float(), dim=1)
        return out.cpu().numpy()

    def encode_batches(
        self,
        images: Sequence[ImageSource],
        batch_size: int | None = None,
        progress: bool = True,
    ) -> Iterator[EncodedBatch]:
        """Encode lazily, one batch at a time; unreadable images are reported, not raised.

        Decoding of the next batches overlaps the forward of this one.

        Yields
        ------
        EncodedBatch
        """
        batch_size = batch_size or self.batch_size
        bar = tqdm(total=len(images), desc=self.name, unit="img", disable=not progress,
                   smoothing=0.1)
        with bar:
            for decoded in decode_batches(images, self.preprocess, batch_size,
                                          num_workers=self.num_workers,
                                          draft_size=self.draft_size):
                if decoded.tensor is None:
                    vectors = np.zeros((0, self.dim), np.float32)
                else:
                    vectors = self.embed_batch(decoded.tensor)
                bar.update(len(decoded.indices) + len(decoded.failures))
                yield EncodedBatch(decoded.indices, vectors, decoded.failures)

    @property
    def draft_size(self) -> int | None:
        """Smallest side the preprocessing needs (lets big JPEGs decode at reduced scale)."""
        return None

    def encode(
        self,
        images: Sequence[ImageSource],
        batch_size: int | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        """Embed images: ``float32 [n, dim]``, each row L2-normalised.

        Parameters
        ----------
        images
            Paths or PIL images.
        batch_size
            Images per forward (default: the encoder's ``batch_size``).
        progress
            Show a tqdm progress bar.

        Raises
        ------
        ImageLoadError
            The first image that cannot be loaded (the message names it); use
            :meth:`encode_batches` or the embedding store to skip such images.

        Examples
        --------
        >>> vectors = create_encoder("efficientnet-lite0").encode(["a.jpg"])  # doctest: +SKIP
        >>> float((vectors ** 2).sum())  # doctest: +SKIP
        1.0
        """
        out = np.empty((len(images), self.dim), np.float32)
        for batch in self.encode_batches(images, batch_size, progress):
            if batch.failures:
                raise batch.failures[min(batch.failures)]
            out[batch.indices] = batch.vectors
        return out
