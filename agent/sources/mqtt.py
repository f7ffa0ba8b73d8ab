"""The device's local broker: sensors publish under ``{prefix}/{device}/{kind}/{sensor}``.

The callback runs on paho's network thread, so it only parses the topic and queues
the raw payload; decoding happens in the worker.
"""

from __future__ import annotations

import time

import paho.mqtt.client as paho

from ..config import MqttSourceConfig
from ..mqtt import Connection
from ..payloads import PayloadError, parse_topic
from . import Message, SourceContext


class MqttSource:
    def __init__(self, cfg: MqttSourceConfig, ctx: SourceContext):
        self.cfg, self.ctx = cfg, ctx
        self.conn = Connection("sensors", cfg.broker, f"roadside-{ctx.device}-sensors", protocol="auto",
                               on_message=self._on_message)
        self.conn.subscribe(f"{cfg.topic_prefix}/{ctx.device}/+/+", cfg.qos)

    def start(self) -> None:
        self.conn.start()

    def stop(self) -> None:
        self.conn.stop()

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        try:
            t = parse_topic(msg.topic, self.cfg.topic_prefix)
        except (PayloadError, UnicodeDecodeError) as e:
            self.ctx.health.drop("topic", str(e))
            return
        self.ctx.emit(Message(t.kind, t.sensor, msg.payload, time.time() * 1000.0))
