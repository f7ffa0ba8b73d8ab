"""What ingest stores for rollouts: shadow reports and command answers (fleet/records.py), wire to row."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from agent.alerts import Origin, encode_shadow
from fleet import records

NOW = dt.datetime.now(dt.timezone.utc)


def _topic(suffix: str, device: str = "orin-0001") -> records.Topic:
    return records.parse_subject(f"$MQTT.msgs.roadside.v1.lab.{device}.{suffix}")


def _report(**kw) -> dict:
    return {"v": 1, "id": "orin-0001:12:3460", "ts": int(NOW.timestamp() * 1000), "k": "noise", "cs": "a" * 16,
            "as": "b" * 16, "n": 300, "sk": 4, "agr": 0.913, "cf": 0.842, "acf": 0.851, "div": 0.031,
            "p95": [3.1, 2.2], "err": 0, "end": 1, **kw}


def test_a_shadow_report_as_the_contract_shows_it_becomes_a_row():
    row = records.shadow_row(_topic("shadow"), json.dumps(_report()).encode(), NOW)
    assert row["cand16"] == "a" * 16 and row["active16"] == "b" * 16 and row["n"] == 300 and row["final"]
    assert (row["p95_active"], row["p95_cand"]) == (3.1, 2.2)


def test_the_agents_own_encoder_and_the_city_agree():
    report = {k: v for k, v in _report().items() if k not in ("v", "id", "ts")}
    payload = encode_shadow(Origin("orin-0001", 1, "f" * 16), 5, ts_ms=int(NOW.timestamp() * 1000), report=report)
    row = records.shadow_row(_topic("shadow"), payload, NOW)
    assert row["report_id"] == "orin-0001:1:5" and row["task"] == "noise" and row["agr"] == pytest.approx(0.913)
    long = Origin("orin-" + "9" * 27, 2**31 - 1, "f" * 16)  # the longest ids: the agent sheds "as"
    payload = encode_shadow(long, 2**53, ts_ms=int(NOW.timestamp() * 1000),
                            report={**report, "n": 10**6, "sk": 10**6, "err": 10**6})
    row = records.shadow_row(_topic("shadow", long.device), payload, NOW)
    assert row["n"] == 10**6


def test_a_shadow_report_sent_from_the_backlog_is_stored_like_a_live_one():
    # the outbox marks what it sends after an outage with "r":1 (agent.alerts.mark_replayed)
    from agent.alerts import mark_replayed

    report = {k: v for k, v in _report().items() if k not in ("v", "id", "ts")}
    payload = encode_shadow(Origin("orin-0001", 1, "f" * 16), 6, ts_ms=int(NOW.timestamp() * 1000), report=report)
    row = records.shadow_row(_topic("shadow"), mark_replayed(payload), NOW)
    assert row["report_id"] == "orin-0001:1:6" and row["n"] == 300


@pytest.mark.parametrize("change, reason", [({"cs": "XYZ"}, "schema"), ({"agr": 1.5}, "schema"),
                                            ({"id": "other:1:2"}, "spoofed"), ({"extra": 1}, "schema"),
                                            ({"pad": "x" * 600}, "too_large")])
def test_bad_shadow_reports_are_dead_letters_with_a_reason(change, reason):
    with pytest.raises(records.Bad) as e:
        records.shadow_row(_topic("shadow"), json.dumps(_report(**change)).encode(), NOW)
    assert e.value.reason == reason


def test_command_answers_are_rows_and_the_commands_themselves_are_not():
    t = _topic("cmd.shadow.ack")
    assert records.is_ack(t) and not records.is_ack(_topic("cmd.shadow"))
    ack = {"v": 1, "id": "ro7-s-orin-0001", "cmd": "shadow", "ts": int(NOW.timestamp() * 1000), "ch": "x", "ok": True,
           "status": "shadowing", "model": {"task": "noise", "sha256": "c" * 64}, "s": 0.4}
    row = records.ack_row(t, json.dumps(ack).encode(), NOW)
    assert (row["cmd"], row["cmd_id"], row["status"], row["ok"]) == ("shadow", "ro7-s-orin-0001", "shadowing", True)
    assert json.loads(row["doc"])["model"]["sha256"] == "c" * 64
    with pytest.raises(records.Bad) as e:
        records.ack_row(_topic("cmd.model.ack"), json.dumps(ack).encode(), NOW)  # answer on another command's topic
    assert e.value.reason == "schema"
