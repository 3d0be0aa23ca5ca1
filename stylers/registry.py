"""Styler registry: built-ins by name, third-party stylers by entry point.

Importing this module does not import torch or any styler: built-ins are
imported when first created, and entry points (group ``stylerec.stylers``) are
loaded only when their name is asked for.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .base import Styler

ENTRY_POINT_GROUP = "stylerec.stylers"
_BUILTIN_MODULES = {
    "arbitrary": "stylers.arbitrary",
    "color": "stylers.color",
    "fast": "stylers.fast",
    "gatys": "stylers.gatys",
    "wct": "stylers.wct",
}
_NAME = re.compile(r"^[a-z][a-z0-9_.-]*$")
_REGISTRY: dict[str, Callable[..., Styler]] = {}

FactoryT = TypeVar("FactoryT", bound=Callable[..., Any])


class UnknownStylerError(LookupError):
    """No styler is registered under the requested name."""


def register_styler(name: str) -> Callable[[FactoryT], FactoryT]:
    """Class decorator (or factory decorator) that registers a styler under ``name``.

    A decorated class gets ``name`` as its ``name`` attribute.

    Parameters
    ----------
    name : str
        Lowercase identifier: letters, digits, ``_``, ``.``, ``-``.

    Returns
    -------
    callable
        The decorator; it returns its argument unchanged.

    Raises
    ------
    ValueError
        On a malformed name, or a name already taken by another factory.

    Examples
    --------
    >>> from stylers.base import Styler
    >>> @register_styler("doc-identity")
    ... class Identity(Styler):
    ...     params = {}
    ...     def stylize(self, content, style):
    ...         return content
    >>> type(create_styler("doc-identity")).__name__
    'Identity'
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"bad styler name {name!r}: use lowercase letters, digits, _ . -")

    def decorate(factory: FactoryT) -> FactoryT:
        known = _REGISTRY.get(name)
        if known is not None and known is not factory:
            raise ValueError(f"styler name {name!r} is already registered to {known!r}")
        if isinstance(factory, type):
            factory.name = name
        _REGISTRY[name] = factory
        return factory

    return decorate


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def get_styler_factory(name: str) -> Callable[..., Styler]:
    """The class or factory registered under ``name``, importing it on first use.

    Built-in names win over entry points of the same name.

    Raises
    ------
    UnknownStylerError
        When no built-in, registered or entry-point styler has that name.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])  # its decorator registers it
        return _REGISTRY[name]
    ep = _entry_points().get(name)
    if ep is None:
        raise UnknownStylerError(
            f"unknown styler {name!r}; available: {', '.join(available_stylers())}"
        )
    factory = ep.load()
    return _REGISTRY.setdefault(name, factory)


def create_styler(name: str, **params: Any) -> Styler:
    """Build the styler registered under ``name`` with keyword ``params``.

    Examples
    --------
    >>> s = create_styler("color", method="reinhard")
    >>> s.name, s.params["method"]
    ('color', 'reinhard')
    """
    return get_styler_factory(name)(**params)


def available_stylers() -> list[str]:
    """Sorted names of built-in, registered and entry-point stylers.

    Examples
    --------
    >>> {"arbitrary", "color", "fast", "gatys", "wct"} <= set(available_stylers())
    True
    """
    return sorted(set(_BUILTIN_MODULES) | set(_REGISTRY) | set(_entry_points()))
