"""Contract tests over every name in each registry: a model, encoder or styler added
to a registry (built in or installed) is tested here without editing this file.

Per-name options only make a component fast or point it at test weights.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from recsys.cf import CF_MODELS, Recommender
from recsys.embedding_store import EmbeddingStore
from recsys.encoders import ENCODERS, create_encoder
from recsys.interactions import Interactions
from stylers.registry import STYLERS, create_styler

torch.set_num_threads(2)

CF_OPTIONS = {  # small and seeded: each fits in well under a second
    "als": {"factors": 4, "iterations": 5},
    "bpr": {"factors": 4, "iterations": 20},
    "bpr-uniform": {"factors": 4, "iterations": 5},
    "lmf": {"factors": 4, "iterations": 5},
}


def encoder_options(name: str, request: pytest.FixtureRequest) -> dict:
    if name == "openclip":
        return {"model": request.getfixturevalue("tiny_clip"), "allow_random": True}
    return {}


def styler_options(name: str, request: pytest.FixtureRequest) -> dict:
    if name == "fast":
        return {"weights": request.getfixturevalue("weights_dir") / "fast_style" / "mosaic.pth"}
    if name == "wct":
        return {"weights_dir": request.getfixturevalue("weights_dir") / "vgg19_normalised_partial",
                "levels": [1]}
    if name == "gatys":
        return {"loss_net": "efficientnet", "steps": 2, "style_size": 64}
    return {}


@pytest.fixture(scope="module")
def log() -> Interactions:
    """30 users × 20 items, 6 random purchases each (every item bought by someone)."""
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{i}") for u in range(30) for i in rng.choice(20, 6, replace=False)]
    rows += [(f"u{i}", f"i{i}") for i in range(20)]
    return Interactions.from_frame(pd.DataFrame(rows, columns=["user_id", "item_id"]))


# --------------------------------------------------------------------------- CF models


@pytest.mark.parametrize("name", CF_MODELS.load_all())
def test_cf_model_contract(name, log, tmp_path):
    model = CF_MODELS.create(name, **CF_OPTIONS.get(name, {}))
    assert model.fit(log) is model and model.name == name
    identity = json.loads(json.dumps(model.identity()))
    assert identity == {"name": name, "params": model.params}

    users = ["u0", "u5", "u29"]
    items, scores = model.recommend(users, k=5)
    assert items.shape == scores.shape == (3, 5)
    assert np.all(np.diff(scores, axis=1) <= 0)  # best first
    for user, row in zip(users, items, strict=True):
        assert not set(row) & set(log.user_history(user)["item_id"])  # seen items dropped

    # fold-in: a user unseen at fit time, scored from their history alone
    history = Interactions.from_frame(pd.DataFrame(
        {"user_id": ["new"] * 3, "item_id": ["i1", "i2", "i3"]}))
    new_items, new_scores = model.recommend(["new"], k=5, history=history)
    assert np.isfinite(new_scores).all() and not {"i1", "i2", "i3"} & set(new_items[0])

    loaded = Recommender.load(model.save(tmp_path / name))
    assert loaded.identity() == model.identity()
    np.testing.assert_array_equal(loaded.score(users), model.score(users))


# --------------------------------------------------------------------------- encoders


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list:
    folder = tmp_path_factory.mktemp("contract-images")
    paths = []
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        image = Image.new("RGB", (48, 64), colour)
        image.paste((250, 250, 250), (8, 8 + 8 * i, 30, 40 + 8 * i))
        paths.append(folder / f"{i}.png")
        image.save(paths[-1])
    return paths


@pytest.mark.parametrize("name", ENCODERS.load_all())
def test_encoder_contract(name, images, request):
    options = {"device": "cpu", "num_workers": 0, **encoder_options(name, request)}
    encoder = create_encoder(name, **options)
    again = create_encoder(name, **options)
    assert encoder.encoder_id == again.encoder_id  # stable: same options, same id
    identity = json.loads(json.dumps(encoder.identity()))
    assert identity["params"] == encoder.params and encoder.encoder_id.startswith(
        identity["name"] + "(") and encoder.encoder_id.endswith("@" + identity["weights"])

    vectors = encoder.encode(images, progress=False)
    assert vectors.shape == (3, encoder.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(again.encode(images, progress=False), vectors, atol=1e-5)


def test_the_precomputed_lite0_store_is_still_found():
    """The encoder id (and so the store folder) of efficientnet-lite0 is unchanged by the
    move to ``params`` + ``identity()``: the 17k-image store stays valid."""
    encoder = create_encoder("efficientnet-lite0", device="cpu")
    assert encoder.encoder_id == ("efficientnet-lite0(fit=pad,image_size=224)"
                                  "@sha256:579344248a93e230")
    assert EmbeddingStore.folder_name(encoder.encoder_id) == "efficientnet-lite0-37dc4885443a"
    store = EmbeddingStore("/work/cache/embeddings", encoder.encoder_id)  # read-only
    if store.path_.is_dir():
        meta = json.loads((store.path_ / "encoder.json").read_text())
        assert meta["encoder_id"] == encoder.encoder_id


# --------------------------------------------------------------------------- stylers


@pytest.mark.parametrize("name", STYLERS.load_all())
def test_styler_contract(name, request):
    styler = create_styler(name, **styler_options(name, request))
    assert styler.name == name
    identity = json.loads(json.dumps(styler.identity()))
    assert identity == {"name": name, "version": styler.version, "params": styler.params}

    generator = torch.Generator().manual_seed(0)
    content = torch.rand(2, 3, 40, 56, generator=generator)
    style = torch.rand(1, 3, 48, 48, generator=generator)
    with torch.inference_mode():
        out = styler.stylize(content, style if styler.uses_style_image else None)
    assert out.shape == content.shape and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
