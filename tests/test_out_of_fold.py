"""Out-of-fold teachers: a training clip learns only from teachers that never trained on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.features.audio import STUDENT_LOGMEL, TEACHER_LOGMEL
from compression.tasks.noise import out_of_fold
from compression.tasks.noise.mn04 import MN
from compression.tasks.noise.recipe import TeacherSection
from compression.tasks.noise.teacher import save_checkpoint
from compression.tasks.noise.urbansound import LABELS, Clip

NAMES = ["fold1/1-0-0-0.flac", "fold1/2-1-0-0.flac", "fold3/3-2-0-0.flac", "fold3/4-3-0-0.flac"]


def _teacher(folder: Path, heard: list[str], splits: bool = True) -> Path:
    folder.mkdir()
    save_checkpoint(MN(n_classes=len(LABELS)), folder / "teacher.pt", list(LABELS))
    if splits:
        (folder / "splits.json").write_text(json.dumps({"val_fold": "fold2", "train": heard, "val": []}))
    return folder / "teacher.pt"


def _load(*paths: Path, frontend=TEACHER_LOGMEL, labels=LABELS) -> out_of_fold.OutOfFold:
    return out_of_fold.load(list(paths), frontend.to_dict(), list(labels))


@pytest.fixture
def clips(tmp_path) -> list[Clip]:
    return [Clip(tmp_path / n, n.split("/")[0], int(n.split("-")[1]), n.split("/")[1].split("-")[0]) for n in NAMES]


def test_each_clip_learns_from_every_teacher_that_did_not_hear_it(tmp_path, clips):
    oof = _load(_teacher(tmp_path / "a", NAMES[:2]), _teacher(tmp_path / "b", NAMES[2:]),
                _teacher(tmp_path / "c", NAMES[:1]))
    sources = oof.sources(clips, tmp_path)
    assert sources.of_clip == ((1,), (1, 2), (0, 2), (0, 2))
    assert len(sources.teachers) == 3
    assert [t["teacher"] for t in oof.identity()] == ["a/teacher.pt", "b/teacher.pt", "c/teacher.pt"]
    assert all(len(t["teacher_sha256"]) == 64 for t in oof.identity())
    assert oof.folds() == {"fold1", "fold3"}  # what eval must leave out of a student taught by them


def test_a_clip_every_teacher_heard_is_refused_naming_it(tmp_path, clips):
    oof = _load(_teacher(tmp_path / "a", NAMES[:2]), _teacher(tmp_path / "b", NAMES[1:]))
    with pytest.raises(ValueError, match=r"1 of 4 training clips were heard by every one.*fold1/2-1-0-0\.flac"):
        oof.sources(clips, tmp_path)


def test_a_teacher_that_cannot_say_what_it_heard_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"out_of_fold\[1\].*no splits.json"):
        _load(_teacher(tmp_path / "a", NAMES[:2]), _teacher(tmp_path / "b", [], splits=False))


def test_a_teacher_on_another_front_end_or_other_labels_is_refused(tmp_path):
    path = _teacher(tmp_path / "a", NAMES[:2])
    with pytest.raises(ValueError, match=r"out_of_fold\[0\].*front-end differs"):
        _load(path, frontend=STUDENT_LOGMEL)
    with pytest.raises(ValueError, match=r"out_of_fold\[0\].*labels"):
        _load(path, labels=list(reversed(LABELS)))


def test_out_of_fold_teachers_go_beside_a_checkpoint_not_a_hugging_face_teacher():
    assert TeacherSection(checkpoint="t.pt", out_of_fold=["a.pt"]).out_of_fold == ["a.pt"]
    with pytest.raises(ValidationError, match="beside a checkpoint"):
        TeacherSection(huggingface="ast", out_of_fold=["a.pt"])
