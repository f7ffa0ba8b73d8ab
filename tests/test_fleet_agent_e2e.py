"""A real ``roadside agent`` (child process, shipped noise model, real UrbanSound8K clips replayed through a
mosquitto sensors broker) publishing to the city's NATS MQTT listener with its own credentials, MQTT 5
tried first and 3.1.1 taken: its alerts, summaries, health and state end up in PostgreSQL."""

from __future__ import annotations

import hashlib
import json

from agent.sources.replay import replay
from agent_fixtures import DOG, SIREN, AgentProcess, Broker, clip_folder, write_agent_config
from fleet_fixtures import device_creds, sql, wait_for

DEVICE = "test-0001"  # firmware_configs/test.yaml


def test_a_real_agent_replaying_clips_lands_its_alerts_in_postgres_once_each(fleet_stack, noise_model, data_dir,
                                                                            tmp_path):
    user, pwfile = device_creds(fleet_stack, DEVICE, "lab")
    sensors = Broker(tmp_path / "sensors")
    cfg = write_agent_config(tmp_path / "agent", noise_model, sensors.port, fleet_stack.mqtt_ports[2], **{
        "uplink.broker.username": user, "uplink.broker.password_file": str(pwfile),
        "tasks.noise.rule.cooldown_s": 0})
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    try:
        dev = wait_for(lambda: sql(fleet_stack, "SELECT * FROM devices WHERE device=$1 AND online", DEVICE), 60,
                       "the agent's birth message in devices")[0]
        models = json.loads(dev["models"])
        assert models["noise"]["sha256"] == hashlib.sha256(noise_model.read_bytes()).hexdigest()
        assert dev["proto"] == "3.1.1" and dev["boot"] == 1  # NATS 2.9 refused MQTT 5; the agent fell back

        replay(sensors.address, DEVICE, clip_folder(data_dir, tmp_path / "clips", SIREN + DOG), rate=4)
        rows = wait_for(lambda: (r := sql(fleet_stack, "SELECT * FROM alerts WHERE device=$1 ORDER BY seq", DEVICE))
                        and {"siren", "dog_bark"} <= {x["class"] for x in r} and r, 60, "siren and dog_bark alerts")
        assert all(r["alert_id"].startswith(f"{DEVICE}:1:") and r["kind"] == "noise" for r in rows)
        assert all(r["model_sha"] == models["noise"]["sha256"][:16] for r in rows)
        assert len({r["alert_id"] for r in rows}) == len(rows)
        wait_for(lambda: sql(fleet_stack, "SELECT 1 FROM health WHERE device=$1", DEVICE), 30, "a health snapshot")
        wait_for(lambda: sql(fleet_stack, "SELECT 1 FROM level_summaries WHERE device=$1", DEVICE), 30,
                 "a level summary")
        assert agent.alive(), agent.tail()
    finally:
        code = agent.stop()
        sensors.stop()
    assert code == 0, agent.tail()
    # A clean stop publishes "offline" itself (the will is for vanishing).
    wait_for(lambda: sql(fleet_stack, "SELECT 1 FROM devices WHERE device=$1 AND NOT online", DEVICE), 30,
             "the agent's clean stop to mark it offline")
    seqs = [int(r["alert_id"].rsplit(":", 1)[1]) for r in
            sql(fleet_stack, "SELECT alert_id FROM alerts WHERE device=$1", DEVICE)]
    summaries = [int(r["summary_id"].rsplit(":", 1)[1]) for r in
                 sql(fleet_stack, "SELECT summary_id FROM level_summaries WHERE device=$1", DEVICE)]
    # seq is shared by alerts and summaries: together they are 1..N with no hole and no repeat.
    assert sorted(seqs + summaries) == list(range(1, len(seqs) + len(summaries) + 1))
