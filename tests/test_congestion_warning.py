"""Congestion warnings: the operating point shared by the chain, roadside eval and the pole, its curves,
and how a tuning run picks it. Hand-made series, where every number can be worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.features.detector import CONGESTED, FREE
from agent.features.warning import WarningPoint, warning_score, warning_states
from compression.tasks.congestion.metrics import choose_warning_point, false_alarm_quantile, warning_curve
from compression.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


def _one_detector(row: list[int]):
    states = np.array(row, np.int64)[:, None]
    t = np.arange(len(row) - 3)
    return states, t, np.zeros_like(t), states[t + 3, 0]


def test_the_score_is_the_forecast_probability_raised_to_one_while_congested_now():
    p = np.array([0.1, 0.1, 0.3, 0.1])
    speed = np.array([60.0, 20.0, 50.0, np.nan])  # free, congested now, slowed, no reading
    assert warning_score(p, speed, WarningPoint(0.2, congested_now=False), 35.0).tolist() == p.tolist()
    assert warning_score(p, speed, WarningPoint(0.2, congested_now=True), 35.0).tolist() == [0.1, 1.0, 0.3, 0.1]


@pytest.mark.parametrize("bad", [{"threshold": 0.0}, {"threshold": 1.5}, {"threshold": 0.3, "threshhold": 0.2},
                                 {"threshold": 0.3, "release": 0.4}])
def test_an_impossible_or_misspelt_operating_point_is_refused(bad):
    with pytest.raises(ValueError, match="threshold|unknown"):
        WarningPoint.from_dict(bad)


def test_a_warning_ends_only_below_its_release_as_the_poles_rule_decides():
    """The chain scores the warnings the pole sends: the congestion rule's state machine, per detector in
    time order. A forecast hovering around the threshold is one warning with a release below it, several
    without; a gap in a detector's steps restarts the rule, as a gap in the stream does."""
    score = np.array([0.1, 0.3, 0.2, 0.3, 0.2, 0.1, 0.3, 0.3])
    det = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    t = np.array([0, 1, 2, 3, 4, 5, 0, 2])  # detector 1 skips a step
    assert warning_states(score, det, t, WarningPoint(0.25)).tolist() == [0, 1, 0, 1, 0, 0, 1, 1]
    assert warning_states(score, det, t, WarningPoint(0.25, release=0.15)).tolist() == [0, 1, 1, 1, 1, 0, 1, 1]
    shuffled = np.array([3, 0, 7, 5, 1, 6, 2, 4])  # the windows' order in the arrays does not matter
    assert warning_states(score[shuffled], det[shuffled], t[shuffled], WarningPoint(0.25, release=0.15)).tolist() \
        == [[0, 1, 1, 1, 1, 0, 1, 1][i] for i in shuffled]
    assert WarningPoint(0.25).to_dict() == {"threshold": 0.25, "congested_now": False}  # older manifests' shape
    assert WarningPoint.from_dict({"threshold": 0.25, "release": 0.15}).release_at == 0.15


def test_false_alarms_are_bounded_at_a_detector_bootstrap_quantile():
    """A tuning split has a few dozen detectors: one noisy detector among them can hide in the mean. Two
    detectors here, one with two false alarms, one with none: resampled, a quarter of the draws hold the
    noisy one twice, so the 0.9 quantile is twice the pooled rate."""
    rows, horizon = 100, 3
    states = np.full((rows, 2), FREE, np.int64)
    t = np.tile(np.arange(rows - horizon), 2)
    det = np.repeat([0, 1], rows - horizon)
    warn = np.zeros(len(t), bool)
    warn[[10, 50]] = True  # detector 0 warns twice, nothing comes
    y = states[t + horizon, det]
    pooled = warning_curve({0.5: warn}, y, det, t, states, horizon, 300)[0]["false_alarms_per_detector_day"]
    upper = false_alarm_quantile(warn, y, det, t, states, horizon, 300, q=0.9, resamples=2000, seed=0)
    assert pooled > 0 and upper == pytest.approx(2 * pooled)
    assert false_alarm_quantile(warn, y, det, t, states, horizon, 300, q=0.1, resamples=2000, seed=0) == 0.0


