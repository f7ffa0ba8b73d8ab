"""The street scene ``roadside demo`` replays: real recordings when a data folder is found, else generated.

Each stream is real or synthetic on its own, and says which:
- audio: UrbanSound8K clips, preferably fold 2 (held out from training), one recording per
  class in turn, consecutive slices of it for up to ``SEGMENT_S`` seconds;
- camera: vehicle crops, preferably the recorded validation split, two of a class in turn;
- detector: Los-loop 5-minute speeds of a held-out detector (the shipped congestion
  manifest names them), starting an hour before its first jam in evaluation time, one
  reading per second of demo.
The files are written (or linked) into a work folder as ``roadside replay`` plays them.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
SEGMENT_S = 8.0
REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
NOISE_LABELS = ("air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling", "engine_idling",
                "gun_shot", "jackhammer", "siren", "street_music")
# Alerting classes alternate with background ones; siren first: the loudest story.
AUDIO_ORDER = ("siren", "dog_bark", "street_music", "car_horn", "jackhammer", "engine_idling", "drilling",
               "children_playing", "gun_shot", "air_conditioner")
VEHICLE_ORDER = ("car", "truck", "bike", "juggernaut", "pickup", "minibus")
LOS_START = dt.datetime(2012, 3, 1, tzinfo=dt.timezone.utc)  # row 0 of los_speed.csv (its README)
STEP_S = 300


@dataclass
class Scene:
    audio: Path | None = None
    images: Path | None = None
    detectors: Path | None = None
    story: list[str] = field(default_factory=list)
    synthetic: list[str] = field(default_factory=list)  # streams that were generated, not recorded


def find_data(data: str | None) -> Path | None:
    """``--data``, else $ROADSIDE_DATA, else ../shared/data; None means "generate the scene".

    A folder the user named must exist and hold at least one of the three sources.
    """
    named = data or os.environ.get("ROADSIDE_DATA")
    root = Path(named) if named else DEFAULT_DATA
    if not named:
        return root if root.is_dir() else None
    tried = [root / "urbansound8k", root / "vehicles", root / "traffic" / "los_speed.csv"]
    if not root.is_dir() or not any(p.exists() for p in tried):
        raise FileNotFoundError(f"no demo data in {root}: looked for " + ", ".join(str(p) for p in tried))
    return root


# ------------------------------------------------------------------------------ audio

def _clips(root: Path) -> list[Path]:
    folder = root / "urbansound8k" if (root / "urbansound8k").is_dir() else root
    held_out = sorted((folder / "fold2").glob("*.flac"))
    return held_out or sorted(folder.glob("fold*/*.flac")) or sorted(folder.glob("*.flac"))


def _recordings(clips: list[Path]) -> dict[int, list[list[Path]]]:
    """class id -> recordings (fsID-class-occurrence), each its slices in order; longest first."""
    groups: dict[tuple[int, int, int], list[tuple[int, Path]]] = {}
    for c in clips:
        parts = c.stem.split("-")
        if len(parts) != 4 or not all(p.isdigit() for p in parts):
            continue
        fs, cls, occ, sl = map(int, parts)
        groups.setdefault((cls, fs, occ), []).append((sl, c))
    out: dict[int, list[list[Path]]] = {}
    for (cls, fs, occ), slices in sorted(groups.items()):
        out.setdefault(cls, []).append([p for _, p in sorted(slices)])
    for recs in out.values():
        recs.sort(key=len, reverse=True)  # stable: ties keep (fsID, occurrence) order
    return out


def real_audio(root: Path, seconds: float, work: Path) -> tuple[Path, list[str]] | None:
    import soundfile as sf

    recs = _recordings(_clips(root))
    if not recs:
        return None
    out = work / "audio"
    out.mkdir(parents=True)
    story, t, n, round_ = [], 0.0, 0, 0
    while seconds - t >= 0.01:
        progressed = False
        for name in AUDIO_ORDER:
            pool = recs.get(NOISE_LABELS.index(name), [])
            if seconds - t < 0.01 or round_ >= len(pool):
                continue
            seg, first = 0.0, t
            for clip in pool[round_]:
                if seg >= SEGMENT_S or seconds - t < 0.01:
                    break
                info = sf.info(str(clip))
                if t + info.duration > seconds:  # the scene ends exactly at ``seconds``: its last clip is cut
                    x, sr = sf.read(str(clip), dtype="float32", frames=int(round((seconds - t) * info.samplerate)))
                    sf.write(str(out / f"{n:03d}-{clip.stem}-cut.wav"), x, sr)
                    d = seconds - t
                else:
                    (out / f"{n:03d}-{clip.name}").symlink_to(clip.resolve())
                    d = info.duration
                n, seg, t = n + 1, seg + d, t + d
            story.append(f"{first:5.1f} s  {name} ({pool[round_][0].parent.name}/{pool[round_][0].stem}, "
                         f"{seg:.1f} s)")
            progressed = True
        round_ += 1
        if not progressed:
            break
    return out, story


def synthetic_audio(seconds: float, work: Path) -> tuple[Path, list[str]]:
    """Traffic-like noise with a siren sweep and two horn blasts. Generated, not recorded."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    brown = np.cumsum(rng.standard_normal(n)).astype(np.float32)
    brown -= np.convolve(brown, np.ones(1601) / 1601, mode="same")  # remove the drift
    x = 0.02 * brown / (np.abs(brown).max() + 1e-9)
    siren = (t > seconds * 0.3) & (t < seconds * 0.6)
    x += siren * 0.2 * np.sin(2 * np.pi * (700 * t + 150 * np.sin(2 * np.pi * 0.5 * t) / (2 * np.pi * 0.5)))
    for start in (0.75, 0.8):
        horn = (t > seconds * start) & (t < seconds * start + 0.4)
        x += horn * 0.3 * np.sign(np.sin(2 * np.pi * 420 * t))
    path = work / "audio.wav"
    sf.write(str(path), x.astype(np.float32), SAMPLE_RATE)
    return path, ["  0.0 s  traffic noise (synthetic)", f"{seconds * 0.3:5.1f} s  siren sweep (synthetic)",
                  f"{seconds * 0.75:5.1f} s  two horn blasts (synthetic)"]


