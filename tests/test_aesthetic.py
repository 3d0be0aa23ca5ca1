"""Aesthetic space, style library, matcher, personal styles, adaptive renders, style-fit judges."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from evaluation.style_fit import (
    Judges,
    behaviour_lift,
    discrimination,
    judge_as_matcher,
    label_lab,
    palette_distance,
    percentiles,
    split_halves,
    stability,
)
from recsys.aesthetic import (
    BLOCKS,
    AestheticEncoder,
    AestheticMatcher,
    AestheticSpace,
    StyleLibrary,
    capacity_prices,
    dominant_colours,
    nearest_colour_similarity,
    palette_histogram,
    palette_presence,
)
from stylers.adaptive import AdaptiveStyler, plain_background
from stylers.base import Styler
from stylers.colorspace import rgb_to_lab

DIM = sum(AestheticEncoder.block_sizes.values())


def _product(rgb: tuple[int, int, int], size=(96, 144)) -> Image.Image:
    """A coloured garment-like rectangle on a white backdrop."""
    img = Image.new("RGB", size, (255, 255, 255))
    img.paste(Image.new("RGB", (size[0] // 2, size[1] // 2), rgb), (size[0] // 4, size[1] // 4))
    return img


def test_palette_histogram_peaks_at_the_colour_and_ignores_masked_pixels():
    red = torch.tensor([0.85, 0.1, 0.1]).view(1, 3, 1, 1).expand(1, 3, 8, 8).clone()
    red[..., :, :4] = 1.0  # left half white, masked out
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:] = 1
    hist = palette_histogram(rgb_to_lab(red), mask)[0].reshape(5, 7, 7)
    l_bin, a_bin, b_bin = np.unravel_index(int(hist.argmax()), hist.shape)
    # red: L ~ 47 (bin 2), a ~ +64 and b ~ +50 clamp towards the top a/b bins
    assert (l_bin, a_bin) == (2, 6) and b_bin >= 5
    assert hist[4, 3, 3] < 1e-3  # the white half left no mass at L ~ 90, a = b = 0


@pytest.fixture(scope="module")
def encoder():
    return AestheticEncoder(device="cpu", num_workers=0)


def test_encoder_describes_the_product_not_the_backdrop(encoder):
    on_white = _product((200, 30, 30))
    full = Image.new("RGB", (96, 144), (200, 30, 30))
    green = _product((30, 160, 60))
    v = encoder.encode([on_white, full, green], progress=False)
    assert v.shape == (3, DIM) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    palette = AestheticEncoder.split(v)["palette"]
    assert palette[0] @ palette[1] > 0.9  # same colour: the white backdrop is not counted
    assert palette[0] @ palette[2] < 0.2


def test_space_centres_each_domain_and_weights_blocks():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(40, DIM)) + 3.0
    styles = rng.normal(size=(10, DIM)) - 3.0
    space = AestheticSpace({"palette": 0, "texture": 0.5, "style": 0.5}).fit(items, styles)
    # after centring, texture and style of the two domains are comparable despite the
    # offset between them
    zi, zs = space.transform(items, "items"), space.transform(styles, "styles")
    assert abs(float(zi.mean(0) @ zs.mean(0))) < 0.2
    only_palette = AestheticSpace({"texture": 0, "style": 0}).fit(items, styles)
    out = only_palette.transform(items[:3], "items")
    assert np.allclose(out[:, 245:], 0) and np.allclose(np.linalg.norm(out, axis=1), 1)
    # the palette is compared as it is (Bhattacharyya of square-rooted histograms)
    raw = items[:3, :245] / np.linalg.norm(items[:3, :245], axis=1, keepdims=True)
    assert np.allclose(out[:, :245], raw, atol=1e-6)
    with pytest.raises(ValueError, match="block_weights"):
        AestheticSpace({"colour": 1}).fit(items, styles)


BLACK, WHITE, RED, GREY = 24, 220, 34, 122  # bins: L 10 / 90 at a = b = 0; L 10, a 60; L 50


def _descriptors(*palettes):
    """Encoder-like rows whose palette block is the square root of the given histograms
    ({bin: mass}) and whose texture and style blocks are random."""
    rng = np.random.default_rng(7)
    rows = rng.normal(size=(len(palettes), DIM))
    rows[:, :245] = 0.0
    for row, palette in zip(rows, palettes, strict=True):
        for i, mass in palette.items():
            row[i] = np.sqrt(mass)
    return rows


def _own_share(l_bin, a_bin=3, b_bin=3):
    """The share of a pixel at a bin's centre that its Gaussian (one bin wide) leaves there:
    ``1 / sum_j exp(-(j - bin)^2 / 2)`` over each axis's bins (5 for L, 7 for a and b)."""
    share = 1.0
    for n, at in ((5, l_bin), (7, a_bin), (7, b_bin)):
        share /= np.exp(-0.5 * (np.arange(n) - at) ** 2).sum()
    return share


def test_presence_counts_a_colour_covering_two_percent_of_the_reference():
    grey = _own_share(2)  # 0.0641
    hist = np.zeros((3, 245))
    hist[0, GREY] = 0.02 * grey  # 2% of the reference at grey's centre: present
    hist[1, GREY] = 0.01 * grey  # 1%: half present
    hist[2, GREY] = 0.3  # far more: still 1
    assert palette_presence(hist)[:, GREY] == pytest.approx([1.0, 0.5, 1.0], abs=1e-6)
    assert palette_presence(hist)[:, BLACK].tolist() == [0.0, 0.0, 0.0]
    black = np.zeros((1, 245))
    black[0, BLACK] = 0.01 * _own_share(0)  # 0.0908: L 10 is the grid's edge
    assert palette_presence(black)[0, BLACK] == pytest.approx(0.5, abs=1e-6)


def test_coverage_prefers_a_reference_containing_both_colours_to_matching_proportions(
        tmp_path):
    library = StyleLibrary.from_folder(_library(tmp_path, n=3))
    # the shopper wears black and white; s0 shows both among much red, s1 matches the
    # proportions (half black) but has grey for white, s2 a trace (1%) of black in red
    shopper = _descriptors({BLACK: 0.5, WHITE: 0.5})
    trace = 0.01 * _own_share(0)
    styles = _descriptors({BLACK: 0.1, WHITE: 0.1, RED: 0.8}, {BLACK: 0.5, GREY: 0.5},
                          {BLACK: trace, RED: 1 - trace})
    only_palette = {"palette": 1, "texture": 0, "style": 0}
    bhatt = AestheticMatcher(only_palette, hubness=None, palette="bhattacharyya").fit(
        library, styles, shopper)
    ids, scores = bhatt.match(bhatt.item_vectors(shopper), 3)
    # Bhattacharyya: s1 sqrt(.5 .5) = .5 beats s0 2 sqrt(.5 .1) = .447
    assert ids[0, :2].tolist() == ["s1", "s0"]
    assert scores[0, :2] == pytest.approx([0.5, 2 * np.sqrt(0.05)], abs=1e-5)
    cover = AestheticMatcher(only_palette, hubness=None, palette="coverage").fit(
        library, styles, shopper)
    ids, scores = cover.match(cover.item_vectors(shopper), 3)
    # coverage: s0 holds both (.5 + .5), s1 black only (.5), s2 half of black (.5 x .5)
    assert ids[0].tolist() == ["s0", "s1", "s2"]
    assert scores[0] == pytest.approx([1.0, 0.5, 0.25], abs=1e-5)
    # saved and loaded (with the default hubness correction, learned on the items)
    items = _descriptors({BLACK: 0.5, WHITE: 0.5}, {RED: 1.0}, {GREY: 0.7, WHITE: 0.3},
                         {BLACK: 1.0})
    fitted = AestheticMatcher(palette="coverage").fit(library, styles, items)
    users = fitted.item_vectors(items)
    loaded = AestheticMatcher.load(fitted.save(tmp_path / "matcher"))
    assert loaded.palette == "coverage" and loaded.get_params() == fitted.get_params()
    assert np.array_equal(loaded.item_vectors(items), users)
    for a, b in zip(loaded.match(users, 3), fitted.match(users, 3), strict=True):
        assert np.array_equal(a, b)


