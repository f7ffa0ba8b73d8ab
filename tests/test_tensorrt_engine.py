"""TensorRT engines: named by (ONNX sha256, TensorRT version, GPU), refused when built for another.

The naming and refusal logic runs everywhere; building and running an engine needs
TensorRT and a GPU (a Jetson with JetPack) and is skipped where ``tensorrt`` is missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.backends import BackendUnavailable
from agent.backends.tensorrt import EngineKey, EngineMismatch, check_sidecar, write_sidecar

REPO = Path(__file__).resolve().parents[1]
KEY = EngineKey("ab" * 32, "10.3.0", "8.7", "int8+fp16")


@pytest.fixture
def engine(tmp_path) -> Path:
    path = tmp_path / KEY.filename
    path.write_bytes(b"serialized engine bytes")
    write_sidecar(path, KEY)
    return path


def test_engine_name_carries_model_tensorrt_and_gpu():
    assert KEY.filename == "abababababababab_trt10.3.0_sm87_int8-fp16.engine"
    assert EngineKey("ab" * 32, "10.3.0", "8.7", "int8", dla_core=0).filename.endswith("_int8_dla0.engine")


def test_matching_engine_is_accepted(engine):
    check_sidecar(engine, KEY)


@pytest.mark.parametrize("field, value", [("trt_version", "8.6.2"), ("compute_capability", "7.2"),
                                          ("onnx_sha256", "cd" * 32), ("precision", "fp16")])
def test_engine_for_another_target_is_refused(engine, field, value):
    from dataclasses import replace

    with pytest.raises(EngineMismatch, match=field):
        check_sidecar(engine, replace(KEY, **{field: value}))


def test_damaged_or_orphan_engine_is_refused(engine):
    engine.write_bytes(b"serialized engine bytes, truncated?")
    with pytest.raises(EngineMismatch, match="damaged"):
        check_sidecar(engine, KEY)
    engine.with_suffix(".json").unlink()
    with pytest.raises(EngineMismatch, match="origin is unknown"):
        check_sidecar(engine, KEY)


def test_without_tensorrt_the_backend_is_unavailable_not_broken(tmp_path):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here; the GPU tests below cover it")
    except ImportError:
        pass
    from agent.backends.tensorrt import TensorRTBackend

    with pytest.raises(BackendUnavailable, match="tensorrt is not installed"):
        TensorRTBackend(tmp_path / "model.onnx", tmp_path / "engines")


SHIPPED = sorted(p.parent.name for p in (REPO / "agent" / "models").glob("*/manifest.json"))


def _shipped(task: str) -> Path:
    """The model the agent runs for ``task`` (the manifest's onnxruntime target)."""
    manifest = json.loads((REPO / "agent" / "models" / task / "manifest.json").read_text())
    return REPO / "agent" / "models" / task / manifest["targets"]["onnxruntime"]["file"]


@pytest.mark.parametrize("task", SHIPPED)
def test_the_tensorrt_target_of_every_shipped_model_ships(task):
    """What ``targets.tensorrt.file`` names is in the folder and listed, with its sha256, in the manifest."""
    from agent.backends import tensorrt_onnx

    trt_onnx = tensorrt_onnx(_shipped(task))  # a missing, unlisted or altered file is refused here
    assert trt_onnx.is_file() and trt_onnx.parent == _shipped(task).parent


@pytest.mark.parametrize("task", SHIPPED)
def test_engine_matches_onnxruntime_on_the_gpu(task, tmp_path):
    """On a Jetson: the model the manifest names for TensorRT agrees with onnxruntime's top-1 on it."""
    pytest.importorskip("tensorrt")
    from agent.backends import tensorrt_onnx
    from agent.backends.onnx import OnnxBackend
    from agent.backends.tensorrt import TensorRTBackend

    model = tensorrt_onnx(_shipped(task))
    reference = OnnxBackend(model)
    shape = [d if isinstance(d, int) else 4 for d in reference.session.get_inputs()[0].shape]  # batch of 4
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    trt_backend = TensorRTBackend(model, tmp_path / "engines")
    assert (trt_backend(x).argmax(1) == reference(x).argmax(1)).mean() >= 0.75
    # second start: the cached engine is reused, not rebuilt
    assert TensorRTBackend(model, tmp_path / "engines").engine_path == trt_backend.engine_path
