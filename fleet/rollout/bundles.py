"""Model bundles on the city side: what one carries (read from its manifest) and serving them by sha256.

A bundle is the agent's tar (``roadside sign --bundle``: manifest.json, manifest.sig, the files).
The controller reads the manifest without unpacking anything (task, release, version, the model
file's sha256, the compression run's metrics) and serves the bundles over HTTP at
``GET /bundles/<sha256>`` from a content-addressed folder (``<sha256>.tar``): NATS carries at most
1 MB, and a pole fetches ``url`` with the ``sha256`` it was told, from a host in its
``updates.url_hosts``. Nothing is served that is not in the folder under its own hash.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import shutil
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

_SHA = re.compile(r"^/bundles/([0-9a-f]{64})$")


class BundleError(ValueError):
    """A bundle the controller cannot use; the message names the file and what is wrong."""


@dataclass(frozen=True)
class BundleInfo:
    path: Path
    sha256: str          # of the tar: what the pole checks after fetching
    task: str
    release: int
    version: str | None
    model_sha256: str    # of the model file inside: what promote/abort and rollbacks sign
    metrics: dict
    size: int


def read_bundle(path: Path | str) -> BundleInfo:
    from agent.control.store import model_file
    from agent.tasks.registry import model_tasks

    path = Path(path)
    try:
        data = path.read_bytes()
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            names = tar.getnames()
            if "manifest.json" not in names or "manifest.sig" not in names:
                raise BundleError(f"{path}: no manifest.json and manifest.sig (sign it: roadside sign --bundle)")
            manifest = json.loads(tar.extractfile("manifest.json").read())
    except (OSError, tarfile.TarError, ValueError, AttributeError) as e:
        if isinstance(e, BundleError):
            raise
        raise BundleError(f"{path}: not a readable model bundle ({type(e).__name__}: {e})") from None
    release = manifest.get("release")
    if not isinstance(release, int) or isinstance(release, bool) or release < 1:
        raise BundleError(f"{path}: manifest has no release (an integer >= 1: roadside sign --release N)")
    entry = manifest.get("files", {}).get(model_file(manifest))
    if not isinstance(entry, dict) or not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256", ""))):
        raise BundleError(f"{path}: manifest lists no sha256 for its model file {model_file(manifest)!r}")
    task = manifest.get("task")
    known = model_tasks()
    if task not in known:
        raise BundleError(f"{path}: manifest task {task!r} is not a task with a model (known: {', '.join(known)})")
    return BundleInfo(path, hashlib.sha256(data).hexdigest(), task, release, manifest.get("version"),
                      entry["sha256"], manifest.get("metrics") or {}, len(data))


class BundleStore:
    """``<folder>/<sha256>.tar``; ``add`` copies a bundle in, ``serve`` answers GET /bundles/<sha256>."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._server: http.server.ThreadingHTTPServer | None = None

    def add(self, info: BundleInfo) -> Path:
        dest = self.folder / f"{info.sha256}.tar"
        if not dest.is_file():
            tmp = dest.with_suffix(".tmp")
            shutil.copyfile(info.path, tmp)
            tmp.replace(dest)
        return dest

    def has(self, sha256: str) -> bool:
        return (self.folder / f"{sha256}.tar").is_file()

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start the HTTP server on a thread; its base URL (``http://host:port``)."""
        folder = self.folder

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                m = _SHA.match(self.path)
                path = folder / f"{m.group(1)}.tar" if m else None
                if path is None or not path.is_file():
                    self.send_error(404, "no such bundle")
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-tar")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # one line per fetch of 1,000 poles is noise
                pass

        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="bundles", daemon=True).start()
        return f"http://{host}:{self._server.server_address[1]}"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