def test_coverage_transform_is_asymmetric_and_keeps_item_rows_unit():
    items = _descriptors({BLACK: 0.5, WHITE: 0.5}, {RED: 1.0})
    styles = _descriptors({BLACK: 0.1, WHITE: 0.1, RED: 0.8}, {BLACK: 0.5, GREY: 0.5})
    weights = {"palette": 2, "texture": 1, "style": 1}  # palette 2/4 of the score
    space = AestheticSpace(weights, palette="coverage").fit(items, styles)
    zi, zs = space.transform(items, "items"), space.transform(styles, "styles")
    assert zi.shape == zs.shape == (2, DIM + 1)
    # items: sqrt(1/2) x the histogram, then sqrt(1/2 (1 - |p|^2)) to keep the norm 1
    assert zi[0, [BLACK, WHITE]] == pytest.approx([np.sqrt(0.5) * 0.5] * 2, abs=1e-6)
    assert zi[:, -1] == pytest.approx(np.sqrt(0.5 * np.array([0.5, 0.0])), abs=1e-6)
    assert np.linalg.norm(zi, axis=1) == pytest.approx([1.0, 1.0], abs=1e-6)
    # references: sqrt(1/2) x the presence (clipped at 1), nothing in the last column
    assert zs[0, [BLACK, WHITE, RED, GREY]] == pytest.approx([np.sqrt(0.5)] * 3 + [0],
                                                             abs=1e-6)
    assert zs[:, -1].tolist() == [0.0, 0.0]
    # the score: 1/2 coverage + 1/4 texture cosine + 1/4 style cosine
    plain = AestheticSpace(weights).fit(items, styles)
    bi, bs = plain.transform(items, "items"), plain.transform(styles, "styles")
    others = bi[:, 245:] @ bs[:, 245:].T  # the texture and style terms, as before
    coverage = np.array([[1.0, 0.5], [1.0, 0.0]])
    assert zi @ zs.T == pytest.approx(0.5 * coverage + others, abs=1e-5)
    # a shopper's mean of the two items holds the mixture of their palettes (a quarter
    # black, a quarter white, half red): s0 covers all of it, s1 the black quarter
    mean = zi.mean(0)
    mixture = np.zeros(245)
    mixture[[BLACK, WHITE, RED]] = 0.25, 0.25, 0.5
    assert mean[:245] == pytest.approx(np.sqrt(0.5) * mixture, abs=1e-6)
    assert mean @ zs.T == pytest.approx(0.5 * np.array([1.0, 0.25]) + others.mean(0), abs=1e-5)
    with pytest.raises(ValueError, match="palette must be one of"):
        AestheticSpace(palette="hellinger").fit(items, styles)
    with pytest.raises(ValueError, match="standardise_palette"):
        AestheticSpace(palette="coverage", standardise_palette=True).fit(items, styles)


# CIEDE2000 between neutral greys is |dL| / S_L, S_L = 1 + 0.015 (Lm - 50)^2 /
# sqrt(20 + (Lm - 50)^2): L 50 to L 10 (or 90): Lm 30, S_L = 1 + 6 / sqrt(420)
GREY_TO_BLACK = 40 / (1 + 6 / np.sqrt(420))  # 30.94


def test_nearest_colour_similarity_of_a_toy_palette():
    colours = np.array([[[10.0, 0, 0], [90.0, 0, 0]],  # black and white bin centres
                        [[50.0, 0, 0], [50.0, 0, 0]]])  # grey only
    v = nearest_colour_similarity(colours)
    assert v.shape == (2, 245)
    assert v[0, [BLACK, WHITE]].tolist() == [0.0, 0.0]
    assert v[0, GREY] == pytest.approx(-GREY_TO_BLACK / 100, abs=1e-6)  # both equally far
    assert v[1, [BLACK, WHITE, GREY]] == pytest.approx(
        [-GREY_TO_BLACK / 100, -GREY_TO_BLACK / 100, 0.0], abs=1e-6)
    assert (v <= 0).all() and v.min() > -1.5


def test_nearest_colour_transform_scores_minus_the_mean_distance():
    items = _descriptors({BLACK: 0.5, WHITE: 0.5}, {GREY: 1.0})
    styles = _descriptors({BLACK: 0.5, WHITE: 0.5}, {GREY: 1.0})
    colours = np.array([[[10.0, 0, 0], [90.0, 0, 0]], [[50.0, 0, 0], [50.0, 0, 0]]])
    weights = {"palette": 2, "texture": 1, "style": 1}  # palette 2/4 of the score
    space = AestheticSpace(weights, palette="nearest-colour").fit(items, styles)
    zi, zs = space.transform(items, "items"), space.transform(styles, "styles", colours)
    assert zi.shape == zs.shape == (2, DIM + 1) and zs[:, -1].tolist() == [0.0, 0.0]
    assert np.linalg.norm(zi, axis=1) == pytest.approx([1.0, 1.0], abs=1e-6)
    plain = AestheticSpace(weights).fit(items, styles)
    bi, bs = plain.transform(items, "items"), plain.transform(styles, "styles")
    others = bi[:, 245:] @ bs[:, 245:].T
    # black-and-white shopper: 0 to the black-and-white reference, -30.94 / 100 to grey;
    # the grey shopper: the reverse
    distance = np.array([[0.0, GREY_TO_BLACK], [GREY_TO_BLACK, 0.0]]) / 100
    assert zi @ zs.T == pytest.approx(-0.5 * distance + others, abs=1e-5)
    with pytest.raises(ValueError, match="dominant colours"):
        space.transform(styles, "styles")
    with pytest.raises(ValueError, match="standardise_palette"):
        AestheticSpace(palette="nearest-colour", standardise_palette=True).fit(items, styles)


def test_space_fits_and_transforms_a_catalog_in_chunks_as_a_whole(monkeypatch):
    import recsys.aesthetic as aesthetic

    rng = np.random.default_rng(3)
    items, styles = rng.random((50, DIM)), rng.random((10, DIM)) + 1.0
    colours = rng.uniform(0, 80, (10, 5, 3))
    whole = AestheticSpace(palette="nearest-colour").fit(items, styles)
    monkeypatch.setattr(aesthetic, "_CHUNK", 8)  # 50 items in 7 chunks, 10 styles in 2
    chunked = AestheticSpace(palette="nearest-colour").fit(items, styles)
    assert chunked.scale_ == pytest.approx(whole.scale_, rel=1e-12)
    for domain, extra in (("items", None), ("styles", colours)):
        assert chunked.means_[domain] == pytest.approx(whole.means_[domain], rel=1e-12)
        assert np.allclose(chunked.transform(items if domain == "items" else styles, domain,
                                             extra),
                           whole.transform(items if domain == "items" else styles, domain,
                                           extra), atol=1e-6)


