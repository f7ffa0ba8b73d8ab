"""Per-stage lineage: a record beside each stage's output says what made it, and is the cache key of re-runs.

A re-run reuses an output only when the stage, its settings and the sha256 of each input are the
same and the output is unchanged since its record was written; a reused trained stage restores the
RNG state (and its companions' state) it left behind, so what comes after it computes the same numbers.
"""

from __future__ import annotations

import json

import pytest
import torch

from compression.chain import lineage
from compression.manifest import sha256_json


def _make(path, text="weights"):
    path.write_text(text)
    return path


def test_a_stage_output_is_reused_only_for_the_same_stage_settings_and_inputs(tmp_path):
    out = _make(tmp_path / "student.pt")
    rec = lineage.write(out, "distil", {"epochs": 3}, {"teacher": "aa"}, {"loss": 0.5}, 1.25)
    assert json.loads(lineage.record_path(out).read_text()) == rec
    assert rec["stage"] == "distil" and rec["output"]["file"] == "student.pt" and rec["metrics"] == {"loss": 0.5}
    assert lineage.reusable(out, "distil", {"epochs": 3}, {"teacher": "aa"}) == rec
    assert lineage.reusable(out, "distil", {"epochs": 4}, {"teacher": "aa"}) is None  # other settings
    assert lineage.reusable(out, "distil", {"epochs": 3}, {"teacher": "bb"}) is None  # another teacher
    assert lineage.reusable(out, "prune", {"epochs": 3}, {"teacher": "aa"}) is None  # another stage


def test_a_changed_missing_or_unrecorded_output_is_made_again(tmp_path):
    out = _make(tmp_path / "int8_cpu.onnx")
    assert lineage.reusable(out, "quantise", {}, {}) is None  # no record yet
    lineage.write(out, "quantise", {}, {})
    _make(out, "edited by hand")
    assert lineage.reusable(out, "quantise", {}, {}) is None
    lineage.write(out, "quantise", {}, {})
    out.unlink()
    assert lineage.reusable(out, "quantise", {}, {}) is None
    lineage.record_path(out).write_text("{not json")
    _make(out)
    assert lineage.reusable(out, "quantise", {}, {}) is None  # a broken record is not trusted


class Counter:
    """A companion with state (like the cache of the teacher's outputs)."""

    def __init__(self):
        self.n = 0

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def _fit(model, counter):
    def fit():
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))  # training draws from the RNG
        counter.n += 7
        return [{"epoch": 1, "loss": model.weight.detach().sum().item()}]
    return fit


def test_a_reused_trained_stage_leaves_the_model_the_companions_and_the_rng_as_training_did(tmp_path):
    path = tmp_path / "student.pt"
    torch.manual_seed(0)
    trained, counter = torch.nn.Linear(3, 2), Counter()
    history = lineage.train_or_reuse(path, "distil", {"e": 1}, {"t": "x"}, trained, _fit(trained, counter),
                                     companions=(counter,))
    after_training = torch.rand(4)  # what the next stage would draw

    torch.manual_seed(123)  # a re-run: another RNG state, a fresh model, nothing trained
    reused, counter2 = torch.nn.Linear(3, 2), Counter()
    again = lineage.train_or_reuse(path, "distil", {"e": 1}, {"t": "x"}, reused,
                                   lambda: pytest.fail("trained again although the record matches"),
                                   companions=(counter2,))
    assert again == history and counter2.n == 7
    assert torch.equal(reused.weight, trained.weight) and torch.equal(torch.rand(4), after_training)

    changed = torch.nn.Linear(3, 2)
    lineage.train_or_reuse(path, "distil", {"e": 2}, {"t": "x"}, changed, _fit(changed, Counter()))
    assert json.loads(lineage.record_path(path).read_text())["config_sha256"] == sha256_json({"e": 2})  # re-recorded
    assert not torch.equal(changed.weight, trained.weight)  # trained anew, not loaded
