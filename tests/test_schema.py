"""Config loading: refused whole, with the file line, dotted key, value and message of each problem."""

from __future__ import annotations

import pytest
from pydantic import Field

from agent.schema import ConfigError, StrictModel, load_yaml


class Inner(StrictModel):
    rate: int = Field(16000, gt=0)


class Outer(StrictModel):
    name: str
    inner: Inner = Inner()
    items: list[Inner] = []


def test_valid_file_loads(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("name: pole-7\ninner:\n  rate: 32000\n")
    assert load_yaml(p, Outer).inner.rate == 32000


def test_wrong_value_names_line_key_and_value(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: pole-7\ninner:\n  rate: -5\n")
    with pytest.raises(ConfigError) as e:
        load_yaml(p, Outer)
    (problem,) = e.value.problems
    assert problem.startswith("line 3: inner.rate:")
    assert "-5" in problem


def test_unknown_key_is_an_error_not_a_warning(tmp_path):
    p = tmp_path / "typo.yaml"
    p.write_text("name: x\ninner:\n  rat: 8000\n")
    with pytest.raises(ConfigError) as e:
        load_yaml(p, Outer)
    assert any(pr.startswith("line 3: inner.rat:") for pr in e.value.problems)


def test_list_items_are_located_by_index(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("name: x\nitems:\n  - rate: 1\n  - rate: zero\n")
    with pytest.raises(ConfigError) as e:
        load_yaml(p, Outer)
    assert e.value.problems[0].startswith("line 4: items.1.rate:")


def test_every_problem_is_reported_at_once(tmp_path):
    p = tmp_path / "two.yaml"
    p.write_text("inner:\n  rate: 0\n")
    with pytest.raises(ConfigError) as e:
        load_yaml(p, Outer)
    keys = sorted(pr.split(": ")[1] if pr.startswith("line") else pr.split(":")[0] for pr in e.value.problems)
    assert keys == ["inner.rate", "name"]


def test_invalid_yaml_and_missing_file_are_config_errors(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(p, Outer)
    with pytest.raises(ConfigError, match="cannot read"):
        load_yaml(tmp_path / "absent.yaml", Outer)