def test_palette_power_sharpens_items_towards_their_dominant_colour():
    items = _descriptors({BLACK: 0.75, WHITE: 0.25}, {GREY: 1.0})
    styles = _descriptors({BLACK: 0.5, WHITE: 0.5}, {GREY: 1.0})
    colours = np.array([[[10.0, 0, 0], [90.0, 0, 0]], [[50.0, 0, 0], [50.0, 0, 0]]])
    weights = {"palette": 1, "texture": 0, "style": 0}
    plain = AestheticSpace(weights, palette="nearest-colour").fit(items, styles)
    sharp = AestheticSpace(weights, palette="nearest-colour", palette_power=2).fit(items, styles)
    # 3:1 black to white becomes 9:1; references and other items' single colour unchanged
    assert plain.transform(items, "items")[0, [BLACK, WHITE]] == pytest.approx([.75, .25])
    assert sharp.transform(items, "items")[0, [BLACK, WHITE]] == pytest.approx([.9, .1])
    assert sharp.transform(items, "items")[1, GREY] == pytest.approx(1.0)
    assert np.array_equal(sharp.transform(styles, "styles", colours),
                          plain.transform(styles, "styles", colours))
    with pytest.raises(ValueError, match="palette_power"):
        AestheticSpace(palette_power=0).fit(items, styles)
    with pytest.raises(ValueError, match="palette_power"):
        AestheticSpace(standardise_palette=True, palette_power=2).fit(items, styles)


STRIPES = {"both": [(0, 0, 0), (255, 255, 255), (200, 30, 30), (30, 160, 60), (40, 60, 200)],
           "neither": [(200, 30, 30), (30, 160, 60), (40, 60, 200), (230, 200, 40),
                       (180, 60, 170)]}


def _stripes(colours):
    img = Image.new("RGB", (160, 160))
    for i, rgb in enumerate(colours):
        img.paste(Image.new("RGB", (32, 160), rgb), (32 * i, 0))
    return img


def test_dominant_colours_are_read_again_when_the_image_changes(tmp_path):
    from skimage.color import deltaE_ciede2000, rgb2lab

    path = tmp_path / "ref.png"
    _stripes(STRIPES["both"]).save(path)
    first = dominant_colours([path])
    np.testing.assert_array_equal(dominant_colours([path]), first)  # kept, not recomputed
    _product((200, 30, 30)).save(path)
    os.utime(path, ns=(1, 1))  # a new stamp even within the clock's resolution
    red = rgb2lab(np.array([[[200, 30, 30]]]) / 255)[0]
    assert np.sort(deltaE_ciede2000(dominant_colours([path])[0], red))[:4].max() < 5.0
    assert np.sort(deltaE_ciede2000(first[0], red))[:4].max() > 5.0  # stripes: one red


def test_nearest_colour_prefers_the_reference_containing_the_shoppers_colours(tmp_path):
    from skimage.color import deltaE_ciede2000, rgb2lab

    folder = tmp_path / "styles"
    folder.mkdir()
    for name, colours in STRIPES.items():
        _stripes(colours).save(folder / f"{name}.png")
    _product((200, 30, 30)).save(folder / "product.png")
    library = StyleLibrary.from_folder(folder)
    found = dominant_colours(library.paths)
    assert found.shape == (3, 5, 3)
    # the five stripes are the five colours (the reference: scikit-image's Lab of each),
    # within 3 units: at 64 px the stripes' borders mix and pull the centres a little
    for row, name in enumerate(library.ids[:2]):
        truth = rgb2lab(np.array(STRIPES[name], np.float64)[None] / 255)[0]
        assert deltaE_ciede2000(truth[:, None], found[row][None]).min(1).max() < 3.0
    # a product on white: its colour, not the backdrop's; with one colour for five
    # clusters, the blended pixels at the mask's edge take one of them
    red = rgb2lab(np.array([[[200, 30, 30]]]) / 255)[0]
    assert np.sort(deltaE_ciede2000(found[2], red))[:4].max() < 5.0
    # a shopper who wears black and white: "both" holds them among others, "neither"
    # holds neither; only the first colour distances count, not the artwork's proportions
    shopper = _descriptors({BLACK: 0.5, WHITE: 0.5})
    styles = _descriptors({RED: 0.6, BLACK: 0.2, WHITE: 0.2}, {RED: 1.0}, {RED: 1.0})
    only_palette = {"palette": 1, "texture": 0, "style": 0}
    matcher = AestheticMatcher(only_palette, hubness=None, palette="nearest-colour").fit(
        library, styles, shopper)
    assert np.array_equal(matcher.style_colours_, found)
    ids, scores = matcher.match(matcher.item_vectors(shopper), 3)
    assert ids[0, 0] == "both"
    expected = 0.5 * nearest_colour_similarity(found)[:, [BLACK, WHITE]].sum(1)
    assert scores[0] == pytest.approx(np.sort(expected)[::-1], abs=1e-5)
    # saved and loaded (with the default hubness correction, learned on the items)
    items = _descriptors({BLACK: 0.5, WHITE: 0.5}, {RED: 1.0}, {GREY: 1.0})
    fitted = AestheticMatcher(palette="nearest-colour").fit(library, styles, items)
    users = fitted.item_vectors(items)
    loaded = AestheticMatcher.load(fitted.save(tmp_path / "matcher"))
    assert loaded.palette == "nearest-colour" and loaded.get_params() == fitted.get_params()
    assert np.array_equal(loaded.style_colours_, found)
    for a, b in zip(loaded.match(users, 3), fitted.match(users, 3), strict=True):
        assert np.array_equal(a, b)


