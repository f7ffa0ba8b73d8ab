"""End-to-end cost per second of audio on this CPU: front-end (incl. resampling) + model, one thread.

Used by the pipeline to choose, per target, whether INT8 pays. The benchmark suite
(``benchmarks/``) measures the same things with pytest-benchmark; this is the quick,
in-pipeline version (median of repeated runs).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from agent.backends.onnx import OnnxBackend
from agent.features.audio import LogMelParams, log_mel
from agent.features.resample import resample


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up: first-run allocations and lazy initialisation
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def per_second_of_audio(onnx_path: Path, frontend: dict, wave: np.ndarray, source_rate: int,
                        repeats: int = 30) -> dict[str, float]:
    """ms per second of audio for one window of ``wave`` (at ``source_rate``): front-end, model, total."""
    params = LogMelParams.from_dict(frontend)
    seconds = len(wave) / source_rate
    backend = OnnxBackend(onnx_path, threads=1)

    def features() -> np.ndarray:
        x = wave if params.sample_rate == source_rate else resample(wave, source_rate, params.sample_rate)
        return log_mel(x, params)[None, None]

    x = features()
    fe = _median_ms(features, repeats)
    model = _median_ms(lambda: backend(x), repeats)
    return {"frontend_ms": fe / seconds, "model_ms": model / seconds, "total_ms": (fe + model) / seconds}
