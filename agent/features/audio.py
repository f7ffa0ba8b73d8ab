"""Log-mel front-end (numpy only), shared by training, evaluation and the device.

Pipeline, in order: pre-emphasis -> framing -> window -> |rfft|^2 (Re^2 + Im^2) ->
Kaldi mel matrix -> ln(mel + log_offset) -> (x + norm_shift) / norm_scale.

Two presets:

``TEACHER_LOGMEL`` is exactly the front-end the mn04 teacher was trained with (mn04
SPEC section 2): 32 kHz, n_fft 1024, symmetric Hann of 800 zero-padded and centred,
hop 320, 128 mels 0..15 kHz, pre-emphasis as a *valid* cross-correlation (N samples in,
N-1 out, hence 400 frames for 4 s, not 401), centre framing with reflect padding. It
reproduces the golden ``logmel.npy`` to about 2e-5.

``STUDENT_LOGMEL`` is the device front-end: 16 kHz (the microphones' rate, so no
resampling on the device), 25 ms windows every 10 ms, 64 mels 0..8 kHz, the same
pre-emphasis, log and normalisation as the teacher so feature statistics are alike.
It uses ``center=False`` on purpose: reflect padding at the start of a clip needs
samples from the *future* and, at the end, the signal's last samples, so a centred
front-end cannot be computed on a live stream without a different first/last frame.
Without centring, frame t is exactly the ``win_length`` (pre-emphasised) samples starting
at ``t * hop_length``; ``StreamingLogMel`` then produces, over any chunking, the very
frames ``log_mel`` produces offline, and training sees what the street sees.

Framing conventions (both are what ``log_mel`` and ``LogMelParams.frames`` implement):
- center=True: like torch.stft(center=True): reflect-pad n_fft//2 on both sides, window
  centred on sample t*hop; T = 1 + (L + 2*(n_fft//2) - n_fft) // hop, L the length
  after pre-emphasis. The signal must be longer than n_fft//2 (reflect padding).
- center=False: frame t = samples [t*hop, t*hop + win_length); T = 1 + (L - win)//hop
  (0 when L < win). Note this is *not* torch.stft(center=False), which would take n_fft
  samples per frame and centre the window inside them (a (n_fft - win)/2 sample delay).

The window sits anywhere inside the n_fft buffer (the power spectrum does not depend
on where: a shift only changes the phase), so frames are win_length long and rfft
zero-pads them to n_fft.

Numerics: the mel matrix follows torchaudio's Kaldi ``get_mel_banks`` in float32 (SPEC
2.2), but takes the log in float64 and rounds, so it is the same on every CPU (float32
SIMD logs differ between machines by an ulp); it matches the golden matrix to < 2e-5.
The FFT runs in float32 (scipy.fft, one worker), as do the mel projection, log and
normalisation, as in the original.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any, Mapping

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import fft as scipy_fft
from scipy import sparse

WINDOWS = ("hann_symmetric", "hann_periodic")


class LogMelParamsError(ValueError):
    """Log-mel parameters that are invalid, incomplete or from another front-end."""


_INT_FIELDS = ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels")
_FLOAT_FIELDS = ("fmin", "fmax", "preemphasis", "log_offset", "norm_shift", "norm_scale")


@dataclass(frozen=True)
class LogMelParams:
    sample_rate: int
    n_fft: int
    win_length: int
    hop_length: int
    n_mels: int
    fmin: float
    fmax: float
    preemphasis: float  # y[n] = x[n+1] - p*x[n] (one sample shorter); 0 = off (no sample dropped)
    window: str  # "hann_symmetric" (torch periodic=False) or "hann_periodic"
    center: bool  # reflect-pad n_fft//2 each side (offline only) or not (streamable)
    log_offset: float
    norm_shift: float
    norm_scale: float  # output = (ln(mel + log_offset) + norm_shift) / norm_scale

    def __post_init__(self):
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise LogMelParamsError(f"LogMelParams.{name} must be a positive int, got {v!r}")
            object.__setattr__(self, name, int(v))  # numpy ints -> int, so to_dict is JSON-able
        for name in _FLOAT_FIELDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
                raise LogMelParamsError(f"LogMelParams.{name} must be a finite number, got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.n_fft % 2:
            raise LogMelParamsError(f"LogMelParams.n_fft must be even, got {self.n_fft}")
        if self.win_length > self.n_fft:
            raise LogMelParamsError(f"LogMelParams.win_length must be <= n_fft ({self.n_fft}), got {self.win_length}")
        if not 0.0 <= self.fmin < self.fmax:
            raise LogMelParamsError(f"LogMelParams.fmin must be in [0, fmax={self.fmax}), got {self.fmin}")
        if self.fmax > self.sample_rate / 2:
            raise LogMelParamsError(
                f"LogMelParams.fmax must be <= sample_rate/2 = {self.sample_rate / 2}, got {self.fmax}")
        if not 0.0 <= self.preemphasis < 1.0:
            raise LogMelParamsError(f"LogMelParams.preemphasis must be in [0, 1), got {self.preemphasis}")
        if self.window not in WINDOWS:
            raise LogMelParamsError(f"LogMelParams.window must be one of {WINDOWS}, got {self.window!r}")
        if not isinstance(self.center, (bool, np.bool_)):
            raise LogMelParamsError(f"LogMelParams.center must be a bool, got {self.center!r}")
        object.__setattr__(self, "center", bool(self.center))
        if self.log_offset <= 0:
            raise LogMelParamsError(f"LogMelParams.log_offset must be > 0, got {self.log_offset}")
        if self.norm_scale <= 0:
            raise LogMelParamsError(f"LogMelParams.norm_scale must be > 0, got {self.norm_scale}")

    @property
    def n_freqs(self) -> int:
        """One-sided spectrum size, n_fft//2 + 1."""
        return self.n_fft // 2 + 1

    def frames(self, n_samples: int) -> int:
        """Number of frames ``log_mel`` gives for a wave of ``n_samples`` samples."""
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 0:
            raise ValueError(f"n_samples must be a non-negative int, got {n_samples!r}")
        n = _emphasised_length(int(n_samples), self)
        if self.center:
            _check_reflect_length(n, self)
            return 1 + (n + 2 * (self.n_fft // 2) - self.n_fft) // self.hop_length
        return 0 if n < self.win_length else 1 + (n - self.win_length) // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "logmel", **asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LogMelParams:
        """Exact inverse of to_dict: every field must be present, no unknown keys."""
        if not isinstance(d, Mapping):
            raise LogMelParamsError(f"log-mel parameters must be a mapping, got {type(d).__name__}")
        d = dict(d)
        kind = d.pop("kind", None)
        if kind != "logmel":
            raise LogMelParamsError(f"front-end kind is {kind!r}, expected 'logmel'")
        names = [f.name for f in fields(cls)]
        unknown, missing = sorted(set(d) - set(names)), [n for n in names if n not in d]
        if unknown:
            raise LogMelParamsError(f"unknown log-mel parameter(s) {unknown}; known: {names}")
        if missing:
            raise LogMelParamsError(f"missing log-mel parameter(s) {missing}")
        return cls(**d)


TEACHER_LOGMEL = LogMelParams(
    sample_rate=32000, n_fft=1024, win_length=800, hop_length=320, n_mels=128,
    fmin=0.0, fmax=15000.0, preemphasis=0.97, window="hann_symmetric", center=True,
    log_offset=1e-5, norm_shift=4.5, norm_scale=5.0,
)

STUDENT_LOGMEL = LogMelParams(
    sample_rate=16000, n_fft=512, win_length=400, hop_length=160, n_mels=64,
    fmin=0.0, fmax=8000.0, preemphasis=0.97, window="hann_symmetric", center=False,
    log_offset=1e-5, norm_shift=4.5, norm_scale=5.0,
)


# ---------------------------------------------------------------------------- mel matrix

def _mel(f: float) -> float:
    return 1127.0 * math.log(1.0 + f / 700.0)


@lru_cache(maxsize=16)
def mel_basis(params: LogMelParams) -> np.ndarray:
    """Kaldi mel matrix (n_mels, n_fft//2 + 1), float32, read-only (it is cached).

    Triangles linear in mel = 1127 ln(1 + f/700), peak 1, no area normalisation, over the
    FFT bins 0..n_fft/2-1; the Nyquist column is zero (SPEC 2.2). The float32 steps mirror
    torchaudio so that it matches the golden matrix.
    """
    mel_low, mel_high = _mel(params.fmin), _mel(params.fmax)
    delta = np.float32((mel_high - mel_low) / (params.n_mels + 1))
    band = np.arange(params.n_mels, dtype=np.float32)[:, None]
    low = np.float32(mel_low)
    left = low + band * delta
    centre = low + (band + np.float32(1.0)) * delta
    right = low + (band + np.float32(2.0)) * delta

    n_bins = params.n_fft // 2
    freqs = np.float32(params.sample_rate / params.n_fft) * np.arange(n_bins, dtype=np.float32)
    ratio = np.float32(1.0) + freqs / np.float32(700.0)
    # float64 log, then rounded: the same matrix on every CPU.
    mel_k = np.float32(1127.0) * np.log(ratio.astype(np.float64)).astype(np.float32)

    up = (mel_k - left) / (centre - left)
    down = (right - mel_k) / (right - centre)
    weights = np.maximum(np.float32(0.0), np.minimum(up, down))
    basis = np.zeros((params.n_mels, n_bins + 1), dtype=np.float32)
    basis[:, :n_bins] = weights
    basis.flags.writeable = False
    return basis


def band_centres_hz(params: LogMelParams) -> np.ndarray:
    """Centre frequency of each mel band (Hz), float64: where a band sits, to line up two front-ends."""
    mel_low, mel_high = _mel(params.fmin), _mel(params.fmax)
    centres = mel_low + (np.arange(params.n_mels) + 1) * (mel_high - mel_low) / (params.n_mels + 1)
    return 700.0 * (np.exp(centres / 1127.0) - 1.0)


def frame_centres_s(params: LogMelParams, n_frames: int) -> np.ndarray:
    """Time (s) at the centre of each frame, relative to the first input sample."""
    offset = 0.0 if params.center else params.win_length / 2
    return (np.arange(n_frames) * params.hop_length + offset) / params.sample_rate


@lru_cache(maxsize=16)
def _sparse_basis(params: LogMelParams) -> sparse.csr_array:
    # Each FFT bin feeds at most two bands, so the matrix is ~99 % zeros: a sparse product
    # is ~50x less work and, unlike BLAS, spawns no threads (which stall on a busy 2-core box).
    return sparse.csr_array(mel_basis(params))


@lru_cache(maxsize=16)
def _window(params: LogMelParams) -> np.ndarray:
    """Hann window of win_length in float32, as torch.hann_window builds it."""
    n = params.win_length
    period = n - 1 if params.window == "hann_symmetric" else n
    if period == 0:  # a 1-sample symmetric window is [1]
        return np.ones(1, dtype=np.float32)
    phase = np.arange(n, dtype=np.float32) * np.float32(2.0 * math.pi / period)
    cos = np.cos(phase.astype(np.float64)).astype(np.float32)
    w = np.float32(0.5) - np.float32(0.5) * cos
    w.flags.writeable = False
    return w


# ------------------------------------------------------------------------------ log-mel

def _emphasised_length(n: int, params: LogMelParams) -> int:
    return max(n - 1, 0) if params.preemphasis else n


def _check_reflect_length(n: int, params: LogMelParams) -> None:
    if n <= params.n_fft // 2:
        raise ValueError(
            f"wave too short for center=True: reflect padding needs more than n_fft//2 = "
            f"{params.n_fft // 2} samples after pre-emphasis, got {n}")


def _as_wave(wave: Any, name: str = "wave") -> np.ndarray:
    x = np.asarray(wave)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must be floating point in [-1, 1], got dtype {x.dtype} "
                         "(scale integer PCM first, e.g. int16 / 32768)")
    return x.astype(np.float32, copy=False)


def _preemphasise(x: np.ndarray, p: float) -> np.ndarray:
    """Valid cross-correlation with [-p, 1] along the last axis: N samples -> N-1."""
    if not p:
        return x
    return x[..., 1:] - np.float32(p) * x[..., :-1]


def _frames_to_logmel(frames: np.ndarray, params: LogMelParams) -> np.ndarray:
    """(..., T, win_length) float32 frames -> (..., n_mels, T) normalised log-mel, float32.

    The one place where spectra are computed, so offline and streaming agree exactly.
    """
    # float32 FFT (scipy keeps complex64; numpy would upcast to complex128): half the memory
    # traffic, and within 1e-5 of float64 on the golden log-mel. One worker: the device runs
    # several tasks side by side.
    spec = scipy_fft.rfft(frames * _window(params), n=params.n_fft, axis=-1, workers=1)
    power = spec.real ** 2 + spec.imag ** 2
    lead, n_frames = power.shape[:-2], power.shape[-2]
    mel = _sparse_basis(params) @ power.reshape(-1, params.n_freqs).T  # (n_mels, B*T), float32
    mel = np.ascontiguousarray(np.moveaxis(mel.reshape((params.n_mels,) + lead + (n_frames,)), 0, -2))
    out = np.log(mel + np.float32(params.log_offset))
    out += np.float32(params.norm_shift)
    out /= np.float32(params.norm_scale)
    return out


def log_mel(wave: Any, params: LogMelParams) -> np.ndarray:
    """Normalised log-mel of a float wave in [-1, 1] at ``params.sample_rate``.

    (N,) -> (n_mels, T); (B, N) -> (B, n_mels, T); float32; T = ``params.frames(N)``.
    """
    x = _as_wave(wave)
    if x.ndim not in (1, 2):
        raise ValueError(f"wave must have shape (N,) or (B, N), got {x.shape}")
    y = _preemphasise(x, params.preemphasis)
    n_frames = params.frames(x.shape[-1])
    if params.center:
        pad = params.n_fft // 2
        y = np.pad(y, [(0, 0)] * (y.ndim - 1) + [(pad, pad)], mode="reflect")
        # torch centres a short window inside the n_fft frame: skip its left zeros.
        y = y[..., (params.n_fft - params.win_length) // 2:]
    if n_frames == 0:
        return np.zeros(x.shape[:-1] + (params.n_mels, 0), dtype=np.float32)
    frames = sliding_window_view(y, params.win_length, axis=-1)[..., ::params.hop_length, :][..., :n_frames, :]
    return _frames_to_logmel(frames, params)


class StreamingLogMel:
    """Chunk-by-chunk log-mel for ``center=False`` params.

    ``push(chunk)`` returns the frames the chunk completes, (n_mels, k) with k >= 0.
    Concatenating the outputs over any chunking equals ``log_mel(signal, params)``: the
    last raw sample (for pre-emphasis) and the unfinished frame are carried over.
    """

    def __init__(self, params: LogMelParams):
        if params.center:
            raise LogMelParamsError(
                "StreamingLogMel needs center=False params (reflect padding needs future samples), "
                "got center=True")
        self.params = params
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next push starts a new signal."""
        self._last: np.ndarray | None = None  # last raw sample, shape (1,)
        self._pending = np.zeros(0, dtype=np.float32)  # emphasised samples not yet fully framed
        self._skip = 0  # samples still to drop when hop_length > win_length leaves gaps

    def push(self, chunk: Any) -> np.ndarray:
        p = self.params
        x = _as_wave(chunk, "chunk")
        if x.ndim != 1:
            raise ValueError(f"chunk must be 1-D (mono samples), got shape {x.shape}")
        if x.size == 0:
            return np.zeros((p.n_mels, 0), dtype=np.float32)
        if p.preemphasis:
            joined = x if self._last is None else np.concatenate([self._last, x])
            self._last = x[-1:].copy()
            x = _preemphasise(joined, p.preemphasis)
        dropped = min(self._skip, x.size)
        self._skip -= dropped
        buf = np.concatenate([self._pending, x[dropped:]])
        n_frames = 0 if buf.size < p.win_length else 1 + (buf.size - p.win_length) // p.hop_length
        if n_frames == 0:
            self._pending = buf
            return np.zeros((p.n_mels, 0), dtype=np.float32)
        frames = sliding_window_view(buf, p.win_length)[::p.hop_length][:n_frames]
        out = _frames_to_logmel(frames, p)
        consumed = n_frames * p.hop_length
        self._pending = buf[consumed:].copy()
        self._skip = max(consumed - buf.size, 0)
        return out
