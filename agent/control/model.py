"""``cmd/model``, signed model updates: a bundle in, verified, loaded beside the running model, swapped, persisted.

A bundle is a tar of one artefact folder: ``manifest.json``, ``manifest.sig`` (``roadside
sign``) and every file the manifest lists (``roadside sign --bundle`` writes one). It comes
inline in the ``cmd/model`` message (base64) or by ``url`` (http/https from a host in
``updates.url_hosts``, with the bundle's sha256 in the command). In order, and nothing is
written before the signature verifies, nothing loaded before step 3 passes:

1. fetch: size bounded by ``updates.max_bundle_bytes``, one overall deadline, sha256 checked
   when given (``agent.control.bundle_io``);
2. verify the manifest's Ed25519 signature in memory, then unpack only the files it lists,
   each capped at its stated size and checked against its sha256 (``agent.control.bundle_io``);
3. check: the manifest's task is the command's, and its ``release`` (an integer the operator
   sets when signing: ``roadside sign --release N``) is higher than every release this device
   has applied for the task -- unless the command carries ``rollback``, a signature of
   ``signing.rollback_message(task, highest release applied, model sha256)``: an operator's
   explicit, one-state permission to go back to that model;
4. load beside the running model and smoke-test (``taskset.build_task``); a failure here is
   a roll back: the new folder is discarded and the running model never stopped;
5. persist (``active.json``: current, previous, the configured model it replaces, the
   highest release applied), then swap (one reference assignment in the runtime) and answer.

``cmd/shadow`` (``agent.control.shadow``) runs steps 1-4 unchanged (``stage_update``, ``load_staged``;
never with a rollback) and keeps the task beside the active one; a signed ``cmd/promote`` then
runs step 5 (``activate``) on it, so a promotion records its release like any update.

Installed versions and ``active.json``: ``agent.control.store``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from .bundle_io import UpdateError, fetch
from .commands import BundleCommand, Refused, register
from .signing import SignatureError, Verified, rollback_message, verify_bytes
from .store import ModelStore, model_file

if TYPE_CHECKING:
    from .host import ControlHost

log = logging.getLogger("roadside.updates")


class ModelCommand(BundleCommand):
    rollback: str | None = Field(None, max_length=200, description="base64 Ed25519 signature allowing this older "
                                 "release (agent.control.signing.rollback_message): without it an older release "
                                 "is refused")


@dataclass
class Staged:
    """A verified bundle unpacked into the store, its release allowed, not yet loaded."""

    task: str
    folder: Path
    verified: Verified
    path: Path  # the model file
    sha: str  # the model file's sha256
    release: int


def stage_update(host: "ControlHost", cmd: BundleCommand) -> Staged | dict:
    """Steps 1-3 (fetch, verify, unpack, release): a ``Staged``, the ``unchanged`` answer, or ``Refused``.

    Shared by ``cmd/model`` and ``cmd/shadow`` (agent.control.shadow), so a candidate is checked exactly as an update.
    """
    cfg = host.rcfg
    if cfg.updates is None:
        raise Refused("model updates are off: the config has no updates.trusted_keys", "config")
    if cfg.tasks.get(cmd.task) is None:
        raise Refused(f"task {cmd.task!r} is not configured on this device", "config")
    u = cfg.updates
    try:
        data = fetch(cmd.bundle, cmd.url, cmd.sha256, u.max_bundle_bytes, u.fetch_timeout_s, u.url_hosts)
        folder, verified = host.installed.stage(cmd.task, data, u.max_bundle_bytes)
    except UpdateError as e:
        raise Refused(str(e), e.stage) from None
    path = folder / model_file(verified.manifest)
    sha = verified.manifest["files"][path.name]["sha256"]
    if host.taskset.models.get(cmd.task, {}).get("sha256") == sha:
        host.installed.discard(cmd.task, folder)
        return {"status": "unchanged", "model": {"task": cmd.task, "sha256": sha}}
    try:
        release = check_release(host.installed, cmd, verified.manifest, sha)
    except Refused:
        host.installed.discard(cmd.task, folder)
        raise
    return Staged(cmd.task, folder, verified, path, sha, release)


def load_staged(host: "ControlHost", st: Staged):
    """Step 4: the task built beside the running one, or ``Refused`` (``rolled_back``) with the folder discarded."""
    from ..tasks import SmokeTestError
    from ..taskset import build_task

    try:  # beside the running model, which keeps serving meanwhile
        return build_task(st.task, host.rcfg, st.path, host.cache_dir)
    except Exception as e:
        host.installed.discard(st.task, st.folder)
        stage = "smoke" if isinstance(e, SmokeTestError) else "load"
        raise Refused(f"{stage}: {type(e).__name__}: {e}; the running model is unchanged", stage,
                      status="rolled_back") from None


def activate(host: "ControlHost", st: Staged, task) -> dict:
    """Step 5: record the version (and its release), swap it in, the ``applied`` answer. An applied update and
    a promoted shadow candidate (agent.control.shadow) both end here, so a promotion is an update in every respect."""
    from ..config import resolve
    from ..taskset import instrument, model_info

    cfg = host.rcfg
    tcfg = cfg.tasks.get(st.task)
    if tcfg is None:  # a reload removed the task since the candidate was staged
        raise Refused(f"task {st.task!r} is not configured on this device", "config")
    try:
        host.installed.activate(st.task, st.folder, resolve(tcfg.model, host.config_path), st.release)
    except OSError as e:
        host.installed.discard(st.task, st.folder)
        raise Refused(f"install: cannot record the new version ({e.strerror or e})", "install") from None
    info = model_info(instrument(st.task, task, host.health), f"update:{st.folder.name}")
    host.swap(host.taskset.with_task(st.task, task, info, (tcfg, str(st.path), cfg.audio, cfg.device.timezone)))
    log.info("task %s: now %s (%s, signed by key %s)", st.task, st.path, st.sha[:12], st.verified.key_id)
    return {"status": "applied", "model": {"task": st.task, "sha256": st.sha, "version": info["version"],
                                           "release": st.release, "key": st.verified.key_id}}


@register("model", ModelCommand)
def apply_update(host: "ControlHost", cmd: ModelCommand) -> dict:
    """``cmd/model``: the steps in the module docstring; the outcome for the ack, or ``Refused``."""
    st = stage_update(host, cmd)
    if isinstance(st, dict):
        return st
    out = activate(host, st, load_staged(host, st))
    # a candidate was judged against the model just replaced: its figures mean nothing now
    host.shadows.drop(cmd.task, "a model update replaced the active model", host.installed)
    return out


def check_release(store: ModelStore, cmd, manifest: dict, sha: str) -> int:
    """The manifest's release if it may be applied: newer than any applied, or an operator-signed rollback."""
    release = manifest.get("release")
    if not isinstance(release, int) or isinstance(release, bool) or release < 1:
        raise Refused("the signed manifest has no release number (an integer >= 1: roadside sign --release N), "
                      "so it cannot be ordered against what runs", "verify")
    highest = store.highest(cmd.task)
    if release > highest:
        return release
    if getattr(cmd, "rollback", None) is None:  # cmd/shadow never carries one
        raise Refused(f"release {release} is not newer than release {highest} already applied: an older model "
                      f"needs a signed rollback permission (rollback)", "verify")
    try:
        kid = verify_bytes(rollback_message(cmd.task, highest, sha), cmd.rollback, store.keys, "rollback")
    except SignatureError as e:
        raise Refused(f"{e} (it must sign the task, release {highest} and this model's sha256)", "verify") from None
    log.warning("task %s: rollback from release %d to release %d (%s), allowed by key %s", cmd.task, highest,
                release, sha[:12], kid)
    return release
