"""Encoders: registry, EfficientNet-Lite0 (real weights), OpenCLIP (tiny config), Magenta style."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from doubles import ColourEncoder
from PIL import Image

from evaluation.bench_encoder import benchmark_encoder
from ground.images import ImageLoadError
from ground.registry import UnknownNameError
from recsys.encoders import (
    EfficientNetLite0Encoder,
    ImageEncoder,
    MissingWeightsError,
    OpenCLIPEncoder,
    available_encoders,
    create_encoder,
    register_encoder,
)

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def lite() -> EfficientNetLite0Encoder:
    return create_encoder("efficientnet-lite0", device="cpu", num_workers=1)


@pytest.fixture(scope="module")
def lite_style() -> EfficientNetLite0Encoder:
    return create_encoder("efficientnet-lite0-style", device="cpu", num_workers=1)


@pytest.fixture(scope="module")
def triplet(tmp_path_factory, hm_dir, styles_dir):
    """An H&M photo, a slightly resized re-encoded copy of it, a painting, another product."""
    folder = tmp_path_factory.mktemp("triplet")
    photo = sorted((hm_dir / "images" / "010").glob("*.jpg"))[0]
    other = sorted((hm_dir / "images" / "068").glob("*.jpg"))[3]
    copy = folder / "copy.png"
    with Image.open(photo) as image:
        image.convert("RGB").resize((200, 300), Image.BICUBIC).save(copy)
    return [photo, copy, styles_dir / "starry_night.jpg", other]


def _cos(vectors: np.ndarray) -> np.ndarray:
    return vectors @ vectors.T


# --------------------------------------------------------------------------- registry


def test_registry_lists_and_builds_presets(lite_style):
    assert {"efficientnet-lite0", "efficientnet-lite0-style", "openclip",
            "magenta-style"} <= set(available_encoders())
    assert lite_style.style_blocks == (0, 2, 4, 7) and lite_style.dim == 1600
    with pytest.raises(UnknownNameError, match="unknown encoder 'nope'.*efficientnet-lite0"):
        create_encoder("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("efficientnet-lite0")(OpenCLIPEncoder)


def test_encoder_ids_name_model_weights_and_config(lite, lite_style):
    assert lite.encoder_id.startswith("efficientnet-lite0(fit=pad,image_size=224)@sha256:")
    assert "style_blocks=[0,2,4,7],style_weight=3.0" in lite_style.encoder_id
    crop = create_encoder("efficientnet-lite0", device="cpu", fit="crop")
    assert len({lite.encoder_id, lite_style.encoder_id, crop.encoder_id}) == 3
    assert lite.identity()["weights"] == lite_style.identity()["weights"]


# --------------------------------------------------------------------------- EfficientNet


def test_lite_backbone_matches_the_reference_model(lite):
    from efficientnet_lite_pytorch import EfficientNet

    # a small input size keeps it fast; TF-SAME paddings are computed for it on both sides
    small = EfficientNetLite0Encoder(image_size=96, device="cpu")
    reference = EfficientNet.from_name("efficientnet-lite0", image_size=96)
    reference.load_state_dict(torch.load(lite.weights_path_, weights_only=True))
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = reference.eval().extract_features(x).mean((2, 3))
        pooled, _ = small.model_(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(pooled, expected, atol=1e-4, rtol=1e-4)


def test_lite_embeddings_normalised_deterministic_and_meaningful(lite, triplet):
    first = lite.encode(triplet, batch_size=2, progress=False)
    again = lite.encode(triplet[::-1], batch_size=4, progress=False)[::-1]
    assert first.shape == (4, 1280) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(again, first, atol=1e-5)  # independent of batch composition
    sims = _cos(first)
    assert sims[0, 1] > 0.9  # resized copy
    assert sims[0, 1] > sims[0, 3] > sims[0, 2]  # copy > another product > a painting


def test_style_variant_is_the_documented_weighted_concatenation(lite, lite_style, triplet):
    pooled = lite.encode(triplet, progress=False)
    styled = lite_style.encode(triplet, progress=False)
    np.testing.assert_allclose(np.linalg.norm(styled, axis=1), 1.0, atol=1e-5)
    total = np.sqrt(1 + 3.0**2)
    # first 1280 values: the pooled embedding, scaled by 1/total
    np.testing.assert_allclose(styled[:, :1280] * total, pooled, atol=1e-4)
    # then one L2-normalised [mean, std] block per tap, each weighted 3/sqrt(4)
    start = 1280
    for channels in (16, 24, 40, 80):
        part = styled[:, start:start + 2 * channels]
        np.testing.assert_allclose(np.linalg.norm(part, axis=1), 1.5 / total, atol=1e-4)
        assert (part[:, channels:] >= 0).all()  # the std half
        start += 2 * channels
    assert start == 1600
    sims = _cos(styled)
    assert sims[0, 1] > 0.95 and sims[0, 1] > sims[0, 2]


def test_pil_images_and_failures(lite, tmp_path):
    image = Image.new("LA", (64, 96), (200, 30))
    missing = tmp_path / "missing.jpg"
    batches = list(lite.encode_batches([missing, image], batch_size=2, progress=False))
    assert batches[0].indices == [1] and list(batches[0].failures) == [0]
    assert batches[0].vectors.shape == (1, 1280)
    with pytest.raises(ImageLoadError, match="missing.jpg"):
        lite.encode([missing], progress=False)


def test_benchmark_reports_both_rates(tmp_path):
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.jpg")
        Image.new("RGB", (24, 36), (i * 40, 90, 200)).save(paths[-1])
    result = benchmark_encoder(ColourEncoder(), paths, batch_size=2, rounds=2)
    assert result["images"] == 4 and result["batch_size"] == 2
    assert result["bare_ips"] > 0 and result["pipeline_ips"] > 0
    assert result["ratio"] == pytest.approx(result["pipeline_ips"] / result["bare_ips"])


def test_invalid_options():
    with pytest.raises(ValueError, match="style_blocks"):
        EfficientNetLite0Encoder(style_blocks=(16,), device="cpu")
    with pytest.raises(ValueError, match="fit"):
        EfficientNetLite0Encoder(fit="zoom", device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(lite, tmp_path):
    images = [Image.new("RGB", (224, 336), (i * 50, 20, 90)) for i in range(3)]
    on_gpu = create_encoder("efficientnet-lite0", device="cuda").encode(images, progress=False)
    np.testing.assert_allclose(on_gpu, lite.encode(images, progress=False), atol=1e-3)


# --------------------------------------------------------------------------- OpenCLIP

def test_openclip_refuses_silent_random_weights(tiny_clip, tmp_path):
    with pytest.raises(MissingWeightsError, match="checkpoint=<local file>.*allow_random=True"):
        OpenCLIPEncoder(tiny_clip, device="cpu")
    with pytest.raises(MissingWeightsError, match=r"nothere\.safetensors.*checkpoint= a local"):
        OpenCLIPEncoder(tiny_clip, checkpoint=tmp_path / "nothere.safetensors", device="cpu")


def test_openclip_pretrained_tag_offline_error_names_the_fix(tiny_clip, monkeypatch):
    import open_clip

    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        raise AssertionError("unexpected")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", offline)
    with pytest.raises(MissingWeightsError, match="Offline, pass checkpoint=<local file>"):
        OpenCLIPEncoder(tiny_clip, pretrained="laion2b_s34b_b79k", device="cpu")


def test_openclip_checkpoint_round_trip_offline(tiny_clip, tmp_path):
    from safetensors.torch import save_file

    images = [Image.new("RGB", (40, 60), (i * 60, 100, 30)) for i in range(3)]
    random = OpenCLIPEncoder(tiny_clip, allow_random=True, seed=3, device="cpu", num_workers=0)
    assert random.dim == 32 and random.encoder_id.endswith("@random:seed=3")
    expected = random.encode(images, progress=False)
    np.testing.assert_allclose(np.linalg.norm(expected, axis=1), 1.0, atol=1e-5)
    seeded_again = OpenCLIPEncoder(tiny_clip, allow_random=True, seed=3, device="cpu")
    np.testing.assert_array_equal(seeded_again.encode(images, progress=False), expected)

    for suffix in (".safetensors", ".pt"):
        checkpoint = tmp_path / f"tiny{suffix}"
        state = {k: v.contiguous() for k, v in random.model_.state_dict().items()}
        if suffix == ".pt":
            torch.save(state, checkpoint)
        else:
            save_file(state, checkpoint)
        loaded = OpenCLIPEncoder(tiny_clip, checkpoint=checkpoint, device="cpu")
        assert "@sha256:" in loaded.encoder_id and loaded.encoder_id != random.encoder_id
        np.testing.assert_allclose(loaded.encode(images, progress=False), expected, atol=1e-6)

    other = OpenCLIPEncoder(tiny_clip, allow_random=True, seed=4, device="cpu")
    assert not np.allclose(other.encode(images, progress=False), expected, atol=1e-3)


def test_openclip_text_and_describe(tiny_clip):
    encoder = OpenCLIPEncoder(tiny_clip, allow_random=True, device="cpu")
    labels = ("minimalist", "vintage", "sporty", "edgy")
    text = encoder.encode_text(labels, encoder.prompt)
    assert text.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    # a taste vector equal to a label's own text embedding names that label first
    described = encoder.describe(np.stack([text[2], 5 * text[0]]), labels=labels, top=2)
    assert [d[0][0] for d in described] == ["sporty", "minimalist"]
    assert described[0][0][1] == pytest.approx(1.0, abs=1e-5)
    assert described[0][0][1] >= described[0][1][1]
    with pytest.raises(ValueError, match="dimension 5"):
        encoder.describe(np.ones(5))


# --------------------------------------------------------------------------- Magenta


def test_magenta_style_vectors(triplet, styles_dir):
    encoder = create_encoder("magenta-style", device="cpu", num_workers=1)
    assert encoder.dim == 100 and encoder.encoder_id.startswith("magenta-style(fit=crop")
    with Image.open(styles_dir / "starry_night.jpg") as image:
        half = image.convert("RGB").resize((image.width // 2, image.height // 2))
    vectors = encoder.encode([triplet[2], half, triplet[0], styles_dir / "mondrian.jpg"],
                             progress=False)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = _cos(vectors)
    assert sims[0, 1] > 0.95 and sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[0, 3]


def test_base_class_is_abstract_enough():
    with pytest.raises(NotImplementedError):
        ImageEncoder(device="cpu").encoder_id  # noqa: B018
