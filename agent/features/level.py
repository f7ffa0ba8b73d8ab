"""Sound level meter after IEC 61672-1:2013 (A-weighting, Fast time weighting), numpy/scipy.

Levels
------
Digital levels are in dBFS with the AES17 reference: a full-scale sine (amplitude 1.0,
RMS 1/sqrt(2)) reads 0 dBFS, so dBFS = 10 log10(mean(x^2) / 0.5). A meter reports
dB SPL = dBFS + ``calibration_db``; ``calibration_offset`` derives that offset from a
recording of an acoustic calibrator (94 dB SPL at 1 kHz, where A-weighting is 0 dB).
Digital silence reads -inf.

A-weighting
-----------
``a_weighting_db`` is the standard's analytic design goal (Annex E): poles at 20.598997,
107.65265, 737.86223 and 12194.217 Hz, normalised to exactly 0 dB at 1 kHz (the
standard's rounded constant A1000 = -2.000 dB differs by 3e-4 dB).

``a_weighting_sos`` makes the digital filter. The low-frequency part (the four zeros at
DC and the poles at 20.6, 107.7 and 737.9 Hz) goes through the bilinear transform: at
these frequencies frequency warping is negligible at any supported rate. The 12.2 kHz
double pole is the problem: it is near or above Nyquist, and the bilinear transform
squeezes the whole analog axis into 0..fs/2, so the plain design reads -0.48 dB at 4 kHz,
-1.5 dB at 5 kHz and -5.8 dB at 6.3 kHz when fs = 16 kHz (-1.4 dB at 8 kHz, -3.7 dB at
10 kHz when fs = 32 kHz). Pre-warping fixes one frequency only, and running the filter
at a higher rate costs a resampler per chunk. Instead that pole pair is replaced by a
biquad (two real zeros, two real poles) fitted by least squares, in dB, so that the whole
cascade follows the analog curve from 200 Hz to 99 % of Nyquist (at most 22.4 kHz).
Phase is not matched; a level meter only needs magnitude.

Measured deviation from the design goal at the exact IEC table frequencies
(1000 * 10^(n/10) Hz, 10 Hz .. 20 kHz), all far inside the class-1 acceptance limits:
- 16 kHz: the 30 frequencies up to 8 kHz nominal (7943 Hz exact): |dev| <= 0.09 dB
  (<= 0.04 dB up to 6.3 kHz).
- 32 kHz: the 33 frequencies up to 16 kHz nominal (15849 Hz exact): |dev| <= 0.10 dB
  (<= 0.02 dB up to 12.5 kHz).
- 44.1 and 48 kHz: all 34 frequencies up to 20 kHz: |dev| <= 0.07 dB.
(The tightest class-1 limits are +-0.7 dB at 1 kHz and +-1.0 dB from 40 Hz to 4 kHz.)
Out of reach: table frequencies at or above Nyquist (10, 12.5, 16, 20 kHz at 16 kHz;
20 kHz at 32 kHz). Their lower limits are -3.0, -5.0, -16 and -inf dB, i.e. a real
class-1 meter must respond there; a 16 kHz device therefore is not a class-1 instrument
and neither is a 32 kHz one, strictly (20 kHz has no lower limit, so 32 kHz misses only
by the signal it cannot see). The deviation near Nyquist also says nothing of the ADC's
anti-alias filter and the microphone, which a conformance test includes.

Time weighting and statistics
-----------------------------
Fast: exponential averaging of the squared A-weighted signal with tau = 125 ms
(first-order IIR, state kept across chunks). LAFmax is the maximum of LAF at every
sample. L10 and L90 are the 90th and 10th percentiles (no interpolation) of LAF sampled
every 10 ms (at the end of each 10 ms block, counted from the meter's start, so chunking does not
matter). The Fast detector starts from silence, so LAF samples of the first 5 tau
(0.625 s; until then a steady signal reads more than 0.03 dB low) after construction or
``restart()`` are left out of the percentiles; ``summary(reset=True)`` starts a new
period without resetting the detector, as a running meter does.
Memory: 100 LAF samples per second (0.8 kB/s, 2.9 MB for an hour's period).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import optimize, signal

# IEC 61672-1:2013 Annex E pole frequencies (Hz).
F1, F2, F3, F4 = 20.598997, 107.65265, 737.86223, 12194.217
FAST_TAU = 0.125  # s
FULL_SCALE_SINE_MS = 0.5  # mean square of a full-scale sine: the 0 dBFS reference
MIN_SAMPLE_RATE = 8000
STATS_INTERVAL = 0.01  # s between LAF samples for L10/L90
WARMUP_TAUS = 5


class LevelMeterError(ValueError):
    """Invalid sound-level-meter parameters or input."""


# ------------------------------------------------------------------------ A-weighting

def _a_weighting_unnormalised_db(f: np.ndarray) -> np.ndarray:
    f2 = f * f
    num = F4 ** 2 * f2 ** 2
    den = (f2 + F1 ** 2) * np.sqrt(f2 + F2 ** 2) * np.sqrt(f2 + F3 ** 2) * (f2 + F4 ** 2)
    with np.errstate(divide="ignore"):
        return 20.0 * np.log10(num / den)


def a_weighting_db(freqs: Any) -> np.ndarray:
    """The analog A-weighting design goal in dB at ``freqs`` (Hz), 0 dB at 1 kHz."""
    f = np.asarray(freqs, dtype=np.float64)
    if np.any(f < 0) or not np.all(np.isfinite(f)):
        raise LevelMeterError(f"freqs must be finite and >= 0 Hz, got {freqs!r}")
    return _a_weighting_unnormalised_db(f) - _a_weighting_unnormalised_db(np.float64(1000.0))


def _check_sample_rate(sample_rate: Any) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) \
            or sample_rate < MIN_SAMPLE_RATE:
        raise LevelMeterError(f"sample_rate must be an int >= {MIN_SAMPLE_RATE} Hz, got {sample_rate!r}")
    return int(sample_rate)


def _gain_db(z: np.ndarray, p: np.ndarray, freqs: np.ndarray, fs: int) -> np.ndarray:
    _, h = signal.freqz_zpk(z, p, 1.0, worN=freqs, fs=fs)
    return 20.0 * np.log10(np.abs(h))


@lru_cache(maxsize=8)
def _a_weighting_zpk(fs: int) -> tuple[np.ndarray, np.ndarray, float]:
    w1, w2, w3, w4 = (2 * math.pi * f for f in (F1, F2, F3, F4))
    z_low, p_low, _ = signal.bilinear_zpk(np.zeros(4), -np.array([w1, w1, w2, w3]), 1.0, fs)

    grid = np.geomspace(200.0, min(0.99 * fs / 2, 22400.0), 300)
    ref = np.array([1000.0])
    target = a_weighting_db(grid)
    low = _gain_db(z_low, p_low, grid, fs) - _gain_db(z_low, p_low, ref, fs)

    def roots(theta):  # real roots kept inside the unit circle (stable, minimum phase)
        return np.tanh(theta[:2]), 0.999 * np.tanh(theta[2:])

    def residual(theta):
        zc, pc = roots(theta)
        return low + _gain_db(zc, pc, grid, fs) - _gain_db(zc, pc, ref, fs) - target

    # Start from the bilinear image of the 12.2 kHz pole pair (zeros at -1).
    p0 = (2 * fs - w4) / (2 * fs + w4)
    theta0 = np.arctanh([-0.99, -0.99, p0 / 0.999, p0 / 0.999])
    zc, pc = roots(optimize.least_squares(residual, theta0).x)

    z, p = np.concatenate([z_low, zc]), np.concatenate([p_low, pc])
    k = 10.0 ** (-_gain_db(z, p, ref, fs)[0] / 20.0)  # exactly 0 dB at 1 kHz
    return z, p, k


def a_weighting_sos(sample_rate: int) -> np.ndarray:
    """Digital A-weighting filter for ``sample_rate`` as second-order sections (float64)."""
    fs = _check_sample_rate(sample_rate)
    z, p, k = _a_weighting_zpk(fs)
    return signal.zpk2sos(z, p, k)


class AWeighting:
    """Streaming A-weighting filter: the state is carried across ``process`` calls."""

    def __init__(self, sample_rate: int):
        self.sample_rate = _check_sample_rate(sample_rate)
        self._sos = a_weighting_sos(self.sample_rate)
        self.reset()

    def reset(self) -> None:
        self._zi = np.zeros((self._sos.shape[0], 2))

    def process(self, chunk: Any) -> np.ndarray:
        x = _as_samples(chunk)
        y, self._zi = signal.sosfilt(self._sos, x, zi=self._zi)
        return y


# --------------------------------------------------------------------------- levels

def _as_samples(chunk: Any, name: str = "chunk") -> np.ndarray:
    x = np.asarray(chunk)
    if not np.issubdtype(x.dtype, np.floating):
        raise LevelMeterError(f"{name} must be floating point in [-1, 1] full scale, got dtype {x.dtype} "
                              "(scale integer PCM first, e.g. int16 / 32768)")
    if x.ndim != 1:
        raise LevelMeterError(f"{name} must be 1-D (mono samples), got shape {x.shape}")
    return x.astype(np.float64, copy=False)


def _db(mean_square: Any) -> Any:
    """dBFS of a mean square (full-scale sine = 0 dBFS); 0 -> -inf."""
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(np.asarray(mean_square) / FULL_SCALE_SINE_MS)


def _check_calibration(calibration_db: Any) -> float:
    if isinstance(calibration_db, bool) or not isinstance(calibration_db, (int, float, np.integer, np.floating)) \
            or not math.isfinite(calibration_db):
        raise LevelMeterError(f"calibration_db must be a finite number of dB, got {calibration_db!r}")
    return float(calibration_db)


def laeq(x: Any, sample_rate: int, calibration_db: float = 0.0) -> float:
    """A-weighted equivalent level of a whole recording, dBFS + ``calibration_db``."""
    cal = _check_calibration(calibration_db)
    samples = _as_samples(x, "x")
    if samples.size == 0:
        raise LevelMeterError("x is empty: LAeq needs at least one sample")
    weighted = AWeighting(sample_rate).process(samples)
    return float(_db(np.mean(weighted ** 2))) + cal


def calibration_offset(recording: Any, sample_rate: int, reference_db: float = 94.0) -> float:
    """``calibration_db`` that makes ``recording`` of a calibrator (1 kHz) read ``reference_db``."""
    return _check_calibration(reference_db) - laeq(recording, sample_rate)


@dataclass(frozen=True)
class ChunkLevels:
    """Levels of one processed chunk, dB (SPL once calibrated); nan for an empty chunk."""

    laeq: float
    lafmax: float
    laf: float  # Fast level at the chunk's last sample
    seconds: float


@dataclass(frozen=True)
class LevelSummary:
    """Levels over a period, dB (SPL once calibrated). l10/l90 are nan without LAF samples."""

    laeq: float
    lafmax: float
    l10: float  # exceeded 10 % of the time: 90th percentile of 10 ms LAF samples
    l90: float  # exceeded 90 % of the time: 10th percentile
    seconds: float


class SoundLevelMeter:
    """Streaming A-weighted meter: feed chunks with ``process``, read ``summary`` per period."""

    def __init__(self, sample_rate: int, calibration_db: float = 0.0):
        self.sample_rate = _check_sample_rate(sample_rate)
        self.calibration_db = _check_calibration(calibration_db)
        self._weighting = AWeighting(self.sample_rate)
        self._alpha = math.exp(-1.0 / (FAST_TAU * self.sample_rate))
        self._stats_step = max(1, round(STATS_INTERVAL * self.sample_rate))
        self._warmup = round(WARMUP_TAUS * FAST_TAU * self.sample_rate)
        self.restart()

    def restart(self) -> None:
        """Reset the filter and detector as after power-on, and start a new period."""
        self._weighting.reset()
        self._fast = 0.0  # Fast mean square (full scale^2)
        self._samples_seen = 0
        self._new_period()

    def _new_period(self) -> None:
        self._sum_sq = 0.0
        self._n = 0
        self._max_fast = 0.0
        self._laf_samples: list[np.ndarray] = []  # Fast mean squares every 10 ms

    @property
    def laf(self) -> float:
        """Current Fast level."""
        return float(_db(self._fast)) + self.calibration_db

    def process(self, chunk: Any) -> ChunkLevels:
        x = self._weighting.process(chunk)
        if x.size == 0:
            return ChunkLevels(math.nan, math.nan, self.laf, 0.0)
        sq = x * x
        a = self._alpha
        fast, _ = signal.lfilter([1.0 - a], [1.0, -a], sq, zi=[a * self._fast])
        self._fast = float(fast[-1])

        start = self._samples_seen
        first = (-(start + 1)) % self._stats_step  # first index ending a 10 ms block
        idx = np.arange(first, x.size, self._stats_step)
        idx = idx[start + idx >= self._warmup]
        if idx.size:
            self._laf_samples.append(fast[idx])
        self._samples_seen += x.size

        chunk_sum = float(np.sum(sq))
        chunk_max = float(np.max(fast))
        self._sum_sq += chunk_sum
        self._n += x.size
        self._max_fast = max(self._max_fast, chunk_max)
        cal = self.calibration_db
        return ChunkLevels(
            laeq=float(_db(chunk_sum / x.size)) + cal,
            lafmax=float(_db(chunk_max)) + cal,
            laf=self.laf,
            seconds=x.size / self.sample_rate,
        )

    def summary(self, reset: bool = True) -> LevelSummary:
        """Levels since the last reset; ``reset`` starts a new period (the detector runs on)."""
        cal = self.calibration_db
        if self._n == 0:
            result = LevelSummary(math.nan, math.nan, math.nan, math.nan, 0.0)
        else:
            samples = np.concatenate(self._laf_samples) if self._laf_samples else np.zeros(0)
            l10 = l90 = math.nan
            if samples.size:
                # No interpolation ("inverted_cdf"): L10 is a level the samples exceed at most
                # 10 % of the time, and taking it on mean squares then dB is exact (-inf too).
                hi, lo = np.percentile(samples, [90, 10], method="inverted_cdf")
                l10, l90 = float(_db(hi)) + cal, float(_db(lo)) + cal
            result = LevelSummary(
                laeq=float(_db(self._sum_sq / self._n)) + cal,
                lafmax=float(_db(self._max_fast)) + cal,
                l10=float(l10),
                l90=float(l90),
                seconds=self._n / self.sample_rate,
            )
        if reset:
            self._new_period()
        return result
