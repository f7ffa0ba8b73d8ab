"""The compression half's tasks, by name: one entry per task, registered by the task's own module.

An entry says where its recipe schema, its chain, its evaluator, its data-folder finder and
(optionally) its PyTorch checkpoint loader live, as ``"module:attribute"`` strings, so that
listing the tasks imports neither torch nor any chain. ``load_recipe`` picks the schema by the
recipe's ``task:``, ``roadside compress`` the chain, ``roadside eval`` the evaluator and data
finder by the model's manifest; none of them names a task. A task from elsewhere registers with
``register`` (or a ``roadside.compression_tasks`` entry point that imports a module calling it).
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

log = logging.getLogger("roadside.compression")
ENTRY_POINT_GROUP = "roadside.compression_tasks"


@dataclass(frozen=True)
class CompressionTask:
    name: str
    recipe: str  # "module:Class": the recipe schema (a StrictModel with a ``task`` field)
    chain: str  # "module:function": (recipe, recipe_path, out, work, data, **kw) -> report dict
    evaluate: str  # "module:function": (scorer, data folder, include_training=...) -> metrics
    data_root: str  # "module:function": a data root, the task's folder or its files -> the folder to read
    checkpoint: str | None = None  # "module:function": a .pt path -> (model, config) for ``roadside eval``
    checkpoint_folds: str | None = None  # "module:function": a .pt path -> the folds it trained on, or None

    def load(self, which: str) -> Any:
        ref = getattr(self, which)
        if ref is None:
            raise ValueError(f"task {self.name!r} has no {which}")
        module, attr = ref.split(":")
        return getattr(importlib.import_module(module), attr)


_TASKS: dict[str, CompressionTask] = {}
_discovered = False


def register(task: CompressionTask) -> CompressionTask:
    _TASKS[task.name] = task
    return task


def unregister(name: str) -> None:
    _TASKS.pop(name, None)


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # one broken plug-in must not hide the working tasks
            log.error("compression task plug-in %s refused: %s: %s", ep.name, type(e).__name__, e)


def tasks() -> dict[str, CompressionTask]:
    _discover()
    return dict(_TASKS)


def get(name: Any) -> CompressionTask:
    known = tasks()
    if name not in known:
        raise KeyError(f"{name!r} is not a known task (known: {sorted(known)})")
    return known[name]
