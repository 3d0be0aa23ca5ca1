"""Offline proxies for click-through: a position-based click model over held-out
relevance, and two embedding proxies for rendered (stylised) product images.

Definitions
-----------
Position-based click model (PBM)
    A shopper examines rank ``r`` of a slate with probability ``e(r)`` and, having
    examined item ``i``, clicks with probability ``rho(u, i)``; clicks are
    independent. ``e`` is ``1 / log2(r + 1)`` (``"log2"``, the NDCG discount),
    ``1 / r ** eta`` (``"reciprocal"``) or a vector you measured (e.g. from a
    result-randomisation experiment). ``rho`` comes from held-out data:
    ``rho = p_relevant`` for an item the user interacted with in test and
    ``p_irrelevant`` otherwise (defaults 1 and 0).

    * expected clicks of a slate: ``sum_r e(r) * rho(u, i_r)``;
    * slate CTR: the probability of at least one click,
      ``1 - prod_r (1 - e(r) * rho(u, i_r))``.

    Both are means over users, like the ranking metrics. With binary ``rho`` and
    ``e = 1/log2(r+1)`` expected clicks is the unnormalised DCG@k.

Style-affinity lift of a render
    ``cos(t_u, E(render)) - cos(t_u, E(original))``: how much closer the
    stylised image is to the shopper's taste than the catalog photo, where
    ``t_u`` is the user's taste vector and ``E`` an image encoder. ``E`` must not
    be the encoder that chose the style (that one was optimised to agree with
    itself); ``t_u`` must live in ``E``'s space, so :func:`render_scores` builds
    it from the user's history images with ``E``: the normalised, unweighted mean
    of their embeddings.

Fidelity guard
    ``cos(E(render), E(original))`` on the product region: with a mask, pixels
    outside the product are set to a flat fill and the image is cropped to the
    mask's bounding box before encoding, so a restyled background cannot hide a
    product that was changed beyond recognition (or fake fidelity through an
    untouched background). A render that raises affinity while fidelity drops
    below a threshold chosen on known-good renders is a bad trade.

Examples
--------
>>> e = examination_probabilities(3)
>>> [round(float(x), 3) for x in e]
[1.0, 0.631, 0.5]
>>> rho = click_probabilities(np.array([[True, False, True]]))
>>> round(float(expected_clicks(rho, e)[0]), 3), round(float(slate_ctr(rho, e)[0]), 3)
(1.5, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

POSITION_MODELS = ("log2", "reciprocal")


def examination_probabilities(
    k: int, model: str | Sequence[float] = "log2", *, eta: float = 1.0
) -> np.ndarray:
    """Probability of examining ranks 1..k under a position-based model.

    Parameters
    ----------
    k : int
        Slate length.
    model : {"log2", "reciprocal"} or sequence of float
        ``"log2"``: ``1 / log2(r + 1)``; ``"reciprocal"``: ``1 / r ** eta``; a
        sequence: measured probabilities for ranks 1, 2, ... (at least ``k``
        values in [0, 1]).
    eta : float
        Steepness of the ``"reciprocal"`` model.

    Examples
    --------
    >>> examination_probabilities(2, "reciprocal", eta=2.0).tolist()
    [1.0, 0.25]
    >>> examination_probabilities(2, [0.9, 0.5, 0.1]).tolist()
    [0.9, 0.5]
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranks = np.arange(1, k + 1, dtype=np.float64)
    if isinstance(model, str):
        if model == "log2":
            return 1.0 / np.log2(ranks + 1.0)
        if model == "reciprocal":
            return 1.0 / ranks**eta
        raise ValueError(f"position model must be one of {POSITION_MODELS} or a vector")
    probs = np.asarray(model, dtype=np.float64)
    if probs.ndim != 1 or len(probs) < k:
        raise ValueError(f"need at least {k} examination probabilities, got {probs.shape}")
    if ((probs < 0) | (probs > 1)).any():
        raise ValueError("examination probabilities must lie in [0, 1]")
    return probs[:k].copy()


