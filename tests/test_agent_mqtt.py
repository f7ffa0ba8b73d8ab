"""The MQTT wrapper: full-jitter backoff, MQTT 5 -> 3.1.1 fallback, a refused connection is never "connected".

The fallback needs a broker that speaks only 3.1.1; mosquitto speaks both, so a 30-line
fake broker on 127.0.0.1 answers CONNECT by protocol level.
"""

from __future__ import annotations

import random
import socket
import threading

from agent.config import BackoffConfig, BrokerConfig
from agent.mqtt import Connection, backoff_delay


def test_backoff_is_full_jitter_under_an_exponential_cap():
    cfg, rng = BackoffConfig(initial_s=1, max_s=60), random.Random(0)
    for attempt, cap in [(0, 1), (1, 2), (3, 8), (6, 60), (40, 60)]:
        delays = [backoff_delay(attempt, cfg, rng) for _ in range(500)]
        assert 0 <= min(delays) < 0.1 * cap and 0.9 * cap < max(delays) <= cap


class FakeBroker:
    """Answers each CONNECT with ``answers[protocol level]`` (CONNACK return code) and holds the socket."""

    def __init__(self, answers: dict[int, int]):
        self.answers, self.levels = answers, []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            conn.settimeout(5)
            data = conn.recv(1024)
            i = 1
            while data[i] & 0x80:  # skip the remaining-length varint
                i += 1
            level = data[i + 1 + 6]
            self.levels.append(level)
            code = self.answers.get(level, 0)
            # 3.1.1 CONNACK: 0x20 0x02 flags rc; a v5 CONNACK adds an empty property length. A
            # 3.1.1-only broker answers a v5 CONNECT in 3.1.1 form with rc 1.
            v5 = level == 5 and code != 1
            conn.sendall(bytes([0x20, 0x03, 0, code, 0]) if v5 else bytes([0x20, 2, 0, code]))
            if code:
                conn.close()

    def close(self) -> None:
        self.sock.close()
        for c in self._conns:
            c.close()


def _conn(port: int, protocol: str = "auto") -> Connection:
    return Connection("test", BrokerConfig(host="127.0.0.1", port=port, connect_timeout_s=2), "t1", protocol=protocol,
                      backoff=BackoffConfig(initial_s=0.05, max_s=0.1))


def test_a_broker_without_mqtt5_gets_311():
    broker = FakeBroker({5: 1})  # "unacceptable protocol version" to MQTT 5
    conn = _conn(broker.port)
    conn.start()
    try:
        assert conn.connected.wait(10)
        assert conn.protocol_in_use == "3.1.1" and broker.levels[:2] == [5, 4]
    finally:
        conn.stop(timeout=3)
        broker.close()


def test_a_refused_connection_is_never_connected():
    broker = FakeBroker({5: 0x87, 4: 5})  # not authorised, in both protocol versions
    conn = _conn(broker.port)
    conn.start()
    try:
        assert not conn.connected.wait(1.5)
        assert conn.last_error is not None and "[code:135]" in str(conn.last_error)
        assert len(broker.levels) >= 2  # it kept retrying
    finally:
        conn.stop(timeout=3)
        broker.close()
