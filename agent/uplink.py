"""The city uplink: the outbox pumped to the city broker, QoS 1, removed on PUBACK.

Topics under ``{prefix}/{site}/{device}/``: ``alert/{kind}``, ``summary`` and ``shadow`` (a
candidate model's reports, agent.shadow), all from the outbox, QoS 1; ``health`` (QoS 0, not
stored: the next one supersedes it) and ``state`` (retained; ``online`` on every connect and
after a model swap or reload, ``offline`` on a clean stop, and the last will sets it
``offline`` when the device vanishes). Commands come
in on ``cmd/{name}`` and are answered on ``cmd/{name}/ack`` (QoS 1; held in memory while
offline); a retained command is ignored, so no stale command runs again at every connect.

A PUBACK with a failure reason (MQTT 5: the broker's ACL refused the topic) does not remove
the row: it is counted as ``refused`` and sent again after the next reconnect, so a device
whose identity or ACL is wrong keeps its alerts (within the outbox bounds) until fixed.

On every (re)connect the pump starts again from the oldest stored row: everything
that was in the outbox when the connection came up is backlog and goes out marked
``"r":1`` (replayed), in row order; new messages follow. At most ``max_inflight``
messages wait for their PUBACK; one overdue by ``ack_timeout_s`` trips the watchdog.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from typing import Callable

from .alerts import mark_replayed
from .config import UplinkSection
from .mqtt import Connection, Will
from .outbox import ALERT, Outbox

log = logging.getLogger(__name__)


class Uplink:
    def __init__(self, cfg: UplinkSection, site: str, device: str, outbox: Outbox, state: dict, boot: int,
                 on_command: Callable[[str, bytes], None] | None = None):
        self.cfg, self.outbox = cfg, outbox
        self.base = f"{cfg.topic_prefix}/{site}/{device}"
        self._state = state  # the retained birth message's body: models, backends, config hash
        self._offline = json.dumps({"v": 1, "online": False, "boot": boot}, separators=(",", ":")).encode()
        self._on_command = on_command
        self.conn = Connection("uplink", cfg.broker, f"roadside-{device}-up", protocol=cfg.protocol,
                               backoff=cfg.backoff, will=Will(self.topic("state"), self._offline),
                               on_connect=self._on_connect, on_publish=self._on_puback, stalled=self._stalled,
                               on_message=self._on_message if on_command else None)
        if on_command:
            self.conn.subscribe(self.topic("cmd/+"), 1)
        self._lock = threading.Lock()
        self._refused_lock = threading.Lock()  # only ever taken alone: safe inside paho's callback
        self._refused_mids: set[int] = set()
        self._acks: deque[tuple[str, bytes]] = deque(maxlen=50)  # command answers waiting for a connection
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._epoch = 0  # bumped on every connect: the pump restarts from the oldest row
        self._replay_upto = 0
        self._inflight: dict[int, tuple] = {}  # mid -> (row id, sent at, MQTTMessageInfo)
        self.sent = self.acked = self.replayed = self.bytes_sent = 0
        self.alerts_acked = self.refused = 0
        self._thread = threading.Thread(target=self._pump, name="uplink-pump", daemon=True)

    def topic(self, suffix: str) -> str:
        return f"{self.base}/{suffix}"

    def start(self) -> None:
        self.conn.start()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self.conn.stop(last=(self.topic("state"), self._offline), timeout=timeout)

    def alive(self) -> bool:
        """The pump thread runs (for the health file)."""
        return self._thread.is_alive()

    def notify(self) -> None:
        """A new row is in the outbox."""
        self._wake.set()

    def publish_live(self, suffix: str, payload: bytes) -> bool:
        """QoS 0, not stored (health)."""
        info = self.conn.publish(self.topic(suffix), payload, qos=0)
        if info is not None:
            self.bytes_sent += len(payload)
        return info is not None

    def publish_ack(self, command: str, payload: bytes) -> None:
        """A command's answer on ``cmd/{command}/ack``, QoS 1; kept (the last 50) until connected."""
        topic = self.topic(f"cmd/{command}/ack")
        if self.conn.publish(topic, payload, qos=1) is None:
            self._acks.append((topic, payload))
        else:
            self.bytes_sent += len(payload)

    def update_state(self, **changes) -> None:
        """New models or config: the retained state message is sent again. A key set to None is removed
        (a shadow candidate gone: ``shadow`` is in the state only while one is installed)."""
        merged = {**self._state, **changes}
        self._state = {k: v for k, v in merged.items() if v is not None}
        if self.conn.connected.is_set():
            self._publish_birth()

    def _publish_birth(self) -> None:
        birth = {"v": 1, "online": True, "ts": int(time.time() * 1000), **self._state,
                 "proto": self.conn.protocol_in_use}
        self.conn.publish(self.topic("state"), json.dumps(birth, separators=(",", ":")).encode(), qos=1, retain=True)

    def _on_message(self, msg) -> None:
        # paho's thread: hand over and return (commands can take seconds: downloads, model loads).
        prefix = self.topic("cmd/")
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # never let a bad topic take paho's thread down
            return
        if self._on_command and topic.startswith(prefix):
            if msg.retain:  # a retained command would run again at every connect (an old model re-applied)
                log.warning("ignored a retained command on %s (commands are sent unretained)", topic[:200])
                return
            self._on_command(topic[len(prefix):], msg.payload)

    # ---------------------------------------------------------------------- callbacks

    def _on_connect(self) -> None:
        with self._lock:
            self._epoch += 1
            self._inflight.clear()
            self._replay_upto = self.outbox.max_id()
        with self._refused_lock:
            self._refused_mids.clear()  # mids are per connection
        self._publish_birth()
        while self._acks:
            topic, payload = self._acks.popleft()
            self.conn.publish(topic, payload, qos=1)
        self._wake.set()

    def _on_puback(self, mid: int, ok: bool) -> None:
        # Runs on paho's thread while it holds its own lock: only note and wake the pump, which
        # reads each in-flight message's info (taking self._lock here could deadlock with publish()).
        if not ok:
            with self._refused_lock:
                self._refused_mids.add(mid)
        self._wake.set()

    def _stalled(self) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(now - t > self.cfg.ack_timeout_s and not info.is_published()
                       for _, t, info, _ in self._inflight.values())

    # --------------------------------------------------------------------------- pump

    def _collect_acks(self) -> None:
        done = [(mid, row_id, prio) for mid, (row_id, _, info, prio) in self._inflight.items() if info.is_published()]
        for mid, row_id, prio in done:
            del self._inflight[mid]
            with self._refused_lock:
                refused = mid in self._refused_mids
                self._refused_mids.discard(mid)
            if refused:  # kept: sent again after the next reconnect
                self.refused += 1
                if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
                    log.warning("broker refused %d message(s) (not authorised for %s/...?); they are kept",
                                self.refused, self.base)
                continue
            self.outbox.ack(row_id)
            self.acked += 1
            self.alerts_acked += prio == ALERT

    def _pump(self) -> None:
        epoch, cursor = -1, 0
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            if not self.conn.connected.is_set():
                continue
            with self._lock:
                if epoch != self._epoch:
                    epoch, cursor = self._epoch, 0
                self._collect_acks()
                room = self.cfg.max_inflight - len(self._inflight)
                replay_upto = self._replay_upto
            if room <= 0:
                continue
            rows = self.outbox.pending(cursor, room)
            for row in rows:
                replay = row.id <= replay_upto
                payload = mark_replayed(row.payload) if replay else row.payload
                info = self.conn.publish(self.topic(row.topic), payload, qos=1)
                if info is None:
                    break  # connection went away: the next epoch starts over
                with self._lock:
                    if epoch != self._epoch:
                        break
                    self._inflight[info.mid] = (row.id, time.monotonic(), info, row.priority)
                cursor = row.id
                self.sent += 1
                self.replayed += replay
                self.bytes_sent += len(payload)
            if rows and len(rows) == room:
                self._wake.set()  # a full batch: more rows may be waiting (PUBACKs wake us too)
