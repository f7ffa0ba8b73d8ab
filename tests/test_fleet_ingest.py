"""Ingest through the real stack (3 NATS nodes with MQTT, PostgreSQL, 2 workers): what poles publish with
paho, as the agent does, and what ends up in the database; per-device permissions on the broker."""

from __future__ import annotations

import asyncio
import json
import time

from fleet_fixtures import Pole, alert, device_creds, sql, wait_for



def birth(boot: int = 1) -> bytes:
    return json.dumps({"v": 1, "online": True, "ts": int(time.time() * 1000), "boot": boot, "agent": "0.1.0",
                       "ch": "f" * 16, "proto": "3.1.1", "loc": {"lat": 51.5, "lon": -0.12},
                       "models": {"noise": {"name": "noise", "version": "1", "sha256": "ab" * 32}}}).encode()


def test_a_poles_alerts_state_and_will_reach_the_database(fleet_stack):
    pole = Pole(fleet_stack, "ing-a", port_index=1)
    pole.publish("state", birth(), retain=True)
    for seq in (1, 2, 3):
        pole.publish("alert/noise", alert("ing-a", seq))
    rows = wait_for(lambda: (r := sql(fleet_stack, "SELECT alert_id FROM alerts WHERE device='ing-a'")) and
                    len(r) == 3 and r, 20, "3 alerts stored")
    assert sorted(r["alert_id"] for r in rows) == ["ing-a:1:1", "ing-a:1:2", "ing-a:1:3"]
    dev = wait_for(lambda: sql(fleet_stack, "SELECT * FROM devices WHERE device='ing-a' AND online"), 20, "online")[0]
    assert (dev["site"], dev["boot"], dev["lat"], json.loads(dev["models"])["noise"]["version"]) == ("lab", 1, 51.5, "1")

    pole.vanish()
    dev = wait_for(lambda: sql(fleet_stack, "SELECT * FROM devices WHERE device='ing-a' AND NOT online"), 30,
                   "the will to flip the pole offline")[0]
    assert dev["offline_since"] is not None and dev["lat"] == 51.5  # the position stays for the map


def test_malformed_and_spoofed_payloads_are_dead_lettered_counted_and_kept(fleet_stack):
    import nats

    pole = Pole(fleet_stack, "ing-b")
    pole.publish("alert/noise", b"{this is not json")
    pole.publish("alert/noise", alert("ing-victim", 7))  # its own topic, another device's id
    pole.publish("alert/noise", alert("ing-b", 1))        # a good one after them: the worker went on
    wait_for(lambda: sql(fleet_stack, "SELECT 1 FROM alerts WHERE alert_id='ing-b:1:1'"), 20, "the good alert")
    dead = wait_for(lambda: (r := sql(fleet_stack, "SELECT reason, subject, payload FROM dead_letters "
                                                   "WHERE subject LIKE '%.ing-b.%' ORDER BY id")) and len(r) == 2 and r,
                    20, "two dead letters")
    by_reason = {d["reason"]: bytes(d["payload"]) for d in dead}  # two workers: either may commit first
    assert set(by_reason) == {"json", "spoofed"}
    assert by_reason["json"] == b"{this is not json" and b'"ing-victim:1:7"' in by_reason["spoofed"]
    assert not sql(fleet_stack, "SELECT 1 FROM alerts WHERE device='ing-victim' OR alert_id LIKE 'ing-victim%'")
    def counted():  # the workers' counters (written every second)
        return sum(s.get("dead", {}).get(r, 0) for s in fleet_stack.worker_stats().values() for r in ("json", "spoofed"))
    wait_for(lambda: counted() >= 2, 10, "the workers to count both dead letters")

    async def dlq():  # the dead-letter subject keeps them too, with the original subject and the reason
        nc = await nats.connect(servers=fleet_stack.nats_urls)
        js = nc.jetstream()
        sub = await js.subscribe("roadside.dlq.>", deliver_policy="all", ordered_consumer=True)
        out = []
        try:
            while True:
                m = await sub.next_msg(timeout=2)
                out.append((m.subject, m.headers.get("Roadside-Subject")))
        except Exception:
            pass
        await nc.close()
        return out
    kept = asyncio.run(dlq())
    assert ("roadside.dlq.spoofed", "$MQTT.msgs.roadside.v1.lab.ing-b.alert.noise") in kept
    assert ("roadside.dlq.json", "$MQTT.msgs.roadside.v1.lab.ing-b.alert.noise") in kept


