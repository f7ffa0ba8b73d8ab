"""``roadside keygen``: a new Ed25519 key pair for signing model bundles and configs."""

from __future__ import annotations

import argparse
import sys

ORDER = 60


def register(sub: argparse._SubParsersAction) -> None:
    kg = sub.add_parser("keygen", help="new Ed25519 key pair for signing model bundles")
    kg.add_argument("--out", required=True, help="private key file (e.g. ops.key); the public key goes beside it "
                                                 "as .pub (that one goes into the devices' updates.trusted_keys)")
    kg.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..control.signing import generate_keypair, key_id, load_public_key

    try:
        private, public = generate_keypair(args.out, args.out + ".pub" if not args.out.endswith(".key") else None)
    except FileExistsError as e:
        print(f"roadside: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {private} (private, keep it off the devices) and {public} (key id {key_id(load_public_key(public))})")
    return 0