def _library(tmp_path, n=4):
    folder = tmp_path / "styles"
    folder.mkdir()
    for i in range(n):
        Image.new("RGB", (32, 32), (60 * i, 40, 200 - 40 * i)).save(folder / f"s{i}.jpg")
    rows = ["file,artist,title,year,licence,source,tags",
            "s0.jpg,A,First,1900,public domain,x,blue;calm",
            "s1.jpg,B,Second,1901,unknown: tests only,x,",
            "s2.jpg,C,Third,1902,public domain,x,red"]
    (folder / "styles.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_library_reads_metadata_and_excludes_by_licence(tmp_path):
    folder = _library(tmp_path)
    library = StyleLibrary.from_folder(folder)
    assert library.ids == ["s0", "s1", "s2", "s3"]
    assert library["s0"].tags == ("blue", "calm") and library["s3"].artist == ""
    assert StyleLibrary.from_folder(folder, exclude_licence="tests only").ids == ["s0", "s2",
                                                                                  "s3"]
    assert library.catalog().path("s2") == (folder / "s2.jpg").resolve()
    (folder / "styles.csv").write_text("file,licence\nmissing.jpg,public domain\n")
    with pytest.raises(ValueError, match="styles.csv:2: no image 'missing.jpg'"):
        StyleLibrary.from_folder(folder)


def test_matcher_mixes_top_references_and_round_trips(tmp_path):
    library = StyleLibrary.from_folder(_library(tmp_path))
    rng = np.random.default_rng(1)
    styles, items = rng.normal(size=(4, DIM)), rng.normal(size=(30, DIM))
    magenta = rng.normal(size=(4, 100)).astype(np.float32)
    matcher = AestheticMatcher(mix_k=2, temperature=0.1).fit(library, styles, items, magenta)
    users = matcher.item_vectors(items[:5])
    ids, sims = matcher.match(users, k=4)
    assert np.all(np.diff(sims, axis=1) <= 1e-6)  # best first
    mixes = matcher.personal_style(users)
    row = {s: i for i, s in enumerate(library.ids)}
    for mix, top, top_sims in zip(mixes, ids, sims, strict=True):
        assert mix.references == tuple(top[:2]) and abs(sum(mix.weights) - 1) < 1e-6
        expected = np.exp((top_sims[:2] - top_sims[0]) / 0.1)
        assert np.allclose(mix.weights, expected / expected.sum(), atol=1e-5)
        assert np.allclose(mix.vector, np.array(mix.weights) @ magenta[[row[s] for s in top[:2]]],
                           atol=1e-5)
    loaded = AestheticMatcher.load(matcher.save(tmp_path / "matcher"))
    assert np.array_equal(loaded.match(users, 4)[0], ids)
    assert np.allclose(loaded.personal_style(users)[0].vector, mixes[0].vector)


def _toy_matcher(hubness, hub_k=2, **params):
    """Three references h, a, b (unit axes) calibrated on three users who all have the hub
    ``h`` as their plain nearest reference."""
    users = np.array([[1, 0, 0], [0.8, 0.6, 0], [0.8, 0, 0.6]], np.float32)
    matcher = AestheticMatcher(hubness=hubness, hub_k=hub_k, **params)
    matcher.style_ids_ = ["h", "a", "b"]
    return matcher._calibrate(np.eye(3, dtype=np.float32), users), users


def test_csls_demotes_the_hub_with_hand_computed_scores():
    plain, users = _toy_matcher(None)
    assert plain.match(users, 1)[0][:, 0].tolist() == ["h", "h", "h"]
    csls, _ = _toy_matcher("csls")
    # r_U (mean cosine to the 2 nearest users): h (1 + .8)/2 = .9, a (.6 + 0)/2 = .3, b .3
    assert csls.hub_offset_ == pytest.approx([-0.9, -0.3, -0.3])
    # r_S (mean cosine to the 2 nearest references): .5, .7, .7
    # u1: 2·1 - .9 - .5 = .6 for h; u2: 2·.6 - .3 - .7 = .2 for a (h: 1.6 - .9 - .7 = 0)
    ids, scores = csls.match(users, 2)
    assert ids[:, 0].tolist() == ["h", "a", "b"] and ids[1:, 1].tolist() == ["h", "h"]
    assert scores[:, 0] == pytest.approx([0.6, 0.2, 0.2], abs=1e-6)
    assert scores[1, 1] == pytest.approx(0.0, abs=1e-6)
    # z-scores: cos of h over users (1, .8, .8): mean .8667, std .0943; u2 to h -0.707
    z, _ = _toy_matcher("zscore")
    ids, scores = z.match(users, 2)
    assert ids[:, 0].tolist() == ["h", "a", "b"]
    assert scores[1, 1] == pytest.approx((0.8 - 2.6 / 3) / np.std([1, 0.8, 0.8]), abs=1e-4)
    # inverted softmax at t = .1: h's offset .1 log((e^10 + 2 e^8) / 3) = .914;
    # u2: a .6 - .1 log((e^6 + 2) / 3) = .109 beats h .8 - .914
    inv, _ = _toy_matcher("isoftmax", hub_temperature=0.1)
    assert -inv.hub_offset_[0] == pytest.approx(0.1 * np.log((np.exp(10) + 2 * np.exp(8)) / 3),
                                                abs=1e-5)
    assert inv.match(users, 1)[0][:, 0].tolist() == ["h", "a", "b"]
    with pytest.raises(ValueError, match="hubness must be"):
        AestheticMatcher(hubness="inverted")._check_params()


@pytest.mark.parametrize("hubness", ["csls", "zscore", "isoftmax"])
def test_hubness_statistics_stream_over_chunks_of_the_population(hubness):
    rng = np.random.default_rng(3)
    population = _unit_rows(rng.normal(size=(50, 6))).astype(np.float32)
    matcher = AestheticMatcher(hubness=hubness, hub_k=7, hub_temperature=0.05)
    matcher.style_vectors_ = _unit_rows(rng.normal(size=(4, 6))).astype(np.float32)
    whole = matcher._population_statistics(population)
    for got, expected in zip(matcher._population_statistics(population, chunk=3), whole,
                             strict=True):
        assert got == pytest.approx(expected, abs=1e-9)
    cos = population.astype(np.float64) @ matcher.style_vectors_.T
    offset = {"csls": -np.sort(cos, 0)[-7:].mean(0),
              "zscore": -cos.mean(0) / (cos.std(0) + 1e-6),
              "isoftmax": -0.05 * np.log(np.exp(cos / 0.05).mean(0))}[hubness]
    assert whole[1] == pytest.approx(offset, abs=1e-6)


def _balanced(users, max_share, ids=("h", "a", "b")):
    matcher = AestheticMatcher(hubness="balanced", max_share=max_share)
    matcher.style_ids_ = list(ids)
    return matcher._calibrate(np.eye(len(ids), dtype=np.float32), users)


def test_balanced_prices_clear_the_cap_with_hand_computed_rounds():
    # similarities to (h, a, b): h is every user's nearest; margins at h .8 .7 .3 .1 .05 .15
    users = np.array([[.9, .1, .1], [.9, .2, .1], [.8, .1, .5], [.6, .5, .1], [.5, .45, .1],
                      [.55, .4, .35]], np.float32)
    assert _balanced(users, 10.0).match(users, 1)[0][:, 0].tolist() == ["h"] * 6
    # cap = floor(1.2 · 6/3) = 2. Round 1: h's 3rd largest margin .3 (+1e-4): u3 -> b
    # (.5 > .8 - .3001), u4, u5, u6 -> a. Round 2: a holds 3; margins there against the
    # next option .5 - .2999, .45 - .1999, .4 - .35: the 3rd, .05, prices a at .0501 and
    # u6 moves to b (.35 > .4 - .0501). Round 3: 2 + 2 + 2, nothing over the cap.
    matcher = _balanced(users, 1.2)
    assert -matcher.hub_offset_ == pytest.approx([0.3001, 0.0501, 0.0], abs=1e-6)
    assert capacity_prices(users, 1.2) == pytest.approx([0.3001, 0.0501, 0.0], abs=1e-6)
    assert np.all(matcher.hub_scale_ == 1)
    ids, scores = matcher.match(users, 1)
    assert ids[:, 0].tolist() == ["h", "h", "b", "a", "a", "b"]
    assert scores[:, 0] == pytest.approx([.5999, .5999, .5, .4499, .3999, .35], abs=1e-6)
    # cap 4 (max_share 2): h's 5th margin .1 -> price .1001; u4 and u5 leave for a
    matcher = _balanced(users, 2.0)
    assert -matcher.hub_offset_ == pytest.approx([0.1001, 0.0, 0.0], abs=1e-6)
    assert matcher.match(users, 1)[0][:, 0].tolist() == ["h", "h", "h", "a", "a", "h"]
    # a population already under the cap keeps the plain cosine
    spread = np.array([[.9, .1, 0], [.8, .3, 0], [0, .9, .1], [.2, .7, 0], [0, 0, 1],
                       [.1, .2, .6]], np.float32)
    assert np.all(_balanced(spread, 1.5).hub_offset_ == 0)
    # a tie counts towards both references (a float32 index may break it either way):
    # h holds 3 = cap plus the tied u4, so its price rises by u4's margin 0 (+1e-4)
    tied = np.array([[.1, .9], [.2, .8], [.3, .7], [.5, .5]], np.float32)
    matcher = _balanced(tied, 1.5, ids=("a", "h"))
    assert -matcher.hub_offset_ == pytest.approx([0.0, 1e-4], abs=1e-7)
    assert matcher.match(tied, 1)[0][:, 0].tolist() == ["h", "h", "h", "a"]
    with pytest.raises(ValueError, match="max_share must be > 1"):
        AestheticMatcher(hubness="balanced", max_share=1.0)._check_params()


def test_balanced_stops_after_its_rounds_and_says_what_no_price_can_split(caplog):
    identical = np.tile(np.array([[.9, .1]], np.float32), (4, 1))  # cap 2 of 4, one vector
    with caplog.at_level("WARNING", logger="recsys.aesthetic"):
        matcher = _balanced(identical, 1.2, ids=("h", "a"))
    assert "after 1000 rounds" in caplog.text and "still over the cap of 2" in caplog.text
    assert np.all(np.isfinite(matcher.hub_offset_))


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_balanced_cap_holds_for_a_hubbed_population_and_survives_save_load(tmp_path, factory):
    rng = np.random.default_rng(5)
    library = StyleLibrary.from_folder(_library(tmp_path))
    styles, items = rng.normal(size=(4, DIM)), rng.normal(size=(40, DIM))
    styles[0] = items.mean(0) * 3  # a hub: near every item
    matcher = AestheticMatcher(hubness="balanced", max_share=1.5, factory=factory).fit(
        library, styles, items)
    users = matcher.item_vectors(items)
    plain = AestheticMatcher(hubness=None).fit(library, styles, items).match(users, 1)[0]
    assert max(np.unique(plain, return_counts=True)[1]) > 15  # the hub takes over 1.5 x 10
    ids, scores = matcher.match(users, 4)
    assert max(np.unique(ids[:, 0], return_counts=True)[1]) <= 15
    cos = users @ matcher.style_vectors_.T
    row = {s: i for i, s in enumerate(library.ids)}
    assert scores[:, 0] == pytest.approx(
        [cos[u, row[s]] + matcher.hub_offset_[row[s]] for u, s in enumerate(ids[:, 0])],
        abs=1e-5)
    loaded = AestheticMatcher.load(matcher.save(tmp_path / "matcher"))
    assert loaded.max_share == 1.5 and loaded.hubness == "balanced"
    for a, b in zip(loaded.match(users, 4), (ids, scores), strict=True):
        assert np.array_equal(a, b)


def _unit_rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_centroids_pool_by_mass_with_a_log_sum_exp():
    from recsys.taste import TasteProfiles

    matcher, _ = _toy_matcher(None, temperature=0.05)
    # one user: a heavy centroid (mass .75) mildly near h, a light one (.25) close to a
    c1, c2 = [0.5, 0.3, np.sqrt(0.66)], [0.2, 0.9, np.sqrt(0.15)]
    profiles = TasteProfiles(np.array([[c1, c2]], np.float32), np.array([[0.75, 0.25]],
                             np.float32), np.array([False]), np.array([False]))
    ids, scores = matcher.match(profiles, 3)
    # h: .05 log(.75 e^(.5/.05) + .25 e^(.2/.05)); a: .05 log(.75 e^6 + .25 e^18)
    expected = {"h": 0.05 * np.log(0.75 * np.exp(10) + 0.25 * np.exp(4)),
                "a": 0.05 * np.log(0.75 * np.exp(6) + 0.25 * np.exp(18)),
                "b": 0.05 * np.log(0.75 * np.exp(20 * np.sqrt(0.66))
                                   + 0.25 * np.exp(20 * np.sqrt(0.15)))}
    assert ids[0].tolist() == sorted(expected, key=expected.get, reverse=True)
    assert scores[0] == pytest.approx(sorted(expected.values(), reverse=True), abs=1e-5)
    # a single centroid is matched like its vector
    single = TasteProfiles(np.array([[c1]], np.float32), np.ones((1, 1), np.float32),
                           np.array([False]), np.array([False]))
    assert np.array_equal(matcher.match(single, 3)[0], matcher.match(np.array([c1]), 3)[0])


def test_hubness_is_learned_on_the_fit_population_and_saved(tmp_path):
    from recsys.interactions import Interactions

    library = StyleLibrary.from_folder(_library(tmp_path))
    rng = np.random.default_rng(2)
    styles, items = rng.normal(size=(4, DIM)), rng.normal(size=(12, DIM))
    item_ids = [f"i{j}" for j in range(12)]
    log = Interactions.from_frame(pd.DataFrame({
        "user_id": np.repeat(["u0", "u1", "u2"], 4), "item_id": item_ids,
        "t": pd.date_range("2020-01-01", periods=12, freq="D")}), time_col="t")
    params = {"hubness": "csls", "hub_k": 2, "max_centroids": 2, "items_per_centroid": 2}
    matcher = AestheticMatcher(**params).fit(library, styles, items, interactions=log,
                                             item_ids=item_ids)
    assert matcher.population_ == 6  # 3 users x 2 centroids
    taste = matcher.taste_model().fit(log, item_ids, matcher.item_vectors(items))
    cos = taste.vectors_ @ matcher.style_vectors_.T
    assert -matcher.hub_offset_ == pytest.approx(np.sort(cos, 0)[-2:].mean(0), abs=1e-5)
    by_items = AestheticMatcher(**params).fit(library, styles, items)
    assert by_items.population_ == 12
    profiles = taste.transform(["u0", "u1", "u2"])
    loaded = AestheticMatcher.load(matcher.save(tmp_path / "matcher"))
    assert loaded.get_params() == matcher.get_params()
    for a, b in zip(loaded.match(profiles, 4), matcher.match(profiles, 4), strict=True):
        assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="item_ids"):
        AestheticMatcher(**params).fit(library, styles, items, interactions=log)


