"""Tasks: a model is refused unless the device reproduces its front-end; windows become detections.

Noise runs the real noise model (agent_fixtures.noise_model); vehicles and congestion use
tiny linear ONNX models built here with onnx.helper, whose answers are known by design.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import soundfile as sf

from agent.backends.contract import load_contract
from agent.features.audio import LogMelParams

from agent.backends.contract import ContractError
from agent.config import ClassRule, LevelSection, Limits, OnnxBackendConfig, RuleConfig, TensorRTBackendConfig
from agent.features.detector import DetectorParams
from agent.features.image import ImageParams
from agent.features.resample import resample
from agent.payloads import AudioChunk, DetectorReading, ImageFrame
from agent.tasks import LevelReport, load_model
from agent.tasks.congestion import CongestionTask, CongestionTaskConfig
from agent.tasks.level import LevelTask
from agent.tasks.noise import NoiseTask, NoiseTaskConfig
from agent.tasks.vehicles import VehiclesTask, VehiclesTaskConfig
from agent_fixtures import linear_model

ONNX = OnnxBackendConfig(type="onnxruntime")
RULE = RuleConfig(cooldown_s=0, classes={"siren": ClassRule(threshold=0.5), "dog_bark": ClassRule(threshold=0.5)})


def _noise(model: Path, tmp_path: Path) -> NoiseTask:
    cfg = NoiseTaskConfig(model=model, rule=RULE, hop_seconds=1.0)
    return NoiseTask(cfg, load_model("noise", "logmel", model, ONNX, tmp_path), input_rate=16000)


def _edited_copy(model: Path, tmp_path: Path, edit, embedded: bool = True) -> Path:
    """The model with its manifest changed by ``edit``; without ``embedded``, also without the contract
    in its ONNX metadata (as artefacts built before it was written there), its sha256 updated."""
    import hashlib

    import onnx

    out = tmp_path / "edited"
    out.mkdir()
    shutil.copy(model, out / "model.onnx")
    manifest = json.loads((model.parent / "manifest.json").read_text())
    if not embedded:
        proto = onnx.load(str(out / "model.onnx"))
        del proto.metadata_props[:]
        onnx.save(proto, str(out / "model.onnx"))
        manifest["files"]["model.onnx"]["sha256"] = hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out / "model.onnx"


def test_noise_task_classifies_a_siren_clip_resampling_to_the_models_rate(noise_model, data_dir, tmp_path):
    task = _noise(noise_model, tmp_path)
    clip = sorted((data_dir / "urbansound8k").glob("fold*/106905-8-0-1.flac"))[0]
    x, sr = sf.read(clip, dtype="float32")
    x = resample(x, sr, 16000)
    detections = []
    for seq, i in enumerate(range(0, x.size - 1599, 1600)):  # 100 ms chunks, as a microphone sends them
        detections += task.handle(AudioChunk("mic0", 16000, 1, seq, 1000.0 + i / 16, x[i:i + 1600]))
    assert [d.cls for d in detections] == ["siren"]
    assert detections[0].window_ms == 4000 and detections[0].model.sha256 == task.model.info.sha256


def test_a_gap_in_sequence_numbers_restarts_the_window(noise_model, tmp_path):
    task = _noise(noise_model, tmp_path)
    quiet = np.zeros(16000 * 3, np.float32)
    task.handle(AudioChunk("mic0", 16000, 1, 0, 0.0, quiet))
    task.handle(AudioChunk("mic0", 16000, 1, 5, 5000.0, quiet))  # seq 1..4 lost
    win = task._sensors["mic0"][0]
    assert win._due == 16000  # 3 s into a fresh 4 s window, not 2 s into the next hop


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["frontend"].update(kind="mfcc"), "frontend.kind 'mfcc'"),
    (lambda m: m["frontend"].update(dither=0.1), "unknown log-mel parameter"),
    (lambda m: m["frontend"].update(n_mels=64), "does not accept the front-end's output"),
    (lambda m: m.update(task="vehicles"), "manifest task 'vehicles'"),
    (lambda m: m.update(labels=m["labels"] + ["hovercraft"]), "expected \\(1, 11\\)"),
])
def test_a_model_whose_frontend_the_agent_does_not_reproduce_is_refused(noise_model, tmp_path, edit, match):
    """Checked by what the model does, for artefacts without the contract in their ONNX metadata."""
    path = _edited_copy(noise_model, tmp_path, edit, embedded=False)
    with pytest.raises(ContractError, match=match):
        _noise(path, tmp_path)


@pytest.mark.parametrize("edit, key", [
    (lambda m: m["frontend"].update(n_mels=64), "frontend"),
    (lambda m: m["frontend"].update(hop_length=160), "frontend"),
    (lambda m: m.update(labels=m["labels"][::-1]), "labels"),  # same shapes: only the metadata can tell
    (lambda m: m.update(window_seconds=2.0), "window_seconds"),
])
def test_a_manifest_that_contradicts_the_models_own_metadata_is_refused(noise_model, tmp_path, edit, key):
    path = _edited_copy(noise_model, tmp_path, edit)
    with pytest.raises(ContractError, match=f"its ONNX metadata contradicts manifest.json \\({key}: "):
        _noise(path, tmp_path)


def test_rule_classes_must_be_model_labels(noise_model, tmp_path):
    cfg = NoiseTaskConfig(model=noise_model, rule=RuleConfig(classes={"ufo": ClassRule(threshold=0.5)}))
    with pytest.raises(ValueError, match="tasks.noise.rule.classes"):
        NoiseTask(cfg, load_model("noise", "logmel", noise_model, ONNX, tmp_path), 16000)


def test_tensorrt_falls_back_to_onnxruntime_with_the_reason(noise_model, tmp_path):
    loaded = load_model("noise", "logmel", noise_model, TensorRTBackendConfig(type="tensorrt"), tmp_path).backend
    assert loaded.name == "onnxruntime" and loaded.fallback_reason  # no TensorRT on this machine
    contract = load_contract(noise_model)
    frontend = LogMelParams.from_dict(contract.frontend)
    window = np.zeros((1, 1, frontend.n_mels, frontend.frames(int(contract.window_seconds * frontend.sample_rate))),
                      np.float32)
    assert loaded.run(window).shape == (1, 10)


def test_tensorrt_gets_the_file_the_manifest_names_for_it_and_refuses_an_altered_one(tmp_path):
    """The shipped vehicles artefact has a symmetric INT8 model for TensorRT beside the CPU one."""
    from agent.backends import tensorrt_onnx

    shipped = Path(__file__).resolve().parents[1] / "agent" / "models" / "vehicles"
    copy = Path(shutil.copytree(shipped, tmp_path / "vehicles"))
    assert tensorrt_onnx(copy / "model.onnx") == copy / "model_trt.onnx"
    (copy / "model_trt.onnx").write_bytes(b"not the file the manifest lists")
    with pytest.raises(ContractError, match="model_trt.onnx"):
        tensorrt_onnx(copy / "model.onnx")


# ---------------------------------------------------------------------------- vehicles

def _vehicles(tmp_path: Path) -> VehiclesTask:
    # logits: car = 5 x mean(blue), truck = 5 x mean(red) (after ImageNet normalisation)
    contract = {"task": "vehicles", "labels": ["car", "truck"], "frontend": ImageParams().to_dict()}
    path = linear_model(tmp_path / "veh", [3, 64, 64], np.array([[0, 5.0], [0, 0], [5.0, 0]]), np.zeros(2),
                        contract, reduce_axes=[2, 3])
    cfg = VehiclesTaskConfig(model=path, rule=RuleConfig(cooldown_s=0, classes={"truck": ClassRule(threshold=0.9)}))
    return VehiclesTask(cfg, load_model("vehicles", "image", path, ONNX, tmp_path))


def test_vehicles_task_alerts_on_the_configured_class_only(tmp_path):
    task = _vehicles(tmp_path)
    red = np.zeros((100, 100, 3), np.uint8)
    red[..., 0] = 255
    blue = red[..., ::-1].copy()
    assert task.handle(ImageFrame("cam0", 1000.0, blue)) == []
    (d,) = task.handle(ImageFrame("cam0", 2000.0, red))
    assert (d.kind, d.cls, d.sensor, d.ts_ms) == ("vehicles", "truck", "cam0", 2000)


def test_vehicles_model_with_another_image_size_is_refused(tmp_path):
    contract = {"task": "vehicles", "labels": ["car", "truck"], "frontend": ImageParams(size=(96, 96)).to_dict()}
    path = linear_model(tmp_path / "veh", [3 * 64 * 64], np.zeros((3 * 64 * 64, 2)), np.zeros(2), contract)
    cfg = VehiclesTaskConfig(model=path, rule=RuleConfig(classes={"truck": ClassRule(threshold=0.9)}))
    with pytest.raises(ContractError):
        VehiclesTask(cfg, load_model("vehicles", "image", path, ONNX, tmp_path))


# -------------------------------------------------------------------------- congestion

def _congestion(tmp_path: Path) -> CongestionTask:
    p = DetectorParams()
    w = np.zeros((p.n_features, 3))
    w[:p.history_steps, 0] = 40 / p.history_steps  # free grows with the mean scaled speed s
    w[:p.history_steps, 2] = -40 / p.history_steps  # congested falls with it
    contract = {"task": "congestion", "labels": ["free", "slowed", "congested"], "frontend": p.to_dict()}
    path = linear_model(tmp_path / "cong", [p.n_features], w, np.array([-30.0, 0.0, 22.0]), contract)
    cfg = CongestionTaskConfig(model=path, rule=RuleConfig(cooldown_s=0,
                                                           classes={"congested": ClassRule(threshold=0.6)}))
    return CongestionTask(cfg, load_model("congestion", "detector", path, ONNX, tmp_path), timezone="UTC")


T0 = int(dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)


def test_congestion_from_5_minute_steps(tmp_path):
    task = _congestion(tmp_path)
    speeds = [65.0] * 12 + [20.0] * 12
    out = []
    for i, s in enumerate(speeds):
        out += task.handle(DetectorReading("loop7", T0 + i * 300_000, s, 300, None))
    assert [d.cls for d in out] == ["congested"]
    assert out[0].sensor == "loop7" and out[0].metrics["speed"] == 20.0


def test_congestion_from_30_s_aggregates_and_a_missing_step_restarts_history(tmp_path):
    task = _congestion(tmp_path)
    out = []
    for step in range(30):
        for k in range(10):
            speed = None if step == 5 else 20.0
            out += task.handle(DetectorReading("loop7", T0 + step * 300_000 + k * 30_000, speed, 30, 5))
    # step 5 is missing: the first full gap-free history ends at step 17, alerted when step 18 starts
    assert len(out) == 1 and out[0].ts_ms == T0 + 18 * 300_000


# ------------------------------------------------------------------------------- level

def test_level_summary_per_period_and_day_night_limits(tmp_path):
    cfg = LevelSection(period_s=2, calibration_db=100, day=Limits(laeq_db=85), night=Limits(laeq_db=75))
    tone = (0.1 * np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)).astype(np.float32)  # -20 dBFS = 80 dB
    for start, period, alerts in ((T0 + 2 * 3600_000, "night", ["laeq_night"]), (T0 + 12 * 3600_000, "day", [])):
        task = LevelTask(cfg, 16000, "UTC")
        assert task.handle(AudioChunk("mic0", 16000, 1, 0, start, tone)) == []  # 1 s of a 2 s period
        report, *detections = task.handle(AudioChunk("mic0", 16000, 1, 1, start + 1000, tone))
        assert isinstance(report, LevelReport) and report.period == period and report.summary.seconds == 2.0
        assert abs(report.summary.laeq - 80.0) < 0.2
        assert [d.cls for d in detections] == alerts


def _profiled_congestion(tmp_path: Path, profile_file: Path) -> CongestionTask:
    """A linear model that forecasts congestion only when the detector's usual speed ahead is a jam."""
    p = DetectorParams(profile_ahead_steps=3)
    w = np.zeros((p.n_features, 3))
    ahead = p.history_steps + 3 + p.profile_span - 1  # the usual speed at the last step ahead
    w[ahead, 2] = -40.0  # usual 20 mph (0.29 scaled) -> congested; usual 62 mph (0.89) -> free
    w[-1, 2] = 30.0  # and only when the usual speeds are known
    contract = {"task": "congestion", "labels": ["free", "slowed", "congested"], "frontend": p.to_dict()}
    path = linear_model(tmp_path / "cong_profile", [p.n_features], w, np.array([0.0, 0.0, -4.0]), contract)
    cfg = CongestionTaskConfig(model=path, rule=RuleConfig(cooldown_s=0,
                                                           classes={"congested": ClassRule(threshold=0.6)}))
    return CongestionTask(cfg, load_model("congestion", "detector", path, ONNX, tmp_path), timezone="UTC",
                          profile_file=profile_file)


