"""Signed model updates: a bundle in, verified, loaded beside the running model, swapped, persisted.

A bundle is a tar of one artefact folder: ``manifest.json``, ``manifest.sig`` (``roadside
sign``) and every file the manifest lists (``roadside sign --bundle`` writes one). It comes
inline in the ``cmd/model`` message (base64) or by ``url`` (http/https, with the bundle's
sha256 in the command). In order, and nothing is loaded before step 3 passes:

1. fetch: size bounded by ``updates.max_bundle_bytes``, sha256 checked when given;
2. unpack: plain regular files only (no paths, links or devices), into a staging folder;
3. verify: the manifest's Ed25519 signature against ``updates.trusted_keys``, every file's
   sha256, no unlisted file, and the manifest's task is the command's;
4. load beside the running model and smoke-test (``taskset.build_task``); a failure here is
   a roll back: the new folder is discarded and the running model never stopped;
5. persist (``active.json``: current, previous, and the configured model it replaces),
   then swap (one reference assignment in the runtime) and answer.

Installed versions live in ``{state_dir}/models/{task}/{sha16}/``. At start the agent tries
the current one, then the previous one (each verified again), then the configured model;
an update applies only while the config names the same model it replaced, so a config
that names another model wins.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .signing import SIG_NAME, SignatureError, Verified, load_public_key, verify_manifest

log = logging.getLogger("roadside.updates")
MAX_MEMBERS = 64


class UpdateError(RuntimeError):
    """A refused update; ``stage`` says where (fetch, unpack, verify, load, install)."""

    def __init__(self, stage: str, message: str):
        self.stage = stage
        super().__init__(f"{stage}: {message}")


def model_file(manifest: dict) -> str:
    """The ONNX file the agent runs: the manifest's onnxruntime target, else model.onnx."""
    target = manifest.get("targets", {}).get("onnxruntime", {}) if isinstance(manifest.get("targets"), dict) else {}
    return str(target.get("file") or "model.onnx")


# ----------------------------------------------------------------------------- bundles

def make_bundle(folder: Path | str, out: Path | str | None = None) -> bytes:
    """The tar of an artefact folder (manifest, its signature if any, listed files); written to ``out`` if given."""
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    names = ["manifest.json", *([SIG_NAME] if (folder / SIG_NAME).is_file() else []), *sorted(manifest["files"])]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            data = (folder / name).read_bytes()
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    if out is not None:
        Path(out).write_bytes(buf.getvalue())
    return buf.getvalue()


