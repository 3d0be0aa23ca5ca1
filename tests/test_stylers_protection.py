"""Product protection: the foreground mask, ProtectedStyler, and measured product fidelity."""

from __future__ import annotations

import pytest
import torch

from ground.tensors import load_image
from stylers import ProtectedStyler, create_styler, foreground_mask
from stylers.base import Styler
from stylers.colorspace import rgb_to_yuv
from stylers.fidelity import product_fidelity, protection_study


def synthetic_product(
    h: int = 120, w: int = 90, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """An off-white, slightly vignetted, noisy photo of a shirt-like shape, and its true mask.

    The shape has a near-white printed patch inside it (must be filled as a hole).
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    image = (0.95 - 0.03 * (xx**2 + yy**2)).expand(3, h, w).clone()
    body = ((xx / 0.55) ** 2 + (yy / 0.7) ** 2 <= 1) | ((yy.abs() < 0.25) & (xx.abs() < 0.8))
    colour = torch.tensor([0.55, 0.35, 0.40]).view(3, 1, 1)
    image = torch.where(body, colour, image)
    patch = (xx.abs() < 0.2) & (yy.abs() < 0.2)
    image = torch.where(patch, torch.tensor(0.94).view(1, 1, 1), image)  # near-background print
    image = (image + 0.01 * torch.randn(3, h, w, generator=g)).clamp(0, 1)
    return image[None], body.float()[None, None]


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    return ((a & b).sum() / (a | b).sum()).item()


def test_mask_of_a_synthetic_product_on_white_has_high_iou():
    image, truth = synthetic_product()
    mask = foreground_mask(image)
    assert mask.shape == truth.shape and 0 <= mask.min() and mask.max() <= 1
    assert iou(mask, truth) > 0.95
    assert not torch.equal(mask, mask.round())  # soft edges
    no_fill = foreground_mask(image, fill_holes=False)
    assert iou(no_fill, truth) < iou(mask, truth)  # the print was a hole that got filled


def test_mask_is_resolution_independent_and_batched():
    small, truth_small = synthetic_product(60, 45, seed=1)
    big, truth_big = synthetic_product(240, 180, seed=2)
    assert iou(foreground_mask(small), truth_small) > 0.9
    assert iou(foreground_mask(big), truth_big) > 0.95
    both = foreground_mask(torch.cat([big, big.flip(-1)]))
    assert iou(both[1:], truth_big.flip(-1)) > 0.95


class Paint(Styler):
    """Replace everything with one colour (a styler whose effect is easy to see)."""

    name = "paint"
    uses_style_image = False

    def __init__(self, colour=(0.1, 0.6, 0.9)):
        super().__init__()
        self.colour = colour

    @property
    def params(self):
        return {"colour": list(self.colour)}

    def stylize(self, content, style):
        content, _ = self.check_inputs(content, style)
        return torch.tensor(self.colour).view(1, 3, 1, 1).expand_as(content).clone()


def test_protected_styler_styles_background_and_spares_the_product():
    image, truth = synthetic_product()
    inner = truth > 0.5
    inner_core = torch.nn.functional.max_pool2d(-truth, 9, 1, 4) < -0.5  # eroded product
    outer_core = torch.nn.functional.max_pool2d(truth, 9, 1, 4) < 0.5  # eroded background
    assert inner_core.any() and outer_core.any() and inner.any()

    spare = ProtectedStyler(Paint(), product_strength=0.0, preserve_color=False)
    out = spare.stylize(image, torch.zeros(1, 3, 8, 8))
    core = inner_core.expand_as(image)
    assert torch.allclose(out[core], image[core], atol=1e-3)
    painted = Paint().stylize(image, None)
    assert torch.allclose(out[outer_core.expand_as(image)], painted[outer_core.expand_as(image)])

    # luminance-only on the product: its chroma (U, V) stays the photo's
    keep = ProtectedStyler(Paint(), product_strength=1.0, preserve_color=True)
    yuv_out, yuv_in = rgb_to_yuv(keep.stylize(image, None)), rgb_to_yuv(image)
    core1 = inner_core[:, 0]
    assert torch.allclose(yuv_out[:, 1][core1], yuv_in[:, 1][core1], atol=0.02)
    assert torch.allclose(yuv_out[:, 2][core1], yuv_in[:, 2][core1], atol=0.02)
    assert not torch.allclose(yuv_out[:, 0][core1], yuv_in[:, 0][core1], atol=0.05)

    # global strength 0: nothing changes anywhere
    off = ProtectedStyler(Paint(), strength=0.0).stylize(image, None)
    assert torch.allclose(off, image, atol=1e-6)


def test_protected_styler_params_identify_inner_styler_and_options():
    a = ProtectedStyler(Paint((0, 0, 0)), product_strength=0.2)
    b = ProtectedStyler(Paint((1, 1, 1)), product_strength=0.2)
    c = ProtectedStyler(Paint((0, 0, 0)), product_strength=0.3)
    assert a.params != b.params and a.params != c.params
    assert a.params["styler"] == {"name": "paint", "version": 1, "params": {"colour": [0, 0, 0]}}
    assert a.name == "protected-paint"
    with pytest.raises(ValueError, match="product_strength"):
        ProtectedStyler(Paint(), product_strength=1.5)


def test_protection_raises_product_fidelity_on_hm_products(hm_dir, weights_dir, styles_dir):
    items = ["0554598066", "0633130016"]
    contents = torch.stack([load_image(hm_dir / "images" / i[:3] / f"{i}.jpg", 160) for i in items])
    style = load_image(styles_dir / "candy.jpg", 128)[None]
    styler = create_styler("fast", weights=weights_dir / "fast_style" / "candy.pth")
    result = protection_study(styler, contents, [style])
    assert result["on"].shape == (1, 2)
    assert (result["on"] > result["off"] + 0.05).all(), result
    assert torch.allclose(product_fidelity(contents, contents), torch.ones(2), atol=1e-5)
