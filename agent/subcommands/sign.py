"""``roadside sign``: sign an artefact's manifest (or, with ``--reload-id``, a config for ``cmd/reload``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ORDER = 70


def register(sub: argparse._SubParsersAction) -> None:
    sg = sub.add_parser("sign", help="sign an artefact's manifest.json (after checking its files' sha256)")
    sg.add_argument("manifest", help="the artefact's manifest.json; manifest.sig is written beside it")
    sg.add_argument("--key", required=True, help="Ed25519 private key (roadside keygen)")
    sg.add_argument("--verify-with", help="public key to check the signature with afterwards")
    sg.add_argument("--bundle", help="also write the bundle (tar) that cmd/model carries or points to")
    sg.add_argument("--release", type=int, help="set the manifest's release (an integer devices only ever raise) "
                                                "before signing")
    sg.add_argument("--rollback-from", type=int, metavar="HIGHEST",
                    help="also print the signed permission to roll back to this model from release HIGHEST")
    sg.add_argument("--reload-id", metavar="ID", help="sign a config file instead: print the cmd/reload command "
                                                      "carrying it (id ID)")
    sg.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..control.bundle_io import make_bundle
    from ..control.signing import SignatureError, load_public_key, sign_manifest, verify_manifest

    if args.reload_id:
        return sign_reload(args)
    try:
        if args.release is not None:  # the order devices apply releases in (no downgrade): part of what is signed
            manifest = json.loads(Path(args.manifest).read_text())
            Path(args.manifest).write_text(json.dumps({**manifest, "release": args.release}, indent=2) + "\n")
        sig = sign_manifest(args.manifest, args.key)
        if args.verify_with:  # the operator's check that the devices' key accepts it
            verify_manifest(args.manifest, [load_public_key(args.verify_with)], exclusive=False)
    except SignatureError as e:
        print(f"roadside: refused: {e}", file=sys.stderr)
        return 3
    print(f"wrote {sig}")
    if args.rollback_from is not None:
        print(json.dumps({"rollback": rollback_token(args)}))
    if args.bundle:
        data = make_bundle(Path(args.manifest).parent, args.bundle)
        print(f"wrote {args.bundle} ({len(data)} bytes)")
    return 0


def rollback_token(args: argparse.Namespace) -> str:
    """The signed permission to roll back to this manifest's model from release ``--rollback-from``."""
    from ..control.signing import rollback_message, sign_bytes
    from ..control.store import model_file

    manifest = json.loads(Path(args.manifest).read_text())
    sha = manifest["files"][model_file(manifest)]["sha256"]
    return sign_bytes(rollback_message(manifest.get("task", ""), args.rollback_from, sha), args.key)


def sign_reload(args: argparse.Namespace) -> int:
    """A config file signed for ``cmd/reload``: the whole command on stdout."""
    from ..control.signing import sign_bytes

    text = Path(args.manifest).read_text(encoding="utf-8")
    print(json.dumps({"id": args.reload_id, "config": text, "sig": sign_bytes(text.encode("utf-8"), args.key)}))
    return 0
