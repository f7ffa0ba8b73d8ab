"""UrbanSound8K clips: list them by fold, load them as fixed-length mono float32.

Folds are the data set's own (slices of one recording stay in one fold), so callers
split by fold, never by random clip. The label comes from the file name
``{fsID}-{classID}-{occurrenceID}-{sliceID}.flac``; the folder a clip sits in is its fold.

Length fixes: longer clips are cropped from the start; shorter ones are *repeated* end
to end to fill the length, as the public copy of UrbanSound8K already did for every
training clip. Zero padding would show the model silence it never saw in training.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import soundfile as sf
from tqdm import tqdm

from agent.features.resample import resample
from compression.datasets.datadir import resolve_data_dir

log = logging.getLogger(__name__)

SUBDIR = "urbansound8k"
LABELS = ("air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling",
          "engine_idling", "gun_shot", "jackhammer", "siren", "street_music")

_NAME = re.compile(r"^(?P<fsid>\d+)-(?P<cls>\d+)-(?P<occ>\d+)-(?P<slice>\d+)\.(flac|wav)$",
                   re.IGNORECASE)
# Documentation beside the clips is expected; it is neither a clip nor a skipped file.
_NOT_CLIPS = {".md", ".txt", ".csv", ".json", ".yaml", ".yml"}


class UrbanSoundError(ValueError):
    """The clip folder is not what we expect (unknown fold, clip outside the root)."""


class ClipError(UrbanSoundError):
    """One clip could not be read; names the path and the reason."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"cannot load clip {path}: {reason}")
        self.path, self.reason = path, reason


@dataclass(frozen=True)
class Clip:
    path: Path
    fold: str  # folder name, "" for clips directly in the root
    label: int  # index into LABELS
    fsid: str  # freesound recording id: slices of one recording share it


class ClipList(list):
    """A list of Clip that also remembers the files it skipped (names not like UrbanSound's)."""

    def __init__(self, clips: Iterable[Clip] = (), skipped: Sequence[Path] = ()):
        super().__init__(clips)
        self.skipped = tuple(skipped)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


def looks_like_urbansound(path: Path) -> bool:
    """A folder holding fold sub-folders or clips directly (used to resolve the data dir)."""
    return any(p.is_dir() and p.name.lower().startswith("fold") for p in path.iterdir()) or \
        any(_NAME.match(p.name) for p in path.iterdir() if p.is_file())


def find_root(arg: str | Path | None = None) -> Path:
    """The UrbanSound8K folder: ``arg`` may be the data root or the folder itself."""
    return resolve_data_dir(arg, SUBDIR, is_subdir=looks_like_urbansound)


