"""A small in-process MQTT 3.1.1 broker for ``roadside demo`` when mosquitto is not installed.

Not a production broker: it binds 127.0.0.1 only, and implements the part of MQTT 3.1.1
(OASIS standard, 2014) that the demo's clients use, honestly within those limits:

- CONNECT / CONNACK: protocol level 4 only; any other level (MQTT 5 sends 5) is answered
  with return code 1 "unacceptable protocol version", so paho's "auto" mode falls back to
  3.1.1 (agent.mqtt). Anonymous: a username and password are accepted and ignored. Every
  session is treated as clean (session present = 0): nothing is queued for an offline client.
  A second connection with the same client id takes over the first (section 3.1.4).
- PUBLISH in QoS 0, 1 (PUBACK) and 2 (PUBREC / PUBREL / PUBCOMP, delivered once on receipt);
  deliveries to subscribers at min(publish QoS, granted QoS), at most QoS 1, never resent.
- Retained messages (an empty retained payload deletes one) sent on SUBSCRIBE with retain=1.
- Last will: published when a connection ends without DISCONNECT (socket closed, keepalive
  x 1.5 missed, protocol error).
- SUBSCRIBE / SUBACK (``+`` and ``#`` wildcards, ``$`` topics not matched by a leading
  wildcard, QoS 2 granted as 1, 0x80 for an invalid filter), UNSUBSCRIBE, PINGREQ, DISCONNECT.

A malformed packet closes that client's connection (section 4.8), never the broker.
Why not a library: amqtt (the maintained pure-Python broker, 0.12.1) needs eight more
packages (argon2, typer, websockets pinned ==15.0.1, ...) for this fallback path alone.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14
MAX_PACKET = 16 << 20  # larger packets close the connection (bounded memory)
MAX_BUFFERED = 64 << 20  # a subscriber this far behind is disconnected rather than buffered forever


class ProtocolError(Exception):
    """A packet that breaks MQTT 3.1.1: the connection is closed (and its will published)."""


def topic_matches(flt: str, topic: str) -> bool:
    """MQTT 3.1.1 section 4.7: ``+`` one level, ``#`` the rest (and the parent); ``$`` topics need a literal start."""
    if topic.startswith("$") and flt[:1] in ("+", "#"):
        return False
    f, t = flt.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


def valid_filter(flt: str) -> bool:
    levels = flt.split("/")
    if not flt or "\0" in flt:
        return False
    for i, level in enumerate(levels):
        if ("#" in level and (level != "#" or i != len(levels) - 1)) or ("+" in level and level != "+"):
            return False
    return True


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([ptype << 4 | flags]) + _remaining_length(len(body)) + body


def _string(s: bytes) -> bytes:
    return struct.pack("!H", len(s)) + s


class _Reader:
    """Fields of one packet body, each read checked against the body's length."""

    def __init__(self, body: bytes):
        self.body, self.pos = body, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.body):
            raise ProtocolError("packet shorter than its fields")
        out = self.body[self.pos:self.pos + n]
        self.pos += n
        return out

    def u16(self) -> int:
        return struct.unpack("!H", self.take(2))[0]

    def string(self) -> bytes:
        return self.take(self.u16())

    def text(self) -> str:
        try:
            return self.string().decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("string is not UTF-8") from None

    def rest(self) -> bytes:
        return self.take(len(self.body) - self.pos)


@dataclass
class _Client:
    writer: asyncio.StreamWriter
    client_id: str = ""
    subs: dict[str, int] = field(default_factory=dict)  # filter -> granted QoS
    will: tuple[str, bytes, int, bool] | None = None
    next_id: int = 0
    qos2_pending: set[int] = field(default_factory=set)

    def send(self, data: bytes) -> None:
        if self.writer.is_closing():
            return
        if self.writer.transport.get_write_buffer_size() > MAX_BUFFERED:
            log.warning("broker: client %s is %d MB behind; disconnecting it", self.client_id, MAX_BUFFERED >> 20)
            self.writer.close()
            return
        self.writer.write(data)

    def packet_id(self) -> int:
        self.next_id = self.next_id % 65535 + 1
        return self.next_id