def test_a_round_one_matcher_still_loads(tmp_path):
    """Format 1 (no hubness correction; weights None meant palette 2) is read as it was."""
    import json

    library = StyleLibrary.from_folder(_library(tmp_path))
    rng = np.random.default_rng(4)
    styles, items = rng.normal(size=(4, DIM)), rng.normal(size=(30, DIM))
    old = AestheticMatcher({"palette": 2.0, "texture": 0.5, "style": 0.5}, hubness=None,
                           palette="bhattacharyya", palette_power=1.0).fit(library, styles,
                                                                           items)
    folder = old.save(tmp_path / "matcher")
    meta = json.loads((folder / "matcher.json").read_text())
    v1 = {"format": 1, **meta.pop("params"), "style_paths": meta["style_paths"],
          "style_ids": meta["style_ids"]}
    v1["block_weights"] = None
    for key in ("hubness", "hub_k", "hub_temperature", "max_centroids", "items_per_centroid"):
        v1.pop(key)
    (folder / "matcher.json").write_text(json.dumps(v1))
    with np.load(folder / "arrays.npz") as z:
        np.savez(folder / "arrays.npz", **{k: z[k] for k in z if k != "style_vectors"})
    loaded = AestheticMatcher.load(folder)
    assert loaded.hubness is None and loaded.block_weights["palette"] == 2.0
    users = old.item_vectors(items[:6])
    for a, b in zip(loaded.match(users, 4), old.match(users, 4), strict=True):
        assert np.array_equal(a, b)
    assert np.allclose(loaded.style_vectors_, old.style_vectors_)


