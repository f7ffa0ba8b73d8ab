"""``roadside demo``: a street scene through the device's audio front-ends.

A placeholder for the full demo (embedded broker, agent, alerts upstream), which
needs the agent itself. What it shows already runs on the device's code path:
audio arrives in 100 ms chunks as from a microphone, the streaming log-mel front-
end turns it into frames, and the sound level meter reports LAeq / LAFmax each
second and L10 / L90 for the whole scene. No torch, no network.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from .features.audio import STUDENT_LOGMEL, StreamingLogMel
from .features.level import SoundLevelMeter
from .features.resample import resample

SAMPLE_RATE = STUDENT_LOGMEL.sample_rate
CHUNK_SECONDS = 0.1
# Uncalibrated demo microphone: dBFS + 100 -> dB SPL (a real device reads this from its config,
# set with a 94 dB calibrator).
DEMO_CALIBRATION_DB = 100.0
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LABELS = ("air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling",
          "engine_idling", "gun_shot", "jackhammer", "siren", "street_music")


def _find_clips(data: str | None) -> list[Path]:
    """Clips from ``--data``, else $ROADSIDE_DATA, else ../shared/data; [] means "play a synthetic scene".

    A directory the user named and that holds no clips is an error, never a silent fallback.
    """
    named = data or os.environ.get("ROADSIDE_DATA")
    root = Path(named) if named else DEFAULT_DATA
    folder = root / "urbansound8k" if (root / "urbansound8k").is_dir() else root
    clips = sorted(folder.glob("fold*/*.flac")) or sorted(folder.glob("*.flac"))
    if named and not clips:
        raise FileNotFoundError(f"no UrbanSound8K clips in {root} (looked in {folder}/fold*/ and {folder}/)")
    return clips


def real_scene(clips: list[Path], seconds: float) -> tuple[np.ndarray, list[str]]:
    """One clip of each class in turn (deterministic), until ``seconds`` are filled."""
    by_class: dict[int, list[Path]] = {}
    for c in clips:
        by_class.setdefault(int(c.name.split("-")[1]), []).append(c)
    order = [8, 1, 5, 3, 7, 9, 0, 4, 2, 6]  # siren first: the loudest story
    parts, story, total = [], [], 0
    while total < seconds * SAMPLE_RATE:
        cls = order[len(parts) % len(order)]
        pool = by_class.get(cls)
        if not pool:
            order.remove(cls)
            if not order:
                break
            continue
        path = pool[(len(parts) // len(order)) % len(pool)]
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
        x = resample(x.mean(axis=1), sr, SAMPLE_RATE)
        parts.append(x)
        story.append(f"{total / SAMPLE_RATE:5.1f}s {LABELS[cls]} ({path.name})")
        total += len(x)
    return np.concatenate(parts)[: int(seconds * SAMPLE_RATE)], story


def synthetic_scene(seconds: float) -> tuple[np.ndarray, list[str]]:
    """Traffic-like noise with a siren sweep and two horn blasts. Generated, not recorded."""
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
    story = ["  0.0s traffic noise (synthetic)", f"{seconds * 0.3:5.1f}s siren sweep (synthetic)",
             f"{seconds * 0.75:5.1f}s two horn blasts (synthetic)"]
    return x.astype(np.float32), story


def run_demo(duration: float = 20.0, data: str | None = None) -> int:
    if not duration > 0:
        raise ValueError(f"--duration must be positive, got {duration}")
    clips = _find_clips(data)
    if clips:
        wave, story = real_scene(clips, duration)
        print(f"roadside demo: a street scene of {len(wave) / SAMPLE_RATE:.0f} s from real UrbanSound8K clips")
    else:
        wave, story = synthetic_scene(duration)
        print(f"roadside demo: no data directory found, so this scene is SYNTHETIC ({duration:.0f} s)")
    print("(placeholder until the agent lands: front-ends and sound level meter only; no broker, no models)")
    for line in story:
        print("  " + line)

    frontend = StreamingLogMel(STUDENT_LOGMEL)
    meter = SoundLevelMeter(SAMPLE_RATE, calibration_db=DEMO_CALIBRATION_DB)
    whole = SoundLevelMeter(SAMPLE_RATE, calibration_db=DEMO_CALIBRATION_DB)
    chunk = int(CHUNK_SECONDS * SAMPLE_RATE)
    frames = 0
    print(f"\n  time   LAeq,1s  LAFmax,1s  log-mel frames ({STUDENT_LOGMEL.n_mels} mel, 16 kHz)")
    for start in range(0, len(wave), chunk):
        piece = wave[start:start + chunk]
        frames += frontend.push(piece).shape[1]
        meter.process(piece)
        whole.process(piece)
        end = start + len(piece)
        if end % SAMPLE_RATE == 0 or end == len(wave):
            s = meter.summary(reset=True)
            print(f"  {end / SAMPLE_RATE:5.1f}s  {s.laeq:6.1f} dB  {s.lafmax:6.1f} dB  {frames:6d}")
    s = whole.summary()
    fmt = lambda v: "n/a" if math.isnan(v) else f"{v:.1f} dB(A)"  # noqa: E731
    print(f"\nscene: LAeq {fmt(s.laeq)}, LAFmax {fmt(s.lafmax)}, L10 {fmt(s.l10)}, L90 {fmt(s.l90)} "
          f"over {s.seconds:.1f} s (demo calibration: dBFS + {DEMO_CALIBRATION_DB:.0f})")
    return 0
