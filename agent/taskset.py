"""The set of tasks the agent runs, built from a config: at start, on a model update, on a reload.

Building a task = load its model (contract checks, backend), construct the task (front-end
check, rule check, dry run), then a smoke inference (``tasks.smoke_test``). Only a task that
passed all of it is ever handed to the worker, and it replaces the old one in a single
reference assignment (``TaskSet`` is immutable once built), so the worker sees either the
old set or the new one, never half of each.

A task's model comes from the first candidate that builds: installed signed updates
(current, then previous, see ``agent.updates``), then the configured model. A failing
update is logged and skipped; a failing configured model is an error, as it always was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from .config import AgentConfig, resolve
from .health import Health
from .tasks import load_model, smoke_test
from .tasks.congestion import CongestionTask
from .tasks.level import LevelTask
from .tasks.noise import NoiseTask
from .tasks.vehicles import VehiclesTask

log = logging.getLogger("roadside.tasks")
TASKS = {"noise": NoiseTask, "vehicles": VehiclesTask, "congestion": CongestionTask}
# (model path, where it came from: "config" or "update:<dir>")
Candidates = Callable[[str, Path], list[tuple[Path, str]]]


@dataclass(frozen=True)
class TaskSet:
    named: dict[str, Any]  # task name ("noise", ..., "level") -> task object
    models: dict[str, dict]  # task name -> what the state message says about its model
    built_from: dict[str, tuple]  # task name -> (task config, model path, audio, timezone): reuse key

    @cached_property
    def by_input(self) -> dict[str, list]:
        out: dict[str, list] = {"audio": [], "camera": [], "detector": []}
        for task in self.named.values():
            out[task.consumes].append(task)
        return out

    def with_task(self, name: str, task: Any, info: dict, key: tuple) -> "TaskSet":
        return replace(self, named={**self.named, name: task}, models={**self.models, name: info},
                       built_from={**self.built_from, name: key})


def model_info(task: Any, src: str) -> dict:
    model = task.model
    info = {"name": model.info.name, "version": model.info.version, "sha256": model.info.sha256,
            "backend": model.backend.name, "src": src}
    if model.backend.fallback_reason:
        info["fallback"] = model.backend.fallback_reason
    return info


def build_task(name: str, cfg: AgentConfig, model_path: Path, cache_dir: Path) -> Any:
    """Load, construct, smoke-test: a task ready to run, or an exception naming what failed."""
    task_cls, tcfg = TASKS[name], getattr(cfg.tasks, name)
    model = load_model(name, task_cls.frontend_kind, model_path, tcfg.backend, cache_dir)
    # cache_dir is {state_dir}/engines; the detectors' learnt usual speeds live beside it
    kwargs = ({"timezone": cfg.device.timezone, "profile_file": cache_dir.parent / "detector_profiles.json"}
              if name == "congestion" else {})
    task = task_cls(tcfg, model, cfg.audio.sample_rate, **kwargs)
    smoke_test(model)
    return task


def instrument(name: str, task: Any, health: Health) -> Any:
    """Count and time every window from now on (dry runs and smoke tests are not windows)."""
    task.model.backend.run = health.timed(name, task.model.backend.run)
    return task


def build(cfg: AgentConfig, config_path: Path | str | None, cache_dir: Path, health: Health,
          candidates: Candidates | None = None, previous: TaskSet | None = None) -> TaskSet:
    """Every configured task; tasks of ``previous`` whose inputs did not change are kept as they are."""
    named, models, built_from = {}, {}, {}
    for name in TASKS:
        tcfg = getattr(cfg.tasks, name)
        if tcfg is None:
            continue
        configured = resolve(tcfg.model, config_path)
        options = (candidates(name, configured) if candidates else []) + [(configured, "config")]
        for i, (path, src) in enumerate(options):
            key = (tcfg, str(path), cfg.audio, cfg.device.timezone)
            if previous is not None and previous.built_from.get(name) == key:
                named[name], models[name] = previous.named[name], previous.models[name]
                built_from[name] = key
                break
            try:
                task = build_task(name, cfg, path, cache_dir)
            except Exception as e:
                if i == len(options) - 1:
                    raise
                log.error("task %s: installed update %s refused at start (%s: %s); trying the next", name, path,
                          type(e).__name__, e)
                continue
            named[name], models[name], built_from[name] = instrument(name, task, health), model_info(task, src), key
            log.info("task %s: %s (%s) on %s [%s]", name, path, task.model.info.sha256[:12],
                     task.model.backend.name, src)
            break
    if cfg.level is not None:
        key = (cfg.level, cfg.audio, cfg.device.timezone)
        if previous is not None and previous.built_from.get("level") == key:
            named["level"] = previous.named["level"]
        else:
            named["level"] = LevelTask(cfg.level, cfg.audio.sample_rate, cfg.device.timezone)
        built_from["level"] = key
    return TaskSet(named, models, built_from)
