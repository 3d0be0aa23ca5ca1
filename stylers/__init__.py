"""Stage 4: render products in a shopper's style.

Pluggable stylizers behind one contract (:class:`~stylers.base.Styler`), a
registry (:func:`create_styler`), product protection and a batched, cached
renderer. Importing ``stylers`` is cheap: torch and the stylizers load on first use.

Examples
--------
>>> import stylers
>>> "wct" in stylers.available_stylers()
True
>>> styler = stylers.create_styler("color", method="histogram")  # doctest: +SKIP
>>> renderer = stylers.Renderer(styler, cache_dir="out/renders")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

from .registry import (
    ENTRY_POINT_GROUP,
    STYLERS,
    UnknownStylerError,
    available_stylers,
    create_styler,
    get_styler_factory,
    register_styler,
)

# name -> module; resolved on first attribute access so torch loads only when needed
_LAZY = {
    "Styler": "stylers.base",
    "ProtectedStyler": "stylers.protection",
    "foreground_mask": "stylers.protection",
    "Renderer": "stylers.renderer",
    "ImageLoadError": "ground.images",
    "CheckpointError": "ground.checkpoints",
}

__all__ = [
    "ENTRY_POINT_GROUP",
    "STYLERS",
    "UnknownStylerError",
    "available_stylers",
    "create_styler",
    "get_styler_factory",
    "register_styler",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'stylers' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
