"""A fourth task added without touching the agent's core: everything about it lives in this file.

"vibration" reads a pole-mounted accelerometer that streams like a microphone (the audio sensor
format, at the device's audio rate), computes its own front-end (band energies of one-second windows), runs a tiny
model fitted here on generated signals, and alerts ``shaking`` upstream through a real broker.
The agent finds it through the task registry (``agent.tasks.registry.register``): the config's
``tasks:`` section, the ``model`` command and the task set accept it; nothing in agent/ names it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import Field

from agent.commands import Refused, parse
from agent.config import ModelTaskConfig
from agent.rules import Rule, softmax
from agent.tasks import Detection, LoadedModel, dry_run
from agent.tasks.registry import TaskSpec, model_tasks, register, unregister
from agent_fixtures import Broker, Collector, linear_model, write_agent_config
from ops_fixtures import InProcessAgent, send_audio, wait_until

RATE = 16000  # accelerometer samples per second: the device's audio.sample_rate (firmware_configs/test.yaml)
BANDS = [(1, 10), (10, 25), (25, 40), (40, 200)]  # Hz
LABELS = ["calm", "shaking"]


def band_energies(window: np.ndarray, rate: int = RATE) -> np.ndarray:
    """dB of the energy in each band: the front-end, the same here for fitting and in the task."""
    spectrum = np.abs(np.fft.rfft(window * np.hanning(len(window)))) ** 2
    freqs = np.fft.rfftfreq(len(window), 1 / rate)
    return np.array([10 * np.log10(spectrum[(freqs >= lo) & (freqs < hi)].sum() + 1e-9) for lo, hi in BANDS],
                    np.float32)


def signal(shaking: bool, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise, plus a 30 Hz structural resonance when shaking (a heavy lorry on a bridge deck)."""
    t = np.arange(int(seconds * RATE)) / RATE
    x = 0.01 * rng.standard_normal(t.size)
    if shaking:
        x += 0.3 * np.sin(2 * np.pi * (30 + rng.uniform(-3, 3)) * t)
    return x.astype(np.float32)


class VibrationConfig(ModelTaskConfig):
    window_seconds: float = Field(1.0, gt=0, le=10)


class VibrationTask:
    kind, consumes, frontend_kind = "vibration", "audio", "band_energy"

    def __init__(self, cfg: VibrationConfig, model: LoadedModel, input_rate: int):
        if model.contract.frontend.get("rate") != input_rate:
            raise ValueError(f"model trained at {model.contract.frontend.get('rate')} Hz, sensor sends {input_rate}")
        self.cfg, self.model, self.rate = cfg, model, input_rate
        self.n = int(cfg.window_seconds * input_rate)
        Rule(cfg.rule, model.contract.labels, "tasks.vibration.rule")
        dry_run(model, band_energies(np.zeros(self.n, np.float32)))
        self.buffers: dict[str, tuple[np.ndarray, Rule]] = {}

    def handle(self, chunk) -> list[Detection]:
        buf, rule = self.buffers.get(chunk.sensor, (np.zeros(0, np.float32), Rule(self.cfg.rule, self.model.contract.labels)))
        buf, out = np.concatenate([buf, chunk.samples]), []
        while buf.size >= self.n:
            window, buf = buf[:self.n], buf[self.n:]
            probs = softmax(self.model.backend.run(band_energies(window)[None])[0])
            end_ms = int(chunk.capture_ms + 1000 * (chunk.samples.size - buf.size) / self.rate)
            for ev in rule.update(probs, end_ms - 1000, end_ms):
                out.append(Detection(self.kind, chunk.sensor, ev.cls, ev.confidence, ev.end_ms,
                                     ev.end_ms - ev.start_ms, self.model.info))
        self.buffers[chunk.sensor] = (buf, rule)
        return out


