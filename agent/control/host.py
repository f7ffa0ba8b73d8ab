"""What a command handler may use of the agent: ``ControlHost``, implemented by ``agent.runtime.Agent``.

Handlers see the agent only through this protocol, so what a command can reach is written down
in one place, and a handler that needs more has to say so here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from ..config import AgentConfig
    from ..health import Health
    from ..shadow import Shadows
    from ..taskset import TaskSet
    from .store import ModelStore


class ControlHost(Protocol):
    cfg: "AgentConfig"  # the config as written: a reload compares it (restart keys, locked paths) with the new one
    rcfg: "AgentConfig"  # the resolved config: update limits, the configured tasks, the shadow bounds
    config_path: Path | None  # a reload re-reads or replaces this file; model paths resolve against it
    state_dir: Path  # where a remote config's paths must stay; scrubbed from every reason sent to the city
    cache_dir: Path  # engine cache for tasks built beside the running ones (update, shadow, reload)
    installed: "ModelStore"  # installed model versions and the trusted keys loaded at start
    taskset: "TaskSet"  # the running tasks: what an update replaces, a reload rebuilds, a shadow compares with
    health: "Health"  # counters every newly built task is instrumented with
    shadows: "Shadows"  # candidate models beside the active ones (cmd/shadow, promote, abort)
    verify_source: Callable[[], object] | None  # a signed device bundle's check, run again before a reload

    @property
    def config_hash(self) -> str:
        """Hash of the running config: an unchanged reload is detected by it and every ack carries it."""
        ...

    def swap(self, tasks: "TaskSet") -> None:
        """Put a new task set in place in one assignment (an applied update or promotion)."""
        ...

    def apply_config(self, cfg: "AgentConfig", rcfg: "AgentConfig", tasks: "TaskSet", store: "ModelStore") -> None:
        """Take a reloaded config that needs no reconnection, with its tasks and store, in place."""
        ...

    def request_restart(self, cfg: "AgentConfig") -> None:
        """Have the agent start again with ``cfg`` (a reload that changes connections) once the ack is out."""
        ...

    def stop(self) -> None:
        """End the run loop: the command thread calls it after a restart's ack is queued."""
        ...
