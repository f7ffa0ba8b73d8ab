"""Congestion windows: the device's ring buffer and offline training see identical features."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.features.detector import (CONGESTED, FREE, SLOWED, DetectorParams, DetectorParamsError, DetectorWindow,
                                     make_windows, speed_state, window_features)

P = DetectorParams()
DAY = P.steps_per_day  # 288


def _calendar(n, start_row=0, first_weekday=3):
    row = np.arange(start_row, start_row + n)
    return row % DAY, (row // DAY + first_weekday) % 7


def _series(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(50 + 15 * np.sin(np.arange(n) / 20) + rng.normal(0, 5, n), 3, 70)


def _stream(series, tod, weekday, params=P):
    """Feed readings one at a time as the device does; {row: features} for every emitted vector."""
    w, out = DetectorWindow(params), {}
    for i, (s, t, d) in enumerate(zip(series, tod, weekday)):
        f = w.push(None if np.isnan(s) else float(s), int(t), int(d))
        if f is not None:
            out[i] = f
    return out


def test_speed_state_boundaries():
    assert [speed_state(s) for s in (70, 55.0, 54.99, 35.0, 34.99, 1)] == [FREE, FREE, SLOWED, SLOWED,
                                                                          CONGESTED, CONGESTED]
    states = speed_state(np.array([60.0, 40.0, 20.0]))
    assert states.tolist() == [0, 1, 2] and states.dtype == np.int64
    with pytest.raises(ValueError, match="missing"):
        speed_state(np.nan)


def test_window_features_layout():
    h = np.linspace(30, 63, 12)
    f = window_features(h, time_of_day_step=72, weekday=5)  # 06:00 on a Saturday
    assert f.dtype == np.float32 and f.shape == (P.n_features,) == (15,)
    np.testing.assert_allclose(f[:12], h / 70.0, rtol=1e-6)
    np.testing.assert_allclose(f[12:14], [1.0, 0.0], atol=1e-7)  # sin, cos of a quarter day
    assert f[14] == 1.0  # weekend
    midnight_friday = window_features(h, 0, 4)
    np.testing.assert_allclose(midnight_friday[12:], [0.0, 1.0, 0.0], atol=1e-7)
    # 23:55 sits next to 00:00 on the time-of-day circle.
    assert np.linalg.norm(window_features(h, DAY - 1, 4)[12:14] - midnight_friday[12:14]) < 0.03


@pytest.mark.parametrize("history, tod, weekday, match", [
    (np.full(11, 50.0), 0, 0, r"shape \(12,\)"),
    (np.r_[np.full(11, 50.0), np.nan], 0, 0, "missing speeds"),
    (np.r_[np.full(11, 50.0), 0.0], 0, 0, "missing speeds"),
    (np.full(12, 50.0), 288, 0, r"time_of_day_step must be in \[0, 288\), got 288"),
    (np.full(12, 50.0), 0, 7, "weekday must be in"),
    (np.full(12, 50.0), 1.5, 0, "must be integers"),
])
def test_window_features_refuses_bad_input(history, tod, weekday, match):
    with pytest.raises(ValueError, match=match):
        window_features(history, tod, weekday)


def test_make_windows_rows_equal_the_per_window_function_exactly():
    s = _series(700)
    tod, wd = _calendar(700, start_row=250)  # crosses two midnights
    X, y_state, y_speed, t = make_windows(s, tod, wd)
    assert X.shape == (700 - 15 + 1, 15) and X.dtype == np.float32
    for row, ti in enumerate(t):
        np.testing.assert_array_equal(X[row], window_features(s[ti - 11: ti + 1], int(tod[ti]), int(wd[ti])))
    np.testing.assert_array_equal(y_speed, s[t + 3].astype(np.float32))
    np.testing.assert_array_equal(y_state, speed_state(s[t + 3]))


def test_make_windows_drops_windows_touching_missing_readings_or_time_gaps():
    s = _series(100)
    s[40] = np.nan
    s[60] = 0.0  # a failed loop detector
    tod, wd = _calendar(100)
    tod[80:] += 1  # one reading lost between rows 79 and 80
    X, _, _, t = make_windows(s, tod, wd)
    # A window touches rows t-11 .. t+3: history and target.
    for bad in (40, 60):
        assert not np.any((t - 11 <= bad) & (bad <= t + 3))
    assert not np.any((t - 11 < 80) & (80 <= t + 3))
    assert len(t) == (40 - 15 + 1) + (60 - 41 - 15 + 1) + (80 - 61 - 15 + 1) + (100 - 80 - 15 + 1)


def test_make_windows_of_a_short_series_is_empty_with_the_right_shapes():
    X, ys, yv, t = make_windows(np.full(14, 50.0), *_calendar(14))
    assert X.shape == (0, 15) and ys.shape == yv.shape == t.shape == (0,)


def test_device_ring_buffer_equals_offline_windows_across_gaps():
    s = _series(400, seed=1)
    s[[100, 101, 250]] = np.nan
    tod, wd = _calendar(400, start_row=2000, first_weekday=0)  # Sunday 22:40 into Monday: the week wraps
    X, _, _, t = make_windows(s, tod, wd)
    device = _stream(s, tod, wd)
    assert set(t.tolist()) <= set(device)
    for row, ti in enumerate(t):
        np.testing.assert_array_equal(device[ti], X[row])
    # The device also emits for the last readings, whose targets lie in the future.
    assert max(device) == 399


def test_ring_buffer_waits_for_a_full_history_and_restarts_after_a_gap():
    w = DetectorWindow()
    outs = [w.push(50.0, i, 0) for i in range(12)]
    assert all(o is None for o in outs[:11]) and outs[11] is not None and w.ready
    assert w.push(None, 12, 0) is None and not w.ready
    assert all(w.push(50.0, i, 0) is None for i in range(13, 24))
    assert w.push(50.0, 24, 0) is not None
    assert w.push(50.0, 30, 0) is None  # readings 25..29 never arrived
    w2 = DetectorWindow()
    for i in range(DAY - 6, DAY):
        w2.push(60.0, i, 6)  # Sunday evening
    assert all(w2.push(60.0, i, 0) is None for i in range(5))
    assert w2.push(60.0, 5, 0) is not None  # Monday continues Sunday: no gap at the week's end


def test_params_round_trip_and_refuse_unknown_keys():
    p = DetectorParams(history_steps=6, horizon_steps=1, free_mph=60.0)
    d = json.loads(json.dumps(p.to_dict()))
    assert d["kind"] == "detector" and DetectorParams.from_dict(d) == p
    with pytest.raises(DetectorParamsError, match=r"unknown detector parameter\(s\) \['lanes'\]"):
        DetectorParams.from_dict({**d, "lanes": 4})
    with pytest.raises(DetectorParamsError, match=r"missing detector parameter\(s\) \['step_s'\]"):
        DetectorParams.from_dict({k: v for k, v in d.items() if k != "step_s"})
    with pytest.raises(DetectorParamsError, match="kind is 'image'"):
        DetectorParams.from_dict({**d, "kind": "image"})


@pytest.mark.parametrize("kwargs, match", [
    ({"step_s": 7}, "must divide a day"),
    ({"history_steps": 0}, ">= 1"),
    ({"congested_mph": 60.0}, "congested_mph < free_mph"),
    ({"speed_scale": 0.0}, "speed_scale must be positive"),
])
def test_invalid_params_are_refused(kwargs, match):
    with pytest.raises(DetectorParamsError, match=match):
        DetectorParams(**kwargs)


def test_other_params_change_the_window_and_thresholds():
    p = DetectorParams(step_s=900, history_steps=4, horizon_steps=1, free_mph=60.0, congested_mph=30.0)
    s = _series(200)
    row = np.arange(200)
    X, y_state, _, t = make_windows(s, row % 96, (row // 96) % 7, p)
    assert X.shape == (200 - 5 + 1, 7)
    np.testing.assert_array_equal(y_state, speed_state(s[t + 1], p))
    assert speed_state(58.0, p) == SLOWED and speed_state(58.0) == FREE


def test_real_detector_device_and_offline_agree(data_dir):
    from compression.tasks.congestion.traffic import load_speeds

    table = load_speeds(data_dir / "traffic" / "los_speed.csv")
    series = table.speeds[:, 0]
    X, y_state, _, t = make_windows(series, table.time_of_day, table.weekday)
    assert len(t) == 2016 - 15 + 1
    device = _stream(series, table.time_of_day, table.weekday)
    np.testing.assert_array_equal(np.stack([device[i] for i in t]), X)
    assert X[:, :12].min() > 0 and X[:, :12].max() <= 1.0  # speeds / 70 stay in (0, 1]
