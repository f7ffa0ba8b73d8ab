"""``roadside fleet rollout start|run|status|abort|bench``: staged model rollouts gated on shadow figures."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from ..tables import add_db_args, db_url, print_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rollout", help="roll a model out in stages, gated on shadow comparisons (issue 16)",
                       description="A candidate model runs in shadow on a few poles, then more, promoted stage by "
                       "stage while its figures stay inside bounds; halted and rolled back otherwise "
                       "(docs/rollouts.md).")
    rs = p.add_subparsers(dest="rollout_command", required=True)
    _start(rs)
    _run(rs)
    st = rs.add_parser("status", help="one rollout (stages, gates, last events) or the list")
    add_db_args(st)
    st.add_argument("--id", type=int, help="the rollout (default: list them)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=status)
    ab = rs.add_parser("abort", help="ask the rollout's controller to stop it and put every pole back")
    add_db_args(ab)
    ab.add_argument("--id", type=int, required=True)
    ab.add_argument("--by", default=getpass.getuser(), help="who aborts (recorded)")
    ab.set_defaults(func=abort)
    from ..rollout.bench import register as bench
    bench(rs)


def _controller_args(p: argparse.ArgumentParser) -> None:
    add_db_args(p)
    p.add_argument("--key", type=Path, required=True, help="the operator's Ed25519 private key (PEM): signs "
                   "promote, abort and rollback; read at start, never stored")
    p.add_argument("--bundles", type=Path, help="bundle folder served to poles (default: <dir>/bundles)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


# The controller's settings `rollout start` takes: option -> (rollout.service.Settings field, help).
# Their defaults and types are the Settings' own.
SETTINGS_OPTIONS = {
    "--windows": ("windows", "shadow windows per canary (default 300)"),
    "--minutes": ("minutes", "shadow at most this long (default 30)"),
    "--stage-timeout": ("stage_timeout_s", "seconds a stage may shadow (default 2400)"),
    "--soak": ("soak_s", "seconds after each promotion (default 600)"),
    "--resend": ("resend_s", "resend an unanswered command after (default 30 s)"),
    "--catchup": ("catchup_s", "wait for away poles after the last stage"),
}


def _settings_args(p: argparse.ArgumentParser) -> None:
    from dataclasses import fields

    from ..rollout.service import Settings
    defaults = {f.name: f.default for f in fields(Settings)}
    for option, (name, help) in SETTINGS_OPTIONS.items():
        p.add_argument(option, type=type(defaults[name]), default=defaults[name], help=help)


def _settings(args: argparse.Namespace):
    """The ``Settings`` the options of ``rollout start`` ask for."""
    from ..rollout.service import Settings
    chosen = {name: getattr(args, option[2:].replace("-", "_")) for option, (name, _) in SETTINGS_OPTIONS.items()}
    return Settings(**chosen, bundle_url=args.bundle_url, bundle_host=args.bundle_host)


def _start(rs) -> None:
    p = rs.add_parser("start", help="create a rollout and run its controller until it ends")
    _controller_args(p)
    p.add_argument("--bundle", type=Path, required=True, help="the candidate (signed bundle, roadside sign --bundle)")
    p.add_argument("--baseline", type=Path, required=True, help="the bundle the poles run now (rollbacks send it)")
    p.add_argument("--stages", default="1%,10%,50%,100%", help="cumulative shares of the poles (default %(default)s)")
    p.add_argument("--min-windows", type=int, help="windows a canary compares before it counts (default 300)")
    p.add_argument("--max-disagreement", type=float, help="default: from the manifests' figures (docs/rollouts.md)")
    p.add_argument("--max-latency-ratio", type=float, help="candidate p95 / active p95 (default 1.5)")
    p.add_argument("--max-offline", type=float, help="share of updated poles gone offline (default 0.1)")
    p.add_argument("--max-confidence-drop", type=float, help="default 0.1")
    p.add_argument("--max-install-failures", type=float, help="share of poles refusing it (default 0.01)")
    _settings_args(p)
    p.add_argument("--devices-like", help="only poles whose id matches this SQL LIKE pattern")
    p.add_argument("--bundle-url", default="", help="poles fetch bundles here (default: served by the controller)")
    p.add_argument("--bundle-host", default="127.0.0.1", help="address to serve bundles on (default %(default)s)")
    p.add_argument("--by", default=getpass.getuser(), help="who starts it (recorded)")
    p.add_argument("--detach", action="store_true", help="only create it; run it with `rollout run --id`")
    p.set_defaults(func=start)


def _run(rs) -> None:
    p = rs.add_parser("run", help="run (or resume) a rollout's controller from the database")
    _controller_args(p)
    p.add_argument("--id", type=int, required=True)
    p.set_defaults(func=run)


def _bundle_dir(args) -> Path:
    return args.bundles or args.dir / "bundles"


def _mqtt(args):
    import os

    from ..rollout.service import MqttOps
    from ..stack import read_info
    if os.environ.get("ROADSIDE_MQTT_OPS"):  # host:port,port user password (production: from a secrets file)
        host_ports, user, pw = os.environ["ROADSIDE_MQTT_OPS"].split(" ", 2)
        host, ports = host_ports.split(":", 1)
        return MqttOps([int(x) for x in ports.split(",")], user, pw, host)
    try:
        return MqttOps.from_stack_info(read_info(args.dir))
    except FileNotFoundError as e:
        raise SystemExit(f"{e} (or set ROADSIDE_MQTT_OPS='host:port user password')") from None


def start(args: argparse.Namespace) -> int:
    import asyncio

    import asyncpg

    from ..rollout.bundles import BundleError
    from ..rollout.plan import PlanError, parse_stages
    from ..rollout.service import start as start_rollout
    try:
        stages = parse_stages(args.stages)
    except PlanError as e:
        raise SystemExit(str(e)) from None
    settings = _settings(args)
    overrides = {"min_windows": args.min_windows, "max_disagreement": args.max_disagreement,
                 "max_latency_ratio": args.max_latency_ratio, "max_offline": args.max_offline,
                 "max_confidence_drop": args.max_confidence_drop, "max_install_failures": args.max_install_failures}
    if args.min_windows is None:
        overrides["min_windows"] = args.windows

    async def go():
        conn = await asyncpg.connect(db_url(args), timeout=10)
        try:
            return await start_rollout(conn, args.bundle, args.baseline, stages, args.by, _bundle_dir(args),
                                       settings, overrides, args.devices_like)
        finally:
            await conn.close()
    try:
        rid = asyncio.run(go())
    except (BundleError, PlanError) as e:
        raise SystemExit(str(e)) from None
    except asyncpg.UniqueViolationError:
        raise SystemExit("a rollout for this task is already in progress "
                         "(see `roadside fleet rollout status`)") from None
    print(f"rollout {rid} started", file=sys.stderr)
    if args.detach:
        print(json.dumps({"id": rid}))
        return 0
    args.id = rid
    return run(args)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from ..rollout.service import run as run_controller
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        ro = asyncio.run(run_controller(db_url(args), args.id, args.key, _mqtt(args), _bundle_dir(args), progress))
    except (LookupError, RuntimeError, ValueError, OSError) as e:  # OSError: the bundle port is taken
        raise SystemExit(f"rollout {args.id}: {type(e).__name__}: {e}") from None
    print(json.dumps({"id": ro["id"], "state": ro["state"], "reason": ro["reason"], "gate": ro["gate"]}, default=str))
    return 0 if ro["state"] == "completed" else 1


def status(args: argparse.Namespace) -> int:
    import asyncio

    import asyncpg

    from ..rollout import store

    async def go():
        conn = await asyncpg.connect(db_url(args), timeout=10)
        try:
            if args.id is None:
                return await store.listing(conn)
            ro = await store.get(conn, args.id)
            if ro is None:
                raise SystemExit(f"rollout {args.id} not found")
            return {"rollout": ro, "stages": await store.stage_counts(conn, args.id),
                    "events": await store.events(conn, args.id, 20)}
        finally:
            await conn.close()
    out = asyncio.run(go())
    if args.json or isinstance(out, dict):
        print(json.dumps(out, default=str, indent=None if args.json else 1))
    else:
        print_table([{k: r[k] for k in ("id", "task", "version", "state", "phase", "stage", "poles", "promoted",
                                        "ever_ran", "started_by", "created_at", "reason")} for r in out], False)
    return 0


def abort(args: argparse.Namespace) -> int:
    import asyncio

    import asyncpg

    from ..rollout import store

    async def go():
        conn = await asyncpg.connect(db_url(args), timeout=10)
        try:
            return await store.request_abort(conn, args.id, args.by)
        finally:
            await conn.close()
    try:
        state = asyncio.run(go())
    except LookupError as e:
        raise SystemExit(str(e)) from None
    if state != "running":
        print(f"rollout {args.id} is {state}: nothing to abort", file=sys.stderr)
        return 1
    print(f"rollout {args.id}: abort requested; its controller rolls every pole back", file=sys.stderr)
    return 0
