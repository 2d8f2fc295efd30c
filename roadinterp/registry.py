"""One small registry for everything roadinterp looks up by name (tasks, families, zoo models).

Explicit registration, as peft's ``register_peft_method``: a module calls
``REGISTRY.register(name, obj)`` once; lookups of unknown names raise
:class:`~roadinterp.errors.UnknownNameError` listing what exists; registering a taken
name needs ``overwrite=True``. Iteration is in registration order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from roadinterp.errors import ConfigError, unknown

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object for one ``kind`` of thing ("task", "family", "zoo model", ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T, *, overwrite: bool = False) -> None:
        if name in self._items and not overwrite:
            raise ConfigError(f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it")
        self._items[name] = obj

    def get(self, name: str) -> T:
        if name not in self._items:
            raise unknown(self.kind, name, list(self._items))
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def values(self) -> list[T]:
        return list(self._items.values())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
