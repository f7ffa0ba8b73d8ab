"""Signed model updates: a bundle in, verified, loaded beside the running model, swapped, persisted.

A bundle is a tar of one artefact folder: ``manifest.json``, ``manifest.sig`` (``roadside
sign``) and every file the manifest lists (``roadside sign --bundle`` writes one). It comes
inline in the ``cmd/model`` message (base64) or by ``url`` (http/https from a host in
``updates.url_hosts``, with the bundle's sha256 in the command). In order, and nothing is
written before the signature verifies, nothing loaded before step 3 passes:

1. fetch: size bounded by ``updates.max_bundle_bytes``, one overall deadline, sha256 checked
   when given (``agent.model_bundle``);
2. verify the manifest's Ed25519 signature in memory, then unpack only the files it lists,
   each capped at its stated size and checked against its sha256 (``agent.model_bundle``);
3. check: the manifest's task is the command's, and its ``release`` (an integer the operator
   sets when signing: ``roadside sign --release N``) is higher than every release this device
   has applied for the task -- unless the command carries ``rollback``, a signature of
   ``signing.rollback_message(task, highest release applied, model sha256)``: an operator's
   explicit, one-state permission to go back to that model;
4. load beside the running model and smoke-test (``taskset.build_task``); a failure here is
   a roll back: the new folder is discarded and the running model never stopped;
5. persist (``active.json``: current, previous, the configured model it replaces, the
   highest release applied), then swap (one reference assignment in the runtime) and answer.

``cmd/shadow`` (``agent.shadow``) runs steps 1-4 unchanged (``stage_update``, ``load_staged``;
never with a rollback) and keeps the task beside the active one; a signed ``cmd/promote`` then
runs step 5 (``activate``) on it, so a promotion records its release like any update.

Installed versions live in ``{state_dir}/models/{task}/{sha16}/``. At start the agent tries
the current one, then the previous one (each verified again), then the configured model;
an update applies only while the config names the same model it replaced, so a config
that names another model wins.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .model_bundle import UpdateError, fetch, make_bundle, unpack  # noqa: F401 (make_bundle: the public name)
from .signing import SignatureError, Verified, load_public_key, rollback_message, verify_bytes, verify_manifest

log = logging.getLogger("roadside.updates")


def model_file(manifest: dict) -> str:
    """The ONNX file the agent runs: the manifest's onnxruntime target, else model.onnx."""
    target = manifest.get("targets", {}).get("onnxruntime", {}) if isinstance(manifest.get("targets"), dict) else {}
    return str(target.get("file") or "model.onnx")


# ------------------------------------------------------------------------------- store

