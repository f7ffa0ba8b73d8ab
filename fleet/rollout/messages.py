"""The commands a rollout sends (docs/rollouts.md, "The pole's side"), built the same way every time.

A command's id is ``ro<rollout>-<kind>-<device>`` and its bytes depend only on the rollout's
stored fields, so a resumed controller that sends it again sends the identical message: the pole
answers a repeated (id, bytes) from its memory instead of running it twice. Ed25519 signatures
are deterministic, so signing again gives the same bytes too.

kinds: ``s`` shadow, ``p`` promote, ``a`` abort, ``m`` the candidate as a plain update (a pole that
was offline while its stage shadowed), ``b`` back: the baseline with a rollback permission.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

from agent.control.signing import rollback_message, shadow_message

KINDS = {"s": "shadow", "p": "promote", "a": "abort", "m": "model", "b": "model"}


@dataclass(frozen=True)
class Command:
    device: str
    name: str      # the MQTT command: shadow, promote, abort, model
    cmd_id: str
    payload: bytes

    def topic(self, site: str) -> str:
        return f"roadside/v1/{site}/{self.device}/cmd/{self.name}"


def command_id(rollout_id: int, kind: str, device: str) -> str:
    cid = f"ro{rollout_id}-{kind}-{device}"
    if len(cid) <= 64 and all(c.isalnum() or c in "_.:-" for c in cid):
        return cid
    return f"ro{rollout_id}-{kind}-{hashlib.sha256(device.encode()).hexdigest()[:40]}"


def _json(d: dict) -> bytes:
    return json.dumps(d, separators=(",", ":"), sort_keys=True).encode()


def _sign(key, data: bytes) -> str:
    return base64.b64encode(key.sign(data)).decode()


class Builder:
    """Commands for one rollout (a row of ``rollouts``); ``key``: the operator's Ed25519 private key."""

    def __init__(self, ro: dict, key, bundle_url: str):
        self.ro, self.key, self.url = ro, key, bundle_url.rstrip("/")
        self.settings = ro["settings"]

    def _bundle(self, sha: str) -> dict:
        return {"url": f"{self.url}/bundles/{sha}", "sha256": sha}

    def build(self, kind: str, device: str) -> Command:
        ro, cid = self.ro, command_id(self.ro["id"], kind, device)
        body: dict = {"id": cid, "task": ro["task"]}
        if kind == "s":
            st = self.settings
            body.update(self._bundle(ro["bundle_sha256"]), windows=st["windows"], minutes=st["minutes"],
                        report_every=st["report_every"])
        elif kind in ("p", "a"):
            action = "promote" if kind == "p" else "abort"
            body.update(sha256=ro["model_sha256"], sig=_sign(self.key, shadow_message(action, ro["task"],
                                                                                         ro["model_sha256"])))
        elif kind == "m":
            body.update(self._bundle(ro["bundle_sha256"]))
        elif kind == "b":
            # The pole's highest applied release is the candidate's once it ran it: permission to go
            # from exactly there to exactly the baseline model, nothing else.
            body.update(self._bundle(ro["base_bundle_sha256"]),
                        rollback=_sign(self.key, rollback_message(ro["task"], ro["release"], ro["base_model_sha256"])))
        else:
            raise ValueError(f"command kind {kind!r}: one of {sorted(KINDS)}")
        return Command(device, KINDS[kind], cid, _json(body))
