"""The ``Styler`` contract: what every stylizer is, and the input checks they share."""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn


class Styler(nn.Module):
    """Base class of all stylizers.

    A styler maps a batch of content images and a batch of style images to
    stylized images of the content's size::

        stylize(content [B, 3, H, W] in 0..1, style [B or 1, 3, h, w] in 0..1)
            -> [B, 3, H, W] in 0..1

    It runs on the device its weights live on (move it with ``.to(device)``);
    inputs are moved there. Subclasses set the class attributes below and
    implement :meth:`stylize` and :attr:`params`.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"wct"``.
    version : int
        Bumped when the algorithm changes its output for the same params, so
        cached renders from an older version are not reused.
    uses_style_image : bool
        False when the style is baked into the weights (the ``style`` argument
        is ignored and the renderer does not key its cache on it).
    fp16_safe : bool
        True when the styler may run under CUDA fp16 autocast.
    style_code_dim : int or None
        Size of a continuous style code that :meth:`stylize` takes in place of a style
        image (``[B or 1, style_code_dim]``, e.g. a mix of several styles); None: images only.

    Examples
    --------
    >>> import torch
    >>> class Invert(Styler):
    ...     name = "invert"
    ...     @property
    ...     def params(self):
    ...         return {}
    ...     def stylize(self, content, style):
    ...         content, style = self.check_inputs(content, style)
    ...         return 1 - content
    >>> Invert().stylize(torch.zeros(2, 3, 8, 8), torch.zeros(1, 3, 4, 4)).mean().item()
    1.0
    """

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    uses_style_image: ClassVar[bool] = True
    fp16_safe: ClassVar[bool] = False
    style_code_dim: ClassVar[int | None] = None

    @property
    def params(self) -> dict[str, Any]:
        """JSON-serialisable settings that, with ``name`` and ``version``, fix the output."""
        raise NotImplementedError

    def stylize(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """Render ``content`` in the style of ``style``; see the class docstring."""
        raise NotImplementedError

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.stylize(content, style)

    @property
    def device(self) -> torch.device:
        """Where the styler's weights live (CPU for a styler without weights)."""
        weights = self._first_tensor()
        return weights.device if weights is not None else torch.device("cpu")

    def _first_tensor(self) -> torch.Tensor | None:
        return next(itertools.chain(self.parameters(), self.buffers()), None)

    def identity(self) -> dict[str, Any]:
        """``{"name", "version", "params"}``: what a cache key needs to know about the styler."""
        return {"name": self.name, "version": self.version, "params": self.params}

    def check_inputs(
        self, content: torch.Tensor, style: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Validate shapes, move to the styler's device and broadcast a single style.

        Parameters
        ----------
        content : Tensor
            ``[B, 3, H, W]`` floating point.
        style : Tensor or None
            ``[B, 3, h, w]`` or ``[1, 3, h, w]``; None only for stylers that ignore it.

        Returns
        -------
        (Tensor, Tensor or None)
            Content as float on the styler's device; style expanded to ``B``.

        Raises
        ------
        ValueError
            On wrong ranks, channel counts, dtypes or batch sizes.
        """
        weights = self._first_tensor()  # a styler without weights runs where its input is
        device = weights.device if weights is not None else content.device
        content = _check_image_batch(content, "content").to(device)
        if style is None:
            if self.uses_style_image:
                raise ValueError(f"styler {self.name!r} needs a style image")
            return content, None
        style = _check_image_batch(style, "style").to(device)
        if style.shape[0] == 1 and content.shape[0] > 1:
            style = style.expand(content.shape[0], -1, -1, -1)
        elif style.shape[0] != content.shape[0]:
            raise ValueError(
                f"style batch ({style.shape[0]}) must be 1 or match "
                f"content batch ({content.shape[0]})"
            )
        return content, style


def _check_image_batch(x: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} must be a [B, 3, H, W] tensor, got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{what} must be floating point in 0..1, got {x.dtype}")
    if x.shape[0] == 0 or min(x.shape[2:]) < 1:
        raise ValueError(f"{what} is empty: shape {tuple(x.shape)}")
    return x


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad ``x`` on the bottom/right to a multiple of ``multiple``.

    Networks that downsample by ``multiple`` and upsample back return a larger
    image otherwise; crop the result with the returned original size.

    Examples
    --------
    >>> import torch
    >>> y, (h, w) = pad_to_multiple(torch.zeros(1, 3, 5, 8), 4)
    >>> tuple(y.shape), h, w
    ((1, 3, 8, 8), 5, 8)
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        # reflection needs pad < size; replicate covers tiny images
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def resize_max_side(x: torch.Tensor, max_side: int | None) -> torch.Tensor:
    """Downscale ``[B, 3, H, W]`` with antialiasing so that max(H, W) <= ``max_side``.

    Examples
    --------
    >>> import torch
    >>> tuple(resize_max_side(torch.zeros(1, 3, 100, 50), 20).shape)
    (1, 3, 20, 10)
    """
    h, w = x.shape[-2:]
    if not max_side or max(h, w) <= max_side:
        return x
    scale = max_side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
