"""From a JetStream message to a database row, or to a dead letter with one reason.

The wire format is the agent's (docs/mqtt.md section 2; ``agent.alerts`` writes it): this module
only reads it. Subjects are MQTT topics with ``/`` as ``.``:
``roadside.v1.<site>.<device>.alert.<kind>`` | ``.summary`` | ``.state`` | ``.health`` | ``.shadow``
(a candidate model's comparison, docs/rollouts.md) and ``.cmd.<name>[.ack]``: ingest stores the
answers (``cmd.<name>.ack``, for the rollout controller) and leaves the commands themselves alone.

The broker lets a pole publish only under its own ``<device>`` (its per-device user), so the
topic's device is the authenticated one; a payload whose id names another device is refused
as ``spoofed``. Reasons a message is dead-lettered: ``topic`` (not a subject ingest knows),
``too_large``, ``json``, ``schema`` (fields missing, of the wrong type, or not the topic's kind),
``spoofed``, ``ts_future`` (more than a day ahead: no partition would hold it).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.alerts import MAX_BYTES

from .streams import MSGS_PREFIX

MAX_STATE_BYTES = 4096
MAX_HEALTH_BYTES = 8192
FUTURE_LIMIT = dt.timedelta(days=1)
UTC = dt.timezone.utc


class Bad(ValueError):
    """A message that cannot be stored: ``reason`` is one of the dead-letter reasons."""

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail[:400]
        super().__init__(f"{reason}: {self.detail}")


class _Wire(BaseModel):
    # v1 messages are closed: a key the schema does not know is a new version, not noise.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class _Stored(_Wire):
    """What every message from a pole's outbox starts with; ``r`` marks one sent from its backlog."""
    v: Literal[1]
    id: str = Field(max_length=120)
    ts: int
    r: Literal[1] | None = None


class AlertMsg(_Stored):
    tq: Literal["s", "f"]
    k: str = Field(max_length=32)
    s: str = Field(max_length=64)
    c: str = Field(max_length=64)
    p: float | None = None
    w: int
    m: dict[str, float | None] = Field(default_factory=dict)
    mn: str | None = None
    mv: str | None = None
    ms: str | None = None
    ch: str | None = None


class SummaryMsg(_Stored):
    tq: Literal["s", "f"]
    k: Literal["level"]
    s: str = Field(max_length=64)
    sec: float | None = None
    laeq: float | None = None
    lafmax: float | None = None
    l10: float | None = None
    l90: float | None = None
    lim: float | None = None
    per: str | None = None
    ch: str | None = None


class ShadowMsg(_Stored):
    k: str = Field(max_length=32)
    cs: str = Field(pattern=r"^[0-9a-f]{16}$")
    as_: str | None = Field(None, alias="as", pattern=r"^[0-9a-f]{16}$")  # shed by the agent over 256 bytes
    n: int = Field(ge=0)
    sk: int = Field(0, ge=0)
    agr: float | None = Field(None, ge=0, le=1)
    cf: float | None = Field(None, ge=0, le=1)
    acf: float | None = Field(None, ge=0, le=1)
    div: float | None = Field(None, ge=0, le=1)
    p95: list[float | None] | None = Field(None, min_length=2, max_length=2)
    err: int = Field(0, ge=0)
    end: Literal[0, 1] | None = None


class AckMsg(BaseModel):
    # Open like state: commands grow their answers (model, stage, reason, restart, s).
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    v: Literal[1]
    id: str = Field(min_length=1, max_length=64)
    cmd: str = Field(max_length=32)
    ok: bool
    status: str = Field(max_length=32)
    ts: int | None = None
    stage: str | None = Field(None, max_length=32)
    reason: str | None = None


