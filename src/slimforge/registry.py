"""Name -> factory registries, filled by decorators in the module that defines each entry.

Owns: `Registry[T]`. Recipes name registry keys (never dotted import paths), and an unknown
name fails with the list of known ones. No package scanning: a module registers what it
defines when it is imported, and the owner of a registry imports its providers.

    >>> steps = Registry[object]("compression step")
    >>> @steps.register("noop")
    ... def noop(model): return model
    >>> steps.names()
    ['noop']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from slimforge.errors import SlimforgeError

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict of named entries with a decorator to fill it and a helpful miss."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: store the decorated object under `name` (names are unique)."""

        def decorate(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return decorate

    def get(self, name: str) -> T:
        """The entry called `name`.

        Raises:
            SlimforgeError: no such name; the message lists the known ones.
        """
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise SlimforgeError(
                f"Unknown {self.kind} {name!r}.", f"use one of: {known}."
            ) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
