"""Vehicle crops: class folders, the seeded stratified split, and reusing a recorded split."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from agent.features.image import ImageParams
from compression.tasks.vehicles import dataset as vehicles
from compression.tasks.vehicles.dataset import (LABELS, SplitError, VehiclesError, list_images, load_images,
                                           load_split, make_split, save_split, split_for)

PER_CLASS = 5


def _jpeg(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (100, 100), colour).save(path, "JPEG")
    return path


@pytest.fixture
def imgdir(tmp_path):
    """Six class folders of five small JPEGs, plus a README and a stray text file."""
    root = tmp_path / "vehicles"
    for k, name in enumerate(LABELS):
        for i in range(PER_CLASS):
            _jpeg(root / name / f"{name}{i}.jpg", (40 * k, 10 * i, 128))
    (root / "README.md").write_text("not an image")
    (root / "car" / "notes.txt").write_text("not an image either")
    return root


def test_list_images_labels_by_folder_in_label_order(imgdir):
    items = list_images(imgdir)
    assert len(items) == len(LABELS) * PER_CLASS
    assert all(p.parent.name == LABELS[y] for p, y in items)
    assert [y for _, y in items] == sorted(y for _, y in items)
    assert not any(p.suffix == ".txt" for p, _ in items)


def test_class_folders_must_match_the_shared_labels(imgdir):
    (imgdir / "pickup").rename(imgdir / "van")
    with pytest.raises(VehiclesError, match=r"missing \['pickup'\], unexpected \['van'\]"):
        list_images(imgdir)
    derived = list_images(imgdir, labels=None)  # classes taken from the folders present
    assert {p.parent.name for p, y in derived if y == 5} == {"van"}  # sorted: bike car jug minibus truck van


def test_split_is_stratified_disjoint_and_complete(imgdir):
    split = make_split(imgdir, val_fraction=0.2, seed=0)
    assert len(split.val) == len(LABELS) * round(PER_CLASS * 0.2)
    for k in range(len(LABELS)):
        assert sum(y == k for _, y in split.val) == 1
        assert sum(y == k for _, y in split.train) == PER_CLASS - 1
    assert not set(split.train) & set(split.val)
    assert set(split.train) | set(split.val) == set(list_images(imgdir))


def test_split_depends_on_the_seed_only(imgdir):
    assert make_split(imgdir, seed=3) == make_split(imgdir, seed=3)
    assert make_split(imgdir, seed=3).val != make_split(imgdir, seed=4).val


def test_split_refuses_bad_fractions_and_tiny_classes(imgdir):
    with pytest.raises(ValueError, match="val_fraction"):
        make_split(imgdir, val_fraction=1.0)
    with pytest.raises(VehiclesError, match="class 'bike' has 5 image"):
        make_split(imgdir, val_fraction=0.05)  # round(0.25) = 0: nothing to validate on


def test_saved_split_is_relative_and_round_trips(imgdir, tmp_path):
    split = make_split(imgdir, seed=7)
    path = save_split(split, tmp_path / "run" / "split.json")
    doc = json.loads(path.read_text())
    assert (doc["seed"], doc["val_fraction"], doc["labels"]) == (7, 0.2, list(LABELS))
    assert doc["sha256"] == split.sha256
    assert str(tmp_path) not in path.read_text()  # relative paths: the file survives a move
    assert ["car/car0.jpg", 1] in doc["train"] + doc["val"]
    assert load_split(path, imgdir) == split


def test_edited_split_file_is_refused(imgdir, tmp_path):
    path = save_split(make_split(imgdir), tmp_path / "split.json")
    doc = json.loads(path.read_text())
    doc["train"].append(doc["val"].pop())  # move a validation image into training
    path.write_text(json.dumps(doc))
    with pytest.raises(SplitError, match="was edited"):
        load_split(path, imgdir)
    path.write_text("{}")
    with pytest.raises(SplitError, match=r"missing key\(s\) \['schema'"):
        load_split(path, imgdir)


def test_split_for_makes_then_reuses_the_split_file(imgdir, tmp_path, monkeypatch):
    split_file = tmp_path / "split.json"
    first = split_for(imgdir, split_file, seed=1)
    assert split_file.is_file()

    def no_new_split(*a, **k):
        raise AssertionError("split_for re-split although the split file exists")

    monkeypatch.setattr(vehicles, "make_split", no_new_split)
    assert split_for(imgdir, split_file, seed=1) == first
    with pytest.raises(SplitError, match="made with seed=1.*but seed=2"):
        split_for(imgdir, split_file, seed=2)


def test_split_for_detects_a_changed_folder(imgdir, tmp_path):
    split_file = tmp_path / "split.json"
    split_for(imgdir, split_file, seed=0)
    _jpeg(imgdir / "truck" / "truck_new.jpg", (0, 0, 0))
    with pytest.raises(SplitError, match=r"1 image\(s\) not in the split \(e\.g\. \[\('truck/truck_new\.jpg', 5\)\]\)"):
        split_for(imgdir, split_file, seed=0)
    (imgdir / "truck" / "truck_new.jpg").unlink()
    (imgdir / "bike" / "bike0.jpg").unlink()
    gone = r"1 listed image\(s\) missing or relabelled \(e\.g\. \[\('bike/bike0\.jpg', 0\)\]\)"
    with pytest.raises(SplitError, match=gone):
        split_for(imgdir, split_file, seed=0)


def test_load_images_preprocesses_and_skips_unreadable_files(imgdir):
    items = list_images(imgdir)
    bad = imgdir / "minibus" / "minibus0.jpg"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated JPEG
    x, y, kept, n_skipped = load_images(items, ImageParams(size=(32, 32)), progress=False)
    assert n_skipped == 1 and (bad, 3) not in kept
    assert x.shape == (len(items) - 1, 3, 32, 32) and x.dtype == np.float32
    assert y.tolist() == [label for _, label in kept]


# --- the real data --------------------------------------------------------------------


def test_real_vehicles_have_640_per_class_and_split_512_128(data_dir, tmp_path):
    root = vehicles.find_root(data_dir)
    items = list_images(root)
    assert len(items) == 3840
    assert np.bincount([y for _, y in items]).tolist() == [640] * 6
    split = split_for(root, tmp_path / "split.json", seed=0)
    assert np.bincount([y for _, y in split.val]).tolist() == [128] * 6
    assert np.bincount([y for _, y in split.train]).tolist() == [512] * 6
    assert split_for(root, tmp_path / "split.json", seed=0).sha256 == split.sha256
    x, y, kept, n_skipped = load_images(split.val[::64], ImageParams(), progress=False)
    assert n_skipped == 0 and x.shape == (12, 3, 64, 64)
    assert np.isfinite(x).all() and -3 < x.mean() < 3
