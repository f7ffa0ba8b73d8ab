"""Roadside vehicle crops: one folder per class, and a seeded, stratified, recorded split.

The data set has no official split, so we make one (per class, seeded) and save it as
JSON beside the run. Reusing that file keeps validation images out of training across
runs; if the folder changed since the split was made we stop instead of quietly
re-splitting. Decoding and preprocessing are the device's own (agent.features.image).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from agent.features.image import ImageDecodeError, ImageParams, load_image
from compression.datasets.datadir import resolve_data_dir

log = logging.getLogger(__name__)

SUBDIR = "vehicles"
LABELS = ("bike", "car", "juggernaut", "minibus", "pickup", "truck")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SPLIT_SCHEMA = 1

Item = tuple[Path, int]  # (image path, label index)


class VehiclesError(ValueError):
    """The image folder does not hold the expected classes."""


class SplitError(ValueError):
    """A split file that is malformed, altered, or no longer matches the image folder."""


def looks_like_vehicles(path: Path) -> bool:
    """A folder holding at least one of the class folders (used to resolve the data dir)."""
    return any((path / name).is_dir() for name in LABELS)


def find_root(arg: str | Path | None = None) -> Path:
    """The vehicles folder: ``arg`` may be the data root or the folder itself."""
    return resolve_data_dir(arg, SUBDIR, is_subdir=looks_like_vehicles)


def class_folders(root: str | Path) -> list[str]:
    """Names of the sub-folders of ``root`` (hidden ones excluded), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise VehiclesError(f"image folder {root} does not exist or is not a directory")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_images(root: str | Path, labels: Sequence[str] | None = LABELS) -> list[Item]:
    """(path, label index) for every image, sorted by class then file name.

    With ``labels`` (the shared set by default) the class folders must be exactly those,
    and the index is the position in ``labels``; with ``labels=None`` the classes are the
    folders present, in sorted order.
    """
    root = Path(root)
    present = class_folders(root)
    if labels is None:
        labels = present
    else:
        missing, extra = sorted(set(labels) - set(present)), sorted(set(present) - set(labels))
        if missing or extra:
            raise VehiclesError(f"class folders in {root} do not match the labels {list(labels)}: "
                                f"missing {missing}, unexpected {extra}")
    items, ignored = [], 0
    for index, name in enumerate(labels):
        for f in sorted((root / name).iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                items.append((f, index))
            elif not f.name.startswith("."):
                ignored += 1
    if ignored:
        log.warning("ignored %d non-image file(s) in the class folders of %s", ignored, root)
    return items


@dataclass(frozen=True)
class Split:
    root: Path
    labels: tuple[str, ...]
    train: tuple[Item, ...]
    val: tuple[Item, ...]
    seed: int
    val_fraction: float

    @property
    def sha256(self) -> str:
        """Hash of the labels and both lists (relative paths): the data list for manifests."""
        return _lists_sha256(self.labels, _relative(self.train, self.root), _relative(self.val, self.root))


def make_split(root: str | Path, val_fraction: float = 0.2, seed: int = 0,
               labels: Sequence[str] | None = LABELS) -> Split:
    """Seeded, stratified split: ``round(n * val_fraction)`` of each class go to validation."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    root = Path(root)
    items = list_images(root, labels)
    labels = tuple(labels) if labels is not None else tuple(class_folders(root))
    rng = np.random.default_rng(seed)
    train, val = [], []
    for index, name in enumerate(labels):
        members = [it for it in items if it[1] == index]  # already sorted: the seed alone decides
        n_val = int(round(len(members) * val_fraction))
        if n_val == 0 or n_val == len(members):
            raise VehiclesError(f"class {name!r} has {len(members)} image(s) in {root}: "
                                f"too few to split with val_fraction={val_fraction}")
        order = rng.permutation(len(members))
        val += [members[i] for i in sorted(order[:n_val])]
        train += [members[i] for i in sorted(order[n_val:])]
    return Split(root, labels, tuple(train), tuple(val), int(seed), float(val_fraction))


def save_split(split: Split, path: str | Path) -> Path:
    """Write the split as JSON: relative paths, labels, seed, and a sha256 of the lists."""
    path = Path(path)
    train, val = _relative(split.train, split.root), _relative(split.val, split.root)
    doc = {
        "schema": SPLIT_SCHEMA,
        "kind": "vehicles-split",
        "seed": split.seed,
        "val_fraction": split.val_fraction,
        "labels": list(split.labels),
        "sha256": split.sha256,
        "train": train,
        "val": val,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def load_split(path: str | Path, root: str | Path) -> Split:
    """Read a split file, resolving its relative paths against ``root``; checks its sha256."""
    path, root = Path(path), Path(root)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SplitError(f"cannot read split file {path}: {e}") from e
    needed = ("schema", "kind", "seed", "val_fraction", "labels", "sha256", "train", "val")
    if not isinstance(doc, dict) or any(k not in doc for k in needed):
        missing = [k for k in needed if not isinstance(doc, dict) or k not in doc]
        raise SplitError(f"split file {path} is missing key(s) {missing}")
    if doc["kind"] != "vehicles-split" or doc["schema"] != SPLIT_SCHEMA:
        raise SplitError(f"split file {path} is {doc['kind']!r} schema {doc['schema']}, "
                         f"expected 'vehicles-split' schema {SPLIT_SCHEMA}")
    labels = tuple(doc["labels"])
    train, val = _pairs(doc["train"], path, "train"), _pairs(doc["val"], path, "val")
    if _lists_sha256(labels, train, val) != doc["sha256"]:
        raise SplitError(f"split file {path} was edited: its lists no longer match its sha256")
    return Split(root, labels, tuple((root / p, y) for p, y in train),
                 tuple((root / p, y) for p, y in val), int(doc["seed"]), float(doc["val_fraction"]))


def split_for(root: str | Path, split_file: str | Path, seed: int = 0,
              val_fraction: float = 0.2, labels: Sequence[str] | None = LABELS) -> Split:
    """Reuse ``split_file`` when it exists (checking it still matches ``root``), else make and save one."""
    root, split_file = Path(root), Path(split_file)
    if not split_file.exists():
        split = make_split(root, val_fraction, seed, labels)
        save_split(split, split_file)
        log.info("made a new split (seed %d) of %s and saved it to %s", seed, root, split_file)
        return split

    split = load_split(split_file, root)
    if split.seed != seed or split.val_fraction != val_fraction:
        raise SplitError(f"split file {split_file} was made with seed={split.seed}, "
                         f"val_fraction={split.val_fraction}, but seed={seed}, val_fraction={val_fraction} "
                         f"was asked for; pass the file's values or delete the file to re-split")
    expected = tuple(labels) if labels is not None else tuple(class_folders(root))
    if split.labels != expected:
        raise SplitError(f"split file {split_file} has labels {list(split.labels)}, expected {list(expected)}")
    on_disk = set(_relative(list_images(root, labels), root))
    listed = set(_relative(split.train + split.val, root))
    if on_disk != listed:
        new, gone = sorted(on_disk - listed), sorted(listed - on_disk)
        raise SplitError(f"{root} changed since split file {split_file} was made: "
                         f"{len(new)} image(s) not in the split (e.g. {new[:3]}), "
                         f"{len(gone)} listed image(s) missing or relabelled (e.g. {gone[:3]}); "
                         f"delete the split file to re-split, knowing the validation set changes")
    return split


def load_images(items: Sequence[Item], params: ImageParams = ImageParams(),
                progress: bool | None = None) -> tuple[np.ndarray, np.ndarray, list[Item], int]:
    """(images (B, *params.output_shape) float32, labels (B,) int64, items kept, how many were unreadable)."""
    if progress is None:
        progress = sys.stderr.isatty()
    rows, kept, n_skipped = [], [], 0
    for path, label in tqdm(items, desc="images", unit="img", disable=not progress):
        try:
            rows.append(load_image(path, params))
        except ImageDecodeError as e:
            log.warning("skipping: %s", e)
            n_skipped += 1
            continue
        kept.append((path, label))
    if n_skipped:
        log.warning("skipped %d unreadable image(s) of %d", n_skipped, len(items))
    x = np.stack(rows) if rows else np.zeros((0, *params.output_shape), dtype=np.float32)
    return x, np.asarray([y for _, y in kept], dtype=np.int64), kept, n_skipped


def _relative(items: Sequence[Item], root: Path) -> list[tuple[str, int]]:
    out = []
    for p, y in items:
        try:
            out.append((Path(p).relative_to(root).as_posix(), int(y)))
        except ValueError:
            raise VehiclesError(f"image {p} is not under the data root {root}") from None
    return out


def _pairs(rows, path: Path, key: str) -> list[tuple[str, int]]:
    try:
        return [(str(p), int(y)) for p, y in rows]
    except (TypeError, ValueError) as e:
        raise SplitError(f"split file {path}: {key!r} must be a list of [relative path, label], ({e})") from e


def _lists_sha256(labels: Sequence[str], train, val) -> str:
    doc = {"labels": list(labels), "train": [list(t) for t in train], "val": [list(v) for v in val]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
