"""The agent end to end: audio streams one core sustains, alert latency, RSS, and bytes per day upstream.

1. Streams per core: N microphones' worth of real audio, encoded as the sensors send it
   (100 ms PCM16 chunks), pushed through the agent's worker path in-process (decode, checks,
   the noise task, the sound level meter, the outbox) as fast as it goes, on one thread.
   Real-time factor = seconds of audio / CPU seconds; one core sustains that many streams.
   MQTT receive and the uplink are not in it (they are in 2).
2. A measured replay: ``roadside demo``'s machinery (two brokers, the agent as a child
   process, the scene replayed in real time) for ``REPLAY_S`` seconds. From it: alert
   latency (window end -> city subscriber) p50/p95, the agent's peak RSS and CPU, and
   the bytes it sent upstream against the raw audio the sensors sent it, per day: alerts
   at the rate measured on this (busy) scene, level summaries and heartbeats at their
   measured sizes and the production profile's periods (firmware_configs/jetson-orin-nano.yaml).
Nothing here asserts a time.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
N_STREAMS = 8
STREAM_S = 12.0
REPLAY_S = 30.0
DAY = 86400


@pytest.fixture(scope="module")
def stream_messages(data_dir):
    """(kind, sensor, payload) in arrival order: N_STREAMS microphones, 100 ms chunks, interleaved in time."""
    from agent.payloads import encode_audio
    from compression.tasks.noise.urbansound import list_clips, load_clip

    clips = list_clips(data_dir / "urbansound8k", folds=["fold2"])[::7]
    per_stream = int(STREAM_S / 4)
    waves = [np.concatenate([load_clip(c.path, 16000, 4.0) for c in clips[i * per_stream:(i + 1) * per_stream]])
             for i in range(N_STREAMS)]
    t0 = int(time.time() * 1e6)
    chunks = int(STREAM_S * 10)
    return [("audio", f"mic{i}", encode_audio(waves[i][k * 1600:(k + 1) * 1600], 16000, k, t0 + k * 100_000))
            for k in range(chunks) for i in range(N_STREAMS)]


def test_audio_streams_one_core_sustains(benchmark, stream_messages, tmp_path):
    from agent.config import load_config
    from roadside_demo.run import demo_config
    from agent.runtime import Agent
    from agent.sources import Message

    path, raw, _ = demo_config(tmp_path, 1, 2)  # brokers are never contacted: only the worker path runs
    agent = Agent(load_config(path), path)
    cpu: list[float] = []
    wall: list[float] = []  # our own: benchmark.stats does not exist under --benchmark-disable (a smoke run)

    def run():
        c0, w0 = time.process_time(), time.perf_counter()
        for kind, sensor, payload in stream_messages:
            agent.process(Message(kind, sensor, payload, time.time() * 1000))
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    agent.outbox.close()
    audio_s = N_STREAMS * STREAM_S
    cpu_s = float(np.median(cpu[1:] if len(cpu) > 1 else cpu))
    windows = agent.health.snapshot()["tasks"].get("noise", {})
    benchmark.extra_info["record"] = {
        "what": f"{N_STREAMS} microphones x {STREAM_S:.0f} s of real audio through Agent.process, one thread "
                f"(decode, noise task: {raw['tasks']['noise']['model'].rsplit('/', 2)[-2]} model, hop 1 s; "
                f"sound level meter; outbox)",
        "cpu_s_per_round_median": round(cpu_s, 3),
        "wall_s_per_round_median": round(float(np.median(wall[1:] if len(wall) > 1 else wall)), 3),
        "real_time_factor_cpu": round(audio_s / cpu_s, 1),
        "audio_streams_one_core_sustains": int(audio_s / cpu_s),
        "noise_windows_all_rounds": windows.get("windows"),
        "noise_inference_p50_p95_ms": [windows.get("p50_ms"), windows.get("p95_ms")],
    }


def test_measured_replay_latency_rss_and_bytes_per_day(benchmark, data_dir):
    from agent.config import load_config
    from roadside_demo.run import run_scene
    from roadside_demo.report import summarise

    got = {}
    benchmark.pedantic(lambda: got.update(r=run_scene(REPLAY_S, str(data_dir), say=None,
                                                      overrides={"uplink.heartbeat_s": 5})), rounds=1, iterations=1)
    result, _ = got["r"]
    s = summarise(result)
    prod = load_config(REPO / "firmware_configs" / "jetson-orin-nano.yaml")
    sizes, seconds = s["message_sizes"], s["seconds"]
    raw_audio_day = s["bytes_raw"].get("audio", 0) * DAY / seconds
    alerts_day = s["bytes_upstream"].get("alert", 0) * DAY / seconds
    summaries_day = sizes.get("summary", 0) * DAY / prod.level.period_s
    health_day = sizes.get("health", 0) * DAY / prod.uplink.heartbeat_s
    up_day = alerts_day + summaries_day + health_day
    lat = s["latency_ms"]
    benchmark.extra_info["record"] = {
        "replay": f"{seconds:.0f} s of real recordings at real time through two brokers and the agent process",
        "alerts": f"{s['alert_count']} ({s['alerts']}), {3600 * s['alert_count'] / seconds:.0f} per hour on this scene",
        "alert_latency_ms_p50_p95": [round(lat["p50"], 1), round(lat["p95"], 1)] if lat["n"] else None,
        "alert_latency_n": lat["n"],
        "inference_ms_p50_p95": {t: [v.get("p50_ms"), v.get("p95_ms")] for t, v in s["inference"].items()},
        "agent_peak_rss_mb": round(s["agent"].get("rss_peak_mb", float("nan")), 1),
        "agent_cpu_fraction_of_a_core": round(s["agent"].get("cpu_s", float("nan")) / seconds, 4),
        "raw_sensor_bytes_measured": s["bytes_raw"],
        "upstream_bytes_measured": s["bytes_upstream"],
        "mean_message_bytes_payload_plus_topic": {k: round(v, 1) for k, v in sizes.items()},
        "raw_audio_bytes_per_day": f"{raw_audio_day:,.0f}",
        "upstream_bytes_per_day": f"{up_day:,.0f} (alerts {alerts_day:,.0f} at this scene's rate, summaries "
                                  f"{summaries_day:,.0f} every {prod.level.period_s} s, heartbeats {health_day:,.0f} "
                                  f"every {prod.uplink.heartbeat_s:.0f} s)",
        "raw_audio_over_upstream": f"{raw_audio_day / up_day:,.0f}x" if up_day else None,
    }
    assert s["bytes_raw"].get("audio", 0) > 0 and s["bytes_upstream_total"] > 0
