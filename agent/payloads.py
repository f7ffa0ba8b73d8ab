"""Sensor wire formats on the device's local broker: encode for senders, decode (strictly) for the agent.

Every decode error is a ``PayloadError`` whose ``reason`` is one short word: the agent
counts dropped messages per reason, so a third party can tell from the health message
what its sensor gets wrong. docs/mqtt.md has byte-level examples of each format.

Topics: ``{prefix}/{device}/audio/{sensor}``, ``.../camera/{sensor}``, ``.../detector/{sensor}``.

Audio (binary, little-endian): a 20-byte header then interleaved PCM16 samples::

    0  2s  magic      b"RS"
    2  B   version    1
    3  B   channels   1..8
    4  I   sample_rate  Hz
    8  I   seq        chunk counter per sensor, +1 per chunk (wraps at 2**32)
   12  q   capture_us  UTC microseconds since 1970 of the chunk's first sample
   20  ... PCM16 samples, channels interleaved

Camera: the JPEG or PNG file's bytes, nothing else (capture time = arrival time).
Detector: UTF-8 JSON ``{"ts": <UTC ms of the period's end>, "speed_mph": <number or null>,
"period_s": 300 | 30, "count": <vehicles, optional>}``; null speed = the loop reported no value.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import numpy as np

from .features.image import (CAMERA_FORMATS, MAX_DECODED_PIXELS, MAX_SIDE, ImageDecodeError, ImageTooLarge,
                             decode_image)

AUDIO_MAGIC = b"RS"
AUDIO_VERSION = 1
AUDIO_HEADER = struct.Struct("<2sBBIIq")  # 20 bytes
KINDS = ("audio", "camera", "detector")
DETECTOR_PERIODS = (30, 300)
MAX_IMAGE_BYTES = 2 << 20
MAX_DETECTOR_BYTES = 1024
# Physical bounds (found by attack: speed_mph 1e308 gave NaN probabilities that fired every class).
MAX_SPEED_MPH = 300.0  # faster than any road vehicle; <= 0 means "no reading" (docs/mqtt.md 1.3)
MAX_COUNT = 100_000  # vehicles in one period, far above any loop's capacity
IMAGE_MAGIC = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG\r\n\x1a\n"}


class PayloadError(ValueError):
    """A sensor message that cannot be used; ``reason`` is the counter it is dropped under."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(f"{reason}: {message}")


@dataclass(frozen=True)
class Topic:
    device: str
    kind: str  # audio | camera | detector
    sensor: str


@dataclass(frozen=True)
class AudioChunk:
    sensor: str
    sample_rate: int
    channels: int
    seq: int
    capture_ms: float
    samples: np.ndarray  # float32 mono in [-1, 1) (channels averaged)


@dataclass(frozen=True)
class ImageFrame:
    sensor: str
    capture_ms: float
    image: np.ndarray  # uint8 RGB (H, W, 3)


@dataclass(frozen=True)
class DetectorReading:
    sensor: str
    ts_ms: int
    speed_mph: float | None
    period_s: int
    count: int | None


# ------------------------------------------------------------------------------- topics

def max_payload_bytes(kind: str, sample_rate: int, channels: int, max_chunk_seconds: float) -> int:
    """The largest payload of ``kind`` that can decode: checked before a message is queued (bounded memory)."""
    if kind == "audio":
        return AUDIO_HEADER.size + 2 * channels * int(max_chunk_seconds * sample_rate)
    return MAX_IMAGE_BYTES if kind == "camera" else MAX_DETECTOR_BYTES


def topic_for(prefix: str, device: str, kind: str, sensor: str) -> str:
    return f"{prefix}/{device}/{kind}/{sensor}"


def parse_topic(topic: str, prefix: str) -> Topic:
    rest = topic[len(prefix) + 1:].split("/") if topic.startswith(prefix + "/") else []
    if len(rest) != 3 or rest[1] not in KINDS or not rest[0] or not rest[2]:
        raise PayloadError("topic", f"{topic!r} is not {prefix}/{{device}}/{{{'|'.join(KINDS)}}}/{{sensor}}")
    return Topic(*rest)


# -------------------------------------------------------------------------------- audio

def encode_audio(samples: np.ndarray, sample_rate: int, seq: int, capture_us: int) -> bytes:
    """(N,) or (N, channels) float in [-1, 1] or int16 -> one audio message."""
    x = np.asarray(samples)
    if x.ndim == 1:
        x = x[:, None]
    if x.dtype != np.int16:
        x = np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
    header = AUDIO_HEADER.pack(AUDIO_MAGIC, AUDIO_VERSION, x.shape[1], sample_rate, seq % (1 << 32), capture_us)
    return header + x.astype("<i2").tobytes()