def test_a_round_four_matcher_loads_with_its_defaults(tmp_path):
    """Format 2 (rounds 2-4): weights None meant palette 4, texture 0.5, style 0.5, and a
    file without a palette compared palettes by the Bhattacharyya coefficient."""
    import json

    library = StyleLibrary.from_folder(_library(tmp_path))
    rng = np.random.default_rng(5)
    styles, items = rng.normal(size=(4, DIM)), rng.normal(size=(30, DIM))
    old = AestheticMatcher({"palette": 4.0, "texture": 0.5, "style": 0.5},
                           hubness="isoftmax", palette="bhattacharyya",
                           palette_power=1.0).fit(library, styles, items)
    folder = old.save(tmp_path / "matcher")
    meta = json.loads((folder / "matcher.json").read_text())
    meta["format"], meta["params"]["block_weights"] = 2, None
    del meta["params"]["palette"], meta["params"]["palette_power"]
    (folder / "matcher.json").write_text(json.dumps(meta))
    loaded = AestheticMatcher.load(folder)
    assert loaded.palette == "bhattacharyya" and loaded.block_weights["texture"] == 0.5
    assert loaded.palette_power == 1.0  # format 2 and 3 files predate the power
    users = old.item_vectors(items[:6])
    assert np.array_equal(loaded.item_vectors(items[:6]), users)
    for a, b in zip(loaded.match(users, 4), old.match(users, 4), strict=True):
        assert np.array_equal(a, b)


def test_arbitrary_styler_takes_a_precomputed_style_vector():
    from stylers.registry import create_styler

    styler = create_styler("arbitrary", strength=0.7)
    content, style = torch.rand(2, 3, 64, 48), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        by_image = styler.stylize(content, style)
        by_vector = styler.stylize(content, styler.style_vector(style))
    assert torch.allclose(by_image, by_vector, atol=1e-5)
    with pytest.raises(ValueError, match="style vectors must be"):
        styler.stylize(content, torch.zeros(3, 100))


def test_adaptive_styler_protects_products_and_tones_down_full_bleed_images():
    from stylers.color import ColorStyler

    product = torch.ones(1, 3, 64, 64)
    product[:, :, 16:48, 16:48] = 0.2
    poster = torch.rand(1, 3, 64, 64)
    styler = AdaptiveStyler(ColorStyler(), product_strength=0.0, global_strength=0.5)
    assert plain_background(torch.cat([product, poster])).tolist() == [True, False]
    style = torch.rand(1, 3, 32, 32) * 0.3 + 0.7
    out = styler.stylize(torch.cat([product, poster]), style)
    assert torch.allclose(out[0, :, 28:36, 28:36], product[0, :, 28:36, 28:36], atol=1e-4)
    styled = ColorStyler().stylize(poster, style)
    assert torch.allclose(out[1], torch.lerp(poster, styled, 0.5)[0], atol=1e-5)
    forced = AdaptiveStyler(ColorStyler(), mode="global", global_strength=0.0)
    assert forced.decisions(product) == ["global"]
    assert torch.allclose(forced.stylize(product, style), product)


