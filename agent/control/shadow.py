"""``cmd/shadow``, ``cmd/promote``, ``cmd/abort`` (docs/rollouts.md): a candidate beside the active model.

``cmd/shadow`` checks the candidate exactly as an update (agent.control.model: fetch, verify,
unpack, a newer release; never a rollback), bounds its size and memory, and hands it to the
agent's ``Shadows`` (agent.shadow, the data path that scores it on every window). A signed
``cmd/promote`` then activates it as an applied update would; a signed ``cmd/abort`` removes it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from ..health import ProcessStats
from ..schema import StrictModel
from ..shadow import Candidate
from .commands import ID_PATTERN, BundleCommand, Refused, model_task, register
from .model import Staged, activate, load_staged, stage_update
from .signing import SignatureError, shadow_message, verify_bytes

if TYPE_CHECKING:
    from .host import ControlHost

log = logging.getLogger("roadside.shadow")


class ShadowCommand(BundleCommand):
    """``cmd/shadow`` (docs/rollouts.md): a candidate scored beside the active model; never a rollback."""

    windows: int | None = Field(None, ge=1, le=1_000_000, description="stop after this many compared windows "
                                "(capped by updates.shadow.max_windows; absent: that cap)")
    minutes: float | None = Field(None, gt=0, le=10_080, description="stop after this long (capped by "
                                  "updates.shadow.max_minutes; absent: that cap)")
    report_every: int = Field(100, ge=1, le=1_000_000, description="a shadow report every this many compared "
                              "windows (raised to updates.shadow.min_report_every), and one at the end")


class ShadowDecision(StrictModel):
    """``cmd/promote`` and ``cmd/abort``: signed by an operator, naming the candidate model exactly."""

    id: str = Field(pattern=ID_PATTERN)
    task: str = Field(description="a task that runs a model (agent.tasks.registry)")
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$", description="the candidate's model file sha256")
    sig: str | None = Field(None, max_length=200, description="base64 Ed25519 signature of agent.control.signing."
                            "shadow_message(action, task, sha256) by a key in updates.trusted_keys")

    _task = field_validator("task")(classmethod(lambda cls, v: model_task(v)))


def _model(cand_or_staged: Any, task: Any) -> dict:
    st = getattr(cand_or_staged, "staged", cand_or_staged)
    return {"task": st.task, "sha256": st.sha, "release": st.release, "version": task.model.info.version}


def _check_input(active: Any, task: Any) -> str | None:
    """Why the candidate cannot score the active model's input tensors (None: it can)."""
    if active is None:
        return "the task has no active model to compare with"
    a, c = active.model, task.model
    if a.contract.frontend != c.contract.frontend:
        return "its front-end differs from the active model's (a shadow scores the active model's input)"
    if a.example_shape != c.example_shape:
        return f"it takes input {c.example_shape}, the active model {a.example_shape}"
    return None


def _trim_heap() -> None:
    """Give freed heap back to the OS (glibc), so that the load's RSS growth is not hidden by the memory the
    bundle's download and unpacking just freed (it would be reused first, and the candidate look free)."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): the figure is then a lower bound
        pass


def load_candidate(host: "ControlHost", st: Staged) -> tuple[Any, float]:
    """The size bound, the load (smoke-tested, as an update), then the memory bound: (task, RSS added in MB)."""
    bounds = host.rcfg.updates.shadow
    size = st.path.stat().st_size
    if size > bounds.max_model_bytes:  # before loading: a huge model never gets near the pole's memory
        host.installed.discard(st.task, st.folder)
        raise Refused(f"candidate model is {size} bytes, over updates.shadow.max_model_bytes "
                      f"({bounds.max_model_bytes})", "shadow")
    _trim_heap()
    before = ProcessStats.rss_mb()
    task = load_staged(host, st)
    grew = max(0.0, ProcessStats.rss_mb() - before)
    if grew > bounds.max_rss_mb:  # measured, not guessed: what it really costs on this device
        host.installed.discard(st.task, st.folder)
        raise Refused(f"loading the candidate added {grew:.0f} MB of resident memory, over "
                      f"updates.shadow.max_rss_mb ({bounds.max_rss_mb:g})", "shadow")
    return task, grew


@register("shadow", ShadowCommand)
def start_shadow(host: "ControlHost", cmd: ShadowCommand) -> dict:
    """``cmd/shadow``: verified as an update (a newer release only), loaded beside the active model, shadowing."""
    st = stage_update(host, cmd)
    if isinstance(st, dict):  # the candidate is the active model
        return st
    task, grew = load_candidate(host, st)
    active = host.taskset.named.get(cmd.task)
    why = _check_input(active, task)
    if why is not None:
        host.installed.discard(st.task, st.folder)
        raise Refused(f"candidate refused: {why}", "shadow")
    bounds = host.rcfg.updates.shadow
    windows = min(cmd.windows or bounds.max_windows, bounds.max_windows)
    minutes = min(cmd.minutes or bounds.max_minutes, bounds.max_minutes)
    cand = Candidate(st, task, windows, time.monotonic() + 60.0 * minutes,
                     max(cmd.report_every, bounds.min_report_every), bounds.cpu_share, grew,
                     active.model.info.sha256)
    old = host.shadows.install(cand)
    if old is not None and old.staged.folder != st.folder:  # the same model again keeps its one copy
        host.installed.discard(old.name, old.staged.folder)
    log.info("task %s: shadowing %s (release %d, %d windows, %g min, +%.0f MB)", cmd.task, st.sha[:12],
             st.release, windows, minutes, grew)
    return {"status": "shadowing", "model": _model(st, task)}


def decide(host: "ControlHost", cmd: ShadowDecision, action: str) -> dict:
    """``cmd/promote`` / ``cmd/abort``: an operator's signature over the action, the task and the candidate."""
    if host.rcfg.updates is None:
        raise Refused("model updates are off: the config has no updates.trusted_keys", "config")
    try:  # before anything else: an unsigned sender learns nothing about what is installed
        verify_bytes(shadow_message(action, cmd.task, cmd.sha256), cmd.sig, host.installed.keys, action)
    except SignatureError as e:
        raise Refused(f"{e} (it must sign {action}, the task and the candidate's sha256)", "verify") from None
    cand = host.shadows.get(cmd.task)
    if cand is None or cand.staged.sha != cmd.sha256.lower():
        raise Refused(f"no candidate {cmd.sha256[:12]}... is installed for task {cmd.task!r}", "shadow")
    host.shadows.remove(cmd.task)
    if action == "abort":
        host.installed.discard(cmd.task, cand.staged.folder)
        log.info("task %s: shadow candidate %s aborted", cmd.task, cand.staged.sha[:12])
        return {"status": "aborted", "model": _model(cand, cand.task)}
    log.info("task %s: shadow candidate %s promoted", cmd.task, cand.staged.sha[:12])
    return activate(host, cand.staged, cand.task)


@register("promote", ShadowDecision)
def promote(host: "ControlHost", cmd: ShadowDecision) -> dict:
    return decide(host, cmd, "promote")


@register("abort", ShadowDecision)
def abort(host: "ControlHost", cmd: ShadowDecision) -> dict:
    return decide(host, cmd, "abort")
