"""``roadside teacher train`` (a smoke run on real clips) and ``roadside eval`` on what it wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.cli import main
from compression.manifest import verify_files

REPO = Path(__file__).resolve().parents[1]
SHIPPED_TEACHER = REPO / "compression" / "teachers" / "weights" / "noise-mn04" / "teacher.pt"


@pytest.fixture(scope="module")
def smoke_teacher(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    rc = main(["teacher", "train", "--task", "noise", "--data", str(data_dir), "--out", str(out),
               "--epochs", "1", "--max-clips", "24"])
    assert rc == 0
    return out


@pytest.fixture
def flat_clips(data_dir, tmp_path) -> Path:
    """A folder with clips directly in it (no fold folders), one corrupt clip and a stray file."""
    folder = tmp_path / "clips"
    folder.mkdir()
    for src in sorted((data_dir / "urbansound8k" / "fold2").glob("*.flac"))[:12]:
        (folder / src.name).symlink_to(src)
    (folder / "99999-3-0-0.flac").write_bytes(b"this is not a flac file")
    (folder / "notes.txt").write_text("not a clip")
    return folder


def test_train_writes_everything_the_manifest_lists(smoke_teacher):
    names = {"teacher.pt", "teacher_logits.npz", "splits.json", "report.json", "confusion.png", "curves.png"}
    manifest = json.loads((smoke_teacher / "manifest.json").read_text())
    assert set(manifest["files"]) == names
    assert verify_files(smoke_teacher / "manifest.json") == []
    assert manifest["recipe"]["epochs"] == 1 and manifest["recipe"]["max_clips"] == 24
    assert set(manifest["data_lists"]) == {"train", "val"}
    assert manifest["frontend"]["sample_rate"] == 32000 and manifest["frontend"]["n_mels"] == 128


def test_splits_keep_folds_apart(smoke_teacher):
    splits = json.loads((smoke_teacher / "splits.json").read_text())
    assert splits["val_fold"] == "fold2"
    assert all(p.startswith("fold2/") for p in splits["val"])
    assert not any(p.startswith("fold2/") for p in splits["train"])
    assert len(splits["train"]) == len(splits["val"]) == 24


def test_report_has_zero_shot_and_fine_tuned_numbers(smoke_teacher):
    report = json.loads((smoke_teacher / "report.json").read_text())
    for key in ("zero_shot", "fine_tuned"):
        assert 0.0 <= report[key]["accuracy"] <= 1.0
        assert set(report[key]["per_class"]) >= {"siren", "dog_bark"}
    assert len(report["history"]) == 1


def test_cached_logits_are_the_checkpoints_own(smoke_teacher, data_dir):
    """The distillation cache must be what the saved weights produce on the same features."""
    from agent.features.audio import TEACHER_LOGMEL, log_mel
    from compression.tasks.noise.urbansound import load_clip
    from compression.tasks.noise.teacher import load_checkpoint

    model, cfg = load_checkpoint(smoke_teacher / "teacher.pt")
    cache = np.load(smoke_teacher / "teacher_logits.npz")
    paths = cache["val_paths"][:3]
    x = np.stack([log_mel(load_clip(data_dir / "urbansound8k" / p, 32000, cfg["window_seconds"]), TEACHER_LOGMEL)
                  for p in paths])[:, None]
    with torch.inference_mode():
        logits = model(torch.from_numpy(x))[0].numpy()
    assert np.abs(logits - cache["val_logits"][:3]).max() < 1e-4


def test_eval_prints_exactly_one_json_object(smoke_teacher, flat_clips):
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "eval", "--model", str(smoke_teacher / "teacher.pt"),
                           "--data", str(flat_clips), "--json"], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)  # fails on any stray line on stdout
    assert result["task"] == "noise"
    assert result["n"] == 12 and result["skipped"] == 1  # the corrupt clip is counted, not fatal
    assert set(result) >= {"accuracy", "macro_f1", "per_class", "top3_accuracy", "confusion", "per_fold"}


def test_onnx_export_scores_like_the_checkpoint(smoke_teacher, flat_clips, tmp_path, capsys):
    from agent.features.audio import TEACHER_LOGMEL
    from compression.export import export_onnx, read_contract
    from compression.manifest import write_manifest
    from compression.tasks.noise.teacher import load_checkpoint

    model, cfg = load_checkpoint(smoke_teacher / "teacher.pt")
    contract = {"task": "noise", "labels": cfg["labels"], "frontend": cfg["frontend"],
                "window_seconds": cfg["window_seconds"]}
    onnx_path = export_onnx(model, torch.zeros(1, 1, TEACHER_LOGMEL.n_mels, 400), tmp_path / "teacher.onnx", contract)
    write_manifest(tmp_path, stage="export", files=[onnx_path], inputs={}, recipe={}, data_lists={}, extra=contract)
    assert read_contract(onnx_path) == contract

    results = {}
    for path in (smoke_teacher / "teacher.pt", onnx_path):
        assert main(["eval", "--model", str(path), "--data", str(flat_clips), "--json"]) == 0
        results[path.suffix] = json.loads(capsys.readouterr().out)
    assert results[".onnx"]["model_kind"] == "onnx"
    assert results[".onnx"]["confusion"] == results[".pt"]["confusion"]


def test_eval_of_a_missing_data_dir_says_where_it_looked(smoke_teacher, tmp_path, capsys):
    rc = main(["eval", "--model", str(smoke_teacher / "teacher.pt"), "--data", str(tmp_path / "nowhere"), "--json"])
    assert rc == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err


@pytest.mark.slow
def test_shipped_teacher_reproduces_its_report_on_fold2(data_dir, capsys):
    """The committed teacher, scored by ``roadside eval`` on all of fold 2, is what its report says."""
    if not SHIPPED_TEACHER.is_file():
        pytest.fail(f"{SHIPPED_TEACHER} is missing: rebuild it with roadside teacher train")
    report = json.loads((SHIPPED_TEACHER.parent / "report.json").read_text())
    fold2 = data_dir / "urbansound8k" / "fold2"
    assert main(["eval", "--model", str(SHIPPED_TEACHER), "--data", str(fold2), "--json", "--threads", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == report["n_val"] == 888
    assert result["accuracy"] == pytest.approx(report["fine_tuned"]["accuracy"], abs=2e-3)
    assert result["accuracy"] >= 0.75  # the target for the noise teacher


def test_a_holdout_teacher_never_hears_the_recordings_it_leaves_out(data_dir, tmp_path):
    """``--holdout K/N``: one of N parts of the training recordings is left out whole and listed, so that a
    student can learn those clips from this teacher (``teacher.out_of_fold``)."""
    rc = main(["teacher", "train", "--task", "noise", "--data", str(data_dir), "--out", str(tmp_path),
               "--epochs", "1", "--max-clips", "8", "--holdout", "1/3"])
    assert rc == 0
    splits = json.loads((tmp_path / "splits.json").read_text())
    held, heard = set(splits["held_out"]), set(splits["train"])
    assert held and heard and not held & heard
    recording = lambda path: Path(path).name.split("-")[0]  # noqa: E731
    assert not {recording(p) for p in held} & {recording(p) for p in heard}
    assert json.loads((tmp_path / "report.json").read_text())["held_out_clips"] == len(held)
    assert json.loads((tmp_path / "manifest.json").read_text())["recipe"]["holdout"] == {"parts": 3, "part": 1,
                                                                                        "seed": 0}
    assert main(["teacher", "train", "--task", "noise", "--out", str(tmp_path / "x"), "--holdout", "3/3"]) == 2  # no such part