def _natural(s: str) -> list:
    """Sort key putting fold2 before fold10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _candidate_files(root: Path) -> list[tuple[str, Path]]:
    """(fold, file) for files directly in root and one folder down, hidden files excluded."""
    out = []
    for entry in root.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            out += [(entry.name, f) for f in entry.iterdir() if f.is_file() and not f.name.startswith(".")]
        elif entry.is_file():
            out.append(("", entry))
    return out


def list_clips(root: str | Path, folds: Sequence[str] | None = None) -> ClipList:
    """Clips under ``root`` (optionally only ``folds``), sorted by fold then file name.

    Files whose names are not UrbanSound8K clip names (or whose class id is not 0-9) are
    skipped, counted in ``.skipped`` and reported with one warning.
    """
    root = Path(root)
    if not root.is_dir():
        raise UrbanSoundError(f"clip folder {root} does not exist or is not a directory")
    if folds is not None:
        present = set(available_folds(root))
        unknown = [f for f in folds if f not in present]
        if unknown:
            raise UrbanSoundError(f"fold(s) {unknown} not found in {root}; available: {sorted(present, key=_natural)}")
    wanted = None if folds is None else set(folds)

    clips, skipped = [], []
    for fold, path in _candidate_files(root):
        if wanted is not None and fold not in wanted:
            continue
        m = _NAME.match(path.name)
        if m is None or int(m["cls"]) >= len(LABELS):
            if path.suffix.lower() not in _NOT_CLIPS:
                skipped.append(path)
            continue
        clips.append(Clip(path=path, fold=fold, label=int(m["cls"]), fsid=m["fsid"]))
    clips.sort(key=lambda c: (_natural(c.fold), c.path.name))
    skipped.sort()
    if skipped:
        log.warning("skipped %d file(s) under %s whose names are not UrbanSound8K clips, e.g. %s",
                    len(skipped), root, skipped[0])
    return ClipList(clips, skipped)


def deal_recordings(clips: Sequence[Clip], parts: int, seed: int = 0) -> list[int]:
    """The part (0 .. parts - 1) of each clip: whole recordings (fsID) are dealt round the parts in a
    seeded order, class by class, so no recording is split and every part gets its share of each class."""
    by_class: dict[int, set[str]] = {}
    for c in clips:  # a recording belongs to the class of its first clip (one class in all but a few)
        if not any(c.fsid in ids for ids in by_class.values()):
            by_class.setdefault(c.label, set()).add(c.fsid)
    rng = np.random.default_rng(seed)
    part_of, k = {}, 0
    for label in sorted(by_class):
        for fsid in rng.permutation(sorted(by_class[label])):
            part_of[str(fsid)], k = k % parts, k + 1  # k runs on across classes: the parts stay level
    return [part_of[c.fsid] for c in clips]


def available_folds(root: str | Path) -> list[str]:
    """Folds (folder names, "" for the root itself) that hold at least one clip, in natural order."""
    folds = {fold for fold, path in _candidate_files(Path(root)) if _NAME.match(path.name)}
    return sorted(folds, key=_natural)


# Each kind of fix (resample, downmix, crop, pad) is logged once per process: enough
# to notice that the data is not what the README promised, without a line per clip.
_LOGGED_FIXES: set[str] = set()


def _note_fix(kind: str, message: str, *args) -> None:
    if kind not in _LOGGED_FIXES:
        _LOGGED_FIXES.add(kind)
        log.warning("%s (logged once per kind): " + message, kind, *args)


def load_clip(path: str | Path, sample_rate: int = 16000, seconds: float = 4.0) -> np.ndarray:
    """The clip as float32 mono of exactly ``round(seconds * sample_rate)`` samples."""
    path = Path(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as e:
        raise ClipError(path, str(e) or type(e).__name__) from e
    if data.shape[0] == 0:
        raise ClipError(path, "no samples")
    if not np.all(np.isfinite(data)):
        raise ClipError(path, "contains NaN or infinite samples")

    if data.shape[1] > 1:
        _note_fix("downmix", "mixed %d channels to mono (mean), first in %s", data.shape[1], path)
    x = data.mean(axis=1, dtype=np.float32)
    if sr != sample_rate:
        _note_fix("resample", "resampled %d Hz -> %d Hz, first in %s", sr, sample_rate, path)
        x = resample(x, sr, sample_rate)

    n = int(round(seconds * sample_rate))
    if x.shape[0] > n:
        _note_fix("crop", "cropped %d -> %d samples (kept the start), first in %s", x.shape[0], n, path)
        x = x[:n]
    elif x.shape[0] < n:
        _note_fix("pad", "repeated %d samples end to end to fill %d, first in %s", x.shape[0], n, path)
        x = np.tile(x, -(-n // x.shape[0]))[:n]
    return np.ascontiguousarray(x, dtype=np.float32)


def load_clips(clips: Sequence[Clip], sample_rate: int = 16000, seconds: float = 4.0,
               progress: bool | None = None) -> tuple[np.ndarray, list[Clip], int]:
    """(waveforms (B, N) float32, the clips that loaded, how many were skipped as unreadable).

    ``progress=None`` shows a bar only on a terminal, so CI logs stay clean.
    """
    n = int(round(seconds * sample_rate))
    if progress is None:
        progress = sys.stderr.isatty()
    rows, kept, n_skipped = [], [], 0
    for clip in tqdm(clips, desc="clips", unit="clip", disable=not progress):
        try:
            rows.append(load_clip(clip.path, sample_rate, seconds))
        except ClipError as e:
            log.warning("skipping: %s", e)
            n_skipped += 1
            continue
        kept.append(clip)
    if n_skipped:
        log.warning("skipped %d unreadable clip(s) of %d", n_skipped, len(clips))
    x = np.stack(rows) if rows else np.zeros((0, n), dtype=np.float32)
    return x, kept, n_skipped


def data_list_sha256(clips: Iterable[Clip], root: str | Path) -> str:
    """sha256 of the sorted "relative/path<TAB>label" lines: identifies the data list in manifests."""
    root = Path(root)
    lines = sorted(f"{_relative(c.path, root)}\t{c.label}\n" for c in clips)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        pass
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise UrbanSoundError(f"clip {path} is not under the data root {root}") from None
