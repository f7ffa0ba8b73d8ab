"""``roadside fleet bench``: one measured run of the whole city stack with N simulated poles."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure ingest end to end: alerts/s, publish-to-commit latency, loss",
                       description="Start a city stack in a fresh folder, connect N simulated poles, publish for "
                       "--seconds at --rate alerts/s, optionally inject faults (kill -9 of the NATS node leading the "
                       "alert stream, kill -9 of an ingest worker, a PostgreSQL restart, 50 poles dropping off and "
                       "back), drain, and print one JSON object: produced, stored, lost, duplicates_stored, "
                       "alerts_per_s, latency_ms {p50,p95,p99} (publish to commit), connections, faults, cpu_s per "
                       "component. Everything is stopped at the end.")
    p.add_argument("--devices", type=int, default=1000, help="simulated poles, one MQTT connection each")
    p.add_argument("--seconds", type=float, default=60.0, help="publishing window")
    p.add_argument("--rate", type=float, default=2000.0, help="offered alerts per second, whole fleet")
    p.add_argument("--faults", action="store_true", help="inject the four faults during the window")
    p.add_argument("--nodes", type=int, default=3, help="NATS nodes")
    p.add_argument("--workers", type=int, default=2, help="ingest workers")
    p.add_argument("--batch", type=int, default=500, help="messages per worker transaction, at most")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dir", type=Path, help="stack folder (default: a fresh one under /tmp, removed after)")
    p.add_argument("--json", action="store_true", help="(the output is always one JSON object; kept for scripts)")
    p.add_argument("--keep", action="store_true", help="keep the stack folder (logs) after the run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import shutil

    from ..bench import run_bench

    if args.devices < 1 or args.seconds <= 0 or args.rate <= 0 or args.nodes < 1 or args.workers < 1:
        raise SystemExit("--devices, --seconds, --rate, --nodes and --workers must be positive")
    folder = args.dir or Path(tempfile.mkdtemp(prefix="roadside-bench-", dir="/tmp"))
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o711)  # postgres (as nobody when run by root) must reach its data
    try:
        result = asyncio.run(run_bench(folder, args.devices, args.seconds, args.rate, faults=args.faults,
                                       nodes=args.nodes, workers=args.workers, seed=args.seed, batch=args.batch))
    finally:
        if args.dir is None and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(result))
    return 0 if result["lost"] == 0 and result["duplicates_stored"] == 0 else 1
