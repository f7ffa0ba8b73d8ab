"""Measure the agent for the closing note: alert size, upstream vs raw bytes, latency, CPU per stream.

Runs the real thing: two mosquitto brokers, ``roadside agent`` as a child process with the
noise model and the level meter, and ``roadside replay`` of real clips in real time.

    .venv/bin/python scripts/measure_agent.py [--repeats 2] [--rate 1]

Latency = arrival at the city-broker subscriber minus the alert's ``ts`` (the capture time
of the last sample of the window that fired). CPU = the agent process's user+system time
over the replay, per second of audio (1.0 would be one core fully busy).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from agent.sources.replay import replay  # noqa: E402
from agent_fixtures import AgentProcess, Broker, Collector, SHIPPED_NOISE, write_agent_config  # noqa: E402

CLIPS = ["106905-8-0-0", "106905-8-0-1", "106905-8-0-2", "106905-8-0-3", "101415-3-0-2", "101415-3-0-3",
         "101415-3-0-8"]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2, help="times the 28 s clip sequence is played")
    ap.add_argument("--rate", type=float, default=1.0)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    args = ap.parse_args()
    model = SHIPPED_NOISE
    tmp = Path(tempfile.mkdtemp(prefix="roadside-measure-"))
    clips = tmp / "clips"
    clips.mkdir()
    for i, name in enumerate(CLIPS * args.repeats):
        (clips / f"{i:03d}-{name}.flac").symlink_to(next(Path(args.data, "urbansound8k").glob(f"fold*/{name}.flac")))
    sensors, city = Broker(tmp / "sensors"), Broker(tmp / "city")
    collector = Collector(city.port)
    cfg = write_agent_config(tmp / "agent", model, sensors.port, city.port,
                             **{"tasks.noise.rule.cooldown_s": 0, "uplink.heartbeat_s": 10})
    agent = AgentProcess(cfg, tmp / "agent.log")
    try:
        collector.wait_for(lambda c: c.payloads("/state"), 30, "agent online")
        cpu0, t0 = _cpu_seconds(agent.proc.pid), time.time()
        sent = replay(sensors.address, "test-0001", clips, rate=args.rate)
        time.sleep(3)
        cpu = _cpu_seconds(agent.proc.pid) - cpu0
        audio_s = 4.0 * len(CLIPS) * args.repeats
        with collector._lock:
            msgs = list(collector.messages)
        alerts = [(t, json.loads(p), len(p)) for t, topic, p, _ in msgs if "/alert/" in topic]
        up_bytes = sum(len(p) + len(topic) for t, topic, p, _ in msgs if t >= t0)
        lat = np.array([t * 1000 - a["ts"] for t, a, _ in alerts if "r" not in a])
        raw = sum(sent.values())
        print(json.dumps({
            "audio_seconds": audio_s, "rate": args.rate,
            "alerts": len(alerts), "classes": sorted({a["c"] for _, a, _ in alerts}),
            "alert_bytes_min_max": [min(n for *_, n in alerts), max(n for *_, n in alerts)] if alerts else None,
            "raw_sensor_payload_bytes": raw, "upstream_bytes_payload_plus_topic": up_bytes,
            "upstream_over_raw": round(up_bytes / raw, 6),
            "latency_ms_p50_p95": [round(float(np.percentile(lat, 50)), 1), round(float(np.percentile(lat, 95)), 1)]
            if lat.size else None,
            "latency_n": int(lat.size),
            "agent_cpu_seconds": round(cpu, 2), "cpu_per_realtime_stream_core_fraction": round(cpu / audio_s, 4),
        }, indent=1))
    finally:
        agent.stop()
        collector.close()
        sensors.stop()
        city.stop()


if __name__ == "__main__":
    main()
