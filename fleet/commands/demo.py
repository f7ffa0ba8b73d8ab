"""``roadside fleet demo``: the whole city side on this machine, with the console in a browser.

Start the city stack (3 NATS nodes, PostgreSQL, ingest workers), three real `roadside agent`s replaying
real recordings from ../shared/data (different clips per pole), N simulated poles and the operator
console; print the console's URL and a first login. Ctrl-C (or SIGTERM) stops everything, by PID.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.subcommands import add_command


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, run)
    p.add_argument("--duration", type=float, default=600.0, help="seconds to run (default 600)")
    p.add_argument("--dir", type=Path, help="folder for data and logs (default: a new one under /tmp)")
    p.add_argument("--port", type=int, default=8080, help="console port (default 8080; 0 = any free port)")
    p.add_argument("--poles", type=int, default=200, help="simulated poles (default 200)")
    p.add_argument("--rate", type=float, default=5.0, help="alerts per second from the simulated poles, all together")
    p.add_argument("--data", help="data folder (default $ROADSIDE_DATA, else ../shared/data)")


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from fleet.console import demo

    if not args.duration > 0 or args.poles < 0 or args.rate < 0:
        raise ValueError("--duration > 0, --poles >= 0 and --rate >= 0, please")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return demo.run(args.duration, args.dir.resolve() if args.dir else None, args.port, args.poles, args.rate,
                    args.data, stop, say=lambda line: print(line, flush=True))
