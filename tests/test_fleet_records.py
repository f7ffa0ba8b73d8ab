"""From the agent's wire format to rows: what is stored, what is dead-lettered and why (no servers)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from agent.alerts import ModelInfo, Origin, encode_alert, encode_summary, mark_replayed
from fleet import records
from fleet.records import Bad

NOW = dt.datetime(2026, 5, 1, 8, 0, tzinfo=dt.timezone.utc)
TS = int(NOW.timestamp() * 1000)
ORIGIN = Origin("orin-0001", 12, "fedcba9876543210")
MODEL = ModelInfo("noise", "1", "0123456789abcdef" * 4)


def alert(origin: Origin = ORIGIN, seq: int = 3456, **kw) -> bytes:
    args = dict(ts_ms=TS, synced=True, kind="noise", sensor="mic0", cls="siren", confidence=0.931, window_ms=4000,
                metrics={}, model=MODEL)
    return encode_alert(origin, seq, **{**args, **kw})


def topic(kind: str = "alert/noise", device: str = "orin-0001") -> records.Topic:
    return records.parse_subject(f"$MQTT.msgs.roadside.v1.lab.{device}.{kind.replace('/', '.')}")


def test_an_alert_from_the_agents_encoder_becomes_a_row_keyed_by_its_id_and_day():
    row = records.alert_row(topic(), alert(), NOW)
    assert row["alert_id"] == "orin-0001:12:3456" and (row["boot"], row["seq"]) == (12, 3456)
    assert row["day"] == NOW.date() and row["ts"] == NOW and row["site"] == "lab"
    assert (row["class"], row["confidence"], row["model_sha"], row["replayed"]) == ("siren", 0.931, MODEL.short, False)


def test_a_replayed_alert_has_the_same_key_as_the_live_one():
    live = records.alert_row(topic(), alert(), NOW)
    again = records.alert_row(topic(), mark_replayed(alert()), NOW)
    assert again["replayed"] is True
    assert (again["device"], again["alert_id"], again["day"]) == (live["device"], live["alert_id"], live["day"])


def test_an_alert_whose_id_names_another_device_is_refused_as_spoofed():
    with pytest.raises(Bad) as e:
        records.alert_row(topic(device="orin-0001"), alert(Origin("orin-0002", 1, "x")), NOW)
    assert e.value.reason == "spoofed" and "orin-0002" in e.value.detail


@pytest.mark.parametrize("payload, reason", [
    (b"{not json", "json"),
    (b"[1, 2]", "json"),
    (b"\xff\xfe", "json"),
    (b"x" * 300, "too_large"),
    (json.dumps({"v": 1, "id": "orin-0001:1:1"}).encode(), "schema"),
    (alert()[:-1] + b',"extra":1}', "schema"),
    (alert().replace(b'"v":1', b'"v":2'), "schema"),
    (alert().replace(b'"orin-0001:12:3456"', b'"orin-0001:12"'), "schema"),
])
def test_malformed_alerts_are_refused_with_one_reason(payload, reason):
    with pytest.raises(Bad) as e:
        records.alert_row(topic(), payload, NOW)
    assert e.value.reason == reason


def test_an_alert_of_one_kind_on_another_kinds_topic_is_a_schema_error():
    with pytest.raises(Bad) as e:
        records.alert_row(topic("alert/vehicles"), alert(), NOW)
    assert e.value.reason == "schema" and "vehicles" in e.value.detail


def test_an_alert_more_than_a_day_ahead_of_the_city_clock_is_refused():
    with pytest.raises(Bad) as e:
        records.alert_row(topic(), alert(ts_ms=TS + 2 * 86_400_000), NOW)
    assert e.value.reason == "ts_future"
    old = records.alert_row(topic(), alert(ts_ms=0, synced=False), NOW)  # a free-running clock at 1970 is kept
    assert old["day"] == dt.date(1970, 1, 1) and old["time_synced"] is False


def test_a_summary_from_the_agents_encoder_becomes_a_row():
    payload = encode_summary(ORIGIN, 3457, ts_ms=TS, synced=True, sensor="mic0", seconds=60.0, laeq=68.2,
                             lafmax=84.1, l10=71.3, l90=60.2, limit_db=70.0, period="day")
    row = records.summary_row(topic("summary"), payload, NOW)
    assert (row["summary_id"], row["laeq"], row["limit_db"], row["period"]) == ("orin-0001:12:3457", 68.2, 70.0, "day")


def test_state_birth_carries_models_and_location_and_the_will_only_online_false():
    birth = {"v": 1, "online": True, "ts": TS, "boot": 12, "agent": "0.1.0", "ch": "fedcba9876543210", "proto": "3.1.1",
             "models": {"noise": {"name": "noise", "version": "1", "sha256": "ab" * 32}}, "loc": {"lat": 51.5, "lon": -0.1},
             "something_new": 1}
    row = records.state_row(topic("state"), json.dumps(birth).encode())
    assert row["online"] and row["boot"] == 12 and (row["lat"], row["lon"]) == (51.5, -0.1)
    assert json.loads(row["models"])["noise"]["version"] == "1"
    will = records.state_row(topic("state"), b'{"v":1,"online":false,"boot":12}')
    assert will["online"] is False and will["models"] is None and will["lat"] is None
    with pytest.raises(Bad):
        records.state_row(topic("state"), b'{"v":1,"online":true,"boot":1,"loc":{"lat":91,"lon":0}}')


@pytest.mark.parametrize("subject, kind", [
    ("$MQTT.msgs.roadside.v1.lab.orin-0001.alert.noise", "alert"),
    ("$MQTT.msgs.roadside.v1.lab.orin-0001.summary", "summary"),
    ("roadside.v1.lab.orin-0001.health", "health"),
    ("$MQTT.msgs.roadside.v1.lab.orin-0001.cmd.model.ack", "cmd"),
])
def test_subjects_map_to_their_kind(subject, kind):
    assert records.parse_subject(subject).kind == kind


@pytest.mark.parametrize("subject", ["$MQTT.msgs.roadside.v1.lab.orin-0001.garbage",
                                     "$MQTT.msgs.roadside.v1.lab.orin-0001.alert.noise.extra",
                                     "$MQTT.msgs.other.v1.lab.orin-0001.alert.noise", "roadside.v1.lab"])
def test_unknown_subjects_are_refused_as_topic(subject):
    with pytest.raises(Bad) as e:
        records.parse_subject(subject)
    assert e.value.reason == "topic"
