"""Privacy: nothing the agent sends upstream carries sensor data.

The agent gets real sensor data of all three kinds (UrbanSound8K clips, vehicle JPEGs,
Los-loop detector speeds) through ``roadside replay``, plus commands that are refused; every
message that reaches the city broker is then checked (``upstream_schema.check_upstream``):
its topic's JSON schema, its size bound, and no audio/JPEG/PNG/WAV/FLAC signature, raw or
base64. Raw sensor messages and their bytes never appear upstream.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from agent.features.detector import DetectorParams
from agent.features.image import ImageParams
from agent.sources.replay import replay
from agent_fixtures import Broker, Collector, clip_folder, linear_model, write_agent_config
from ops_fixtures import DEVICE, InProcessAgent, base_topic, publish, wait_until
from upstream_schema import check_upstream

CLIPS = ["106905-8-0-0", "106905-8-0-1", "101415-3-0-2", "101415-3-0-3"]  # siren, then dog bark


def _inputs(data_dir: Path, out: Path) -> tuple[Path, Path, Path]:
    audio, images = clip_folder(data_dir, out / "audio", CLIPS), out / "images"
    images.mkdir()
    jpgs = sorted((data_dir / "vehicles").glob("*/*.jpg"))[::40][:16]
    if not jpgs:
        pytest.skip(f"no vehicle crops in {data_dir / 'vehicles'}")
    for i, p in enumerate(jpgs):
        (images / f"{i:02d}.jpg").symlink_to(p)
    detectors = out / "loop.csv"
    with open(data_dir / "traffic" / "los_speed.csv") as f, open(detectors, "w", newline="") as g:
        rows = list(csv.reader(f))[1:17]
        w = csv.writer(g)
        w.writerow(["ts", "sensor", "speed_mph"])
        for i, row in enumerate(rows):
            w.writerow([1_714_550_400_000 + i * 300_000, "loop7", row[0]])
    return audio, images, detectors


def _tiny_models(folder: Path) -> tuple[Path, Path]:
    vehicles = linear_model(folder / "veh", [3, 64, 64], np.array([[0, 5.0], [0, 0], [5.0, 0]]), np.zeros(2),
                            {"task": "vehicles", "labels": ["car", "truck"], "frontend": ImageParams().to_dict()},
                            reduce_axes=[2, 3])
    p = DetectorParams()
    w = np.zeros((p.n_features, 3))
    w[:p.history_steps, 0], w[:p.history_steps, 2] = 40 / p.history_steps, -40 / p.history_steps
    congestion = linear_model(folder / "cong", [p.n_features], w, np.array([-30.0, 0.0, 22.0]),
                              {"task": "congestion", "labels": ["free", "slowed", "congested"],
                               "frontend": p.to_dict()})
    return vehicles, congestion


def test_nothing_upstream_carries_sensor_data(tmp_path, data_dir, noise_model):
    audio, images, detectors = _inputs(data_dir, tmp_path / "inputs")
    vehicles, congestion = _tiny_models(tmp_path / "models")
    broker = Broker(tmp_path / "broker")
    observer = Collector(broker.port)
    rule = {"cooldown_s": 0, "classes": {"car": {"threshold": 0.5}, "truck": {"threshold": 0.5}}}
    cfg = write_agent_config(tmp_path / "agent", noise_model, broker.port, broker.port, **{
        "tasks.noise.rule.cooldown_s": 0, "level.period_s": 2,
        "tasks.vehicles": {"model": str(vehicles), "rule": rule},
        "tasks.congestion": {"model": str(congestion),
                             "rule": {"cooldown_s": 0, "classes": {"free": {"threshold": 0.5},
                                                                   "congested": {"threshold": 0.5}}}}})
    agent = InProcessAgent(cfg)
    try:
        agent.wait_sensors()
        sent = replay(broker.address, DEVICE, audio, images, detectors, rate=4)
        publish(broker.port, f"{base_topic()}/cmd/model",
                json.dumps({"id": "p1", "task": "noise", "bundle": "AAAA"}).encode())
        publish(broker.port, f"{base_topic()}/cmd/reload", json.dumps({"id": "p2", "config": "device: [x"}).encode())
        observer.wait_for(lambda c: len(c.payloads("/ack")) >= 2 and c.payloads("/alert/noise"), 30,
                          "answers and noise alerts")
        wait_until(lambda: agent.agent.queue.qsize() == 0 and agent.agent.outbox.stats()["alerts"] == 0, 20,
                   "everything sent")
    finally:
        agent.stop()
        observer.close()
        broker.stop()

    assert sent["audio"] > 400_000 and sent["camera"] > 10_000 and sent["detector"] > 0
    with observer._lock:  # what the agent sent: everything but the commands this test sent it
        messages = [(t, p) for _, t, p, _ in observer.messages if not re.search(r"/cmd/[^/]+$", t)]
    kinds = Counter(check_upstream(t, p) for t, p in messages)  # every single one
    assert all(t.startswith(base_topic() + "/") for t, _ in messages)
    assert kinds["alert"] >= 2 and kinds["summary"] >= 1 and kinds["health"] >= 1 and kinds["state"] >= 1
    assert kinds["ack"] >= 2
    alert_kinds = {json.loads(p)["k"] for t, p in messages if "/alert/" in t}
    assert "noise" in alert_kinds and alert_kinds <= {"noise", "vehicles", "congestion", "level"}
    upstream = sum(len(p) for _, p in messages)
    assert upstream < sum(sent.values()) / 20  # alerts and counters, not the recordings


ALERT = {"v": 1, "id": "test-0001:1:7", "ts": 1714550700123, "tq": "s", "k": "noise", "s": "mic0", "c": "siren",
         "p": 0.93, "w": 4000, "m": {}, "ch": "fedcba9876543210"}


@pytest.mark.parametrize("topic, payload, rule", [
    ("alert/noise", json.dumps({**ALERT, "m": {"x": 1.0}, "clip": "UlMBAYA+AAAHAAAA"}).encode(), "audio chunk"),
    ("alert/noise", json.dumps({**ALERT, "img": "/9j/4AAQSkZJRgABAQ"}).encode(), "JPEG"),
    ("health", b'{"v":1,"pcm":"' + b"A" * 120 + b'"}', "long base64"),
    ("alert/noise", b"RS\x01\x01\x80>\x00\x00" + b"\x00" * 40, "audio chunk"),
    ("alert/noise", json.dumps({**ALERT, "extra": 1}).encode(), "extra"),
    ("alert/noise", json.dumps({**ALERT, "c": "x" * 300}).encode(), "bytes"),
], ids=["audio-b64", "jpeg-b64", "blob", "raw-audio", "unknown-key", "too-big"])
def test_the_check_refuses_sensor_data_and_unknown_formats(topic, payload, rule):
    with pytest.raises((AssertionError, ValueError), match=rule):
        check_upstream(f"{base_topic()}/{topic}", payload)


def test_the_check_passes_the_documented_alert():
    assert check_upstream(f"{base_topic()}/alert/noise", json.dumps(ALERT).encode()) == "alert"
