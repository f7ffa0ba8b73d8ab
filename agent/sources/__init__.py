"""Sensor sources, registered by the ``type:`` of each ``sources:`` entry.

Every source hands the runtime ``Message`` objects in the sensor wire formats of
``agent.payloads`` (the files and microphone sources encode what they read), so all
input is decoded, checked and counted in one place. ``emit`` never blocks a network
thread: when the worker falls behind, MQTT messages are dropped and counted
("queue_full", the queue is fair between sensors: ``fairqueue``); file replay waits instead
(it has nobody to keep up with). A payload larger than its kind can ever decode to is
dropped before it is queued ("too_large"), so the queue's memory is what its bounds say.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from ..config import AudioInput
from ..health import Health
from ..payloads import KINDS, max_payload_bytes


@dataclass(frozen=True)
class Message:
    kind: str  # audio | camera | detector
    sensor: str
    payload: bytes
    received_ms: float


class SourceUnavailable(RuntimeError):
    """A source that cannot run here (missing library or device); the message says what to install."""


@dataclass
class SourceContext:
    device: str
    audio: AudioInput
    health: Health
    queue: "queue.Queue[Message]"
    kinds: Callable[[], frozenset[str]] = field(default=lambda: frozenset(KINDS))  # kinds some task consumes
    sensors: dict[str, list[str]] = field(default_factory=dict)  # device.sensors: the pole's own, by kind

    def emit(self, msg: Message, block: bool = False) -> None:
        self.health.receive(msg.kind)
        a = self.audio
        limit = max_payload_bytes(msg.kind, a.sample_rate, a.channels, a.max_chunk_seconds)
        if len(msg.payload) > limit:
            self.health.drop("too_large", f"{msg.kind}/{msg.sensor}: {len(msg.payload)} bytes (limit {limit})")
            return
        try:
            self.queue.put(msg, block=block, timeout=5.0 if block else None)
        except queue.Full:
            self.health.drop("queue_full", f"{msg.kind}/{msg.sensor}")


class Source(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


def _mqtt(cfg: Any, ctx: SourceContext) -> Source:
    from .mqtt import MqttSource

    return MqttSource(cfg, ctx)


def _files(cfg: Any, ctx: SourceContext) -> Source:
    from .files import FilesSource

    return FilesSource(cfg, ctx)


def _mic(cfg: Any, ctx: SourceContext) -> Source:
    from .mic import MicSource

    return MicSource(cfg, ctx)


SOURCES: dict[str, Callable[[Any, SourceContext], Source]] = {"mqtt": _mqtt, "files": _files, "mic": _mic}


def create_source(cfg: Any, ctx: SourceContext) -> Source:
    return SOURCES[cfg.type](cfg, ctx)
