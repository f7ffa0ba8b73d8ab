"""Front-end cost alone, per unit: per second of audio, per image, per detector window.

Audio: the teacher's (16 -> 32 kHz resampling + 128-mel log-mel), the student's (its contract's
log-mel at 16 kHz), the streaming log-mel in 100 ms chunks as the microphone delivers it, and
the sound level meter; on a real 4 s clip. Image: JPEG decode + resize + normalise of a real
crop. Detector: one step pushed into a full detector window (the device's streaming path).
Nothing here asserts a time: it measures and records.
"""

from __future__ import annotations

import numpy as np
import pytest

import inputs
from agent.features.audio import TEACHER_LOGMEL, LogMelParams, StreamingLogMel, log_mel
from agent.features.level import SoundLevelMeter
from agent.features.resample import resample
from variants import Unavailable, shipped

GROUP = "front-ends alone"


@pytest.fixture(scope="module")
def wave(data_dir) -> np.ndarray:
    return inputs.noise(data_dir).items[0]  # a held-out fold-2 clip, 4 s at 16 kHz


def _student(task: str) -> dict:
    try:
        return shipped(task)[1]["frontend"]
    except Unavailable as e:
        pytest.skip(str(e))


def _mark(benchmark, name: str, per: float, unit: str) -> None:
    benchmark.extra_info.update(compare=GROUP, per=per, unit=unit)
    benchmark.group = GROUP
    benchmark.name = name


def test_teacher_logmel(benchmark, wave):
    _mark(benchmark, "noise teacher log-mel (+ resampling)", len(wave) / 16000, "s of audio")
    benchmark(lambda: log_mel(resample(wave, 16000, TEACHER_LOGMEL.sample_rate), TEACHER_LOGMEL))


def test_student_logmel(benchmark, wave):
    p = LogMelParams.from_dict(_student("noise"))
    _mark(benchmark, "noise student log-mel", len(wave) / 16000, "s of audio")
    benchmark(lambda: log_mel(wave, p))


def test_student_logmel_streaming_100ms_chunks(benchmark, wave):
    p = LogMelParams.from_dict(_student("noise"))
    chunks = np.split(wave, len(wave) // 1600)

    def run():
        fe = StreamingLogMel(p)
        return [fe.push(c) for c in chunks]

    _mark(benchmark, "noise student log-mel, streamed", len(wave) / 16000, "s of audio")
    benchmark(run)


def test_sound_level_meter(benchmark, wave):
    def run():
        meter = SoundLevelMeter(16000, calibration_db=100.0)
        meter.process(wave)
        return meter.summary()

    _mark(benchmark, "sound level meter (LAeq..L90)", len(wave) / 16000, "s of audio")
    benchmark(run)


def test_image_decode_and_preprocess(benchmark, data_dir):
    fe = inputs._image_frontend(_student("vehicles"))
    crop = inputs.vehicles(data_dir).items[0]
    _mark(benchmark, "vehicles JPEG decode + preprocess", 1, "image")
    out = benchmark(lambda: fe(crop))
    assert out.dtype == np.float32


def test_detector_window_step(benchmark, data_dir):
    from agent.features.detector import DetectorParams, DetectorWindow

    p = DetectorParams.from_dict(_student("congestion"))
    speeds, tod, weekday = inputs.congestion(data_dir).items[0]
    window = DetectorWindow(p)
    steps = p.steps_per_day * 7
    # n counts steps from a Monday midnight 8 weeks back: the week step and the day number follow from it
    n0 = 8 * steps + weekday * p.steps_per_day + tod - len(speeds) + 1
    if p.uses_profile:  # a device that has run for days: its profile knows yesterday's speeds
        for k in range(p.steps_per_day):
            n = n0 - p.steps_per_day + k
            window.profile.add(60.0, n // p.steps_per_day, n % p.steps_per_day, (n % steps) // p.steps_per_day)

    def push(v: float, n: int):
        t = n % steps
        return window.push(v, int(t % p.steps_per_day), int(t // p.steps_per_day), n // p.steps_per_day)

    for i, v in enumerate(speeds[:-1]):
        push(float(v), n0 + i)
    state = {"n": n0 + len(speeds) - 2}  # the last prefilled step

    def step():  # one new reading into a full window: the features of the hour ending now
        state["n"] += 1
        return push(float(speeds[-1]), state["n"])

    _mark(benchmark, "congestion detector window step", 1, "window")
    out = benchmark(step)
    assert out is not None and out.shape == (p.n_features,)