class ModelStore:
    """Installed, verified model versions per task and which one is active."""

    def __init__(self, root: Path, trusted_keys: list[Path] | None, keep: int = 2,
                 keys: list[Ed25519PublicKey] | None = None):
        self.root, self.keep = root, keep
        # ``keys``: the ones loaded at start, kept across reloads (a reload never re-reads a key file)
        self.keys: list[Ed25519PublicKey] = keys if keys is not None else \
            [load_public_key(p) for p in trusted_keys or []]
        self._n = 0

    def _active_path(self, task: str) -> Path:
        return self.root / task / "active.json"

    def active(self, task: str) -> dict:
        try:
            return json.loads(self._active_path(task).read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def verify(self, folder: Path, task: str) -> Verified:
        if not self.keys:
            raise SignatureError("no updates.trusted_keys configured")
        v = verify_manifest(folder / "manifest.json", self.keys)
        if v.manifest.get("task") != task:
            raise SignatureError(f"{folder}: manifest task {v.manifest.get('task')!r}, not {task!r}")
        name = model_file(v.manifest)
        if name not in v.manifest["files"]:
            raise SignatureError(f"{folder}: model file {name!r} not listed in the manifest")
        return v

    def candidates(self, task: str, configured: Path) -> list[tuple[Path, str]]:
        """Installed versions to try before ``configured`` (each verified again), newest first."""
        a = self.active(task)
        if not a or a.get("replaces") != str(configured):
            return []
        if not self.keys:
            log.warning("task %s: installed update %s ignored: no updates.trusted_keys to verify it", task,
                        a.get("current"))
            return []
        out = []
        for which in ("current", "previous"):
            if not a.get(which):
                continue
            folder = self.root / task / a[which]
            try:
                v = self.verify(folder, task)
            except (SignatureError, OSError) as e:
                log.error("task %s: installed %s version %s refused: %s", task, which, a[which], e)
                continue
            out.append((folder / model_file(v.manifest), f"update:{a[which]}"))
        return out

    def stage(self, task: str, data: bytes, max_bytes: int = 2_000_000_000) -> tuple[Path, Verified]:
        """Verify, then unpack into ``{task}/{sha16 of the model}``; the folder and what verified it."""
        if not self.keys:
            raise UpdateError("verify", "no updates.trusted_keys configured")
        self._n += 1
        staging = self.root / task / f".staging-{os.getpid()}-{self._n}"
        try:
            shutil.rmtree(staging, ignore_errors=True)
            staging.parent.mkdir(parents=True, exist_ok=True)
            unpack(data, staging, self.keys, max_bytes)
            try:
                v = self.verify(staging, task)
            except SignatureError as e:
                raise UpdateError("verify", str(e)) from None
            sha = v.manifest["files"][model_file(v.manifest)]["sha256"]
            final = self.root / task / sha[:16]
            if final.exists():  # this version was installed before: keep that copy, check it again
                shutil.rmtree(staging)
                try:
                    return final, self.verify(final, task)
                except SignatureError as e:
                    raise UpdateError("verify", str(e)) from None
            os.rename(staging, final)
            return final, Verified(v.manifest, v.key_id, final)
        except OSError as e:  # no path in the reason: it goes to the city
            raise UpdateError("unpack", f"cannot write the staging folder ({type(e).__name__}: {e.strerror})") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def highest(self, task: str) -> int:
        """The highest release ever applied for ``task`` (0: none yet)."""
        value = self.active(task).get("highest", 0)
        return value if isinstance(value, int) else 0

    def activate(self, task: str, folder: Path, replaces: Path, release: int = 0) -> None:
        """Make ``folder`` current (the old current becomes previous); atomic, then prune."""
        a = self.active(task)
        highest = max(self.highest(task), release)  # survives a change of configured model: no downgrade by that
        if a.get("replaces") != str(replaces):
            a = {}
        new = {"current": folder.name, "previous": a.get("current") if a.get("current") != folder.name
               else a.get("previous"), "replaces": str(replaces), "release": release, "highest": highest}
        self.root.joinpath(task).mkdir(parents=True, exist_ok=True)
        path = self._active_path(task)
        tmp = path.with_name("active.json.tmp")
        with open(tmp, "w") as f:
            json.dump(new, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.prune(task, keep={new["current"], new["previous"]})

    def discard(self, task: str, folder: Path) -> None:
        a = self.active(task)
        if folder.name not in (a.get("current"), a.get("previous")):
            shutil.rmtree(folder, ignore_errors=True)

    def prune(self, task: str, keep: set) -> None:
        folders = sorted((p for p in (self.root / task).iterdir() if p.is_dir() and not p.name.startswith(".")),
                         key=lambda p: p.stat().st_mtime, reverse=True)
        kept = 0
        for p in folders:
            if p.name in keep or kept < self.keep - len(keep):
                kept += p.name not in keep
                continue
            shutil.rmtree(p, ignore_errors=True)


# ------------------------------------------------------------------------ the command

@dataclass
class Staged:
    """A verified bundle unpacked into the store, its release allowed, not yet loaded."""

    task: str
    folder: Path
    verified: Verified
    path: Path  # the model file
    sha: str  # the model file's sha256
    release: int


def stage_update(agent, cmd) -> Staged | dict:
    """Steps 1-3 (fetch, verify, unpack, release): a ``Staged``, the ``unchanged`` answer, or ``Refused``.

    Shared by ``cmd/model`` and ``cmd/shadow`` (agent.shadow), so a candidate is checked exactly as an update.
    """
    from .commands import Refused

    cfg = agent.rcfg
    if cfg.updates is None:
        raise Refused("model updates are off: the config has no updates.trusted_keys", "config")
    if cfg.tasks.get(cmd.task) is None:
        raise Refused(f"task {cmd.task!r} is not configured on this device", "config")
    u = cfg.updates
    try:
        data = fetch(cmd.bundle, cmd.url, cmd.sha256, u.max_bundle_bytes, u.fetch_timeout_s, u.url_hosts)
        folder, verified = agent.installed.stage(cmd.task, data, u.max_bundle_bytes)
    except UpdateError as e:
        raise Refused(str(e), e.stage) from None
    path = folder / model_file(verified.manifest)
    sha = verified.manifest["files"][path.name]["sha256"]
    if agent.taskset.models.get(cmd.task, {}).get("sha256") == sha:
        agent.installed.discard(cmd.task, folder)
        return {"status": "unchanged", "model": {"task": cmd.task, "sha256": sha}}
    try:
        release = check_release(agent.installed, cmd, verified.manifest, sha)
    except Refused:
        agent.installed.discard(cmd.task, folder)
        raise
    return Staged(cmd.task, folder, verified, path, sha, release)


def load_staged(agent, st: Staged):
    """Step 4: the task built beside the running one, or ``Refused`` (``rolled_back``) with the folder discarded."""
    from .commands import Refused
    from .tasks import SmokeTestError
    from .taskset import build_task

    try:  # beside the running model, which keeps serving meanwhile
        return build_task(st.task, agent.rcfg, st.path, agent.cache_dir)
    except Exception as e:
        agent.installed.discard(st.task, st.folder)
        stage = "smoke" if isinstance(e, SmokeTestError) else "load"
        raise Refused(f"{stage}: {type(e).__name__}: {e}; the running model is unchanged", stage,
                      status="rolled_back") from None


def activate(agent, st: Staged, task) -> dict:
    """Step 5: record the version (and its release), swap it in, the ``applied`` answer. An applied update
    and a promoted shadow candidate (agent.shadow) both end here, so a promotion is an update in every respect."""
    from .commands import Refused
    from .config import resolve
    from .taskset import instrument, model_info

    cfg = agent.rcfg
    tcfg = cfg.tasks.get(st.task)
    if tcfg is None:  # a reload removed the task since the candidate was staged
        raise Refused(f"task {st.task!r} is not configured on this device", "config")
    try:
        agent.installed.activate(st.task, st.folder, resolve(tcfg.model, agent.config_path), st.release)
    except OSError as e:
        agent.installed.discard(st.task, st.folder)
        raise Refused(f"install: cannot record the new version ({e.strerror or e})", "install") from None
    info = model_info(instrument(st.task, task, agent.health), f"update:{st.folder.name}")
    agent.swap(agent.taskset.with_task(st.task, task, info, (tcfg, str(st.path), cfg.audio, cfg.device.timezone)))
    log.info("task %s: now %s (%s, signed by key %s)", st.task, st.path, st.sha[:12], st.verified.key_id)
    return {"status": "applied", "model": {"task": st.task, "sha256": st.sha, "version": info["version"],
                                           "release": st.release, "key": st.verified.key_id}}


def apply_update(agent, cmd) -> dict:
    """``cmd/model``: the steps in the module docstring; the outcome for the ack, or ``Refused``."""
    st = stage_update(agent, cmd)
    if isinstance(st, dict):
        return st
    out = activate(agent, st, load_staged(agent, st))
    shadows = getattr(agent, "shadows", None)
    if shadows is not None:  # a candidate was judged against the model just replaced: its figures mean nothing now
        shadows.drop(cmd.task, "a model update replaced the active model", agent.installed)
    return out


def check_release(store: ModelStore, cmd, manifest: dict, sha: str) -> int:
    """The manifest's release if it may be applied: newer than any applied, or an operator-signed rollback."""
    from .commands import Refused

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
