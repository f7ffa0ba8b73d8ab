"""Helpers for the agent operations tests: the agent in-process, synthetic sensor audio, signed bundles.

``InProcessAgent`` runs ``agent.runtime.Agent`` on a thread (no signal handlers), so a test
can look at its state directly; tests that need SIGKILL, SIGHUP or the restart loop use
``agent_fixtures.AgentProcess`` instead.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import load_config
from agent.control.bundle_io import make_bundle
from agent.control.signing import generate_keypair, sign_manifest
from agent.payloads import encode_audio, topic_for
from agent.runtime import Agent

DEVICE, SITE, PREFIX = "test-0001", "lab", "roadside/v1"


def base_topic(device: str = DEVICE) -> str:
    return f"{PREFIX}/{SITE}/{device}"


class InProcessAgent:
    def __init__(self, config: Path):
        self.agent = Agent(load_config(config), config)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="agent-under-test", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.agent.run(install_signals=False)
        except BaseException as e:  # surfaced by the test through .error
            self.error = e

    def wait_sensors(self, timeout: float = 10.0) -> None:
        """Until every MQTT sensor source is connected and subscribed (its SUBACK had time to come)."""
        for s in self.agent.sources:
            if hasattr(s, "conn"):
                assert s.conn.connected.wait(timeout), f"sensor source not connected: {s.conn.last_error}"
        time.sleep(0.3)

    def stop(self, timeout: float = 15.0) -> None:
        self.agent.stop()
        self.thread.join(timeout)


def tone(seconds: float, rate: int = 16000, freq: float = 1000.0, level: float = 0.1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def send_audio(port: int, samples: np.ndarray, device: str = DEVICE, sensor: str = "mic0", rate: int = 16000,
               chunk_ms: int = 100, seq0: int = 0) -> int:
    """Publish ``samples`` as a microphone would (as fast as the broker takes them); returns chunks sent."""
    n = rate * chunk_ms // 1000
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"mic-{time.monotonic_ns()}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    start_us = int(time.time() * 1e6)
    info = None
    k = 0
    for k, i in enumerate(range(0, samples.size - n + 1, n)):
        payload = encode_audio(samples[i:i + n], rate, seq0 + k, start_us + k * chunk_ms * 1000)
        info = client.publish(topic_for("sensors", device, "audio", sensor), payload, qos=1)
    if info is not None:
        info.wait_for_publish(10)
    client.loop_stop()
    client.disconnect()
    return k + 1


def publish(port: int, topic: str, payload: bytes, qos: int = 1) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"cmd-{time.monotonic_ns()}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(topic, payload, qos=qos).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()


def keypair(folder: Path, name: str = "ops") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return generate_keypair(folder / f"{name}.key", folder / f"{name}.pub")


def rehash(folder: Path, release: int = 1, version: str | None = None) -> None:
    """Make the manifest describe the folder's (edited) files again, as compression writes it, with a
    release number (an update without one is refused: no downgrade) and optionally a version."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        data = (folder / name).read_bytes()
        entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    manifest["release"] = release
    if version:
        manifest["version"] = version
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def signed_copy(model_folder: Path, out: Path, key: Path | None, edit=None) -> Path:
    """A copy of an artefact folder (manifest and the files it lists), optionally edited, signed with ``key``."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((model_folder / "manifest.json").read_text())
    for name in manifest["files"]:
        shutil.copy(model_folder / name, out / name)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if edit is not None:
        edit(out)
    if key is not None:
        sign_manifest(out / "manifest.json", key)
    return out


def model_command(cmd_id: str, folder: Path, task: str = "noise") -> bytes:
    """``cmd/model`` carrying the folder's bundle inline."""
    bundle = base64.b64encode(make_bundle(folder)).decode()
    return json.dumps({"id": cmd_id, "task": task, "bundle": bundle}).encode()


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
