"""``roadside fleet ...``: the city side's commands.

Each command is a module in ``fleet/commands/`` with ``register(sub)``, which adds its parser and
sets ``func``; the modules are found with pkgutil, so a new command is a new file. Imports of
the heavy engines (nats, asyncpg, uvicorn) happen inside the commands' functions: building the
parser stays cheap, and ``roadside`` on a pole without these packages still starts.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil

from . import commands


def add_parser(sub: argparse._SubParsersAction) -> None:
    fleet = sub.add_parser("fleet", help="the city side: NATS cluster, PostgreSQL, ingest workers, console, rollouts")
    fsub = fleet.add_subparsers(dest="fleet_command", required=True)
    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{mod.name}").register(fsub)
