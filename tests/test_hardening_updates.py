"""Issue 18, the update side: bundles, downgrades, downloads and the outbox cannot be turned against the pole.

Bombs are built here, small on disk (a 1 MB tar.gz of a 1 GiB member, a 10 kB sparse tar of
900 MiB), and after each refusal the state folder is measured: nothing large may have been
written. The real model store, the real noise model and real HTTP servers on 127.0.0.1.
Figures (bytes written, how long a trickling server held the command thread, outbox size on
disk) are printed for the report; nothing asserts a speed.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import os
import socket
import tarfile
import threading
import time
import zlib
from pathlib import Path

import pytest

from agent.config import load_config
from agent.control.bundle_io import UpdateError, download, make_bundle, unpack
from agent.control.signing import load_public_key, rollback_message, sign_bytes, sign_manifest
from agent.outbox import ALERT, SUMMARY, Outbox
from agent.runtime import Agent
from agent_fixtures import write_agent_config
from ops_fixtures import keypair, model_command, signed_copy


def _bytes_under(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def _gz_bomb(size: int = 1 << 30) -> bytes:
    """A gzip'd tar whose one member ``model.onnx`` is ``size`` zero bytes, compressed as it is made."""
    info = tarfile.TarInfo("model.onnx")
    info.size = size
    z, out = zlib.compressobj(9, zlib.DEFLATED, 31), []
    out.append(z.compress(info.tobuf(format=tarfile.GNU_FORMAT)))
    zeros = bytes(1 << 22)
    for _ in range(size // len(zeros)):
        out.append(z.compress(zeros))
    out.append(z.compress(bytes(1024)) + z.flush())  # the two end-of-archive blocks
    return b"".join(out)


def _sparse_tar(size: int = 900 << 20) -> bytes:
    """10 kB that a tar reader expands to ``size`` bytes (a PAX GNU sparse member)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("model.onnx")
        info.size = 512
        info.pax_headers = {"GNU.sparse.size": str(size), "GNU.sparse.map": f"{size - 512},512",
                            "GNU.sparse.numblocks": "1"}
        tar.addfile(info, io.BytesIO(b"x" * 512))
    return buf.getvalue()


@pytest.fixture
def agent(tmp_path, noise_model):
    """An agent from a real config with a trusted key; commands are handled directly (it is not running)."""
    key, public = keypair(tmp_path / "keys")
    path = write_agent_config(tmp_path / "agent", noise_model, 1, 1, **{"updates": {
        "trusted_keys": [str(public)], "url_hosts": ["127.0.0.1"], "fetch_timeout_s": 2}})
    a = Agent(load_config(path), path)
    a.test_key, a.test_public = key, public
    yield a
    a.outbox.close()


# --------------------------------------------------------------------------------- bundles

def test_a_gzip_bomb_is_refused_in_memory_and_writes_nothing(agent):
    bomb = _gz_bomb()
    assert len(bomb) < 1_100_000
    t0 = time.perf_counter()
    ack = agent.commands.handle("model", json.dumps(
        {"id": "gz", "task": "noise", "bundle": base64.b64encode(bomb).decode()}).encode())
    took = time.perf_counter() - t0
    assert ack["status"] == "refused" and ack["stage"] == "unpack" and "expands beyond" in ack["reason"], ack
    written = _bytes_under(agent.state_dir / "models")
    assert written == 0
    print(f"\ngzip bomb {len(bomb)} B -> 1 GiB: refused in {took:.2f} s, {written} bytes written")


def test_a_sparse_tar_is_refused_before_anything_is_written(agent):
    sparse = _sparse_tar()
    assert len(sparse) <= 10_240 and next(iter(tarfile.open(fileobj=io.BytesIO(sparse)))).issparse()
    ack = agent.commands.handle("model", json.dumps(
        {"id": "sp", "task": "noise", "bundle": base64.b64encode(sparse).decode()}).encode())
    assert ack["stage"] == "unpack" and "not a plain file" in ack["reason"], ack
    assert _bytes_under(agent.state_dir / "models") == 0
    print(f"\nsparse tar {len(sparse)} B -> 900 MiB: refused, 0 bytes written")


def test_an_unsigned_or_foreign_bundle_writes_nothing_however_large(agent, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    (big / "model.onnx").write_bytes(os.urandom(5 << 20))
    (big / "manifest.json").write_text(json.dumps({"task": "noise", "release": 9, "files": {"model.onnx": {
        "sha256": hashlib.sha256((big / "model.onnx").read_bytes()).hexdigest()}}}))
    for cmd_id in ("unsigned", "foreign"):
        if cmd_id == "foreign":
            rogue, _ = keypair(tmp_path / "rogue", "rogue")
            sign_manifest(big / "manifest.json", rogue)
        ack = agent.commands.handle("model", model_command(cmd_id, big))
        assert ack["stage"] == "verify" and ack["status"] == "refused", ack
        assert _bytes_under(agent.state_dir / "models") == 0


def test_only_listed_files_are_written_each_at_its_signed_size(tmp_path, agent):
    keys = [load_public_key(agent.test_public)]
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"m" * 1000)
    (folder / "manifest.json").write_text(json.dumps({"task": "noise", "files": {"model.onnx": {
        "sha256": hashlib.sha256(b"m" * 1000).hexdigest(), "bytes": 1000}}}))
    sign_manifest(folder / "manifest.json", agent.test_key)
    good = make_bundle(folder)

    def with_member(name: str, data: bytes, replace: bool = False) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=io.BytesIO(good)) as src, tarfile.open(fileobj=buf, mode="w") as out:
            for m in src:
                if not (replace and m.name == name):
                    out.addfile(m, src.extractfile(m))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    cases = {"unlisted": (with_member("extra.bin", b"x" * 10_000), "not listed in the signed manifest"),
             "resized": (with_member("model.onnx", b"m" * 5000, replace=True),
                         "5000 bytes, the signed manifest says 1000"),
             "altered": (with_member("model.onnx", b"n" * 1000, replace=True), "sha256 does not match")}
    for name, (data, expected) in cases.items():
        dest = tmp_path / name
        with pytest.raises(UpdateError, match=expected):
            unpack(data, dest, keys)
        assert _bytes_under(dest) <= 3000, name  # at most the manifest, its signature, one checked file
    manifest, _ = unpack(good, tmp_path / "ok", keys)
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["manifest.json", "manifest.sig", "model.onnx"]


# ------------------------------------------------------------------------------- downgrade

def _release(noise_model: Path, out: Path, key: Path, release: int, doc: str) -> Path:
    import onnx

    def edit(folder: Path) -> None:  # same weights, other bytes: another model by sha256
        model = onnx.load(str(folder / "model.onnx"))
        model.doc_string = doc
        onnx.save(model, str(folder / "model.onnx"))
        manifest = json.loads((folder / "manifest.json").read_text())
        data = (folder / "model.onnx").read_bytes()
        manifest["files"]["model.onnx"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        (folder / "manifest.json").write_text(json.dumps({**manifest, "release": release}))

    return signed_copy(noise_model.parent, out, key, edit=edit)


def test_an_older_release_is_refused_unless_an_operator_signed_the_rollback(agent, tmp_path, noise_model):
    old = _release(noise_model, tmp_path / "r1", agent.test_key, 1, "release 1")
    new = _release(noise_model, tmp_path / "r2", agent.test_key, 2, "release 2")
    assert agent.commands.handle("model", model_command("u1", old))["status"] == "applied"
    applied = agent.commands.handle("model", model_command("u2", new))
    assert applied["status"] == "applied" and applied["model"]["release"] == 2
    new_sha = applied["model"]["sha256"]

    replay = agent.commands.handle("model", model_command("u3", old))  # validly signed, but older
    assert replay["status"] == "refused" and "release 1 is not newer than release 2" in replay["reason"], replay
    assert agent.taskset.models["noise"]["sha256"] == new_sha

    old_sha = json.loads((old / "manifest.json").read_text())["files"]["model.onnx"]["sha256"]
    rogue, _ = keypair(tmp_path / "rogue", "rogue")
    for cmd_id, token in [("u4", sign_bytes(rollback_message("noise", 2, old_sha), rogue)),  # not a trusted key
                          ("u5", sign_bytes(rollback_message("noise", 1, old_sha), agent.test_key)),  # wrong state
                          ("u6", sign_bytes(rollback_message("noise", 2, new_sha), agent.test_key))]:  # other model
        body = json.loads(model_command(cmd_id, old))
        ack = agent.commands.handle("model", json.dumps({**body, "rollback": token}).encode())
        assert ack["status"] == "refused" and ack["stage"] == "verify", (cmd_id, ack)
    body = json.loads(model_command("u7", old))
    token = sign_bytes(rollback_message("noise", 2, old_sha), agent.test_key)
    back = agent.commands.handle("model", json.dumps({**body, "rollback": token}).encode())
    assert back["status"] == "applied" and back["model"]["sha256"] == old_sha

    # The highest release stays 2: release 2 itself cannot be replayed over the rollback.
    again = agent.commands.handle("model", model_command("u8", new))
    assert again["status"] == "refused" and "not newer than release 2" in again["reason"]
    unversioned = signed_copy(noise_model.parent, tmp_path / "none", agent.test_key)
    assert "no release number" in agent.commands.handle("model", model_command("u9", unversioned))["reason"]


# -------------------------------------------------------------------------------- download

class _Trickle(http.server.BaseHTTPRequestHandler):
    """Announces a megabyte, then sends one byte every 0.2 s (or trickles the status line itself)."""
    sent: list[int] = []
    cut: list[bool] = []

    def do_GET(self):
        n = 0
        try:
            if self.path == "/headers":
                for ch in b"HTTP/1.1 200 OK\r\n" * 100:
                    self.wfile.write(bytes([ch]))
                    self.wfile.flush()
                    n += 1
                    time.sleep(0.2)
            else:
                self.send_response(200)
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                for _ in range(300):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    n += 1
                    time.sleep(0.2)
            self.cut.append(False)
        except OSError:
            self.cut.append(True)  # the client hung up on us
        self.sent.append(n)

    def log_message(self, *args):
        pass


@pytest.fixture
def trickle():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    _Trickle.sent, _Trickle.cut = [], []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_trickling_server_is_cut_off_at_the_overall_deadline(agent, trickle):
    for path in ("/body", "/headers"):
        ack = agent.commands.handle("model", json.dumps(
            {"id": f"t{path[1:]}", "task": "noise", "url": trickle + path, "sha256": "0" * 64}).encode())
        assert ack["status"] == "refused" and ack["stage"] == "fetch", ack
        assert ack["reason"] == "fetch: could not download the bundle within updates.fetch_timeout_s (2 s)"
        print(f"\ntrickling {path}: the command thread was held {ack['s']} s (deadline 2 s)")
    deadline = time.monotonic() + 5
    while len(_Trickle.cut) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _Trickle.cut == [True, True] and max(_Trickle.sent) < 300  # hung up on, long before it was done


def test_hosts_off_the_allow_list_are_never_contacted_and_reasons_tell_no_port_state(trickle):
    with pytest.raises(UpdateError, match="url must be http\\(s\\) on a host in updates.url_hosts"):
        download(trickle + "/body", 10_000, 2, ["updates.example"])
    assert _Trickle.sent == []  # no connection was made
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]  # bound, never listening: connection refused
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen()  # accepts, never answers (an open port that is not a web server)
    reasons = set()
    for port in (closed_port, mute.getsockname()[1]):
        with pytest.raises(UpdateError) as e:
            download(f"http://127.0.0.1:{port}/x", 10_000, 1, ["127.0.0.1"])
        reasons.add(str(e.value))
    mute.close()
    assert reasons == {"fetch: could not download the bundle within updates.fetch_timeout_s (1 s)"}


# ---------------------------------------------------------------------------------- outbox

def test_the_outbox_bound_holds_for_its_files_on_disk_under_load(tmp_path):
    cap = 20_000
    box = Outbox(tmp_path / "o.sqlite", max_bytes=10_000, hard_cap_bytes=cap)
    on_disk = lambda: sum(p.stat().st_size for p in tmp_path.iterdir() if not p.name.endswith("-shm"))  # noqa: E731
    biggest = 0
    for i in range(2000):
        box.put(ALERT if i % 4 == 0 else SUMMARY, "alert/noise",
                lambda seq: json.dumps({"s": seq, "p": "x" * 230}).encode())
        if i % 7 == 0:
            box.ack(box.pending(limit=1)[0].id)  # the uplink deleting rows meanwhile
        biggest = max(biggest, on_disk())
    s = box.stats()
    assert biggest <= cap and s["disk"] <= cap
    assert s["alerts_dropped"] > 0 and s["summaries_dropped"] > 0 and s["alerts"] > 0
    print(f"\noutbox: 2000 messages against a {cap} B cap: at most {biggest} B on disk (db + WAL), "
          f"{s['alerts_dropped']} alerts and {s['summaries_dropped']} summaries dropped, counted")
    box.close()
    reopened = Outbox(tmp_path / "o.sqlite", max_bytes=10_000, hard_cap_bytes=cap)
    assert reopened.stats()["alerts"] == s["alerts"]  # nothing lost by the compaction
    reopened.close()


# ------------------------------------------------------------------------- operators' tools

def test_roadside_sign_makes_releases_rollbacks_and_signed_reloads_the_agent_accepts(agent, tmp_path, noise_model,
                                                                                     capsys):
    from agent.cli import main

    two = _release(noise_model, tmp_path / "two", agent.test_key, 2, "two")
    one = signed_copy(noise_model.parent, tmp_path / "one", None)  # unsigned, no release: the CLI adds both
    assert main(["sign", str(one / "manifest.json"), "--key", str(agent.test_key), "--release", "1"]) == 0
    assert json.loads((one / "manifest.json").read_text())["release"] == 1
    assert agent.commands.handle("model", model_command("c1", two))["status"] == "applied"
    assert agent.commands.handle("model", model_command("c2", one))["status"] == "refused"
    capsys.readouterr()
    assert main(["sign", str(one / "manifest.json"), "--key", str(agent.test_key), "--rollback-from", "2"]) == 0
    token = json.loads(capsys.readouterr().out.splitlines()[-1])["rollback"]
    body = {**json.loads(model_command("c3", one)), "rollback": token}
    assert agent.commands.handle("model", json.dumps(body).encode())["status"] == "applied"

    edited = agent.config_path.read_text().replace("cooldown_s: 5", "cooldown_s: 6")
    new = tmp_path / "new.yaml"
    new.write_text(edited)
    assert main(["sign", str(new), "--key", str(agent.test_key), "--reload-id", "r-1"]) == 0
    command = capsys.readouterr().out.strip()
    ack = agent.commands.handle("reload", command.encode())
    assert ack["status"] == "applied" and agent.cfg.tasks.noise.rule.cooldown_s == 6
