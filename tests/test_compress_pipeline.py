"""``roadside compress``: a smoke run of the whole chain on a handful of real clips, and its gate.

The full run is a command (README); here every stage runs for one epoch on a few
clips, so the numbers are not the product's, but every stage must be present,
measured and recorded, and the gate must refuse what it should.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.backends.contract import load_contract
from agent.cli import main
from compression.manifest import verify_files
from compression.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "compression" / "recipes" / "noise_128k.yaml"  # the recipe that runs every stage
SMOKE = ["--set", "data.max_clips=24", "--set", "distil.epochs=1", "--set", "prune.steps=1",
         "--set", "prune.epochs_per_step=1", "--set", "prune.final_epochs=1", "--set", "data.calibration_clips=8",
         "--set", "distil.batch_size=12"]
SHIPPED = REPO / "agent" / "models" / "noise"


# max_drop 100: a one-epoch student is poor; this run checks the plumbing, not the accuracy.
# Its least-squares re-fits on 8 clips give logits of ~20 where float32 rounding reaches a few
# 1e-4: the absolute parity bound is the full run's (in its gate), the smoke run checks the relative one.
LENIENT = ["--set", "gate.max_drop=100", "--set", "gate.max_onnx_logit_diff=0.01"]


@pytest.fixture(scope="module")
def smoke_run(data_dir, tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("shipped")
    work = tmp_path_factory.mktemp("work")
    rc = main(["compress", "--recipe", str(RECIPE), "--data", str(data_dir), "--out", str(out),
               "--work", str(work), *LENIENT, *SMOKE])
    assert rc == 0
    return out, work


@pytest.fixture(scope="module")
def smoke(smoke_run) -> Path:
    return smoke_run[0]


def test_a_rerun_reuses_the_distilled_student_and_ships_the_same_bytes(smoke_run, data_dir, tmp_path):
    """The distilled student's lineage record (settings, teacher, training clips) is its cache key: a re-run
    with other pruning settings starts from it, restoring the RNG and the teacher's cached outputs, so the
    same settings ship the same bytes as the run that trained it."""
    out, work = smoke_run
    record = json.loads((work / "student.pt.lineage.json").read_text())
    assert record["stage"] == "distil" and set(record["inputs"]) == {"teacher", "train"}
    mtime = (work / "student.pt").stat().st_mtime_ns
    again = tmp_path / "again"
    assert main(["compress", "--recipe", str(RECIPE), "--data", str(data_dir), "--out", str(again),
                 "--work", str(work), *LENIENT, *SMOKE]) == 0
    assert (work / "student.pt").stat().st_mtime_ns == mtime
    assert (again / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    first, second = (json.loads((d / "report.json").read_text()) for d in (out, again))
    assert second["teacher_forward_clips"] == first["teacher_forward_clips"]  # the cache came back with it
    assert json.loads((work / "pruned.pt.lineage.json").read_text())["inputs"]["student"] == record["output"]["sha256"]


def test_every_stage_is_scored_with_the_same_numbers(smoke):
    report = json.loads((smoke / "report.json").read_text())
    stages = report["stages"]
    assert list(stages) == ["teacher", "student", "pruned", "int8_cpu", "int8_tensorrt"]
    for name, s in stages.items():
        assert s["n"] == 24, name
        assert {"accuracy", "macro_f1", "params", "macs_per_second", "latency"} <= set(s), name
        assert s["latency"]["total_ms"] > s["latency"]["model_ms"] > 0, name
        # the rollout controller's shadow gates: top-1 agreement with the teacher, mean top-1 probability.
        # Two models whose accuracies differ by d disagree on at least a fraction d of the clips.
        assert abs(s["accuracy"] - stages["teacher"]["accuracy"]) <= 1.0 - s["agreement"] + 1e-9, name
        assert isinstance(s["confidence"], float), name
    assert stages["teacher"]["agreement"] == 1.0
    assert stages["student"]["agreement"] < 1.0  # a student that copied its teacher exactly would be no student
    assert stages["pruned"]["params"] <= load_recipe(RECIPE).budget.max_params < stages["student"]["params"]
    assert stages["int8_cpu"]["int8_weight_bytes"] > 0
    # INT8 and FP32 (pruned) predict the same class on most clips (a broken quantiser lands near chance), and on
    # no more than their confusion matrices allow: per true class, the overlap of their predicted-class counts
    int8, fp32 = stages["int8_cpu"], stages["pruned"]
    overlap = np.minimum(np.array(int8["confusion"]), np.array(fp32["confusion"])).sum() / int8["n"]
    assert 0.5 <= int8["top1_agreement_with_fp32"] <= overlap + 1e-9, (int8["top1_agreement_with_fp32"], overlap)


def test_pruned_widths_are_multiples_of_eight(smoke):
    import onnx

    model = onnx.load(str(smoke / "model.onnx"))
    convs = [t for t in model.graph.initializer if len(t.dims) == 4]
    # every conv except the stem's (1 input channel) and depthwise inputs has widths in multiples of 8
    assert convs and all(t.dims[0] % 8 == 0 for t in convs)


def test_onnx_export_matches_pytorch(smoke):
    parity = json.loads((smoke / "report.json").read_text())["onnx_parity"]
    assert parity["clips"] == 16 and parity["max_abs_logit"] > 1
    assert parity["relative"] <= 1e-4, parity


def test_gate_refuses_an_export_that_does_not_match_pytorch():
    from compression.chain import gate

    recipe = load_recipe(RECIPE)
    assert gate.check_parity(recipe, {"clips": 16, "max_abs_logit_diff": 9e-6}) == []
    assert "ONNX export differs" in gate.check_parity(recipe, {"clips": 16, "max_abs_logit_diff": 3e-4})[0]


def test_shipped_folder_is_a_valid_contract(smoke):
    assert verify_files(smoke / "manifest.json") == []
    contract = load_contract(smoke / "model.onnx")
    recipe = load_recipe(RECIPE)
    assert contract.frontend == recipe.student.frontend
    assert contract.task == "noise" and len(contract.labels) == 10 and contract.window_seconds == 4.0
    manifest = json.loads((smoke / "manifest.json").read_text())
    assert {"train", "val", "calibration", "tuning"} == set(manifest["data_lists"])
    for stage, metrics in manifest["metrics"].items():
        assert {"accuracy", "agreement", "confidence"} <= set(metrics), stage
    assert all(t["why"] for t in manifest["targets"].values())
    assert {"model.onnx", "report.json", "confusion.png", "accuracy_latency.png"} <= set(manifest["files"])
    # each target names the file it runs; INT8 for TensorRT ships only when it passed the gate
    trt = manifest["targets"]["tensorrt"]
    assert (trt["file"] == "model_trt.onnx") == ("model_trt.onnx" in manifest["files"])
    assert trt["precision"] in ("int8", "fp16") and manifest["targets"]["onnxruntime"]["file"] == "model.onnx"


def test_eval_cli_scores_only_the_folds_the_model_never_trained_on(smoke, data_dir, capsys):
    """The manifest records the folds the student and its teacher learnt from; eval leaves them out
    and says so, and scores them only when asked, named as training folds."""
    from compression.tasks.noise.urbansound import available_folds, find_root, list_clips

    root = find_root(data_dir)
    trained_on = json.loads((smoke / "manifest.json").read_text())["training_folds"]
    # every fold but the validation fold trains the student; the committed teacher learnt from fold 1
    assert trained_on == [f for f in available_folds(root) if f != "fold2"] and "fold1" in trained_on

    assert main(["eval", "--model", str(smoke / "model.onnx"), "--data", str(data_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    held_out = [c for c in list_clips(root) if c.fold not in trained_on]
    assert result["model_kind"] == "onnx" and result["n"] == len(held_out) == len(list_clips(root, ["fold2"]))
    assert set(result["per_fold"]) == {"fold2"}
    assert result["excluded"]["folds"] == trained_on
    assert result["excluded"]["clips"] == len(list_clips(root)) - len(held_out)

    assert main(["eval", "--model", str(smoke / "model.onnx"), "--data", str(data_dir), "--json",
                 "--include-training"]) == 0
    everything = json.loads(capsys.readouterr().out)
    assert everything["n"] == len(list_clips(root)) and "excluded" not in everything
    assert everything["training_folds_scored"] == trained_on and set(everything["per_fold"]) == set(available_folds(root))


def test_eval_refuses_a_folder_that_holds_only_training_clips(smoke, data_dir, capsys):
    """Pointing --data at the training fold itself (clips directly in it) does not slip past."""
    from compression.tasks.noise.urbansound import find_root

    fold1 = find_root(data_dir) / "fold1"
    assert main(["eval", "--model", str(smoke / "model.onnx"), "--data", str(fold1), "--json"]) == 2
    assert "every clip" in capsys.readouterr().err


def test_the_shipped_noise_model_records_the_folds_it_trained_on(data_dir):
    """The shipped student and its teacher learnt from the folds its manifest names (never the validation
    fold): its training list hash is those folds' clip list, so roadside eval may score every other fold."""
    from compression.tasks.noise.urbansound import data_list_sha256, find_root, list_clips
    from compression.tasks.noise.teacher import training_folds

    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    root = find_root(data_dir)
    folds = manifest["training_folds"]
    assert folds == training_folds(REPO / manifest["recipe"]["teacher"]["checkpoint"])
    assert folds and manifest["recipe"]["data"]["val_fold"] not in folds
    assert data_list_sha256(list_clips(root, folds), root) == manifest["data_lists"]["train"]