def test_a_bound_for_a_new_group_of_streets_is_judged_on_resamples_of_that_many_detectors():
    """Ten detectors, one of them noisy (five false alarms, the others none). Resampling all ten says how
    well their mean is known; a bound that must hold for one new street has to allow for that street
    being the noisy one, which one draw in ten is."""
    rows, horizon, n = 100, 3, 10
    states = np.full((rows, n), FREE, np.int64)
    t = np.tile(np.arange(rows - horizon), n)
    det = np.repeat(np.arange(n), rows - horizon)
    warn = np.zeros(len(t), bool)
    warn[(n - 1) * (rows - horizon) + np.array([5, 20, 40, 60, 80])] = True  # the last detector: five alarms
    y = states[t + horizon, det]
    pooled = warning_curve({0.5: warn}, y, det, t, states, horizon, 300)[0]["false_alarms_per_detector_day"]

    def upper(q, group):
        return false_alarm_quantile(warn, y, det, t, states, horizon, 300, q=q, resamples=4000, seed=0, group=group)

    assert upper(0.95, None) == upper(0.95, n)  # the default is the usual bootstrap, draw for draw
    assert upper(0.95, 1) == pytest.approx(n * pooled)  # one street: the noisy one's own rate
    assert upper(0.8, 1) == 0.0  # ... which 90 % of single streets do not have
    assert pooled < upper(0.95, n) < upper(0.95, 3) < upper(0.95, 1)  # the smaller the group, the wider


def test_a_lower_threshold_warns_earlier_and_more_often():
    # free for 20 readings, congested from row 20 to 29; the forecast's probability rises from row 15
    row = [FREE] * 20 + [CONGESTED] * 10 + [FREE] * 70
    states, t, det, y = _one_detector(row)
    p = np.zeros(len(t))
    p[15:27] = np.linspace(0.1, 0.9, 12)
    p[60] = 0.3  # a blip far from any congestion: a false alarm at thresholds up to 0.3
    # P reaches 0.245 at row 17 (15 min before the onset), 0.39 at row 19 (5 min before)
    curve = warning_curve({th: p >= th for th in (0.2, 0.35, 0.95)}, y, det, t, states, 3, 300)
    low, mid, high = curve
    assert (low["caught_in_advance_fraction"], low["false_alarms_per_detector_day"] > 0) == (1.0, True)
    assert (mid["caught_fraction"], mid["false_alarms_per_detector_day"]) == (1.0, 0.0)
    assert low["mean_lead_min"] > mid["mean_lead_min"]
    assert high["caught_fraction"] == 0.0  # never that sure: the jam comes unannounced


def test_the_tuning_run_picks_the_earliest_warning_within_both_bounds():
    curve = [{"setting": 0.1, "caught_fraction": 1.0, "caught_in_advance_fraction": 0.9, "false_alarms_per_detector_day": 2.0},
             {"setting": 0.2, "caught_fraction": 0.97, "caught_in_advance_fraction": 0.5, "false_alarms_per_detector_day": 0.4},
             {"setting": 0.3, "caught_fraction": 0.9, "caught_in_advance_fraction": 0.6, "false_alarms_per_detector_day": 0.2},
             {"setting": 0.5, "caught_fraction": 0.96, "caught_in_advance_fraction": 0.1, "false_alarms_per_detector_day": 0.0}]
    chosen = choose_warning_point(curve, min_caught=0.95, max_false_alarms=0.5)
    assert (chosen["setting"], chosen["meets_bounds"]) == (0.2, True)
    # no point within both: the most caught ahead within the false-alarm bound, and it says so
    chosen = choose_warning_point(curve, min_caught=0.99, max_false_alarms=0.5)
    assert (chosen["setting"], chosen["meets_bounds"]) == (0.3, False)


def test_the_shipped_model_the_recipe_and_every_firmware_config_warn_at_one_operating_point():
    """The threshold and release chosen on the tuning split are in the recipe, travel in the artefact's
    manifest, and the congestion rule of every shipped device profile uses them for the congested class."""
    import yaml

    recipe = load_recipe(REPO / "compression" / "recipes" / "congestion.yaml")
    manifest = json.loads((REPO / "agent" / "models" / "congestion" / "manifest.json").read_text())
    point = WarningPoint.from_dict(manifest["warning"])
    assert point == WarningPoint(recipe.warning.threshold, recipe.warning.congested_now, recipe.warning.release)
    report = json.loads((REPO / "agent" / "models" / "congestion" / "report.json").read_text())
    assert report["warnings"]["operating_point"] == point.to_dict()
    profiles = [p for p in sorted((REPO / "firmware_configs").glob("*.yaml"))
                if "congestion" in (yaml.safe_load(p.read_text()).get("tasks") or {})]
    assert profiles
    for path in profiles:
        rule = yaml.safe_load(path.read_text())["tasks"]["congestion"]["rule"]
        assert rule["classes"]["congested"]["threshold"] == point.threshold, path.name
        assert rule["classes"]["congested"].get("release") == point.release, path.name
