"""``roadside fleet rollout bench``: a good and a bad model rolled out to N simulated poles, measured.

One run: a fresh city stack (NATS cluster, PostgreSQL, ingest workers), N simulated poles over
``sites`` sites answering the rollout protocol, then

1. a good candidate through the stages: seconds to ``completed`` (every pole promoted), per stage
   the seconds from its start to its gate and to its last promotion, commands sent;
2. a bad candidate (``--bad``: agreement, latency, install or offline): the gate that fired, the
   share of the fleet that ever shadowed it and that ever ran it as the active model, seconds from
   the start to the breach and to every pole being back (state ``halted``).

Shadow time is simulated (``windows_per_s`` windows a second per pole), so the figures are the
city's own cost (commanding N poles, their answers through ingest, gating, resends) plus the
configured waits (``soak_s``), which are given in the output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path


def register(rs) -> None:
    p = rs.add_parser("bench", help="time a good and a bad rollout to N simulated poles (fresh stack)")
    p.add_argument("--poles", type=int, default=1000)
    p.add_argument("--sites", type=int, default=20)
    p.add_argument("--stages", default="1%,10%,50%,100%")
    p.add_argument("--windows", type=int, default=300, help="shadow windows per canary")
    p.add_argument("--windows-per-s", type=float, default=100.0, help="simulated windows compared per second")
    p.add_argument("--soak", type=float, default=5.0, help="seconds after each promotion")
    p.add_argument("--bad", default="agreement", choices=["agreement", "latency", "install", "offline", "none"])
    p.add_argument("--command-qos", type=int, choices=[0, 1], default=1,
                   help="QoS of the poles' cmd/+ subscriptions (1: as the agent; NATS then keeps a JetStream "
                   "consumer per pole, which 1,000 at once on 2 cores turn into a reconnect storm)")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dir", type=Path, help="stack folder (default: a fresh one under /tmp, removed after)")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    import shutil

    from .plan import parse_stages
    folder = args.dir or Path(tempfile.mkdtemp(prefix="roadside-rollout-bench-", dir="/tmp"))
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o711)
    try:
        bench = run_bench(folder, args.poles, args.sites, parse_stages(args.stages), args.windows, args.windows_per_s,
                          args.soak, args.bad, args.nodes, args.workers, args.command_qos)
        out = asyncio.run(_stoppable(bench))
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(out))
    return 0 if out["good"]["state"] == "completed" and out.get("bad", {}).get("state", "halted") == "halted" else 1


async def _stoppable(coro):
    """``coro`` cancelled by SIGTERM or SIGINT (even where the shell started it with SIGINT ignored), so its
    ``finally`` blocks stop the poles and the stack by their PIDs instead of leaving them running."""
    import signal

    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        raise SystemExit("rollout bench: stopped by a signal; stack and poles stopped") from None


def _behaviour(kind: str, wps: float):
    from .simpole import Behaviour
    return {"good": Behaviour(windows_per_s=wps), "agreement": Behaviour(agr=0.55, cf=0.6, windows_per_s=wps),
            "latency": Behaviour(latency_ratio=4.0, windows_per_s=wps), "install": Behaviour(install_fail=True),
            "offline": Behaviour(offline_after_promote_s=10.0, windows_per_s=wps)}[kind]


async def _stage_times(conn, rid: int, t0) -> list[dict]:
    rows = await conn.fetch("SELECT kind, at, detail FROM rollout_events WHERE rollout_id=$1 AND kind IN "
                            "('gate', 'stage', 'promoted') ORDER BY id", rid)
    out, stage = [], 0
    for r in rows:
        d = json.loads(r["detail"])
        s = round((r["at"] - t0).total_seconds(), 2)
        if r["kind"] == "gate":
            out.append({"stage": d["stage"], "gate_s": s})
            stage = d["stage"]
        elif r["kind"] == "promoted" and out and out[-1]["stage"] == stage:
            out[-1]["last_promoted_s"] = s
    return out


async def _one(ctx, cand: Path, base: Path, stages, progress) -> dict:
    import asyncpg

    from . import service, store
    conn = await asyncpg.connect(ctx["db"])
    try:
        rid = await service.start(conn, cand, base, stages, "bench", ctx["bundles"], ctx["settings"](),
                                  {"min_windows": ctx["windows"]})
        t0 = time.monotonic()
        ro = await service.run(ctx["db"], rid, ctx["priv"], ctx["mqtt"], ctx["bundles"], progress)
        took = time.monotonic() - t0
        counts = await conn.fetchrow(
            "SELECT count(*) AS poles, count(*) FILTER (WHERE ever_ran) AS ran, "
            "count(*) FILTER (WHERE sends > 0) AS sent, count(*) FILTER (WHERE status = 'promoted') AS promoted, "
            "sum(sends) AS commands "
            "FROM rollout_targets WHERE rollout_id=$1", rid)
        breach = await conn.fetchval("SELECT at FROM rollout_events WHERE rollout_id=$1 AND kind='halted'", rid)
        return {"id": rid, "state": ro["state"], "seconds": round(took, 2), "gate": ro["gate"], "reason": ro["reason"],
                **{k: counts[k] for k in ("poles", "ran", "sent", "promoted", "commands")},
                "ever_ran_share": round(counts["ran"] / counts["poles"], 4),
                "ever_sent_share": round(counts["sent"] / counts["poles"], 4),
                "breach_s": round((breach - ro["created_at"]).total_seconds(), 2) if breach else None,
                "stages": await _stage_times(conn, rid, ro["created_at"]),
                "stage_counts": await store.stage_counts(conn, rid)}
    finally:
        await conn.close()


async def run_bench(folder: Path, poles: int, sites: int, stages: list[float], windows: int, wps: float,
                    soak: float, bad: str, nodes: int = 3, workers: int = 2, command_qos: int = 1) -> dict:
    from ..stack import Stack

    loop = asyncio.get_running_loop()
    stack = Stack(folder, nodes=nodes, workers=workers)
    await loop.run_in_executor(None, stack.start)
    try:
        out = await _on_stack(stack, folder, poles, sites, stages, windows, wps, soak, bad, command_qos)
        out.update(nodes=nodes, workers=workers, command_qos=command_qos,
                   cpu_s={k: round(v, 1) for k, v in stack.cpu_s().items()})
    finally:
        await loop.run_in_executor(None, stack.stop)
    out["left_running"] = stack.leftovers()
    return out


async def _on_stack(stack, folder: Path, poles: int, sites: int, stages: list[float], windows: int, wps: float,
                    soak: float, bad: str, command_qos: int) -> dict:
    from agent.control.signing import generate_keypair

    from ..commands.simulate import fleet_names
    from ..simulator import Simulator
    from . import kit, service
    from .bundles import read_bundle

    priv, pub = generate_keypair(folder / "keys" / "ops.key")
    b = [kit.toy_bundle(folder / "src", priv, i + 1, f"{i + 1}.0") for i in range(3)]
    names = fleet_names(poles, sites, prefix="rb")
    beh = {read_bundle(b[1]).sha256: _behaviour("good", wps)}
    if bad != "none":
        beh[read_bundle(b[2]).sha256] = _behaviour(bad, wps)
    sim = Simulator(kit.sim_config(stack, names, pub, beh, b[0], command_qos=command_qos))
    await asyncio.sleep(1.0)
    t = time.monotonic()
    beats = None
    try:  # the poles are stopped however this ends (Ctrl-C included), before the stack is
        await sim.start(connect_timeout=300)
        await kit.wait_known(stack.db_url, list(names), timeout=300)
        out = {"poles": poles, "sites": sites, "stages": stages, "windows": windows, "windows_per_s": wps,
               "soak_s": soak, "connect_s": round(time.monotonic() - t, 1)}
        beats = asyncio.ensure_future(kit.heartbeats(sim, 20.0))

        def settings() -> service.Settings:
            return service.Settings(windows=windows, report_every=max(1, windows // 3), stage_timeout_s=300,
                                    soak_s=soak, resend_s=15.0, catchup_s=60.0, tick_s=0.5)
        mqtt = service.MqttOps.from_stack_info(json.loads((folder / "stack.json").read_text()))
        ctx = {"db": stack.db_url, "priv": priv, "bundles": folder / "bundles", "windows": windows,
               "settings": settings, "mqtt": mqtt}
        out["good"] = await _one(ctx, b[1], b[0], stages, _progress)
        if bad != "none":
            out["bad"] = {"kind": bad, **await _one(ctx, b[2], b[1], stages, _progress)}
        versions = [p.models["noise"]["version"] for p in sim.poles]
        out["final_versions"] = {v: versions.count(v) for v in sorted(set(versions))}
        out["reconnects"] = sim.stats.connects - poles
        return out
    finally:
        if beats is not None:
            beats.cancel()
        await asyncio.wait_for(sim.stop(), 60)


def _progress(line: str) -> None:
    print(line, flush=True, file=sys.stderr)
