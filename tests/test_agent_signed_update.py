"""Signed model updates over ``cmd/model``, end to end: real mosquitto, the agent in-process, real models.

The "new" model is the shipped noise model re-saved with another doc string (same
weights, other bytes, so another sha256) and a new version in its manifest, signed with a
key generated here. Every command is answered on ``cmd/model/ack``; after every refusal
the old model must still be the one running and still process audio.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from agent.control.bundle_io import make_bundle
from agent.control.signing import sign_manifest
from agent_fixtures import Collector, linear_model, write_agent_config
from ops_fixtures import (InProcessAgent, base_topic, keypair, model_command, publish, rehash, send_audio,
                          signed_copy, tone, wait_until)


def _new_version(folder: Path) -> None:
    import onnx

    model = onnx.load(str(folder / "model.onnx"))
    model.doc_string = "roadside update test"
    onnx.save(model, str(folder / "model.onnx"))
    rehash(folder, version="0.9.1-test")


@pytest.fixture
def rig(tmp_path, noise_model, observed_broker):
    """One broker (sensors and city), an observer, keys, and a function that starts the agent."""
    broker, observer = observed_broker
    private, public = keypair(tmp_path / "keys")
    agents: list[InProcessAgent] = []

    def start() -> InProcessAgent:
        cfg = write_agent_config(tmp_path / "agent", noise_model, broker.port, broker.port,
                                 **{"updates": {"trusted_keys": [str(public)], "url_hosts": ["127.0.0.1"]}})
        agent = InProcessAgent(cfg)
        agents.append(agent)
        wait_until(lambda: _state(observer, agent.agent.origin.boot), 20, "the agent online")
        return agent

    yield broker, observer, private, start
    for a in agents:
        a.stop()


def _state(observer: Collector, boot: int) -> dict | None:
    states = [s for s in observer.payloads("/state") if s.get("online") and s.get("boot") == boot]
    return states[-1] if states else None


def _command(broker, observer, cmd_id: str, payload: bytes, timeout: float = 60) -> dict:
    publish(broker.port, f"{base_topic()}/cmd/model", payload)
    return observer.wait_for(lambda c: [a for a in c.payloads("/cmd/model/ack") if a["id"] == cmd_id], timeout,
                             f"the answer to {cmd_id}")[-1]


def _still_running(broker, agent: InProcessAgent, sha: str) -> None:
    """The running noise model is ``sha`` and it still processes audio."""
    assert agent.agent.taskset.models["noise"]["sha256"] == sha
    before = agent.agent.health.tasks["noise"].windows
    agent.wait_sensors()
    send_audio(broker.port, tone(5.0), seq0=10_000 + before)
    wait_until(lambda: agent.agent.health.tasks["noise"].windows > before, 20, "noise windows after the refusal")


def test_a_signed_update_is_verified_swapped_answered_and_kept_across_restarts(rig, tmp_path, noise_model):
    broker, observer, private, start = rig
    agent = start()
    old_sha = agent.agent.taskset.models["noise"]["sha256"]
    update = signed_copy(noise_model.parent, tmp_path / "update", private, edit=_new_version)

    ack = _command(broker, observer, "upd-1", model_command("upd-1", update))

    assert ack["ok"] and ack["status"] == "applied" and ack["cmd"] == "model", ack
    new_sha = ack["model"]["sha256"]
    assert new_sha != old_sha and ack["model"]["version"] == "0.9.1-test"
    state = observer.wait_for(lambda c: [s for s in c.payloads("/state")
                                         if s.get("models", {}).get("noise", {}).get("sha256") == new_sha],
                              10, "the state message naming the new model")[-1]
    assert state["models"]["noise"]["src"].startswith("update:")
    _still_running(broker, agent, new_sha)

    # The same command again (QoS 1 may deliver twice): answered the same, not run again.
    again = _command(broker, observer, "upd-1", model_command("upd-1", update))
    assert again["status"] == "applied" and len(observer.payloads("/cmd/model/ack")) == 2

    agent.stop()
    agent = start()  # boot 2: the installed update is verified again and runs
    assert agent.agent.taskset.models["noise"]["sha256"] == new_sha
    assert agent.agent.taskset.models["noise"]["src"].startswith("update:")

    # A damaged installed copy is refused at the next start: back to the configured model.
    installed = next((agent.agent.state_dir / "models" / "noise").glob(f"{new_sha[:16]}/model.onnx"))
    agent.stop()
    installed.write_bytes(installed.read_bytes()[:-10])
    agent = start()
    running = agent.agent.taskset.models["noise"]
    assert running["sha256"] == old_sha and running["src"] == "config"


def test_tampered_unsigned_or_foreign_bundles_are_refused_and_the_old_model_keeps_running(rig, tmp_path,
                                                                                          noise_model):
    broker, observer, private, start = rig
    agent = start()
    old_sha = agent.agent.taskset.models["noise"]["sha256"]
    rogue, _ = keypair(tmp_path / "rogue", "rogue")

    def tamper(folder: Path) -> None:  # one byte of the model changed after signing
        data = bytearray((folder / "model.onnx").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (folder / "model.onnx").write_bytes(bytes(data))

    cases = {
        "tampered": signed_copy(noise_model.parent, tmp_path / "t", private, edit=_new_version),
        "unsigned": signed_copy(noise_model.parent, tmp_path / "u", None, edit=_new_version),
        "foreign": signed_copy(noise_model.parent, tmp_path / "f", rogue, edit=_new_version),
    }
    tamper(cases["tampered"])
    expected = {"tampered": "sha256", "unsigned": "unsigned", "foreign": "does not verify against any trusted key"}
    for name, folder in cases.items():
        ack = _command(broker, observer, f"bad-{name}", model_command(f"bad-{name}", folder))
        assert not ack["ok"] and ack["status"] == "refused" and ack["stage"] == "verify", ack
        assert expected[name] in ack["reason"], ack

    for cmd_id, payload, stage in [
        ("bad-json", b"{not json", "parse"),
        ("bad-b64", json.dumps({"id": "bad-b64", "task": "noise", "bundle": "!!!"}).encode(), "fetch"),
        ("bad-task", json.dumps({"id": "bad-task", "task": "lidar", "bundle": ""}).encode(), "parse"),
    ]:
        publish(broker.port, f"{base_topic()}/cmd/model", payload)
        if cmd_id != "bad-json":  # an unparseable command has no id to answer by; it is still answered
            ack = observer.wait_for(lambda c: [a for a in c.payloads("/cmd/model/ack") if a["id"] == cmd_id], 10,
                                    cmd_id)[-1]
            assert ack["stage"] == stage and not ack["ok"], ack
    observer.wait_for(lambda c: [a for a in c.payloads("/cmd/model/ack") if a["id"] is None], 10, "bad-json")
    _still_running(broker, agent, old_sha)
    assert not (agent.agent.state_dir / "models" / "noise" / "active.json").exists()


def _garbage_model(folder: Path) -> None:
    (folder / "model.onnx").write_bytes(b"\x08\x07" + bytes(range(256)) * 40)  # not ONNX: fails to load
    rehash(folder, version="broken")


def test_a_model_failing_to_load_or_its_smoke_inference_is_rolled_back(rig, tmp_path, noise_model):
    broker, observer, private, start = rig
    agent = start()
    old_sha = agent.agent.taskset.models["noise"]["sha256"]
    shipped = json.loads((noise_model.parent / "manifest.json").read_text())
    # Loads and takes the front-end's output, but computes NaN: caught by the smoke inference.
    nan = linear_model(tmp_path / "nan", [1, shipped["frontend"]["n_mels"], "frames"],
                       np.full((shipped["frontend"]["n_mels"], len(shipped["labels"])), np.nan), np.zeros(10),
                       {k: shipped[k] for k in ("task", "labels", "frontend")}, reduce_axes=[1, 3])
    manifest = json.loads((nan.parent / "manifest.json").read_text())
    (nan.parent / "manifest.json").write_text(json.dumps({**manifest, "window_seconds": 1.0, "release": 1}))
    sign_manifest(nan.parent / "manifest.json", private)
    broken = signed_copy(noise_model.parent, tmp_path / "broken", private, edit=_garbage_model)

    for cmd_id, folder, stage in [("nan", nan.parent, "smoke"), ("broken", broken, "load")]:
        ack = _command(broker, observer, cmd_id, model_command(cmd_id, folder))
        assert ack["status"] == "rolled_back" and ack["stage"] == stage and not ack["ok"], ack
        assert "the running model is unchanged" in ack["reason"]
    _still_running(broker, agent, old_sha)
    assert not [p for p in (agent.agent.state_dir / "models" / "noise").iterdir() if p.is_dir()]

    # After the roll backs, a good update by url (the bundle's sha256 in the command) applies.
    good = signed_copy(noise_model.parent, tmp_path / "good", private, edit=_new_version)
    with _serve(make_bundle(good)) as (url, sha):
        wrong = _command(broker, observer, "url-1", json.dumps(
            {"id": "url-1", "task": "noise", "url": url, "sha256": "0" * 64}).encode())
        assert wrong["status"] == "refused" and wrong["stage"] == "fetch" and "sha256" in wrong["reason"]
        ack = _command(broker, observer, "url-2", json.dumps(
            {"id": "url-2", "task": "noise", "url": url, "sha256": sha}).encode())
    assert ack["status"] == "applied" and ack["model"]["sha256"] != old_sha, ack
    _still_running(broker, agent, ack["model"]["sha256"])


@contextlib.contextmanager
def _serve(data: bytes):
    """The bundle on a throw-away HTTP server on 127.0.0.1: (url, sha256)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/noise.tar", hashlib.sha256(data).hexdigest()
    finally:
        server.shutdown()
        server.server_close()
