"""``roadside compress`` for vehicles: a smoke run of the whole chain on a handful of real crops, its gate,
and ``roadside eval`` on a folder of class sub-folders.

The full run is a command (README); here the networks are tiny and every stage runs one
epoch on 8 crops per class, so the numbers are not the product's, but every stage must be
present, measured and recorded, and the gate must refuse what it should.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from agent.backends.contract import load_contract
from agent.cli import main
from compression.manifest import verify_files
from compression.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "compression" / "recipes" / "vehicles.yaml"
TINY = {"data.max_train_per_class": 8, "data.max_val_per_class": 4, "data.calibration_images": 8,
        "teacher.widths": "[8,16]", "teacher.blocks": "[1,1]", "teacher.stem": 8, "teacher.epochs": 1,
        "teacher.batch_size": 16, "student.widths": "[16,32]", "student.blocks": "[1,1]", "student.stem": 8,
        "distil.epochs": 1, "distil.batch_size": 16, "prune.steps": 1, "prune.epochs_per_step": 1,
        "prune.target_params": 10000, "prune.max_layer_ratio": 0.5}


def _compress(data_dir: Path, out: Path, work: Path, split: Path, **sets) -> int:
    args = ["compress", "--recipe", str(RECIPE), "--data", str(data_dir), "--out", str(out), "--work", str(work)]
    for k, v in {**TINY, "data.split_file": str(split), **sets}.items():
        args += ["--set", f"{k}={v}"]
    return main(args)


@pytest.fixture(scope="module")
def smoke(data_dir, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("vehicles")
    paths = {"out": tmp / "out", "work": tmp / "work", "split": tmp / "split.json"}
    # a one-epoch tiny student is poor: this run checks the plumbing, not the accuracy
    assert _compress(data_dir, paths["out"], paths["work"], paths["split"],
                     **{"gate.max_drop": 100, "gate.min_accuracy": "null"}) == 0
    return paths


def _report(smoke) -> dict:
    return json.loads((smoke["out"] / "report.json").read_text())


def test_every_stage_is_scored_on_the_same_held_out_crops(smoke):
    report = _report(smoke)
    stages = report["stages"]
    assert list(stages) == ["teacher", "student", "pruned", "int8_cpu", "int8_tensorrt"]
    for name, s in stages.items():
        assert s["n"] == 6 * 4 and np.sum(s["confusion"]) == 24, name
        assert {"accuracy", "macro_f1", "per_class", "params", "macs_per_image"} <= set(s), name
        assert s["latency"]["total_ms"] > s["latency"]["model_ms"] > 0, name
    assert stages["pruned"]["params"] <= 10_000 < stages["student"]["params"]
    assert stages["int8_cpu"]["int8_weight_bytes"] > 0 and stages["pruned"]["int8_weight_bytes"] == 0
    assert 0.0 <= stages["int8_cpu"]["top1_agreement_with_fp32"] <= 1.0
    assert [h["run"] for h in report["history"]] == ["distil", "prune1"]
    assert len(report["teacher_history"]) == 1 and "val_accuracy" in report["teacher_history"][0]


def test_pruned_widths_are_multiples_of_eight(smoke):
    model = onnx.load(str(smoke["work"] / "pruned_fp32.onnx"))
    convs = [t for t in model.graph.initializer if len(t.dims) == 4]
    assert convs and all(t.dims[0] % 8 == 0 for t in convs)
    assert {w % 8 for step in _report(smoke)["prune_steps"] for w in step["widths"].values()} == {0}


def test_onnx_export_matches_pytorch_on_real_crops(smoke, data_dir):
    import torch

    from agent.backends.onnx import OnnxBackend
    from agent.features.image import ImageParams
    from compression.tasks.vehicles import dataset as vehicles

    items = vehicles.load_split(smoke["split"], vehicles.find_root(data_dir)).val[::50]
    x, _, _, _ = vehicles.load_images(items, ImageParams(), progress=False)
    model = torch.load(smoke["work"] / "pruned.pt", weights_only=False).eval()
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    got = OnnxBackend(smoke["work"] / "pruned_fp32.onnx")(x)
    assert len(x) == 16 and np.abs(ref - got).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    assert _report(smoke)["onnx_parity"]["clips"] == 16


def test_int8_for_tensorrt_is_symmetric(smoke):
    model = onnx.load(str(smoke["out"] / "model_trt.onnx"))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    # activations and weights int8 (biases int32), every zero point 0: what TensorRT's explicit quantisation takes
    assert {z.dtype for z in zero_points} == {np.dtype(np.int8), np.dtype(np.int32)}
    assert not any(z.any() for z in zero_points)


def test_shipped_folder_is_a_valid_contract(smoke):
    out = smoke["out"]
    assert verify_files(out / "manifest.json") == []
    contract = load_contract(out / "model.onnx")
    assert contract.task == "vehicles" and contract.frontend == load_recipe(RECIPE).student.frontend
    assert contract.labels == ("bike", "car", "juggernaut", "minibus", "pickup", "truck")
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["data_lists"]) == {"split", "train", "val", "calibration"}
    assert {"model.onnx", "report.json", "confusion.png", "accuracy_latency.png"} <= set(manifest["files"])
    # INT8 is calibrated on recorded training crops, never on held-out ones
    split = json.loads(smoke["split"].read_text())
    calib = {p for p, _ in _report(smoke)["calibration_images"]}
    assert len(calib) == 8 and calib <= {p for p, _ in split["train"]} and not calib & {p for p, _ in split["val"]}


def test_gate_trips_and_still_writes_the_report(smoke, data_dir, tmp_path, capsys):
    """Over budget and under the accuracy floor: exit 3, every reason named, every number kept; the
    cached teacher and distilled student (same recipe, data and teacher) are reused, not retrained."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("teacher.pt", "student.pt"):  # each with its lineage record: the record is the cache key
        shutil.copy2(smoke["work"] / name, work / name)
        shutil.copy2(smoke["work"] / f"{name}.lineage.json", work / f"{name}.lineage.json")
    before = [(work / name).stat().st_mtime_ns for name in ("teacher.pt", "student.pt")]
    rc = _compress(data_dir, tmp_path / "out", work, smoke["split"],
                   **{"prune.enabled": "false", "quantise.enabled": "false", "budget.max_params": 1000,
                      "gate.min_accuracy": 99.5})
    assert rc == 3
    err = capsys.readouterr().err
    assert "did not pass the gate" in err and "CPU model (pruned)" in err
    assert "parameters > budget.max_params 1000" in err and "< gate.min_accuracy 99.5" in err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["gate"]["passed"] is False and list(report["stages"]) == ["teacher", "student", "pruned"]
    assert [(work / name).stat().st_mtime_ns for name in ("teacher.pt", "student.pt")] == before
    assert report["teacher_history"] == _report(smoke)["teacher_history"]
    assert report["history"] == _report(smoke)["history"][:1]  # the smoke run's distillation, no pruning
    assert report["stages"]["student"]["accuracy"] == _report(smoke)["stages"]["student"]["accuracy"]


