"""``roadside flash``: write a signed device bundle: config, models, certificate placeholders, systemd unit."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import add_command

ORDER = 50


def register(sub: argparse._SubParsersAction) -> None:
    fl = add_command(sub, run)
    fl.add_argument("--config", required=True, help="firmware config, e.g. firmware_configs/jetson-orin-nano.yaml")
    fl.add_argument("--device-id", required=True, help="this device's id (topic level; [A-Za-z0-9_-], <= 32)")
    fl.add_argument("--out", required=True, help="bundle folder to write (new or empty)")
    fl.add_argument("--key", default="operator.key", help="operator's Ed25519 private key (default operator.key; "
                                                          "roadside keygen makes one)")


def run(args: argparse.Namespace) -> int:
    from ..control.device_bundle import flash

    key = Path(args.key)
    if not key.is_file():
        raise FileNotFoundError(f"--key {key}: no such file (make one with: roadside keygen --out {key})")
    done = flash(args.config, args.device_id, args.out, key)
    out = done["out"]
    print(f"wrote {out}: bundle for device {done['device']} from {args.config}, signed with key {done['key_id']}")
    for task, m in done["models"].items():
        print(f"  models/{task}/{m['file']} (sha256 {m['sha256'][:16]}), its manifest signed")
    for dotted, rel in done["placeholders"].items():
        print(f"  {rel}: placeholder for {dotted}: replace it on the device")
    print(f"  install: {out}/README.md; check: roadside agent --bundle {out} --trusted-key "
          f"{key.with_suffix('.pub')} --verify-only")
    return 0
