"""The smallest MQTT 3.1.1 client the simulator needs, on asyncio: connect (will, user, TLS), publish
QoS 0/1 with PUBACK futures, subscribe (QoS 0/1; incoming QoS 1 messages are PUBACKed after
``on_message`` returns), keepalive pings, and an abrupt ``abort()`` (the network vanishing).

Why not aiomqtt/paho here: the bench runs 1,000 connections and 2,000 alerts/s on the same two
cores as the system it measures, and paho's per-packet Python work (measured: ~0.57 ms of this
process's CPU per alert through aiomqtt) would make the simulator the bottleneck. This client
does one ``struct.pack`` per packet. It is a test tool: the poles run the agent (paho).
"""

from __future__ import annotations

import asyncio
import ssl
import struct


class MqttLiteError(ConnectionError):
    pass


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _remaining(len(body)) + body


class _Protocol(asyncio.Protocol):
    def __init__(self, client: "Client"):
        self.c = client
        self.buf = bytearray()

    def connection_made(self, transport) -> None:
        self.c._transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 2:
            n, mult, i = 0, 1, 1
            while True:  # remaining length, 1-4 bytes
                if i >= len(self.buf):
                    return
                byte = self.buf[i]
                n += (byte & 0x7F) * mult
                mult *= 128
                i += 1
                if not byte & 0x80:
                    break
            if len(self.buf) < i + n:
                return
            kind, flags, body = self.buf[0] >> 4, self.buf[0] & 0x0F, bytes(self.buf[i:i + n])
            del self.buf[:i + n]
            self.c._packet(kind, body, flags)

    def connection_lost(self, exc) -> None:
        self.c._lost(exc)


class Client:
    def __init__(self, host: str, port: int, client_id: str, *, username: str | None = None,
                 password: str | None = None, will: tuple[str, bytes, int, bool] | None = None,
                 keepalive: int = 30, ssl_context: ssl.SSLContext | None = None, timeout: float = 10.0):
        self.host, self.port, self.client_id = host, port, client_id
        self.username, self.password, self.will, self.keepalive = username, password, will, keepalive
        self.ssl, self.timeout = ssl_context, timeout
        self._transport = None
        self._connack: asyncio.Future | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._mid = 0
        self.closed = asyncio.Event()
        self.on_message = None  # (topic: str, payload: bytes) -> None, called on the event loop
        self._subacks: dict[int, asyncio.Future] = {}
        self._ping: asyncio.Task | None = None

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        await asyncio.wait_for(loop.create_connection(lambda: _Protocol(self), self.host, self.port, ssl=self.ssl,
                                                      server_hostname=self.host if self.ssl else None), self.timeout)
        flags, payload = 0x02, _str(self.client_id)  # clean session
        if self.will:
            topic, msg, qos, retain = self.will
            flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
            payload += _str(topic) + _str(msg)
        if self.username is not None:
            flags |= 0x80
            payload += _str(self.username)
        if self.password is not None:
            flags |= 0x40
            payload += _str(self.password)
        body = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", self.keepalive) + payload
        self._transport.write(_packet(0x10, body))
        rc = await asyncio.wait_for(self._connack, self.timeout)
        if rc != 0:
            self.abort()
            raise MqttLiteError(f"[code:{rc}] CONNACK refused {self.client_id} on {self.host}:{self.port}")
        self._ping = asyncio.ensure_future(self._pinger())

    async def _pinger(self) -> None:
        while not self.closed.is_set():
            await asyncio.sleep(self.keepalive / 2)
            if self._transport is not None and not self._transport.is_closing():
                self._transport.write(b"\xc0\x00")

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> asyncio.Future | None:
        """Sent now; for QoS 1 a future done at PUBACK (fails if the connection goes first)."""
        if self._transport is None or self._transport.is_closing():
            raise MqttLiteError("not connected")
        first = 0x30 | (qos << 1) | (1 if retain else 0)
        if qos == 0:
            self._transport.write(_packet(first, _str(topic) + payload))
            return None
        self._mid = self._mid % 65535 + 1
        fut = asyncio.get_running_loop().create_future()
        self._pending[self._mid] = fut
        self._transport.write(_packet(first, _str(topic) + struct.pack("!H", self._mid) + payload))
        return fut

    async def subscribe(self, topic: str, qos: int = 1, timeout: float | None = None) -> int:
        """SUBSCRIBE and wait for the SUBACK (``timeout``, default the client's); the granted QoS, or
        ``MqttLiteError`` for 0x80 (refused)."""
        if self._transport is None or self._transport.is_closing():
            raise MqttLiteError("not connected")
        self._mid = self._mid % 65535 + 1
        fut = asyncio.get_running_loop().create_future()
        self._subacks[self._mid] = fut
        self._transport.write(_packet(0x82, struct.pack("!H", self._mid) + _str(topic) + bytes([qos])))
        granted = await asyncio.wait_for(fut, timeout or self.timeout)
        if granted == 0x80:
            raise MqttLiteError(f"[code:128] SUBACK refused {topic} for {self.client_id}")
        return granted

    def _incoming(self, flags: int, body: bytes) -> None:
        qos = (flags >> 1) & 3
        n = struct.unpack("!H", body[:2])[0]
        topic, i = body[2:2 + n].decode(), 2 + n
        mid = None
        if qos:
            mid, i = struct.unpack("!H", body[i:i + 2])[0], i + 2
        if self.on_message is not None:
            self.on_message(topic, body[i:])
        if mid is not None and self._transport is not None and not self._transport.is_closing():
            self._transport.write(_packet(0x40, struct.pack("!H", mid)))

    def _packet(self, kind: int, body: bytes, flags: int = 0) -> None:
        if kind == 3:  # PUBLISH from the broker
            self._incoming(flags, body)
        elif kind == 9 and len(body) >= 3:  # SUBACK
            fut = self._subacks.pop(struct.unpack("!H", body[:2])[0], None)
            if fut is not None and not fut.done():
                fut.set_result(body[2])
        elif kind == 2 and self._connack is not None and not self._connack.done():  # CONNACK
            self._connack.set_result(body[1] if len(body) >= 2 else 255)
        elif kind == 4 and len(body) >= 2:  # PUBACK
            fut = self._pending.pop(struct.unpack("!H", body[:2])[0], None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    def _lost(self, exc) -> None:
        self.closed.set()
        if self._ping:
            self._ping.cancel()
        err = MqttLiteError(f"connection to {self.host}:{self.port} lost" + (f": {exc}" if exc else ""))
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(err)
        for fut in [*self._pending.values(), *self._subacks.values()]:
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        self._subacks.clear()

    async def disconnect(self) -> None:
        """Clean: DISCONNECT first, so the broker drops the will."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"\xe0\x00")
            self._transport.close()
        await asyncio.wait_for(self.closed.wait(), self.timeout)

    def abort(self) -> None:
        """The network vanishes: no DISCONNECT, so the broker publishes the will."""
        if self._transport is not None:
            self._transport.abort()
