"""A small name -> object registry filled by a decorator (one per method family)."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Callable, Generic, TypeVar

from poisonguard.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to classes or functions; `register` is a decorator.

    Names are normalised so `neural-cleanse` and `neural_cleanse` are the same key.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    @staticmethod
    def normalise(name: str) -> str:
        return name.strip().lower().replace("-", "_")

    def register(self, name: str) -> Callable[[T], T]:
        key = self.normalise(name)

        def decorator(obj: T) -> T:
            if key in self._items:
                raise RuntimeError(f"{self.kind} {key!r} registered twice")
            self._items[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        key = self.normalise(name)
        if key not in self._items:
            known = ", ".join(sorted(self._items)) or "none"
            raise UserError(f"unknown {self.kind} {name!r}; known: {known}")
        return self._items[key]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return self.normalise(name) in self._items

    def __iter__(self):
        return iter(self.names())


def import_plugins(modules: tuple[str, ...]) -> list[ModuleType]:
    """Import each family's plugin module; a family whose package is absent is skipped.

    Only a missing family is skipped: an import error raised inside a present family
    (a bug, or a missing third-party dependency) still surfaces.
    """
    loaded = []
    for module in modules:
        try:
            loaded.append(importlib.import_module(module))
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
                raise
    return loaded
