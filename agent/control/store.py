"""Installed model versions per task, and which one is active: ``ModelStore``.

Installed versions live in ``{state_dir}/models/{task}/{sha16}/``, each a verified artefact
folder unpacked from a model bundle (agent.control.bundle_io); ``{task}/active.json`` records
the current one, the previous one, the configured model they replace and the highest release
ever applied. At start the agent tries the current one, then the previous one (each verified
again), then the configured model; an update applies only while the config names the same
model it replaced, so a config that names another model wins.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .bundle_io import UpdateError, unpack
from .signing import SignatureError, Verified, load_public_key, verify_manifest

if TYPE_CHECKING:
    from ..config import AgentConfig

log = logging.getLogger("roadside.updates")


def model_file(manifest: dict) -> str:
    """The ONNX file the agent runs: the manifest's onnxruntime target, else model.onnx."""
    target = manifest.get("targets", {}).get("onnxruntime", {}) if isinstance(manifest.get("targets"), dict) else {}
    return str(target.get("file") or "model.onnx")


class ModelStore:
    """Installed, verified model versions per task and which one is active."""

    def __init__(self, root: Path, trusted_keys: list[Path] | None, keep: int = 2,
                 keys: list[Ed25519PublicKey] | None = None):
        self.root, self.keep = root, keep
        # ``keys``: the ones loaded at start, kept across reloads (a reload never re-reads a key file)
        self.keys: list[Ed25519PublicKey] = keys if keys is not None else \
            [load_public_key(p) for p in trusted_keys or []]
        self._n = 0

    @classmethod
    def for_config(cls, rcfg: "AgentConfig", state_dir: Path,
                   keys: list[Ed25519PublicKey] | None = None) -> "ModelStore":
        """The store a (resolved) config describes; ``keys``: the running agent's, so a reload never
        re-reads key files (None at start: they are read from ``updates.trusted_keys``)."""
        u = rcfg.updates
        return cls(state_dir / "models", u.trusted_keys if u else None, u.keep if u else 2, keys=keys)

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
