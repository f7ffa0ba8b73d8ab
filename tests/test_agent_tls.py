"""Transport security against a real mosquitto: mutual TLS with a pinned CA, and an ACL per device identity.

The PKI is generated here (``tls_fixtures``): a city CA, an unrelated CA, a broker
certificate for 127.0.0.1, and client certificates whose CN is the device id. The broker's
TLS listener requires a client certificate, takes its CN as the user name and lets a
device write only under ``roadside/v1/+/<its id>/#``; the test observes on a plain listener.
"""

from __future__ import annotations

import json
import logging
import re

import pytest

from agent.config import BackoffConfig, BrokerConfig, TlsConfig
from agent.mqtt import Connection
from agent.schema import ConfigError
from agent_fixtures import Collector, write_agent_config
from ops_fixtures import InProcessAgent, send_audio, tone, wait_until
from tls_fixtures import Pki, TlsBroker

PASSWORD = "s3cret-Pa55word-never-logged"


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path / "pki")


@pytest.fixture
def tls_broker(tmp_path, pki):
    b = TlsBroker(tmp_path / "broker", pki)
    yield b
    b.stop()


def _connection(broker: TlsBroker, tls: TlsConfig | None) -> Connection:
    cfg = BrokerConfig(host="127.0.0.1", port=broker.tls_port, tls=tls, connect_timeout_s=2)
    return Connection("test", cfg, "probe", backoff=BackoffConfig(initial_s=0.1, max_s=0.2))


def _never_connects(conn: Connection) -> str:
    conn.start()
    try:
        assert not conn.connected.wait(2.0), "a connection that must be refused was accepted"
        assert conn.last_error is not None
        return str(conn.last_error)
    finally:
        conn.stop(timeout=3)


def test_a_client_with_the_right_ca_and_certificate_connects(tls_broker, pki):
    cert, key = pki.clients["dev-a"]
    conn = _connection(tls_broker, TlsConfig(ca_file=pki.ca.pem, cert_file=cert, key_file=key))
    conn.start()
    try:
        assert conn.connected.wait(10), conn.last_error
    finally:
        conn.stop(timeout=3)


def test_a_broker_certificate_from_another_ca_is_refused(tls_broker, pki):
    cert, key = pki.clients["dev-a"]
    error = _never_connects(_connection(tls_broker, TlsConfig(ca_file=pki.wrong_ca.pem, cert_file=cert,
                                                              key_file=key)))
    assert "CERTIFICATE_VERIFY_FAILED" in error


def test_a_device_without_a_client_certificate_is_refused(tls_broker, pki):
    error = _never_connects(_connection(tls_broker, TlsConfig(ca_file=pki.ca.pem)))
    assert "connect" in error  # refused at the TLS handshake or right after it, never "connected"


def test_tls_config_needs_certificate_and_key_together(tmp_path, pki):
    cert, _ = pki.clients["dev-a"]
    with pytest.raises(ValueError, match="cert_file and key_file go together"):
        TlsConfig(ca_file=pki.ca.pem, cert_file=cert)


def _tls_agent_config(tmp_path, noise_model, broker: TlsBroker, pki: Pki, device: str, identity: str, **over):
    cert, key = pki.clients[identity]
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    uplink = {"host": "127.0.0.1", "port": broker.tls_port, "keepalive_s": 10, "connect_timeout_s": 2,
              "username": identity, "password_file": str(tmp_path / "pw"),
              "tls": {"ca_file": str(pki.ca.pem), "cert_file": str(cert), "key_file": str(key)}}
    return write_agent_config(tmp_path / "agent", noise_model, broker.port, broker.port,
                              **{"device.id": device, "uplink.broker": uplink, "level.period_s": 1, **over})


def test_missing_certificate_file_is_refused_before_start_naming_its_key(tmp_path, noise_model, tls_broker, pki):
    path = _tls_agent_config(tmp_path, noise_model, tls_broker, pki, "dev-a", "dev-a")
    (pki.folder / "dev-a.crt").unlink()
    with pytest.raises(ConfigError) as e:
        InProcessAgent(path)
    assert any(p.startswith("uplink.broker.tls.cert_file:") for p in e.value.problems), e.value.problems


