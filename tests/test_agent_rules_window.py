"""Ring-buffer windows and the alert rule (smoothing, hysteresis, minimum duration, cooldown)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.config import ClassRule, RuleConfig
from agent.rules import Rule, RuleError
from agent.window import SlidingWindow


@pytest.mark.parametrize("chunk", [1, 7, 160, 1000, 5000])
def test_windows_are_the_signal_slices_whatever_the_chunking(chunk):
    x = np.arange(10_000, dtype=np.float32)
    win = SlidingWindow(4000, 1000)
    got = []
    for i in range(0, x.size, chunk):
        got += [(i + end, w) for end, w in win.push(x[i:i + chunk])]
    assert [end for end, _ in got] == list(range(4000, 10_001, 1000))
    for end, w in got:
        np.testing.assert_array_equal(w, x[end - 4000:end])


def test_reset_needs_a_full_window_again():
    win = SlidingWindow(4, 2)
    assert len(win.push(np.ones(4))) == 1
    win.reset()
    assert win.push(np.ones(3)) == []
    assert len(win.push(np.ones(1))) == 1


LABELS = ("quiet", "siren", "horn")


def _probs(siren: float, horn: float = 0.0) -> np.ndarray:
    return np.array([1 - siren - horn, siren, horn])


def _run(rule: Rule, sirens: list[float], step_ms: int = 1000) -> list:
    events = []
    for i, p in enumerate(sirens):
        events += rule.update(_probs(p), i * step_ms, i * step_ms + 4000)
    return events


def test_one_event_per_episode_with_hysteresis():
    rule = Rule(RuleConfig(cooldown_s=0, classes={"siren": ClassRule(threshold=0.6, release=0.3)}), LABELS)
    events = _run(rule, [0.1, 0.7, 0.5, 0.4, 0.8, 0.2, 0.7])
    # 0.5 and 0.4 stay above release: one episode until 0.2; a second one starts at 0.7
    assert [(e.cls, e.end_ms) for e in events] == [("siren", 5000), ("siren", 10000)]
    assert events[0].confidence == 0.8 or events[0].confidence == 0.7


def test_smoothing_ignores_a_single_spike():
    rule = Rule(RuleConfig(smooth_windows=3, cooldown_s=0, classes={"siren": ClassRule(threshold=0.6)}), LABELS)
    assert _run(rule, [0.0, 0.9, 0.0, 0.0]) == []
    assert len(_run(rule, [0.9, 0.9, 0.9])) == 1


def test_minimum_duration():
    rule = Rule(RuleConfig(min_duration_s=2, cooldown_s=0, classes={"siren": ClassRule(threshold=0.5)}), LABELS)
    assert _run(rule, [0.9, 0.9, 0.1]) == []  # held 1 s only
    rule.reset()
    events = _run(rule, [0.9, 0.9, 0.9])
    assert [e.end_ms for e in events] == [6000] and events[0].start_ms == 0


def test_cooldown_suppresses_a_quick_repeat():
    rule = Rule(RuleConfig(cooldown_s=10, classes={"siren": ClassRule(threshold=0.5, release=0.5)}), LABELS)
    assert len(_run(rule, [0.9, 0.1, 0.9, 0.1] + [0.1] * 10 + [0.9])) == 2  # the 3rd episode is 14 s later


def test_only_configured_classes_alert_and_unknown_ones_are_refused():
    rule = Rule(RuleConfig(cooldown_s=0, classes={"siren": ClassRule(threshold=0.5)}), LABELS)
    assert rule.update(_probs(0.0, horn=0.99), 0, 4000) == []
    with pytest.raises(RuleError, match="gunshot"):
        Rule(RuleConfig(classes={"gunshot": ClassRule(threshold=0.5)}), LABELS)
