"""OpenCLIP image (and text) embeddings (``openclip``); open_clip loads on first use."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ground.files import file_sha256

from .base import ImageEncoder, MissingWeightsError, register_encoder

DEFAULT_STYLE_LABELS = (
    "minimalist", "vintage", "bohemian", "sporty", "romantic", "streetwear", "classic",
    "edgy", "preppy", "glamorous", "casual", "elegant", "grunge", "punk", "retro",
    "western", "nautical", "floral", "tropical", "military", "business", "feminine",
    "athleisure", "gothic", "artsy",
)


@register_encoder("openclip")
class OpenCLIPEncoder(ImageEncoder):
    """An OpenCLIP model: image and text embeddings in one space, zero-shot naming.

    Weights, in order of precedence:

    * ``checkpoint``: a local file (``.safetensors``, ``.bin``, ``.pt``; an open_clip
      or a plain state dict), loaded with ``weights_only=True``; works offline.
      The weights' identity is the file's SHA-256.
    * ``pretrained``: an open_clip pretrained tag (e.g. ``"laion2b_s34b_b79k"``);
      open_clip downloads it into its cache when online, or uses the cache offline.
    * neither: an error, unless ``allow_random=True`` (tests), which initialises
      randomly from ``seed``.

    Parameters
    ----------
    model
        An open_clip model name (``open_clip.list_models()``), including ones added
        with ``open_clip.add_model_config``.
    pretrained
        Pretrained tag, see above.
    checkpoint
        Local weights file, see above.
    allow_random
        Permit random weights when neither ``pretrained`` nor ``checkpoint`` is given.
    seed
        Seed of the random initialisation.
    cache_dir
        open_clip's download cache.
    prompt
        Template for :meth:`encode_text` labels (``{}`` is the label).
    **kwargs
        Device and pipeline options of :class:`ImageEncoder`.

    Examples
    --------
    >>> encoder = OpenCLIPEncoder("ViT-B-32", checkpoint="vit_b32.safetensors")  # doctest: +SKIP
    >>> taste = encoder.encode(["a.jpg", "b.jpg"]).mean(0)  # doctest: +SKIP
    >>> encoder.describe(taste)  # doctest: +SKIP
    [[('minimalist', 0.27), ('classic', 0.25), ('elegant', 0.24)]]
    """

    name = "openclip"

    def __init__(
        self,
        model: str = "ViT-B-32",
        pretrained: str | None = None,
        checkpoint: str | Path | None = None,
        allow_random: bool = False,
        seed: int = 0,
        cache_dir: str | None = None,
        prompt: str = "a photo of {} style clothing",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model = model
        self.pretrained = pretrained
        self.checkpoint = checkpoint
        self.allow_random = allow_random
        self.seed = seed
        self.cache_dir = cache_dir
        self.prompt = prompt
        import open_clip

        if model not in open_clip.list_models():
            raise KeyError(f"unknown open_clip model {model!r}; see open_clip.list_models() "
                           "or register a config with open_clip.add_model_config")
        if checkpoint is not None:
            path = Path(checkpoint)
            if not path.is_file():
                raise MissingWeightsError(
                    f"OpenCLIP checkpoint not found: {path}. Pass checkpoint= a local weights "
                    f"file for {model!r} (e.g. open_clip_pytorch_model.bin / .safetensors "
                    "copied from a machine with internet), or pretrained=<tag> when online."
                )
            self.weights_id_ = "sha256:" + file_sha256(path)[:16]
        elif pretrained is not None:
            self.weights_id_ = f"pretrained:{pretrained}"
        elif allow_random:
            self.weights_id_ = f"random:seed={seed}"
        else:
            raise MissingWeightsError(
                f"no weights for OpenCLIP {model!r}: pass checkpoint=<local file> (offline) or "
                "pretrained=<tag> (downloads when online); random weights only with "
                "pretrained=None, allow_random=True"
            )
        self.model_, self.preprocess_ = self._build(open_clip)
        self.tokenizer_ = open_clip.get_tokenizer(model)
        self.model_ = self.model_.to(self.device_).eval().requires_grad_(False)
        if self.channels_last:
            self.model_ = self.model_.to(memory_format=torch.channels_last)
        with torch.inference_mode():
            probe = torch.zeros(1, *self.preprocess_(Image.new("RGB", (8, 8))).shape)
            self.dim_ = int(self.model_.encode_image(probe.to(self.device_)).shape[-1])

    def _build(self, open_clip: Any) -> tuple[nn.Module, Callable[[Image.Image], torch.Tensor]]:
        if self.checkpoint is not None:
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.model, pretrained=None, pretrained_text=False)
            try:
                open_clip.load_checkpoint(model, str(self.checkpoint), weights_only=True)
            except Exception as err:  # torch/safetensors raise many types for a bad file
                raise ValueError(f"cannot load OpenCLIP checkpoint {self.checkpoint} into "
                                 f"{self.model!r}: {err}") from err
            return model, preprocess
        if self.pretrained is not None:
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    self.model, pretrained=self.pretrained, cache_dir=self.cache_dir)
            except Exception as err:  # offline: huggingface_hub / urllib errors
                raise MissingWeightsError(
                    f"could not get OpenCLIP weights {self.model!r} / {self.pretrained!r} "
                    f"({type(err).__name__}: {err}). Offline, pass checkpoint=<local file> "
                    "instead, or run once online to fill open_clip's cache."
                ) from err
            return model, preprocess
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.model, pretrained=None, pretrained_text=False)
        return model, preprocess

    @property
    def params(self) -> dict[str, Any]:
        # the architecture's hash, so a custom config re-registered under a known name differs
        import open_clip

        arch = json.dumps(open_clip.get_model_config(self.model), sort_keys=True)
        return {"model": self.model, "arch": hashlib.sha256(arch.encode()).hexdigest()[:8]}

    @property
    def dim(self) -> int:
        return self.dim_

    @property
    def draft_size(self) -> int:
        size = self.model_.visual.image_size
        return max(size) if isinstance(size, (tuple, list)) else int(size)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.preprocess_(image)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return self.model_.encode_image(batch)

    def encode_text(self, texts: Sequence[str], template: str | None = None) -> np.ndarray:
        """Embed texts into the image space: ``float32 [n, dim]``, L2-normalised.

        ``template`` (default: none) formats each text, e.g. ``"a photo of {}"``.

        Examples
        --------
        >>> encoder.encode_text(["red dress", "denim jacket"]).shape  # doctest: +SKIP
        (2, 512)
        """
        texts = [template.format(t) if template else t for t in texts]
        tokens = self.tokenizer_(texts).to(self.device_)
        with torch.inference_mode():
            out = F.normalize(self.model_.encode_text(tokens).float(), dim=1)
        return out.cpu().numpy()

    def describe(
        self,
        vectors: np.ndarray,
        labels: Sequence[str] = DEFAULT_STYLE_LABELS,
        top: int = 3,
    ) -> list[list[tuple[str, float]]]:
        """Name taste vectors zero-shot: the ``top`` labels closest to each vector.

        Each label is embedded through :attr:`prompt`; scores are cosine similarities.

        Parameters
        ----------
        vectors
            ``[dim]`` or ``[n, dim]`` vectors in this encoder's space (e.g. a user's
            mean image embedding); normalised here.
        labels
            Candidate style words.
        top
            How many labels per vector.

        Returns
        -------
        list of list of (label, cosine)
            One list per vector, best first.

        Examples
        --------
        >>> encoder.describe(encoder.encode(["a.jpg"]), top=2)  # doctest: +SKIP
        [[('sporty', 0.29), ('streetwear', 0.27)]]
        """
        vectors = np.atleast_2d(np.asarray(vectors, np.float32))
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have dimension {vectors.shape[1]}, "
                             f"{self.encoder_id} embeds in {self.dim}")
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        sims = vectors @ self.encode_text(list(labels), self.prompt).T
        order = np.argsort(-sims, axis=1, kind="stable")[:, :top]
        return [[(labels[j], float(sims[i, j])) for j in row] for i, row in enumerate(order)]