def test_gate_trips_and_still_writes_the_report(data_dir, tmp_path, capsys):
    """A student fed wrongly scaled features, and never pruned, must not ship: exit 3, every reason, numbers kept."""
    out = tmp_path / "out"
    rc = main(["compress", "--recipe", str(RECIPE), "--data", str(data_dir), "--out", str(out),
               "--work", str(tmp_path / "work"), "--set", "data.max_clips=16", "--set", "distil.epochs=0",
               "--set", "prune.enabled=false", "--set", "quantise.enabled=false",
               "--set", "student.frontend.norm_scale=50"])
    assert rc == 3
    err = capsys.readouterr().err
    assert "did not pass the gate" in err and "CPU model (pruned)" in err
    assert "points below the teacher" in err and "parameters > budget.max_params 128000" in err
    report = json.loads((out / "report.json").read_text())
    assert report["gate"]["passed"] is False and set(report["stages"]) == {"teacher", "student", "pruned"}
    assert report["stages"]["pruned"]["accuracy"] < report["stages"]["teacher"]["accuracy"]


def test_int8_losing_too_much_for_tensorrt_is_retrained_quantisation_aware_then_left_out(data_dir, tmp_path,
                                                                                       monkeypatch):
    """Post-training INT8 for TensorRT loses too much on the tuning clips (training folds; forced here, a
    one-epoch student on 24 clips cannot be made to): QAT is tried, scored like every stage, and when it
    loses too much as well TensorRT is given the float model (an FP16 engine) and both reasons are reported.
    The student is fed features at a tenth of their scale and not distilled, so the gate refuses the run."""
    from compression.tasks.noise.chain import NoiseTail

    monkeypatch.setattr(NoiseTail, "tuning_loss", lambda tail, name, path: 50.0)
    out = tmp_path / "out"
    rc = main(["compress", "--recipe", str(RECIPE), "--data", str(data_dir), "--out", str(out),
               "--work", str(tmp_path / "work"), *SMOKE, "--set", "distil.epochs=0", "--set", "prune.enabled=false",
               "--set", "student.frontend.norm_scale=50", "--set", "quantise.qat_epochs=1"])
    assert rc == 3  # the CPU model fails the gate: the run refuses to ship
    report = json.loads((out / "report.json").read_text())
    qat = report["stages"]["int8_tensorrt_qat"]
    assert qat["n"] == 24 and 0.0 <= qat["top1_agreement_with_fp32"] <= 1.0
    rejected = report["int8_rejected"]["tensorrt"]
    for stage in ("int8_tensorrt", "int8_tensorrt_qat"):  # each with the points it lost on the tuning clips
        assert any(r.startswith(f"{stage}: loses 50.00 points") and "tuning clips" in r for r in rejected)
    assert report["shipped"]["tensorrt"] == "pruned" and report["targets"]["tensorrt"]["precision"] == "fp16"
    assert report["targets"]["tensorrt"]["why"].startswith("FP16 engine from the FP32 model")
    assert report["tuning"]["folds"] and "fold2" not in report["tuning"]["folds"]
    assert not (out / "model_trt.onnx").exists()


