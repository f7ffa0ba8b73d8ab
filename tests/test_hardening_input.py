"""Hostile sensor input never stops the agent (issue 18, input side): every case the attack found, then fuzzing.

Each seen case is reproduced first (a thousand "[", a 400-digit ts, DDS/TIFF/QOI images, a 631-byte
JPEG declaring 12000 x 12000, a 20 KB PNG of 13000 x 13000, sixteen made-up sensors before the real
mic, speed_mph 1e308, NaN everywhere, a saved profile holding NaN, a retained sensor message); then
hypothesis throws any bytes at each decoder and at ``Agent.process``: it returns, and the message is
accepted or counted under exactly one reason.
"""

from __future__ import annotations

import io
import json
import queue
import struct
import time
import zlib

import numpy as np
import paho.mqtt.client as paho
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image

from agent.config import ClassRule, MqttSourceConfig, RuleConfig, load_config
from agent.config.device import AudioInput
from agent.features.detector import DetectorParams, DetectorProfile
from agent.health import AFTER_DECODE, Health
from agent.payloads import PayloadError, decode_audio, decode_camera, decode_detector, encode_audio, topic_for
from agent.rules import Rule
from agent.runtime import Agent
from agent.sources import Message, SourceContext
from agent.sources.mqtt import MqttSource
from agent_fixtures import write_agent_config
from ops_fixtures import wait_until

T0_US = 1_714_550_400_000_000
CHUNK = encode_audio(np.zeros(1600, np.float32), 16000, 0, T0_US)


def _image(fmt: str, size=(8, 8), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 0 if mode == "1" else (10, 20, 30)).save(buf, fmt)
    return buf.getvalue()


def _reason(decode, *args) -> str:
    with pytest.raises(PayloadError) as e:
        decode(*args)
    return e.value.reason


# ----------------------------------------------------------------------------- seen cases

def test_a_thousand_brackets_are_refused_as_json_not_a_recursion_error():
    assert _reason(decode_detector, b"[" * 1000) == "json"
    assert _reason(decode_detector, b'{"ts":' + b"[" * 1000) == "json"


def test_a_ts_of_hundreds_of_digits_is_out_of_range_not_an_overflow():
    assert _reason(decode_detector, b'{"ts":' + b"9" * 400 + b',"speed_mph":40,"period_s":300}') == "out_of_range"
    assert _reason(decode_detector, b'{"ts":1e308,"speed_mph":40,"period_s":300}') == "bad_time"


@pytest.mark.parametrize("fmt", ["DDS", "TIFF", "QOI", "BMP", "GIF", "WEBP", "ICO", "PPM"])
def test_the_camera_accepts_jpeg_and_png_only(fmt):
    assert _reason(decode_camera, _image(fmt)) == "image_format"


def test_an_image_format_hidden_behind_a_jpeg_or_png_signature_is_refused():
    assert _reason(decode_camera, b"\xff\xd8\xff" + _image("TIFF")) == "image_decode"
    assert _reason(decode_camera, b"\x89PNG\r\n\x1a\n" + _image("QOI")) == "image_decode"


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header (SOF0) is rewritten to declare another size: the bomb's shape."""
    data = bytearray(_image("JPEG", (16, 16)))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def _png_declaring(width: int, height: int) -> bytes:
    data = bytearray(_image("PNG", (16, 16)))
    struct.pack_into(">II", data, 16, width, height)  # IHDR data, then its CRC
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_a_631_byte_jpeg_declaring_12000_by_12000_is_refused_from_its_header():
    bomb = _jpeg_declaring(12000, 12000)
    assert len(bomb) < 1000
    assert _reason(decode_camera, bomb) == "image_size"
    assert _reason(decode_camera, _png_declaring(13000, 13000)) == "image_size"


def test_a_real_20kb_png_of_13000_by_13000_is_refused_without_decoding_it(monkeypatch):
    from PIL import ImageFile

    bomb = _image("PNG", (13000, 13000), mode="1")
    assert len(bomb) < 40_000
    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: loads.append(im.size) or real_load(im))
    assert _reason(decode_camera, bomb) == "image_size"
    assert loads == []  # header only: decoding it would cost about 500 MB as RGB
    assert decode_camera(_image("PNG", (16, 16))).image.shape == (16, 16, 3) and set(loads) == {(16, 16)}


