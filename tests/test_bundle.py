"""``roadside flash`` device bundles: a fresh bundle verifies; any altered, added or swapped file is refused by name."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.cli import main
from agent.config import load_config
from agent.control.device_bundle import BundleError, flash, verify_bundle
from agent.control.signing import generate_keypair, sign_manifest
from agent.schema import ConfigError
from agent_fixtures import REPO, Broker, Collector, write_agent_config

TEST_CONFIG = REPO / "firmware_configs" / "test.yaml"


@pytest.fixture
def keys(tmp_path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "keys" / "operator.key")


@pytest.fixture
def bundle(tmp_path, keys) -> Path:
    flash(TEST_CONFIG, "pole-0042", tmp_path / "bundle", keys[0])
    return tmp_path / "bundle"


def _secret_config(tmp_path: Path) -> Path:
    """test.yaml with the secrets a production device has: broker password, TLS files, update keys."""
    raw = yaml.safe_load(TEST_CONFIG.read_text())
    raw["uplink"]["broker"].update(username="test-0001", password_file="/etc/roadside/mqtt-password",
                                   tls={"ca_file": "/etc/roadside/city-ca.pem",
                                        "cert_file": "/etc/roadside/test-0001.crt",
                                        "key_file": "/etc/roadside/test-0001.key"})
    raw["updates"] = {"trusted_keys": ["/etc/roadside/ops-2026.pub"]}
    path = tmp_path / "prod.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_flashed_bundle_verifies_and_its_config_names_the_device_and_the_bundled_model(bundle, keys):
    config = verify_bundle(bundle, [keys[1]])
    cfg = load_config(config)
    assert cfg.device.id == "pole-0042"
    assert (bundle / "models" / "noise" / "model.onnx").read_bytes() == \
        (REPO / "agent" / "models" / "noise" / "model.onnx").read_bytes()
    assert str(cfg.tasks.noise.model) == "models/noise/model.onnx"
    index = json.loads((bundle / "manifest.json").read_text())
    assert index["device"] == "pole-0042" and set(index["files"]) >= {"config.yaml", "roadside.service"}
    unit = (bundle / "roadside.service").read_text()
    assert "ExecStart=/opt/roadside/bin/roadside agent --bundle /etc/roadside/bundle" in unit and "User=roadside" in unit


@pytest.mark.parametrize("name", ["config.yaml", "models/noise/model.onnx", "models/noise/manifest.json",
                                  "models/noise/report.json", "manifest.json", "operator.pub", "roadside.service",
                                  "README.md"])
def test_altering_any_signed_file_is_refused_and_the_file_is_named(bundle, keys, name):
    path = bundle / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError) as e:
        verify_bundle(bundle, [keys[1]])
    assert str(path) in str(e.value)


@pytest.mark.parametrize("name", ["models/noise/extra.onnx", "extra.yaml"])
def test_an_added_file_is_refused_and_named(bundle, keys, name):
    (bundle / name).write_text("not part of the bundle")
    with pytest.raises(BundleError, match=Path(name).name):
        verify_bundle(bundle, [keys[1]])


def test_a_model_signed_by_the_operator_but_not_flashed_with_the_bundle_is_refused(bundle, keys):
    # e.g. an older signed version of the artefact put in its place: valid signature, wrong model
    manifest = bundle / "models" / "noise" / "manifest.json"
    m = json.loads(manifest.read_text())
    m["version"] = "older"
    manifest.write_text(json.dumps(m))
    sign_manifest(manifest, keys[0])
    with pytest.raises(BundleError, match="not the model this bundle was flashed with"):
        verify_bundle(bundle, [keys[1]])


def test_a_bundle_signed_with_another_key_is_refused(bundle, tmp_path):
    _, other = generate_keypair(tmp_path / "other.key")
    with pytest.raises(BundleError, match="manifest.json"):
        verify_bundle(bundle, [other])


def test_secrets_become_placeholders_that_must_be_replaced_before_the_agent_starts(tmp_path, keys):
    flash(_secret_config(tmp_path), "pole-0007", tmp_path / "b", keys[0])
    b = tmp_path / "b"
    cfg = yaml.safe_load((b / "config.yaml").read_text())
    assert cfg["uplink"]["broker"]["username"] == "pole-0007"  # the device's identity at the city broker
    assert cfg["uplink"]["broker"]["tls"]["cert_file"] == "certs/pole-0007.crt"
    assert cfg["updates"]["trusted_keys"] == ["operator.pub"]
    with pytest.raises(BundleError, match=r"certs/mqtt-password \(uplink.broker.password_file\): still the placeholder"):
        verify_bundle(b, [keys[1]])
    for name in ("mqtt-password", "city-ca.pem", "pole-0007.crt", "pole-0007.key"):
        (b / "certs" / name).write_text(f"this device's {name}\n")  # secrets are per device: not signed
    assert verify_bundle(b, [keys[1]]) == b / "config.yaml"


def test_flash_refuses_a_bad_device_id_naming_the_key_and_writes_nothing(tmp_path, keys):
    with pytest.raises(ConfigError, match=r"device\.id"):
        flash(TEST_CONFIG, "pole 42!", tmp_path / "b", keys[0])
    assert not (tmp_path / "b").exists()


def test_flash_refuses_a_model_that_does_not_match_its_manifest(tmp_path, keys):
    art = tmp_path / "art"
    art.mkdir()
    src = REPO / "agent" / "models" / "noise"
    for f in ("manifest.json", "model.onnx", "report.json", "confusion.png", "accuracy_latency.png"):
        (art / f).write_bytes((src / f).read_bytes())
    (art / "report.json").write_text("{}")
    raw = yaml.safe_load(TEST_CONFIG.read_text())
    raw["tasks"]["noise"]["model"] = str(art / "model.onnx")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(BundleError, match=r"tasks\.noise\.model: .*report\.json"):
        flash(tmp_path / "c.yaml", "pole-1", tmp_path / "b", keys[0])


def test_cli_flash_then_agent_refuses_an_altered_bundle_without_starting(tmp_path, keys, capsys):
    out = tmp_path / "b"
    assert main(["flash", "--config", str(TEST_CONFIG), "--device-id", "pole-9", "--out", str(out),
                 "--key", str(keys[0])]) == 0
    assert main(["agent", "--bundle", str(out), "--trusted-key", str(keys[1]), "--verify-only"]) == 0
    cfg = out / "config.yaml"
    cfg.write_text(cfg.read_text().replace("threshold: 0.5", "threshold: 0.9"))
    capsys.readouterr()
    assert main(["agent", "--bundle", str(out), "--trusted-key", str(keys[1])]) == 3
    assert f"refused bundle: {cfg}" in capsys.readouterr().err


def test_the_agent_runs_from_a_verified_bundle(tmp_path, keys, noise_model):
    sensors, city = Broker(tmp_path / "sensors"), Broker(tmp_path / "city")
    collector = Collector(city.port)
    config = write_agent_config(tmp_path / "src", noise_model, sensors.port, city.port)
    flash(config, "pole-0100", tmp_path / "b", keys[0])
    log = open(tmp_path / "agent.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "agent", "--bundle", str(tmp_path / "b"),
                             "--trusted-key", str(keys[1])], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        state = collector.wait_for(lambda c: [p for p in c.payloads("/pole-0100/state") if p.get("online")], 60,
                                   "the bundled agent online")
        assert state[-1]["models"]["noise"]["sha256"] == json.loads(
            (tmp_path / "b" / "manifest.json").read_text())["models"]["noise"]["sha256"]

        # a reload checks the bundle again: an edited config is refused by name and the agent keeps running
        cfg = tmp_path / "b" / "config.yaml"
        cfg.write_text(cfg.read_text().replace("threshold: 0.5", "threshold: 0.9"))
        proc.send_signal(signal.SIGHUP)
        ack = collector.wait_for(lambda c: c.payloads("/pole-0100/cmd/reload/ack"), 30, "the SIGHUP reload's answer")
        assert not ack[-1]["ok"] and ack[-1]["stage"] == "verify" and str(cfg) in ack[-1]["reason"]
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
        collector.close()
        sensors.stop()
        city.stop()
