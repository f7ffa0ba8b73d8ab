"""The set of tasks the agent runs, built from a config: at start, on a model update, on a reload.

Building a task = load its model (contract checks, backend), construct the task (front-end
check, rule check, dry run), then a smoke inference (``tasks.smoke_test``). Only a task that
passed all of it is ever handed to the worker, and it replaces the old one in a single
reference assignment (``TaskSet`` is immutable once built), so the worker sees either the
old set or the new one, never half of each.

A task's model comes from the first candidate that builds: installed signed updates
(current, then previous, see ``agent.control.store``), then the configured model. A failing
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
from .tasks import load_model, registry, smoke_test
from .tasks.registry import TaskContext, TaskSpec

log = logging.getLogger("roadside.tasks")
# (model path, where it came from: "config" or "update:<dir>")
Candidates = Callable[[str, Path], list[tuple[Path, str]]]


@dataclass(frozen=True)
class TaskSet:
    named: dict[str, Any]  # task name (agent.tasks.registry) -> task object
    models: dict[str, dict]  # task name -> what the state message says about its model
    built_from: dict[str, tuple]  # task name -> (task config, model path, audio, timezone): reuse key

    @cached_property
    def by_input(self) -> dict[str, list]:
        out: dict[str, list] = {}
        for task in self.named.values():
            out.setdefault(task.consumes, []).append(task)
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


def context(cfg: AgentConfig, cache_dir: Path) -> TaskContext:
    # cache_dir is {state_dir}/engines: what a task learns lives beside it
    return TaskContext(cfg.audio.sample_rate, cfg.device.timezone, cache_dir.parent)


def build_task(name: str, cfg: AgentConfig, model_path: Path, cache_dir: Path) -> Any:
    """Load, construct, smoke-test: a task ready to run, or an exception naming what failed."""
    spec = registry.get(name)
    model = load_model(name, spec.frontend, model_path, spec.config_in(cfg).backend, cache_dir)
    task = spec.factory(spec.config_in(cfg), model, context(cfg, cache_dir))
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
    for name, spec in registry.specs().items():
        tcfg = spec.config_in(cfg)
        if tcfg is None:
            continue
        if not spec.has_model:
            key = (tcfg, cfg.audio, cfg.device.timezone)
            reuse = previous is not None and previous.built_from.get(name) == key
            named[name] = previous.named[name] if reuse else spec.factory(tcfg, None, context(cfg, cache_dir))
            built_from[name] = key
            continue
        got = _build_model_task(spec, tcfg, cfg, config_path, cache_dir, health, candidates, previous)
        named[name], models[name], built_from[name] = got
    return TaskSet(named, models, built_from)


def _build_model_task(spec: TaskSpec, tcfg: Any, cfg: AgentConfig, config_path, cache_dir: Path, health: Health,
                      candidates: Candidates | None, previous: TaskSet | None) -> tuple[Any, dict, tuple]:
    """The first model that builds: installed updates (newest first), then the configured one."""
    name = spec.name
    configured = resolve(tcfg.model, config_path)
    options = (candidates(name, configured) if candidates else []) + [(configured, "config")]
    for i, (path, src) in enumerate(options):
        key = (tcfg, str(path), cfg.audio, cfg.device.timezone)
        if previous is not None and previous.built_from.get(name) == key:
            return previous.named[name], previous.models[name], key
        try:
            task = build_task(name, cfg, path, cache_dir)
        except Exception as e:
            if i == len(options) - 1:
                raise
            log.error("task %s: installed update %s refused at start (%s: %s); trying the next", name, path,
                      type(e).__name__, e)
            continue
        log.info("task %s: %s (%s) on %s [%s]", name, path, task.model.info.sha256[:12],
                 task.model.backend.name, src)
        return instrument(name, task, health), model_info(task, src), key
    raise AssertionError("unreachable: the configured model is always the last option")
