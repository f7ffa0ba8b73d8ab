"""The device's local broker: sensors publish under ``{prefix}/{device}/{kind}/{sensor}``.

The callback runs on paho's network thread, so it only parses the topic, applies the cheap
checks and queues the raw payload; decoding happens in the worker. Only the kinds some task
consumes are subscribed (``{prefix}/{device}/{kind}/+``): a pole without a camera model never
receives an image. Checked here, each counted as received then dropped under its reason:
a retained message ("retained": a sensor reading replayed from the broker's memory at every
subscription is not live input, and a hostile one would hit every start), a kind no task
consumes any more after a reload ("no_task"), and a sensor over ``rate_limit`` ("rate_limited").

Each sensor listed in ``device.sensors`` also gets a connection of its own, subscribed to its
exact topic. Found by attack: a flood of 16,000 messages a second on other topics outran what
one connection can read, and the broker then dropped messages of that connection, the real
microphone's among them. The broker queues per connection, so a flood now overflows only the
shared connection; a listed sensor's messages arrive on its own (the shared connection ignores
them, so nothing is counted twice). The first ``MAX_OWN_CONNECTIONS`` listed sensors get one.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import paho.mqtt.client as paho

from ..config import MqttSourceConfig
from ..mqtt import Connection
from ..payloads import PayloadError, parse_topic
from . import Message, SourceContext

MAX_BUCKETS = 4096  # rate-limit state kept for this many sensors at most (least recently seen forgotten)
MAX_OWN_CONNECTIONS = 16  # listed sensors with a connection of their own (each costs two threads)


class TokenBuckets:
    """Per-sensor token buckets: ``rate`` messages per second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self._state: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()  # -> (tokens, when)

    def allow(self, key: tuple[str, str]) -> bool:
        now = self.clock()
        tokens, when = self._state.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - when) * self.rate)
        ok = tokens >= 1.0
        self._state[key] = (tokens - 1.0 if ok else tokens, now)
        if len(self._state) > MAX_BUCKETS:
            self._state.popitem(last=False)
        return ok


class MqttSource:
    def __init__(self, cfg: MqttSourceConfig, ctx: SourceContext):
        self.cfg, self.ctx = cfg, ctx
        self.limits = TokenBuckets(cfg.rate_limit, cfg.rate_burst) if cfg.rate_limit else None
        listed = sorted((kind, s) for kind, names in ctx.sensors.items() for s in set(names))
        self.own = frozenset(listed[:MAX_OWN_CONNECTIONS])
        self.conn = Connection("sensors", cfg.broker, f"roadside-{ctx.device}-sensors", protocol="auto",
                               on_message=self._on_shared)
        self.own_conns = {key: Connection(f"sensor {key[0]}/{key[1]}", cfg.broker,
                                          f"roadside-{ctx.device}-sensor{i}", protocol="auto",
                                          on_message=self._on_message)
                          for i, key in enumerate(sorted(self.own))}
        self._subscribed: set[str] = set()
        self.follow()

    def follow(self) -> None:
        """Subscribe the kinds tasks now consume (after a reload added one); a dropped kind is filtered."""
        prefix = f"{self.cfg.topic_prefix}/{self.ctx.device}"
        for kind in sorted(self.ctx.kinds() - self._subscribed):
            self.conn.subscribe(f"{prefix}/{kind}/+", self.cfg.qos)
            for (k, sensor), conn in self.own_conns.items():
                if k == kind:
                    conn.subscribe(f"{prefix}/{kind}/{sensor}", self.cfg.qos)
            self._subscribed.add(kind)

    def start(self) -> None:
        for conn in (self.conn, *self.own_conns.values()):
            conn.start()

    def stop(self) -> None:
        for conn in (self.conn, *self.own_conns.values()):
            conn.stop()

    def _on_shared(self, msg: paho.MQTTMessage) -> None:
        if self.own:
            try:
                kind, _, sensor = msg.topic.rpartition("/")
            except UnicodeDecodeError:  # counted as a bad topic below
                kind = sensor = ""
            if (kind.rpartition("/")[2], sensor) in self.own:
                return  # it comes (and is counted) on the sensor's own connection
        self._on_message(msg)

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        try:
            t = parse_topic(msg.topic, self.cfg.topic_prefix)
        except (PayloadError, UnicodeDecodeError) as e:
            self.ctx.health.drop("topic", str(e))
            return
        reason = ("retained" if msg.retain else "no_task" if t.kind not in self.ctx.kinds() else
                  "rate_limited" if self.limits is not None and not self.limits.allow((t.kind, t.sensor)) else None)
        if reason is not None:
            self.ctx.health.receive(t.kind)
            self.ctx.health.drop(reason, f"{t.kind}/{t.sensor}")
            return
        self.ctx.emit(Message(t.kind, t.sensor, msg.payload, time.time() * 1000.0))
