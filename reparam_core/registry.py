"""Strict name -> object registries: duplicate and unknown names are errors, never silent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from .errors import SpecError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection that refuses duplicates and names its known entries on a miss."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, obj: T) -> None:
        key = name.lower()
        if key in self._entries:
            raise SpecError(f"{self.kind} {name!r} is already registered")
        self._entries[key] = obj

    def get(self, name: str) -> T:
        try:
            return self._entries[name.lower()]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