def _day_with_evening_jam(task, day: int) -> list:
    out = []
    for step in range(288):
        speed = 20.0 if 216 <= step < 228 else 62.0  # 18:00-19:00
        out += task.handle(DetectorReading("loop7", T0 + (day * 288 + step) * 300_000, speed, 300, None))
    return out


def test_usual_speeds_are_learnt_and_kept_across_a_restart(tmp_path):
    state = tmp_path / "state" / "detector_profiles.json"
    task = _profiled_congestion(tmp_path, state)
    assert _day_with_evening_jam(task, 0) == []  # day one: nothing usual known yet, no forecast from it
    alerts = _day_with_evening_jam(task, 1)
    # day two: the usual jam is forecast from the profile, before the readings show it
    assert alerts and alerts[0].ts_ms < T0 + (288 + 216) * 300_000
    assert state.is_file() and "loop7" in json.loads(state.read_text())["sensors"]

    restarted = _profiled_congestion(tmp_path, state)  # a new process: the profile comes from the file
    alerts = _day_with_evening_jam(restarted, 2)
    assert alerts and alerts[0].ts_ms < T0 + (2 * 288 + 216) * 300_000


def test_an_unreadable_profile_file_means_learning_again_not_a_crash(tmp_path, caplog):
    state = tmp_path / "detector_profiles.json"
    state.write_text("{not json")
    task = _profiled_congestion(tmp_path, state)
    assert "learning them again" in caplog.text
    assert _day_with_evening_jam(task, 0) == []
    assert json.loads(state.read_text())["sensors"]["loop7"]["days"]  # rewritten, valid


