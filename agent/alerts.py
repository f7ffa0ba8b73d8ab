"""Alerts and summaries as they go upstream: the schema, compact JSON of at most 256 bytes, ids.

An alert on the wire (keys are short because every byte is paid for on a cellular link)::

    {"v":1,"id":"orin-0001:12:3456","ts":1714550700123,"tq":"s","k":"noise","s":"mic0",
     "c":"siren","p":0.931,"w":4000,"m":{},"mn":"noise","mv":"1","ms":"0123456789abcdef",
     "ch":"fedcba9876543210"}

v schema version; id ``{device}:{boot}:{seq}`` (seq persisted across restarts, shared with
summaries); ts UTC ms of the window's end; tq time quality "s" synced / "f" free-running;
k kind; s sensor; c class; p confidence; w window length in ms (the window is [ts-w, ts]);
m metrics; mn, mv model name and version (shed, after the metrics, if an alert with very long
ids would exceed the limit); ms the model's sha256 (first 16 hex; the full
hash is in the retained state message); ch config hash (first 16 hex); "r":1 is appended
when the message is sent from the backlog after an outage or restart (replayed).

A shadow report (``encode_shadow``, topic ``shadow``) shares the envelope (v, id, ts) and the
same 256-byte bound; its fields are in docs/rollouts.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1
MAX_BYTES = 256
REPLAY_SUFFIX = b',"r":1}'
# Room for the replay marker, so a replayed alert still fits in MAX_BYTES.
MAX_STORED_BYTES = MAX_BYTES - len(REPLAY_SUFFIX) + 1


class AlertTooLarge(ValueError):
    """An alert that cannot be made to fit MAX_BYTES even without its metrics."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    sha256: str

    @property
    def short(self) -> str:
        return self.sha256[:16]


@dataclass(frozen=True)
class Origin:
    """What every message of one run shares."""

    device: str
    boot: int
    config_hash: str


def message_id(origin: Origin, seq: int) -> str:
    return f"{origin.device}:{origin.boot}:{seq}"


def _num(x: float, digits: int) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def _dump(d: dict[str, Any]) -> bytes:
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def encode_alert(origin: Origin, seq: int, *, ts_ms: int, synced: bool, kind: str, sensor: str, cls: str,
                 confidence: float, window_ms: int, metrics: dict[str, float], model: ModelInfo | None) -> bytes:
    d: dict[str, Any] = {
        "v": SCHEMA_VERSION, "id": message_id(origin, seq), "ts": int(ts_ms), "tq": "s" if synced else "f",
        "k": kind, "s": sensor[:16], "c": cls[:24], "p": _num(confidence, 3), "w": int(window_ms),
        "m": {k: _num(v, 1) for k, v in metrics.items()},
    }
    if model is not None:
        d.update(mn=model.name[:24], mv=model.version[:16], ms=model.short)
    d["ch"] = origin.config_hash
    out = _dump(d)
    # Over budget (only with very long ids and names): shed metrics, then the model's name and
    # version (the state message maps "ms" to them); the rest is what an alert is.
    while len(out) > MAX_STORED_BYTES and (d["m"] or "mn" in d):
        if d["m"]:
            d["m"].popitem()
        else:
            d.pop("mn")
            d.pop("mv")
        out = _dump(d)
    if len(out) > MAX_STORED_BYTES:
        raise AlertTooLarge(f"alert {d['id']} is {len(out)} bytes even without metrics (limit {MAX_STORED_BYTES})")
    return out


def encode_summary(origin: Origin, seq: int, *, ts_ms: int, synced: bool, sensor: str, seconds: float,
                   laeq: float, lafmax: float, l10: float, l90: float, limit_db: float | None, period: str) -> bytes:
    """Sound level summary of one period; same envelope as an alert, kind "level"."""
    return _dump({
        "v": SCHEMA_VERSION, "id": message_id(origin, seq), "ts": int(ts_ms), "tq": "s" if synced else "f",
        "k": "level", "s": sensor[:16], "sec": _num(seconds, 1), "laeq": _num(laeq, 1), "lafmax": _num(lafmax, 1),
        "l10": _num(l10, 1), "l90": _num(l90, 1), "lim": _num(limit_db, 1) if limit_db is not None else None,
        "per": period, "ch": origin.config_hash,
    })


SHADOW_KEYS = ("k", "cs", "as", "n", "sk", "agr", "cf", "acf", "div", "p95", "err", "end")


def encode_shadow(origin: Origin, seq: int, *, ts_ms: int, report: dict[str, Any]) -> bytes:
    """A shadow report (docs/rollouts.md): the alert envelope's v, id, ts, then the comparison's figures.

    Over budget (only with the longest ids, seq numbers and counts together): the ratios go to 2
    decimals and the latencies to whole ms, then ``as`` is shed (the state message names the active model).
    """
    d: dict[str, Any] = {"v": SCHEMA_VERSION, "id": message_id(origin, seq), "ts": int(ts_ms)}
    d.update((k, report[k]) for k in SHADOW_KEYS)  # exactly the contract's keys, in its order
    out = _dump(d)
    if len(out) > MAX_STORED_BYTES:
        d.update({k: _num(d[k], 2) for k in ("agr", "cf", "acf", "div")},
                 p95=[None if x is None else _num(x, 0) for x in d["p95"]])
        out = _dump(d)
    if len(out) > MAX_STORED_BYTES:
        d.pop("as")
        out = _dump(d)
    if len(out) > MAX_STORED_BYTES:  # never sent cut: the outbox counts it as too large
        raise AlertTooLarge(f"shadow report {d['id']} is {len(out)} bytes (limit {MAX_STORED_BYTES})")
    return out


def mark_replayed(payload: bytes) -> bytes:
    """The stored JSON object with ``"r":1`` added (it ends in ``}``)."""
    return payload[:-1] + REPLAY_SUFFIX


def decode(payload: bytes) -> dict[str, Any]:
    return json.loads(payload)