class MqttBroker:
    """``start()`` binds 127.0.0.1:``port`` (0 = a free one, read ``.port``) and serves on a daemon thread."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1"):
        self.host, self.port = host, port
        self.clients: dict[str, _Client] = {}
        self.retained: dict[str, tuple[bytes, int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> "MqttBroker":
        self._thread = threading.Thread(target=self._run, name=f"mqtt-broker-{self.port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"in-process MQTT broker did not start within {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"in-process MQTT broker could not listen on {self.host}:{self.port}: {self._error}")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return
        if loop.is_running():
            loop.call_soon_threadsafe(self._shutdown)
        self._thread.join(timeout)

    # ------------------------------------------------------------------ event loop side

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            self._server = loop.run_until_complete(asyncio.start_server(self._serve, self.host, self.port))
            self.port = self._server.sockets[0].getsockname()[1]
        except OSError as e:
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _shutdown(self) -> None:
        self._server.close()
        for c in list(self.clients.values()):
            c.writer.close()
        self._loop.call_later(0.05, self._loop.stop)

    async def _read_packet(self, reader: asyncio.StreamReader, timeout: float | None) -> tuple[int, int, bytes]:
        first = await asyncio.wait_for(reader.readexactly(1), timeout)
        length, shift = 0, 0
        for _ in range(4):
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        else:
            raise ProtocolError("remaining length over 4 bytes")
        if length > MAX_PACKET:
            raise ProtocolError(f"packet of {length} bytes (limit {MAX_PACKET})")
        return first[0] >> 4, first[0] & 0x0F, await reader.readexactly(length)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(writer)
        clean_end = False
        try:
            ptype, flags, body = await self._read_packet(reader, 10.0)
            if ptype != CONNECT:
                raise ProtocolError("first packet is not CONNECT")
            keepalive = self._connect(client, flags, body)
            if keepalive is None:  # refused (CONNACK with a return code was sent)
                clean_end = True
                return
            timeout = 1.5 * keepalive if keepalive else None
            while True:
                ptype, flags, body = await self._read_packet(reader, timeout)
                if ptype == DISCONNECT:
                    clean_end = True
                    return
                self._handle(client, ptype, flags, body)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, ProtocolError) as e:
            if isinstance(e, ProtocolError):
                log.warning("broker: closing %s: %s", client.client_id or "a client", e)
        finally:
            if self.clients.get(client.client_id) is client:
                del self.clients[client.client_id]
                if not clean_end and client.will is not None:
                    self._publish(*client.will)
            writer.close()

    def _connect(self, client: _Client, flags: int, body: bytes) -> int | None:
        r = _Reader(body)
        name, level, cflags, keepalive = r.string(), r.take(1)[0], r.take(1)[0], r.u16()
        if name != b"MQTT" or level != 4:
            client.send(_packet(CONNACK, 0, bytes([0, 1])))  # 1: unacceptable protocol version
            return None
        if flags != 0 or cflags & 0x01:
            raise ProtocolError("reserved CONNECT flag set")
        clean, has_will = bool(cflags & 0x02), bool(cflags & 0x04)
        client.client_id = r.text()
        if not client.client_id:
            if not clean:
                client.send(_packet(CONNACK, 0, bytes([0, 2])))  # 2: identifier rejected
                return None
            client.client_id = f"auto-{id(client):x}"
        if has_will:
            topic, message = r.text(), r.string()
            client.will = (topic, message, (cflags >> 3) & 0x03, bool(cflags & 0x20))
        old = self.clients.get(client.client_id)
        if old is not None:  # take-over: the old connection ends without its will
            old.will = None
            old.writer.close()
        self.clients[client.client_id] = client
        client.send(_packet(CONNACK, 0, bytes([0, 0])))
        return keepalive

    def _handle(self, client: _Client, ptype: int, flags: int, body: bytes) -> None:
        r = _Reader(body)
        if ptype == PUBLISH:
            qos, retain = (flags >> 1) & 0x03, bool(flags & 0x01)
            if qos == 3:
                raise ProtocolError("PUBLISH with QoS 3")
            topic = r.text()
            if not topic or "+" in topic or "#" in topic:
                raise ProtocolError(f"PUBLISH to invalid topic {topic!r}")
            pid = r.u16() if qos else 0
            payload = r.rest()
            if qos == 2:
                client.send(_packet(PUBREC, 0, struct.pack("!H", pid)))
                if pid in client.qos2_pending:
                    return  # a resent QoS 2 publish: delivered once already
                client.qos2_pending.add(pid)
            elif qos == 1:
                client.send(_packet(PUBACK, 0, struct.pack("!H", pid)))
            self._publish(topic, payload, qos, retain)
        elif ptype == PUBREL:
            pid = r.u16()
            client.qos2_pending.discard(pid)
            client.send(_packet(PUBCOMP, 0, struct.pack("!H", pid)))
        elif ptype == SUBSCRIBE:
            self._subscribe(client, flags, r)
        elif ptype == UNSUBSCRIBE:
            pid = r.u16()
            while r.pos < len(body):
                client.subs.pop(r.text(), None)
            client.send(_packet(UNSUBACK, 0, struct.pack("!H", pid)))
        elif ptype == PINGREQ:
            client.send(_packet(PINGRESP, 0, b""))
        elif ptype in (PUBACK, PUBREC, PUBCOMP):
            return  # acknowledgements of our deliveries: nothing is resent, so nothing to clear
        else:
            raise ProtocolError(f"unexpected packet type {ptype}")

    def _subscribe(self, client: _Client, flags: int, r: _Reader) -> None:
        if flags != 0x02:
            raise ProtocolError("SUBSCRIBE with wrong flags")
        pid, granted, new = r.u16(), bytearray(), []
        while r.pos < len(r.body):
            flt, qos = r.text(), r.take(1)[0]
            if qos > 2 or not valid_filter(flt):
                granted.append(0x80)
                continue
            client.subs[flt] = min(qos, 1)
            granted.append(min(qos, 1))
            new.append(flt)
        if not granted:
            raise ProtocolError("SUBSCRIBE without a topic filter")
        client.send(_packet(SUBACK, 0, struct.pack("!H", pid) + bytes(granted)))
        for topic, (payload, qos) in list(self.retained.items()):
            matching = [client.subs[f] for f in new if topic_matches(f, topic)]
            if matching:
                self._deliver(client, topic, payload, min(qos, max(matching)), retain=True)

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if retain:
            if payload:
                self.retained[topic] = (payload, qos)
            else:
                self.retained.pop(topic, None)
        for c in list(self.clients.values()):
            granted = [q for f, q in c.subs.items() if topic_matches(f, topic)]
            if granted:  # overlapping subscriptions: one delivery at the highest QoS
                self._deliver(c, topic, payload, min(qos, max(granted)), retain=False)

    @staticmethod
    def _deliver(client: _Client, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        head = _string(topic.encode()) + (struct.pack("!H", client.packet_id()) if qos else b"")
        client.send(_packet(PUBLISH, qos << 1 | int(retain), head + payload))