def test_agent_over_mutual_tls_delivers_and_never_logs_a_secret(tmp_path, noise_model, tls_broker, pki, caplog):
    caplog.set_level(logging.DEBUG)
    observer = Collector(tls_broker.port)
    agent = InProcessAgent(_tls_agent_config(tmp_path, noise_model, tls_broker, pki, "dev-a", "dev-a"))
    try:
        wait_until(lambda: observer.payloads("/dev-a/state"), 20, "the birth message over TLS")
        send_audio(tls_broker.port, tone(3.0), device="dev-a")
        summaries = observer.wait_for(lambda c: c.payloads("/dev-a/summary"), 20, "level summaries over TLS")
        assert summaries[0]["k"] == "level" and summaries[0]["id"].startswith("dev-a:")
        assert agent.agent.uplink.conn.protocol_in_use == "5" and agent.error is None
    finally:
        agent.stop()
        observer.close()
    key_body = "".join(line for line in pki.clients["dev-a"][1].read_text().splitlines() if "-----" not in line)
    chunks = {key_body[i:i + 16] for i in range(0, len(key_body) - 16, 16)}
    with observer._lock:
        upstream = b"".join(p for _, _, p, _ in observer.messages).decode(errors="replace")
    for text in (caplog.text, upstream):
        assert PASSWORD not in text
        assert not any(c in text for c in chunks), "private key material in a log line or message"
    assert "uplink connected" in caplog.text  # the log was captured at all


def _health(agent: InProcessAgent) -> dict:
    f = agent.agent.health_file
    return json.loads(f.read_text()) if f.is_file() else {"n": {}, "up": {"refused": 0, "online": True}}


def test_the_agent_of_device_a_cannot_publish_as_device_b(tmp_path, noise_model, tls_broker, pki):
    observer = Collector(tls_broker.port)
    # Device A's certificate, but configured (by mistake or malice) with device B's id.
    agent = InProcessAgent(_tls_agent_config(tmp_path, noise_model, tls_broker, pki, "dev-b", "dev-a"))
    try:
        agent.wait_sensors()
        send_audio(tls_broker.port, tone(3.0), device="dev-b")
        wait_until(lambda: _health(agent)["n"].get("summaries", 0) >= 2, 20, "summaries produced by the impostor")
        # MQTT 5: the broker answers each PUBACK "not authorised" (135); the agent counts them.
        health = wait_until(lambda: (h := _health(agent))["up"]["refused"] >= 1 and h, 10, "the broker's refusal")
    finally:
        agent.stop()
    with observer._lock:
        topics = [t for _, t, _, _ in observer.messages]
    assert not [t for t in topics if re.match(r"roadside/v1/[^/]+/dev-b/", t)], topics
    # Nothing was lost either: the refused messages stay in the outbox until the identity is fixed.
    assert health["out"]["summaries"] + health["out"]["alerts"] >= 1
    observer.close()


def test_an_encrypted_client_key_is_an_error_not_a_passphrase_prompt(tls_broker, pki, tmp_path):
    from cryptography.hazmat.primitives import serialization

    cert, key = pki.clients["dev-a"]
    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(loaded.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"pass")))
    error = _never_connects(_connection(tls_broker, TlsConfig(ca_file=pki.ca.pem, cert_file=cert, key_file=locked)))
    assert "encrypted" in error


def test_relative_certificate_paths_are_read_beside_the_config(tmp_path, noise_model, pki):
    import shutil

    from agent.config import load_config, preflight, resolve_files

    cert, key = pki.clients["dev-a"]
    (tmp_path / "agent" / "certs").mkdir(parents=True)
    for f in (pki.ca.pem, cert, key):
        shutil.copy(f, tmp_path / "agent" / "certs" / f.name)
    tls = {"ca_file": f"certs/{pki.ca.pem.name}", "cert_file": f"certs/{cert.name}", "key_file": f"certs/{key.name}"}
    path = write_agent_config(tmp_path / "agent", noise_model, 1883, 8883, **{"uplink.broker.tls": tls})
    resolved = resolve_files(load_config(path), path)
    preflight(resolved)
    assert resolved.uplink.broker.tls.ca_file == (tmp_path / "agent" / "certs" / pki.ca.pem.name).resolve()
