"""A thin MQTT connection shared by the sensor source and the uplink (paho-mqtt underneath).

What it adds to paho: a connection that is only "connected" after a successful CONNACK
(a refused one is an ``MqttError`` with its reason code, never "connected"); a timeout on
every wait; reconnection with exponential backoff and full jitter (each wait uniform in
[0, min(max, initial * 2**attempt)], so a city's poles do not reconnect in lock-step after
a broker restart); subscriptions remade on every connect; MQTT 5 with a fall back to 3.1.1
when the broker refuses the protocol level; and a watchdog: the supervisor drops and
remakes the connection when paho's network thread has died or the owner reports a stall
(the uplink: a PUBACK overdue). Each connection attempt uses a fresh paho client, so no
half-sent state from a dead connection is replayed behind the owner's back, and each
connection has its own client id (the owner's prefix plus 8 random hex digits): another
client connecting with a guessed id cannot take the agent's session over (MQTT disconnects
the older of two clients with the same id).

TLS: the configured CA file is the only trust anchor (the system store is not loaded, so a
certificate from any other CA is refused), the broker's host name is checked against its
certificate, TLS 1.2 is the floor, and a client certificate is presented when configured.
The context is rebuilt on every attempt, so rotated certificates are picked up on reconnect.
Neither the password nor any key material is ever put in a log line or an error.
"""

from __future__ import annotations

import logging
import random
import secrets
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from .config import BackoffConfig, BrokerConfig, TlsConfig

log = logging.getLogger(__name__)
PROTOCOLS = {"5": paho.MQTTv5, "3.1.1": paho.MQTTv311}
# CONNACK codes meaning "I do not speak this protocol level" (v5: 0x84; 3.1.1: 1).
_BAD_PROTOCOL = {132, 1}