def fit_tiny_model(folder: Path) -> Path:
    """Logistic regression on generated windows (numpy gradient descent), written as ONNX + manifest."""
    rng = np.random.default_rng(7)
    x = np.stack([band_energies(signal(i % 2 == 1, 1.0, rng)) for i in range(200)])
    y = np.arange(200) % 2
    mean, std = x.mean(0), x.std(0) + 1e-6
    w, b = np.zeros((4, 2)), np.zeros(2)
    for _ in range(300):
        p = np.exp((xs := (x - mean) / std) @ w + b)
        p /= p.sum(1, keepdims=True)
        grad = p - np.eye(2)[y]
        w -= 0.5 * xs.T @ grad / len(y)
        b -= 0.5 * grad.mean(0)
    # the standardisation folded into the weights: the model takes raw band energies
    weights, bias = w / std[:, None], b - (mean / std) @ w
    contract = {"task": "vibration", "labels": LABELS, "frontend": {"kind": "band_energy", "rate": RATE},
                "window_seconds": 1.0, "name": "vibration-tiny", "version": "0.1"}
    return linear_model(folder, [4], weights, bias, contract)


@pytest.fixture
def vibration_task():
    register(TaskSpec("vibration", VibrationTask.consumes, VibrationConfig, frontend=VibrationTask.frontend_kind,
                      factory=lambda cfg, model, ctx: VibrationTask(cfg, model, ctx.sample_rate)))
    yield
    unregister("vibration")


def test_the_fitted_toy_model_separates_shaking_from_calm(tmp_path):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(fit_tiny_model(tmp_path / "m")))
    rng = np.random.default_rng(99)  # other signals than the fit's
    x = np.stack([band_energies(signal(i % 2 == 1, 1.0, rng)) for i in range(40)])
    pred = sess.run(None, {"features": x})[0].argmax(1)
    assert (pred == np.arange(40) % 2).mean() >= 0.95


def test_a_task_defined_outside_the_agent_is_configured_run_and_alerted_upstream(tmp_path, noise_model,
                                                                                  vibration_task):
    model = fit_tiny_model(tmp_path / "vibration")
    broker = Broker(tmp_path / "broker")
    city = Collector(broker.port)
    rule = {"cooldown_s": 0, "classes": {"shaking": {"threshold": 0.8}}}
    cfg = write_agent_config(tmp_path / "agent", noise_model, broker.port, broker.port,
                             **{"tasks.vibration": {"model": str(model), "rule": rule}})
    running = InProcessAgent(cfg)
    try:
        running.wait_sensors()
        assert set(running.agent.taskset.named) >= {"noise", "vibration"}
        rng = np.random.default_rng(1)
        t0_ms = time.time() * 1000
        # 3 s calm, then 3 s shaking, from an accelerometer named acc0
        send_audio(broker.port, np.concatenate([signal(False, 3, rng), signal(True, 3, rng)]), sensor="acc0",
                   rate=RATE)
        alerts = city.wait_for(lambda c: c.payloads("/alert/vibration"), 30, "a vibration alert")
        assert alerts[0]["k"] == "vibration" and alerts[0]["c"] == "shaking" and alerts[0]["s"] == "acc0"
        assert alerts[0]["mn"] == "vibration-tiny"
        # the first shaking window ends 4 s into the signal: the three calm ones before it raised nothing
        assert alerts[0]["ts"] >= t0_ms + 3900
        wait_until(lambda: running.agent.health.tasks["vibration"].windows >= 6, 10, "six windows scored")
    finally:
        running.stop()
        city.close()
        broker.stop()


def test_commands_and_config_accept_a_registered_task_and_name_unknown_ones(vibration_task, tmp_path, noise_model):
    assert "vibration" in model_tasks()
    cmd = parse("abort", json.dumps({"id": "a1", "task": "vibration", "sha256": "0" * 64}).encode())
    assert cmd.task == "vibration"
    unregister("vibration")
    with pytest.raises(Refused, match="unknown task 'vibration'"):
        parse("abort", json.dumps({"id": "a1", "task": "vibration", "sha256": "0" * 64}).encode())

    from agent.config import load_config
    from agent.schema import ConfigError
    cfg = write_agent_config(tmp_path / "agent", noise_model, 1883, 1883,
                             **{"tasks.vibration": {"model": "m.onnx", "rule": {"classes": {"x": {"threshold": 0.5}}}}})
    with pytest.raises(ConfigError, match=r"tasks\.vibration: unknown task"):
        load_config(cfg)
