"""A strict name -> factory registry, used for methods and backbones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from labelclean.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories. Registering a name twice is a programming error."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            choices = ", ".join(self.names())
            raise UsageError(f"unknown {self.kind} {name!r}: expected one of {choices}") from None

    def names(self, include_hidden: bool = False) -> list[str]:
        return sorted(n for n in self._items if include_hidden or not n.startswith("test_"))

    def __contains__(self, name: object) -> bool:
        return name in self._items
