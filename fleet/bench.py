"""The ingest bench: a whole city stack and N simulated poles on this machine, measured end to end.

One run: start a stack (NATS cluster, PostgreSQL, workers), register N poles, connect them,
publish alerts at ``rate``/s for ``seconds`` (plus summaries and health), optionally inject the
faults, let every pole's outbox drain, wait for the database to hold every acknowledged alert,
then measure from the database itself:

- ``produced``: alerts the broker acknowledged (PUBACK) to a pole; ``unacked``: still in a
  pole's outbox at the end (never acknowledged: the agent would keep them);
- ``stored``: distinct acknowledged alert ids found in ``alerts``; ``lost`` = produced - stored;
- ``duplicates_stored``: rows beyond one per (device, alert id) (the unique key should make it 0);
- ``latency_ms``: ``ingested_at`` (commit) minus the pole's first send of the alert;
- ``alerts_per_s``: stored alerts over the span from the first send to the last commit;
- ``cpu_s``: CPU seconds per component over the run (``simulator`` is this process);
- ``db_bytes_per_row``: heap + indexes per row of alerts, level_summaries, health.

Each pole also sends a level summary and a health message every 30 s.

Faults (``faults=True``), at fractions of the publishing window: kill -9 of the NATS node leading
``$MQTT_msgs`` (restarted 10 s later), kill -9 of ingest worker w1 (restarted 5 s later), a
PostgreSQL restart, 50 poles whose network drops for 5 s (their wills fire; they reconnect).
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from pathlib import Path

from .simulator import SimConfig, Simulator
from .stack import Stack


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 1)


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _faults(stack: Stack, sim: Simulator, seconds: float, log: list) -> None:
    import nats

    from .streams import stream_leader
    t0 = time.monotonic()
    loop = asyncio.get_running_loop()

    async def at(frac: float):
        await asyncio.sleep(max(0.0, t0 + frac * seconds - time.monotonic()))

    def note(what: str):
        log.append({"t_s": round(time.monotonic() - t0, 1), "what": what})

    await at(0.15)
    nc = await nats.connect(servers=stack.nats_urls, connect_timeout=5)
    leader = await stream_leader(nc.jetstream(timeout=5))
    await nc.close()
    stack.nats.kill_node(leader)
    note(f"kill -9 NATS {leader} (leader of $MQTT_msgs)")
    await asyncio.sleep(10)
    await loop.run_in_executor(None, stack.nats.start_node, leader)
    note(f"NATS {leader} restarted")
    await at(0.35)
    stack.kill_worker("w1")
    note("kill -9 ingest worker w1")
    await asyncio.sleep(5)
    stack.start_worker("w1")
    note("worker w1 restarted")
    await at(0.5)
    note("PostgreSQL restart begins")
    await loop.run_in_executor(None, stack.pg.restart)
    note("PostgreSQL restarted")
    await at(0.65)
    dropped = [p for p in sim.poles[:50] if p.drop(away_s=5.0)]
    note(f"{len(dropped)} poles' network dropped for 5 s (their wills fire; they reconnect with backoff)")


async def _measure(stack: Stack, sim: Simulator, timeout: float) -> dict:
    import asyncpg

    acked = sim.stats.acked
    conn = await asyncpg.connect(stack.db_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            rows = await conn.fetch("SELECT device, alert_id, extract(epoch FROM ingested_at)::float8 AS t FROM alerts")
            ids = {r["alert_id"] for r in rows}
            if acked <= ids or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        dup = await conn.fetchval("SELECT count(*) - count(DISTINCT (device, alert_id)) FROM alerts")
        per_row = {}
        for table in ("alerts", "level_summaries", "health"):  # heap + indexes (+ partitions), per row
            size = await conn.fetchval(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c WHERE c.oid = $1::regclass "
                "OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = $1::regclass)", table)
            n = await conn.fetchval(f"SELECT count(*) FROM {table}")
            per_row[table] = round(size / n) if n else None
    finally:
        await conn.close()
    first = sim.stats.first_sent
    lat = [(r["t"] - first[r["alert_id"]]) * 1000 for r in rows if r["alert_id"] in first]
    stored = len(acked & ids)
    span = (max(r["t"] for r in rows) - min(first.values())) if rows and first else None
    return {"stored": stored, "lost": len(acked - ids), "duplicates_stored": dup, "rows": len(rows),
            "db_bytes_per_row": per_row,
            "alerts_per_s": round(stored / span, 1) if span else None,
            "latency_ms": {"p50": _pct(lat, 0.5), "p95": _pct(lat, 0.95), "p99": _pct(lat, 0.99)}}


async def run_bench(folder: Path, devices: int, seconds: float, rate: float, faults: bool = False, nodes: int = 3,
                    workers: int = 2, seed: int = 1, batch: int = 500) -> dict:
    from .commands.simulate import fleet_names

    loop = asyncio.get_running_loop()
    stack = Stack(folder, nodes=nodes, workers=workers, batch=batch)
    await loop.run_in_executor(None, stack.start)
    try:
        names = fleet_names(devices, 20)
        pw = stack.add_devices(names)
        await asyncio.sleep(1.0)  # users reloaded on every node
        sim = Simulator(SimConfig(devices={d: (s, pw[d]) for d, s in names.items()}, ports=stack.mqtt_ports,
                                  rate=rate, seed=seed, health_every_s=30.0, summary_every_s=30.0))
        t_conn = time.monotonic()
        await sim.start()
        connected, connect_s = sim.stats.connected_now(sim.poles), round(time.monotonic() - t_conn, 1)
        cpu0, self0 = stack.cpu_s(), _self_cpu()
        fault_log: list = []
        fault_task = asyncio.create_task(_faults(stack, sim, seconds, fault_log)) if faults else None
        await sim.produce(seconds)
        if fault_task:
            await fault_task
        await sim.drain(60)
        rss = stack.rss_mb()  # with every pole still connected
        result = await _measure(stack, sim, timeout=120)
        cpu1 = stack.cpu_s()
        await sim.stop()
        out = {"produced": len(sim.stats.acked), "unacked": sim.pending(), **result, "connections": connected,
                "connect_s": connect_s, "devices": devices, "seconds": seconds, "offered_rate": rate,
                "faults": fault_log, "reconnects": sim.stats.connects - devices,
                "cpu_s": {**{k: round(cpu1[k] - cpu0[k], 1) for k in cpu1}, "simulator": round(_self_cpu() - self0, 1)},
                "rss_mb": {**rss, "simulator": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)},
                "cpu_count": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()],
                "workers": stack.worker_stats()}
    finally:
        await loop.run_in_executor(None, stack.stop)
    out["left_running"] = stack.leftovers()  # PIDs of this run still alive after stop (should be none)
    return out
