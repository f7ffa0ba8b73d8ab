"""Fixtures for the edge agent tests: the noise model, tiny ONNX models, real mosquitto brokers.

The noise model: the shipped student at agent/models/noise/ (committed).

Brokers: /usr/sbin/mosquitto started on a free 127.0.0.1 port with a throw-away config,
waited for until it accepts connections, stopped by PID. ``stop()``/``start()`` reuse the
port (the outage test). Tests skip when mosquitto is not installed, and fail under CI=true.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
SHIPPED_NOISE = REPO / "agent" / "models" / "noise" / "model.onnx"


def _need(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}; CI must run the agent tests")
    pytest.skip(what)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------- noise model

@pytest.fixture(scope="session")
def noise_model() -> Path:
    """The shipped noise model (agent/models/noise/model.onnx with its manifest.json)."""
    if not SHIPPED_NOISE.is_file():
        pytest.fail(f"{SHIPPED_NOISE} is missing: it is committed; rebuild it with roadside compress")
    return SHIPPED_NOISE


# ------------------------------------------------------------------------- tiny models

def write_model(folder: Path, graph_nodes, inputs, outputs, initializers, contract: dict) -> Path:
    """An ONNX model from onnx.helper parts plus a manifest.json the agent accepts."""
    import onnx
    from onnx import helper

    folder.mkdir(parents=True, exist_ok=True)
    graph = helper.make_graph(graph_nodes, "tiny", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = folder / "model.onnx"
    onnx.save(model, str(path))
    manifest = {"schema": 1, "stage": "test", "files": {"model.onnx": {"sha256": _sha256(path)}},
                "window_seconds": 0.0, **contract}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return path


def linear_model(folder: Path, in_shape: list, weights: np.ndarray, bias: np.ndarray, contract: dict,
                 reduce_axes: list[int] | None = None) -> Path:
    """logits = (x [mean over reduce_axes] flattened) @ weights + bias."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, src = [], "features"
    if reduce_axes:
        nodes.append(helper.make_node("ReduceMean", ["features"], ["reduced"], axes=reduce_axes, keepdims=0))
        src = "reduced"
    nodes += [helper.make_node("Flatten", [src], ["flat"], axis=1),
              helper.make_node("MatMul", ["flat", "W"], ["mm"]),
              helper.make_node("Add", ["mm", "b"], ["logits"])]
    inits = [numpy_helper.from_array(weights.astype(np.float32), "W"), numpy_helper.from_array(bias.astype(np.float32), "b")]
    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", *in_shape])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", weights.shape[1]])
    return write_model(folder, nodes, [x], [y], inits, contract)


# ------------------------------------------------------------------------------ broker

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A real mosquitto on 127.0.0.1, persistent (so subscribers' sessions survive a restart)."""

    def __init__(self, folder: Path):
        if not Path(MOSQUITTO).is_file():
            _need(f"mosquitto not installed at {MOSQUITTO}")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nmax_queued_messages 100000\nmax_inflight_messages 100\n"
            f"log_dest file {folder}/mosquitto.log\n"
            # Started as root, mosquitto would drop to user "mosquitto" and could not write here.
            f"user {getpass.getuser()}\n")
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}; see {self.folder}/mosquitto.log")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not accept connections on {self.port} within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)  # by PID: never anyone else's mosquitto
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker")
    yield b
    b.stop()


@pytest.fixture
def city_broker(tmp_path):
    b = Broker(tmp_path / "city")
    yield b
    b.stop()


@pytest.fixture
def observed_broker(tmp_path):
    """One broker (sensors and city) and a Collector of everything on it: (broker, observer). Both stop
    after the test's own teardown (its ``finally``: stop the agent first)."""
    b = Broker(tmp_path / "broker")
    observer = Collector(b.port)
    yield b, observer
    observer.close()
    b.stop()


# ------------------------------------------------------------------------- subscriber

class Collector:
    """Subscribes upstream (persistent session, QoS 1) and keeps every message by topic."""

    def __init__(self, port: int, topic: str = "roadside/v1/#", client_id: str = "test-collector"):
        import threading

        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[float, str, bytes, bool]] = []  # (received, topic, payload, retained)
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.messages.append((time.time(), msg.topic, msg.payload, msg.retain))

    def payloads(self, contains: str) -> list[dict]:
        with self._lock:
            return [json.loads(p) for _, t, p, _ in self.messages if contains in t]

    def wait_for(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = predicate(self)
            if got:
                return got
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# ------------------------------------------------------------------------------ agent

def write_agent_config(folder: Path, model: Path, sensors_port: int, city_port: int, **overrides) -> Path:
    """firmware_configs/test.yaml with ports, model and state folder filled in."""
    import yaml

    cfg = yaml.safe_load((REPO / "firmware_configs" / "test.yaml").read_text())
    cfg["sources"][0]["broker"]["port"] = sensors_port
    cfg["uplink"]["broker"]["port"] = city_port
    cfg["tasks"]["noise"]["model"] = str(model)
    cfg["device"]["state_dir"] = str(folder / "state")
    for dotted, value in overrides.items():
        node = cfg
        *head, last = dotted.split(".")
        for k in head:
            node = node[int(k)] if isinstance(node, list) else node[k]
        node[last] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class AgentProcess:
    """``roadside agent`` as a child process (so it can be SIGKILLed), stopped by PID."""

    def __init__(self, config: Path, log: Path):
        self.log = log
        self._out = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "agent", "--config", str(config)],
                                     cwd=REPO, stdout=self._out, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int:
        if self.alive():
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._out.close()
        return self.proc.returncode

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


# UrbanSound8K slices the shipped noise model classifies confidently (end-to-end tests, pole and city side)
SIREN = ["106905-8-0-0", "106905-8-0-1", "106905-8-0-2", "106905-8-0-3"]
DOG = ["101415-3-0-2", "101415-3-0-3", "101415-3-0-8"]


def clip_folder(data_dir: Path, out: Path, names: list[str]) -> Path:
    """A folder of symlinks to UrbanSound8K clips, named so that they play in the given order."""
    out.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        found = sorted((data_dir / "urbansound8k").glob(f"fold*/{name}.flac"))
        if not found:
            pytest.skip(f"clip {name} not in {data_dir}")
        (out / f"{i:03d}-{name}.flac").symlink_to(found[0])
    return out
