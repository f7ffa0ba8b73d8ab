"""``roadside fleet simulate``: N simulated poles (own MQTT connection, will, retained state each).

Register N poles (sim-0001...) with the stack in --dir (their own MQTT users), connect each with its
own MQTT connection, boot counter, will and retained state, and publish alerts (Poisson at --rate per
second over the whole fleet), level summaries and health built by the agent's own encoders. Seeded.
Prints a JSON summary at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from agent.subcommands import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, run)
    p.add_argument("--dir", type=Path, default=Path("city"), help="folder of a running `roadside fleet up`")
    p.add_argument("--devices", type=int, default=100, help="number of poles")
    p.add_argument("--rate", type=float, default=100.0, help="alerts per second, whole fleet")
    p.add_argument("--seconds", type=float, default=60.0, help="how long to publish")
    p.add_argument("--sites", type=int, default=20, help="poles are spread over this many sites")
    p.add_argument("--seed", type=int, default=1, help="random seed (schedule, classes, positions)")
    p.add_argument("--boot", type=int, default=1, help="boot counter of every pole (a new one = poles restarted)")
    p.add_argument("--ca-file", type=Path, help="connect with TLS, trusting only this CA (as the agent does)")
    p.add_argument("--prefix", default="sim", help="device ids are PREFIX-0001...")


def fleet_names(n: int, sites: int, prefix: str = "sim") -> dict[str, str]:
    """device -> site for a simulated fleet: sim-0001 at site-01, ..."""
    width = max(4, len(str(n)))
    return {f"{prefix}-{i + 1:0{width}d}": f"site-{i % max(1, sites) + 1:02d}" for i in range(n)}


def run(args: argparse.Namespace) -> int:
    from ..simulator import SimConfig, Simulator
    from ..stack import attach

    if args.devices < 1 or args.rate < 0 or args.seconds <= 0:
        raise SystemExit("--devices >= 1, --rate >= 0 and --seconds > 0, please")
    try:
        stack = attach(args.dir)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None
    names = fleet_names(args.devices, args.sites, args.prefix)
    pw = stack.add_devices(names)
    cfg = SimConfig(devices={d: (s, pw[d]) for d, s in names.items()}, ports=stack.mqtt_ports, rate=args.rate,
                    seed=args.seed, boot=args.boot, ca_file=args.ca_file)

    async def go() -> dict:
        await asyncio.sleep(1.0)  # the nodes reload their users
        sim = Simulator(cfg)
        t = time.monotonic()
        await sim.start()
        connected, connect_s = sim.stats.connected_now(sim.poles), round(time.monotonic() - t, 1)
        await sim.produce(args.seconds)
        await sim.drain(30)
        await sim.stop()
        st = sim.stats
        return {"devices": args.devices, "connected": connected, "connect_s": connect_s, "alerts": len(st.first_sent),
                "acked": len(st.acked), "pending": sim.pending(), "summaries": st.summaries, "health": st.health,
                "reconnects": st.connects - args.devices, "seconds": round(time.monotonic() - t, 1)}
    print(json.dumps(asyncio.run(go())))
    return 0
