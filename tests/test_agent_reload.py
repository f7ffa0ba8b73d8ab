"""Live reload: `cmd/reload` (inline YAML or the file re-read) and SIGHUP validate first; a bad config changes nothing.

Answers come on ``cmd/reload/ack``. A refused config leaves the running config (its hash
in the state message and in every alert) and the file on disk as they were. Since issue 18 a
config sent as text is signed by a trusted key (tests/test_hardening_control.py has the attacks).
"""

from __future__ import annotations

import json
import os
import signal

import yaml

from agent.config import config_hash, load_config
from agent.control.reload import restart_keys
from agent.control.signing import sign_bytes
from agent_fixtures import AgentProcess, write_agent_config
from ops_fixtures import InProcessAgent, base_topic, keypair, publish, send_audio, tone, wait_until


def _reload(broker, observer, cmd_id: str, config: str | None = None, key=None) -> dict:
    body = {"id": cmd_id, **({"config": config} if config is not None else {})}
    if key is not None:
        body["sig"] = sign_bytes(config.encode(), key)
    publish(broker.port, f"{base_topic()}/cmd/reload", json.dumps(body).encode())
    return observer.wait_for(lambda c: [a for a in c.payloads("/cmd/reload/ack") if a["id"] == cmd_id], 30,
                             f"the answer to {cmd_id}")[-1]


def _edited(path, **changes) -> str:
    cfg = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        node = cfg
        *head, last = dotted.split(".")
        for k in head:
            node = node[k]
        node[last] = value
    return yaml.safe_dump(cfg)


def test_which_changes_apply_in_place(tmp_path, noise_model):
    path = write_agent_config(tmp_path, noise_model, 1883, 1884)
    old = load_config(path)
    hot = old.model_copy(update={"uplink": old.uplink.model_copy(update={"heartbeat_s": 5}),
                                 "health": old.health.model_copy(update={"log_every_s": 1})})
    assert restart_keys(old, hot) == []
    moved = old.model_copy(update={"uplink": old.uplink.model_copy(update={"topic_prefix": "city/v2"}),
                                   "device": old.device.model_copy(update={"site": "elsewhere"})})
    assert sorted(restart_keys(old, moved)) == ["device.site", "uplink.topic_prefix"]


def test_reload_command_refuses_a_bad_config_and_applies_a_good_one(tmp_path, noise_model, observed_broker):
    broker, observer = observed_broker
    key, public = keypair(tmp_path / "keys")
    path = write_agent_config(tmp_path / "agent", noise_model, broker.port, broker.port,
                              updates={"trusted_keys": [str(public)]})
    agent = InProcessAgent(path)
    try:
        wait_until(lambda: observer.payloads("/state"), 20, "online")
        running = agent.agent.origin.config_hash
        on_disk = path.read_text()

        typo = _reload(broker, observer, "r1", path.read_text().replace("cooldown_s: 5", "cooldwn_s: 5"), key)
        assert not typo["ok"] and typo["stage"] == "validate" and "tasks.noise.rule.cooldwn_s" in typo["reason"]
        assert "line " in typo["reason"]
        unknown_class = _reload(broker, observer, "r2", _edited(path, **{"tasks.noise.rule.classes": {
            "unicorn": {"threshold": 0.5}}}), key)
        assert not unknown_class["ok"] and unknown_class["stage"] == "load" and "unicorn" in unknown_class["reason"]
        missing_cert = _reload(broker, observer, "r3", _edited(path, **{"uplink.broker.tls": {
            "ca_file": str(tmp_path / "nope.pem")}}), key)
        assert missing_cert["stage"] == "validate" and "uplink.broker.tls.ca_file" in missing_cert["reason"]
        assert agent.agent.origin.config_hash == running and path.read_text() == on_disk

        good = _edited(path, **{"level.period_s": 2, "tasks.noise.rule.cooldown_s": 7})
        ack = _reload(broker, observer, "r4", good, key)
        new_hash = config_hash(load_config(path))
        assert ack["ok"] and ack["status"] == "applied" and "restart" not in ack and ack["ch"] == new_hash != running
        assert agent.agent.cfg.tasks.noise.rule.cooldown_s == 7 and path.read_text() == good  # kept on disk
        observer.wait_for(lambda c: [s for s in c.payloads("/state") if s.get("ch") == new_hash], 10, "new state")
        agent.wait_sensors()
        send_audio(broker.port, tone(2.5))
        summary = observer.wait_for(lambda c: c.payloads("/summary"), 20, "a summary under the new config")[-1]
        assert summary["ch"] == new_hash and summary["sec"] == 2.0

        # Without a config: the file is read again; unchanged is said so.
        assert _reload(broker, observer, "r5")["status"] == "unchanged"
        assert agent.error is None and agent.thread.is_alive()
    finally:
        agent.stop()


def test_sighup_rereads_the_file_refuses_bad_and_restarts_for_connection_changes(tmp_path, noise_model,
                                                                                 observed_broker):
    broker, observer = observed_broker
    path = write_agent_config(tmp_path / "agent", noise_model, broker.port, broker.port)
    agent = AgentProcess(path, tmp_path / "agent.log")
    try:
        first = observer.wait_for(lambda c: [s for s in c.payloads("/state") if s.get("online")], 30, "online")[0]
        good = path.read_text()

        path.write_text(good.replace("hop_seconds: 1.0", "hop_seconds: -1"))
        os.kill(agent.proc.pid, signal.SIGHUP)
        ack = observer.wait_for(lambda c: c.payloads("/cmd/reload/ack"), 30, "the SIGHUP reload's answer")[-1]
        assert ack["id"].startswith("sighup-") and ack["stage"] == "validate"
        assert "tasks.noise.hop_seconds" in ack["reason"] and agent.alive()

        path.write_text(good)
        path.write_text(_edited(path, **{"outbox.max_bytes": 50000}))
        os.kill(agent.proc.pid, signal.SIGHUP)
        ack = observer.wait_for(lambda c: [a for a in c.payloads("/cmd/reload/ack") if a["ok"]], 30, "applied")[-1]
        assert ack["restart"] == ["outbox"]
        second = observer.wait_for(lambda c: [s for s in c.payloads("/state")
                                              if s.get("online") and s["boot"] == first["boot"] + 1], 30,
                                   "the agent back with the new config")[-1]
        assert second["ch"] == ack["ch"] != first["ch"] and agent.alive()
    finally:
        assert agent.stop() == 0, agent.tail()
