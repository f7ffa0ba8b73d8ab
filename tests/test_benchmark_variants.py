"""Where the benchmark suite finds the stages of a shipped model (benchmarks/variants.py)."""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from compression.export import stamp_contract

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _variants(monkeypatch, root: Path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    variants = importlib.import_module("variants")
    monkeypatch.setattr(variants, "REPO", root)
    monkeypatch.setattr(variants, "MODELS", root / "agent" / "models")
    variants.run_folder.cache_clear()
    return variants


def _model(path: Path, scale: float) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    w = helper.make_tensor("w", TensorProto.FLOAT, [1], [scale])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_a_runs_work_folder_is_found_by_the_stage_it_stamped_and_shipped(tmp_path, monkeypatch):
    """A shipped INT8 model's FP32 stage lives only in the work folder of the run that made it, where the
    shipped stage lies unstamped: stamped with the shipped model's contract it must give the shipped bytes.
    A work folder of another run (another model under the same name) is not taken for it."""
    contract = {"task": "vehicles", "frontend": {"kind": "image", "size": 100}}
    ours = _model(tmp_path / "runs" / "ours" / "int8_cpu.onnx", 2.0)
    _model(tmp_path / "runs" / "ours" / "pruned_fp32.onnx", 2.0)
    _model(tmp_path / "runs" / "other" / "int8_cpu.onnx", 3.0)
    shipped = tmp_path / "agent" / "models" / "vehicles"
    shipped.mkdir(parents=True)
    stamp_contract(ours, contract, shipped / "model.onnx")
    digest = hashlib.sha256((shipped / "model.onnx").read_bytes()).hexdigest()
    (shipped / "manifest.json").write_text(json.dumps({"files": {"model.onnx": {"sha256": digest}},
                                                       "targets": {"onnxruntime": {"file": "model.onnx"}}}))
    (shipped / "report.json").write_text(json.dumps({"shipped": {"cpu": "int8_cpu"}}))
    variants = _variants(monkeypatch, tmp_path)
    assert digest != hashlib.sha256(ours.read_bytes()).hexdigest()  # the work file alone is not the shipped one
    assert variants.run_folder("vehicles") == tmp_path / "runs" / "ours"

    (tmp_path / "runs" / "ours" / "int8_cpu.onnx").unlink()
    variants.run_folder.cache_clear()
    assert variants.run_folder("vehicles") is None
