"""What may go upstream, as strict models: the wire formats of docs/mqtt.md section 2, and the privacy rule.

``check_upstream(topic, payload)`` passes only a payload that is a JSON object of the
topic's schema (unknown keys refused), within the topic's size bound, and that carries no
sensor data: no audio chunk, JPEG, PNG, WAV, FLAC or Ogg signature, raw or base64, and no
long base64-like run. Used by the privacy test and the fault suite on every message.
"""

from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

HEX16 = r"^[0-9a-f]{16}$"
ID = r"^[A-Za-z0-9_-]{1,32}:[0-9]+:[0-9]+$"
# Magic numbers of sensor data, raw and as they start in base64.
SIGNATURES = {b"RS\x01": "audio chunk", b"\xff\xd8\xff": "JPEG", b"\x89PNG": "PNG", b"RIFF": "WAV",
              b"fLaC": "FLAC", b"OggS": "Ogg"}
B64_SIGNATURES = {"UlMB": "audio chunk", "/9j/": "JPEG", "iVBORw0KGgo": "PNG", "UklGR": "WAV", "ZkxhQw": "FLAC",
                  "T2dnUw": "Ogg"}
LONG_RUN = re.compile(rb"[A-Za-z0-9+/=]{100,}")  # 64-hex hashes are fine; a blob is not
MAX_BYTES = {"alert": 256, "summary": 256, "shadow": 256, "health": 2048, "state": 2048, "ack": 1024}


class Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Stored(Wire):
    """What every message from the outbox starts with; ``r`` marks one sent from the backlog."""
    v: Literal[1]
    id: str = Field(pattern=ID)
    ts: int
    r: Literal[1] | None = None


class Alert(Stored):
    tq: Literal["s", "f"]
    k: Literal["noise", "vehicles", "congestion", "level"]
    s: str = Field(max_length=16)
    c: str = Field(max_length=24)
    p: float | int = Field(ge=0, le=1)
    w: int = Field(ge=0)
    m: dict[str, float | int | None]
    mn: str | None = None
    mv: str | None = None
    ms: str | None = Field(None, pattern=HEX16)
    ch: str = Field(pattern=HEX16)


class Summary(Stored):
    tq: Literal["s", "f"]
    k: Literal["level"]
    s: str = Field(max_length=16)
    sec: float | int | None
    laeq: float | int | None
    lafmax: float | int | None
    l10: float | int | None
    l90: float | int | None
    lim: float | int | None
    per: Literal["day", "night"]
    ch: str = Field(pattern=HEX16)


class Shadow(Stored):
    """A candidate model's comparison report (docs/rollouts.md): figures only, never a window's data."""
    k: Literal["noise", "vehicles", "congestion"]
    cs: str = Field(pattern=HEX16)
    as_: str | None = Field(None, alias="as", pattern=HEX16)
    n: int = Field(ge=0)
    sk: int = Field(ge=0)
    agr: float | int | None = Field(ge=0, le=1)
    cf: float | int | None = Field(ge=0, le=1)
    acf: float | int | None = Field(ge=0, le=1)
    div: float | int | None = Field(ge=0, le=1)
    p95: list[float | int | None] = Field(min_length=2, max_length=2)
    err: int = Field(ge=0)
    end: Literal[0, 1]


class ShadowHealth(Wire):
    n: int
    sk: int
    cpu_ms: float | int
    rss_mb: float | int


class ShadowState(Wire):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    release: int
    n: int


class TaskStats(Wire):
    windows: int
    p50_ms: float | None = None
    p95_ms: float | None = None


class Cpu(Wire):
    pct: float | int
    s: float | int


class Health(Wire):
    v: Literal[1]
    ts: int
    up_s: float | int
    rx: dict[str, int]
    ok: dict[str, int]
    bad: dict[str, int]
    n: dict[str, int]
    tasks: dict[str, TaskStats]
    q: int
    out: dict[str, int]
    tq: Literal["s", "f"]
    up: dict[str, int | bool]
    boot: int
    ch: str = Field(pattern=HEX16)
    models: dict[str, str]
    cpu: Cpu
    rss_mb: float | int
    shadow: dict[str, ShadowHealth] | None = None


class ModelState(Wire):
    name: str
    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    backend: str
    src: str
    fallback: str | None = None


class State(Wire):
    v: Literal[1]
    online: bool
    boot: int
    ts: int | None = None
    agent: str | None = None
    ch: str | None = Field(None, pattern=HEX16)
    models: dict[str, ModelState] | None = None
    proto: Literal["5", "3.1.1"] | None = None
    shadow: dict[str, ShadowState] | None = None


class AckModel(Wire):
    task: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    version: str | None = None
    release: int | None = None
    key: str | None = Field(None, pattern=HEX16)


class Ack(Wire):
    v: Literal[1]
    id: str | None
    cmd: str
    ts: int
    ch: str = Field(pattern=HEX16)
    ok: bool
    status: Literal["applied", "unchanged", "refused", "rolled_back", "shadowing", "aborted"]
    stage: str | None = None
    reason: str | None = Field(None, max_length=400)
    s: float | int | None = None
    model: AckModel | None = None
    restart: list[str] | None = None


def kind_of(topic: str) -> str:
    parts = topic.split("/")
    if "alert" in parts[-2:-1]:
        return "alert"
    if parts[-1] == "ack" and parts[-3] == "cmd":
        return "ack"
    if parts[-1] in ("summary", "shadow", "health", "state"):
        return parts[-1]
    raise AssertionError(f"unexpected upstream topic {topic!r}")


SCHEMAS = {"alert": Alert, "summary": Summary, "shadow": Shadow, "health": Health, "state": State, "ack": Ack}


def check_upstream(topic: str, payload: bytes) -> str:
    """The payload's kind if it may go upstream; AssertionError naming the rule it breaks otherwise."""
    kind = kind_of(topic)
    assert len(payload) <= MAX_BYTES[kind], f"{topic}: {len(payload)} bytes (bound {MAX_BYTES[kind]})"
    for magic, what in SIGNATURES.items():
        assert magic not in payload, f"{topic}: contains a {what} signature"
    text = payload.decode("utf-8")  # UnicodeDecodeError: binary upstream
    for magic, what in B64_SIGNATURES.items():
        assert magic not in text, f"{topic}: contains a base64 {what}"
    assert not LONG_RUN.search(payload), f"{topic}: contains a long base64-like run"
    data = json.loads(text)
    assert isinstance(data, dict), f"{topic}: not a JSON object"
    SCHEMAS[kind].model_validate(data)
    return kind
