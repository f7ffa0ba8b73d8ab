"""Sensor wire formats: what a sensor sends decodes back exactly; every bad message has a reason."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from agent.payloads import (AUDIO_HEADER, PayloadError, decode_audio, decode_camera, decode_detector, encode_audio,
                            encode_detector, parse_topic)


def test_audio_round_trip_and_header_layout():
    x = np.array([0.0, 0.5, -0.5, -1.0], np.float32)
    msg = encode_audio(x, 16000, 7, 1_714_550_400_000_000)
    assert msg[:20].hex() == "525301" "01" "803e0000" "07000000" "00a08adf5f170600"  # docs/mqtt.md example
    assert msg[20:].hex() == "0000" "0040" "00c0" "0080"
    chunk = decode_audio(msg, "mic0")
    assert (chunk.sample_rate, chunk.channels, chunk.seq, chunk.capture_ms) == (16000, 1, 7, 1_714_550_400_000.0)
    np.testing.assert_array_equal(chunk.samples, x)


def test_stereo_is_downmixed():
    x = np.stack([np.full(4, 0.5), np.zeros(4)], axis=1)
    assert decode_audio(encode_audio(x, 16000, 0, 0)).samples.tolist() == [0.25] * 4


@pytest.mark.parametrize("payload, reason", [
    (b"", "truncated"),
    (b"RS\x01\x01" + b"\x00" * 10, "truncated"),
    (b"XX" + b"\x00" * 30, "bad_magic"),
    (b"RS\x02\x01" + b"\x00" * 18, "bad_version"),
    (b"RS\x01\x00" + b"\x00" * 18, "bad_channels"),
    (AUDIO_HEADER.pack(b"RS", 1, 1, 16000, 0, 0), "pcm_length"),
    (AUDIO_HEADER.pack(b"RS", 1, 2, 16000, 0, 0) + b"\x00\x00", "pcm_length"),
])
def test_bad_audio_has_a_reason(payload, reason):
    with pytest.raises(PayloadError) as e:
        decode_audio(payload)
    assert e.value.reason == reason


def test_camera_decodes_png_and_refuses_garbage():
    buf = io.BytesIO()
    Image.new("RGB", (10, 8), (255, 0, 0)).save(buf, "PNG")
    assert decode_camera(buf.getvalue()).image.shape == (8, 10, 3)
    with pytest.raises(PayloadError) as e:
        decode_camera(b"\xff\xd8\xff\xe0garbage")
    assert e.value.reason == "image_decode"


def test_detector_round_trip_and_null_speed():
    r = decode_detector(encode_detector(1_714_550_400_000, 52.5, 300, 17), "loop1")
    assert (r.ts_ms, r.speed_mph, r.period_s, r.count) == (1_714_550_400_000, 52.5, 300, 17)
    assert decode_detector(encode_detector(0, None)).speed_mph is None


@pytest.mark.parametrize("doc, reason", [
    (b"not json", "json"), (b"\xff\xfe", "json"), (b"[1, 2]", "json"),
    (json.dumps({"ts": 1, "period_s": 300}).encode(), "missing_field"),
    (json.dumps({"ts": 1, "speed_mph": "fast", "period_s": 300}).encode(), "not_numeric"),
    (json.dumps({"ts": 1, "speed_mph": True, "period_s": 300}).encode(), "not_numeric"),
    (json.dumps({"ts": 1, "speed_mph": 50, "period_s": 60}).encode(), "bad_period"),
    (json.dumps({"ts": -5, "speed_mph": 50, "period_s": 300}).encode(), "bad_time"),
])
def test_bad_detector_reading_has_a_reason(doc, reason):
    with pytest.raises(PayloadError) as e:
        decode_detector(doc)
    assert e.value.reason == reason


def test_topics():
    t = parse_topic("sensors/pole-1/audio/mic0", "sensors")
    assert (t.device, t.kind, t.sensor) == ("pole-1", "audio", "mic0")
    for bad in ("sensors/pole-1/lidar/x", "sensors/pole-1/audio", "other/pole-1/audio/mic0"):
        with pytest.raises(PayloadError):
            parse_topic(bad, "sensors")
