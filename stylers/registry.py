"""Styler registry: built-ins by name, third-party stylers by entry point.

:data:`STYLERS` is a :class:`ground.registry.Registry` (group ``stylerec.stylers``).
Importing this module does not import torch or any styler: built-ins are imported
when first created, and entry points are loaded only when their name is asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ground.registry import Registry, UnknownNameError

if TYPE_CHECKING:
    from .base import Styler

ENTRY_POINT_GROUP = "stylerec.stylers"
STYLERS: Registry[Styler] = Registry("styler", ENTRY_POINT_GROUP, builtins={
    "arbitrary": "stylers.arbitrary",
    "color": "stylers.color",
    "fast": "stylers.fast",
    "gatys": "stylers.gatys",
    "wct": "stylers.wct",
})

FactoryT = TypeVar("FactoryT", bound=Callable[..., Any])

UnknownStylerError = UnknownNameError  # the name this package used before the one registry


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
    return STYLERS.register(name)


def get_styler_factory(name: str) -> Callable[..., Styler]:
    """The class or factory registered under ``name``, importing it on first use.

    Raises
    ------
    UnknownStylerError
        When no built-in, registered or entry-point styler has that name.
    """
    return STYLERS.get(name)


def create_styler(name: str, **params: Any) -> Styler:
    """Build the styler registered under ``name`` with keyword ``params``.

    Examples
    --------
    >>> s = create_styler("color", method="reinhard")
    >>> s.name, s.params["method"]
    ('color', 'reinhard')
    """
    return STYLERS.create(name, **params)


def available_stylers() -> list[str]:
    """Sorted names of built-in, registered and entry-point stylers.

    Examples
    --------
    >>> {"arbitrary", "color", "fast", "gatys", "wct"} <= set(available_stylers())
    True
    """
    return STYLERS.names()
