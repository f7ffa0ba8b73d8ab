"""TLS on the NATS MQTT listener with a CA the test makes: a pole that pins that CA connects (with the
agent's own connection code) and its alert is stored; one pinning another CA, or speaking plain MQTT to
the TLS port, never counts as connected."""

from __future__ import annotations

import time

from agent.alerts import Origin, encode_alert
from agent.config.uplink import BrokerConfig, TlsConfig
from agent.mqtt import Connection, Will
from fleet_fixtures import device_creds, sql, wait_for
from tls_fixtures import Pki


def _connection(port: int, user: str, pwfile, ca) -> Connection:
    broker = BrokerConfig(host="127.0.0.1", port=port, username=user, password_file=pwfile, connect_timeout_s=3,
                          tls=TlsConfig(ca_file=ca) if ca else None)
    return Connection("uplink", broker, f"roadside-{user}-up",
                      will=Will(f"roadside/v1/lab/{user}/state", b'{"v":1,"online":false,"boot":1}'))


def test_mqtt_over_tls_with_the_pinned_city_ca_and_nothing_else(make_stack, tmp_path):
    pki = Pki(tmp_path / "pki", devices=("tls-a",))
    stack = make_stack(nodes=1, workers=1, tls=pki.server)
    user, pwfile = device_creds(stack, "tls-a", "lab")
    time.sleep(0.5)
    port = stack.mqtt_ports[0]

    good = _connection(port, user, pwfile, pki.ca.pem)
    good.start()
    try:
        assert good.connected.wait(20), good.last_error
        assert good.protocol_in_use == "3.1.1"
        payload = encode_alert(Origin("tls-a", 1, "f" * 16), 1, ts_ms=int(time.time() * 1000), synced=True,
                               kind="noise", sensor="mic0", cls="siren", confidence=0.9, window_ms=4000, metrics={},
                               model=None)
        info = good.publish("roadside/v1/lab/tls-a/alert/noise", payload, qos=1)
        info.wait_for_publish(10)
        wait_for(lambda: sql(stack, "SELECT 1 FROM alerts WHERE alert_id='tls-a:1:1'"), 20, "the alert sent over TLS")
    finally:
        good.stop()

    for ca in (pki.wrong_ca.pem, None):  # another CA pinned; plain MQTT to the TLS listener
        bad = _connection(port, user, pwfile, ca)
        bad.start()
        try:
            assert not bad.connected.wait(4)
            assert bad.last_error is not None
            if ca is not None:
                assert "CERTIFICATE_VERIFY_FAILED" in str(bad.last_error) or "certificate" in str(bad.last_error)
        finally:
            bad.stop()
