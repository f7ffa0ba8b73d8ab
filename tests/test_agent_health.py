"""Health: the heartbeat's contents, the health file and ``roadside health`` (the container healthcheck),
and the accounting of every sensor message (received = accepted + dropped by reason)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.cli import main
from agent.config import load_config
from agent.health import AFTER_DECODE, write_health_file
from agent.payloads import encode_audio, encode_detector
from agent.runtime import Agent
from agent.sources import Message
from agent.tasks import Detection
from agent_fixtures import Broker, Collector, write_agent_config
from ops_fixtures import InProcessAgent, send_audio, tone, wait_until


def test_heartbeat_reports_windows_latency_outbox_models_and_process(tmp_path, noise_model):
    broker = Broker(tmp_path / "broker")
    observer = Collector(broker.port)
    agent = InProcessAgent(write_agent_config(tmp_path / "agent", noise_model, broker.port, broker.port))
    try:
        agent.wait_sensors()
        send_audio(broker.port, tone(6.0))
        beat = observer.wait_for(lambda c: [h for h in c.payloads("/health")
                                            if h["tasks"].get("noise", {}).get("windows", 0) >= 2], 20,
                                 "a heartbeat with noise windows")[-1]
    finally:
        agent.stop()
        observer.close()
        broker.stop()
    noise = beat["tasks"]["noise"]
    assert 0 < noise["p50_ms"] <= noise["p95_ms"]
    assert beat["rx"]["audio"] == beat["ok"]["audio"] == 60 and beat["bad"] == {}
    assert beat["models"]["noise"] == agent.agent.taskset.models["noise"]["sha256"][:16]
    assert beat["ch"] == agent.agent.origin.config_hash and beat["boot"] == 1
    assert beat["out"]["bytes"] >= 0 and {"alerts", "refused", "online"} <= set(beat["up"])
    assert beat["rss_mb"] > 10 and beat["cpu"]["s"] > 0 and 0 <= beat["cpu"]["pct"]
    with observer._lock:
        assert max(len(p) for _, t, p, _ in observer.messages if t.endswith("/health")) < 2048


def _beat(**kw) -> dict:
    return {"v": 1, "ts": int(time.time() * 1000), "up_s": 1.0, **kw}


def test_health_command_exit_codes(tmp_path, capsys):
    f = tmp_path / "health.json"
    assert main(["health", "--file", str(f)]) == 1  # no file: the agent is not running
    write_health_file(f, _beat(), every_s=1.0, problems=[])
    assert main(["health", "--file", str(f)]) == 0
    time.sleep(1.2)
    assert main(["health", "--file", str(f), "--max-age", "1"]) == 1
    assert "stale" in capsys.readouterr().err
    write_health_file(f, _beat(), every_s=1.0, problems=["uplink pump thread died"])
    assert main(["health", "--file", str(f)]) == 1
    assert "uplink pump thread died" in capsys.readouterr().err
    f.write_text("{half a file")
    assert main(["health", "--file", str(f)]) == 1


def test_health_age_survives_a_wall_clock_jump(tmp_path):
    f = tmp_path / "health.json"
    write_health_file(f, _beat(ts=int(time.time() * 1000) - 86_400_000), every_s=1.0, problems=[])
    assert main(["health", "--file", str(f)]) == 0  # written just now by the monotonic clock, whatever ts says
    doc = json.loads(f.read_text())
    f.write_text(json.dumps({**doc, "boot_id": "another-boot"}))  # after a reboot only the wall clock is comparable
    assert main(["health", "--file", str(f)]) == 1


def test_an_unreachable_city_broker_makes_the_agent_unhealthy_after_the_configured_time(tmp_path, noise_model):
    broker = Broker(tmp_path / "broker")  # sensors only; nothing listens on the city port
    from agent_fixtures import _free_port

    path = write_agent_config(tmp_path / "agent", noise_model, broker.port, _free_port(),
                              **{"health": {"offline_unhealthy_s": 1, "file": str(tmp_path / "h.json")}})
    agent = InProcessAgent(path)
    try:
        wait_until(lambda: (tmp_path / "h.json").is_file() and
                   json.loads((tmp_path / "h.json").read_text())["status"] == "unhealthy", 15, "unhealthy")
        assert main(["health", "--file", str(tmp_path / "h.json")]) == 1
        assert "city broker unreachable" in json.loads((tmp_path / "h.json").read_text())["problems"][0]
    finally:
        agent.stop()
        broker.stop()


# --------------------------------------------------------------------------- accounting

@pytest.fixture(scope="module")
def idle_agent(tmp_path_factory, noise_model):
    """An agent that is built (models loaded, outbox open) but not running: process() called directly."""
    folder = tmp_path_factory.mktemp("idle")
    # s0 is listed: it always has a slot, whatever sensors the fuzzing below has made up (issue 18)
    path = write_agent_config(folder, noise_model, 1, 1, **{"device.max_sensors": 4,
                                                            "device.sensors": {"audio": ["s0"]}})
    agent = Agent(load_config(path), path)
    yield agent
    agent.outbox.close()


def _balance(h) -> tuple[int, int]:
    received = sum(h.received.values())
    accounted = sum(h.accepted.values()) + sum(n for r, n in h.malformed.items()
                                               if r not in AFTER_DECODE and r != "topic")
    return received, accounted


AUDIO = encode_audio(np.zeros(1600, np.float32), 16000, 0, 1_714_550_400_000_000)
payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda cut, flip, b: bytes(x ^ b if i == flip else x for i, x in enumerate(AUDIO[:cut])),
              st.integers(0, len(AUDIO)), st.integers(0, 40), st.integers(0, 255)),
    st.builds(lambda ts, v: encode_detector(ts, v), st.integers(-10, 2**60), st.floats(allow_nan=True)),
    st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(st.sampled_from(["ts", "speed_mph", "period_s",
                                                                                "count", "x"]),
                                                                st.one_of(st.integers(), st.text(max_size=5),
                                                                          st.none(), st.floats()))),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["audio", "camera", "detector"]), sensor=st.sampled_from(["s0", "s1", "s2", "s3", "s4",
                                                                                    "s5"]), payload=payloads)
def test_every_message_is_accepted_or_counted_under_one_reason(idle_agent, kind, sensor, payload):
    h = idle_agent.health
    before = (sum(h.accepted.values()), sum(h.malformed.values()))
    h.receive(kind)  # what a source does before queueing
    idle_agent.process(Message(kind, sensor, payload, time.time() * 1000))  # never raises
    after = (sum(h.accepted.values()), sum(h.malformed.values()))
    assert (after[0] - before[0]) + (after[1] - before[1]) >= 1
    received, accounted = _balance(h)
    assert received == accounted
    assert all(len(s) <= 4 for s in idle_agent._sensors.values())  # device.max_sensors bounds sensor state


def test_a_full_disk_is_counted_and_the_agent_goes_on(idle_agent):
    db = idle_agent.outbox._db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite now answers SQLITE_FULL, as on a full disk
    try:
        det = Detection("noise", "mic0", "siren", 0.9, 1_714_550_400_000, 4000, None)
        stored = 0
        for _ in range(200):  # enough rows to need a new page
            stored += idle_agent.store(det)
        assert idle_agent.health.malformed["outbox_error"] >= 1
        assert stored + idle_agent.health.malformed["outbox_error"] == 200
    finally:
        db.execute("PRAGMA max_page_count = 1073741823")
    assert idle_agent.store(det) == 1  # space again: storing resumes


def test_a_wild_capture_time_is_dropped_as_input_not_failing_a_task(idle_agent):
    # Found by the fault suite's fuzzing: the level task could not place year -237735 in a day or a night.
    h = idle_agent.health
    before = (h.malformed["bad_time"], h.malformed["task_error"])
    for capture_us in (2**62, -(2**62)):
        idle_agent.process(Message("audio", "s0", encode_audio(np.zeros(1600, np.float32), 16000, 0, capture_us), 0))
    assert (h.malformed["bad_time"], h.malformed["task_error"]) == (before[0] + 2, before[1])
