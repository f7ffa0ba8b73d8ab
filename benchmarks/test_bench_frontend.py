"""Front-end cost per second of audio, teacher (32 kHz, 128 mel, incl. 16->32 kHz resampling) vs student.

Run: .venv/bin/python -m pytest benchmarks -q --benchmark-json=benchmarks/results.json
Nothing here asserts a time: it measures and records.
"""

from __future__ import annotations

import numpy as np
import pytest

from agent.features.audio import STUDENT_LOGMEL, TEACHER_LOGMEL, log_mel
from agent.features.level import SoundLevelMeter
from agent.features.resample import resample

SECONDS = 4.0


@pytest.fixture(scope="module")
def wave16k() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (0.1 * rng.standard_normal(int(16000 * SECONDS))).astype(np.float32)


def test_teacher_frontend_per_clip(benchmark, wave16k):
    benchmark.extra_info["audio_seconds"] = SECONDS
    benchmark(lambda: log_mel(resample(wave16k, 16000, TEACHER_LOGMEL.sample_rate), TEACHER_LOGMEL))


def test_student_frontend_per_clip(benchmark, wave16k):
    benchmark.extra_info["audio_seconds"] = SECONDS
    benchmark(lambda: log_mel(wave16k, STUDENT_LOGMEL))


def test_sound_level_meter_per_clip(benchmark, wave16k):
    benchmark.extra_info["audio_seconds"] = SECONDS

    def run():
        meter = SoundLevelMeter(16000, calibration_db=100.0)
        meter.process(wave16k)
        return meter.summary()

    benchmark(run)
