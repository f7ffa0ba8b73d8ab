"""The agent's tasks, by name: each task module registers one ``TaskSpec``; the core never names a task.

A spec says what the task consumes (``audio``, ``camera``, ``detector``), the front-end kind its
model must declare (``None``: a task without a model, such as the sound level meter), its
config model, and a factory. The config's ``tasks:`` section, the ``model``/``shadow`` commands
and the task set are all checked against this table, so adding a task is one new module in
``agent/tasks/`` (found by name), or, outside this package, one ``register`` call or a
``roadside.tasks`` entry point that imports a module which calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..plugins import Registry

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


def _check_name(name: str) -> None:
    # the name is a config key and an alert's kind (``k``)
    if not name.isidentifier() or len(name) > 16:
        raise ValueError(f"task name {name!r}: an identifier of at most 16 characters")


_TASKS: Registry[TaskSpec] = Registry(__package__, ENTRY_POINT_GROUP, "task", _check_name)


# specs(): every task, those of this package's modules (in module order) first, then plug-ins
specs, get, unregister = _TASKS.all, _TASKS.get, _TASKS.unregister


def register(spec: TaskSpec) -> TaskSpec:
    return _TASKS.register(spec.name, spec)


def model_tasks() -> list[str]:
    """Names of the tasks that run a model (those a model update or a shadow may name)."""
    return [n for n, s in specs().items() if s.has_model]
