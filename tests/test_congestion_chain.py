"""``roadside compress`` for congestion: a smoke run of the chain on 12 real detectors, its split and its gate.

The full run is a command (README); here every stage runs for one short epoch, so the
numbers are not the product's, but every stage, both baselines and the held-out split
must be present and recorded, ``roadside eval`` must reproduce the report from a CSV,
and the gate must refuse what it should.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.backends.contract import load_contract
from agent.cli import main
from agent.features.detector import DetectorParams
from agent.schema import ConfigError
from compression.tasks.congestion.chain import load_data
from compression.tasks.congestion.traffic import DetectorSplit
from compression.manifest import verify_files
from compression.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "compression" / "recipes" / "congestion.yaml"
TINY = {"data.max_detectors": 12, "data.calibration_windows": 64, "data.parity_windows": 64,
        "teacher.hidden": 16, "teacher.pretrain.epochs": 1, "teacher.pretrain.windows_per_epoch": 3000,
        "teacher.finetune.epochs": 1, "teacher.finetune.windows_per_epoch": 3000,
        "distil.epochs": 1, "distil.windows_per_epoch": 3000}
# a one-epoch student is poor: the smoke run checks the plumbing, the full run the numbers
LENIENT = {"gate.min_f1_gain": -1, "gate.max_rmse_ratio": 10, "gate.max_f1_drop": 1}


def _sets(overrides: dict) -> list[str]:
    return [a for k, v in overrides.items() for a in ("--set", f"{k}={json.dumps(v)}")]


@pytest.fixture(scope="module")
def smoke(data_dir, tmp_path_factory) -> tuple[Path, Path]:
    out, work = tmp_path_factory.mktemp("shipped"), tmp_path_factory.mktemp("work")
    rc = main(["compress", "--recipe", str(RECIPE), "--data", str(data_dir), "--out", str(out), "--work", str(work),
               *_sets({**TINY, **LENIENT})])
    assert rc == 0
    return out, work


def test_every_stage_and_both_baselines_are_scored_on_the_same_held_out_windows(smoke):
    report = json.loads((smoke[0] / "report.json").read_text())
    assert list(report["stages"]) == ["teacher", "student", "student_int8"]
    assert list(report["baselines"]) == ["persistence", "historical_average"]
    n = report["evaluation"]["windows"]
    for name, m in {**report["stages"], **report["baselines"]}.items():
        assert m["n"] == n, name
        assert {"macro_f1", "congested", "speed", "warnings", "confusion"} <= set(m), name
        assert m["warnings"]["detector_days"] == pytest.approx(n / 288)
    for name, m in report["stages"].items():
        assert m["params"] > 0 and m["latency"]["model_ms"] > 0, name
        # a device in its first days has no usual speeds yet: every stage is scored that way too
        assert 0 <= m["without_profile"]["macro_f1"] <= 1 and m["without_profile"]["speed"]["rmse_mph"] > 0
    assert 0 < report["evaluation"]["profile_known_fraction"] <= 1
    assert report["stages"]["student"]["params"] <= 20_000
    assert report["shipped"]["cpu"] in ("student", "student_int8") and report["targets"]["onnxruntime"]["why"]
    assert set(report["issue_targets"]) == {"macro_f1", "rmse_vs_persistence", "rmse_mph"}
    boot = report["issue_targets"]["macro_f1"]["detector_bootstrap"]  # how sure the gain is, detector by detector
    assert boot["detectors"] == report["evaluation"]["detectors"] and boot["ci95"][0] <= boot["gain"] <= boot["ci95"][1]
    rmse = report["issue_targets"]["rmse_mph"]["detector_bootstrap"]  # and the RMSE, and its ratio to persistence
    assert rmse["rmse_mph"] == pytest.approx(report["stages"][report["shipped"]["cpu"]]["speed"]["rmse_mph"], rel=1e-5)
    assert rmse["rmse_ci95"][0] <= rmse["rmse_mph"] <= rmse["rmse_ci95"][1] and 0 <= rmse["share_within_rmse"] <= 1
    ratio = report["issue_targets"]["rmse_vs_persistence"]["detector_bootstrap"]
    assert ratio["ratio_ci95"][0] <= ratio["ratio"] <= ratio["ratio_ci95"][1] and 0 <= ratio["share_within_ratio"] <= 1
    assert report["onnx_parity"]["max_abs_logit_diff"] <= 1e-4


def test_held_out_detectors_and_days_never_train(smoke, data_dir):
    recipe = load_recipe(RECIPE, **TINY)
    ds = load_data(recipe, DetectorParams.from_dict(recipe.frontend), data_dir)
    trained_on = {ds.table.ids[c] for c in np.unique(ds.train.det)}
    assert trained_on == set(ds.split.train) and not trained_on & set(ds.split.val)
    assert (ds.train.t + 3 < ds.eval_start).all()  # every training target is before the evaluation days
    assert {ds.table.ids[c] for c in np.unique(ds.eval.windows.det)} == set(ds.split.val)
    assert (ds.eval.windows.t >= ds.eval_start).all()
    manifest = json.loads((smoke[0] / "manifest.json").read_text())
    assert manifest["evaluation"]["val_detectors"] == list(ds.split.val)
    assert manifest["evaluation"]["train_detectors"] == list(ds.split.train)


def test_the_tuning_split_never_loads_the_held_out_detectors(data_dir):
    recipe = load_recipe(RECIPE, **TINY)
    params = DetectorParams.from_dict(recipe.frontend)
    real = load_data(recipe, params, data_dir).split
    tuning = load_data(load_recipe(RECIPE, **TINY, **{"data.tuning_split": True}), params, data_dir)
    assert set(tuning.split.train) | set(tuning.split.val) == set(real.train)
    used = {tuning.table.ids[c] for c in np.unique(np.concatenate([tuning.train.det, tuning.eval.windows.det]))}
    assert used <= set(real.train) and not used & set(real.val)


def test_cross_fitting_scores_every_training_detector_once_by_models_that_never_trained_on_it(data_dir, tmp_path,
                                                                                              capsys):
    """The warning point chosen over all training detectors: each fold scored by a model trained on the
    others, the curve pooled, the held-out detectors never loaded, no model written."""
    folds = {"data.tuning_split": True, "data.tuning_folds": 3}
    out, work = tmp_path / "cf", tmp_path / "w"
    assert main(["compress", "--recipe", str(RECIPE), "--data", str(data_dir), "--out", str(out), "--work", str(work),
                 *_sets({**TINY, **folds})]) == 0
    assert "cross-fitted warning point: threshold" in capsys.readouterr().out
    report = json.loads((out / "crossfit.json").read_text())
    recipe = load_recipe(RECIPE, **TINY)
    real = load_data(recipe, DetectorParams.from_dict(recipe.frontend), data_dir).split
    scored = [d for f in report["folds"] for d in f["val_detectors"]]
    assert sorted(scored) == sorted(real.train) and report["detectors"] == len(scored)  # each once, none held out
    for k, fold in enumerate(report["folds"]):
        record = json.loads((work / f"crossfit-fold{k}" / "teacher.pt.lineage.json").read_text())
        # the fold's teacher trained on exactly the other training detectors
        others = DetectorSplit(train=tuple(d for d in real.train if d not in fold["val_detectors"]),
                               val=tuple(fold["val_detectors"]), seed=recipe.seed, val_fraction=round(1 / 3, 6))
        assert record["inputs"]["split_sha256"] == fold["split_sha256"] == others.to_dict()["sha256"]
    chosen, model = report["chosen"], report["warnings"]["curves"]["model"]
    assert chosen["recipe_keys"] == {"warning.threshold": chosen["setting"], "warning.release": chosen["release"]}
    assert chosen in [{**q, "meets_bounds": chosen["meets_bounds"], "recipe_keys": chosen["recipe_keys"]}
                      for q in model]
    assert sum(f["at_chosen_point"]["onsets"] for f in report["folds"]) == chosen["onsets"]
    assert not (out / "model.onnx").exists() and (out / "crossfit_warning_curves.png").stat().st_size > 0
    with pytest.raises(ConfigError, match="tuning_split"):
        load_recipe(RECIPE, **{"data.tuning_folds": 3})


def test_the_time_split_scores_every_detector_on_days_it_never_trained_on(data_dir):
    # the published protocol, for comparison: every detector trains, on the days before the evaluation days
    recipe = load_recipe(RECIPE, **TINY, **{"data.time_split_only": True})
    ds = load_data(recipe, DetectorParams.from_dict(recipe.frontend), data_dir)
    trained, scored = ({ds.table.ids[c] for c in np.unique(w.det)} for w in (ds.train, ds.eval.windows))
    assert trained == scored == set(ds.table.ids[:12])
    assert (ds.train.t + 3 < ds.eval_start).all() and (ds.eval.windows.t >= ds.eval_start).all()
    with pytest.raises(ValueError, match="exclude each other"):
        load_recipe(RECIPE, **{"data.time_split_only": True, "data.tuning_split": True})


def test_a_teacher_trained_on_another_split_is_refused(smoke, data_dir, tmp_path):
    teacher = smoke[1] / "teacher.pt"
    rc = main(["compress", "--recipe", str(RECIPE), "--data", str(data_dir), "--out", str(tmp_path / "o"),
               "--work", str(tmp_path / "w"), *_sets({**TINY, "seed": 1, "teacher.checkpoint": str(teacher)})])
    assert rc == 2  # refused before anything trains


def test_shipped_folder_is_a_valid_contract(smoke):
    out = smoke[0]
    assert verify_files(out / "manifest.json") == []
    contract = load_contract(out / "model.onnx")
    assert contract.task == "congestion" and contract.labels == ("free", "slowed", "congested")
    assert contract.frontend == load_recipe(RECIPE).frontend and contract.window_seconds == 3600.0
    assert DetectorParams.from_dict(contract.frontend).uses_profile
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"model.onnx", "report.json", "confusion.png", "metrics_vs_baselines.png",
            "forecast_example.png"} <= set(manifest["files"])
    assert {"train_detectors", "val_detectors", "calibration_windows"} == set(manifest["data_lists"])
    import onnx

    assert [o.name for o in onnx.load(str(out / "model.onnx")).graph.output] == ["logits", "speed"]


def test_the_report_has_warning_curves_for_the_model_and_both_baselines_and_the_manifest_its_point(smoke):
    """Warnings are what the pole sends ahead of a jam: every predictor gets an operating curve on the same
    windows (the model's over thresholds and release points, the rule's hysteresis), the recipe's point is
    measured and shipped in the manifest for the agent's rule."""
    from agent.features.warning import WarningPoint

    out = smoke[0]
    report, manifest = (json.loads((out / n).read_text()) for n in ("report.json", "manifest.json"))
    w, recipe = report["warnings"], load_recipe(RECIPE)
    assert set(w["curves"]) == {"model", "persistence", "historical_average"}
    model = w["curves"]["model"]
    assert len(model) == len(recipe.warning.sweep) * len(recipe.warning.release_fractions)
    assert [q["setting"] for q in w["curves"]["persistence"]] == recipe.warning.baseline_sweep_mph
    for fraction in recipe.warning.release_fractions:
        line = [q for q in model if q["release"] == round(q["setting"] * fraction, 6)]
        assert [q["setting"] for q in line] == recipe.warning.sweep
        # a lower threshold (and release) never warns later: caught-ahead falls as they rise
        ahead = [q["caught_in_advance_fraction"] for q in line]
        assert ahead == sorted(ahead, reverse=True)
    point = WarningPoint(recipe.warning.threshold, recipe.warning.congested_now, recipe.warning.release)
    assert manifest["warning"] == w["operating_point"] == point.to_dict()
    assert w["at_operating_point"]["setting"] == recipe.warning.threshold and "warning_curves.png" in manifest["files"]
    assert w["at_operating_point"]["release"] == point.release_at