class Loc(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class StateMsg(BaseModel):
    # Open: the state message grows (loc came later); unknown keys are kept out of the columns.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    v: Literal[1]
    online: bool
    boot: int
    ts: int | None = None
    agent: str | None = None
    ch: str | None = None
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    proto: str | None = None
    loc: Loc | None = None


@dataclass(frozen=True)
class Topic:
    site: str
    device: str
    kind: str  # alert, summary, state, health, cmd
    sub: str   # alert kind; "" otherwise


def parse_subject(subject: str) -> Topic:
    s = subject[len(MSGS_PREFIX):] if subject.startswith(MSGS_PREFIX) else subject
    t = s.split(".")
    if len(t) < 5 or t[0] != "roadside" or t[1] != "v1":
        raise Bad("topic", f"not roadside.v1.<site>.<device>.<...>: {subject}")
    site, device, rest = t[2], t[3], t[4:]
    if rest[0] == "alert" and len(rest) == 2:
        return Topic(site, device, "alert", rest[1])
    if rest in (["summary"], ["state"], ["health"], ["shadow"]):
        return Topic(site, device, rest[0], "")
    if rest[0] == "cmd":
        return Topic(site, device, "cmd", ".".join(rest[1:]))
    raise Bad("topic", f"unknown message kind {'/'.join(rest)!r} in {subject}")


def _load(payload: bytes, limit: int) -> dict:
    if len(payload) > limit:
        raise Bad("too_large", f"{len(payload)} bytes (limit {limit})")
    try:
        d = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as e:
        raise Bad("json", str(e)) from None
    if not isinstance(d, dict):
        raise Bad("json", f"not a JSON object but {type(d).__name__}")
    return d


def _model(cls, d: dict):
    try:
        return cls.model_validate(d)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(message)"
        raise Bad("schema", f"{cls.__name__} {where}: {first['msg']} ({e.error_count()} problem(s))") from None


def _id_parts(msg_id: str, topic: Topic) -> tuple[int, int]:
    """(boot, seq) of ``{device}:{boot}:{seq}``; the device must be the topic's."""
    parts = msg_id.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise Bad("schema", f"id {msg_id!r} is not {{device}}:{{boot}}:{{seq}}")
    if parts[0] != topic.device:
        raise Bad("spoofed", f"id {msg_id!r} names device {parts[0]!r}, published as {topic.device!r}")
    return int(parts[1]), int(parts[2])


def _when(ts_ms: int, now: dt.datetime) -> dt.datetime:
    try:
        t = dt.datetime.fromtimestamp(ts_ms / 1000.0, UTC)
    except (OverflowError, OSError, ValueError):
        raise Bad("schema", f"ts {ts_ms} is not a UTC time in ms") from None
    if t > now + FUTURE_LIMIT:
        raise Bad("ts_future", f"ts {t.isoformat()} is more than {FUTURE_LIMIT} ahead of the city's clock")
    return t


def alert_row(topic: Topic, payload: bytes, now: dt.datetime) -> dict:
    a = _model(AlertMsg, _load(payload, MAX_BYTES))
    if a.k != topic.sub:
        raise Bad("schema", f"kind {a.k!r} published on alert/{topic.sub}")
    boot, seq = _id_parts(a.id, topic)
    ts = _when(a.ts, now)
    return {"day": ts.date(), "device": topic.device, "alert_id": a.id, "site": topic.site, "boot": boot, "seq": seq,
            "ts": ts, "time_synced": a.tq == "s", "kind": a.k, "sensor": a.s, "class": a.c, "confidence": a.p,
            "window_ms": a.w, "metrics": json.dumps(a.m), "model_name": a.mn, "model_version": a.mv,
            "model_sha": a.ms, "config_hash": a.ch, "replayed": a.r == 1}


def summary_row(topic: Topic, payload: bytes, now: dt.datetime) -> dict:
    s = _model(SummaryMsg, _load(payload, MAX_BYTES))
    _id_parts(s.id, topic)
    ts = _when(s.ts, now)
    return {"day": ts.date(), "device": topic.device, "summary_id": s.id, "site": topic.site, "ts": ts,
            "time_synced": s.tq == "s", "sensor": s.s, "seconds": s.sec, "laeq": s.laeq, "lafmax": s.lafmax,
            "l10": s.l10, "l90": s.l90, "limit_db": s.lim, "period": s.per, "config_hash": s.ch,
            "replayed": s.r == 1}


def state_row(topic: Topic, payload: bytes) -> dict:
    s = _model(StateMsg, _load(payload, MAX_STATE_BYTES))
    return {"device": topic.device, "site": topic.site, "online": s.online, "boot": s.boot, "agent_version": s.agent,
            "config_hash": s.ch, "models": json.dumps(s.models) if s.online else None, "proto": s.proto,
            "lat": s.loc.lat if s.loc else None, "lon": s.loc.lon if s.loc else None}


def health_row(topic: Topic, payload: bytes, now: dt.datetime) -> dict:
    d = _load(payload, MAX_HEALTH_BYTES)
    if d.get("v") != 1 or not isinstance(d.get("ts"), int):
        raise Bad("schema", "health needs v=1 and an integer ts")
    ts = _when(d["ts"], now)

    def num(*path):
        x: Any = d
        for k in path:
            x = x.get(k) if isinstance(x, dict) else None
        return x if isinstance(x, (int, float)) and not isinstance(x, bool) else None
    def whole(*path):
        x = num(*path)
        return int(x) if x is not None and abs(x) < 2**31 else None
    return {"device": topic.device, "ts": ts, "site": topic.site, "boot": whole("boot"), "up_s": num("up_s"),
            "cpu_pct": num("cpu", "pct"), "rss_mb": num("rss_mb"), "queue": whole("q"),
            "outbox_alerts": whole("out", "alerts"), "doc": payload.decode()}


MAX_SHADOW_BYTES = 512   # the pole sends at most 256; room for a future field, not for a document
MAX_ACK_BYTES = 4096


def shadow_row(topic: Topic, payload: bytes, now: dt.datetime) -> dict:
    r = _model(ShadowMsg, _load(payload, MAX_SHADOW_BYTES))
    _id_parts(r.id, topic)
    p95 = r.p95 or [None, None]
    return {"device": topic.device, "report_id": r.id, "site": topic.site, "ts": _when(r.ts, now), "task": r.k,
            "cand16": r.cs, "active16": r.as_, "n": r.n, "sk": r.sk, "agr": r.agr, "cf": r.cf, "acf": r.acf,
            "div": r.div, "p95_active": p95[0], "p95_cand": p95[1], "err": r.err, "final": r.end == 1}


def ack_row(topic: Topic, payload: bytes, now: dt.datetime) -> dict:
    """``cmd/<name>/ack``: the answer to a command (``topic.sub`` is ``<name>.ack``)."""
    d = _load(payload, MAX_ACK_BYTES)
    a = _model(AckMsg, d)
    name = topic.sub[:-len(".ack")]
    if a.cmd != name:
        raise Bad("schema", f"ack for {a.cmd!r} published on cmd/{name}/ack")
    ts = _when(a.ts, now) if a.ts is not None else None
    return {"device": topic.device, "cmd": name, "cmd_id": a.id, "site": topic.site, "ok": a.ok, "status": a.status,
            "stage": a.stage, "reason": (a.reason or None) and a.reason[:400], "doc": payload.decode(), "ts": ts}


def is_ack(topic: Topic) -> bool:
    return topic.kind == "cmd" and topic.sub.endswith(".ack") and topic.sub.count(".") == 1
