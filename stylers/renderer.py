"""Batched, cached rendering of (item, style) pairs with any styler.

Each render is stored under a key that hashes the item image's bytes, the style
image's bytes (unless the styler ignores it) or the style code's values (a
styler with a continuous style code takes one in place of an image, e.g. a
shopper's personal mix of references), the styler's name, version and params,
and the output size/format. Asking again costs a file-existence check,
so the work grows with distinct items x styles, never with users.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ground.device import resolve_device
from ground.files import file_sha256
from ground.images import ImageLoadError
from ground.tensors import load_image, save_image_atomic, tensor_to_pil

from .base import Styler

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
# (item id, item image, style id, style: an image, a 1-d style code for stylers with
# ``style_code_dim``, or None for stylers that ignore it)
RenderPair = tuple[str, PathLike, str, PathLike | np.ndarray | torch.Tensor | None]
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_FORMATS = ("png", "jpg")
_MIN_TILE = 16



class Renderer:
    """Render catalog items in style images with one styler, through an on-disk cache.

    Parameters
    ----------
    styler : Styler
        Any registered or custom styler (wrap it in
        :class:`~stylers.protection.ProtectedStyler` to protect the product).
    cache_dir : str or os.PathLike
        Where renders are written: ``<cache_dir>/<styler name>/<key[:2]>/<key>.<ext>``.
    device : str or torch.device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda:1"``, ...
    batch_size : int
        Items per forward pass (same style and size).
    max_side : int
        Item images are downscaled to this longer side; renders have that size.
    style_side : int
        Style images are downscaled to this longer side before the styler sees them.
    dtype : {"auto", "float32", "float16", "bfloat16"}
        Autocast precision. ``auto`` uses fp16 on CUDA for stylers marked
        ``fp16_safe`` and fp32 otherwise; a non-finite fp16 result is redone in fp32.
    image_format : {"png", "jpg"}
        File format of the renders.
    quality : int
        JPEG quality.
    tile_size : int, optional
        Stylize images whose longer side exceeds this in overlapping tiles
        (bounded memory; visible style changes across tiles are possible for
        stylers with global statistics). Also the fallback when one image runs
        out of GPU memory (then halving from half the image side until it fits).
    progress : bool
        Show a tqdm bar over the renders to do.

    Attributes
    ----------
    stats : dict
        Running counts: ``requested``, ``hits``, ``rendered``, ``skipped``.
    skipped : dict
        ``(item_id, style_id) -> reason`` of the pairs the last
        ``render(..., skip_unreadable=True)`` could not render.

    Examples
    --------
    >>> from stylers import create_styler
    >>> renderer = Renderer(create_styler("color"), "out/renders")  # doctest: +SKIP
    >>> renderer.render([("0108775015", "img/0108775015.jpg", "wave", "styles/wave.jpg")])
    ... # doctest: +SKIP
    [PosixPath('out/renders/color/3f/3f0c...png')]
    """

    def __init__(
        self,
        styler: Styler,
        cache_dir: PathLike,
        device: str | torch.device = "auto",
        batch_size: int = 4,
        max_side: int = 768,
        style_side: int = 512,
        dtype: str = "auto",
        image_format: str = "png",
        quality: int = 92,
        tile_size: int | None = None,
        progress: bool = True,
    ):
        if batch_size < 1 or max_side < 16 or style_side < 16:
            raise ValueError("batch_size must be >= 1 and max_side, style_side >= 16")
        if dtype != "auto" and dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")
        if image_format not in _FORMATS:
            raise ValueError(f"image_format must be one of {_FORMATS}, got {image_format!r}")
        if tile_size is not None and tile_size < _MIN_TILE:
            raise ValueError(f"tile_size must be >= {_MIN_TILE}, got {tile_size}")
        self.device = resolve_device(device)
        self.styler = styler.to(self.device)
        self.cache_dir = Path(cache_dir)
        self.batch_size = int(batch_size)
        self.max_side = int(max_side)
        self.style_side = int(style_side)
        self.dtype = dtype
        self.image_format = image_format
        self.quality = int(quality)
        self.tile_size = tile_size
        self.progress = progress
        self.stats = {"requested": 0, "hits": 0, "rendered": 0, "skipped": 0}
        self.skipped: dict[tuple[str, str], str] = {}
        self._autocast_dtype = self._pick_dtype()
        if self.device.type == "cuda":
            self.styler.to(memory_format=torch.channels_last)

    def _pick_dtype(self) -> torch.dtype | None:
        if self.dtype == "auto":
            safe = self.device.type == "cuda" and self.styler.fp16_safe
            return torch.float16 if safe else None
        return None if self.dtype == "float32" else _DTYPES[self.dtype]

    # -- keys -------------------------------------------------------------------------

    def cache_key(self, item_image: PathLike,
                  style_image: PathLike | np.ndarray | torch.Tensor | None) -> str:
        """Hex key of one render: hashes of the item image's bytes and of the style image's
        bytes (or the style code's values), styler identity, size, format."""
        uses_style = self.styler.uses_style_image
        if uses_style and style_image is None:
            raise ValueError(f"styler {self.styler.name!r} needs a style image")
        payload = {
            "item": file_sha256(item_image),
            "style": self._style_digest(style_image) if uses_style else None,
            "styler": self.styler.identity(),
            "max_side": self.max_side,
            "style_side": (self.style_side if uses_style and _style_code(style_image) is None
                           else None),
            "format": self.image_format,
        }
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def _style_digest(self, style: PathLike | np.ndarray | torch.Tensor) -> str:
        code = _style_code(style)
        if code is None:
            return file_sha256(style)
        if code.shape[0] != self.styler.style_code_dim:
            raise ValueError(f"styler {self.styler.name!r} takes style codes of size "
                             f"{self.styler.style_code_dim}, got one of size {code.shape[0]}")
        return "code:" + hashlib.sha256(code.tobytes()).hexdigest()

    def cache_path(self, key: str) -> Path:
        """Where the render with ``key`` lives."""
        return self.cache_dir / self.styler.name / key[:2] / f"{key}.{self.image_format}"

    # -- rendering --------------------------------------------------------------------

    def render(self, pairs: Sequence[RenderPair], skip_unreadable: bool = False
               ) -> list[Path | None]:
        """Render (or fetch from the cache) each ``(item_id, item_image, style_id, style_image)``.

        Parameters
        ----------
        pairs : sequence of tuple
            ``style_image`` may be None for stylers that ignore the style image, or a
            1-d style code (array or tensor of ``styler.style_code_dim`` values) for
            stylers that take one.
        skip_unreadable : bool
            A pair whose image is missing or can't be decoded gets ``None`` (the
            reason goes to ``skipped`` and the log) instead of failing the batch.

        Returns
        -------
        list of Path (or None for skipped pairs)
            One render per pair, in order.

        Raises
        ------
        FileNotFoundError
            If an image file does not exist (the message names it).
        ground.images.ImageLoadError
            If an image is corrupt or of an absurd size (the message names it).
        """
        self.skipped = {}
        failed: dict[str, str] = {}  # cache key or image path -> reason
        keyed = []
        for pair in pairs:
            try:
                keyed.append((pair, self.cache_key(pair[1], pair[3])))
            except OSError as err:
                if not skip_unreadable:
                    raise
                keyed.append((pair, f"unreadable:{len(failed)}"))
                failed[keyed[-1][1]] = str(err)
        paths = [self.cache_path(key) for _, key in keyed]
        todo: dict[str, RenderPair] = {}
        for (pair, key), path in zip(keyed, paths, strict=True):
            if key not in todo and key not in failed and not path.exists():
                todo[key] = pair
        hits = len(pairs) - sum(1 for p in paths if p.stem in todo) - len(failed)
        self.stats["requested"] += len(pairs)
        self.stats["hits"] += hits
        log.info(
            "render %s: %d requested, %d cached, %d to render on %s",
            self.styler.name, len(pairs), hits, len(todo), self.device,
        )
        if todo:
            with tqdm(total=len(todo), desc=f"render {self.styler.name}", unit="img",
                      disable=not self.progress) as bar:
                for batch_keys, content, style in self._batches(todo, failed, skip_unreadable):
                    out = self._stylize(content, style)
                    for key, image in zip(batch_keys, out, strict=True):
                        save_image_atomic(tensor_to_pil(image), self.cache_path(key), self.quality)
                    self.stats["rendered"] += len(batch_keys)
                    bar.update(len(batch_keys))
                bar.update(len(todo) - bar.n)
        out: list[Path | None] = []
        for (pair, key), path in zip(keyed, paths, strict=True):
            if key in failed:
                self.skipped[pair[0], pair[2]] = failed[key]
                log.warning("not rendering %s in %s: %s", pair[0], pair[2], failed[key])
            out.append(None if key in failed else path)
        self.stats["skipped"] += len(self.skipped)
        return out

    def render_grid(
        self,
        items: Mapping[str, PathLike] | Iterable[tuple[str, PathLike]],
        styles: Mapping[str, PathLike | None] | Iterable[tuple[str, PathLike | None]],
        skip_unreadable: bool = False,
    ) -> dict[tuple[str, str], Path | None]:
        """Render every item in every style (``skip_unreadable`` as in :meth:`render`).

        Returns
        -------
        dict
            ``(item_id, style_id) -> render path``.

        Examples
        --------
        >>> grid = renderer.render_grid({"a": "a.jpg"}, {"wave": "wave.jpg"})  # doctest: +SKIP
        >>> grid["a", "wave"]  # doctest: +SKIP
        PosixPath('out/renders/wct/9c/9c41...png')
        """
        items = list(items.items()) if isinstance(items, Mapping) else list(items)
        styles = list(styles.items()) if isinstance(styles, Mapping) else list(styles)
        pairs = [(i, ip, s, sp) for s, sp in styles for i, ip in items]
        paths = self.render(pairs, skip_unreadable)
        return {(p[0], p[2]): path for p, path in zip(pairs, paths, strict=True)}

    def _batches(
        self, todo: Mapping[str, RenderPair], failed: dict[str, str], skip: bool
    ) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor | None]]:
        # one style loaded once per group; within it, same-size items share a batch
        by_style: dict[str, list[str]] = defaultdict(list)
        for key, (_, _, _, style_image) in todo.items():
            style_key = self._style_digest(style_image) if self.styler.uses_style_image else ""
            by_style[style_key].append(key)
        for keys in by_style.values():
            style_image = todo[keys[0]][3]
            code = _style_code(style_image)
            try:
                if not self.styler.uses_style_image:
                    style = None
                elif code is not None:
                    style = torch.from_numpy(code)[None]
                else:
                    style = load_image(style_image, self.style_side)[None]
            except (OSError, ImageLoadError) as err:
                if not skip:
                    raise
                failed.update(dict.fromkeys(keys, str(err)))
                continue
            by_size: dict[tuple[int, int], list[tuple[str, torch.Tensor]]] = defaultdict(list)
            for key in keys:
                try:
                    image = load_image(todo[key][1], self.max_side)
                except (OSError, ImageLoadError) as err:
                    if not skip:
                        raise
                    failed[key] = str(err)
                    continue
                group = by_size[tuple(image.shape[-2:])]
                group.append((key, image))
                if len(group) == self.batch_size:
                    yield [k for k, _ in group], torch.stack([im for _, im in group]), style
                    group.clear()
            for group in by_size.values():
                if group:
                    yield [k for k, _ in group], torch.stack([im for _, im in group]), style

    def _stylize(self, content: torch.Tensor, style: torch.Tensor | None) -> torch.Tensor:
        """Stylize a batch, halving it on GPU out-of-memory and tiling a single image."""
        if self.tile_size and max(content.shape[-2:]) > self.tile_size:
            return torch.cat([self._tiled(c[None], style, self.tile_size) for c in content])
        try:
            return self._forward(content, style)
        except torch.cuda.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if content.shape[0] > 1:
                half = content.shape[0] // 2
                log.warning("out of memory at batch %d; splitting", content.shape[0])
                return torch.cat([self._stylize(content[:half], style),
                                  self._stylize(content[half:], style)])
            return self._tiled_until_it_fits(content, style)

    def _tiled_until_it_fits(
        self, content: torch.Tensor, style: torch.Tensor | None
    ) -> torch.Tensor:
        size = tuple(content.shape[-2:])
        tile = max(size) // 2
        while tile >= _MIN_TILE:
            log.warning("out of memory on a %s image; tiling at %d px", size, tile)
            try:
                return self._tiled(content, style, tile)
            except torch.cuda.OutOfMemoryError:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                tile //= 2
        raise torch.cuda.OutOfMemoryError(
            f"{self.styler.name} ran out of memory on {self.device} even on "
            f"{_MIN_TILE}-{2 * _MIN_TILE} px tiles of a {size} image; "
            "lower max_side or use another device"
        )

    def _forward(self, content: torch.Tensor, style: torch.Tensor | None) -> torch.Tensor:
        content = content.to(self.device, non_blocking=True)
        if style is not None:
            style = style.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            content = content.contiguous(memory_format=torch.channels_last)
        dtype = self._autocast_dtype
        with torch.no_grad(), self._autocast(dtype):
            out = self.styler.stylize(content, style)
        if dtype is not None and not torch.isfinite(out).all():
            log.warning("non-finite %s output from %s; redoing in float32", dtype, self.styler.name)
            with torch.no_grad():
                out = self.styler.stylize(content, style)
        return out.float().clamp(0, 1).cpu()

    def _autocast(self, dtype: torch.dtype | None) -> Any:
        if dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _tiled(self, content: torch.Tensor, style: torch.Tensor | None, tile: int) -> torch.Tensor:
        """Stylize one ``[1, 3, H, W]`` image in overlapping tiles blended with linear ramps."""
        _, _, h, w = content.shape
        overlap = max(8, tile // 8)
        out = torch.zeros(1, 3, h, w)
        weight = torch.zeros(1, 1, h, w)
        for top in _tile_starts(h, tile, overlap):
            for left in _tile_starts(w, tile, overlap):
                patch = content[..., top:top + tile, left:left + tile]
                styled = self._forward(patch, style)
                ramp = _ramp(patch.shape[-2], overlap, top > 0, top + tile < h)[:, None] * _ramp(
                    patch.shape[-1], overlap, left > 0, left + tile < w
                )[None, :]
                out[..., top:top + tile, left:left + tile] += styled * ramp
                weight[..., top:top + tile, left:left + tile] += ramp
        return out / weight.clamp(min=1e-6)


def _style_code(style: object) -> np.ndarray | None:
    """A style given as a code (array or tensor) as float32 ``[d]``; None for an image path."""
    if isinstance(style, torch.Tensor):
        style = style.detach().cpu().numpy()
    if isinstance(style, np.ndarray):
        return np.ascontiguousarray(style, np.float32).reshape(-1)
    return None


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


def _ramp(n: int, overlap: int, fade_in: bool, fade_out: bool) -> torch.Tensor:
    r = torch.ones(n)
    k = min(overlap, n)
    edge = torch.linspace(1.0 / (k + 1), 1.0, k)
    if fade_in:
        r[:k] = torch.minimum(r[:k], edge)
    if fade_out:
        r[n - k:] = torch.minimum(r[n - k:], edge.flip(0))
    return r
