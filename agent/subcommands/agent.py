"""``roadside agent``: run the edge agent from a config file or a signed device bundle."""

from __future__ import annotations

import argparse
import functools
import os
import sys

ORDER = 40


def register(sub: argparse._SubParsersAction) -> None:
    agent = sub.add_parser("agent", help="run the edge agent (sensors in over MQTT, alerts out)")
    source = agent.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="device config, e.g. firmware_configs/test.yaml")
    source.add_argument("--bundle", help="a device bundle (roadside flash): verified whole before it starts")
    agent.add_argument("--trusted-key", action="append", metavar="PUB",
                       help="operator public key the bundle must be signed with (repeatable; default "
                            "$ROADSIDE_TRUSTED_KEY or /etc/roadside/operator.pub)")
    agent.add_argument("--verify-only", action="store_true", help="check the bundle and its config, start nothing")
    agent.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..runtime import serve

    config, verify = args.config, None
    if args.bundle:  # the signed bundle is checked whole before anything is read from it, and again on reload
        from ..control.device_bundle import BundleError, verify_bundle

        verify = functools.partial(verify_bundle, args.bundle, args.trusted_key or [default_trusted_key()])
        try:
            config = verify()
        except BundleError as e:
            print(f"roadside: refused bundle: {e}", file=sys.stderr)
            return 3
        print(f"bundle {args.bundle}: verified", file=sys.stderr)
    elif args.verify_only:
        raise ValueError("--verify-only checks a bundle: give --bundle")
    cfg = load_config(config)  # refused whole before anything starts
    if args.verify_only:
        return 0
    return serve(cfg, config, verify)


def default_trusted_key() -> str:
    from ..control.device_bundle import DEFAULT_TRUSTED_KEY

    return os.environ.get("ROADSIDE_TRUSTED_KEY", str(DEFAULT_TRUSTED_KEY))