def test_fast_styler_says_it_ignores_a_style(tmp_path):
    from stylers.fast import FastStyler, TransformerNet

    torch.save(TransformerNet(8).state_dict(), tmp_path / "w8.pth")
    styler = FastStyler(tmp_path / "w8.pth")
    with pytest.warns(UserWarning, match="style is ignored"):
        styler.stylize(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        styler.stylize(torch.rand(1, 3, 16, 16), None)


def test_percentiles_palette_distance_and_discrimination_known_answers():
    d = np.array([[0.1, 0.5, 0.3, 0.9], [2.0, 2.0, 1.0, 3.0]])
    assert percentiles(d, np.array([2, 0])).tolist() == pytest.approx([1 / 3, 0.5])
    white, black = np.array([[100.0, 0, 0]]), np.array([[0.0, 0, 0]])
    assert palette_distance(white, np.ones(1), np.r_[black, white]) == pytest.approx(0, abs=1e-9)
    assert palette_distance(white, np.ones(1), black) == pytest.approx(100, abs=1e-6)
    disc = discrimination(["a", "a", "b", "c"], 4)
    p = np.array([0.5, 0.25, 0.25])
    assert disc["normalised_entropy"] == pytest.approx(-(p * np.log(p)).sum() / np.log(4))
    assert disc["max_share_over_fair"] == pytest.approx(2.0)
    # a resample's top share lies between 1 (a quarter of 4 shoppers) and 4 (all alike)
    assert 1.0 <= disc["max_share_ci_low"] <= 2.0 <= disc["max_share_ci_high"] <= 4.0
    assert disc["entropy_ci_low"] <= disc["normalised_entropy"] <= disc["entropy_ci_high"]
    alike = discrimination(["a"] * 5, 4)
    assert (alike["max_share_ci_low"], alike["max_share_ci_high"]) == (4.0, 4.0)


def test_stability_against_chance_and_behaviour_lift():
    old = {"u1": "a", "u2": "a", "u3": "b", "u4": "b"}
    new = {"u1": "a", "u2": "b", "u3": "b", "u4": "b"}
    s = stability(old, new, n_resamples=50)
    # agreement 3/4; chance = p_old(a) p_new(a) + p_old(b) p_new(b) = .5*.25 + .5*.75 = .5
    assert (s["agreement"], s["chance"], s["ratio"]) == pytest.approx((0.75, 0.5, 1.5))
    near = [{"x", "y"}, {"z"}]
    lift = behaviour_lift({"u1": ["x", "q"], "u2": ["z"]}, {"u1": 0, "u2": 1}, near)
    # matched shares 1/2 and 1; random (mean over styles) (1/2 + 0)/2 and (0 + 1)/2
    assert lift["matched_share"] == pytest.approx(0.75)
    assert lift["random_share"] == pytest.approx(0.375)
    assert lift["lift"] == pytest.approx(2.0)
    # every resample of these two shoppers gives 2, so do both bounds
    assert lift["lift_ci_low"] == lift["lift_one_sided_low"] == pytest.approx(2.0)
    rng = np.random.default_rng(0)
    future = {f"u{i}": list(rng.choice(["x", "y", "z", "q"], 3)) for i in range(40)}
    lift = behaviour_lift(future, {u: int(rng.integers(2)) for u in future}, near)
    # the one-sided 95% bound (5th percentile) lies inside the two-sided interval
    assert lift["lift_ci_low"] < lift["lift_one_sided_low"] < lift["lift"] < lift["lift_ci_high"]


def test_judge_as_matcher_matches_by_the_labels_plainly_and_under_the_cap():
    red, blue = label_lab(["Red"]), label_lab(["Blue"])
    judges = Judges([red, blue], {"r1": red[0], "r2": red[0], "r3": red[0], "b1": blue[0],
                                  "rf": red[0], "bf": blue[0]}, {})
    histories = {"u1": ["r1", "r2"], "u2": ["b1"], "u3": ["r1"], "u4": ["r3", "x"]}
    older, newer = {"u1": ["r1"], "u2": ["b1"]}, {"u1": ["r2"], "u2": ["b1"]}
    near = [{"rf"}, {"bf"}]
    got = judge_as_matcher(histories, older, newer, judges, ["red", "blue"], 1.1,
                        future={"u1": ["rf"], "u2": ["rf"]}, near=near)
    plain, capped = got["plain"], got["capped"]
    assert got["users"] == 4 and plain["label_percentile"] == 0.0
    # both halves agree for both shoppers; chance .5 · .5 + .5 · .5
    assert (plain["stability"]["agreement"], plain["stability"]["ratio"]) == (1.0, 2.0)
    assert plain["discrimination"]["max_share_over_fair"] == pytest.approx(1.5)  # 3 of 4 red
    # u1 takes red: share 1 vs random .5; u2 takes blue and bought red: 0 vs .5
    assert plain["behaviour"]["lift"] == pytest.approx(1.0)
    # cap max(ceil(4/2), floor(1.1 · 2)) = 2: one of the three identical red shoppers
    # (the jitter decides which) moves to blue, at percentile 1 of 2 references
    assert capped["label_percentile"] == pytest.approx(0.25)
    assert capped["discrimination"]["max_share_over_fair"] == pytest.approx(1.0)
    assert got["colour_mode"]["ratio"] == pytest.approx(2.0)


def test_split_halves_never_cuts_a_day():
    frame = pd.DataFrame({
        "unit": ["u"] * 5 + ["v"],
        "day": pd.to_datetime(["2020-01-01", "2020-01-01", "2020-01-02", "2020-01-03",
                               "2020-01-03", "2020-01-05"]),
    })
    older, newer = split_halves(frame, "unit", "day")
    assert older["day"].dt.day.tolist() == [1, 1, 2] and newer["day"].dt.day.tolist() == [3, 3]
    assert "v" not in set(older["unit"]) | set(newer["unit"])  # a single day: no halves


class _CodeStyler(Styler):
    """Paints the product in its style's colour: a style image's mean RGB, or the first three
    values of a style code; records the codes it was given."""

    name = "test-code"

    def __init__(self, code_dim: int = 3):
        super().__init__()
        self.style_code_dim = code_dim
        self.codes: list[torch.Tensor] = []

    @property
    def params(self) -> dict:
        return {"code_dim": self.style_code_dim}

    def stylize(self, content, style):
        if style.ndim == 2:
            self.codes.append(style.clone())
            colour = style[:, :3]
        else:
            content, style = self.check_inputs(content, style)
            colour = style.mean((2, 3))
        return colour[:, :, None, None].expand_as(content).clamp(0, 1)


def test_renderer_renders_a_style_code_and_keys_the_cache_on_it(tmp_path):
    from stylers.renderer import Renderer

    _product((200, 30, 30)).save(tmp_path / "item.png")
    Image.new("RGB", (16, 16), (0, 0, 255)).save(tmp_path / "blue.png")
    renderer = Renderer(_CodeStyler(), tmp_path / "renders", device="cpu", progress=False)
    code = np.array([0.2, 0.4, 0.6], np.float32)
    item = tmp_path / "item.png"
    by_code, by_image = renderer.render([("i", item, "mix", code),
                                         ("i", item, "blue", tmp_path / "blue.png")])
    pixel = np.asarray(Image.open(by_code))[0, 0]
    assert pixel.tolist() == [51, 102, 153]  # the code's colour, 0.2/0.4/0.6 x 255
    assert np.asarray(Image.open(by_image))[0, 0].tolist() == [0, 0, 255]
    assert renderer.render([("i", item, "mix", torch.from_numpy(code))]) == [by_code]
    assert renderer.stats["hits"] == 1 and len(renderer.styler.codes) == 1
    other = renderer.render([("i", item, "mix", code + 0.2)])[0]
    assert other != by_code and np.asarray(Image.open(other))[0, 0].tolist() == [102, 153, 204]
    with pytest.raises(ValueError, match="takes style codes of size 3, got one of size 4"):
        renderer.render([("i", item, "mix", np.zeros(4))])


@pytest.fixture(scope="module")
def colour_shop(tmp_path_factory):
    """Red and blue products on white, a red and a blue style, 3 shoppers of each colour."""
    from recsys.catalog import Catalog
    from recsys.interactions import Interactions

    root = tmp_path_factory.mktemp("colour-shop")
    colours = {"red": (200, 30, 30), "blue": (30, 40, 200)}
    (root / "styles").mkdir()
    for c, rgb in colours.items():
        for j in range(4):
            _product(tuple(v + 6 * j for v in rgb)).save(root / f"{c}{j}.png")
        Image.new("RGB", (64, 64), rgb).save(root / "styles" / f"{c}-style.png")
    rows = [(f"{c}{u}", f"{c}{j}", f"2020-01-0{j + 1}") for c in colours for u in range(3)
            for j in range(4)]
    data = Interactions.from_frame(pd.DataFrame(rows, columns=["user_id", "item_id", "t"]),
                                   time_col="t")
    return {"root": root, "data": data, "catalog": Catalog.from_directory(root, pattern="*.png")}


def test_style_match_round_trips_through_the_spec_and_fits(colour_shop, tmp_path):
    from doubles import ColourEncoder

    from recsys.recommender import StyleRecommender
    from recsys.spec import PipelineSpec, SpecError

    params = {"hubness": "csls", "hub_k": 3, "max_centroids": 2, "items_per_centroid": 2,
              "palette": "coverage"}
    spec = PipelineSpec.from_dict({"ranker": {"name": "blend", "params": {"taste_weight": 0.5}},
                                   "encoder": {"embedding_dim": None},
                                   "style_match": {"params": params}}).validate()
    model = StyleRecommender.from_params(spec)
    assert (model.style_encoder, model.style_params) == ("aesthetic", params)
    assert model.get_params() == spec.to_dict()
    assert StyleRecommender.from_params(model.get_params()).style_params == params

    model.encoder = ColourEncoder(grid=2)
    model.fit(colour_shop["data"], colour_shop["catalog"], colour_shop["root"] / "styles")
    matcher = model.styles_
    assert matcher.get_params() | params == matcher.get_params()  # the spec's parameters
    assert matcher.population_ == 12  # 6 users x 2 centroids of their 4 items
    slates = model.recommend(["red0", "blue1"], k=2)
    assert [s.style.style_id for s in slates] == ["red-style", "blue-style"]
    loaded = StyleRecommender.load(model.save(tmp_path / "model"))
    assert loaded.get_params()["style_match"] == {"encoder": "aesthetic", "params": params,
                                                  "encoder_params": {}}
    bad = {"data": {"images": "img"}, "styles": "s", "style_match": {"params": {"hub_k": "x"}}}
    with pytest.raises(SpecError, match="style_match.params.hub_k: expected int"):
        PipelineSpec.from_dict(bad).validate()
    bad["style_match"]["params"] = {"palette": 1}
    with pytest.raises(SpecError, match="style_match.params.palette: expected str"):
        PipelineSpec.from_dict(bad).validate()

    # rendering: the personal mix for a styler with a Magenta-sized code, else the nearest
    from stylers.renderer import Renderer

    model.renderer = Renderer(_CodeStyler(100), tmp_path / "renders", device="cpu",
                              progress=False)
    slate = model.recommend(["red0"], k=2, render=True)[0]
    codes = model.renderer.styler.codes
    assert len(slate.style.mix) == 2 and len(codes) == 1  # one mix, both items in one batch
    row = {style: i for i, style in enumerate(matcher.style_ids_)}
    expected = sum(w * matcher.magenta_[row[style]] for style, w in slate.style.mix)
    assert np.allclose(codes[0][0].numpy(), expected, atol=1e-5)
    assert all(e.image is not None for e in slate.entries)
    model.renderer = Renderer(_CodeStyler(3), tmp_path / "renders", device="cpu",
                              progress=False)
    slate = model.recommend(["blue1"], k=1, render=True)[0]
    assert not model.renderer.styler.codes  # no 100-d code: the nearest reference's image
    assert np.asarray(Image.open(slate.entries[0].image))[0, 0].tolist() == [30, 40, 200]


def test_clip_text_anchors_are_an_optional_fourth_block(tiny_clip, tmp_path, encoder):
    """The plumbing only: a tiny randomly initialised OpenCLIP model saved to a file."""
    from recsys.encoders.openclip import OpenCLIPEncoder

    random = OpenCLIPEncoder(tiny_clip, allow_random=True, seed=1, device="cpu")
    torch.save(random.model_.state_dict(), tmp_path / "tiny.pt")
    anchors = ("minimalist", "floral", "bohemian")
    clip = AestheticEncoder(clip_model=tiny_clip, clip_checkpoint=tmp_path / "tiny.pt",
                            anchors=anchors, device="cpu", num_workers=0)
    assert clip.dim == DIM + 3 and clip.encoder_id != encoder.encoder_id
    poster = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 64, 3), np.uint8))
    v = clip.encode([poster], progress=False)
    blocks = AestheticEncoder.split(v)
    assert list(blocks) == [*BLOCKS, "clip"] and np.allclose(np.linalg.norm(v), 1, atol=1e-5)
    # the same three blocks as without CLIP; the fourth: cosines to the anchor texts
    base = AestheticEncoder.split(encoder.encode([poster], progress=False))
    for name in BLOCKS:
        assert np.allclose(blocks[name], base[name], atol=1e-5)
    x = clip.preprocess(poster).permute(2, 0, 1)[None].float() / 255  # full bleed: all of it
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True,
                                        align_corners=False)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        image = torch.nn.functional.normalize(random.model_.encode_image((x - mean) / std))
    cosines = image.numpy() @ random.encode_text(anchors, "a {} style image").T
    assert np.allclose(blocks["clip"], cosines / np.linalg.norm(cosines), atol=1e-4)
    # the space takes the block (centred like texture and style) or leaves it out
    items = np.concatenate([v, v + 0.01])
    space = AestheticSpace({"clip": 0}).fit(items, items)
    assert np.allclose(space.transform(items, "items")[:, DIM:], 0)
    with pytest.raises(ValueError, match="both clip_model and clip_checkpoint"):
        AestheticEncoder(clip_model=tiny_clip, device="cpu")


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # flat styles
def _two_colour_shop(tmp_path):
    """Red shoppers and blue shoppers (3 each, 4 days), their photos, and a red and a blue
    reference: the transactions and articles."""
    colours = {"Red": (200, 30, 30), "Dark Blue": (25, 35, 80)}
    (tmp_path / "images").mkdir()
    (tmp_path / "styles").mkdir()
    rows, articles = [], []
    for c, (name, rgb) in enumerate(colours.items()):
        for j in range(4):
            article = f"0{c}{j}"
            _product(tuple(min(255, v + 8 * j) for v in rgb)).save(
                tmp_path / "images" / f"{article}.png")
            articles.append((article, name))
        Image.new("RGB", (64, 64), rgb).save(tmp_path / "styles" / f"s{c}.png")
        for u in range(3):
            rows += [(f"2020-01-0{j + 1}", f"{name}-{u}", f"0{c}{j}") for j in range(4)]
    return (pd.DataFrame(rows, columns=["t_dat", "customer_id", "article_id"]),
            pd.DataFrame(articles, columns=["article_id", "colour_group_name"]))