def test_gate_refuses_a_model_over_budget():
    from compression.tasks.noise.chain import check

    recipe = load_recipe(RECIPE)
    teacher = {"accuracy": 0.80}
    ok = {"accuracy": 0.79, "params": 100_000, "macs_per_second": 5e6}
    assert check(recipe, teacher, ok) == []
    too_big = {**ok, "params": 200_000, "macs_per_second": 40e6}
    assert [f.split()[1] for f in check(recipe, teacher, too_big)] == ["parameters", "M"]


def test_recipe_errors_name_the_key(tmp_path):
    from agent.schema import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.read_text().replace("  n_mels: 103", "  n_mels: -3").replace("max_drop: 2.0", "max_dorp: 2"))
    with pytest.raises(ConfigError) as e:
        load_recipe(bad)
    text = str(e.value)
    assert "student.frontend" in text and "n_mels" in text
    assert "gate.max_dorp" in text
    with pytest.raises(ConfigError, match="distil.epochs"):
        load_recipe(RECIPE, **{"distil.epochs": -1})


def test_quantise_refuses_bad_calibration(tmp_path):
    from compression.quantise import quantise

    with pytest.raises(ValueError, match="no calibration features"):
        quantise(tmp_path / "x.onnx", tmp_path / "y.onnx", np.zeros((0, 1, 4, 4), np.float32), "cpu")
    with pytest.raises(ValueError, match="NaN"):
        quantise(tmp_path / "x.onnx", tmp_path / "y.onnx", np.full((2, 1, 4, 4), np.nan, np.float32), "cpu")


