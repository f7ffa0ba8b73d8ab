"""The GPU wall-time check (``scripts/gpu_wall_time.py``): prepared here, run in one call on a lent GPU
machine. What can be checked without a GPU is checked here: the subset it carries, the size it refuses,
and a real ``run`` of the chain on the CPU, with a cuda run that fails as this machine has no GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from compression.tasks.noise import urbansound

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_wall_time", REPO / "scripts" / "gpu_wall_time.py")
gwt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gwt)


def _fake_folds(root: Path, per_class: dict[str, int]) -> Path:
    """UrbanSound8K-named empty files: ``{fold: clips per class}`` for classes 0-9, plus a stray file."""
    for fold, n in per_class.items():
        (root / "urbansound8k" / fold).mkdir(parents=True)
        for label in range(10):
            for i in range(n if label else 2):  # class 0 is short of clips everywhere
                (root / "urbansound8k" / fold / f"{100 + i}-{label}-0-{i}.flac").write_bytes(b"x" * 10)
        (root / "urbansound8k" / fold / "notes.txt").write_text("not a clip")
    return root


def _label(p: Path) -> str:
    return p.name.split("-")[1]


def test_the_subset_is_class_balanced_the_same_every_time_and_takes_a_short_class_whole(tmp_path):
    root = _fake_folds(tmp_path, {"fold1": 6})
    clips = list(urbansound.list_clips(root / "urbansound8k"))  # what prepare hands it: notes.txt is no clip
    picked = gwt.pick(clips, 4, seed=0)
    counts = {c: sum(_label(p) == c for p in picked) for c in map(str, range(10))}
    assert counts == {"0": 2, **{str(c): 4 for c in range(1, 10)}}
    assert picked == gwt.pick(list(reversed(clips)), 4, seed=0)  # order of the listing does not matter
    assert picked != gwt.pick(clips, 4, seed=1)
    assert not any(p.name == "notes.txt" for p in picked)


def test_prepare_keeps_each_clips_fold_and_takes_the_gate_fold_only_as_validation(tmp_path):
    root = _fake_folds(tmp_path / "data", {"fold1": 5, "fold2": 5, "fold3": 5})
    summary = gwt.prepare(root, tmp_path / "carry", "fold2", train_per_class=5, val_per_class=1, seed=0, wheels=False)
    copied = tmp_path / "carry" / "data" / "urbansound8k"
    got = {f.name: sorted(p.name for p in f.iterdir()) for f in copied.iterdir()}
    # training clips come from folds 1 and 3 together (class 0 has 2 + 2 there), validation from fold 2 alone
    assert summary["train_clips"] == 4 + 9 * 5 and summary["val_clips"] == 10
    assert len(got["fold2"]) == 10 and len(got["fold1"]) + len(got["fold3"]) == 49
    for fold, names in got.items():  # every copy is the same file of the same fold
        assert all((root / "urbansound8k" / fold / n).is_file() for n in names)


def test_prepare_refuses_an_oversized_carry_data_without_the_gate_fold_and_a_folder_not_its_own(tmp_path, monkeypatch):
    root = _fake_folds(tmp_path / "data", {"fold1": 3, "fold2": 3})
    monkeypatch.setattr(gwt, "TREE_LIMIT", 1000)  # smaller than the repository itself
    with pytest.raises(SystemExit, match=r"exceed the 0 MiB one call carries: ask for fewer clips per class"):
        gwt.prepare(root, tmp_path / "carry", "fold2", 3, 1, 0, wheels=False)
    with pytest.raises(SystemExit, match=r"needs fold9 and at least one training fold"):
        gwt.prepare(root, tmp_path / "carry", "fold9", 3, 1, 0, wheels=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.md").write_text("keep me")
    with pytest.raises(SystemExit, match=r"holds \['notes.md'\], not an earlier prepare's"):
        gwt.prepare(root, tmp_path / "mine", "fold2", 3, 1, 0, wheels=False)
    assert (tmp_path / "mine" / "notes.md").read_text() == "keep me"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the cuda run would succeed")
def test_run_times_the_real_chain_on_the_cpu_and_reports_a_device_it_cannot_use(data_dir, tmp_path):
    subset = tmp_path / "carry"
    gwt.prepare(data_dir, subset, "fold2", train_per_class=3, val_per_class=1, seed=0, wheels=False)
    result = gwt.run(["cuda", "cpu"], subset / "data", tmp_path / "out", wheels=None, threads=1,
                     extra=["--set", "distil.epochs=1", "--set", "prune.final_epochs=1"])
    cuda, cpu = result["runs"]
    assert cuda["device"] == "cuda" and cuda["exit"] not in (0, gwt.GATE_REFUSED) and "cuda.log" in cuda["error"]
    assert "sees no CUDA GPU here" in (tmp_path / "out" / "cuda.log").read_text()
    assert cpu["exit"] in (0, gwt.GATE_REFUSED) and cpu["report_device"] == "cpu"
    assert [(e["run"], e["epoch"]) for e in cpu["epochs"]] == [("distil", 1), ("prune1", 1)]
    assert cpu["training_seconds"] == pytest.approx(sum(e["seconds"] for e in cpu["epochs"]), abs=0.1)
    assert 0 < cpu["training_seconds"] < cpu["chain_seconds"] <= cpu["wall_seconds"]
    assert set(cpu["accuracy"]) == {"teacher", "student", "pruned"}
    assert "training_speedup_cuda_vs_cpu" not in result  # no ratio without both runs
    assert json.loads((tmp_path / "out" / "gpu_wall_time.json").read_text()) == result
    assert result["threads"] == 1 and result["cuda"] is False
    assert any(re.fullmatch(r"prune\.plan\.blocks=.*14: \{drop: true\}.*", a) for a in result["chain"])


def test_the_carried_wheels_are_installed_beside_the_image_and_importable_by_the_chains_python(tmp_path):
    """What `run --wheels` does first on the lent machine (whose image lacks pydantic and friends), with a
    one-module wheel made here: installed into a site of its own, found through PYTHONPATH, repo first."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    info = "carried_probe-1.0.dist-info"
    files = {"carried_probe/__init__.py": "VALUE = 7\n",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: carried-probe\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(wheels / "carried_probe-1.0-py3-none-any.whl", "w") as whl:
        for name, text in files.items():
            whl.writestr(name, text)
    gwt._install(wheels, tmp_path / "site")
    env = gwt._environment(tmp_path / "site")
    code = "import carried_probe, agent; print(carried_probe.VALUE, agent.__file__)"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          check=True)
    value, agent_file = done.stdout.split()
    assert value == "7" and Path(agent_file).is_relative_to(REPO)
    assert env["PYTHONPATH"].split(os.pathsep)[:2] == [str(REPO), str(tmp_path / "site")]
