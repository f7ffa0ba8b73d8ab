"""Real inputs for each task's benchmark and the device front-end that turns one into model features.

A "unit" is what a device pays per: a second of audio (noise: one 4 s window of a held-out
fold-2 clip), an image (vehicles: one held-out crop, JPEG decode included), a detector window
(congestion: one hour of a held-out detector's 5-minute speeds). Calibration data for an
INT8 rebuild comes from the training side (fold 1, training crops, training detectors),
as in the pipelines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from variants import REPO, shipped

N_ITEMS = 8  # the batch for throughput; item 0 is the batch-1 input


@dataclass
class TaskInputs:
    unit: str  # "s of audio", "image", "window"
    per_item: float  # units in one item
    items: list[Any]  # raw inputs as the device receives them
    frontend: Callable[[dict], Callable[[Any], np.ndarray]]  # contract frontend -> (raw -> features)
    calibration: Callable[[dict], np.ndarray]  # contract frontend -> (N, ...) training-side features


# ------------------------------------------------------------------------------ noise

def _audio_frontend(frontend: dict) -> Callable[[np.ndarray], np.ndarray]:
    from agent.features.audio import LogMelParams, log_mel
    from agent.features.resample import resample

    p = LogMelParams.from_dict(frontend)

    def run(wave16k: np.ndarray) -> np.ndarray:  # the teacher's includes 16 -> 32 kHz resampling
        x = wave16k if p.sample_rate == 16000 else resample(wave16k, 16000, p.sample_rate)
        return log_mel(x, p)[None]  # (1, n_mels, T): the CNNs' channel axis

    return run


def noise(data_dir: Path) -> TaskInputs:
    from compression.tasks.noise.urbansound import list_clips, load_clip

    root = data_dir / "urbansound8k"
    held_out = list_clips(root, folds=["fold2"])
    first_of_class = {}
    for c in held_out:
        first_of_class.setdefault(c.label, c)
    items = [load_clip(c.path, 16000, 4.0) for c in list(first_of_class.values())[:N_ITEMS]]

    def calibration(frontend: dict) -> np.ndarray:
        fe = _audio_frontend(frontend)
        train = list_clips(root, folds=["fold1"])[::25][:32]
        return np.stack([fe(load_clip(c.path, 16000, 4.0)) for c in train])

    return TaskInputs("s of audio", 4.0, items, _audio_frontend, calibration)


# --------------------------------------------------------------------------- vehicles

def _image_frontend(frontend: dict) -> Callable[[bytes], np.ndarray]:
    from agent.features.image import ImageParams, decode_image, preprocess

    p = ImageParams.from_dict(frontend)
    return lambda jpeg: preprocess(decode_image(jpeg), p)


def vehicles(data_dir: Path) -> TaskInputs:
    split = json.loads((REPO / "compression" / "recipes" / "vehicles_split.json").read_text())
    folder = data_dir / "vehicles"
    val = [folder / rel for rel, _ in split["val"]]
    items = [val[i].read_bytes() for i in np.linspace(0, len(val) - 1, N_ITEMS).astype(int)]

    def calibration(frontend: dict) -> np.ndarray:
        fe = _image_frontend(frontend)
        return np.stack([fe((folder / rel).read_bytes()) for rel, _ in split["train"][::40][:64]])

    return TaskInputs("image", 1.0, items, _image_frontend, calibration)


# ------------------------------------------------------------------------- congestion

def _detector_frontend(frontend: dict) -> Callable[[tuple], np.ndarray]:
    from agent.features.detector import DetectorParams, window_features

    p = DetectorParams.from_dict(frontend)
    # a device's usual speeds are one table per day (cached); per window only the lookup costs
    usual = np.full((2, p.steps_per_day), 60.0) if p.uses_profile else None
    return lambda w: window_features(w[0], w[1], w[2], p, usual)


def _windows(table, detectors: list[str], rows: range, history: int, n: int) -> list[tuple]:
    out = []
    for det in detectors:
        s = table.column(det)
        for r in rows:
            h = s[r - history + 1:r + 1]
            if len(h) == history and np.isfinite(h).all() and (h > 0).all():
                out.append((h.astype(np.float64), int(table.time_of_day[r]), int(table.weekday[r])))
                break
        if len(out) == n:
            break
    return out


def congestion(data_dir: Path) -> TaskInputs:
    from compression.tasks.congestion.traffic import load_speeds

    _, manifest, _ = shipped("congestion")
    ev = manifest.get("evaluation", {})
    table = load_speeds(data_dir / "traffic" / "los_speed.csv")
    history = manifest["frontend"]["history_steps"]
    start = int(ev.get("eval_start_row", history))
    items = _windows(table, ev.get("val_detectors") or list(table.ids), range(start, len(table.speeds)), history,
                     N_ITEMS)

    def calibration(frontend: dict) -> np.ndarray:
        fe = _detector_frontend(frontend)
        train = ev.get("train_detectors") or list(table.ids)
        return np.stack([fe(w) for w in _windows(table, train, range(history, start), history, 64)])

    return TaskInputs("window", 1.0, items, _detector_frontend, calibration)


TASKS = {"noise": noise, "vehicles": vehicles, "congestion": congestion}
