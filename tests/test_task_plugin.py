"""A fourth task added without touching either half's core: everything about it lives in this file.

"vibration" reads a pole-mounted accelerometer that streams like a microphone (the audio sensor
format, at the device's audio rate) and computes its own front-end (band energies of one-second
windows). Its compression task (``compression.tasks.register``) has a recipe schema (the shared recipe
base plus its own fields), a tiny chain (a small MLP teacher and a linear student distilled from it with
the shared KD loss, on generated signals) that hands its FP32 model to the shared tail (INT8 per target,
the choice, the gate, report and manifest), and an evaluator, so ``roadside compress`` and ``roadside
eval`` run it. Its
agent task (``agent.tasks.registry.register``) loads that artefact, and alerts ``shaking``
upstream through a real broker: the config's ``tasks:`` section, the ``model`` command and the
task set accept it, and nothing in agent/ or compression/ names it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from pydantic import Field

from agent.config import ModelTaskConfig
from agent.control.commands import Refused, parse
from agent.rules import Rule, softmax
from agent.tasks import Detection, LoadedModel, dry_run
from agent.tasks.registry import TaskSpec, model_tasks, register, unregister
from agent_fixtures import Broker, Collector, write_agent_config
from compression.recipe_base import BudgetBase, GateBase, RecipeBase
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


class VibrationRecipe(RecipeBase):
    task: Literal["vibration"] = "vibration"
    windows: int = Field(200, ge=20, description="generated training windows, half of them shaking")
    epochs: int = Field(200, ge=1)
    budget: BudgetBase = BudgetBase(max_params=100)
    gate: GateBase = GateBase(max_drop=5.0)


def generated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Band energies of ``n`` generated windows, alternately calm and shaking, and their labels."""
    rng = np.random.default_rng(seed)
    return np.stack([band_energies(signal(i % 2 == 1, 1.0, rng)) for i in range(n)]), np.arange(n) % 2


def _fit(model, x, y, epochs: int, teacher=None):
    """Adam on cross-entropy, or on the shared KD loss against ``teacher``'s logits."""
    import torch

    from compression.distillation import distillation_loss

    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    soft = None if teacher is None else teacher(x).detach()
    for _ in range(epochs):
        opt.zero_grad()
        logits = model(x)
        hard = torch.nn.functional.cross_entropy(logits, y)
        (hard if soft is None else distillation_loss(logits, soft, hard, 2.0, 0.5)).backward()
        opt.step()
    return model.eval()


def run_vibration(recipe: VibrationRecipe, recipe_path, data=None, out=None, work=None) -> dict:
    """What only this task has (generated windows, an MLP teacher, a linear student distilled from it);
    from the FP32 ONNX on, the shared tail, as for every task."""
    import torch

    from compression import prune
    from compression.chain import artefacts
    from compression.chain.stages import Stages
    from compression.chain.tail import Tail, finish
    from compression.evaluate import torch_scorer
    from compression.export import export_onnx
    from compression.latency import _median_ms
    from compression.manifest import sha256_json

    torch.manual_seed(recipe.seed)
    out, work = Path(out), Path(work)
    for d in (out, work):
        d.mkdir(parents=True, exist_ok=True)
    x, y = (torch.from_numpy(a) for a in generated(recipe.windows, recipe.seed))
    norm = torch.nn.BatchNorm1d(4, affine=False).eval()  # standardised inside the model: it takes raw band energies
    norm.running_mean, norm.running_var = x.mean(0), x.var(0)
    teacher = _fit(torch.nn.Sequential(norm, torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)), x, y,
                   recipe.epochs)
    student = _fit(torch.nn.Sequential(norm, torch.nn.Linear(4, 2)), x, y, recipe.epochs, teacher)
    contract = {"task": "vibration", "labels": LABELS, "frontend": {"kind": "band_energy", "rate": RATE},
                "window_seconds": 1.0, "name": recipe.name, "version": recipe.version}
    one = band_energies(signal(True, 1.0, np.random.default_rng(0)))[None]

    def latency(path: Path, frontend: dict) -> dict:
        from agent.backends.onnx import OnnxBackend

        backend = OnnxBackend(path, threads=1)
        model = _median_ms(lambda: backend(one), 20)
        return {"frontend_ms": 0.0, "model_ms": model, "total_ms": model}

    stages = Stages("per window", evaluate=lambda s: evaluate_vibration(s, None), keep=("n", "accuracy", "macro_f1"),
                    cost=lambda macs: {"macs_per_window": macs}, latency=latency)
    for name, model in (("teacher", teacher), ("student", student)):
        path = export_onnx(model, x[:1], work / f"{name}.onnx", contract)
        stages.score(name, torch_scorer(model, "vibration", LABELS, contract["frontend"], 1.0), path,
                     *reversed(prune.count(model, x[:1])))

    class VibrationTail(Tail):
        fp32_stage = "student"

    tail = VibrationTail(recipe, stages, contract, work, x[:64].numpy())
    with torch.no_grad():
        parity = {"clips": 16, "max_abs_logit_diff": float((student(x[:16]) - torch.from_numpy(
            tail.onnx_scorer(work / "student.onnx").logits(x[:16].numpy()))).abs().max())}
    outcome = finish(tail, work / "student.onnx", parity)
    return artefacts.write_artefacts(tail, outcome, out, parity=parity, history=[], seconds=0.0, inputs={},
                                     data_lists={"train": sha256_json([recipe.seed, recipe.windows])},
                                     licence="generated signals", plots=lambda results, shipped: [])