def test_a_teacher_trained_on_another_split_is_refused(smoke, data_dir, tmp_path, capsys):
    rc = _compress(data_dir, tmp_path / "out", tmp_path / "work", tmp_path / "other_split.json",
                   **{"data.val_fraction": 0.25, "teacher.checkpoint": str(smoke["work"] / "teacher.pt")})
    assert rc == 2
    assert "trained on another split" in capsys.readouterr().err


def test_eval_cli_scores_a_folder_of_class_subfolders(smoke, data_dir, tmp_path, capsys):
    from agent.backends.onnx import OnnxBackend
    from agent.features.image import ImageParams, load_image

    src = data_dir / "vehicles"
    crops = tmp_path / "crops"
    for name in ("car", "truck"):
        (crops / name).mkdir(parents=True)
        for f in sorted((src / name).iterdir())[:3]:
            shutil.copy(f, crops / name / f.name)
    (crops / "truck" / "broken.jpg").write_bytes(b"not a jpeg")
    model = smoke["out"] / "model.onnx"
    assert main(["eval", "--model", str(model), "--data", str(crops), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout
    assert result["task"] == "vehicles" and result["n"] == 6 and result["skipped"] == 1
    assert result["model_sha256"] == load_contract(model).sha256
    assert [sum(row) for row in result["confusion"]] == [0, 3, 0, 0, 0, 3]
    # the same numbers as the device's own front-end and backend give, crop by crop
    files = sorted((crops / "car").iterdir()) + sorted(f for f in (crops / "truck").iterdir() if f.name != "broken.jpg")
    pred = OnnxBackend(model)(np.stack([load_image(f, ImageParams()) for f in files])).argmax(1)
    assert result["accuracy"] == pytest.approx(np.mean(pred == np.array([1, 1, 1, 5, 5, 5])))
    assert set(result) >= {"macro_f1", "per_class", "confusion"}
    # the teacher checkpoint is scored by the same command
    assert main(["eval", "--model", str(smoke["work"] / "teacher.pt"), "--data", str(crops), "--json"]) == 0
    teacher = json.loads(capsys.readouterr().out)
    assert (teacher["task"], teacher["model_kind"], teacher["n"]) == ("vehicles", "torch", 6)


def test_eval_cli_names_a_folder_that_is_not_a_label(smoke, tmp_path, capsys):
    (tmp_path / "crops" / "car").mkdir(parents=True)
    (tmp_path / "crops" / "hovercraft").mkdir()
    assert main(["eval", "--model", str(smoke["out"] / "model.onnx"), "--data", str(tmp_path / "crops")]) == 2
    assert "['hovercraft'] are not labels of the model" in capsys.readouterr().err


def test_recipe_errors_name_the_key(tmp_path):
    from agent.schema import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.read_text().replace("  stem: 24", "  stem: 0").replace("size: [64, 64]", "size: [64]")
                   .replace("max_drop: 1.5", "max_dorp: 1.5"))
    with pytest.raises(ConfigError) as e:
        load_recipe(bad)
    text = str(e.value)
    assert "teacher.stem" in text and "student.frontend" in text and "size" in text and "gate.max_dorp" in text
    with pytest.raises(ConfigError, match="distil.views_per_image"):
        load_recipe(RECIPE, **{"distil.views_per_image": 0})
