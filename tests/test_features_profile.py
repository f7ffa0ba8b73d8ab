"""A detector's usual speeds (its own past days): learnt on the device, rebuilt offline, identical.

The profile part of the congestion vector: the detector's mean speed at each time of the
history and of the steps ahead, over its last days of the same day type, and a known flag.
A device learns it reading by reading (DetectorProfile); training rebuilds it from the table
(usual_speed_tables). These tests hold the two to the same numbers, bit for bit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.features.detector import (DetectorParams, DetectorParamsError, DetectorProfile, DetectorWindow,
                                     forget_profile, make_windows, profile_columns, usual_speeds, window_features)
from compression.tasks.congestion.traffic import SpeedTable, detector_windows, usual_speed_tables

P = DetectorParams(profile_ahead_steps=6, profile_max_days=3)
DAY = P.steps_per_day
H = P.history_steps


def _table(days: int, detectors: int = 2, seed: int = 0) -> SpeedTable:
    """Synthetic speeds from a Thursday midnight: a daily jam at 08:00 on weekdays, noise, a few gaps."""
    rng = np.random.default_rng(seed)
    rows = np.arange(days * DAY)
    tod, weekday = rows % DAY, (rows // DAY + 3) % 7
    jam = (np.abs(tod - 96) < 12) & (weekday < 5)
    speeds = np.where(jam[:, None], 25.0, 62.0) + rng.normal(0, 3, (len(rows), detectors))
    speeds[rng.random(speeds.shape) < 0.01] = np.nan
    return SpeedTable(path=None, ids=tuple(f"d{i}" for i in range(detectors)), speeds=speeds.astype(np.float32),
                      time_of_day=tod, weekday=weekday, n_missing=int(np.isnan(speeds).sum()))


def test_params_with_a_profile_lengthen_the_vector():
    assert DetectorParams().n_features == 15 and not DetectorParams().uses_profile
    assert P.profile_span == H + 6 and P.n_features == 15 + H + 6 + 1
    assert profile_columns(P) == slice(15, P.n_features) and profile_columns(DetectorParams()) == slice(15, 15)
    with pytest.raises(DetectorParamsError, match="profile_ahead_steps >= 0"):
        DetectorParams(profile_ahead_steps=-1)
    with pytest.raises(DetectorParamsError, match="profile_max_days >= 1"):
        DetectorParams(profile_max_days=0)


def test_unknown_profile_is_zeros_with_the_flag_down():
    f = window_features(np.full(H, 50.0), 100, 2, P, usual=None)
    assert f.shape == (P.n_features,) and f[-1] == 0.0 and not f[15:].any()
    np.testing.assert_array_equal(f[:15], window_features(np.full(H, 50.0), 100, 2))  # the rest as before


def test_profile_values_follow_the_clock_across_midnight_into_the_weekend():
    usual = np.empty((2, DAY))
    usual[0], usual[1] = 40.0 + np.arange(DAY) / 100, 60.0 + np.arange(DAY) / 100  # weekday, weekend tables
    f = window_features(np.full(H, 50.0), DAY - 3, 4, P, usual)  # Friday 23:45: the hour behind, 30 min ahead
    expected = [usual[0, DAY - 3 + k] for k in range(-(H - 1), 3)] + [usual[1, k] for k in range(4)]
    np.testing.assert_allclose(f[15:-1], np.array(expected) / P.speed_scale, rtol=1e-6)
    assert f[-1] == 1.0
    usual[1, 2] = np.nan  # one unknown value ahead (Saturday 00:10): the whole profile is unknown
    f = window_features(np.full(H, 50.0), DAY - 3, 4, P, usual)
    assert f[-1] == 0.0 and not f[15:].any()


def test_usual_speeds_average_the_last_days_of_each_type_ignoring_gaps():
    days = np.array([[10.0, np.nan], [20.0, 30.0], [30.0, 50.0], [99.0, 99.0], [40.0, np.nan]])
    weekend = np.array([False, False, False, True, False])
    u = usual_speeds(days, weekend, max_days=3)  # weekdays: the last three, 20, 30, 40
    np.testing.assert_allclose(u[0], [30.0, 40.0])
    np.testing.assert_allclose(u[1], [99.0, 99.0])
    assert np.isnan(usual_speeds(days[:3], weekend[:3], 3)[1]).all()  # no weekend seen yet


def test_device_profile_equals_the_offline_tables_and_windows_bit_for_bit():
    table = _table(days=10)
    offline = usual_speed_tables(table, P)  # what a device running since row 0 knows each day
    X_off, _, _, _, t = detector_windows(table, ["d1"], P, offline)
    window, device = DetectorWindow(P), {}
    series = table.column("d1")
    for row in range(len(series)):
        s = series[row]
        f = window.push(None if np.isnan(s) else float(s), int(table.time_of_day[row]), int(table.weekday[row]),
                        day=1000 + row // DAY)  # any day numbering that grows by one a day
        if f is not None:
            device[row] = f
    assert set(t.tolist()) <= set(device)
    np.testing.assert_array_equal(np.stack([device[i] for i in t]), X_off)
    known = X_off[:, -1] == 1.0
    assert 0.5 < known.mean() < 1.0  # day one has no profile, later days do
    # the device never keeps more than max_days of a type (plus today)
    assert len(window.profile.days) <= 2 * P.profile_max_days + 1


def test_the_profile_predicts_the_daily_jam_before_it_starts():
    table = _table(days=9)
    X, _, _, _, t = detector_windows(table, ["d0"], P, usual_speed_tables(table, P))
    tod, day = table.time_of_day[t], t // DAY
    before_jam = (tod == 85 - 6) & (day == 8)  # Friday 06:35, free flow now, the jam due at 07:05
    row = X[before_jam][0]
    ahead = row[15 + H:-1] * P.speed_scale
    assert row[:H].min() * P.speed_scale > 50 and ahead[-1] < 35 and row[-1] == 1.0


def test_training_tables_use_other_training_days_only():
    table = _table(days=7)
    tables = usual_speed_tables(table, P, training_days=5)
    speeds = table.speeds.astype(np.float64)
    # Thursday (day 0) sees the other weekdays of training time: Friday (1) and Monday (4), never itself
    col, step = 0, 50
    others = [speeds[d * DAY + step, col] for d in (1, 4)]
    np.testing.assert_allclose(tables[0, 0, step, col], np.nanmean(others))
    # evaluation time (days 5, 6) never enters: changing it changes no table
    changed = SpeedTable(None, table.ids, table.speeds.copy(), table.time_of_day, table.weekday, 0)
    changed.speeds[5 * DAY:] = 5.0
    np.testing.assert_array_equal(usual_speed_tables(changed, P, training_days=5), tables)


def test_forget_profile_zeroes_only_the_profile():
    table = _table(days=4)
    X = detector_windows(table, ["d0"], P, usual_speed_tables(table, P))[0]
    F = forget_profile(X, P)
    np.testing.assert_array_equal(F[:, :15], X[:, :15])
    assert not F[:, 15:].any() and X[:, -1].any()


def test_profile_survives_a_restart_as_json_and_refuses_other_parameters():
    prof = DetectorProfile(P)
    for step in range(DAY + 5):
        prof.add(50.0 + step % 7, day=10 + step // DAY, time_of_day_step=step % DAY, weekday=(step // DAY) % 7)
    prof.add(None, 11, 6, 1)  # a missing reading is not a speed
    back = DetectorProfile.from_dict(P, json.loads(json.dumps(prof.to_dict())))
    assert back.days == prof.days == [10, 11]
    np.testing.assert_array_equal(back.usual(11), prof.usual(11))
    assert prof.usual(10) is None  # nothing before the first day
    with pytest.raises(ValueError, match="steps"):
        DetectorProfile.from_dict(DetectorParams(step_s=600, profile_ahead_steps=3), prof.to_dict())


def test_a_device_with_a_profile_needs_the_day_number():
    w = DetectorWindow(P)
    with pytest.raises(ValueError, match="day number"):
        w.push(50.0, 0, 0)
    assert DetectorWindow().profile is None  # no profile, no day needed


def test_offline_windows_equal_the_per_window_function():
    table = _table(days=3, detectors=1)
    tables = usual_speed_tables(table, P)
    s = table.column("d0").astype(np.float64)
    day = np.arange(len(s)) // DAY
    X, _, _, t = make_windows(s, table.time_of_day, table.weekday, P, tables[..., 0], day)
    for row in range(0, len(t), 37):
        ti = t[row]
        np.testing.assert_array_equal(
            X[row], window_features(s[ti - H + 1:ti + 1], int(table.time_of_day[ti]), int(table.weekday[ti]), P,
                                    tables[day[ti], ..., 0]))


def test_a_late_reading_of_a_day_older_than_those_kept_is_not_kept():
    prof = DetectorProfile(P)  # at most 3 past days of a type
    for day in range(10, 16):  # weekdays only
        prof.add(50.0, day, 0, day % 5)
    assert prof.days == [12, 13, 14, 15]
    prof.add(40.0, 9, 5, 4)  # a late reading from before them all
    assert prof.days == [12, 13, 14, 15]
