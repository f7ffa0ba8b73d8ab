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
from dataclasses import dataclass
from typing import Any

from agent.plugins import Registry

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
    # "module:function": (data, out, recipe_path, device=..., **overrides) -> a one-line summary;
    # what ``roadside teacher train --task NAME`` runs
    teacher_train: str | None = None

    def load(self, which: str) -> Any:
        ref = getattr(self, which)
        if ref is None:
            raise ValueError(f"task {self.name!r} has no {which}")
        module, attr = ref.split(":")
        return getattr(importlib.import_module(module), attr)


_TASKS: Registry[CompressionTask] = Registry(__name__, ENTRY_POINT_GROUP, "task")
tasks, get, unregister = _TASKS.all, _TASKS.get, _TASKS.unregister


def register(task: CompressionTask) -> CompressionTask:
    return _TASKS.register(task.name, task)