def evaluate_vibration(scorer, data: Path, include_training: bool = False) -> dict:
    from compression.metrics import classification_report

    x, y = generated(60, seed=12345)  # never the recipe's seed: held-out windows
    logits = scorer.logits(x)
    return {**classification_report(y, logits.argmax(1), scorer.labels), "logits": logits}


def vibration_data_root(data) -> Path:
    return Path(data or ".")  # generated: no folder to read


@pytest.fixture
def compressed_vibration(tmp_path):
    """``roadside compress`` of a vibration recipe: the compression task registered from this file."""
    from compression.pipeline import run
    from compression.tasks import CompressionTask, register as register_compression, unregister as drop

    here = __name__
    register_compression(CompressionTask("vibration", recipe=f"{here}:VibrationRecipe", chain=f"{here}:run_vibration",
                                         evaluate=f"{here}:evaluate_vibration", data_root=f"{here}:vibration_data_root"))
    recipe = tmp_path / "vibration.yaml"
    recipe.write_text("task: vibration\nname: vibration-tiny\nversion: 0.1.0\nseed: 3\n")
    try:
        run(recipe, out=tmp_path / "artefact", work=tmp_path / "work", device="cpu")
        yield tmp_path / "artefact" / "model.onnx"
    finally:
        drop("vibration")


@pytest.fixture
def vibration_task():
    register(TaskSpec("vibration", VibrationTask.consumes, VibrationConfig, frontend=VibrationTask.frontend_kind,
                      factory=lambda cfg, model, ctx: VibrationTask(cfg, model, ctx.sample_rate)))
    yield
    unregister("vibration")


def test_compress_and_eval_run_a_task_registered_outside_compression(compressed_vibration):
    from compression.evaluate import evaluate
    from compression.manifest import verify_files

    manifest = json.loads((compressed_vibration.parent / "manifest.json").read_text())
    assert manifest["task"] == "vibration" and manifest["recipe"]["seed"] == 3
    assert verify_files(compressed_vibration.parent / "manifest.json") == []
    # the shared tail ran for it: INT8 candidates for both targets, scored like every stage, each target's choice
    # and why, the gate's verdict on what ships
    report = json.loads((compressed_vibration.parent / "report.json").read_text())
    assert list(report["stages"]) == ["teacher", "student", "int8_cpu", "int8_tensorrt"]
    assert set(manifest["targets"]) == {"onnxruntime", "tensorrt"} and all(t["why"] for t in manifest["targets"].values())
    assert report["gate"]["passed"] and report["stages"]["student"]["params"] < report["stages"]["teacher"]["params"]

    result = evaluate(compressed_vibration, None)

    assert result["task"] == "vibration" and result["n"] == 60
    assert result["accuracy"] >= 0.95  # shaking and calm are far apart in band energy


def test_the_compressed_task_is_configured_run_and_alerted_upstream_by_the_agent(tmp_path, noise_model,
                                                                                   vibration_task, compressed_vibration):
    model = compressed_vibration
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
        assert alerts[0]["mn"] == "vibration-tiny" and alerts[0]["mv"] == "0.1.0"
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
