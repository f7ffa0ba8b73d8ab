"""Noise models end to end per second of audio, one thread: teacher vs the shipped student.

The teacher path is what a device would run without compression: 16 -> 32 kHz
resampling, the 128-mel front-end and the FP32 teacher in onnxruntime. The student
path is the shipped artefact: its 16 kHz front-end and model. Same window, same clip.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.backends.contract import load_contract
from agent.backends.onnx import OnnxBackend
from agent.features.audio import LogMelParams, log_mel
from agent.features.resample import resample

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "agent" / "models" / "noise"
TEACHER = REPO / "compression" / "teachers" / "weights" / "noise-mn04" / "teacher.pt"
GROUP = "noise: front-end + model per second of audio (1 thread)"


@pytest.fixture(scope="module")
def window(data_dir) -> np.ndarray:
    import soundfile as sf

    clip = sorted((data_dir / "urbansound8k" / "fold2").glob("*-8-*.flac"))[0]  # a real siren
    x, sr = sf.read(str(clip), dtype="float32")
    assert sr == 16000
    return x


@pytest.fixture(scope="module")
def teacher_onnx(tmp_path_factory) -> tuple[Path, dict]:
    torch = pytest.importorskip("torch")
    from compression.export import export_onnx
    from compression.teachers.noise import load_checkpoint

    model, cfg = load_checkpoint(TEACHER)
    p = LogMelParams.from_dict(cfg["frontend"])
    path = export_onnx(model, torch.zeros(1, 1, p.n_mels, p.frames(int(cfg["window_seconds"] * p.sample_rate))),
                       tmp_path_factory.mktemp("teacher") / "teacher.onnx", {"task": "noise"})
    return path, cfg["frontend"]


def _run(benchmark, onnx_path: Path, frontend: dict, wave: np.ndarray, name_params: int, baseline=False):
    params = LogMelParams.from_dict(frontend)
    backend = OnnxBackend(onnx_path, threads=1)

    def infer():
        x = wave if params.sample_rate == 16000 else resample(wave, 16000, params.sample_rate)
        return backend(log_mel(x, params)[None, None])

    benchmark.extra_info.update(compare=GROUP, per=len(wave) / 16000, unit="s of audio", params=name_params,
                                baseline=baseline)
    out = benchmark(infer)
    assert out.shape == (1, 10)


def test_teacher_fp32(benchmark, teacher_onnx, window):
    import torch

    from compression.teachers.noise import load_checkpoint

    params = sum(p.numel() for p in load_checkpoint(TEACHER)[0].parameters())
    _run(benchmark, teacher_onnx[0], teacher_onnx[1], window, params, baseline=True)


@pytest.mark.parametrize("name", ["model.onnx", "model_trt.onnx"])
def test_shipped_student(benchmark, window, name):
    path = SHIPPED / name
    if not path.is_file():
        pytest.skip(f"{path} not shipped")
    contract = load_contract(path)
    report = json.loads((SHIPPED / "report.json").read_text())
    stage = "int8_tensorrt" if name == "model_trt.onnx" else report["shipped"]["cpu"]
    benchmark.name = f"student {stage} ({name})"
    _run(benchmark, path, contract.frontend, window, report["stages"][stage]["params"])