def test_a_big_jpeg_is_decoded_only_as_far_as_the_model_needs():
    big = _image("JPEG", (2048, 1536))
    frame = decode_camera(big, "cam0", 0.0, need=(64, 64))
    assert 64 <= frame.image.shape[0] <= 1536 // 4 and 64 <= frame.image.shape[1] <= 2048 // 4
    assert decode_camera(_image("PNG", (40, 30))).image.shape == (30, 40, 3)  # small crops still decode


def test_a_png_too_large_to_reduce_is_refused_before_decoding():
    assert _reason(decode_camera, _png_declaring(2100, 2100)) == "image_size"  # 4.4 MP > 4 MP budget


@pytest.mark.parametrize("fields, reason", [
    ({"speed_mph": 1e308}, "out_of_range"),
    ({"speed_mph": 301}, "out_of_range"),
    ({"count": -1}, "out_of_range"),
    ({"count": 10**9}, "out_of_range"),
    ({"count": 2.5}, "out_of_range"),
    ({"count": 10**30}, "out_of_range"),
])
def test_physical_quantities_out_of_range_are_refused(fields, reason):
    msg = {"ts": 1_714_550_400_000, "speed_mph": 40.0, "period_s": 300, **fields}
    assert _reason(decode_detector, json.dumps(msg).encode()) == reason


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
@pytest.mark.parametrize("key", ["ts", "speed_mph", "period_s", "count"])
def test_non_finite_numbers_are_refused_in_every_field(literal, key):
    msg = {"ts": 1_714_550_400_000, "speed_mph": 40.0, "period_s": 300, "count": 3}
    text = json.dumps({**msg, key: "X"}).replace('"X"', literal)
    assert _reason(decode_detector, text.encode()) == "not_finite"


def test_a_rule_skips_non_finite_scores_and_still_fires_afterwards():
    rule = Rule(RuleConfig(smooth_windows=3, cooldown_s=0, classes={"siren": ClassRule(threshold=0.5)}),
                ["siren", "other"])
    assert rule.update(np.array([np.nan, np.nan]), 0, 1000) == []
    assert rule.update(np.array([np.inf, 0.0]), 1000, 2000) == []
    assert rule.skipped == 2
    assert [e.cls for e in rule.update(np.array([0.9, 0.1]), 2000, 3000)] == ["siren"]
    rule.update(np.array([0.1, 0.9]), 3000, 4000)
    rule.update(np.array([0.1, 0.9]), 4000, 5000)
    assert rule.update(np.array([0.1, 0.9]), 5000, 6000) == []  # no NaN stuck in the average


def _day(speeds) -> dict:
    return {"weekend": False, "speeds": speeds}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e308, -5.0, 0.0, "60", True])
def test_a_saved_profile_with_an_impossible_speed_is_refused(bad):
    p = DetectorParams(profile_ahead_steps=3)
    speeds = [60.0] * p.steps_per_day
    assert DetectorProfile.from_dict(p, {"days": {"739000": _day(speeds)}}).days == [739000]
    speeds[5] = bad
    with pytest.raises(ValueError, match="profile day 739000"):
        DetectorProfile.from_dict(p, {"days": {"739000": _day(speeds)}})


def test_a_saved_profile_with_nan_is_relearnt_and_the_good_ones_kept(tmp_path, caplog):
    from test_agent_tasks import _profiled_congestion

    p = DetectorParams(profile_ahead_steps=3)
    good = {"days": {"739000": _day([60.0] * p.steps_per_day)}}
    state = tmp_path / "detector_profiles.json"
    # what json.dumps writes for a NaN that slipped in: the literal NaN
    state.write_text(json.dumps({"sensors": {"loop1": good, "loop2": {"days": {"739000": _day(
        [float("nan")] * p.steps_per_day)}}}}))
    task = _profiled_congestion(tmp_path, state)
    assert set(task._profiles) == {"loop1"}
    assert "loop2" in caplog.text and "learning it again" in caplog.text


# ----------------------------------------------------------------------------- decoder fuzzing