def test_device_a_can_neither_publish_as_device_b_nor_read_bs_commands(fleet_stack):
    a, b = Pole(fleet_stack, "acl-a"), Pole(fleet_stack, "acl-b")
    before = fleet_stack.nats.violations()
    user, pw = device_creds(fleet_stack, "acl-ops-probe")  # noqa: F841 (a third pole, to prove B's own path works)
    # B may read its own commands. NATS backs a QoS 1 MQTT subscription with a JetStream consumer, whose
    # creation can time out on a loaded 2-core CI box (also answered 128): an allowed subscribe is retried.
    granted = []
    while [1] not in granted and len(granted) < 3:
        granted.append(b.subscribe("roadside/v1/lab/acl-b/cmd/+"))
    assert [1] in granted, granted
    assert a.subscribe("roadside/v1/lab/acl-b/cmd/+") == [128]      # A may not read B's
    assert a.subscribe("roadside/v1/+/+/cmd/+") == [128]            # nor everyone's

    ops = Pole(fleet_stack, "ops", username="city-ops", password=fleet_stack.nats.ops_password, will=False)
    ops.publish("cmd/reload", b'{"id":"r-1"}', base="roadside/v1/lab/acl-b")
    wait_for(lambda: b.got, 10, "B to get its command")
    a.publish("cmd/reload", b'{"id":"r-2"}', base="roadside/v1/lab/acl-b")  # nor may A command B

    a.publish("alert/noise", alert("acl-b", 1), base="roadside/v1/lab/acl-b")  # as B, on B's topic
    a.publish("alert/noise", alert("acl-a", 2), base="roadside/v1/elsewhere/acl-a")  # itself, another site
    a.publish("alert/noise", alert("acl-a", 1))                                # its own: a positive control
    wait_for(lambda: sql(fleet_stack, "SELECT 1 FROM alerts WHERE alert_id='acl-a:1:1'"), 20, "A's own alert")
    time.sleep(1.0)
    assert not sql(fleet_stack, "SELECT 1 FROM alerts WHERE device='acl-b' OR site='elsewhere'")
    assert not sql(fleet_stack, "SELECT 1 FROM dead_letters WHERE subject LIKE '%.acl-b.%'")  # never reached ingest
    assert [t for t, _ in a.got] == []
    after = fleet_stack.nats.violations()  # each refusal is counted by the broker (its log)
    assert after["publish"] - before["publish"] >= 3 and after["subscribe"] - before["subscribe"] >= 2
    assert [json.loads(p)["id"] for t, p in b.got] == ["r-1"]
    for p in (a, b, ops):
        p.close()


def test_a_worker_started_from_a_config_file_ingests_on_its_own(make_stack, tmp_path):
    """The production path (python -m fleet.ingest --config): here it is the only worker."""
    import subprocess
    import sys

    import yaml

    stack = make_stack(nodes=1, workers=0)
    (tmp_path / "ops.pw").write_text(stack.nats.ops_password)
    (tmp_path / "db.pw").write_text(stack.pg.password)
    cfg = {"nats": {"servers": [u.replace(f"city-ops:{stack.nats.ops_password}@", "") for u in stack.nats_urls],
                    "user": "city-ops", "password_file": str(tmp_path / "ops.pw")},
           "db": {"host": "127.0.0.1", "port": stack.pg.port, "password_file": str(tmp_path / "db.pw"),
                  "sslmode": "disable"},
           "ingest": {"batch": 50, "gather_ms": 5}}
    (tmp_path / "ingest.yaml").write_text(yaml.safe_dump(cfg))
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "fleet.ingest", "--config", str(tmp_path / "ingest.yaml"),
                               "--name", "cfg", "--stats", str(tmp_path / "cfg.json")], stdout=log, stderr=log)
    try:
        pole = Pole(stack, "cfg-a")
        for seq in range(1, 121):
            pole.publish("alert/noise", alert("cfg-a", seq), qos=1)
        wait_for(lambda: sql(stack, "SELECT count(*) AS n FROM alerts")[0]["n"] == 120, 30, "120 alerts stored")
        stats = wait_for(lambda: (p := tmp_path / "cfg.json").is_file() and
                         (s := json.loads(p.read_text())).get("alerts") == 120 and
                         s.get("lag", {}).get("ingest") == {"pending": 0, "ack_pending": 0, "redelivered": 0} and s,
                         20, "the worker's counters, and nothing left waiting in the consumer")
        assert stats["batches"] >= 3  # 120 messages in batches of at most 50
        pole.close()
    finally:
        worker.terminate()
        assert worker.wait(15) == 0, (tmp_path / "worker.log").read_text()
        log.close()
