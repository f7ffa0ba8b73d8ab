"""``roadside demo``: the whole system on this machine (a development tool: ``roadside_demo``, not on poles)."""

from __future__ import annotations

import argparse
import importlib.util
import sys

ORDER = 10
NOT_INSTALLED = ("roadside demo is a development tool and is not part of this install (a pole's image has the "
                 "agent only): run it from a checkout after `pip install -e .` (or `bash scripts/bootstrap`)")


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="the whole system on this machine: brokers, the agent, a street scene "
                                       "replayed as sensors would send it, alerts as the city receives them")
    demo.add_argument("--duration", type=float, default=45.0, help="seconds of the scene to play (default 45)")
    demo.add_argument("--data", help="data directory (default: $ROADSIDE_DATA or ../shared/data; "
                                     "without one the scene is generated and says so)")
    demo.add_argument("--broker", choices=["auto", "mosquitto", "python"], default="auto",
                      help="MQTT brokers: mosquitto when installed (auto), or the in-process Python one")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("roadside_demo") is None:
        print(f"roadside: {NOT_INSTALLED}", file=sys.stderr)
        return 2
    from roadside_demo.run import run_demo

    return run_demo(duration=args.duration, data=args.data, broker=args.broker)
