"""The agent's tasks, by name: each task module registers one ``TaskSpec``; the core never names a task.

A spec says what the task consumes (``audio``, ``camera``, ``detector``), the front-end kind its
model must declare (``None``: a task without a model, such as the sound level meter), its
config model, and a factory. The config's ``tasks:`` section, the ``model``/``shadow`` commands
and the task set are all checked against this table, so adding a task is one new module in
``agent/tasks/`` (found by name), or, outside this package, one ``register`` call or a
``roadside.tasks`` entry point that imports a module which calls it.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("roadside.tasks")
ENTRY_POINT_GROUP = "roadside.tasks"


@dataclass(frozen=True)
class TaskContext:
    """What a factory may use besides its config and model."""
    sample_rate: int  # the microphones' rate (audio.sample_rate)
    timezone: str  # device.timezone
    state_dir: Path  # where a task may keep what it learns (it survives restarts)


@dataclass(frozen=True)
class TaskSpec:
    name: str  # the key under ``tasks:`` and in alerts' ``k``
    consumes: str  # the sensor kind it reads
    config: type  # pydantic model of its config entry
    factory: Callable[[Any, Any, TaskContext], Any]  # (config, loaded model or None, context) -> task
    frontend: str | None = None  # front-end kind its model's manifest must declare; None: no model
    section: str | None = None  # a top-level config section instead of ``tasks.<name>`` (kept for old configs)

    @property
    def has_model(self) -> bool:
        return self.frontend is not None

    def config_in(self, cfg: Any) -> Any:
        """This task's entry in a device config, or None when the device does not run it."""
        return getattr(cfg, self.section, None) if self.section else cfg.tasks.get(self.name)


_SPECS: dict[str, TaskSpec] = {}
_discovered = False


def register(spec: TaskSpec) -> TaskSpec:
    """Add (or replace, on re-import) a task; its name must be a valid config key and alert kind."""
    if not spec.name.isidentifier() or len(spec.name) > 16:
        raise ValueError(f"task name {spec.name!r}: an identifier of at most 16 characters")
    _SPECS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _SPECS.pop(name, None)


def _discover() -> None:
    """Import every module of this package, then the entry points: each registers its tasks."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module(__package__)
    for mod in pkgutil.iter_modules(package.__path__):
        if mod.name != "registry":
            importlib.import_module(f"{__package__}.{mod.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # a broken third-party plug-in must not stop the tasks that work
            log.error("task plug-in %s refused: %s: %s", ep.name, type(e).__name__, e)


def specs() -> dict[str, TaskSpec]:
    """Every registered task, built-in ones first (in module order)."""
    _discover()
    return dict(_SPECS)


def get(name: str) -> TaskSpec:
    try:
        return specs()[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r} (known: {sorted(specs())})") from None


def model_tasks() -> list[str]:
    """Names of the tasks that run a model (those a model update or a shadow may name)."""
    return [n for n, s in specs().items() if s.has_model]