def test_layers_named_in_keep_float_stay_in_float_and_a_pattern_matching_nothing_is_an_error(tmp_path):
    """Mixed precision: quantise.<flavour>.keep_float leaves sensitive layers in float."""
    import onnx
    import torch

    from agent.schema import ConfigError
    from compression.export import export_onnx
    from compression.quantise import quantise

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
                                torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 12 * 12, 10))
    fp32 = export_onnx(model, torch.zeros(1, 1, 16, 16), tmp_path / "fp32.onnx", {"task": "noise"})
    calib = np.random.default_rng(0).normal(size=(8, 1, 16, 16)).astype(np.float32)

    def float_convs(path):
        graph = onnx.load(str(path)).graph
        dequantised = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        return sorted(n.name for n in graph.node if n.op_type == "Conv" and not set(n.input) & dequantised)

    assert float_convs(quantise(fp32, tmp_path / "all.onnx", calib, "cpu")) == []
    mixed = quantise(fp32, tmp_path / "mixed.onnx", calib, "cpu", keep_float=[r"^/model/model\.0/"])
    assert float_convs(mixed) == ["/model/model.0/Conv"]
    with pytest.raises(ValueError, match=r"keep_float: \['conv99'\] match no node"):
        quantise(fp32, tmp_path / "x.onnx", calib, "cpu", keep_float=["conv99"])
    with pytest.raises(ConfigError, match=r"quantise.cpu.keep_float.*not a regular expression"):
        load_recipe(RECIPE, **{"quantise.cpu.keep_float": ["features.(0"]})