def _only_payload_errors(decode, payload: bytes, *args) -> None:
    try:
        decode(payload, *args)
    except PayloadError as e:
        assert e.reason and " " not in e.reason


_json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                            lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids,
                                                                                      max_size=3), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=400), st.builds(lambda cut, pos, x: bytes(
    b ^ x if i == pos else b for i, b in enumerate(CHUNK[:cut])), st.integers(0, len(CHUNK)), st.integers(0, 30),
    st.integers(1, 255))))
def test_audio_decoder_raises_only_payload_errors(payload):
    _only_payload_errors(decode_audio, payload)


_PNG, _JPEG = _image("PNG", (12, 9)), _image("JPEG", (12, 9))


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=600),
                 st.builds(lambda base, pos, x, cut: bytes(b ^ x if i == pos else b for i, b in enumerate(base))[:cut],
                           st.sampled_from([_PNG, _JPEG]), st.integers(0, 400), st.integers(1, 255),
                           st.integers(0, 1000)),
                 st.builds(lambda magic, rest: magic + rest, st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"]),
                           st.binary(max_size=400))))
def test_camera_decoder_raises_only_payload_errors(payload):
    _only_payload_errors(decode_camera, payload, "cam0", 0.0, (64, 64))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=1100), st.builds(lambda d: json.dumps(d).encode(), _json_values),
                 st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
                     st.sampled_from(["ts", "speed_mph", "period_s", "count"]),
                     st.one_of(st.integers(), st.floats(), st.none(), st.just(10**400), st.text(max_size=3))))))
def test_detector_decoder_raises_only_payload_errors(payload):
    _only_payload_errors(decode_detector, payload)


# ----------------------------------------------------------------------------- the whole agent

@pytest.fixture(scope="module")
def agent_all_kinds(tmp_path_factory, noise_model):
    """An agent with a noise, a vehicles and a congestion task (the shipped models), built but not running."""
    from agent_fixtures import REPO

    folder = tmp_path_factory.mktemp("hard")
    rule = {"cooldown_s": 0, "classes": {}}
    path = write_agent_config(folder, noise_model, 1, 1, **{
        "device.max_sensors": 4, "device.sensors": {"audio": ["mic0"]},
        "tasks.vehicles": {"model": str(REPO / "agent/models/vehicles/model.onnx"),
                           "rule": {**rule, "classes": {"truck": {"threshold": 0.9}}}},
        "tasks.congestion": {"model": str(REPO / "agent/models/congestion/model.onnx"),
                             "rule": {**rule, "classes": {"congested": {"threshold": 0.9}}}}})
    agent = Agent(load_config(path), path)
    yield agent
    agent.outbox.close()


def _counted(h: Health) -> int:
    return sum(h.accepted.values()) + sum(n for r, n in h.malformed.items() if r not in AFTER_DECODE)


@pytest.mark.parametrize("kind, payload, reason", [
    ("detector", b"[" * 1000, "json"),
    ("detector", b'{"ts":' + b"1" * 300 + b',"speed_mph":1,"period_s":300}', "out_of_range"),
    ("detector", b'{"ts":1714550400000,"speed_mph":1e308,"period_s":300}', "out_of_range"),
    ("camera", _image("DDS"), "image_format"),
    ("camera", _jpeg_declaring(12000, 12000), "image_size"),
])
def test_each_seen_attack_is_counted_under_its_reason_by_the_agent(agent_all_kinds, kind, payload, reason):
    h = agent_all_kinds.health
    before = h.malformed[reason]
    assert agent_all_kinds.process(Message(kind, "mic0" if kind == "audio" else "s0", payload, 0.0)) == 0
    assert h.malformed[reason] == before + 1


def test_sixteen_made_up_microphones_then_the_real_one_is_heard(agent_all_kinds):
    a, h = agent_all_kinds, agent_all_kinds.health
    for i in range(16):
        a.process(Message("audio", f"fake{i}", CHUNK, 0.0))
    accepted = h.accepted["audio"]
    a.process(Message("audio", "mic0", CHUNK, 0.0))
    assert h.accepted["audio"] == accepted + 1 and "mic0" in a.slots.held["audio"]
    assert len(a.slots.held["audio"]) <= 4


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["audio", "camera", "detector"]), sensor=st.sampled_from(["mic0", "s1", "s2", "s3",
                                                                                     "s4", "s5", ""]),
       payload=st.one_of(st.binary(max_size=700), st.sampled_from([CHUNK, _PNG, _JPEG, b"[" * 1000]),
                         st.builds(lambda d: json.dumps(d).encode(), _json_values)))
