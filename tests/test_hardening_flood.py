"""A flood must not starve the real microphone; decompression bombs must not blow the agent's memory (issue 18).

Against a real mosquitto and the agent as a child process: real street audio (siren and dog
clips) is replayed as the configured microphone ``mic0``, first alone (baseline), then while a
second process floods the same broker as fast as it can with valid chunks from an intruder
sensor, valid chunks under a thousand made-up names, and garbage. The level meter runs on 1 s
periods, so every second of mic audio the agent processed is one ``summary`` from ``mic0``
upstream: the test fails if, under the flood, the mic gets fewer than 80 % of its baseline
seconds processed or fewer than half its baseline alerts. Then a batch of decompression bombs
goes to the camera, and the agent's peak RSS (VmHWM) must stay bounded.

Figures (alerts, seconds processed, drop reasons, flood rate, RSS) are printed on one line
and written to ``flood_report.json`` in the test's tmp dir (or $ROADSIDE_FLOOD_REPORT).
Run: ``.venv/bin/python -m pytest tests/test_hardening_flood.py -s``. Marked ``fault`` (~2 min).
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image

from agent.payloads import topic_for
from agent.sources.replay import replay
from agent_fixtures import DOG, REPO, SIREN, AgentProcess, Broker, Collector, clip_folder, write_agent_config

pytestmark = pytest.mark.fault
DEVICE = "test-0001"
RATE = 2.0  # mic replay speed: 28 s of clips in 14 s

FLOODER = r"""
import sys, time
import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from agent.payloads import encode_audio, topic_for

