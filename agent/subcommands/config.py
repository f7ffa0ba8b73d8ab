"""``roadside config check``: validate a device config and start nothing."""

from __future__ import annotations

import argparse

ORDER = 90


def register(sub: argparse._SubParsersAction) -> None:
    config = sub.add_parser("config", help="device configs")
    csub = config.add_subparsers(dest="config_command", required=True)
    check = csub.add_parser("check", help="validate a device config and exit (nothing is started)")
    check.add_argument("file")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    from ..config import config_hash, load_config

    cfg = load_config(args.file)
    print(f"{args.file}: ok (device {cfg.device.id}, config hash {config_hash(cfg)})")
    return 0
