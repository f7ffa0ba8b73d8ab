"""A model bundle on its way in: fetched within a deadline, checked in memory, then unpacked by its manifest.

A bundle is a tar (plain, or gzip: decompressed in memory up to ``max_bytes``, never
further) of one artefact folder: ``manifest.json``, ``manifest.sig`` and every file the
manifest lists. Nothing touches the disk before the manifest's signature verifies:

1. ``fetch``: inline base64 or an http(s) ``url`` whose host is in ``updates.url_hosts``; one
   overall deadline for connect, headers and body (a server trickling a byte at a time is cut
   off when it runs out, not after each read); no redirects, no proxies; any failure is one
   generic reason (the agent is not a port scanner for whoever sends commands); size capped.
2. ``unpack``: plain regular members with bare names only (no paths, links, devices, sparse
   files, duplicates); the manifest and its signature read in memory and verified against the
   trusted keys; then only the files the manifest lists are written, each capped at its stated
   ``bytes`` and checked against its sha256 while it is written; an unlisted member refuses the
   bundle. So a bundle writes at most the bytes its signed manifest declares.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.client
import io
import json
import logging
import socket
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .signing import SIG_NAME, SignatureError, verify_manifest_bytes

log = logging.getLogger("roadside.updates")
MAX_MEMBERS = 64
MAX_MANIFEST_BYTES = 1 << 20
PLAIN = (tarfile.REGTYPE, tarfile.AREGTYPE)


class UpdateError(RuntimeError):
    """A refused update; ``stage`` says where (fetch, unpack, verify, load, install)."""

    def __init__(self, stage: str, message: str):
        self.stage = stage
        super().__init__(f"{stage}: {message}")


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


# ------------------------------------------------------------------------------ fetch

def fetch(bundle_b64: str | None, url: str | None, sha256: str | None, max_bytes: int, deadline_s: float,
          allowed_hosts: list[str] | tuple = ()) -> bytes:
    if bundle_b64 is not None:
        if len(bundle_b64) > max_bytes * 4 // 3 + 4:
            raise UpdateError("fetch", f"inline bundle over updates.max_bundle_bytes ({max_bytes})")
        try:
            data = base64.b64decode(bundle_b64, validate=True)
        except (binascii.Error, ValueError):
            raise UpdateError("fetch", "bundle is not valid base64") from None
    else:
        data = download(url or "", max_bytes, deadline_s, allowed_hosts)
    if len(data) > max_bytes:
        raise UpdateError("fetch", f"bundle over updates.max_bundle_bytes ({max_bytes})")
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256.lower():
        raise UpdateError("fetch", "bundle sha256 does not match the command's sha256")
    return data


def _host_allowed(url: str, allowed: list[str] | tuple) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(host) and host in {h.lower() for h in allowed}


def download(url: str, max_bytes: int, deadline_s: float, allowed_hosts: list[str] | tuple) -> bytes:
    """The body at ``url`` within ``deadline_s`` in all; ``UpdateError`` with a generic reason otherwise."""
    if not _host_allowed(url, allowed_hosts):
        raise UpdateError("fetch", "url must be http(s) on a host in updates.url_hosts")
    socks: list[socket.socket] = []
    expired = threading.Event()

    def cut() -> None:  # the deadline: shut the socket under whatever read is blocked on it
        expired.set()
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect(),
                                         _Tracked.handler(socks, "http"), _Tracked.handler(socks, "https"))
    timer = threading.Timer(deadline_s, cut)
    timer.daemon = True
    timer.start()
    t0 = time.monotonic()
    try:
        with opener.open(url, timeout=deadline_s) as r:
            if r.status != 200:
                raise OSError(f"HTTP {r.status}")
            chunks, n = [], 0
            while n <= max_bytes and not expired.is_set():
                chunk = r.read1(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                n += len(chunk)
            if expired.is_set():
                raise TimeoutError("deadline")
            data = b"".join(chunks)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        # The detail stays in the local log; the city hears one reason whatever went wrong.
        log.warning("bundle download from %s failed after %.1f s: %s", url[:200], time.monotonic() - t0,
                    "deadline" if expired.is_set() else f"{type(e).__name__}: {str(e)[:200]}")
        raise UpdateError("fetch", f"could not download the bundle within updates.fetch_timeout_s "
                                   f"({deadline_s:g} s)") from None
    finally:
        timer.cancel()
    return data


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise urllib.error.URLError("redirect refused")  # a redirect could leave the allowed hosts


class _Tracked:
    """Connection classes that record their socket, so the deadline can shut it from another thread."""

    @staticmethod
    def handler(socks: list, scheme: str):
        base = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection

        class Conn(base):
            def connect(self):
                super().connect()
                socks.append(self.sock)

        if scheme == "https":
            class H(urllib.request.HTTPSHandler):
                def https_open(self, req):
                    return self.do_open(Conn, req, context=self._context)
        else:
            class H(urllib.request.HTTPHandler):
                def http_open(self, req):
                    return self.do_open(Conn, req)
        return H()


# ----------------------------------------------------------------------------- unpack

def _plain_tar(data: bytes, max_bytes: int) -> bytes:
    """The tar itself: gzip is decompressed in memory, never beyond ``max_bytes``."""
    if data[:2] != b"\x1f\x8b":
        return data
    d = zlib.decompressobj(wbits=31)
    try:
        out = d.decompress(data, max_bytes + 1)
    except zlib.error:
        raise UpdateError("unpack", "not a valid gzip stream") from None
    if len(out) > max_bytes or d.unconsumed_tail:
        raise UpdateError("unpack", f"the bundle expands beyond updates.max_bundle_bytes ({max_bytes})")
    if not d.eof or d.unused_data:
        raise UpdateError("unpack", "truncated or multi-part gzip stream")
    return out


def _members(data: bytes) -> tuple[tarfile.TarFile, dict[str, tarfile.TarInfo]]:
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
        members = []
        for m in tar:
            members.append(m)
            if len(members) > MAX_MEMBERS:
                raise UpdateError("unpack", f"more than {MAX_MEMBERS} members")
    except (tarfile.TarError, EOFError, OSError, ValueError, OverflowError) as e:
        raise UpdateError("unpack", f"not a tar archive ({type(e).__name__})") from None
    by_name: dict[str, tarfile.TarInfo] = {}
    for m in members:
        name = m.name[:100]
        if m.type not in PLAIN or m.issparse() or Path(m.name).name != m.name or m.name.startswith("."):
            raise UpdateError("unpack", f"member {name!r} is not a plain file name (regular file, no path)")
        if m.name in by_name:
            raise UpdateError("unpack", f"member {name!r} appears twice")
        by_name[m.name] = m
    return tar, by_name


def _read(tar: tarfile.TarFile, m: tarfile.TarInfo, cap: int) -> bytes:
    if m.size > cap:
        raise UpdateError("unpack", f"{m.name} is {m.size} bytes (at most {cap})")
    with tar.extractfile(m) as f:
        return f.read(cap + 1)


def unpack(data: bytes, dest: Path, keys: list[Ed25519PublicKey], max_bytes: int = 2_000_000_000) -> tuple[dict, str]:
    """Verify the bundle's manifest in memory, then write the files it lists into ``dest`` (new).

    Returns (manifest, id of the key that signed it). ``UpdateError`` (stage unpack or verify) otherwise;
    ``dest`` may then hold part of the files (the caller removes it).
    """
    tar, members = _members(_plain_tar(data, max_bytes))
    for need in ("manifest.json", SIG_NAME):
        if need not in members:
            raise UpdateError("verify", f"the bundle has no {need}" + (" (unsigned)" if need == SIG_NAME else ""))
    try:
        manifest, kid = verify_manifest_bytes(_read(tar, members["manifest.json"], MAX_MANIFEST_BYTES),
                                              _read(tar, members[SIG_NAME], 4096), keys, "bundle manifest.json")
    except SignatureError as e:
        raise UpdateError("verify", str(e)) from None
    files = manifest["files"]
    unlisted = sorted(set(members) - set(files) - {"manifest.json", SIG_NAME})
    if unlisted:
        raise UpdateError("verify", f"{[n[:60] for n in unlisted[:5]]} not listed in the signed manifest")
    dest.mkdir(parents=True)
    (dest / "manifest.json").write_bytes(_read(tar, members["manifest.json"], MAX_MANIFEST_BYTES))
    (dest / SIG_NAME).write_bytes(_read(tar, members[SIG_NAME], 4096))
    budget = max_bytes
    for name, entry in files.items():
        if not isinstance(name, str) or Path(name).name != name or name in ("manifest.json", SIG_NAME) \
                or not isinstance(entry, dict):
            raise UpdateError("verify", f"manifest files.{str(name)[:60]}: not a plain file name")
        m = members.get(name)
        if m is None:
            raise UpdateError("verify", f"manifest files.{name[:60]}: missing from the bundle")
        stated = entry.get("bytes")
        if isinstance(stated, int) and m.size != stated:
            raise UpdateError("verify", f"{name[:60]}: {m.size} bytes, the signed manifest says {stated}")
        if m.size > budget:
            raise UpdateError("unpack", f"the files add up to more than updates.max_bundle_bytes ({max_bytes})")
        budget -= m.size
        _extract(tar, m, dest / name, entry.get("sha256"))
    return manifest, kid


def _extract(tar: tarfile.TarFile, m: tarfile.TarInfo, out: Path, sha256) -> None:
    """Copy at most ``m.size`` bytes, hashing on the way; a mismatch refuses the bundle."""
    h, left = hashlib.sha256(), m.size
    with tar.extractfile(m) as src, open(out, "xb") as dst:
        while left > 0:
            block = src.read(min(left, 1 << 20))
            if not block:
                break
            h.update(block)
            dst.write(block)
            left -= len(block)
    if left or h.hexdigest() != sha256:
        raise UpdateError("verify", f"{m.name}: sha256 does not match the signed manifest: damaged or altered")