def test_profiles_are_written_hourly_however_many_detectors_report(tmp_path, monkeypatch):
    task = _profiled_congestion(tmp_path, tmp_path / "detector_profiles.json")
    saves = []
    monkeypatch.setattr(task, "save_profiles", lambda: saves.append(1))
    for step in range(288):  # one day, ten detectors
        for k in range(10):
            task.handle(DetectorReading(f"loop{k}", T0 + step * 300_000, 60.0, 300, None))
    assert len(saves) == 24  # the first reading, then once an hour: not once per detector or per reading


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids, max_size=4),
                     max_leaves=20)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.one_of(_json, st.fixed_dictionaries({"sensors": st.dictionaries(st.text(max_size=5), _json)}),
                      st.fixed_dictionaries({"sensors": st.fixed_dictionaries(
                          {"loop7": st.fixed_dictionaries({"days": st.dictionaries(st.text(max_size=4), _json)})})})))
def test_any_profile_file_content_starts_the_task_and_it_forecasts(tmp_path, junk):
    state = tmp_path / "detector_profiles.json"
    state.write_text(json.dumps(junk))
    task = _profiled_congestion(tmp_path, state)  # loads what it can use, or logs and starts afresh
    out = []
    for step in range(13):
        out += task.handle(DetectorReading("loop7", T0 + step * 300_000, 60.0, 300, None))
    assert json.loads(state.read_text())["sensors"]["loop7"]["days"]  # and what it saves is valid again
