"""Plug-ins by name: a table filled by the modules of one package and by an entry-point group.

The agent's tasks (``agent.tasks.registry``) and the compression tasks (``compression.tasks``)
are both such tables: listing them imports every module of their package once (each module
registers what it defines), then each installed entry point of the group, so a plug-in from
another distribution needs no edit here. A broken third-party plug-in is logged and skipped.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from importlib.metadata import entry_points
from typing import Callable, Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("roadside.plugins")


class Registry(Generic[T]):
    def __init__(self, package: str, group: str, what: str, check: Callable[[str], None] | None = None):
        self.package, self.group, self.what, self.check = package, group, what, check
        self._items: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str, item: T) -> T:
        """Add (or replace, on re-import) ``item`` under ``name``."""
        if self.check is not None:
            self.check(name)
        self._items[name] = item
        return item

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def all(self) -> dict[str, T]:
        self._discover()
        return dict(self._items)

    def get(self, name) -> T:
        items = self.all()
        if name not in items:
            raise KeyError(f"{name!r} is not a known {self.what} (known: {sorted(items)})")
        return items[name]

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for mod in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{self.package}.{mod.name}")
        for ep in entry_points(group=self.group):
            try:
                ep.load()
            except Exception as e:  # one broken plug-in must not hide the working ones
                log.error("%s plug-in %s refused: %s: %s", self.what, ep.name, type(e).__name__, e)