def decode_audio(payload: bytes, sensor: str = "") -> AudioChunk:
    if len(payload) < AUDIO_HEADER.size:
        raise PayloadError("truncated", f"audio message of {len(payload)} bytes is shorter than the "
                                        f"{AUDIO_HEADER.size}-byte header")
    magic, version, channels, rate, seq, capture_us = AUDIO_HEADER.unpack_from(payload)
    if magic != AUDIO_MAGIC:
        raise PayloadError("bad_magic", f"audio magic {magic!r}, expected {AUDIO_MAGIC!r}")
    if version != AUDIO_VERSION:
        raise PayloadError("bad_version", f"audio version {version}, expected {AUDIO_VERSION}")
    if not 1 <= channels <= 8:
        raise PayloadError("bad_channels", f"{channels} channels (1..8 expected)")
    body = memoryview(payload)[AUDIO_HEADER.size:]
    if len(body) == 0 or len(body) % (2 * channels):
        raise PayloadError("pcm_length", f"{len(body)} PCM bytes is not a positive multiple of "
                                         f"2 bytes x {channels} channels")
    pcm = np.frombuffer(body, dtype="<i2").reshape(-1, channels)
    mono = pcm[:, 0] if channels == 1 else pcm.mean(axis=1)
    return AudioChunk(sensor, rate, channels, seq, capture_us / 1000.0,
                      (mono / np.float32(32768.0)).astype(np.float32))


# ------------------------------------------------------------------------------- camera

def decode_camera(payload: bytes, sensor: str = "", received_ms: float = 0.0,
                  need: tuple[int, int] | None = None) -> ImageFrame:
    """JPEG or PNG only; size checked from the header before decoding (``need``: the model's (h, w))."""
    if len(payload) > MAX_IMAGE_BYTES:
        raise PayloadError("too_large", f"image of {len(payload)} bytes (limit {MAX_IMAGE_BYTES})")
    data = bytes(payload)
    if not any(data.startswith(m) for m in IMAGE_MAGIC.values()):
        raise PayloadError("image_format", f"not a JPEG or PNG file (starts {data[:8].hex() or 'empty'})")
    try:
        image = decode_image(data, CAMERA_FORMATS, need=need, max_side=MAX_SIDE, max_pixels=MAX_DECODED_PIXELS)
    except ImageTooLarge as e:
        raise PayloadError("image_size", str(e)) from None
    except ImageDecodeError as e:
        raise PayloadError("image_decode", str(e)) from None
    return ImageFrame(sensor, received_ms, image)


# ----------------------------------------------------------------------------- detector

def encode_detector(ts_ms: int, speed_mph: float | None, period_s: int = 300, count: int | None = None) -> bytes:
    msg: dict = {"ts": int(ts_ms), "speed_mph": None if speed_mph is None or math.isnan(speed_mph) else speed_mph,
                 "period_s": period_s}
    if count is not None:
        msg["count"] = int(count)
    return json.dumps(msg, separators=(",", ":")).encode()


def _number(d: dict, key: str, allow_null: bool = False, low: float = -math.inf, high: float = math.inf):
    v = d.get(key)
    if v is None and allow_null:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise PayloadError("not_numeric", f"{key} must be a number, got {type(v).__name__}")
    if isinstance(v, int) and not -2**63 <= v < 2**63:  # a 400-digit int cannot even become a float
        raise PayloadError("out_of_range", f"{key} has {len(str(abs(v)))} digits")
    if not math.isfinite(v):
        raise PayloadError("not_finite", f"{key} must be a finite number, got {v!r}")
    if not low <= v <= high:
        raise PayloadError("out_of_range", f"{key} {v!r} is outside [{low:g}, {high:g}]")
    return v


def decode_detector(payload: bytes, sensor: str = "") -> DetectorReading:
    if len(payload) > MAX_DETECTOR_BYTES:
        raise PayloadError("too_large", f"detector message of {len(payload)} bytes (limit {MAX_DETECTOR_BYTES})")
    try:
        d = json.loads(bytes(payload).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PayloadError("json", f"detector message is not UTF-8 JSON ({e})") from None
    except RecursionError:  # found by attack: a thousand "[" exhausted the parser's stack
        raise PayloadError("json", "detector message nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise PayloadError("json", f"detector message not readable ({str(e)[:100]})") from None
    if not isinstance(d, dict):
        raise PayloadError("json", f"detector message must be a JSON object, got {type(d).__name__}")
    for key in ("ts", "speed_mph", "period_s"):
        if key not in d:
            raise PayloadError("missing_field", f"detector message without {key!r}")
    ts = _number(d, "ts")
    speed = _number(d, "speed_mph", allow_null=True, high=MAX_SPEED_MPH)
    period = _number(d, "period_s")
    count = _number(d, "count", low=0, high=MAX_COUNT) if d.get("count") is not None else None
    if period not in DETECTOR_PERIODS:
        raise PayloadError("bad_period", f"period_s {period!r}, expected one of {DETECTOR_PERIODS}")
    if not 0 <= ts < 1 << 53:
        raise PayloadError("bad_time", f"ts {ts!r} is not a UTC millisecond time")
    if count is not None and count != int(count):
        raise PayloadError("out_of_range", f"count {count!r} is not a whole number of vehicles")
    return DetectorReading(sensor, int(ts), None if speed is None else float(speed), int(period),
                           None if count is None else int(count))


DECODERS = {"audio": decode_audio, "detector": decode_detector}
