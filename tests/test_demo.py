"""``roadside demo`` (placeholder until the agent lands): runs with or without data, never silently wrong."""

from __future__ import annotations

import re

import pytest

from agent import demo
from agent.cli import main


def test_demo_on_real_clips_reports_levels_each_second(data_dir, capsys):
    assert main(["demo", "--duration", "6", "--data", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "real UrbanSound8K clips" in out
    assert len(re.findall(r"^\s+\d+\.0s\s+[\d.]+ dB", out, flags=re.M)) == 6
    assert "siren" in out and "L10" in out and "L90" in out


def test_demo_without_data_says_its_scene_is_synthetic(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("ROADSIDE_DATA", raising=False)
    monkeypatch.setattr(demo, "DEFAULT_DATA", tmp_path / "absent")
    assert main(["demo", "--duration", "4"]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out
    # frames of 25 ms every 10 ms with no padding: 1 + (4 s * 16000 - 400) // 160
    assert re.search(r"4\.0s .* 398$", out, flags=re.M)


def test_demo_refuses_a_named_directory_without_clips(tmp_path, capsys):
    assert main(["demo", "--duration", "2", "--data", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_demo_refuses_a_non_positive_duration(capsys):
    assert main(["demo", "--duration", "0"]) == 2
    assert "--duration" in capsys.readouterr().err
