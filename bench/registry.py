"""One registry pattern for everything a config value selects by name: tasks (`task=`), methods (`method=`) and
model backends (`student.backend=`).

Each entry registers itself with a decorator in the module that defines it (as lm-evaluation-harness's
`register_model` does), and a registry imports every module of its package the first time it is asked for a name,
so adding a task, a method or a backend is one new module (plus its YAML): no list elsewhere names it. Registering
a taken name is an error naming both owners.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass
class Registry(Generic[T]):
    """name -> entry for one kind of thing, filled by `@registry.register(name)` in the modules of `package`."""

    kind: str  # "task", "method", "backend": used in error messages
    package: str  # the package whose modules are imported to find every entry
    _entries: dict[str, T] = field(default_factory=dict, repr=False)
    _discovered: bool = field(default=False, repr=False)

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: `@registry.register("name")`; without a name, the entry's own `name` attribute."""

        def decorate(entry: T) -> T:
            self.add(name if name is not None else getattr(entry, "name"), entry)
            return entry

        return decorate

    def add(self, name: str, entry: T) -> None:
        registered = self._entries.get(name)
        if registered is not None and registered is not entry:
            raise ValueError(f"{self.kind} name {name!r} is taken by {_qualified(registered)}; "
                             f"{_qualified(entry)} needs another name")
        self._entries[name] = entry

    def remove(self, name: str) -> None:
        """Forget an entry (tests that register a toy one clean up after themselves)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        self.discover()
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        self.discover()
        return iter(sorted(self._entries.items()))

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries

    def discover(self) -> None:
        """Import every module of the package once, so each runs its `register` decorators."""
        if self._discovered:
            return
        self._discovered = True  # first: a module imported below may itself look a name up
        try:
            package = importlib.import_module(self.package)
            for module in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{self.package}.{module.name}")
        except BaseException:
            self._discovered = False
            raise


def _qualified(entry: Any) -> str:
    return f"{getattr(entry, '__module__', '?')}.{getattr(entry, '__qualname__', repr(entry))}"
