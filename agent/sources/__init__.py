"""Sensor sources, registered by the ``type:`` of each ``sources:`` entry.

Every source hands the runtime ``Message`` objects in the sensor wire formats of
``agent.payloads`` (the files and microphone sources encode what they read), so all
input is decoded, checked and counted in one place. ``emit`` never blocks a network
thread: when the worker falls behind, MQTT messages are dropped and counted
("queue_full"); file replay waits instead (it has nobody to keep up with).
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from ..config import AudioInput
from ..health import Health


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

    def emit(self, msg: Message, block: bool = False) -> None:
        self.health.receive(msg.kind)
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