def fetch(bundle_b64: str | None, url: str | None, sha256: str | None, max_bytes: int, timeout_s: float) -> bytes:
    if bundle_b64 is not None:
        if len(bundle_b64) > max_bytes * 4 // 3 + 4:
            raise UpdateError("fetch", f"inline bundle over updates.max_bundle_bytes ({max_bytes})")
        try:
            data = base64.b64decode(bundle_b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise UpdateError("fetch", f"bundle is not valid base64 ({e})") from None
    else:
        if not url or url.split(":", 1)[0] not in ("http", "https"):
            raise UpdateError("fetch", "url must be http:// or https://")
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:
                data = r.read(max_bytes + 1)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise UpdateError("fetch", f"{url}: {getattr(e, 'reason', e)}") from None
    if len(data) > max_bytes:
        raise UpdateError("fetch", f"bundle over updates.max_bundle_bytes ({max_bytes})")
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256.lower():
        raise UpdateError("fetch", "bundle sha256 does not match the command's sha256")
    return data


def unpack(data: bytes, dest: Path) -> None:
    """Plain files only, each a bare name: nothing in a bundle can write outside ``dest``."""
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
        members = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UpdateError("unpack", f"not a tar archive ({type(e).__name__}: {e})") from None
    if len(members) > MAX_MEMBERS:
        raise UpdateError("unpack", f"{len(members)} members (at most {MAX_MEMBERS})")
    dest.mkdir(parents=True)
    for m in members:
        if not m.isfile() or Path(m.name).name != m.name or m.name.startswith("."):
            raise UpdateError("unpack", f"member {m.name!r} is not a plain file name")
        if (dest / m.name).exists():
            raise UpdateError("unpack", f"member {m.name!r} appears twice")
        with tar.extractfile(m) as src, open(dest / m.name, "wb") as out:
            shutil.copyfileobj(src, out)


# ------------------------------------------------------------------------------- store

class ModelStore:
    """Installed, verified model versions per task and which one is active."""

    def __init__(self, root: Path, trusted_keys: list[Path] | None, keep: int = 2):
        self.root, self.keep = root, keep
        self.keys: list[Ed25519PublicKey] = [load_public_key(p) for p in trusted_keys or []]
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

    def stage(self, task: str, data: bytes) -> tuple[Path, Verified]:
        """Unpack and verify into ``{task}/{sha16 of the model}``; the folder and what verified it."""
        self._n += 1
        staging = self.root / task / f".staging-{os.getpid()}-{self._n}"
        try:
            shutil.rmtree(staging, ignore_errors=True)
            unpack(data, staging)
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
        except OSError as e:
            raise UpdateError("unpack", f"{type(e).__name__}: {e.strerror or e}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def activate(self, task: str, folder: Path, replaces: Path) -> None:
        """Make ``folder`` current (the old current becomes previous); atomic, then prune."""
        a = self.active(task)
        if a.get("replaces") != str(replaces):
            a = {}
        new = {"current": folder.name, "previous": a.get("current") if a.get("current") != folder.name
               else a.get("previous"), "replaces": str(replaces)}
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

def apply_update(agent, cmd) -> dict:
    """``cmd/model``: the steps in the module docstring; the outcome for the ack, or ``Refused``."""
    from .commands import Refused
    from .config import resolve
    from .tasks import SmokeTestError
    from .taskset import build_task, instrument, model_info

    cfg = agent.rcfg
    if cfg.updates is None:
        raise Refused("model updates are off: the config has no updates.trusted_keys", "config")
    tcfg = getattr(cfg.tasks, cmd.task)
    if tcfg is None:
        raise Refused(f"task {cmd.task!r} is not configured on this device", "config")
    try:
        data = fetch(cmd.bundle, cmd.url, cmd.sha256, cfg.updates.max_bundle_bytes, cfg.updates.fetch_timeout_s)
        folder, verified = agent.installed.stage(cmd.task, data)
    except UpdateError as e:
        raise Refused(str(e), e.stage) from None
    path = folder / model_file(verified.manifest)
    running = agent.taskset.models.get(cmd.task, {})
    sha = verified.manifest["files"][path.name]["sha256"]
    if running.get("sha256") == sha:
        agent.installed.discard(cmd.task, folder)
        return {"status": "unchanged", "model": {"task": cmd.task, "sha256": sha}}
    try:  # beside the running model, which keeps serving meanwhile
        task = build_task(cmd.task, cfg, path, agent.cache_dir)
    except Exception as e:
        agent.installed.discard(cmd.task, folder)
        stage = "smoke" if isinstance(e, SmokeTestError) else "load"
        raise Refused(f"{stage}: {type(e).__name__}: {e}; the running model is unchanged", stage,
                      status="rolled_back") from None
    configured = resolve(tcfg.model, agent.config_path)
    try:
        agent.installed.activate(cmd.task, folder, configured)
    except OSError as e:
        agent.installed.discard(cmd.task, folder)
        raise Refused(f"install: cannot record the new version ({e.strerror or e})", "install") from None
    info = model_info(instrument(cmd.task, task, agent.health), f"update:{folder.name}")
    agent.swap(agent.taskset.with_task(cmd.task, task, info, (tcfg, str(path), cfg.audio, cfg.device.timezone)))
    log.info("task %s: now %s (%s, signed by key %s)", cmd.task, path, sha[:12], verified.key_id)
    return {"status": "applied", "model": {"task": cmd.task, "sha256": sha, "version": info["version"],
                                           "key": verified.key_id}}