class MqttError(RuntimeError):
    """A refused or failed MQTT operation: ``[code:N] what: reason``."""

    def __init__(self, code: int, reason: str, what: str):
        self.code, self.reason = code, reason
        super().__init__(f"[code:{code}] {what}: {reason}")


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """A client context that trusts ``tls.ca_file`` only (pinned) and presents the client certificate, if any."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED by default
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(tls.ca_file))
    if tls.cert_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file), password=_no_passphrase)
    return ctx


def _no_passphrase() -> bytes:
    # Without this, OpenSSL would prompt on the terminal for an encrypted key: a daemon would hang.
    raise ValueError("key_file is encrypted; the agent takes an unencrypted key protected by file permissions")


def backoff_delay(attempt: int, cfg: BackoffConfig, rng: random.Random = random) -> float:
    """Full jitter: uniform in [0, min(max_s, initial_s * 2**attempt)]."""
    return rng.uniform(0.0, min(cfg.max_s, cfg.initial_s * (2 ** min(attempt, 30))))


class Connection:
    def __init__(self, name: str, broker: BrokerConfig, client_id: str, *, protocol: str = "auto",
                 backoff: BackoffConfig = BackoffConfig(), will: Will | Callable[[], Will] | None = None,
                 on_message: Callable[[paho.MQTTMessage], None] | None = None,
                 on_connect: Callable[[], None] | None = None,
                 on_publish: Callable[[int, bool], None] | None = None,
                 stalled: Callable[[], bool] | None = None):
        self.name, self.broker, self.client_id = name, broker, client_id  # a prefix: see _new_client
        self.client_id_in_use: str | None = None
        self.protocol, self.backoff, self.will = protocol, backoff, will
        self.on_message, self.on_connect_cb, self.on_publish_cb, self.stalled = on_message, on_connect, on_publish, stalled
        self.connected = threading.Event()
        self.protocol_in_use: str | None = None
        self.last_error: MqttError | None = None
        self.connects = 0  # successful connections, for the health message
        self.changed_at = time.monotonic()  # when ``connected`` last changed (how long offline, for health)
        self._subs: list[tuple[str, int]] = []
        self._client: paho.Client | None = None
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------------- public API

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Remembered and (re)made on every connect."""
        self._subs.append((topic, qos))
        client = self._client
        if client is not None and self.connected.is_set():
            client.subscribe(topic, qos)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> paho.MQTTMessageInfo | None:
        """Queue a message on the live connection; its info (``is_published()`` after PUBACK), or None."""
        client = self._client
        if client is None or not self.connected.is_set():
            return None
        info = client.publish(topic, payload, qos=qos, retain=retain)
        return info if info.rc == paho.MQTT_ERR_SUCCESS else None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, name=f"mqtt-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, last: tuple[str, bytes] | None = None, timeout: float = 5.0) -> None:
        """Disconnect cleanly (no last will); ``last`` is a retained message sent first (e.g. state offline)."""
        client = self._client
        if last is not None and client is not None and self.connected.is_set():
            info = client.publish(last[0], last[1], qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=min(timeout, 2.0))
            except (RuntimeError, ValueError):
                pass
        self._stop.set()
        self._lost.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------- the supervisor

    def _new_client(self, proto: str) -> paho.Client:
        self.client_id_in_use = f"{self.client_id}-{secrets.token_hex(4)}"
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id_in_use,
                             protocol=PROTOCOLS[proto], **({} if proto == "5" else {"clean_session": True}))
        client.connect_timeout = self.broker.connect_timeout_s
        if self.broker.username:
            password = self.broker.password_file.read_text().strip() if self.broker.password_file else None
            client.username_pw_set(self.broker.username, password)
        if self.broker.tls is not None:
            client.tls_set_context(tls_context(self.broker.tls))
        will = self.will() if callable(self.will) else self.will
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        return client

    def _connect_once(self, proto: str) -> paho.Client:
        """A connected client (CONNACK success within the timeout), or MqttError."""
        tls = ", TLS" if self.broker.tls else ""
        where = f"{self.name} {self.broker.host}:{self.broker.port} (MQTT {proto}{tls})"
        try:
            client = self._new_client(proto)
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError: unreadable CA, key that does not match
            raise MqttError(-1, f"{type(e).__name__}: {e}", f"set up {where}") from None
        result: dict = {}
        done = threading.Event()

        def on_connect(c, userdata, flags, reason, properties):
            result["code"], result["reason"] = reason.value, str(reason)
            done.set()

        def on_disconnect(c, userdata, flags, reason, properties):
            result.setdefault("code", -1)
            result.setdefault("reason", f"connection closed ({reason})")
            done.set()
            self._lost.set()

        client.on_connect, client.on_disconnect = on_connect, on_disconnect
        client.on_message = lambda c, u, msg: self.on_message(msg) if self.on_message else None
        client.on_publish = lambda c, u, mid, reason, props: (
            self.on_publish_cb(mid, not reason.is_failure) if self.on_publish_cb and c is self._client else None)
        try:
            client.connect(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s)
        except (OSError, ValueError) as e:
            raise MqttError(-1, str(e) or type(e).__name__, f"connect {where}") from None
        client.loop_start()
        if not done.wait(self.broker.connect_timeout_s) or result.get("code") != 0:
            client.loop_stop()
            client.disconnect()
            code = result.get("code", -2)
            raise MqttError(code, result.get("reason", "no CONNACK within timeout"), f"connect {where}")
        return client

    def _supervise(self) -> None:
        proto = "3.1.1" if self.protocol == "3.1.1" else "5"
        attempt = 0
        while not self._stop.is_set():
            self._lost.clear()
            try:
                client = self._connect_once(proto)
            except MqttError as e:
                self.last_error = e
                if self.protocol == "auto" and proto == "5" and e.code in _BAD_PROTOCOL:
                    log.warning("%s; falling back to MQTT 3.1.1", e)
                    proto = "3.1.1"
                    continue
                delay = backoff_delay(attempt, self.backoff)
                attempt += 1
                log.warning("%s; retry in %.1f s", e, delay)
                self._stop.wait(delay)
                continue
            attempt = 0
            self._client, self.protocol_in_use = client, proto
            self.connects += 1
            for topic, qos in self._subs:
                client.subscribe(topic, qos)
            self.connected.set()
            self.changed_at = time.monotonic()
            log.info("%s connected to %s:%d (MQTT %s)", self.name, self.broker.host, self.broker.port, proto)
            if self.on_connect_cb:
                self.on_connect_cb()
            self._watch(client)
            self.connected.clear()
            self.changed_at = time.monotonic()
            client.loop_stop()
            client.disconnect()
            self._client = None
            if not self._stop.is_set():
                log.warning("%s: connection to %s:%d lost", self.name, self.broker.host, self.broker.port)

    def _watch(self, client: paho.Client) -> None:
        """Until the connection is lost, stopped, or the watchdog trips."""
        while not self._lost.wait(1.0):
            thread = getattr(client, "_thread", None)
            if thread is None or not thread.is_alive():
                log.error("%s: watchdog: network loop thread died; reconnecting", self.name)
                return
            if self.stalled is not None and self.stalled():
                log.error("%s: watchdog: acknowledgements overdue; reconnecting", self.name)
                return
