"""Johnson et al. (2016) feed-forward style networks in the pytorch/examples format.

The style is baked into the weights: one network per style, so the ``style``
argument of :meth:`FastStyler.stylize` is ignored and the weights file's
SHA-256 identifies the output instead.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ground.checkpoints import CheckpointError, load_into, load_state_dict_file
from ground.files import file_sha256

from .base import Styler, pad_to_multiple
from .registry import register_styler

# Old pytorch/examples checkpoints carry InstanceNorm running stats that the model never uses.
log = logging.getLogger(__name__)

_STALE_KEYS = re.compile(r"(^|\.)in\d+\.running_(mean|var)$")


class _ConvLayer(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, upsample: int = 1):
        super().__init__()
        self.upsample = upsample
        self.reflection_pad = nn.ReflectionPad2d(kernel // 2)
        self.conv2d = nn.Conv2d(c_in, c_out, kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample > 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="nearest")
        return self.conv2d(self.reflection_pad(x))


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = _ConvLayer(channels, channels, 3, 1)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = _ConvLayer(channels, channels, 3, 1)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.in2(self.conv2(F.relu(self.in1(self.conv1(x)))))


class TransformerNet(nn.Module):
    """The pytorch/examples ``fast_neural_style`` network with a configurable width.

    Module names match the original so its state dicts load unchanged. Input and
    output are RGB in 0..255; height and width must be multiples of 4.

    Parameters
    ----------
    width : int
        Channels of the first layer (32 in the original; 16 in the shared test
        weights); the layers after it use 2x and 4x.

    Examples
    --------
    >>> import torch
    >>> TransformerNet(8)(torch.zeros(1, 3, 16, 16)).shape
    torch.Size([1, 3, 16, 16])
    """

    def __init__(self, width: int = 32):
        super().__init__()
        self.width = width
        w1, w2, w4 = width, 2 * width, 4 * width
        self.conv1 = _ConvLayer(3, w1, 9, 1)
        self.in1 = nn.InstanceNorm2d(w1, affine=True)
        self.conv2 = _ConvLayer(w1, w2, 3, 2)
        self.in2 = nn.InstanceNorm2d(w2, affine=True)
        self.conv3 = _ConvLayer(w2, w4, 3, 2)
        self.in3 = nn.InstanceNorm2d(w4, affine=True)
        for i in range(1, 6):
            self.add_module(f"res{i}", _ResidualBlock(w4))
        self.deconv1 = _ConvLayer(w4, w2, 3, 1, upsample=2)
        self.in4 = nn.InstanceNorm2d(w2, affine=True)
        self.deconv2 = _ConvLayer(w2, w1, 3, 1, upsample=2)
        self.in5 = nn.InstanceNorm2d(w1, affine=True)
        self.deconv3 = _ConvLayer(w1, 3, 9, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.in1(self.conv1(x)))
        y = F.relu(self.in2(self.conv2(y)))
        y = F.relu(self.in3(self.conv3(y)))
        for i in range(1, 6):
            y = getattr(self, f"res{i}")(y)
        y = F.relu(self.in4(self.deconv1(y)))
        y = F.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


def load_transformer_net(path: str | os.PathLike[str]) -> TransformerNet:
    """Build a :class:`TransformerNet` of the width stored in ``path`` and load it.

    Raises
    ------
    CheckpointError
        If the file is unreadable or its keys/shapes are not a TransformerNet's.
    """
    state = {k: v for k, v in load_state_dict_file(path).items() if not _STALE_KEYS.search(k)}
    first = state.get("conv1.conv2d.weight")
    if first is None or first.ndim != 4 or tuple(first.shape[1:]) != (3, 9, 9):
        raise CheckpointError(
            f"{path} is not a fast-style TransformerNet state dict "
            "(no conv1.conv2d.weight of shape [width, 3, 9, 9])"
        )
    return load_into(TransformerNet(int(first.shape[0])), state, path)


def warn_style_ignored(styler: Styler) -> str:
    """Say (once per styler, as a ``UserWarning`` and a log line) that a style given to a
    styler with a baked-in style is ignored; returns the message."""
    message = (f"styler {styler.name!r} has its style baked into its weights "
               f"({styler.params.get('weights', '?')}): the given style is ignored")
    if not getattr(styler, "_warned_style_ignored", False):
        styler._warned_style_ignored = True
        log.warning(message)
        warnings.warn(message, stacklevel=3)
    return message


@register_styler("fast")
class FastStyler(Styler):
    """Feed-forward style transfer with one pretrained network per style.

    Parameters
    ----------
    weights : str or os.PathLike
        A pytorch/examples ``TransformerNet`` state dict (any width), e.g.
        ``../shared/weights/fast_style/candy.pth``.
    strength : float
        Blend with the content: 0 returns the content, 1 the network output.

    A style image given to :meth:`stylize` is ignored, with a warning
    (:func:`warn_style_ignored`).

    Examples
    --------
    >>> styler = FastStyler("../shared/weights/fast_style/candy.pth")  # doctest: +SKIP
    >>> styler.stylize(content, None).shape  # doctest: +SKIP
    torch.Size([2, 3, 336, 224])
    """

    uses_style_image = False
    fp16_safe = True

    def __init__(self, weights: str | os.PathLike[str], strength: float = 1.0):
        super().__init__()
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in 0..1, got {strength}")
        self.weights = Path(weights)
        self.strength = float(strength)
        self.net = load_transformer_net(self.weights)
        self._sha256 = file_sha256(self.weights)

    @property
    def params(self) -> dict[str, Any]:
        return {
            "weights": self.weights.stem,
            "weights_sha256": self._sha256,
            "width": self.net.width,
            "strength": self.strength,
        }

    def stylize(self, content: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        if style is not None:
            warn_style_ignored(self)
        content, _ = self.check_inputs(content, None)
        x, (h, w) = pad_to_multiple(content, 4)
        out = self.net(x * 255.0)[..., :h, :w].float().div(255.0).clamp(0, 1)
        return torch.lerp(content.float(), out, self.strength)