def test_style_fit_study_end_to_end_on_two_colours(tmp_path):
    """Every check has a known answer on the two-colour shop when the matcher works (and
    the hubness correction is learned on the shoppers)."""
    from evaluation.style_study import style_fit_study

    transactions, articles = _two_colour_shop(tmp_path)
    result = style_fit_study(transactions, articles, tmp_path / "images",
                             StyleLibrary.from_folder(tmp_path / "styles"), tmp_path / "cache")
    assert result["params"]["matcher"]["hubness"] == "balanced"
    assert result["params"]["matcher"]["palette"] == "nearest-colour"
    assert {u["unit"][:-2]: u["style"] for u in result["units"]} == {"Red": "s0",
                                                                   "Dark Blue": "s1"}
    assert result["colour"]["labels"]["mean_percentile"] == 0.0
    assert result["colour"]["kmeans"]["mean_percentile"] == 0.0
    assert result["discrimination"]["normalised_entropy"] == pytest.approx(1.0)
    assert result["discrimination"]["max_share_over_fair"] == pytest.approx(1.0)
    # both halves of every history match the same colour: agreement 1, chance 1/2
    assert (result["stability"]["agreement"], result["stability"]["ratio"]) == (1.0, 2.0)
    # the label judge as the matcher reaches the same on these shoppers
    for judge in (result["judge_as_matcher"]["plain"], result["judge_as_matcher"]["capped"]):
        assert judge["label_percentile"] == 0.0 and judge["stability"]["ratio"] == 2.0
    assert result["judge_as_matcher"]["colour_mode"]["ratio"] == 2.0


def test_style_report_command_writes_the_page_and_a_record_of_what_made_it(tmp_path, capsys):
    import json

    from stylerec.cli import main

    transactions, articles = _two_colour_shop(tmp_path)
    transactions.to_csv(tmp_path / "t.csv", index=False)
    articles.to_csv(tmp_path / "a.csv", index=False)
    out = tmp_path / "report"
    assert main(["style-report", "--transactions", str(tmp_path / "t.csv"), "--articles",
                 str(tmp_path / "a.csv"), "--images", str(tmp_path / "images"), "--styles",
                 str(tmp_path / "styles"), "--cache-dir", str(tmp_path / "cache"),
                 "--render-items", "0", "--quality-pairs", "0", "--palette-power", "2",
                 "--mix-k", "2", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["params"]["matcher"]["palette_power"] == 2.0
    assert result["params"]["matcher"]["mix_k"] == 2
    assert [d["path"] for d in result["params"]["data"]] == [str(tmp_path / "t.csv"),
                                                              str(tmp_path / "a.csv")]
    assert len(result["params"]["data"][0]["sha256"]) == 64
    assert result["environment"]["versions"]["numpy"] == np.__version__
    page = (out / "index.html").read_text()
    assert "the label judge as the matcher" in page and "Red-0" in page
    printed = capsys.readouterr().out
    assert "colour agreement (labels): mean percentile 0.000" in printed
    assert "personal mix of 2 at temperature 0.01" in printed


def test_the_clip_block_is_configured_through_the_spec(colour_shop, tiny_clip, tmp_path):
    from doubles import ColourEncoder

    from recsys.encoders.openclip import DEFAULT_STYLE_LABELS, OpenCLIPEncoder
    from recsys.recommender import StyleRecommender
    from recsys.spec import PipelineSpec, SpecError

    random = OpenCLIPEncoder(tiny_clip, allow_random=True, device="cpu")
    torch.save(random.model_.state_dict(), tmp_path / "tiny.pt")
    clip = {"clip_model": tiny_clip, "clip_checkpoint": str(tmp_path / "tiny.pt")}
    spec = PipelineSpec.from_dict({"ranker": {"name": "blend", "params": {"taste_weight": 0.5}},
                                   "encoder": {"embedding_dim": None},
                                   "style_match": {"encoder_params": clip}}).validate()
    model = StyleRecommender.from_params(spec)
    assert model.style_encoder_params == clip and model.get_params() == spec.to_dict()
    model.encoder = ColourEncoder(grid=2)
    model.fit(colour_shop["data"], colour_shop["catalog"], colour_shop["root"] / "styles")
    # + 1: the nearest-colour palette's norm-keeping column
    assert model.styles_.style_vectors_.shape[1] == DIM + len(DEFAULT_STYLE_LABELS) + 1
    loaded = StyleRecommender.load(model.save(tmp_path / "model"))
    assert loaded.get_params()["style_match"]["encoder_params"] == clip
    bad = {"data": {"images": "img"}, "styles": "s",
           "style_match": {"encoder_params": {"clip_model": 3}}}
    with pytest.raises(SpecError, match="style_match.encoder_params.clip_model: expected"):
        PipelineSpec.from_dict(bad).validate()
    with pytest.raises(SpecError, match="style_match.encoder: unknown encoder 'nope'"):
        PipelineSpec.from_dict({**bad, "style_match": {"encoder": "nope"}}).validate()
