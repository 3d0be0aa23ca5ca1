"""Optimisation-based style transfer (Gatys et al., CVPR 2016) with a pretrained loss network.

The image is optimised with Adam, starting from the content, to match the
content's features at ``content_layers`` and the style's Gram matrices at
``style_layers``. Loss networks: the partial normalised VGG19 (relu1_1..relu3_1)
when its weights are given, else ImageNet EfficientNet-Lite0 (always installed).
Slow (``steps`` forward/backward passes per batch) but needs no style-specific
training and gives the most faithful textures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ground.files import file_sha256

from .base import Styler, resize_max_side
from .effnet import EfficientNetLite0Features
from .registry import register_styler
from .vgg import load_vgg_encoder

DEFAULT_LAYERS = {
    "vgg": {"content": ("relu3_1",), "style": ("relu1_1", "relu2_1", "relu3_1")},
    "efficientnet": {"content": ("stage3",), "style": ("stem", "stage1", "stage2", "stage3")},
}


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrices ``[B, C, C]`` of ``[B, C, H, W]`` features, divided by C*H*W.

    Examples
    --------
    >>> import torch
    >>> gram(torch.ones(1, 2, 3, 3))
    tensor([[[0.5000, 0.5000],
             [0.5000, 0.5000]]])
    """
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)


def _relative_sq_error(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # per-sample ||x - t||² / ||t||²: scale-free, so one weight setting suits every layer and net
    dims = tuple(range(1, x.ndim))
    return (x - target).pow(2).sum(dims) / target.pow(2).sum(dims).clamp(min=1e-8)


@register_styler("gatys")
class GatysStyler(Styler):
    """Neural style transfer by optimisation.

    Parameters
    ----------
    loss_net : {"auto", "vgg", "efficientnet"}
        ``auto`` picks VGG when ``weights_dir`` is given, else EfficientNet-Lite0.
    weights_dir : str or os.PathLike, optional
        Folder with ``vgg_normalised_conv3_1.pth`` (for ``loss_net="vgg"``).
    steps : int
        Adam iterations.
    lr : float
        Adam learning rate, in pixel units (images are 0..1).
    content_weight, style_weight, tv_weight : float
        Weights of the relative content error, the relative Gram error (summed over
        layers) and total variation.
    content_layers, style_layers : sequence of str, optional
        Feature taps; defaults depend on the loss network (see ``DEFAULT_LAYERS``).
    style_size : int
        Longer side the style image is resized to.
    init : {"content", "noise"}
        Start from the content, or from the content plus uniform noise of
        amplitude 0.1 drawn from a generator seeded with ``seed``.
    seed : int
        Seed of the initial noise.

    Examples
    --------
    >>> import torch
    >>> styler = GatysStyler(steps=2, loss_net="efficientnet")
    >>> styler.stylize(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)).shape
    torch.Size([1, 3, 32, 32])
    """

    def __init__(
        self,
        loss_net: str = "auto",
        weights_dir: str | os.PathLike[str] | None = None,
        steps: int = 150,
        lr: float = 0.03,
        content_weight: float = 1.0,
        style_weight: float = 5.0,
        tv_weight: float = 0.0,
        content_layers: Sequence[str] | None = None,
        style_layers: Sequence[str] | None = None,
        style_size: int = 512,
        init: str = "content",
        seed: int = 0,
    ):
        super().__init__()
        if loss_net == "auto":
            loss_net = "vgg" if weights_dir is not None else "efficientnet"
        if loss_net not in DEFAULT_LAYERS:
            raise ValueError(f"loss_net must be 'auto', 'vgg' or 'efficientnet', got {loss_net!r}")
        if init not in ("content", "noise"):
            raise ValueError(f"init must be 'content' or 'noise', got {init!r}")
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        self.loss_net = loss_net
        self.steps = int(steps)
        self.lr = float(lr)
        self.content_weight = float(content_weight)
        self.style_weight = float(style_weight)
        self.tv_weight = float(tv_weight)
        self.content_layers = tuple(content_layers or DEFAULT_LAYERS[loss_net]["content"])
        self.style_layers = tuple(style_layers or DEFAULT_LAYERS[loss_net]["style"])
        self.style_size = int(style_size)
        self.init = init
        self.seed = int(seed)
        self.net: nn.Module
        if loss_net == "vgg":
            if weights_dir is None:
                raise ValueError("loss_net='vgg' needs weights_dir (the partial normalised VGG19)")
            self.net = load_vgg_encoder(weights_dir, 3)
            weights = Path(weights_dir) / "vgg_normalised_conv3_1.pth"
        else:
            self.net = EfficientNetLite0Features()
            weights = self.net.weights
        self._sha256 = file_sha256(weights)
        # fail now, not at the first render, on a layer name the network lacks
        self.net(torch.zeros(1, 3, 64, 64), self.content_layers + self.style_layers)

    @property
    def params(self) -> dict[str, Any]:
        return {
            "loss_net": self.loss_net,
            "weights_sha256": self._sha256,
            "steps": self.steps,
            "lr": self.lr,
            "content_weight": self.content_weight,
            "style_weight": self.style_weight,
            "tv_weight": self.tv_weight,
            "content_layers": list(self.content_layers),
            "style_layers": list(self.style_layers),
            "style_size": self.style_size,
            "init": self.init,
            "seed": self.seed,
        }

    def stylize(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        content, style = self.check_inputs(content, style)
        # optimisation needs autograd even when the caller runs under no_grad/inference_mode
        with torch.inference_mode(False), torch.enable_grad():
            content = content.detach().float().clone()
            style = resize_max_side(style.detach().float().clone(), self.style_size)
            with torch.no_grad():
                c_feats = self.net(content, self.content_layers)
                s_grams = {k: gram(v) for k, v in self.net(style, self.style_layers).items()}
            image = content.clone()
            if self.init == "noise":
                gen = torch.Generator(device="cpu").manual_seed(self.seed)
                noise = torch.rand(image.shape, generator=gen).to(image.device) * 0.2 - 0.1
                image = (image + noise).clamp(0, 1)
            image.requires_grad_(True)
            optimizer = torch.optim.Adam([image], lr=self.lr)
            taps = tuple(dict.fromkeys(self.content_layers + self.style_layers))
            for _ in range(self.steps):
                optimizer.zero_grad(set_to_none=True)
                loss = self._loss(image, taps, c_feats, s_grams)
                loss.sum().backward()  # samples are independent; Adam is per element
                optimizer.step()
                with torch.no_grad():
                    image.clamp_(0, 1)
            return image.detach()

    def _loss(
        self,
        image: torch.Tensor,
        taps: Sequence[str],
        c_feats: dict[str, torch.Tensor],
        s_grams: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        feats = self.net(image, taps)
        loss = sum(self.content_weight * _relative_sq_error(feats[k], c_feats[k]) for k in c_feats)
        loss = loss + sum(
            self.style_weight * _relative_sq_error(gram(feats[k]), s_grams[k]) for k in s_grams
        )
        if self.tv_weight:
            tv = (image[..., 1:, :] - image[..., :-1, :]).abs().mean((1, 2, 3))
            tv = tv + (image[..., :, 1:] - image[..., :, :-1]).abs().mean((1, 2, 3))
            loss = loss + self.tv_weight * tv
        return loss