def test_any_torch_teacher_with_its_own_frontend(data_dir, tmp_path):
    """The Python API: a user's nn.Module (plain logits out) and its front-end, distilled into a small CNN."""
    import torch

    from agent.features.audio import STUDENT_LOGMEL
    from compression.tasks.noise.chain import compress

    class UserTeacher(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))

        def forward(self, x):
            return self.net(x)

    recipe = load_recipe(RECIPE, **{"student.type": "cnn", "student.cnn_channels": [8, 16],
                                    "student.frontend": STUDENT_LOGMEL.to_dict(), "data.max_clips": 12,
                                    "distil.epochs": 1, "prune.enabled": False, "quantise.enabled": False,
                                    "gate.max_drop": 100})
    labels = [f"class{i}" for i in range(10)]
    report = compress(UserTeacher(), STUDENT_LOGMEL.to_dict(), labels, recipe, data_dir,
                               tmp_path / "out", tmp_path / "work")
    assert list(report["stages"]) == ["teacher", "student", "pruned"]
    assert report["stages"]["student"]["frontend"] == STUDENT_LOGMEL.to_dict()
    # SmallCNN [8, 16]: two stages of conv + BN + depthwise conv + BN, then a 16 -> 10 linear head
    assert report["stages"]["student"]["params"] == (8 * 9 + 16 + 8 * 9 + 16) + (16 * 8 * 9 + 32 + 16 * 9 + 32) + 170
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["inputs"]["teacher"] == "UserTeacher" and len(manifest["inputs"]["teacher_state_sha256"]) == 64
    assert load_contract(tmp_path / "out" / "model.onnx").labels == tuple(labels)


def test_a_student_taught_by_out_of_fold_teachers_records_them_and_every_fold_they_heard(data_dir, tmp_path,
                                                                                          capsys):
    """Two teachers, one that heard fold 1 and one that heard fold 3: every training clip has one that did
    not hear it. The manifest names both (they are inputs of the distillation) and eval leaves out every fold
    either heard. When a clip was heard by all of them the run stops before training, naming the clip."""
    import shutil

    from compression.tasks.noise import urbansound

    root = urbansound.find_root(data_dir)
    by_fold = {f: [c.path.relative_to(root).as_posix() for c in urbansound.list_clips(root, [f])]
               for f in ("fold1", "fold3") if f in urbansound.available_folds(root)}
    shipped_teacher = REPO / "compression" / "teachers" / "weights" / "noise-mn04" / "teacher.pt"

    def teacher(name: str, heard: list[str]) -> str:
        (tmp_path / name).mkdir()
        shutil.copy(shipped_teacher, tmp_path / name / "teacher.pt")
        (tmp_path / name / "splits.json").write_text(json.dumps({"val_fold": "fold2", "train": heard, "val": []}))
        return str(tmp_path / name / "teacher.pt")

    everything = [c for clips in by_fold.values() for c in clips]
    teachers = [teacher(f"heard-{fold}", clips) for fold, clips in by_fold.items()]
    if len(teachers) == 1:  # fold 3 not here: a second teacher that heard nothing
        teachers.append(teacher("heard-nothing", []))
    args = ["compress", "--recipe", str(RECIPE), "--data", str(data_dir), "--work", str(tmp_path / "work"),
            *LENIENT, "--set", "data.max_clips=16", "--set", "distil.epochs=1", "--set", "prune.enabled=false",
            "--set", "quantise.enabled=false", "--set", "engine.enabled=false", "--set", "data.calibration_clips=8",
            "--set", "budget.max_params=1000000"]  # not pruned: the plumbing is what is checked
    assert main([*args, "--out", str(tmp_path / "out"), "--set", f"teacher.out_of_fold=[{', '.join(teachers)}]"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [t["teacher"] for t in manifest["inputs"]["out_of_fold"]] == [f"{Path(t).parent.name}/teacher.pt"
                                                                         for t in teachers]
    assert set(manifest["training_folds"]) == set(by_fold)

    heard_all = teacher("heard-all", everything)
    assert main([*args, "--out", str(tmp_path / "out2"), "--set", f"teacher.out_of_fold=[{heard_all}]"]) == 2
    assert "16 of 16 training clips were heard by every one of these teachers" in capsys.readouterr().err