def test_process_returns_and_counts_any_bytes_on_any_topic_exactly_once(agent_all_kinds, kind, sensor, payload):
    h = agent_all_kinds.health
    before = _counted(h)
    agent_all_kinds.process(Message(kind, sensor, payload, time.time() * 1000))  # never raises
    assert _counted(h) == before + 1  # accepted, or dropped under exactly one reason


# ----------------------------------------------------------------------------- the MQTT source

def test_retained_and_unconsumed_sensor_messages_never_reach_the_queue(broker):
    """A retained reading replays at every subscription; a camera with no camera task is not subscribed."""
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="hostile")
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    pub.publish(topic_for("sensors", "d1", "detector", "loop1"), b"[" * 1000, qos=1, retain=True).wait_for_publish(5)
    health = Health()
    q: queue.Queue = queue.Queue()
    ctx = SourceContext("d1", AudioInput(), health, q, lambda: frozenset({"audio", "detector"}))
    src = MqttSource(MqttSourceConfig(type="mqtt", broker={"host": "127.0.0.1", "port": broker.port}), ctx)
    src.start()
    try:
        # audio is subscribed before detector (sorted), so the retained detector message proves both are
        wait_until(lambda: src.conn.connected.is_set() and health.malformed["retained"] == 1, 10, "retained drop")
        pub.publish(topic_for("sensors", "d1", "camera", "cam0"), _PNG, qos=1).wait_for_publish(5)
        pub.publish(topic_for("sensors", "d1", "audio", "mic0"), b"A" * 10**6, qos=1).wait_for_publish(5)
        pub.publish(topic_for("sensors", "d1", "audio", "mic0"), CHUNK, qos=1).wait_for_publish(5)
        wait_until(lambda: q.qsize() == 1, 10, "the live chunk queued")
        assert q.get_nowait().payload == CHUNK
        assert health.malformed["too_large"] == 1  # capped before queueing
        assert "camera" not in health.received  # never delivered: not subscribed
    finally:
        src.stop()
        pub.loop_stop()
        pub.disconnect()


@settings(max_examples=300, deadline=None)
@given(topic=st.one_of(st.binary(max_size=60), st.builds(
           lambda kind, sensor: topic_for("sensors", "d1", kind, sensor).encode(),
           st.sampled_from(["audio", "camera", "detector", "lidar", ""]), st.text(max_size=8))),
       payload=st.binary(max_size=200), retain=st.booleans())
def test_the_mqtt_callback_queues_or_counts_any_topic(topic, payload, retain):
    """Whatever topic bytes a broker delivers (not even UTF-8), the network thread's callback returns."""
    health, q = Health(), queue.Queue()
    ctx = SourceContext("d1", AudioInput(), health, q, lambda: frozenset({"audio", "detector"}), {"audio": ["mic0"]})
    src = MqttSource(MqttSourceConfig(type="mqtt"), ctx)  # not started: the callback alone
    msg = paho.MQTTMessage(topic=topic)
    msg.payload, msg.retain = payload, retain
    src._on_shared(msg)
    counted = sum(health.malformed.values()) + q.qsize()
    own = topic in (topic_for("sensors", "d1", "audio", "mic0").encode(),)
    assert counted == (0 if own else 1)  # the listed mic's messages come on its own connection



def test_a_bug_behind_process_is_counted_and_the_run_loop_goes_on(agent_all_kinds, monkeypatch):
    """Defence in depth: even an exception process() did not foresee never leaves the run loop."""
    a = agent_all_kinds
    monkeypatch.setattr(a, "process", lambda msg: 1 / 0)
    before = a.health.malformed["task_error"]
    a._process_safely(Message("audio", "mic0", CHUNK, 0.0))
    assert a.health.malformed["task_error"] == before + 1