# ----------------------------------------------------------------------------- camera

def _held_out_crops(root: Path) -> dict[str, list[Path]]:
    split = REPO / "compression" / "recipes" / "vehicles_split.json"
    folder = root / "vehicles"
    by_class: dict[str, list[Path]] = {}
    if split.is_file():
        for rel, _ in json.loads(split.read_text()).get("val", []):
            if (folder / rel).is_file():
                by_class.setdefault(Path(rel).parent.name, []).append(folder / rel)
    if not by_class:
        for d in sorted(p for p in folder.iterdir() if p.is_dir()):
            by_class[d.name] = sorted(d.glob("*.jpg")) + sorted(d.glob("*.png"))
    return by_class


def real_images(root: Path, seconds: float, work: Path) -> tuple[Path, list[str]] | None:
    if not (root / "vehicles").is_dir():
        return None
    by_class = _held_out_crops(root)
    order = [c for c in VEHICLE_ORDER if by_class.get(c)] + sorted(set(by_class) - set(VEHICLE_ORDER))
    if not order:
        return None
    out = work / "images"
    out.mkdir(parents=True)
    n = 0
    while n < int(seconds):
        cls = order[(n // 2) % len(order)]
        crop = by_class[cls][(n // (2 * len(order)) * 2 + n % 2) % len(by_class[cls])]
        (out / f"{n:04d}-{cls}-{crop.name}").symlink_to(crop.resolve())
        n += 1
    return out, [f"one crop per second, two of each class in turn: {', '.join(order)} (held-out crops)"]


def synthetic_images(seconds: float, work: Path) -> tuple[Path, list[str]]:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(1)
    out = work / "images"
    out.mkdir(parents=True)
    for n in range(int(seconds)):
        img = Image.new("RGB", (100, 100), (90, 90, 90))
        w, h = int(rng.integers(30, 90)), int(rng.integers(20, 60))
        ImageDraw.Draw(img).rectangle((50 - w // 2, 50 - h // 2, 50 + w // 2, 50 + h // 2),
                                      fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        img.save(out / f"{n:04d}.png")
    return out, ["one generated crop per second: a coloured box on grey (synthetic)"]


# --------------------------------------------------------------------------- detector

def _shipped_manifest(consumes: str) -> dict:
    """The manifest of the shipped model that reads ``consumes`` (the agent's task registry says which task)."""
    from agent.tasks import registry

    for name, spec in registry.specs().items():
        if spec.consumes == consumes and spec.has_model:
            try:
                return json.loads((REPO / "agent" / "models" / name / "manifest.json").read_text())
            except (OSError, ValueError):
                continue
    return {}


def _held_out_detectors(ids: list[str]) -> tuple[list[str], int]:
    """(detectors never trained on, first row of evaluation time) from the shipped detector model's manifest."""
    ev = _shipped_manifest("detector").get("evaluation", {})
    val = [d for d in ev.get("val_detectors", []) if d in ids]
    return (val, int(ev.get("eval_start_row", 0))) if val else (ids, 0)


def real_detectors(root: Path, seconds: float, work: Path, congested_mph: float = 35.0,
                   history: int = 12) -> tuple[Path, list[str]] | None:
    path = root / "traffic" / "los_speed.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    ids, table = rows[0], np.array([[float(v) if v else np.nan for v in r] for r in rows[1:]])
    candidates, start_row = _held_out_detectors(ids)
    steps = max(int(seconds), 1)
    for det in candidates:
        speed = table[:, ids.index(det)]
        slow = speed < congested_mph
        for r in range(start_row + history + 6, len(speed) - 3):  # a jam of 3+ steps, an hour of history first
            if slow[r:r + 3].all() and not slow[r - history - 6:r].any():
                first = r - history - 6
                break
        else:
            continue
        picked = [(first + i, speed[first + i]) for i in range(min(steps, len(speed) - first))]
        out = work / "detectors.csv"
        with open(out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ts", "sensor", "speed_mph"])
            for row, v in picked:
                w.writerow([int((LOS_START + dt.timedelta(seconds=STEP_S * row)).timestamp() * 1000), det,
                            "" if math.isnan(v) else f"{v:.1f}"])
        t0 = LOS_START + dt.timedelta(seconds=STEP_S * first)
        return out, [f"detector {det} (held out): its 5-minute speeds from {t0:%a %d %b %Y %H:%M} UTC, "
                     f"one step per second; below {congested_mph:.0f} mph from step {r - first + 1}"]
    return None


def synthetic_detectors(seconds: float, work: Path) -> tuple[Path, list[str]]:
    rng = np.random.default_rng(2)
    steps = max(int(seconds), 1)
    t0 = dt.datetime(2024, 5, 2, 6, 0, tzinfo=dt.timezone.utc)
    jam = range(int(steps * 0.45), int(steps * 0.75))
    out = work / "detectors.csv"
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ts", "sensor", "speed_mph"])
        for i in range(steps):
            v = (22.0 if i in jam else 63.0) + rng.normal(0, 2.0)
            w.writerow([int((t0 + dt.timedelta(seconds=STEP_S * i)).timestamp() * 1000), "loop0", f"{v:.1f}"])
    return out, [f"detector loop0: free flow, a jam at {jam.start} s to {jam.stop} s (synthetic)"]


# ------------------------------------------------------------------------------ scene

def build_scene(root: Path | None, seconds: float, work: Path, inputs: set[str]) -> Scene:
    """The streams the configured tasks consume (``inputs``: audio, camera, detector), real where possible."""
    scene = Scene()
    makers = {"audio": (real_audio, synthetic_audio, "audio"), "camera": (real_images, synthetic_images, "images"),
              "detector": (real_detectors, synthetic_detectors, "detectors")}
    for kind in ("audio", "camera", "detector"):
        if kind not in inputs:
            continue
        real, synthetic, attr = makers[kind]
        got = real(root, seconds, work) if root is not None else None
        if got is None:
            got = synthetic(seconds, work)
            scene.synthetic.append(kind)
        setattr(scene, attr, got[0])
        scene.story += [f"{kind:8s} {line}" for line in got[1]]
    return scene
