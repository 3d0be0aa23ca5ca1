"""CTR proxies: position-based click model, style-affinity lift, fidelity guard."""

from __future__ import annotations

import math

import numpy as np
import pytest
from doubles import ColourEncoder
from PIL import Image

from evaluation.ctr import (
    click_probabilities,
    cosine,
    encoder_identity,
    examination_probabilities,
    expected_clicks,
    fidelity,
    masked_image,
    render_scores,
    slate_ctr,
    style_affinity_lift,
)


def test_examination_models():
    assert np.allclose(examination_probabilities(3), [1, 1 / math.log2(3), 0.5])
    assert np.allclose(examination_probabilities(3, "reciprocal"), [1, 1 / 2, 1 / 3])
    assert examination_probabilities(2, [0.7, 0.2, 0.1]).tolist() == [0.7, 0.2]
    with pytest.raises(ValueError, match="at least 3"):
        examination_probabilities(3, [0.5, 0.1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        examination_probabilities(1, [1.5])
    with pytest.raises(ValueError, match="position model"):
        examination_probabilities(2, "cascade")


def test_expected_clicks_and_slate_ctr_hand_computed():
    hits = np.array([[True, False, True], [False, False, False]])
    e = np.array([0.8, 0.5, 0.25])
    rho = click_probabilities(hits, p_relevant=0.5, p_irrelevant=0.1)
    assert np.allclose(expected_clicks(rho, e), [0.8 * 0.5 + 0.5 * 0.1 + 0.25 * 0.5,
                                                 0.8 * 0.1 + 0.5 * 0.1 + 0.25 * 0.1])
    no_click = (1 - 0.4) * (1 - 0.05) * (1 - 0.125)
    assert slate_ctr(rho, e)[0] == pytest.approx(1 - no_click)
    # binary relevance with the log2 examination model is DCG@k
    binary = click_probabilities(hits)
    dcg = 1 + 1 / math.log2(4)
    assert expected_clicks(binary, examination_probabilities(3))[0] == pytest.approx(dcg)
    with pytest.raises(ValueError, match="slate length"):
        expected_clicks(binary, e[:2])


def test_lift_and_fidelity_on_known_vectors():
    taste = np.array([0.0, 1.0])
    original = np.array([[1.0, 0.0], [0.0, 1.0]])
    render = np.array([[1.0, 1.0], [0.0, 2.0]])
    lift = style_affinity_lift(taste, render, original)
    assert np.allclose(lift, [1 / math.sqrt(2) - 0, 0.0])
    assert np.allclose(fidelity(render, original), [1 / math.sqrt(2), 1.0])
    assert np.allclose(cosine(render, render), 1.0)
    with pytest.raises(ValueError, match="pair up"):
        fidelity(render, original[:1])
    with pytest.raises(ValueError, match="zero vector"):
        cosine(np.zeros(2), taste)


def test_masked_image_fills_and_crops():
    img = Image.new("RGB", (6, 4), (200, 0, 0))
    mask = np.zeros((4, 6), dtype=bool)
    mask[1:3, 2:5] = True
    mask[1, 2] = False
    out = masked_image(img, mask, fill=(0, 0, 255))
    assert out.size == (3, 2)
    pixels = np.asarray(out)
    assert tuple(pixels[0, 0]) == (0, 0, 255) and tuple(pixels[1, 1]) == (200, 0, 0)
    # a mask at another resolution is resized to the image
    assert masked_image(img, np.ones((2, 3)), crop=False).size == (6, 4)
    assert masked_image(img, None) is img
    with pytest.raises(ValueError, match="empty"):
        masked_image(img, np.zeros((4, 6)))


def test_render_scores_from_paths(tmp_path):
    def save(name, colour, box=None):
        img = Image.new("RGB", (32, 32), colour)
        if box is not None:
            img.paste((255, 0, 0), box)
        path = tmp_path / f"{name}.png"
        img.save(path)
        return path

    original = save("orig", (250, 250, 250), box=(8, 8, 24, 24))  # red product on white
    render = save("render", (0, 0, 250), box=(8, 8, 24, 24))  # same product, blue background
    history = [save("h1", (0, 0, 200)), save("h2", (20, 20, 240))]  # a taste for blue
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:24, 8:24] = True
    enc = ColourEncoder()
    out = render_scores(enc, [render], [original], history_paths=[history], masks=[mask])
    assert out["lift"][0] > 0.3  # the blue render is closer to the blue taste
    assert out["fidelity"][0] == pytest.approx(1.0)  # the product region is untouched
    whole = render_scores(enc, [render], [original])
    assert whole["fidelity"][0] < 0.9 and "lift" not in whole
    with pytest.raises(ValueError, match="chose the styles"):
        render_scores(enc, [render], [original], chooser="test-colour(grid=2)@other")
    assert encoder_identity(enc) == "test-colour(grid=1)@none"
