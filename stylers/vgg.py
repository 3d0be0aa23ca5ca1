"""The "normalised" VGG19 encoders (to relu1_1 / relu2_1 / relu3_1) and WCT decoders.

Weights come as ``nn.Sequential`` state dicts (see ``../shared/README.md``):
``vgg_normalised_conv{k}_1.pth`` and ``feature_invertor_conv{k}_1.pth``,
k = 1, 2, 3. The encoder's first layer is a 1x1 convolution that turns RGB in
0..1 into mean-subtracted BGR in 0..255, so inputs are plain RGB in 0..1; the
decoders return RGB in (about) 0..1.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ground.checkpoints import load_into, load_state_dict_file

LEVELS = (1, 2, 3)
# (in, out) convolutions; "M" = 2x2 max-pool, "U" = 2x nearest upsample
_ENCODER = {
    1: [(3, 64)],
    2: [(3, 64), (64, 64), "M", (64, 128)],
    3: [(3, 64), (64, 64), "M", (64, 128), (128, 128), "M", (128, 256)],
}
_DECODER = {
    1: [(64, 3)],
    2: [(128, 64), "U", (64, 64), (64, 3)],
    3: [(256, 128), "U", (128, 128), (128, 64), "U", (64, 64), (64, 3)],
}


def _check_level(level: int) -> int:
    if level not in LEVELS:
        raise ValueError(f"VGG level must be one of {LEVELS}, got {level}")
    return level


class VGGEncoder(nn.Module):
    """Normalised VGG19 up to ``relu{level}_1``, returning the relu_k_1 features on the way.

    Parameters
    ----------
    level : {1, 2, 3}
        Deepest layer: relu1_1 (64 ch, full size), relu2_1 (128 ch, 1/2), relu3_1 (256 ch, 1/4).

    Examples
    --------
    >>> import torch
    >>> enc = VGGEncoder(2)
    >>> {k: tuple(v.shape) for k, v in enc(torch.zeros(1, 3, 9, 9)).items()}
    {'relu1_1': (1, 64, 9, 9), 'relu2_1': (1, 128, 5, 5)}
    """

    def __init__(self, level: int = 3):
        super().__init__()
        self.level = _check_level(level)
        layers: list[nn.Module] = [nn.Conv2d(3, 3, 1)]
        self._taps: dict[int, str] = {}
        for spec in _ENCODER[level]:
            if spec == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                continue
            layers += [nn.ReflectionPad2d(1), nn.Conv2d(*spec, 3), nn.ReLU()]
            if spec[0] != spec[1]:  # the first conv of each stage is the one tapped
                self._taps[len(layers) - 1] = f"relu{len(self._taps) + 1}_1"
        self.layers = nn.Sequential(*layers)

    def forward(
        self, x: torch.Tensor, taps: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Features at ``taps`` (default: all relu_k_1 up to the level) for RGB ``x`` in 0..1."""
        wanted = set(taps) if taps is not None else set(self._taps.values())
        have = set(self._taps.values())
        if wanted - have:
            raise ValueError(f"unknown VGG taps {sorted(wanted - have)}; have {sorted(have)}")
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            x = layer(x)
            name = self._taps.get(i)
            if name in wanted:
                out[name] = x
                if len(out) == len(wanted):
                    break
        return out


class VGGDecoder(nn.Module):
    """WCT "feature invertor": ``relu{level}_1`` features back to an RGB image.

    Examples
    --------
    >>> import torch
    >>> VGGDecoder(3)(torch.zeros(1, 256, 4, 4)).shape
    torch.Size([1, 3, 16, 16])
    """

    def __init__(self, level: int = 3):
        super().__init__()
        self.level = _check_level(level)
        specs = _DECODER[level]
        layers: list[nn.Module] = []
        for i, spec in enumerate(specs):
            if spec == "U":
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
                continue
            layers += [nn.ReflectionPad2d(1), nn.Conv2d(*spec, 3)]
            if i < len(specs) - 1:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def _state(module: nn.Module, path: Path) -> nn.Module:
    # files store the bare Sequential; our modules wrap it in ``layers``
    state = {f"layers.{k}": v for k, v in load_state_dict_file(path).items()}
    return load_into(module, state, path)


def load_vgg_encoder(weights_dir: str | os.PathLike[str], level: int = 3) -> VGGEncoder:
    """Load ``vgg_normalised_conv{level}_1.pth`` from ``weights_dir``.

    Raises
    ------
    CheckpointError
        If the file is missing or does not fit the layout.
    """
    path = Path(weights_dir) / f"vgg_normalised_conv{_check_level(level)}_1.pth"
    return _state(VGGEncoder(level), path)


def load_vgg_decoder(weights_dir: str | os.PathLike[str], level: int = 3) -> VGGDecoder:
    """Load ``feature_invertor_conv{level}_1.pth`` from ``weights_dir``.

    Raises
    ------
    CheckpointError
        If the file is missing or does not fit the layout.
    """
    path = Path(weights_dir) / f"feature_invertor_conv{_check_level(level)}_1.pth"
    return _state(VGGDecoder(level), path)
