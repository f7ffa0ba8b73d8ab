"""``roadside fleet serve``: the operator console (web pages, JSON API, live feed, /metrics)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_db_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", help="PostgreSQL URL of the fleet database (default: $ROADSIDE_DB_URL, or --dir's)")
    p.add_argument("--dir", type=Path, help="folder of a running `roadside fleet up` (its stack.json names the DB)")


def db_url(args: argparse.Namespace) -> str:
    """The database URL from --db, --dir or $ROADSIDE_DB_URL; ValueError naming the options otherwise."""
    if args.db:
        return args.db
    if args.dir:
        from fleet.stack import read_info

        return read_info(args.dir)["db_url"]
    if os.environ.get("ROADSIDE_DB_URL"):
        return os.environ["ROADSIDE_DB_URL"]
    raise ValueError("no database: give --db URL, --dir DIR of `roadside fleet up`, or set ROADSIDE_DB_URL")


def nats_urls(args: argparse.Namespace) -> list[str]:
    """--nats, else --dir's stack.json, else $ROADSIDE_NATS_URLS (comma-separated); may be empty."""
    if getattr(args, "nats", None):
        return args.nats.split(",")
    if args.dir:
        from fleet.stack import read_info

        return read_info(args.dir)["nats_urls"]
    return [u for u in os.environ.get("ROADSIDE_NATS_URLS", "").split(",") if u]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="the operator console: pages, JSON API, live alerts, /metrics",
                       description="Serve the operator console on HOST:PORT. Users are created with "
                       "`roadside fleet user add`. Applies the database migrations at start.")
    add_db_args(p)
    p.add_argument("--nats", help="NATS URLs, comma-separated, for the ingest backlog in /metrics "
                   "(default: --dir's, or $ROADSIDE_NATS_URLS; none: /metrics from the database only)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 = any free port)")
    p.add_argument("--session-idle-s", type=int, default=30 * 60, help="a session unused this long expires")
    p.add_argument("--session-max-s", type=int, default=12 * 3600, help="a session expires this long after login")
    p.add_argument("--cookie-secure", action="store_true", help="cookies over HTTPS only (behind a TLS proxy)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pydantic

    from fleet.console.settings import ConsoleSettings

    try:
        settings = ConsoleSettings(db_url=db_url(args), nats_urls=nats_urls(args), session_idle_s=args.session_idle_s,
                                   session_max_s=args.session_max_s, cookie_secure=args.cookie_secure)
    except pydantic.ValidationError as e:
        raise ValueError("; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())) from None
    return serve(settings, args.host, args.port, args.log_level)


def serve(settings, host: str, port: int, log_level: str = "warning") -> int:
    import socket

    import uvicorn

    from fleet.console.app import create_app

    sock = socket.socket()  # bound here so that port 0 can be printed before serving
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    print(f"console: http://{host}:{sock.getsockname()[1]}/", flush=True)
    config = uvicorn.Config(create_app(settings), log_level=log_level, timeout_graceful_shutdown=2)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
