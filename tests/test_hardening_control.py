"""Issue 18, the control side: the config loader, reloads, commands, timers and MQTT identity are no way in.

Each test plays an attack from the issue against real components (the YAML loader, an
``Agent`` built from a real config and the shipped noise model, a real mosquitto) and
states what must hold. Figures (alias bomb time and memory) are printed for the report;
nothing here asserts a speed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from agent.cli import main
from agent.config import AgentConfig, load_config
from agent.control.signing import sign_bytes
from agent.runtime import Agent
from agent.schema import MAX_CONFIG_BYTES, ConfigError, load_text
from agent_fixtures import REPO, AgentProcess, write_agent_config
from ops_fixtures import DEVICE, InProcessAgent, base_topic, keypair, model_command, publish, signed_copy, wait_until

TEST_YAML = (REPO / "firmware_configs" / "test.yaml").read_text()
# A device config of 1.5 kB with ten levels of nine aliases each: 9**9 (387 million) strings once expanded.
ALIAS_BOMB = TEST_YAML.replace("sources:", "".join(
    f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}" if i else '"lol"'] * 9) + "]\n" for i in range(10)) + "sources:", 1)


# ------------------------------------------------------------------------ the YAML loader

def test_an_alias_bomb_is_refused_at_its_first_anchor_in_bounded_memory(tmp_path, capsys):
    assert 1000 < len(ALIAS_BOMB) < 1600
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load_text(ALIAS_BOMB, AgentConfig)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert e.value.problems == ["line 10: not valid YAML: anchors and aliases (&, *) are not allowed in a config"]
    assert peak < 5 * 2**20  # refused before anything is expanded
    with capsys.disabled():
        print(f"\nalias bomb ({len(ALIAS_BOMB)} B): refused in {seconds * 1000:.2f} ms, peak {peak / 1024:.0f} KiB "
              "traced")

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(ALIAS_BOMB)
    assert main(["config", "check", str(bomb)]) == 2  # `roadside config check`: a clear refusal, not a hang
    assert "anchors and aliases" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [
    (TEST_YAML.replace("  site: lab\n", "  site: lab\n  id: other-0002\n"),
     "line 6: not valid YAML: duplicate key 'id'"),
    ("device:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(200)), "nested deeper than 32 levels"),
    ("device: " + "[" * 10_000, "nested deeper than 32 levels"),
    ("device: {id: a, id: b}", "duplicate key 'id'"),
    ("a: 2024-02-30\n", "a value cannot be read (ValueError: day is out of range for month)"),
    ("a: !!python/object/apply:os.system [id]\n", "could not determine a constructor"),
    ("a: \x00\n", "unacceptable character #x0000"),
    ("# " + "x" * MAX_CONFIG_BYTES, f"larger than {MAX_CONFIG_BYTES} bytes"),
], ids=["duplicate-device-id", "deep-mapping", "deep-flow", "duplicate-flow", "bad-date", "python-tag", "nul",
        "oversized"])
def test_loader_errors_are_clear_refusals_with_their_line(text, expected):
    with pytest.raises(ConfigError) as e:
        load_text(text, AgentConfig, "cfg.yaml")
    assert any(expected in p for p in e.value.problems), e.value.problems


def test_refused_values_are_shown_shortened_never_whole():
    with pytest.raises(ConfigError) as e:
        load_text(TEST_YAML.replace("site: lab", "site: " + "x" * 100_000), AgentConfig)
    (problem,) = e.value.problems
    assert problem.startswith("line 5: device.site: String should match pattern") and len(problem) < 400


def test_an_oversized_file_is_refused_without_being_read_whole(tmp_path, capsys):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(1 << 30)  # 1 GiB (sparse on disk)
    assert main(["config", "check", str(big)]) == 2
    assert f"larger than {MAX_CONFIG_BYTES} bytes" in capsys.readouterr().err


@pytest.mark.parametrize("dotted, value", [
    ("uplink.heartbeat_s", ".inf"), ("uplink.heartbeat_s", ".nan"), ("uplink.heartbeat_s", "1e12"),
    ("health.log_every_s", ".inf"), ("uplink.ack_timeout_s", ".inf"), ("uplink.backoff.max_s", "1e300"),
    ("tasks.noise.rule.cooldown_s", ".inf"), ("tasks.noise.rule.min_duration_s", "1e9"),
    ("level.calibration_db", ".nan"),
])
def test_non_finite_and_unbounded_durations_are_refused_naming_the_key(dotted, value):
    cfg = yaml.safe_load(TEST_YAML)
    node = cfg
    *head, last = dotted.split(".")
    for k in head:
        node = node[k]
    node[last] = "@@"
    text = yaml.safe_dump(cfg).replace("'@@'", value)
    with pytest.raises(ConfigError) as e:
        load_text(text, AgentConfig)
    assert any(f": {dotted}:" in p for p in e.value.problems), e.value.problems


def _mutations():
    """Texts near a valid config: chunks of it cut, repeated, or replaced with YAML punctuation and junk."""
    junk = st.text(alphabet=st.sampled_from(list("&*!|>-:?[]{},#'\"%@` \n\t.0123456789eEinfaINF~") + ["\x00", "é"]),
                   max_size=40)

    @st.composite
    def mutated(draw):
        text = TEST_YAML
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(text)))
            j = draw(st.integers(i, min(len(text), i + 60)))
            op = draw(st.sampled_from(["cut", "insert", "repeat"]))
            piece = text[i:j] * draw(st.integers(2, 50)) if op == "repeat" else draw(junk) if op == "insert" else ""
            text = text[:i] + piece + text[j if op != "insert" else i:]
        return text
    return st.one_of(mutated(), st.text(max_size=300),
                     st.text(alphabet=st.sampled_from(list("[]{}-:&*!, \na")), max_size=2000))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_mutations())
def test_any_text_is_a_clear_refusal_or_a_valid_config(text):
    try:
        cfg = load_text(text, AgentConfig, "fuzz.yaml")
    except ConfigError as e:
        assert e.problems and all(isinstance(p, str) and 0 < len(p) < 500 for p in e.problems)
        return
    assert isinstance(cfg, AgentConfig) and cfg.device.id


# ----------------------------------------------------------------------- reload and commands

@pytest.fixture
def agent(tmp_path, noise_model):
    """An agent built from a real config with a trusted key (not running: commands are handled directly)."""
    key, public = keypair(tmp_path / "keys")
    path = write_agent_config(tmp_path / "agent", noise_model, 1, 1, updates={"trusted_keys": [str(public)]})
    a = Agent(load_config(path), path)
    a.test_key = key
    yield a
    a.outbox.close()


def _reload(a: Agent, cmd_id: str, text: str | None = None, key: Path | None = None, sig: str | None = None) -> dict:
    body = {"id": cmd_id, **({"config": text} if text is not None else {})}
    if key is not None:
        body["sig"] = sign_bytes(text.encode(), key)
    elif sig is not None:
        body["sig"] = sig
    return a.commands.handle("reload", json.dumps(body).encode())


def _edit(a: Agent, **changes) -> str:
    cfg = yaml.safe_load(a.config_path.read_text())
    for dotted, value in changes.items():
        node = cfg
        *head, last = dotted.split(".")
        for k in head:
            node = node.setdefault(k, {})
        node[last] = value
    return yaml.safe_dump(cfg)


def test_a_remote_reload_must_be_signed_by_a_key_the_agent_already_trusts(agent, tmp_path, noise_model):
    rogue, rogue_pub = keypair(tmp_path / "rogue", "rogue")
    on_disk, running = agent.config_path.read_text(), agent.origin.config_hash
    # The attack: a PEM hidden in another config value, and trusted_keys pointed at the config file holding it.
    pem = rogue_pub.read_text().replace("\n", "\\n")
    attack = _edit(agent, **{"updates.trusted_keys": [str(agent.config_path)]}).replace(
        "uplink:\n", f'uplink:\n  # "{pem}"\n')
    unsigned = _reload(agent, "a1", attack)
    assert unsigned["status"] == "refused" and unsigned["stage"] == "verify" and "unsigned" in unsigned["reason"]
    foreign = _reload(agent, "a2", attack, rogue)
    assert foreign["stage"] == "verify" and "does not verify against any trusted key" in foreign["reason"]
    forged = _reload(agent, "a3", attack, sig="AAAA")
    assert forged["stage"] == "verify"
    # Even the operator's own key cannot change the trusted keys by reload (that takes the local file and a restart).
    signed = _reload(agent, "a4", attack, agent.test_key)
    assert signed["stage"] == "config" and "updates.trusted_keys cannot change by reload" in signed["reason"]
    assert agent.config_path.read_text() == on_disk and agent.origin.config_hash == running
    # A reload that only re-reads the local file cannot change them either.
    agent.config_path.write_text(_edit(agent, **{"updates.trusted_keys": [str(rogue_pub)]}))
    assert "trusted_keys cannot change" in _reload(agent, "a5")["reason"]

    # The end of the attack chain: a model signed with the attacker's key is still refused.
    def release(folder: Path) -> None:
        (folder / "manifest.json").write_text(json.dumps({**json.loads((folder / "manifest.json").read_text()),
                                                          "release": 99}))

    theirs = signed_copy(noise_model.parent, tmp_path / "theirs", rogue, edit=release)
    ack = agent.commands.handle("model", model_command("a6", theirs))
    assert ack["stage"] == "verify" and "does not verify against any trusted key" in ack["reason"]


def test_a_remote_config_cannot_aim_written_or_read_files_outside_the_state_folder(agent, tmp_path):
    cases = {
        "h1": ({"health.file": str(agent.config_path)}, "health.file: must stay under device.state_dir"),
        "h2": ({"health.file": str(agent.state_dir / "outbox.sqlite")}, "health.file: names a file the agent"),
        "h3": ({"health.file": "../../etc/cron.d/x"}, "health.file: must stay under device.state_dir"),
        "h4": ({"outbox.path": str(tmp_path / "elsewhere.sqlite")}, "outbox.path: must stay under"),
        "h5": ({"uplink.broker.password_file": "/etc/shadow"}, "uplink.broker.password_file: must stay under"),
    }
    for cmd_id, (change, expected) in cases.items():
        ack = _reload(agent, cmd_id, _edit(agent, **change), agent.test_key)
        assert ack["status"] == "refused" and expected in ack["reason"], (cmd_id, ack)
    (agent.state_dir / "link").symlink_to("/etc")  # a link inside the state folder does not lead out of it
    linked = _edit(agent, **{"health.file": str(agent.state_dir / "link" / "passwd")})
    ack = _reload(agent, "h6", linked, agent.test_key)
    assert "must stay under device.state_dir" in ack["reason"]
    ok = _reload(agent, "h7", _edit(agent, **{"health.file": str(agent.state_dir / "h.json")}), agent.test_key)
    assert ok["status"] == "applied" and agent.health_file == agent.state_dir / "h.json"


def test_a_reload_with_an_alias_bomb_or_deep_nesting_is_answered_refused(agent):
    for cmd_id, text in [("b1", ALIAS_BOMB), ("b2", "device: " + "[" * 5000), ("b3", "a: 1\na: 2\n")]:
        ack = _reload(agent, cmd_id, text, agent.test_key)
        assert ack["status"] == "refused" and ack["stage"] == "validate" and "not valid YAML" in ack["reason"]


_json_ish = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                         lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.sampled_from(
                             ["id", "task", "bundle", "url", "sha256", "config", "sig", "rollback"]), kids, max_size=5))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["model", "reload", "nope"]),
       payload=st.one_of(st.binary(max_size=200), _json_ish.map(lambda v: json.dumps(v).encode()),
                         st.integers(1, 50_000).map(lambda n: b"[" * n), st.just(b'{"id":' + b"9" * 5000 + b"}")))
def test_any_command_payload_is_answered_and_never_raises(agent, name, payload):
    ack = agent.commands.handle(name, payload)
    assert ack["v"] == 1 and ack["cmd"] == name and isinstance(ack["ok"], bool) and ack["status"]
    assert len(ack.get("reason", "")) <= 400


def test_a_bogus_command_cannot_pin_the_answer_of_a_later_real_one_with_the_same_id(agent):
    bogus = agent.commands.handle("reload", json.dumps({"id": "r-9", "config": "x"}).encode())
    assert bogus["status"] == "refused"
    real = agent.commands.handle("reload", json.dumps({"id": "r-9"}).encode())
    assert real["ok"] and real["status"] == "unchanged"
    again = agent.commands.handle("reload", json.dumps({"id": "r-9"}).encode())  # a QoS 1 duplicate
    assert again["status"] == "unchanged" and again["s"] == real["s"]  # the remembered answer


def test_refusal_reasons_name_no_absolute_state_path(agent, tmp_path, noise_model):
    ack = _reload(agent, "p1", _edit(agent, **{"outbox.path": str(agent.state_dir / "models" / "x.sqlite")}),
                  agent.test_key)
    assert ack["status"] == "refused" and str(agent.state_dir) not in json.dumps(ack)

    def garbage(folder: Path) -> None:  # signed, but not ONNX: its load error names the installed file
        (folder / "model.onnx").write_bytes(b"\x08\x07" + bytes(range(256)) * 40)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["files"]["model.onnx"] = {"sha256": hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()}
        (folder / "manifest.json").write_text(json.dumps({**manifest, "release": 1}))

    folder = signed_copy(noise_model.parent, tmp_path / "garbage", agent.test_key, edit=garbage)
    ack = agent.commands.handle("model", model_command("p2", folder))
    assert ack["status"] == "rolled_back" and "{state_dir}/models/noise/" in ack["reason"]
    assert str(agent.state_dir) not in json.dumps(ack)


def test_a_reload_reschedules_the_heartbeat(tmp_path, noise_model):
    key, public = keypair(tmp_path / "keys")
    path = write_agent_config(tmp_path / "agent", noise_model, 1, 1, updates={"trusted_keys": [str(public)]})
    agent = InProcessAgent(path)
    a = agent.agent
    try:
        wait_until(lambda: a.health_file.is_file(), 10, "the first health file")
        assert _reload(a, "t1", _edit(a, **{"uplink.heartbeat_s": 3600}), key)["status"] == "applied"
        wait_until(lambda: json.loads(a.health_file.read_text())["every_s"] == 3600, 10, "a beat at the new period")
        assert _reload(a, "t2", _edit(a, **{"uplink.heartbeat_s": 1}), key)["status"] == "applied"
        # Not an hour later: at once, then every second again.
        first = wait_until(lambda: (d := json.loads(a.health_file.read_text()))["every_s"] == 1 and d, 10,
                           "a beat after the revert")
        wait_until(lambda: json.loads(a.health_file.read_text())["mono"] > first["mono"], 10, "the next beat")
    finally:
        agent.stop()
        a.outbox.close()


def test_health_reports_a_stopped_agent_after_an_in_process_restart(tmp_path, noise_model, observed_broker):
    broker, observer = observed_broker
    path = write_agent_config(tmp_path / "agent", noise_model, broker.port, broker.port)
    proc = AgentProcess(path, tmp_path / "agent.log")
    health = str(tmp_path / "agent" / "state" / "health.json")
    check = lambda: subprocess.run([sys.executable, "-m", "agent.cli", "health", "--file", health],  # noqa: E731
                                   cwd=REPO, capture_output=True, text=True)
    try:
        first = observer.wait_for(lambda c: [s for s in c.payloads("/state") if s.get("online")], 30, "online")[0]
        path.write_text(path.read_text().replace("max_bytes: 100000", "max_bytes: 50000"))
        os.kill(proc.proc.pid, signal.SIGHUP)  # an outbox change: the agent restarts its parts in-process
        observer.wait_for(lambda c: [s for s in c.payloads("/state") if s.get("boot") == first["boot"] + 1], 30,
                          "the restarted agent")
        wait_until(lambda: check().returncode == 0, 10, "healthy after the restart")
        os.kill(proc.proc.pid, signal.SIGSTOP)
        try:
            stale = wait_until(lambda: (r := check()).returncode == 1 and r, 30, "the stopped agent reported")
        finally:
            os.kill(proc.proc.pid, signal.SIGCONT)
        assert "stale" in stale.stderr
        wait_until(lambda: check().returncode == 0, 15, "healthy again once it runs")
    finally:
        assert proc.stop() == 0, proc.tail()


def test_an_infinite_period_in_a_health_file_is_not_healthy(tmp_path):
    from agent.health import write_health_file

    f = tmp_path / "health.json"
    write_health_file(f, {"v": 1, "ts": int(time.time() * 1000), "up_s": 1}, float("inf"), [])
    assert main(["health", "--file", str(f)]) == 1


# ----------------------------------------------------------------------------- MQTT identity

def test_reconnecting_with_the_agents_old_fixed_client_ids_does_not_silence_it(tmp_path, noise_model,
                                                                               observed_broker):
    broker, observer = observed_broker
    agent = InProcessAgent(write_agent_config(tmp_path / "agent", noise_model, broker.port, broker.port))
    a = agent.agent
    try:
        agent.wait_sensors()
        wait_until(lambda: a.uplink.conn.connected.is_set(), 10, "the uplink")
        ids = {a.uplink.conn.client_id_in_use, a.sources[0].conn.client_id_in_use}
        assert all(i and i.startswith(f"roadside-{DEVICE}-") and len(i.rsplit("-", 1)[1]) == 8 for i in ids)
        beats = len(observer.payloads("/health"))
        for _ in range(10):  # the attack from the issue: the agent's (old, fixed) ids, twice a second for 5 s
            for old in (f"roadside-{DEVICE}-up", f"roadside-{DEVICE}-sensors"):
                c = paho.Client(CallbackAPIVersion.VERSION2, client_id=old)
                c.connect("127.0.0.1", broker.port)
                c.loop_start()
                time.sleep(0.05)
                c.loop_stop()
                c.disconnect()
            time.sleep(0.35)
        # The guessed ids took nothing over (with the fixed ids of before, mosquitto dropped the agent each time).
        assert a.uplink.conn.connects == 1 and a.sources[0].conn.connects == 1
        assert len(observer.payloads("/health")) > beats
        assert not [s for s in observer.payloads("/state") if not s.get("online")]  # no faked "offline" will
    finally:
        agent.stop()


def test_a_retained_command_is_ignored_at_every_start(tmp_path, noise_model, observed_broker):
    broker, observer = observed_broker
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="ops")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    stale = {"id": "stale-1", "task": "noise", "bundle": "AAAA"}  # e.g. an old model update, left retained
    client.publish(f"{base_topic()}/cmd/model", json.dumps(stale).encode(), qos=1, retain=True).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()
    agent = InProcessAgent(write_agent_config(tmp_path / "agent", noise_model, broker.port, broker.port))
    try:
        wait_until(lambda: agent.agent.uplink.conn.connected.is_set(), 10, "the uplink")
        publish(broker.port, f"{base_topic()}/cmd/model", json.dumps({**stale, "id": "live-1"}).encode())
        observer.wait_for(lambda c: [x for x in c.payloads("/cmd/model/ack") if x["id"] == "live-1"], 20, "live-1")
        # Commands run in order and the retained one was delivered first, at subscription: it was never run.
        assert [x["id"] for x in observer.payloads("/cmd/model/ack")] == ["live-1"]
    finally:
        agent.stop()
