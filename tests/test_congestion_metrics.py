"""Congestion metrics and baselines on hand-made series, where every number can be worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from agent.features.detector import CONGESTED, FREE, SLOWED, DetectorParams
from compression.tasks.congestion.evaluate import build_eval_set
from compression.tasks.congestion.metrics import (detector_bootstrap, forecast_metrics, macro_f1_of, rmse_bootstrap,
                                                  state_grid, warning_metrics)
from compression.tasks.congestion.train import tune_offsets
from compression.tasks.congestion.traffic import (STEPS_PER_DAY, TrafficDataError, eval_start_row, historical_average,
                                          load_speeds)

P = DetectorParams()
DAY = STEPS_PER_DAY


def _table(tmp_path, columns: dict[str, np.ndarray]):
    ids = list(columns)
    rows = np.stack([columns[i] for i in ids], 1)
    text = ",".join(ids) + "\n" + "\n".join(",".join(f"{v:.3f}" for v in r) for r in rows) + "\n"
    (tmp_path / "speeds.csv").write_text(text)
    return load_speeds(tmp_path / "speeds.csv")


def test_evaluation_days_are_the_last_whole_days_and_need_one_day_before():
    assert eval_start_row(7 * DAY, 2) == 5 * DAY
    assert eval_start_row(3 * DAY + 10, 2) == DAY + 10
    with pytest.raises(TrafficDataError, match="at least one whole day before them"):
        eval_start_row(2 * DAY, 2)


def test_historical_average_is_per_detector_time_of_day_and_day_type(tmp_path):
    # Thursday, Friday, Saturday, Sunday: the weekdays run at 60 and 50, the weekend at 30
    level = np.repeat([60.0, 50.0, 30.0, 30.0], DAY)
    table = _table(tmp_path, {"a": level, "b": level + np.tile(np.arange(DAY) / DAY, 4)})
    ha = historical_average(table, before_row=3 * DAY)  # Sunday is evaluation time
    assert ha.shape == (2, DAY, 2)
    np.testing.assert_allclose(ha[0, :, 0], 55.0)  # weekdays: Thursday and Friday
    np.testing.assert_allclose(ha[1, :, 0], 30.0)  # weekend: Saturday only (Sunday is not training time)
    assert ha[0, 100, 1] == pytest.approx(55.0 + 100 / DAY, abs=1e-3)  # each time of day on its own (CSV: 3 decimals)


def test_historical_average_falls_back_to_all_days_when_a_day_type_is_missing(tmp_path):
    table = _table(tmp_path, {"a": np.repeat([60.0, 40.0], DAY)})  # Thursday, Friday: no weekend in training
    ha = historical_average(table, before_row=2 * DAY)
    np.testing.assert_allclose(ha[1], 50.0)


def test_baselines_forecast_the_same_windows_as_the_model(tmp_path):
    rng = np.random.default_rng(0)
    speeds = np.clip(55 + 15 * np.sin(np.arange(3 * DAY) / 25) + rng.normal(0, 3, 3 * DAY), 5, 70)
    table = _table(tmp_path, {"a": speeds, "b": speeds[::-1].copy()})
    es = build_eval_set(table, ["b"], P, eval_days=1)
    w = es.windows
    assert es.eval_start == 2 * DAY and (w.t >= 2 * DAY).all() and set(w.det.tolist()) == {1}
    assert len(w) == DAY - P.horizon_steps  # every forecast issued on the last day whose target is in the table
    col = table.speeds[:, 1]
    persistence_state, persistence_speed = es.baselines["persistence"]
    np.testing.assert_array_equal(persistence_speed, col[w.t])
    target = w.t + P.horizon_steps
    expected = (col[target - 2 * DAY] + col[target - DAY]) / 2  # Thursday and Friday at the target's time of day
    np.testing.assert_allclose(es.baselines["historical_average"][1], expected, rtol=1e-6)
    # persistence scored by the common code: its RMSE is that of the speed 15 min later
    m = es.score(persistence_state, persistence_speed)
    assert m["speed"]["rmse_mph"] == pytest.approx(np.sqrt(np.mean((col[w.t] - col[target]) ** 2)), rel=1e-5)


def test_speed_errors_and_congested_precision_recall():
    y_state, pred = np.array([FREE, SLOWED, CONGESTED, CONGESTED]), np.array([FREE, CONGESTED, CONGESTED, SLOWED])
    states = np.full((20, 1), FREE)
    m = forecast_metrics(pred, np.array([60.0, 40, 20, 40]), y_state, np.array([63.0, 44, 20, 30]),
                         np.zeros(4, np.int64), np.arange(4), states, 3, 300, ("free", "slowed", "congested"))
    assert m["speed"]["rmse_mph"] == pytest.approx(np.sqrt((9 + 16 + 0 + 100) / 4))
    assert m["speed"]["mae_mph"] == pytest.approx((3 + 4 + 0 + 10) / 4)
    assert (m["congested"]["recall"], m["congested"]["precision"]) == (0.5, 0.5)


def _one_detector(states_row: list[int]):
    """A state grid of one detector, and its windows: forecasts issued at every row with a target."""
    states = np.array(states_row)[:, None]
    t = np.arange(len(states_row) - 3)
    return states, t, np.zeros(len(t), np.int64), states[t + 3, 0]


def test_an_onset_caught_ten_minutes_ahead_and_a_false_alarm():
    # free for 20 readings, congested from row 20 to 29, free again until row 99
    row = [FREE] * 20 + [CONGESTED] * 10 + [FREE] * 70
    states, t, det, y = _one_detector(row)
    pred = np.full(len(t), FREE)
    pred[18:27] = CONGESTED  # says "congested in 15 min" from row 18: onset at 20 is caught 2 steps ahead
    pred[60] = CONGESTED  # nothing congested within 30 min of row 60: a false alarm
    w = warning_metrics(pred, y, det, t, states, horizon=3, step_s=300)
    assert (w["onsets"], w["caught"], w["caught_in_advance_fraction"]) == (1, 1, 1.0)
    assert w["mean_lead_min"] == 10.0 and w["onset_quiet_min"] == 30.0
    assert (w["alarms"], w["false_alarms"]) == (2, 1)
    assert w["false_alarms_per_detector_day"] == pytest.approx(1 / (len(t) / DAY))


def test_persistence_catches_onsets_only_when_they_happen_and_flicker_is_not_an_onset():
    row = [FREE] * 20 + [CONGESTED] * 5 + [SLOWED] + [CONGESTED] * 5 + [FREE] * 30
    states, t, det, y = _one_detector(row)
    persistence = states[t, 0]
    w = warning_metrics(persistence, y, det, t, states, horizon=3, step_s=300)
    # row 26 follows a single slowed reading: not 30 quiet minutes, so only row 20 is an onset
    assert (w["onsets"], w["caught"], w["caught_in_advance_fraction"], w["mean_lead_min"]) == (1, 1, 0.0, 0.0)
    assert w["false_alarms"] == 0 and w["alarms"] == 2


def test_state_grid_marks_missing_readings():
    grid = state_grid(np.array([[60.0, np.nan], [40.0, 20.0]], np.float32), P)
    assert grid.tolist() == [[FREE, -1], [SLOWED, CONGESTED]]


def test_logit_offsets_only_move_when_they_raise_macro_f1():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 3000)
    logits = np.eye(3)[y] * 2 + rng.normal(0, 1, (3000, 3))
    offsets, f1 = tune_offsets(logits, y)
    assert np.abs(offsets).max() <= 0.3  # balanced and calibrated: little to gain
    biased = logits + np.array([1.5, 0, 0])  # everything leans to "free"
    offsets, f1_biased = tune_offsets(biased, y)
    assert offsets[1] > 1 and offsets[2] > 1 and f1_biased == pytest.approx(f1, abs=0.01)


def test_detector_bootstrap_resamples_whole_detectors():
    rng = np.random.default_rng(3)
    det = np.repeat(np.arange(6), 50)
    y = rng.integers(0, 3, det.size)
    ref = np.where(rng.random(det.size) < 0.7, y, (y + 1) % 3)
    better = np.where(det < 3, y, ref)  # perfect on three detectors, the reference's answers on the others
    out = detector_bootstrap(y, better, ref, det, resamples=400, seed=1, threshold=0.0)
    assert out["gain"] == pytest.approx(macro_f1_of(np.bincount(y * 3 + better, minlength=9).reshape(3, 3))
                                        - macro_f1_of(np.bincount(y * 3 + ref, minlength=9).reshape(3, 3)))
    lo, hi = out["ci95"]
    assert 0 <= lo < out["gain"] < hi and out["share_reaching"] == 1.0  # never worse, how much better varies
    # a single resample, redone by hand: the detectors drawn, all their windows together
    picks = np.random.default_rng(7).integers(0, 6, (1, 6))[0]
    keep = np.concatenate([np.flatnonzero(det == d) for d in picks])
    by_hand = (macro_f1_of(np.bincount(y[keep] * 3 + better[keep], minlength=9).reshape(3, 3))
               - macro_f1_of(np.bincount(y[keep] * 3 + ref[keep], minlength=9).reshape(3, 3)))
    assert detector_bootstrap(y, better, ref, det, resamples=1, seed=7)["ci95"] == pytest.approx([by_hand] * 2)
    same = detector_bootstrap(y, ref, ref, det, resamples=50)
    assert same["gain"] == 0.0 and same["ci95"] == [0.0, 0.0]


def test_rmse_bootstrap_resamples_whole_detectors_and_skips_unknown_targets():
    rng = np.random.default_rng(5)
    det = np.repeat(np.arange(8), 40)
    y = rng.uniform(20, 70, det.size).astype(np.float32)
    y[::17] = np.nan  # a missing reading at the target: not scored
    ref = y + rng.normal(0, 6, det.size)
    pred = y + np.where(det == 0, 20.0, rng.normal(0, 3, det.size))  # one detector with a breakdown it missed
    out = rmse_bootstrap(pred, ref, y, det, resamples=500, seed=2, max_rmse=5.0, max_ratio=0.92)
    known = np.isfinite(y)
    by_hand = np.sqrt(np.mean((pred - y)[known] ** 2))
    ref_rmse = np.sqrt(np.mean((ref - y)[known] ** 2))
    assert out["rmse_mph"] == pytest.approx(by_hand) and out["ratio"] == pytest.approx(by_hand / ref_rmse)
    lo, hi = out["rmse_ci95"]
    assert lo < out["rmse_mph"] < hi and hi - lo > 2  # whether the bad detector is drawn, and how often, matters
    assert 0 < out["share_within_rmse"] < 1 and out["detectors"] == 8
    # one resample by hand: the detectors drawn, all their known windows together
    picks = np.random.default_rng(9).integers(0, 8, (1, 8))[0]
    keep = np.concatenate([np.flatnonzero((det == d) & known) for d in picks])
    one = rmse_bootstrap(pred, ref, y, det, resamples=1, seed=9)
    assert one["rmse_ci95"] == pytest.approx([np.sqrt(np.mean((pred[keep] - y[keep]) ** 2))] * 2)
    same = rmse_bootstrap(ref, ref, y, det, resamples=50)
    assert same["ratio"] == 1.0 and same["ratio_ci95"] == pytest.approx([1.0, 1.0])