def click_probabilities(
    hits: np.ndarray, p_relevant: float = 1.0, p_irrelevant: float = 0.0
) -> np.ndarray:
    """Click probability given examination, from a hit matrix of held-out relevance.

    Examples
    --------
    >>> click_probabilities(np.array([[True, False]]), 0.8, 0.05).tolist()
    [[0.8, 0.05]]
    """
    for name, p in (("p_relevant", p_relevant), ("p_irrelevant", p_irrelevant)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {p}")
    return np.where(np.asarray(hits, dtype=bool), p_relevant, p_irrelevant)


def _checked(rho: np.ndarray, examination: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rho = np.asarray(rho, dtype=np.float64)
    e = np.asarray(examination, dtype=np.float64)
    if rho.ndim != 2 or rho.shape[1] != len(e):
        raise ValueError(f"rho {rho.shape} and examination {e.shape} disagree on the slate length")
    return rho, e


def expected_clicks(rho: np.ndarray, examination: np.ndarray) -> np.ndarray:
    """Per-user expected number of clicks on a slate: ``sum_r e(r) * rho_r``.

    Examples
    --------
    >>> expected_clicks(np.array([[1.0, 0.0, 1.0]]), np.array([1.0, 0.5, 0.5])).tolist()
    [1.5]
    """
    rho, e = _checked(rho, examination)
    return rho @ e


def slate_ctr(rho: np.ndarray, examination: np.ndarray) -> np.ndarray:
    """Per-user probability of at least one click: ``1 - prod_r (1 - e(r) * rho_r)``.

    Examples
    --------
    >>> slate_ctr(np.array([[0.5, 0.5]]), np.array([1.0, 0.5])).tolist()  # 1 - 0.5 * 0.75
    [0.625]
    """
    rho, e = _checked(rho, examination)
    return 1.0 - np.prod(1.0 - rho * e, axis=1)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    if (norm == 0).any():
        raise ValueError("cannot take the cosine of a zero vector")
    return x / norm


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``[n, d]`` arrays (a ``[d]`` row broadcasts).

    Examples
    --------
    >>> cosine(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([1.0, 0.0])).round(4).tolist()
    [1.0, 0.7071]
    """
    return np.sum(_unit(a) * _unit(b), axis=1)


def style_affinity_lift(taste: np.ndarray, render: np.ndarray, original: np.ndarray) -> np.ndarray:
    """``cos(taste, render) - cos(taste, original)`` per row.

    Parameters
    ----------
    taste : array [n, d] or [d]
        User taste vectors in the evaluation encoder's space.
    render, original : array [n, d]
        Embeddings of each render and of its original product photo, same encoder.

    Examples
    --------
    >>> taste = np.array([0.0, 1.0])
    >>> style_affinity_lift(taste, np.array([[1.0, 1.0]]), np.array([[1.0, 0.0]])).round(4).tolist()
    [0.7071]
    """
    render = np.atleast_2d(render)
    original = np.atleast_2d(original)
    if render.shape != original.shape:
        raise ValueError(f"render {render.shape} and original {original.shape} must pair up")
    return cosine(taste, render) - cosine(taste, original)


def fidelity(render: np.ndarray, original: np.ndarray) -> np.ndarray:
    """``cos(render, original)`` per row: 1 means the encoder sees the same product.

    Examples
    --------
    >>> fidelity(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]])).tolist()
    [1.0]
    """
    render = np.atleast_2d(render)
    original = np.atleast_2d(original)
    if render.shape != original.shape:
        raise ValueError(f"render {render.shape} and original {original.shape} must pair up")
    return cosine(render, original)


def masked_image(
    image: Any, mask: Any | None, *, fill: tuple[int, int, int] = (255, 255, 255),
    crop: bool = True,
) -> Any:
    """The product region of an image: outside the mask set to ``fill``, cropped to it.

    Parameters
    ----------
    image : PIL.Image.Image
    mask : bool/uint8 array [H, W], PIL image, path, or None
        Non-zero on the product. Resized (nearest) to the image when sizes differ.
        None returns the image unchanged.

    Examples
    --------
    >>> from PIL import Image
    >>> img = Image.new("RGB", (4, 4), (10, 20, 30))
    >>> m = np.zeros((4, 4), dtype=bool); m[1:3, 1:3] = True
    >>> masked_image(img, m).size
    (2, 2)
    """
    from PIL import Image

    if mask is None:
        return image
    if isinstance(mask, str | Path):
        mask = Image.open(mask)
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"))
    mask = np.asarray(mask)
    if mask.shape[:2] != (image.height, image.width):
        resized = Image.fromarray((mask > 0).astype(np.uint8) * 255).resize(
            image.size, Image.NEAREST)
        mask = np.asarray(resized)
    mask = mask > 0
    if not mask.any():
        raise ValueError("the product mask is empty")
    pixels = np.asarray(image.convert("RGB")).copy()
    pixels[~mask] = fill
    out = Image.fromarray(pixels)
    if crop:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        out = out.crop((int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))
    return out


def encoder_identity(encoder: Any) -> str:
    """The string naming an encoder's embedding space: ``encoder_id`` (``recsys.encoders``),
    else ``id`` or ``name``, else its class name."""
    for attr in ("encoder_id", "id", "name"):
        value = getattr(encoder, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(encoder).__name__


def _family(identity: str) -> str:
    return identity.split("(", 1)[0].split("@", 1)[0]


def _encode_paths(encoder: Any, paths: Sequence[str | Path], masks: Sequence[Any] | None,
                  batch_size: int) -> np.ndarray:
    """Embeddings of image files; with masks, of their product regions."""
    from PIL import Image

    out = []
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start:start + batch_size])
        if masks is not None:
            images = []
            for j, path in enumerate(chunk):
                with Image.open(path) as img:
                    images.append(masked_image(img.convert("RGB"), masks[start + j]))
            chunk = images
        out.append(np.asarray(encoder.encode(chunk), dtype=np.float64))
    return np.concatenate(out) if out else np.zeros((0, 0))


def render_scores(
    encoder: Any,
    render_paths: Sequence[str | Path],
    original_paths: Sequence[str | Path],
    *,
    history_paths: Sequence[Sequence[str | Path]] | None = None,
    taste: np.ndarray | None = None,
    masks: Sequence[Any] | None = None,
    chooser: str | None = None,
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """Style-affinity lift and fidelity of renders, from image files.

    Parameters
    ----------
    encoder : object with ``encode(images) -> [n, d]``
        The *evaluation* encoder (e.g. ``recsys.encoders.create_encoder(...)``); it is
        given paths, or PIL images when masks are applied.
    render_paths, original_paths : sequence of path
        One render per row and the catalog photo it was made from.
    history_paths : sequence of sequences of path, optional
        Per row, the photos of the user's history; the taste vector is the
        normalised mean of their embeddings under ``encoder``.
    taste : array [n, d], optional
        Taste vectors already in ``encoder``'s space (instead of ``history_paths``).
    masks : sequence of masks, optional
        Per row, the product mask of the original photo (see :func:`masked_image`),
        used for fidelity; lift uses the whole images, as the shopper sees them.
    chooser : str, optional
        ``encoder_id`` (or name) of the encoder that chose the styles. The same
        model family as ``encoder`` (the name before any options, e.g.
        ``"openclip"``) raises, since the lift would then be circular.

    Returns
    -------
    dict
        ``"fidelity"`` always; ``"lift"`` when a taste is given or computable.

    Examples
    --------
    >>> out = render_scores(enc, renders, originals, history_paths=hist,
    ...                     chooser="openclip")  # doctest: +SKIP
    >>> float(out["lift"].mean()), float(out["fidelity"].min())  # doctest: +SKIP
    """
    if len(render_paths) != len(original_paths):
        raise ValueError("render_paths and original_paths must pair up")
    if chooser is not None and _family(chooser) == _family(encoder_identity(encoder)):
        raise ValueError(f"the evaluation encoder {encoder_identity(encoder)!r} is the model "
                         f"that chose the styles ({chooser!r}); use another encoder")
    if masks is not None and len(masks) != len(original_paths):
        raise ValueError("give one mask per original image (None for no mask)")
    renders = _encode_paths(encoder, render_paths, None, batch_size)
    originals = _encode_paths(encoder, original_paths, None, batch_size)
    out: dict[str, np.ndarray] = {}
    if masks is None:
        out["fidelity"] = fidelity(renders, originals)
    else:
        out["fidelity"] = fidelity(_encode_paths(encoder, render_paths, masks, batch_size),
                                   _encode_paths(encoder, original_paths, masks, batch_size))
    if taste is None and history_paths is not None:
        if len(history_paths) != len(render_paths):
            raise ValueError("give one history per render")
        taste = np.stack([_unit(_encode_paths(encoder, list(h), None, batch_size).mean(axis=0))[0]
                          for h in history_paths])
    if taste is not None:
        out["lift"] = style_affinity_lift(taste, renders, originals)
    return out
