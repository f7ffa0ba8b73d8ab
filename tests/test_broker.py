"""The demo's in-process MQTT 3.1.1 broker (roadside_demo.broker), exercised by paho and by the agent's own connection."""

from __future__ import annotations

import socket
import threading
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import BrokerConfig
from agent.mqtt import Connection
from roadside_demo.broker import MqttBroker, topic_matches, valid_filter


@pytest.fixture
def broker():
    b = MqttBroker().start()
    yield b
    b.stop()


class Client:
    """A paho 3.1.1 client that records what it receives."""

    def __init__(self, port: int, client_id: str, will: tuple[str, bytes] | None = None, keepalive: int = 30):
        self.got: list[tuple[str, bytes, int, bool]] = []
        self.lock = threading.Lock()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
        if will:
            self.c.will_set(will[0], will[1], qos=1, retain=True)
        self.c.on_message = self._on_message
        self.connected = threading.Event()
        self.c.on_connect = lambda c, u, f, reason, p: self.connected.set() if not reason.is_failure else None
        self.c.connect("127.0.0.1", port, keepalive=keepalive)
        self.c.loop_start()
        assert self.connected.wait(5), "no CONNACK"

    def _on_message(self, c, u, msg) -> None:
        with self.lock:
            self.got.append((msg.topic, msg.payload, msg.qos, msg.retain))

    def subscribe(self, flt: str, qos: int = 1) -> None:
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe(flt, qos)
        assert done.wait(5), "no SUBACK"

    def wait(self, n: int, timeout: float = 5.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.got) >= n:
                    return list(self.got)
            time.sleep(0.02)
        raise AssertionError(f"received {len(self.got)} messages, expected {n}: {self.got}")

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_topic_filters_follow_mqtt_3_1_1_section_4_7():
    assert topic_matches("sensors/+/audio/+", "sensors/d1/audio/mic0")
    assert not topic_matches("sensors/+/audio/+", "sensors/d1/camera/cam0")
    assert topic_matches("roadside/v1/#", "roadside/v1/site/dev/alert/noise")
    assert topic_matches("a/#", "a")  # '#' includes the parent level
    assert not topic_matches("#", "$SYS/uptime") and topic_matches("$SYS/#", "$SYS/uptime")
    assert not valid_filter("a/b#") and not valid_filter("a/#/b") and not valid_filter("a+/b")
    assert valid_filter("+/+/#")


def test_publish_qos0_and_qos1_reach_matching_subscribers_only(broker):
    sub, other, pub = (Client(broker.port, "sub"), Client(broker.port, "other"), Client(broker.port, "pub"))
    sub.subscribe("sensors/+/audio/+", qos=1)
    other.subscribe("sensors/+/camera/#", qos=0)
    info = pub.c.publish("sensors/d1/audio/mic0", b"\x00\x01pcm", qos=1)
    info.wait_for_publish(5)
    assert info.is_published()  # PUBACK came back
    pub.c.publish("sensors/d1/audio/mic0", b"q0", qos=0)
    got = sub.wait(2)
    assert got == [("sensors/d1/audio/mic0", b"\x00\x01pcm", 1, False), ("sensors/d1/audio/mic0", b"q0", 0, False)]
    time.sleep(0.2)
    assert other.got == []
    for c in (sub, other, pub):
        c.close()


def test_qos2_publish_is_delivered_once_and_downgraded_to_qos1(broker):
    sub, pub = Client(broker.port, "sub"), Client(broker.port, "pub")
    sub.subscribe("t/#", qos=2)
    info = pub.c.publish("t/x", b"once", qos=2)
    info.wait_for_publish(5)
    assert info.is_published()  # PUBREC, PUBREL, PUBCOMP completed
    assert sub.wait(1) == [("t/x", b"once", 1, False)]
    time.sleep(0.2)
    assert len(sub.got) == 1
    sub.close()
    pub.close()


def test_retained_message_is_sent_to_later_subscribers_and_can_be_cleared(broker):
    pub = Client(broker.port, "pub")
    pub.c.publish("city/dev/state", b'{"online":true}', qos=1, retain=True).wait_for_publish(5)
    late = Client(broker.port, "late")
    late.subscribe("city/#")
    assert late.wait(1) == [("city/dev/state", b'{"online":true}', 1, True)]
    pub.c.publish("city/dev/state", b"", qos=1, retain=True).wait_for_publish(5)
    later = Client(broker.port, "later")
    later.subscribe("city/#")
    time.sleep(0.3)
    assert later.got == []
    for c in (pub, late, later):
        c.close()


def test_last_will_is_published_when_a_client_vanishes_but_not_on_disconnect(broker):
    watcher = Client(broker.port, "watcher")
    watcher.subscribe("dev/+/state")
    polite = Client(broker.port, "polite", will=("dev/polite/state", b"offline"))
    polite.close()
    # A client whose socket just closes (a device losing power): raw CONNECT with a will, then close.
    s = socket.create_connection(("127.0.0.1", broker.port))
    body = (b"\x00\x04MQTT\x04" + bytes([0x02 | 0x04 | 0x08 | 0x20]) + b"\x00\x1e" + b"\x00\x04rude"
            + b"\x00\x0edev/rude/state" + b"\x00\x07offline")
    s.sendall(bytes([0x10, len(body)]) + body)
    assert s.recv(4) == b"\x20\x02\x00\x00"  # CONNACK accepted
    s.close()
    got = watcher.wait(1)
    time.sleep(0.3)
    assert [(t, p) for t, p, _, _ in watcher.got] == [("dev/rude/state", b"offline")], got
    watcher.close()


def test_mqtt5_is_refused_with_code_1_and_the_agent_connection_falls_back_to_3_1_1(broker):
    conn = Connection("test", BrokerConfig(host="127.0.0.1", port=broker.port, connect_timeout_s=5), "agent-test",
                      protocol="auto")
    conn.start()
    try:
        assert conn.connected.wait(10), conn.last_error
        assert conn.protocol_in_use == "3.1.1"
        # The refused MQTT 5 attempt: our return code 1, which paho reports as v5 reason 0x84 (132).
        assert conn.last_error is not None and conn.last_error.code == 132, conn.last_error
    finally:
        conn.stop()


def test_a_malformed_packet_closes_that_client_and_the_broker_keeps_serving(broker):
    s = socket.create_connection(("127.0.0.1", broker.port))
    s.sendall(b"\x30\x05\x00\x09abc")  # PUBLISH before CONNECT, topic length beyond the packet
    s.settimeout(5)
    assert s.recv(16) == b""  # closed by the broker
    s.close()
    ok = Client(broker.port, "after")
    ok.subscribe("x")
    ok.c.publish("x", b"still here", qos=1).wait_for_publish(5)
    assert ok.wait(1)[0][1] == b"still here"
    ok.close()


def test_a_second_connection_with_the_same_id_takes_over(broker):
    first = Client(broker.port, "same")
    second = Client(broker.port, "same")
    second.subscribe("t")
    first.c.loop_stop()  # the first one's socket was closed by the broker; it must not get messages
    pub = Client(broker.port, "pub")
    pub.c.publish("t", b"m", qos=1).wait_for_publish(5)
    assert second.wait(1)[0][1] == b"m"
    assert list(broker.clients) == ["same", "pub"]
    second.close()
    pub.close()
