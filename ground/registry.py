"""One registry type for every extension point: CF models, candidate sources, rankers,
encoders and stylers.

A :class:`Registry` maps lowercase names to factories (usually classes). Built-ins are
named by module and imported on first use, so importing a registry costs nothing;
third-party packages add names through an entry-point group, loaded only when their name
is asked for. Registration never overwrites silently, and an unknown name raises
:class:`UnknownNameError` listing what is available.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_NAME = re.compile(r"^[a-z][a-z0-9_.-]*$")


class UnknownNameError(LookupError):
    """No factory is registered under the requested name; the message lists the known ones."""


class Registry(Generic[T]):
    """Named factories of one kind of component.

    Parameters
    ----------
    kind : str
        What the registry holds, for messages (``"CF model"``, ``"styler"``, ...).
    group : str
        Entry-point group through which installed packages add factories
        (e.g. ``"stylerec.stylers"``).
    builtins : mapping of str to str, optional
        Built-in names and the module whose import registers each one.

    Examples
    --------
    >>> shapes = Registry("shape", "example.shapes")
    >>> @shapes.register("square")
    ... class Square:
    ...     def __init__(self, side=1.0):
    ...         self.side = side
    >>> shapes.create("square", side=2.0).side
    2.0
    >>> Square.name
    'square'
    >>> shapes.create("circle")
    Traceback (most recent call last):
    ...
    ground.registry.UnknownNameError: unknown shape 'circle'; available: square
    """

    def __init__(self, kind: str, group: str, builtins: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.group = group
        self._builtins = dict(builtins or {})
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator registering a class or factory under ``name``.

        A class gets ``name`` as its ``name`` attribute. Registering the same factory
        twice is a no-op; a different factory under a taken name is a ``ValueError``.
        """
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"bad {self.kind} name {name!r}: use lowercase letters, "
                             "digits, _ . -")

        def decorate(factory: F) -> F:
            known = self._factories.get(name)
            if known is not None and known is not factory:
                raise ValueError(f"{self.kind} name {name!r} is already registered to "
                                 f"{known!r}")
            if isinstance(factory, type):
                factory.name = name
            self._factories[name] = factory
            return factory

        return decorate

    def _entry_points(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered under ``name``, importing it on first use.

        Built-ins win over entry points of the same name.

        Raises
        ------
        UnknownNameError
            When no built-in, registered or installed factory has that name.
        """
        if name in self._factories:
            return self._factories[name]
        if name in self._builtins:
            importlib.import_module(self._builtins[name])  # its decorator registers it
            return self._factories[name]
        ep = self._entry_points().get(name) if isinstance(name, str) else None
        if ep is None:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}"
            )
        factory = ep.load()
        if isinstance(factory, type) and not isinstance(getattr(factory, "name", None), str):
            factory.name = name
        return self._factories.setdefault(name, factory)

    def create(self, name: str, **params: Any) -> T:
        """Build the component registered under ``name`` with keyword ``params``."""
        return self.get(name)(**params)

    def names(self) -> list[str]:
        """Sorted names of built-in, registered and installed factories."""
        return sorted(set(self._builtins) | set(self._factories) | set(self._entry_points()))

    def load_all(self) -> Iterable[str]:
        """Import every built-in (for contract tests that must see each one)."""
        for name in self._builtins:
            self.get(name)
        return self.names()

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, group={self.group!r}, names={self.names()})"
