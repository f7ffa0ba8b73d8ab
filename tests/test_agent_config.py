"""Device configs: every shipped profile validates; a bad one is refused whole, naming line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main
from agent.config import AgentConfig, config_hash, load_config
from agent.schema import ConfigError

PROFILES = sorted((Path(__file__).resolve().parents[1] / "firmware_configs").glob("*.yaml"))


def test_there_are_the_three_profiles():
    assert {p.stem for p in PROFILES} >= {"jetson-orin-nano", "noise-monitor-cpu", "test"}


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_shipped_profile_validates(path):
    cfg = load_config(path)
    assert isinstance(cfg, AgentConfig) and len(config_hash(cfg)) == 16


def test_jetson_profile_prefers_tensorrt_and_has_all_three_inputs():
    cfg = load_config(next(p for p in PROFILES if p.stem == "jetson-orin-nano"))
    assert {cfg.tasks.noise.backend.type, cfg.tasks.vehicles.backend.type, cfg.tasks.congestion.backend.type} == {"tensorrt"}


def _bad(tmp_path, old: str, new: str) -> ConfigError:
    text = next(p for p in PROFILES if p.stem == "test").read_text()
    assert old in text
    p = tmp_path / "bad.yaml"
    p.write_text(text.replace(old, new))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    return e.value


def test_typo_in_a_rule_is_refused_with_its_dotted_key(tmp_path):
    err = _bad(tmp_path, "cooldown_s: 5", "cooldwn_s: 5")
    assert any("tasks.noise.rule.cooldwn_s" in p and p.startswith("line ") for p in err.problems)


def test_an_empty_model_path_is_refused_with_its_key_not_a_crash(tmp_path):
    # pydantic's path_type error once broke re-raising a task's errors under its name (a KeyError)
    err = _bad(tmp_path, "    model: agent/models/noise/model.onnx", "    model:")
    assert any("tasks.noise.model" in p and "not a valid path" in p for p in err.problems)


def test_release_above_threshold_is_refused(tmp_path):
    err = _bad(tmp_path, "siren: {threshold: 0.5}", "siren: {threshold: 0.5, release: 0.7}")
    assert any("tasks.noise.rule.classes.siren" in p and "release" in p for p in err.problems)


def test_unknown_source_type_is_refused(tmp_path):
    err = _bad(tmp_path, "- type: mqtt", "- type: mqt")
    assert any(p.split(": ", 1)[1].startswith("sources.0") for p in err.problems)


def test_device_id_that_would_break_topics_is_refused(tmp_path):
    err = _bad(tmp_path, "id: test-0001", "id: pole/7")
    assert any("device.id" in p and "pole/7" in p for p in err.problems)


def test_unknown_time_zone_is_refused(tmp_path):
    err = _bad(tmp_path, "timezone: UTC", "timezone: Mars/Olympus")
    assert any("device.timezone" in p for p in err.problems)


def test_config_check_command(tmp_path, capsys):
    assert main(["config", "check", str(PROFILES[0])]) == 0
    assert "ok" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("device: {id: x}\n")
    assert main(["config", "check", str(bad)]) == 2
    assert "device.site" in capsys.readouterr().err
