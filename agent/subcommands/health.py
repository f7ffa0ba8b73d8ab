"""``roadside health``: exit 0 if the agent's health file is fresh and healthy, else 1 (a container HEALTHCHECK)."""

from __future__ import annotations

import argparse
import sys

from . import add_command

ORDER = 80


def register(sub: argparse._SubParsersAction) -> None:
    hc = add_command(sub, run)
    hc.add_argument("--file", required=True, help="the agent's health file (default {state_dir}/health.json)")
    hc.add_argument("--max-age", type=float, help="seconds (default: 3 heartbeat periods + 5 s)")


def run(args: argparse.Namespace) -> int:
    from ..health import check_health_file

    ok, why = check_health_file(args.file, args.max_age)
    print(why, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1