port, device, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
rng = np.random.default_rng(0)
noise = rng.uniform(-0.3, 0.3, 1600).astype(np.float32)
client = paho.Client(CallbackAPIVersion.VERSION2, client_id="flooder")
client.connect("127.0.0.1", port)
client.loop_start()
t = lambda sensor: topic_for("sensors", device, "audio", sensor)
n, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    now_us = int(time.time() * 1e6)
    k = n % 3
    if k == 0:    # a sensor that holds a slot and sends valid audio far faster than real time
        topic, payload = t("intruder"), encode_audio(noise, 16000, n // 3, now_us)
    elif k == 1:  # valid audio under a thousand made-up names: only free slots take them
        topic, payload = t(f"fake{n % 1000}"), encode_audio(noise, 16000, 0, now_us)
    else:         # garbage
        topic, payload = t(f"junk{n % 1000}"), rng.bytes(300)
    info = client.publish(topic, payload, qos=0)
    n += 1
    if n % 500 == 0:
        info.wait_for_publish(5)
client.loop_stop()
client.disconnect()
print(n)
"""


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) // 1024
    return out


def _mic(collector: Collector, topic: str, t0: float, t1: float) -> list[dict]:
    return [p for p in collector.payloads(topic) if p.get("s") == "mic0" and t0 * 1000 <= p["ts"] <= t1 * 1000]


def _quiet(collector: Collector, since: float) -> dict | None:
    """The last health message once the queue has been empty for two heartbeats after ``since``."""
    with collector._lock:
        hs = [json.loads(p) for t, topic, p, _ in collector.messages if topic.endswith("/health") and t > since]
    return hs[-1] if len(hs) >= 2 and hs[-1]["q"] == 0 and hs[-2]["q"] == 0 else None


def _phase(sensors: Broker, collector: Collector, clips: Path, flood_s: float | None) -> dict:
    """Replay the clips as mic0 (with a flood beside it when ``flood_s``); what the agent made of the mic."""
    flooder = None
    if flood_s:
        flooder = subprocess.Popen([sys.executable, "-c", FLOODER, str(sensors.port), DEVICE, str(flood_s)],
                                   cwd=REPO, stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)  # the flood is on before the mic starts
    t0 = time.time()
    replay(sensors.address, DEVICE, clips, rate=RATE)
    sent = 0
    if flooder is not None:
        out, _ = flooder.communicate(timeout=flood_s + 30)
        sent = int(out.strip() or 0)
    t1 = time.time()
    health = collector.wait_for(lambda c: _quiet(c, t1), 120, "the agent to drain its queue")
    time.sleep(2.0)  # the last summaries and alerts reach the collector
    return {"summaries": len(_mic(collector, "/summary", t0 - 1, time.time())),
            "alerts": len(_mic(collector, "/alert/noise", t0 - 1, time.time())),
            "classes": sorted({a["c"] for a in _mic(collector, "/alert/noise", t0 - 1, time.time())}),
            "flood_messages": sent, "flood_rate_per_s": round(sent / flood_s) if flood_s else 0,
            "wall_s": round(t1 - t0, 1), "bad": health["bad"]}


def _jpeg_bomb() -> bytes:
    """A real 16 x 16 JPEG whose frame header is rewritten to declare 12000 x 12000 (144 MP) in ~630 bytes."""
    jpeg = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(jpeg, "JPEG")
    data = bytearray(jpeg.getvalue())
    struct.pack_into(">HH", data, data.index(b"\xff\xc0") + 5, 12000, 12000)
    return bytes(data)


def _bombs() -> list[tuple[str, bytes]]:
    def png(size, mode="RGB") -> bytes:
        buf = io.BytesIO()
        Image.new(mode, size, 0 if mode == "1" else (9, 9, 9)).save(buf, "PNG")
        return buf.getvalue()

    big_jpeg = io.BytesIO()
    Image.new("RGB", (8000, 6000), (200, 10, 10)).save(big_jpeg, "JPEG", quality=5)  # real, 48 MP
    t = topic_for("sensors", DEVICE, "camera", "cam9")
    return ([(t, _jpeg_bomb())] * 20 + [(t, png((13000, 13000), "1"))] * 20 +
            [(t, big_jpeg.getvalue())] * 20 + [(t, png((2000, 2000)))] * 20)


def test_a_flood_does_not_starve_the_configured_microphone_and_bombs_stay_bounded(tmp_path, data_dir, noise_model,
                                                                                 capsys):
    clips = clip_folder(data_dir, tmp_path / "clips", SIREN + DOG)
    sensors, city = Broker(tmp_path / "sensors"), Broker(tmp_path / "city")
    collector = Collector(city.port, client_id="flood-collector")
    cfg = write_agent_config(tmp_path / "agent", noise_model, sensors.port, city.port, **{
        "device.sensors": {"audio": ["mic0"]}, "level.period_s": 1, "tasks.noise.rule.cooldown_s": 0,
        "outbox.max_bytes": 5_000_000, "outbox.hard_cap_bytes": 10_000_000,
        "tasks.vehicles": {"model": str(REPO / "agent/models/vehicles/model.onnx"),
                           "rule": {"classes": {"truck": {"threshold": 0.99}}}}})
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    try:
        collector.wait_for(lambda c: [s for s in c.payloads("/state") if s.get("online")], 30, "agent online")
        rss_start = _status(agent.proc.pid)
        baseline = _phase(sensors, collector, clips, None)
        rss_baseline = _status(agent.proc.pid)
        attack = _phase(sensors, collector, clips, 16.0)
        rss_flood = _status(agent.proc.pid)

        pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bomber")
        pub.connect("127.0.0.1", sensors.port)
        pub.loop_start()
        bombs = _bombs()
        t_b = time.time()
        for topic, payload in bombs:
            info = pub.publish(topic, payload, qos=1)
        info.wait_for_publish(30)
        pub.loop_stop()
        pub.disconnect()
        after_bombs = collector.wait_for(lambda c: [h for h in c.payloads("/health") if h["ts"] > t_b * 1000 and
                                                    h["rx"].get("camera", 0) >= len(bombs) and h["q"] == 0],
                                         120, "every bomb handled")[-1]
        rss_bombs = _status(agent.proc.pid)
        assert agent.alive(), agent.tail()
    finally:
        rc = agent.stop()
        collector.close()
        sensors.stop()
        city.stop()

    bomb_counts = {k: after_bombs["bad"].get(k, 0) - attack["bad"].get(k, 0) for k in ("image_size", "image_decode")}
    figures = {"baseline": baseline, "attack": attack, "bombs_sent": len(bombs), "bombs_counted": bomb_counts,
               "bombs_accepted": after_bombs["ok"].get("camera", 0),
               "rss_mib": {"start": rss_start, "after_baseline": rss_baseline, "after_flood": rss_flood,
                           "after_bombs": rss_bombs}, "agent_exit_code": rc}
    path = Path(os.environ.get("ROADSIDE_FLOOD_REPORT") or tmp_path / "flood_report.json")
    path.write_text(json.dumps(figures, indent=2) + "\n")
    with capsys.disabled():
        print(f"\nflood: mic seconds processed {attack['summaries']}/{baseline['summaries']} (attack/baseline), "
              f"alerts {attack['alerts']}/{baseline['alerts']}; flood {attack['flood_messages']} msgs "
              f"({attack['flood_rate_per_s']}/s); peak RSS MiB {rss_baseline['VmHWM']} -> {rss_flood['VmHWM']} "
              f"(flood) -> {rss_bombs['VmHWM']} (bombs {bomb_counts}); figures in {path}")

    assert rc == 0
    assert baseline["summaries"] >= 20 and baseline["alerts"] >= 2, baseline
    assert attack["flood_messages"] > 10 * baseline["summaries"] * 10  # the flood outnumbered the mic many times
    assert attack["summaries"] >= 0.8 * baseline["summaries"], (attack, baseline)  # not starved
    assert attack["alerts"] >= 0.5 * baseline["alerts"], (attack, baseline)
    assert attack["bad"].get("too_many_sensors", 0) > 0  # made-up names held off
    assert bomb_counts["image_size"] >= 40  # the declared-size bombs refused from their headers
    assert rss_bombs["VmHWM"] - rss_flood["VmHWM"] < 200  # MiB: a handful of reduced decodes, no bomb decoded


def test_hostile_messages_live_or_retained_never_stop_a_running_agent(tmp_path, noise_model):
    """The seen cases on a real broker: retained ones are ignored at start, live ones counted, the agent runs on."""
    sensors, city = Broker(tmp_path / "sensors"), Broker(tmp_path / "city")
    collector = Collector(city.port, client_id="hostile-collector")
    dds = io.BytesIO()
    Image.new("RGB", (8, 8)).save(dds, "DDS")
    t = lambda kind, sensor: topic_for("sensors", DEVICE, kind, sensor)  # noqa: E731  (one retained per topic)
    hostile = [(t("detector", "x1"), b"[" * 1000, "json"),
               (t("detector", "x2"), b'{"ts":' + b"7" * 400 + b',"speed_mph":1,"period_s":300}', "out_of_range"),
               (t("detector", "x3"), b'{"ts":1714550400000,"speed_mph":1e308,"period_s":300}', "out_of_range"),
               (t("camera", "x1"), dds.getvalue(), "image_format"), (t("camera", "x2"), _jpeg_bomb(), "image_size")]
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="hostile")
    pub.connect("127.0.0.1", sensors.port)
    pub.loop_start()
    for topic, payload, _ in hostile:  # retained: delivered again at every (re)subscription
        pub.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    cfg = write_agent_config(tmp_path / "agent", noise_model, sensors.port, city.port, **{
        "tasks.vehicles": {"model": str(REPO / "agent/models/vehicles/model.onnx"),
                           "rule": {"classes": {"truck": {"threshold": 0.99}}}},
        "tasks.congestion": {"model": str(REPO / "agent/models/congestion/model.onnx"),
                             "rule": {"classes": {"congested": {"threshold": 0.99}}}}})
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    try:
        collector.wait_for(lambda c: [h for h in c.payloads("/health") if h["bad"].get("retained") == len(hostile)],
                           30, "the retained messages dropped as retained")
        for topic, payload, _ in hostile:  # live, twice each
            for _ in range(2):
                pub.publish(topic, payload, qos=1).wait_for_publish(5)
        expected = {r: 2 * sum(1 for *_, x in hostile if x == r) for *_, r in hostile}
        health = collector.wait_for(lambda c: [h for h in c.payloads("/health")
                                               if all(h["bad"].get(r, 0) == n for r, n in expected.items())],
                                    30, f"every live attack counted as {expected}")[-1]
        assert agent.alive(), agent.tail()
        assert health["bad"].get("decode_error", 0) == 0  # each under its own reason, none unforeseen
    finally:
        pub.loop_stop()
        pub.disconnect()
        rc = agent.stop()
        collector.close()
        sensors.stop()
        city.stop()
    assert rc == 0 and "Traceback" not in (tmp_path / "agent.log").read_text()
