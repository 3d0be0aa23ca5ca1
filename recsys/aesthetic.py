"""An aesthetic space shared by product photos and style references, and the style matcher.

Product-photo features describe garments, not aesthetics, so matching them to
paintings is noise. Here both sides get descriptors that mean the same on a
product photo and on an artwork, computed on the image's *subject*: the product
region (foreground mask) of a photo on a plain backdrop, the whole image of a
full-bleed one (:func:`stylers.adaptive.region_mask`). Three blocks:

``palette``
    soft CIE Lab histogram of the region (5 L × 7 a × 7 b bins, Gaussian
    assignment), square-rooted (Hellinger), so a cosine is the Bhattacharyya
    coefficient of two palettes;
``texture``
    per-channel mean and standard deviation over the region of the first three
    EfficientNet-Lite0 feature maps (stem, stages 1–2: 144 values; the AdaIN
    view of texture);
``style``
    the Magenta arbitrary-stylization style vector (100-d) of the region's
    bounding box at 128² (half the predictor's native size: 6× cheaper on CPU, and
    both domains are described alike).

:class:`AestheticEncoder` (registered as ``"aesthetic"``, so the
:class:`~recsys.embedding_store.EmbeddingStore` caches it by image hash) outputs
the blocks, each L2-normalised and scaled by ``1/sqrt(3)``. :class:`AestheticSpace`
keeps the palette block as it is (square-rooted histograms: its cosine is the
Bhattacharyya coefficient, an absolute colour match), centres the texture and
style blocks on each domain's own mean (a product's texture and a painting's
brushwork differ by domain; what can match is how each departs from its
domain's average), scales their dimensions to unit variance, and re-normalises
every block with its weight, so no block dominates by its size: a cosine in the
space is the weighted mean of the blocks' cosines. ``palette="coverage"`` replaces
the palette's cosine by an asymmetric similarity: the share of the shopper's colour
mass that the reference's palette contains (:func:`palette_presence`);
``palette="nearest-colour"`` by minus the shopper's mean CIEDE2000 distance to the
nearest of the reference's 5 k-means colours (:func:`dominant_colours`, computed from
the references' pixels when the matcher is fitted). The matcher's defaults (the
nearest-colour palette alone, capacity prices at 2.0) were chosen on the 300 demo
shoppers (``docs/aesthetic.md``, round 5; rounds 2-4's default was the Bhattacharyya
palette 4, texture 0.5, style 0.5 under the inverted softmax at t = 0.01).

:class:`StyleLibrary` is a folder of references with a ``styles.csv``;
:class:`AestheticMatcher` indexes it with FAISS, matches users' aesthetic
vectors (from :class:`~recsys.taste.TasteModel` on the item vectors: confidence
and recency weights, optional centroids) with a hubness correction learned on a
population of users (a few dark or white-ground references would otherwise be
everyone's nearest), and mixes a personal Magenta style vector from each user's
top-k references.

Examples
--------
>>> library = StyleLibrary.from_folder("data/styles")  # doctest: +SKIP
>>> encoder = AestheticEncoder()  # doctest: +SKIP
>>> matcher = AestheticMatcher().fit(library, encoder.encode(library.paths),
...                                  encoder.encode(item_paths))  # doctest: +SKIP
>>> ids, sims = matcher.match(user_vectors, k=3)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ground.files import (
    atomic_directory,
    file_sha256,
    read_meta,
    saved_directory,
    write_bytes_atomic,
    write_npz_atomic,
)
from ground.images import fit_square

from .catalog import IMAGE_SUFFIXES, Catalog
from .encoders import ImageEncoder, register_encoder
from .interactions import Interactions
from .style_index import StyleIndex
from .taste import TasteModel, TasteProfiles

log = logging.getLogger(__name__)

BLOCKS = ("palette", "texture", "style")
CLIP_BLOCK = "clip"  # the optional fourth block: OpenCLIP text-anchor similarities
FORMAT_VERSION = 4  # 4: palette_power (older: 1); 3: round 5's defaults; 2: rounds 2-4's
_L_BINS, _AB_BINS, _AB_RANGE = 5, 7, 60.0
_CHUNK = 16384  # rows per float64 block when fitting or transforming a catalog
_TEXTURE_CHANNELS = (32, 16, 24)  # stem, block 0 (stage 1), block 2 (end of stage 2)
_MASK_SIZE, _PALETTE_SIZE, _STYLE_SIZE = 96, 64, 128


def palette_histogram(lab: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Soft Lab histograms ``[B, 5·7·7]`` (summing to 1) of ``[B, 3, H, W]`` Lab images
    weighted by ``[B, 1, H, W]`` region weights.

    Bin centres: L at 10, 30, … 90; a and b at -60, -40, … 60 (values beyond are
    clamped); each pixel is spread over neighbouring bins by a Gaussian of one
    bin's width, so a small colour shift moves mass smoothly.

    Examples
    --------
    >>> import torch
    >>> lab = torch.tensor([50.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    >>> hist = palette_histogram(lab, torch.ones(1, 1, 4, 4))
    >>> int(hist.argmax()), round(float(hist.sum()), 4)  # L=50 (bin 2), a=b=0 (bin 3, 3)
    (122, 1.0)
    """
    b = lab.shape[0]
    pixels = lab.flatten(2)  # [B, 3, N]
    w = weights.flatten(2)[:, 0]  # [B, N]
    l_step, ab_step = 100.0 / _L_BINS, 2 * _AB_RANGE / (_AB_BINS - 1)
    l_centres = torch.arange(_L_BINS, dtype=lab.dtype, device=lab.device) * l_step + l_step / 2
    ab_centres = torch.linspace(-_AB_RANGE, _AB_RANGE, _AB_BINS, dtype=lab.dtype,
                                device=lab.device)

    def soft(values: torch.Tensor, centres: torch.Tensor, step: float) -> torch.Tensor:
        values = values.clamp(float(centres[0]), float(centres[-1]))
        k = torch.exp(-0.5 * ((values[..., None] - centres) / step) ** 2)
        return k / k.sum(-1, keepdim=True)

    wl = soft(pixels[:, 0], l_centres, l_step)
    wa = soft(pixels[:, 1], ab_centres, ab_step)
    wb = soft(pixels[:, 2], ab_centres, ab_step)
    hist = torch.einsum("bn,bnl,bna,bnc->blac", w, wl, wa, wb).reshape(b, -1)
    return hist / hist.sum(1, keepdim=True).clamp(min=1e-12)


def palette_colours(descriptors: np.ndarray, top: int = 6) -> list[tuple[str, float]]:
    """The ``top`` heaviest palette bins of encoded descriptors (pooled over the rows) as
    ``("#rrggbb", share)`` pairs: what a shopper's (or an artwork's) palette looks like.

    Examples
    --------
    >>> hist = np.zeros((1, 489)); hist[0, 122] = 1 / np.sqrt(3)  # L=50, a=b=0
    >>> palette_colours(hist, top=1)
    [('#777777', 1.0)]
    """
    from stylers.colorspace import lab_to_rgb

    hist = (AestheticEncoder.split(np.asarray(descriptors, np.float64))["palette"] ** 2).mean(0)
    hist = hist / hist.sum()
    order = np.argsort(hist)[::-1][:top]
    l_idx, rest = np.divmod(order, _AB_BINS ** 2)
    a_idx, b_idx = np.divmod(rest, _AB_BINS)
    ab_step = 2 * _AB_RANGE / (_AB_BINS - 1)
    lab = np.stack([l_idx * 100.0 / _L_BINS + 50.0 / _L_BINS, a_idx * ab_step - _AB_RANGE,
                    b_idx * ab_step - _AB_RANGE], axis=1)
    rgb = lab_to_rgb(torch.tensor(lab, dtype=torch.float32).T[None, :, :, None])
    rgb = (rgb[0, :, :, 0].T.clamp(0, 1) * 255).round().int().tolist()
    return [("#{:02x}{:02x}{:02x}".format(*c), round(float(hist[i]), 4))
            for c, i in zip(rgb, order, strict=True)]