def test_eval_cli_on_a_csv_reproduces_the_report_and_skips_training_detectors(smoke, data_dir, tmp_path, capsys):
    out = smoke[0]
    report = json.loads((out / "report.json").read_text())
    val, train = report["evaluation"]["val_detectors"], report["evaluation"]["train_detectors"]
    # a CSV like los_speed.csv with the held-out detectors and two the model was trained on
    lines = (data_dir / "traffic" / "los_speed.csv").read_text().splitlines()
    header = lines[0].split(",")
    cols = [header.index(d) for d in val + train[:2]]
    csv = tmp_path / "some_detectors.csv"
    csv.write_text("\n".join(",".join(row.split(",")[c] for c in cols) for row in lines) + "\n")

    assert main(["eval", "--model", str(out / "model.onnx"), "--data", str(csv), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "congestion" and result["evaluation"]["excluded_training_detectors"] == 2
    shipped = report["stages"][report["shipped"]["cpu"]]
    assert result["n"] == shipped["n"] and result["macro_f1"] == pytest.approx(shipped["macro_f1"])
    assert result["speed"]["rmse_mph"] == pytest.approx(shipped["speed"]["rmse_mph"], rel=1e-5)
    for name, base in report["baselines"].items():
        assert result["baselines"][name]["macro_f1"] == pytest.approx(base["macro_f1"])
        assert result["baselines"][name]["speed"] == pytest.approx(base["speed"])
    # with how much the gains depend on which detectors were held out, as in the report
    boot = result["detector_bootstrap"]
    assert boot["macro_f1_gain_over_persistence"]["gain"] == pytest.approx(
        report["issue_targets"]["macro_f1"]["detector_bootstrap"]["gain"])
    assert boot["speed_vs_persistence"]["rmse_ci95"] == pytest.approx(
        report["issue_targets"]["rmse_mph"]["detector_bootstrap"]["rmse_ci95"], rel=1e-4)
    # and the warnings the pole would send, at the operating point the artefact carries, as in the report
    warn = result["warning_at_operating_point"]
    assert warn["threshold"] == report["warnings"]["operating_point"]["threshold"]
    for key in ("caught_fraction", "caught_in_advance_fraction", "false_alarms_per_detector_day"):
        assert warn[key] == pytest.approx(report["warnings"]["at_operating_point"][key])
    # ... and which streets raised them: per detector, adding up to the rate
    by_det = warn["false_alarms_by_detector"]
    assert set(by_det) <= set(val) and len(by_det) == result["evaluation"]["detectors"]
    alarms, days = (sum(v[i] for v in by_det.values()) for i in (0, 1))
    assert alarms / days == pytest.approx(warn["false_alarms_per_detector_day"], rel=1e-3)
    assert "training_detectors" not in result  # training streets only when asked

    # asked: the two training streets on the same (never trained on) days, apart and marked; the held-out
    # figures stay exactly as they were
    assert main(["eval", "--model", str(out / "model.onnx"), "--data", str(csv), "--json", "--include-training"]) == 0
    with_training = json.loads(capsys.readouterr().out)
    seen = with_training.pop("training_detectors")
    assert with_training == result
    assert "not an evaluation of unseen streets" in seen["why"] and seen["evaluation"]["detectors"] == 2
    assert seen["evaluation"]["eval_start_row"] == result["evaluation"]["eval_start_row"]
    assert set(seen["warning_at_operating_point"]["false_alarms_by_detector"]) <= set(train[:2])


def test_gate_trips_and_still_writes_the_report(smoke, data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["compress", "--recipe", str(RECIPE), "--data", str(data_dir), "--out", str(out),
               "--work", str(tmp_path / "work"),
               *_sets({**TINY, "teacher.checkpoint": str(smoke[1] / "teacher.pt"), "gate.min_f1_gain": 0.5,
                       "budget.max_params": 1000, "quantise.enabled": False})])
    assert rc == 3
    err = capsys.readouterr().err
    assert "did not pass the gate" in err and "gate.min_f1_gain 0.5" in err and "budget.max_params 1000" in err
    report = json.loads((out / "report.json").read_text())
    assert report["gate"]["passed"] is False and list(report["stages"]) == ["teacher", "student"]


@pytest.mark.parametrize("override, key", [
    ({"student.hidden": [0]}, "student.hidden"),
    ({"frontend.horizon_steps": 0}, "frontend"),
    ({"distil.alpha": 2}, "distil.alpha"),
])
def test_bad_recipe_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_recipe(RECIPE, **override)


def test_unknown_recipe_key_is_named_with_its_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.read_text().replace("  tune_bias: true", "  tune_bias: true\n  tune_bais: false"))
    with pytest.raises(ConfigError, match=r"line \d+: loss\.tune_bais: Extra inputs are not permitted"):
        load_recipe(bad)


def test_a_rerun_reuses_the_teacher_its_record_matches_and_ships_the_same_bytes(smoke, data_dir, tmp_path):
    """Each stage's lineage record (``*.lineage.json`` beside its output) is the cache key: the same recipe
    and data find the teacher trained before and reuse it, and the shipped model comes out byte for byte
    the same; a setting that changes the teacher trains a new one."""
    out, work = smoke
    record = work / "teacher.pt.lineage.json"
    before = json.loads(record.read_text())
    assert before["stage"] == "teacher" and before["inputs"]["speed_file_sha256"] and before["metrics"]
    mtime = (work / "teacher.pt").stat().st_mtime_ns
    again = tmp_path / "again"
    assert main(["compress", "--recipe", str(RECIPE), "--data", str(data_dir), "--out", str(again), "--work",
                 str(work), *_sets({**TINY, **LENIENT})]) == 0
    assert (work / "teacher.pt").stat().st_mtime_ns == mtime  # reused, not trained again
    assert (again / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    assert json.loads((work / "student_int8.onnx.lineage.json").read_text())["stage"] == "quantise"

    other = tmp_path / "other"
    assert main(["compress", "--recipe", str(RECIPE), "--data", str(data_dir), "--out", str(other), "--work",
                 str(work), *_sets({**TINY, **LENIENT, "teacher.hidden": 8})]) == 0
    assert json.loads(record.read_text())["config_sha256"] != before["config_sha256"]
    assert (work / "teacher.pt").stat().st_mtime_ns != mtime
