"""``roadside replay``: publish recordings to a device's local broker exactly as its sensors would.

Same topics, payloads and pacing as live sensors (docs/mqtt.md); ``--rate 4`` plays four
times faster, ``--rate 0`` as fast as the broker takes it.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from ..mqtt import MqttError
from ..payloads import topic_for
from .files import play, run_timeline

log = logging.getLogger(__name__)


def parse_broker(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--broker must be HOST:PORT, got {s!r}")
    return host, int(port)


def replay(broker: str, device: str, audio: Path | None, images: Path | None = None, detectors: Path | None = None,
           *, rate: float = 1.0, prefix: str = "sensors", sample_rate: int = 16000, chunk_ms: int = 100,
           image_interval_s: float = 1.0, detector_interval_s: float = 1.0, qos: int = 1,
           stop: threading.Event | None = None, timeout: float = 10.0) -> dict[str, int]:
    """Publish the timeline; returns payload bytes sent per kind."""
    host, port = parse_broker(broker)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"replay-{device}-{int(time.time())}")
    connected = threading.Event()
    client.on_connect = lambda c, u, f, reason, p: connected.set() if not reason.is_failure else None
    try:
        client.connect(host, port, keepalive=30)
    except OSError as e:
        raise MqttError(-1, str(e), f"connect {host}:{port}") from None
    client.loop_start()
    try:
        if not connected.wait(timeout):
            raise MqttError(-2, "no CONNACK within timeout", f"connect {host}:{port}")
        last: list = [None]

        def send(kind: str, sensor: str, payload: bytes) -> None:
            last[0] = client.publish(topic_for(prefix, device, kind, sensor), payload, qos=qos)

        events = play(audio, images, detectors, sample_rate=sample_rate, chunk_ms=chunk_ms,
                      image_interval_s=image_interval_s, detector_interval_s=detector_interval_s)
        sent = run_timeline(events, rate, sample_rate, send, stop)
        if last[0] is not None and qos:
            last[0].wait_for_publish(timeout)
        return sent
    finally:
        client.loop_stop()
        client.disconnect()