def _masked_stats(feature: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-channel weighted mean and std ``[B, 2C]`` of ``feature`` over ``mask``."""
    m = F.interpolate(mask, size=feature.shape[-2:], mode="area")
    total = m.sum((2, 3)).clamp(min=1e-6)
    mean = (feature * m).sum((2, 3)) / total
    var = ((feature - mean[..., None, None]) ** 2 * m).sum((2, 3)) / total
    return torch.cat([mean, var.clamp(min=0).sqrt()], dim=1)


def _bbox_crops(images: torch.Tensor, mask: torch.Tensor, size: int) -> torch.Tensor:
    """Each image cropped to its region's bounding box (a square around it) at ``size``²."""
    out = []
    h, w = images.shape[-2:]
    for image, m in zip(images, mask[:, 0] > 0.5, strict=True):
        rows, cols = torch.nonzero(m.any(1)).flatten(), torch.nonzero(m.any(0)).flatten()
        if len(rows) == 0:
            top, bottom, left, right = 0, h, 0, w
        else:
            top, bottom = int(rows[0]), int(rows[-1]) + 1
            left, right = int(cols[0]), int(cols[-1]) + 1
        out.append(F.interpolate(image[None, :, top:bottom, left:right], size=(size, size),
                                 mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(out).clamp(0, 1)


@register_encoder("aesthetic")
class AestheticEncoder(ImageEncoder):
    """Palette, texture and style descriptors of an image's subject (see the module docstring).

    The image is resized to ``image_size``² (aspect ratio ignored: the statistics do
    not need it, and padding would give a full-bleed artwork a fake plain border).
    The output ``[n, 245 + 144 + 100]`` holds the three blocks in :data:`BLOCKS`
    order, each L2-normalised and scaled by ``1/sqrt(3)``; :meth:`split` recovers them.

    With an OpenCLIP checkpoint (a local file; nothing is downloaded) a fourth block,
    ``clip``, holds the cosines of the subject's CLIP image embedding (its bounding box
    at the model's input size) to text anchors (``encode_text`` of ``anchor_prompt``
    filled with each of ``anchors``: "minimalist", "floral", "bohemian", ...): an
    aesthetic named in words, comparable between a product and an artwork. Blocks are
    then scaled by ``1/2``. Not evaluated against real CLIP weights (none offline here).

    Parameters
    ----------
    image_size : int
        Working resolution.
    plain_threshold : float
        Border uniformity above which the image is a product on a plain backdrop and
        only its foreground counts (:func:`stylers.adaptive.plain_background`).
    clip_model, clip_checkpoint : str, optional
        An open_clip model name and a local weights file for it: adds the ``clip`` block.
    anchors : sequence of str
        The text anchors of the ``clip`` block.
    anchor_prompt : str
        Template each anchor fills.
    **kwargs
        Device and pipeline options of :class:`~recsys.encoders.ImageEncoder`.

    Examples
    --------
    >>> encoder = create_encoder("aesthetic")  # doctest: +SKIP
    >>> encoder.encode(["data/styles/wave.jpg"]).shape  # doctest: +SKIP
    (1, 489)
    """

    name = "aesthetic"
    block_sizes = {"palette": _L_BINS * _AB_BINS ** 2, "texture": 2 * sum(_TEXTURE_CHANNELS),
                   "style": 100}

    def __init__(self, image_size: int = 160, plain_threshold: float = 0.75,
                 clip_model: str | None = None, clip_checkpoint: str | Path | None = None,
                 anchors: Sequence[str] | None = None,
                 anchor_prompt: str = "a {} style image", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from stylers.effnet import default_weights_path, load_backbone
        from stylers.magenta import MagentaStylePredictor, onnx_model_path

        self.image_size = int(image_size)
        self.plain_threshold = float(plain_threshold)
        self._weights = (default_weights_path(), onnx_model_path("arbitrary_predict.onnx"))
        self.weights_id_ = "sha256:" + "+".join(file_sha256(p)[:12] for p in self._weights)
        backbone = load_backbone(self._weights[0])  # only the first three blocks run
        self.stem_ = backbone.stem.to(self.device_).eval().requires_grad_(False)
        self.blocks_ = backbone.blocks[:3].to(self.device_).eval().requires_grad_(False)
        self.predictor_ = MagentaStylePredictor.from_onnx(self._weights[1]).to(self.device_)
        self.predictor_.eval().requires_grad_(False)
        self.clip_model, self.clip_checkpoint = clip_model, clip_checkpoint
        self.anchor_prompt = anchor_prompt
        self.clip_ = None
        if (clip_model is None) != (clip_checkpoint is None):
            raise ValueError("the clip block needs both clip_model and clip_checkpoint")
        if clip_checkpoint is not None:
            from .encoders.openclip import DEFAULT_STYLE_LABELS, OpenCLIPEncoder

            self.anchors = tuple(anchors or DEFAULT_STYLE_LABELS)
            self.clip_ = OpenCLIPEncoder(clip_model, checkpoint=clip_checkpoint,
                                         device=str(self.device_), num_workers=0)
            self.anchor_vectors_ = torch.from_numpy(
                self.clip_.encode_text(self.anchors, anchor_prompt)).to(self.device_)
            visual = self.clip_.model_.visual
            from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

            cfg = getattr(visual, "preprocess_cfg", {}) or {}
            self.clip_mean_, self.clip_std_ = (
                torch.tensor(cfg.get(k, default), device=self.device_).view(1, 3, 1, 1)
                for k, default in (("mean", OPENAI_DATASET_MEAN), ("std", OPENAI_DATASET_STD)))
            self.weights_id_ += "+" + self.clip_.weights_id_
            self.block_sizes = AestheticEncoder.block_sizes | {CLIP_BLOCK: len(self.anchors)}

    @property
    def params(self) -> dict[str, Any]:
        params = {"image_size": self.image_size, "plain_threshold": self.plain_threshold,
                  "palette": f"lab{_L_BINS}x{_AB_BINS}x{_AB_BINS}",
                  "texture": "stem+block0+block2", "mask_size": _MASK_SIZE,
                  "style_size": _STYLE_SIZE}
        if self.clip_ is not None:
            params["clip"] = {"model": self.clip_.params, "anchors": list(self.anchors),
                              "prompt": self.anchor_prompt}
        return params

    @property
    def dim(self) -> int:
        return sum(self.block_sizes.values())

    @property
    def draft_size(self) -> int:
        return self.image_size

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        square = fit_square(image, self.image_size, "stretch")
        return torch.from_numpy(np.asarray(square).copy())

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        from stylers.adaptive import region_mask
        from stylers.colorspace import rgb_to_lab

        x = batch.permute(0, 3, 1, 2).float().div(255.0).contiguous()
        mask = region_mask(F.interpolate(x, size=(_MASK_SIZE, _MASK_SIZE), mode="area"),
                           self.plain_threshold)
        mask = F.interpolate(mask, size=x.shape[-2:], mode="bilinear", align_corners=False)
        small = (F.interpolate(t, size=(_PALETTE_SIZE, _PALETTE_SIZE), mode="area")
                 for t in (x, mask))
        palette = palette_histogram(rgb_to_lab(next(small)), next(small))
        stem = self.stem_(x * 2.0 - 1.0)
        block0 = self.blocks_[0](stem)
        block2 = self.blocks_[2](self.blocks_[1](block0))
        texture = torch.cat([_masked_stats(f, mask) for f in (stem, block0, block2)], dim=1)
        style = self.predictor_(_bbox_crops(x, mask, _STYLE_SIZE))
        blocks = [palette.sqrt(), texture, style]
        if self.clip_ is not None:
            crops = _bbox_crops(x, mask, self.clip_.draft_size)
            image = self.clip_.model_.encode_image((crops - self.clip_mean_) / self.clip_std_)
            blocks.append(F.normalize(image.float(), dim=1) @ self.anchor_vectors_.T)
        scale = 1.0 / math.sqrt(len(blocks))
        return torch.cat([scale * F.normalize(b, dim=1) for b in blocks], dim=1)

    @classmethod
    def split(cls, vectors: np.ndarray) -> dict[str, np.ndarray]:
        """The blocks of encoded ``[n, dim]`` vectors, each back to unit norm (columns
        beyond the three fixed blocks are the ``clip`` block)."""
        sizes = dict(AestheticEncoder.block_sizes)
        extra = vectors.shape[1] - sum(sizes.values())
        if extra < 0:
            raise ValueError(f"aesthetic vectors have {vectors.shape[1]} columns, expected at "
                             f"least {sum(sizes.values())}")
        if extra:
            sizes[CLIP_BLOCK] = extra
        out, start = {}, 0
        for name, size in sizes.items():
            out[name] = vectors[:, start:start + size] * math.sqrt(len(sizes))
            start += size
        return out


# the palette alone (round 5); clip is a placeholder, unmeasured, kept at about the 9%
# of the score it had beside palette 4, texture 0.5, style 0.5
DEFAULT_BLOCK_WEIGHTS = {"palette": 1.0, "texture": 0.0, "style": 0.0, CLIP_BLOCK: 0.1}
PALETTE_SIMILARITIES = ("bhattacharyya", "coverage", "nearest-colour")
PRESENT_SHARE = 0.02  # share of a reference's region that makes a colour count as present
DOMINANT_COLOURS = 5  # k of a reference's k-means colours under palette="nearest-colour"
DELTA_E_SCALE = 100.0  # CIEDE2000 units per unit of the nearest-colour similarity


def bin_centres() -> np.ndarray:
    """``[245, 3]``: the Lab centres of the palette bins, in histogram order."""
    l_step = 100.0 / _L_BINS
    grid = np.meshgrid(np.arange(_L_BINS) * l_step + l_step / 2,
                       np.linspace(-_AB_RANGE, _AB_RANGE, _AB_BINS),
                       np.linspace(-_AB_RANGE, _AB_RANGE, _AB_BINS), indexing="ij")
    return np.stack([g.ravel() for g in grid], 1)


def _bin_self_weights() -> np.ndarray:
    """``[245]``: the share of a pixel at each bin's centre that :func:`palette_histogram`
    leaves in that bin (0.064 inside the grid, up to 0.19 at its corners)."""
    centres = torch.from_numpy(bin_centres())[:, :, None, None]
    hist = palette_histogram(centres, torch.ones(len(centres), 1, 1, 1, dtype=torch.float64))
    return hist.diagonal().numpy()


def dominant_colours(paths: Sequence[str | Path], k: int = DOMINANT_COLOURS, seed: int = 0,
                     plain_threshold: float = 0.75) -> np.ndarray:
    """``[n, k, 3]``: the ``k`` k-means Lab colours of each image's subject.

    The pixels :func:`palette_histogram` sees in :class:`AestheticEncoder` (the image
    stretched to 160², its region from :func:`stylers.adaptive.region_mask`, both at
    64², pixels with region weight above 0.5), clustered in Lab (scikit-learn k-means,
    ``random_state=seed``, on the distinct colours weighted by their counts). An image
    with fewer than ``k`` distinct colours repeats its last one; a subject of fewer than
    ``k`` colours gives the rest to blended pixels (a product's edge against its backdrop).
    Each image's colours are kept for the process, keyed by its path, size and
    modification time: a matcher refitted on the same library reads no image again.

    Examples
    --------
    >>> dominant_colours(["data/styles/wave.jpg"]).shape  # doctest: +SKIP
    (1, 5, 3)
    """
    out = np.empty((len(paths), k, 3))
    for row, path in enumerate(paths):
        stat = os.stat(path)
        out[row] = _subject_colours(str(path), (stat.st_size, stat.st_mtime_ns), k, seed,
                                    plain_threshold)
    return out


@functools.lru_cache(maxsize=4096)
def _subject_colours(path: str, stamp: tuple[int, int], k: int, seed: int,
                     plain_threshold: float) -> np.ndarray:
    """One image's row of :func:`dominant_colours` (read-only; ``stamp`` keys the cache)."""
    from sklearn.cluster import KMeans

    from ground.images import load_image
    from stylers.adaptive import region_mask
    from stylers.colorspace import rgb_to_lab

    square = fit_square(load_image(path), 160, "stretch")
    x = torch.from_numpy(np.asarray(square, np.float32) / 255.0).permute(2, 0, 1)[None]
    mask = F.interpolate(region_mask(F.interpolate(x, size=(_MASK_SIZE, _MASK_SIZE),
                                                   mode="area"), plain_threshold),
                         size=(_PALETTE_SIZE, _PALETTE_SIZE), mode="bilinear",
                         align_corners=False)
    lab = rgb_to_lab(F.interpolate(x, size=(_PALETTE_SIZE, _PALETTE_SIZE), mode="area"))
    pixels = lab[0].flatten(1).T[mask[0, 0].flatten() > 0.5].double().numpy()
    if not len(pixels):
        pixels = lab[0].flatten(1).T.double().numpy()
    colours, counts = np.unique(pixels.round(3), axis=0, return_counts=True)
    n = min(k, len(colours))
    km = KMeans(n_clusters=n, n_init=2, random_state=seed).fit(colours, sample_weight=counts)
    centres = km.cluster_centers_
    out = np.concatenate([centres, np.repeat(centres[-1:], k - n, 0)])
    out.setflags(write=False)
    return out


def nearest_colour_similarity(colours: np.ndarray) -> np.ndarray:
    """``[n, 245]``: minus the CIEDE2000 distance from each palette bin's centre to the
    nearest of each reference's colours ``[n, k, 3]`` (Lab), over :data:`DELTA_E_SCALE`.

    Examples
    --------
    >>> grey = np.array([[[50.0, 0.0, 0.0]]])  # one colour: the centre of bin 122
    >>> v = nearest_colour_similarity(grey)
    >>> bool(v[0, 122] == 0), bool((v <= 0).all()), round(float(v[0, 0]), 3)  # grey to L=10
    (True, True, -0.425)
    """
    from skimage.color import deltaE_ciede2000

    centres = bin_centres()
    colours = np.asarray(colours, np.float64)
    de = deltaE_ciede2000(centres[None, :, None, :], colours[:, None, :, :])
    return -de.min(2) / DELTA_E_SCALE


def palette_presence(hist: np.ndarray) -> np.ndarray:
    """How present each colour bin is in palettes ``[n, 245]`` (soft Lab histograms), in
    [0, 1]: the bin's mass over what a colour covering :data:`PRESENT_SHARE` (2%) of the
    region leaves in it when it sits at the bin's centre, clipped at 1.

    The soft histogram already spreads each pixel over the neighbouring bins (a Gaussian
    of one bin's width), so no further smoothing: a 2% colour counts fully in its own bin
    and 0.61 in a neighbouring one (one bin away along one axis).

    Examples
    --------
    >>> hist = np.zeros((1, 245)); hist[0, 122] = 0.0641 * 0.01  # 1% of a grey at L=50
    >>> [float(palette_presence(k * hist)[0, 122].round(2)) for k in (1, 2, 10)]
    [0.5, 1.0, 1.0]
    """
    return np.minimum(np.asarray(hist, np.float64) / (PRESENT_SHARE * _bin_self_weights()), 1.0)


class AestheticSpace:
    """Block-weighted aesthetic vectors: absolute palette, domain-centred standardised
    texture and style.

    Parameters
    ----------
    block_weights : mapping of str to float, optional
        Weight of each block in the cosine (default :data:`DEFAULT_BLOCK_WEIGHTS`). A
        block may be left out with weight 0.
    center : bool
        Centre each domain (items, styles) on its own mean before scaling (texture and
        style blocks; also the palette with ``standardise_palette``).
    standardise_palette : bool
        Treat the palette like the other blocks (centred, unit variance per bin)
        instead of comparing the square-rooted histograms directly (``"bhattacharyya"``
        only).
    palette : {"bhattacharyya", "coverage", "nearest-colour"}
        How two palettes compare. ``"bhattacharyya"``: the cosine of the square-rooted
        histograms, which rewards matching *proportions* (symmetric). ``"coverage"``:
        ``sum_i p_u(i) presence_s(i)``, the share of the item's (or shopper's) colour
        mass ``p_u`` (the histogram) that the reference contains
        (:func:`palette_presence`), in [0, 1]: a reference showing the shopper's colours
        among others covers them fully. Asymmetric: items get ``p``, references
        ``presence``. The block enters the score with its weight like a block cosine
        (``w_palette / sum(w) * coverage``, not re-normalised); each item vector gets one
        more column, ``sqrt(w_palette / sum(w) * (1 - |p|^2))`` (0 for references), that
        keeps its norm 1 without touching the score, so a weighted mean of items (a
        shopper's vector) holds the weighted mixture of their palettes and scores its
        coverage exactly, up to the mean's re-normalisation (one factor per shopper).
        ``"nearest-colour"``: the same asymmetric block with the reference's side
        :func:`nearest_colour_similarity` of its dominant colours (given to
        :meth:`transform`): ``sum_i p_u(i) v_s(i)``, minus the item's (shopper's) mean
        CIEDE2000 distance to the reference's nearest dominant colour, over 100 (each
        colour at its bin's centre). Graded, not capped at a presence.
    palette_power : float
        Items' palette histograms are raised to this power and renormalised before
        anything else (a shopper's palette is the mean of their items'): a garment's
        colour is its dominant one, and trims, prints, shading and a backdrop the mask
        let through count less. 1: the histogram as measured. References' palettes are
        left as they are. Needs ``standardise_palette=False``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> items, styles = rng.random((50, 489)), rng.random((8, 489)) + 1.0
    >>> space = AestheticSpace().fit(items, styles)
    >>> v = space.transform(styles, "styles")
    >>> v.shape, bool(np.allclose(np.linalg.norm(v, axis=1), 1))
    ((8, 489), True)
    """

    def __init__(self, block_weights: Mapping[str, float] | None = None, center: bool = True,
                 standardise_palette: bool = False, palette: str = "bhattacharyya",
                 palette_power: float = 1.0):
        self.block_weights = dict(block_weights) if block_weights else None
        self.center = center
        self.standardise_palette = standardise_palette
        self.palette = palette
        self.palette_power = palette_power

    def _weights(self) -> dict[str, float]:
        weights = DEFAULT_BLOCK_WEIGHTS | (self.block_weights or {})
        unknown = set(weights) - {*BLOCKS, CLIP_BLOCK}
        if unknown or any(w < 0 for w in weights.values()) or not sum(
                weights[b] for b in BLOCKS) > 0:
            raise ValueError(f"block_weights must be non-negative weights of {BLOCKS} (and "
                             f"{CLIP_BLOCK!r}) with a positive sum, got {self.block_weights}")
        if self.palette not in PALETTE_SIMILARITIES:
            raise ValueError(f"palette must be one of {PALETTE_SIMILARITIES}, got "
                             f"{self.palette!r}")
        if self.palette != "bhattacharyya" and self.standardise_palette:
            raise ValueError(f"palette={self.palette!r} compares histograms as they are: it "
                             "cannot be combined with standardise_palette")
        if not self.palette_power > 0 or (self.standardise_palette and self.palette_power != 1):
            raise ValueError(f"palette_power must be > 0, and 1 with standardise_palette, got "
                             f"{self.palette_power}")
        return weights

    def fit(self, item_vectors: np.ndarray, style_vectors: np.ndarray) -> AestheticSpace:
        """Learn each domain's mean and the shared per-dimension scale (in float64, over
        row chunks: a large catalog is never copied whole)."""
        self._weights()
        domains = {"items": item_vectors, "styles": style_vectors}

        def total(vectors: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
            return sum(fn(np.asarray(vectors[i:i + _CHUNK], np.float64)).sum(0)
                       for i in range(0, len(vectors), _CHUNK))

        self.means_ = {k: (total(v, lambda x: x) / len(v) if self.center
                           else np.zeros(v.shape[1])) for k, v in domains.items()}
        squares = sum(total(v, lambda x, k=k: (x - self.means_[k]) ** 2)
                      for k, v in domains.items())
        self.scale_ = np.sqrt(squares / sum(len(v) for v in domains.values())) + 1e-6
        if not self.standardise_palette:
            size = AestheticEncoder.block_sizes["palette"]
            for mean in self.means_.values():
                mean[:size] = 0.0
            self.scale_[:size] = 1.0
        return self

    def transform(self, vectors: np.ndarray, domain: str,
                  colours: np.ndarray | None = None) -> np.ndarray:
        """Vectors of encoded ``vectors`` ``[n, dim]`` from ``domain`` ("items"/"styles"):
        unit rows ``[n, dim]``; under ``palette="coverage"`` or ``"nearest-colour"``,
        ``[n, dim + 1]`` (the norm-keeping column) and references' rows are not unit
        (their palette block is the presence, or the nearest-colour similarity of the
        references' dominant ``colours`` ``[n, k, 3]``, :func:`dominant_colours`)."""
        if domain not in ("items", "styles"):
            raise ValueError(f"domain must be 'items' or 'styles', got {domain!r}")
        if len(vectors) > _CHUNK:  # float64 intermediates: a chunk at a time
            return np.concatenate([self.transform(
                vectors[i:i + _CHUNK], domain, None if colours is None else colours[i:i + _CHUNK])
                for i in range(0, len(vectors), _CHUNK)])
        if self.palette == "nearest-colour" and domain == "styles" and (
                colours is None or len(colours) != len(vectors)):
            raise ValueError("palette='nearest-colour' needs the dominant colours of each "
                             f"reference ({len(vectors)}), got "
                             f"{None if colours is None else len(colours)}")
        z = (np.asarray(vectors, np.float64) - self.means_[domain]) / self.scale_
        weights = self._weights()
        parts = AestheticEncoder.split(z)
        if domain == "items" and self.palette_power != 1:
            hist = parts["palette"] ** (2 * self.palette_power)  # the block is sqrt(hist)
            parts["palette"] = np.sqrt(hist / np.maximum(hist.sum(1, keepdims=True), 1e-300))
        total = sum(weights[name] for name in parts)
        out = [math.sqrt(weights[name] / total) * _unit(parts[name]) for name in parts]
        if self.palette != "bhattacharyya":
            hist = parts["palette"] ** 2
            hist /= np.maximum(hist.sum(1, keepdims=True), 1e-12)
            share = math.sqrt(weights["palette"] / total)
            if domain == "items":
                slack = np.sqrt(np.maximum(1.0 - (hist ** 2).sum(1, keepdims=True), 0.0))
                out[0] = share * hist
                out.append(share * slack)
            elif self.palette == "coverage":
                out[0] = share * palette_presence(hist)
                out.append(np.zeros((len(hist), 1)))
            else:
                out[0] = share * nearest_colour_similarity(colours)
                out.append(np.zeros((len(hist), 1)))
        return np.concatenate(out, axis=1).astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean_items": self.means_["items"], "mean_styles": self.means_["styles"],
                "scale": self.scale_}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], block_weights: Mapping[str, float]
                    | None, center: bool, standardise_palette: bool,
                    palette: str = "bhattacharyya", palette_power: float = 1.0
                    ) -> AestheticSpace:
        space = cls(block_weights, center, standardise_palette, palette, palette_power)
        space.means_ = {"items": arrays["mean_items"], "styles": arrays["mean_styles"]}
        space.scale_ = arrays["scale"]
        return space


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class StyleReference:
    """One reference of a :class:`StyleLibrary` with its ``styles.csv`` metadata."""

    style_id: str
    path: str
    artist: str = ""
    title: str = ""
    licence: str = ""
    tags: tuple[str, ...] = ()


class StyleLibrary:
    """Style references: a folder of images plus an optional ``styles.csv``.

    ``styles.csv`` columns (all optional but ``file``): ``file`` (name in the folder),
    ``artist``, ``title``, ``licence``, ``tags`` (``;``-separated). Images without a
    row get empty metadata; rows without an image are an error naming them.

    Parameters
    ----------
    references : sequence of StyleReference

    Examples
    --------
    >>> library = StyleLibrary.from_folder("../shared/data/styles",
    ...                                    exclude_licence="tests only")  # doctest: +SKIP
    >>> len(library), library["wave"].artist  # doctest: +SKIP
    (45, 'Katsushika Hokusai (d.1849)')
    """

    def __init__(self, references: Sequence[StyleReference]) -> None:
        self.references = list(references)
        ids = [r.style_id for r in self.references]
        if len(set(ids)) != len(ids):
            raise ValueError("style ids must be unique (one image per file stem)")
        if not ids:
            raise ValueError("a style library needs at least one reference")
        self._by_id = {r.style_id: r for r in self.references}

    @classmethod
    def from_folder(cls, folder: str | Path, exclude_licence: str | None = None
                    ) -> StyleLibrary:
        """Read ``folder`` (id = file stem) and its ``styles.csv`` if there is one.

        ``exclude_licence`` drops references whose licence contains that text
        (e.g. ``"tests only"``).
        """
        catalog = Catalog.from_directory(folder, pattern="*", suffixes=IMAGE_SUFFIXES)
        rows: dict[str, dict[str, str]] = {}
        meta = Path(folder) / "styles.csv"
        if meta.is_file():
            with meta.open(newline="", encoding="utf-8") as fh:
                for line, row in enumerate(csv.DictReader(fh), start=2):
                    stem = Path(row.get("file") or "").stem
                    if stem not in catalog:
                        raise ValueError(f"{meta}:{line}: no image {row.get('file')!r} in "
                                         f"{folder}")
                    rows[stem] = row
        refs = []
        for style_id in catalog.item_ids:
            row = rows.get(style_id, {})
            licence = row.get("licence", "")
            if exclude_licence and exclude_licence in licence:
                continue
            tags = tuple(t for t in (row.get("tags") or "").split(";") if t)
            refs.append(StyleReference(style_id, str(catalog.path(style_id)),
                                       row.get("artist", ""), row.get("title", ""), licence,
                                       tags))
        return cls(refs)

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> StyleLibrary:
        """References without metadata, one per catalog image."""
        return cls([StyleReference(i, str(catalog.path(i))) for i in catalog.item_ids])

    def catalog(self) -> Catalog:
        """The references as a :class:`~recsys.catalog.Catalog` rooted at their common folder."""
        root = Path(os.path.commonpath([str(Path(p).resolve().parent) for p in self.paths]))
        return Catalog(root, {r.style_id: Path(r.path).resolve().relative_to(root)
                              for r in self.references})

    @property
    def ids(self) -> list[str]:
        return [r.style_id for r in self.references]

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.references]

    def __getitem__(self, style_id: str) -> StyleReference:
        return self._by_id[style_id]

    def __len__(self) -> int:
        return len(self.references)

    def magenta_vectors(self) -> np.ndarray:
        """``[n, 100]`` raw Magenta style vectors of the references (the styler's own
        preprocessing: centre square crop, Lanczos 256²)."""
        from stylers.magenta import MagentaStylePredictor, onnx_model_path, prepare_style_image

        predictor = MagentaStylePredictor.from_onnx(onnx_model_path("arbitrary_predict.onnx"))
        with torch.inference_mode():
            return np.concatenate([predictor.eval()(prepare_style_image(p)).numpy()
                                   for p in self.paths]).astype(np.float32)


@dataclass(frozen=True)
class PersonalStyle:
    """A user's style for a continuous-code styler: ``vector`` (``[100]``, Magenta) mixes the
    ``references`` with ``weights`` (summing to 1, best first)."""

    vector: np.ndarray
    references: tuple[str, ...]
    weights: tuple[float, ...]


HUBNESS = ("csls", "zscore", "isoftmax", "balanced")
_PRICE_STEP = 1e-4  # least price raise: a bounced user's preference is strict in float32
_PRICE_TIE = 1e-5  # nets this close to a user's best count as theirs too (float32 index)
_MAX_PRICE_ROUNDS = 1000


def _demand(scores: np.ndarray, prices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which references each user may take at ``prices`` (``[n, n_styles]``: within
    :data:`_PRICE_TIE` of their best net score, since a float32 index may pick any of
    them) and each net score's margin over the user's best elsewhere."""
    net = scores - prices
    rows = np.arange(len(net))
    top = net.argmax(1)
    first = net[rows, top]
    net[rows, top] = -np.inf
    second = net.max(1)
    net[rows, top] = first
    near = net >= first[:, None] - _PRICE_TIE
    best_elsewhere = np.where(np.arange(net.shape[1]) == top[:, None], second[:, None],
                              first[:, None])
    return near, net - best_elsewhere


def capacity_prices(scores: np.ndarray, max_share: float,
                    names: Sequence[str] | None = None) -> np.ndarray:
    """Per-column prices under which no column is the best of more than its cap of the rows.

    ``scores`` is ``[n_users, n_styles]`` (higher is better); the cap is ``max_share``
    times the fair share ``n_users / n_styles`` (at least ``ceil(n_users / n_styles)``).
    An ascending auction (:class:`AestheticMatcher`, ``hubness="balanced"``): each round
    raises every over-subscribed column's price by its ``(cap + 1)``-th largest margin
    plus :data:`_PRICE_STEP`. ``names`` label the columns in the warning given if the
    rounds run out. Any scores work: the matcher's similarities, or a judge's minus
    distances (:func:`evaluation.style_fit.judge_as_matcher`).

    Examples
    --------
    >>> capacity_prices(np.array([[1.0, 0.0], [0.9, 0.5], [0.8, 0.7]]), 1.5)  # cap 2: one leaves
    array([0.1001, 0.    ])
    """
    scores = np.asarray(scores, np.float64)
    n, n_styles = scores.shape
    cap = max(math.ceil(n / n_styles), math.floor(max_share * n / n_styles))
    prices = np.zeros(n_styles)
    for rounds in range(_MAX_PRICE_ROUNDS + 1):
        near, margin = _demand(scores, prices)
        counts = near.sum(0)
        over = np.flatnonzero(counts > cap)
        if not len(over) or rounds == _MAX_PRICE_ROUNDS:
            break
        for s in over:  # the (cap+1)-th largest margin at s: it and those below leave
            prices[s] += -np.partition(-margin[near[:, s], s], cap)[cap] + _PRICE_STEP
    names = list(names) if names is not None else [str(s) for s in range(n_styles)]
    if len(over):
        log.warning("balanced hubness: after %d rounds %s still over the cap of %d users "
                    "(identical users, for one, cannot be split by a price)", rounds,
                    {names[s]: int(counts[s]) for s in over}, cap)
    log.info("balanced hubness: %d rounds, %d of %d references priced (highest %.4f), "
             "cap %d of %d users, largest share %d", rounds, int((prices > 0).sum()),
             n_styles, prices.max(), cap, n, counts.max())
    return prices


class AestheticMatcher:
    """FAISS index of style references in the aesthetic space; nearest and mixed styles.

    A few references (dark or white-ground paintings) are everyone's nearest
    neighbour in the plain cosine: *hubness*. ``hubness`` corrects it with the
    references' similarity to a population of users, learned at :meth:`fit`:

    ``"csls"``
        cross-domain similarity local scaling (Conneau et al. 2018, "Word
        translation without parallel data"): ``2 cos(u, s) - r_U(s) - r_S(u)``,
        where ``r_U(s)`` is the mean cosine of reference ``s`` to its ``hub_k``
        nearest population vectors and ``r_S(u)`` the mean cosine of ``u`` to its
        ``hub_k`` nearest references (constant per user: it does not change a
        user's ranking, but the score keeps its definition);
    ``"zscore"``
        ``(cos(u, s) - mean_s) / std_s`` with each reference's mean and standard
        deviation of the cosine over the population;
    ``"isoftmax"``
        inverted softmax (Smith et al. 2017, "Offline bilingual word vectors, orthogonal
        transformations and the inverted softmax"): the log of a softmax over the
        population, ``cos(u, s) - t log mean_v exp(cos(v, s) / t)`` with
        ``t = hub_temperature``; a small ``t`` subtracts the reference's best cosine to
        the population, a large one its mean;
    ``"balanced"``
        capacity-constrained prices (the dual prices of an assignment with capacities:
        an ascending auction, Bertsekas 1988): ``cos(u, s) - price_s``, with prices
        chosen so that when every population user takes their best reference at these
        prices, none holds more than ``max_share`` times its fair share
        ``n_users / n_styles`` (at least ``ceil(n_users / n_styles)`` users, so the
        capacities can hold everyone). From zero prices, each round raises the price of
        every over-subscribed reference by its ``(cap + 1)``-th largest margin (a user's
        net score there minus their best elsewhere) plus ``1e-4``, so all but its
        ``cap`` most attached users prefer their next option; a user counts towards
        every reference within ``1e-5`` of their best (a float32 index may break a near
        tie either way). Prices only rise, and rounds repeat until no reference is over
        its cap (at most 1,000 rounds; a warning names the references still over it).
        A population under the cap keeps zero prices, i.e. the plain cosine.

    Each is a per-reference scale and offset, so the FAISS index holds
    ``[a_s · s, b_s]`` and is queried with ``[u, 1]``: any factory string still works.

    Parameters
    ----------
    block_weights : mapping, optional
        :class:`AestheticSpace` block weights.
    center, standardise_palette : bool
        See :class:`AestheticSpace`.
    palette : {"bhattacharyya", "coverage", "nearest-colour"}
        How a user's palette is compared with a reference's (:class:`AestheticSpace`):
        matching proportions, the share of the user's colours the reference contains, or
        minus their mean CIEDE2000 distance to the nearest of the reference's
        :data:`DOMINANT_COLOURS` k-means colours (computed at :meth:`fit` from
        ``library``'s images, seed 0). The default, nearest-colour, was chosen on the
        demo shoppers (``docs/aesthetic.md``, round 5).
    palette_power : float
        Power of the items' palette histograms before they are averaged
        (:class:`AestheticSpace`): a garment counts by its dominant colour. The default
        6 was chosen on the demo shoppers (``docs/aesthetic.md``, round 6); 1 is the
        histogram as measured (matchers saved before it load with 1).
    factory : str
        FAISS ``index_factory`` string (exact ``"Flat"`` by default; ``"HNSW32"`` for
        thousands of references).
    mix_k : int
        References mixed into a personal style.
    temperature : float
        Softmax temperature of the mixing weights over the top-``mix_k`` scores (and
        of the pooling over a user's centroids). The default 0.01 is one CIEDE2000 unit
        (about a just-noticeable colour difference) on the nearest-colour score
        (``-ΔE00 / 100``); with 5 references mixed, the two halves of a shopper's history
        get closer mixes than random pairs of shoppers on both study sets
        (``docs/aesthetic.md``, round 6; before it, 3 references at 0.05, which weighs
        nearest-colour's top scores, a fraction of a ΔE00 apart, almost equally).
    half_life_days : float or None
        Recency half-life of users' aesthetic vectors (:meth:`taste_model`); needs a
        time on every event, so the default is none (any log works); the study in
        ``docs/aesthetic.md`` uses 60 days.
    hubness : {"balanced", "isoftmax", "csls", "zscore", None}
        Hubness correction of the score (see above); ``None``: the plain cosine. The
        default (capacity prices at ``max_share=2.0``, with the nearest-colour palette
        alone) was chosen on the 300 demo shoppers (``docs/aesthetic.md``, round 5;
        before it, the inverted softmax at ``hub_temperature=0.01``). ``"balanced"``
        holds the population's scores in memory at :meth:`fit` (users x references).
    hub_k : int
        Neighbourhood size of ``"csls"`` (capped at the population and the library).
    hub_temperature : float
        Temperature of ``"isoftmax"``.
    max_share : float
        Most population users a reference may take under ``"balanced"``, as a multiple
        (> 1) of its fair share. The default 2.0 was set a priori below the 3× target of
        ``docs/aesthetic.md``, leaving room for a population other than the one the
        prices were learned on.
    max_centroids : int
        Most aesthetic vectors per user (:meth:`taste_model`): 1 is the weighted mean of
        their items; more is a weighted k-means with one centroid per
        ``items_per_centroid`` items. A user's score for a reference pools their
        centroids' scores weighted by centroid mass,
        ``temperature · log Σ_c w_c exp(score_c / temperature)`` (the best centroid's
        score when one dominates).
    items_per_centroid : int

    Attributes
    ----------
    space_ : AestheticSpace
    index_ : StyleIndex
        Over the references' aesthetic vectors (augmented with the hubness offset).
    style_ids_ : list of str
    style_paths_ : dict of str to str
    style_vectors_ : ndarray of float32, shape (n_styles, dim)
        The references in the space.
    hub_scale_, hub_offset_ : ndarray of float32, shape (n_styles,)
        The per-reference ``a_s`` and ``b_s`` of the hubness correction (``None`` without).
    population_ : int
        Vectors the correction was learned on.
    magenta_ : ndarray of float32, shape (n_styles, 100) or None
        Raw style vectors for :meth:`personal_style` (``None``: fitted without them).
    style_colours_ : ndarray, shape (n_styles, 5, 3) or None
        The references' dominant Lab colours under ``palette="nearest-colour"`` (saved
        with the matcher; ``None`` otherwise).

    Examples
    --------
    >>> matcher = AestheticMatcher(hubness="csls", hub_k=10).fit(
    ...     library, style_descriptors, item_descriptors, magenta,
    ...     interactions=log, item_ids=item_ids)  # doctest: +SKIP
    >>> ids, scores = matcher.match(profiles, k=3)  # doctest: +SKIP
    """

    def __init__(self, block_weights: Mapping[str, float] | None = None, center: bool = True,
                 factory: str = "Flat", mix_k: int = 5, temperature: float = 0.01,
                 half_life_days: float | None = None, standardise_palette: bool = False,
                 hubness: str | None = "balanced", hub_k: int = 10,
                 hub_temperature: float = 0.01, max_share: float = 2.0,
                 max_centroids: int = 1, items_per_centroid: int = 4,
                 palette: str = "nearest-colour", palette_power: float = 6.0) -> None:
        self.block_weights = dict(block_weights) if block_weights else None
        self.standardise_palette = standardise_palette
        self.palette = palette
        self.palette_power = palette_power
        self.half_life_days = half_life_days
        self.center = center
        self.factory = factory
        self.mix_k = mix_k
        self.temperature = temperature
        self.hubness = hubness
        self.hub_k = hub_k
        self.hub_temperature = hub_temperature
        self.max_share = max_share
        self.max_centroids = max_centroids
        self.items_per_centroid = items_per_centroid

    def get_params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.endswith("_")}

    def _check_params(self) -> None:
        if self.mix_k < 1 or not self.temperature > 0 or not self.hub_temperature > 0:
            raise ValueError(f"mix_k must be >= 1 and temperature, hub_temperature > 0, got "
                             f"{self.mix_k}, {self.temperature}, {self.hub_temperature}")
        if not self.max_share > 1:
            raise ValueError(f"max_share must be > 1 (a multiple of a reference's fair share "
                             f"n_users / n_styles), got {self.max_share}")
        if self.hubness is not None and self.hubness not in HUBNESS:
            raise ValueError(f"hubness must be None or one of {HUBNESS}, got {self.hubness!r}")
        for name in ("hub_k", "max_centroids", "items_per_centroid"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def fit(self, library: StyleLibrary, style_descriptors: np.ndarray,
            item_descriptors: np.ndarray, magenta_vectors: np.ndarray | None = None, *,
            interactions: Interactions | None = None, item_ids: Sequence[str] | None = None
            ) -> AestheticMatcher:
        """Fit the space on the items' and references' descriptors and index the references.

        Parameters
        ----------
        library : StyleLibrary
        style_descriptors : ndarray, shape (n_styles, dim)
            :class:`AestheticEncoder` output for ``library.paths``, in order.
        item_descriptors : ndarray, shape (n_items, dim)
            The same for the catalog (the item domain's mean and scale).
        magenta_vectors : ndarray, shape (n_styles, 100), optional
            Raw Magenta vectors (:meth:`StyleLibrary.magenta_vectors`) for personal styles.
        interactions : Interactions, optional
            The users the hubness correction is learned on (their aesthetic vectors from
            :meth:`taste_model`); without it, each item stands for a user of one item.
        item_ids : sequence of str, optional
            Ids of the ``item_descriptors`` rows; needed with ``interactions``.
        """
        if len(style_descriptors) != len(library):
            raise ValueError(f"{len(style_descriptors)} style descriptors for a library of "
                             f"{len(library)}")
        self._check_params()
        self.space_ = AestheticSpace(self.block_weights, self.center, self.standardise_palette,
                                     self.palette, self.palette_power).fit(item_descriptors,
                                                                           style_descriptors)
        self.style_colours_ = (dominant_colours(library.paths)
                               if self.palette == "nearest-colour" else None)
        self.style_ids_ = library.ids
        self.style_paths_ = dict(zip(library.ids, library.paths, strict=True))
        items = self.item_vectors(item_descriptors)
        if interactions is not None:
            if item_ids is None:
                raise ValueError("fit with interactions needs the item_ids of the descriptors")
            items = self.taste_model().fit(interactions, item_ids, items).vectors_
        self._calibrate(self.space_.transform(style_descriptors, "styles",
                                              self.style_colours_), items)
        self.magenta_ = None if magenta_vectors is None else np.asarray(magenta_vectors,
                                                                         np.float32)
        return self

    def _calibrate(self, style_vectors: np.ndarray, population: np.ndarray
                   ) -> AestheticMatcher:
        """Learn the hubness correction on ``population`` vectors and index the references."""
        self.style_vectors_ = np.asarray(style_vectors, np.float32)
        self.population_ = len(population)
        self.hub_scale_ = self.hub_offset_ = None
        vectors = self.style_vectors_
        if self.hubness is not None:
            if not len(population):
                raise ValueError("the hubness correction needs a non-empty population")
            scale, offset = self._population_statistics(np.asarray(population, np.float32))
            self.hub_scale_, self.hub_offset_ = scale.astype(np.float32), offset.astype(np.float32)
            vectors = np.hstack([vectors * self.hub_scale_[:, None], self.hub_offset_[:, None]])
        self.index_ = StyleIndex(self.factory).fit(self.style_ids_, vectors,
                                                   encoder_id="aesthetic")
        return self

    def _population_statistics(self, population: np.ndarray, chunk: int = 65536
                               ) -> tuple[np.ndarray, np.ndarray]:
        """The per-reference scale and offset of the correction, streamed over chunks of the
        population (millions of users x hundreds of references need not fit in memory)."""
        if self.hubness == "balanced":
            return np.ones(len(self.style_vectors_)), -self._clearing_prices(population, chunk)
        n_styles, t = len(self.style_vectors_), self.hub_temperature
        k = min(self.hub_k, len(population))
        top = np.full((0, n_styles), -np.inf)  # csls: the k best cosines so far per reference
        total, squares = np.zeros(n_styles), np.zeros(n_styles)  # zscore
        peak, mass = np.full(n_styles, -np.inf), np.zeros(n_styles)  # isoftmax: log-sum-exp
        for start in range(0, len(population), chunk):
            cos = (population[start:start + chunk] @ self.style_vectors_.T).astype(np.float64)
            if self.hubness == "csls":
                both = np.concatenate([top, cos])
                top = -np.partition(-both, k - 1, axis=0)[:k] if len(both) > k else both
            elif self.hubness == "zscore":
                total += cos.sum(0)
                squares += (cos ** 2).sum(0)
            else:
                new_peak = np.maximum(peak, cos.max(0))
                mass = mass * np.exp((peak - new_peak) / t) + np.exp(
                    (cos - new_peak) / t).sum(0)
                peak = new_peak
        n = len(population)
        if self.hubness == "csls":
            return np.full(n_styles, 2.0), -top.mean(0)
        if self.hubness == "zscore":
            mean = total / n
            std = np.sqrt(np.maximum(squares / n - mean ** 2, 0.0)) + 1e-6
            return 1.0 / std, -mean / std
        return np.ones(n_styles), -(peak + t * np.log(mass / n))

    def _clearing_prices(self, population: np.ndarray, chunk: int) -> np.ndarray:
        """:func:`capacity_prices` of the population's cosines to the references (every round
        needs all of them: they are held in memory, ``n_users x n_styles``)."""
        cos = np.concatenate([population[start:start + chunk] @ self.style_vectors_.T
                              for start in range(0, len(population), chunk)])
        return capacity_prices(cos, self.max_share, self.style_ids_)

    def taste_model(self) -> TasteModel:
        """The unfitted :class:`~recsys.taste.TasteModel` that turns what users engaged with
        (confidence and recency weighted) into aesthetic vectors from :meth:`item_vectors`:
        the weighted mean, or ``max_centroids`` k-means centroids."""
        if self.max_centroids == 1:
            return TasteModel(half_life_days=self.half_life_days)
        return TasteModel("kmeans", half_life_days=self.half_life_days,
                          max_centroids=self.max_centroids,
                          items_per_centroid=self.items_per_centroid)

    def item_vectors(self, descriptors: np.ndarray) -> np.ndarray:
        """Item descriptors in the fitted space (unit rows, :meth:`AestheticSpace.transform`)."""
        return self.space_.transform(descriptors, "items")

    def _user_offset(self, vectors: np.ndarray) -> np.ndarray:
        """``-r_S(u)`` of CSLS (0 otherwise): minus the mean cosine to the nearest references."""
        if self.hubness != "csls":
            return np.zeros(len(vectors), np.float32)
        cos = vectors @ self.style_vectors_.T
        k = min(self.hub_k, cos.shape[1])
        return -(-np.partition(-cos, k - 1, axis=1)[:, :k]).mean(1)

    def _search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        vectors = np.asarray(vectors, np.float32)
        queries = vectors
        if self.hubness is not None:
            queries = np.hstack([vectors, np.ones((len(vectors), 1), np.float32)])
        ids, scores = self.index_.search(queries, k, encoder_id="aesthetic")
        return ids, scores + self._user_offset(vectors)[:, None]

    def match(self, users: np.ndarray | TasteProfiles, k: int = 1
              ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best references (ids ``[n, k]``, scores ``[n, k]``, best first) of users.

        ``users``: unit vectors ``[n, dim]`` in the space, or the
        :class:`~recsys.taste.TasteProfiles` of :meth:`taste_model` fitted on
        :meth:`item_vectors` (several centroids per user are pooled). The score is the
        inner product in the space (the weighted mean of the block cosines, the palette's
        coverage or nearest-colour similarity in its place with ``palette="coverage"`` or
        ``"nearest-colour"``), or its hubness-corrected form.
        """
        if not isinstance(users, TasteProfiles):
            return self._search(users, k)
        if users.vectors.shape[1] == 1:
            return self._search(users.vectors[:, 0], k)
        n, width, dim = users.vectors.shape
        n_styles = len(self.style_ids_)
        ids, scores = self._search(users.vectors.reshape(-1, dim), n_styles)
        row = {s: i for i, s in enumerate(self.style_ids_)}
        dense = np.full((n * width, n_styles), -np.inf)
        for r, (row_ids, row_scores) in enumerate(zip(ids, scores, strict=True)):
            found = [j for j, s in enumerate(row_ids) if s is not None]
            dense[r, [row[row_ids[j]] for j in found]] = row_scores[found]
        t = self.temperature
        with np.errstate(divide="ignore"):
            logits = dense.reshape(n, width, n_styles) / t + np.log(users.weights)[..., None]
        top = logits.max(1, keepdims=True)
        pooled = t * (top[:, 0] + np.log(np.exp(logits - top).sum(1)))
        order = np.argsort(-pooled, axis=1, kind="stable")[:, :min(k, n_styles)]
        return (np.asarray(self.style_ids_, dtype=object)[order],
                np.take_along_axis(pooled, order, 1).astype(np.float32))

    def personal_style(self, users: np.ndarray | TasteProfiles) -> list[PersonalStyle]:
        """Each user's mix of their top-``mix_k`` references' Magenta style vectors,
        weighted by a softmax of the scores at ``temperature``."""
        if self.magenta_ is None:
            raise RuntimeError("fit the matcher with magenta_vectors for personal styles")
        ids, sims = self.match(users, self.mix_k)
        row_of = {s: i for i, s in enumerate(self.style_ids_)}
        styles = []
        for row_ids, row_sims in zip(ids, sims, strict=True):
            logits = (row_sims - row_sims.max()) / self.temperature
            weights = np.exp(logits) / np.exp(logits).sum()
            vector = weights @ self.magenta_[[row_of[s] for s in row_ids]]
            styles.append(PersonalStyle(vector.astype(np.float32), tuple(map(str, row_ids)),
                                        tuple(float(w) for w in weights)))
        return styles

    def mix_vector(self, mix: Sequence[tuple[str, float]]) -> np.ndarray:
        """The Magenta vector ``[100]`` of a mix of references ``[(style_id, weight), ...]``
        (a :class:`PersonalStyle`'s, or ``StyleMatch.mix`` of a slate)."""
        if self.magenta_ is None:
            raise RuntimeError("fit the matcher with magenta_vectors for personal styles")
        row_of = {s: i for i, s in enumerate(self.style_ids_)}
        weights = np.array([w for _, w in mix], np.float32)
        return (weights @ self.magenta_[[row_of[s] for s, _ in mix]]).astype(np.float32)

    def save(self, path: str | Path) -> Path:
        """Write the fitted matcher to the folder ``path`` (JSON + npz + FAISS; no pickle)."""
        with atomic_directory(path, "matcher.json") as tmp:
            self.index_.save(tmp)  # index.faiss + meta.json
            arrays = self.space_.arrays() | {"style_vectors": self.style_vectors_}
            if self.magenta_ is not None:
                arrays["magenta"] = self.magenta_
            if self.style_colours_ is not None:
                arrays["style_colours"] = self.style_colours_
            if self.hubness is not None:
                arrays |= {"hub_scale": self.hub_scale_, "hub_offset": self.hub_offset_}
            write_npz_atomic(tmp / "arrays.npz", arrays)
            meta = {"format": FORMAT_VERSION, "params": self.get_params(),
                    "population": self.population_, "style_paths": self.style_paths_,
                    "style_ids": self.style_ids_}
            write_bytes_atomic(tmp / "matcher.json", json.dumps(meta, indent=2).encode())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> AestheticMatcher:
        """A matcher written by :meth:`save` (format 4; format 3 and older: palette power 1;
        rounds 2-4's format 2: where its
        weights were the defaults, palette 4, texture 0.5, style 0.5, clip 0.5, and the
        Bhattacharyya palette where none was saved; round 1's format 1: no hubness
        correction, and palette weight 2 where its weights were the defaults)."""
        path = saved_directory(path, "matcher.json")
        meta = read_meta(path, "matcher.json", "AestheticMatcher",
                         range(1, FORMAT_VERSION + 1))
        if meta["format"] == 1:
            meta["params"] = {k: meta[k] for k in (
                "block_weights", "center", "factory", "mix_k", "temperature",
                "half_life_days", "standardise_palette")} | {"hubness": None,
                                                             "palette": "bhattacharyya"}
            meta["params"]["block_weights"] = (meta["block_weights"] or
                                               {"palette": 2.0, "texture": 0.5, "style": 0.5})
        elif meta["format"] == 2:
            meta["params"] = {"palette": "bhattacharyya"} | meta["params"]
            meta["params"]["block_weights"] = (meta["params"]["block_weights"] or {
                "palette": 4.0, "texture": 0.5, "style": 0.5, CLIP_BLOCK: 0.5})
        if meta["format"] < 4:
            meta["params"] = {"palette_power": 1.0} | meta["params"]
        self = cls(**meta["params"])
        self.index_ = StyleIndex.load(path)
        with np.load(path / "arrays.npz", allow_pickle=False) as z:
            self.space_ = AestheticSpace.from_arrays(z, self.block_weights, self.center,
                                                     self.standardise_palette, self.palette,
                                                     self.palette_power)
            self.style_vectors_ = (z["style_vectors"] if "style_vectors" in z else
                                   self.index_.index_.reconstruct_n(0, self.index_.index_.ntotal))
            self.magenta_ = z["magenta"] if "magenta" in z else None
            self.style_colours_ = z["style_colours"] if "style_colours" in z else None
            self.hub_scale_ = z["hub_scale"] if "hub_scale" in z else None
            self.hub_offset_ = z["hub_offset"] if "hub_offset" in z else None
        self.population_ = meta.get("population", 0)
        self.style_ids_ = meta["style_ids"]
        self.style_paths_ = meta["style_paths"]
        return self
