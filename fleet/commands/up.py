"""``roadside fleet up``: a local city stack (NATS cluster, PostgreSQL, ingest workers) until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="run a local city stack on 127.0.0.1 until Ctrl-C",
                       description="Start a NATS cluster (JetStream, MQTT listener on each node), PostgreSQL and "
                       "ingest workers on 127.0.0.1, print where they listen, and stop them all on Ctrl-C "
                       "(or SIGTERM), leaving nothing running. The same --dir again resumes its data.")
    p.add_argument("--dir", type=Path, default=Path("city"), help="folder for data, logs and stack.json "
                   "(as root, user 'nobody' must be able to reach it: postgres runs as that user)")
    p.add_argument("--nodes", type=int, default=3, help="NATS nodes (streams are replicated min(3, nodes) ways)")
    p.add_argument("--workers", type=int, default=2, help="ingest worker processes")
    p.add_argument("--tls-cert", type=Path, help="certificate (PEM) for the MQTT listeners; with --tls-key")
    p.add_argument("--tls-key", type=Path, help="its private key")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..stack import Stack

    if args.nodes < 1 or args.workers < 0:
        raise SystemExit(f"--nodes {args.nodes} / --workers {args.workers}: need at least 1 node, 0 workers")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("--tls-cert and --tls-key go together")
    tls = (args.tls_cert.resolve(), args.tls_key.resolve()) if args.tls_cert else None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = Stack(args.dir.resolve(), nodes=args.nodes, workers=args.workers, tls=tls)
    stack.start()
    try:
        print(f"city stack up in {args.dir}:")
        print("  MQTT (poles):   " + ", ".join(f"127.0.0.1:{p}" for p in stack.mqtt_ports) + (" (TLS)" if tls else ""))
        print("  NATS (ops):     " + ", ".join(u.split("@")[-1] for u in stack.nats_urls))
        print(f"  PostgreSQL:     127.0.0.1:{stack.pg.port} (URL with password in {args.dir}/stack.json)")
        print(f"  workers:        {len(stack.workers)}; logs in {args.dir}/workers/")
        print("  add poles:      roadside fleet simulate --dir DIR ...; Ctrl-C stops everything", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        stack.stop()
        left = stack.leftovers()
        print("stopped" + (f"; still running: {left}" if left else ", nothing left running"), flush=True)
    return 0
