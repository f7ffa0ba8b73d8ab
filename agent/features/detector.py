"""Congestion windows from one loop detector's speeds (numpy only), shared by training and device.

Task: from the last ``history_steps`` readings (5-minute steps) forecast the speed
``horizon_steps`` ahead and its state: 0 free (>= free_mph), 1 slowed, 2 congested
(< congested_mph).

Feature vector, all known at the last reading ("now"):
- the history speeds divided by ``speed_scale``, oldest first;
- sin and cos of the time of day of the last reading (a 24 h circle, so 23:55 is next
  to 00:00);
- a weekend flag (Saturday or Sunday). Not a weekday one-hot: a week of data holds each
  weekday once, so seven one-hot columns could only memorise single days.
- only when ``profile_ahead_steps`` > 0, the detector's *usual speeds*: its mean speed at
  each time of the history and of the next ``profile_ahead_steps`` steps, over its last
  ``profile_max_days`` complete days of the same day type (weekday / weekend), scaled, then
  a flag that is 1 when all of them are known. A device learns them from its own detector
  as the days pass (``DetectorProfile``); until it has seen a day of that type the values
  are 0 and the flag 0, and the model must still work (it is trained that way too). This
  is where a recurring jam (the same on-ramp every evening) becomes predictable on a
  detector the model never saw.

Missing readings (NaN, zero or negative speed; loop detectors report 0 when they fail)
and gaps in time break a window: offline, windows touching one are dropped; on the
device, the ring buffer starts again. Both sides therefore see only gap-free histories.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from . import params_from_dict

SECONDS_PER_DAY = 86400
FREE, SLOWED, CONGESTED = 0, 1, 2
STATES = ("free", "slowed", "congested")
WEEKEND = (5, 6)  # Monday = 0
PROFILE_MAX_MPH = 300.0  # a saved usual speed above this (or not finite) cannot be a reading: the file is refused


class DetectorParamsError(ValueError):
    """Detector front-end parameters that are invalid or come from another front-end."""


@dataclass(frozen=True)
class DetectorParams:
    step_s: int = 300
    history_steps: int = 12  # 60 min
    horizon_steps: int = 3  # 15 min ahead
    free_mph: float = 55.0
    congested_mph: float = 35.0
    speed_scale: float = 70.0  # about the top speed in the data: features land in [0, 1]
    profile_ahead_steps: int = 0  # 0: no usual speeds in the vector
    profile_max_days: int = 7  # usual speeds average at most this many recent days of a day type

    def __post_init__(self):
        if self.step_s <= 0 or SECONDS_PER_DAY % self.step_s:
            raise DetectorParamsError(f"step_s must divide a day ({SECONDS_PER_DAY} s), got {self.step_s}")
        if self.history_steps < 1 or self.horizon_steps < 1:
            raise DetectorParamsError(f"history_steps and horizon_steps must be >= 1, "
                                      f"got {self.history_steps}, {self.horizon_steps}")
        if not 0 < self.congested_mph < self.free_mph:
            raise DetectorParamsError(f"need 0 < congested_mph < free_mph, got {self.congested_mph}, {self.free_mph}")
        if self.speed_scale <= 0:
            raise DetectorParamsError(f"speed_scale must be positive, got {self.speed_scale}")
        if self.profile_ahead_steps < 0 or self.profile_max_days < 1:
            raise DetectorParamsError(f"need profile_ahead_steps >= 0 and profile_max_days >= 1, got "
                                      f"{self.profile_ahead_steps}, {self.profile_max_days}")

    @property
    def steps_per_day(self) -> int:
        return SECONDS_PER_DAY // self.step_s

    @property
    def uses_profile(self) -> bool:
        return self.profile_ahead_steps > 0

    @property
    def profile_span(self) -> int:
        """Usual speeds in the vector: the history's times and the steps ahead (0 without a profile)."""
        return self.history_steps + self.profile_ahead_steps if self.uses_profile else 0

    @property
    def n_features(self) -> int:
        return self.history_steps + 3 + (self.profile_span + 1 if self.uses_profile else 0)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "detector", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorParams:
        """Exact inverse of to_dict: every field must be present, no unknown keys."""
        return params_from_dict(cls, d, "detector", DetectorParamsError)


def speed_state(speed, params: DetectorParams = DetectorParams()):
    """0 free (>= free_mph), 1 slowed (congested_mph up to free_mph), 2 congested (< congested_mph).

    Works on a number (returns int) or an array (returns int64 array); NaN is refused.
    """
    s = np.asarray(speed, dtype=np.float64)
    if np.isnan(s).any():
        raise ValueError("speed_state of a missing (NaN) speed")
    state = np.where(s >= params.free_mph, FREE, np.where(s >= params.congested_mph, SLOWED, CONGESTED))
    return int(state) if state.ndim == 0 else state.astype(np.int64)


def window_features(history_speeds, time_of_day_step: int, weekday: int,
                    params: DetectorParams = DetectorParams(), usual: np.ndarray | None = None) -> np.ndarray:
    """The feature vector (float32, ``params.n_features``) for one gap-free history ending now.

    ``usual``: the detector's usual speeds today, (2, steps per day) for weekdays and
    weekends (``DetectorProfile.usual``), or None when unknown; used only when the
    parameters carry a profile.
    """
    h = np.asarray(history_speeds, dtype=np.float64)
    if h.shape != (params.history_steps,):
        raise ValueError(f"history must have shape ({params.history_steps},), got {h.shape}")
    if not (np.isfinite(h).all() and (h > 0).all()):
        raise ValueError(f"history has missing speeds (NaN or <= 0): {h.tolist()}")
    _check_time(time_of_day_step, weekday, params)
    sin, cos = _tod_circle(params.steps_per_day)
    tail = [sin[time_of_day_step], cos[time_of_day_step], 1.0 if weekday in WEEKEND else 0.0]
    parts = [h / params.speed_scale, tail]
    if params.uses_profile:
        tables = None if usual is None else np.asarray(usual, np.float64)[None]
        parts.append(_profile_part(tables, np.zeros(1, np.int64), np.array([time_of_day_step]), np.array([weekday]),
                                   params)[0])
    return np.concatenate(parts).astype(np.float32)


def profile_columns(params: DetectorParams) -> slice:
    """Where the usual speeds and their flag sit in the vector (an empty slice without a profile)."""
    start = params.history_steps + 3
    return slice(start, params.n_features)


def forget_profile(X: np.ndarray, params: DetectorParams) -> np.ndarray:
    """The vectors a device that has not yet seen a day of its detector would compute: profile zeroed."""
    X = np.array(X, dtype=np.float32, copy=True)
    X[:, profile_columns(params)] = 0.0
    return X


def usual_speeds(days: np.ndarray, weekend: np.ndarray, max_days: int) -> np.ndarray:
    """Usual speeds from whole days of readings: (n, steps, ...) speeds (NaN where missing),
    ``weekend`` (n,) flags, oldest day first -> (2, steps, ...), index 0 weekdays, 1 weekends:
    the mean over the last ``max_days`` days of each type, NaN where none has a reading.
    Used on the device (``DetectorProfile``) and offline alike."""
    days = np.asarray(days, np.float64)
    weekend = np.asarray(weekend, bool)
    out = np.full((2,) + days.shape[1:], np.nan)
    for kind in (0, 1):
        pick = days[weekend == bool(kind)][-max_days:]
        if len(pick):
            known = np.isfinite(pick)
            n = known.sum(0)
            out[kind] = np.where(n > 0, np.where(known, pick, 0.0).sum(0) / np.maximum(n, 1), np.nan)
    return out


def _profile_part(tables: np.ndarray | None, which: np.ndarray | None, tod: np.ndarray, weekday: np.ndarray,
                  params: DetectorParams) -> np.ndarray:
    """(M, profile_span + 1): the usual speeds at the history's times and the steps ahead of
    windows issued at (tod, weekday), scaled, then the known flag; zeros where any is unknown.
    ``tables``: (n, 2, steps per day) usual speeds, window m using ``tables[which[m]]``; None: none known."""
    m, spd = len(tod), params.steps_per_day
    out = np.zeros((m, params.profile_span + 1))
    if tables is None:
        return out
    offsets = np.arange(-(params.history_steps - 1), params.profile_ahead_steps + 1)
    step = (weekday[:, None] * spd + tod[:, None] + offsets[None, :]) % (7 * spd)
    kind = np.isin(step // spd, WEEKEND).astype(np.int64)
    values = tables[which[:, None], kind, step % spd]
    known = np.isfinite(values).all(axis=1)
    out[known, :-1] = values[known] / params.speed_scale
    out[known, -1] = 1.0
    return out


def make_windows(series, tod, weekday, params: DetectorParams = DetectorParams(),
                 usual: np.ndarray | None = None, day: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All gap-free windows of one detector: (X (M, F) float32, y_state (M,) int64,
    y_speed (M,) float32 in mph, t_index (M,) int64 = row of the last history reading).

    With a profile in the parameters, ``usual`` (n_days, 2, steps per day) holds the usual
    speeds known on each day and ``day`` (rows,) the index into it of each row's day: a
    window uses the table of the day it is issued on. Without them the profile is unknown.
    Vectorised; tests prove each row equals ``window_features`` for that window.
    """
    s = np.asarray(series, dtype=np.float64)
    tod, weekday = np.asarray(tod, dtype=np.int64), np.asarray(weekday, dtype=np.int64)
    if s.ndim != 1 or tod.shape != s.shape or weekday.shape != s.shape:
        raise ValueError(f"series, tod and weekday must be 1-D of one length, "
                         f"got {s.shape}, {tod.shape}, {weekday.shape}")
    if tod.size and (tod.min() < 0 or tod.max() >= params.steps_per_day or weekday.min() < 0 or weekday.max() > 6):
        raise ValueError(f"tod must be in [0, {params.steps_per_day}) and weekday in [0, 6]")
    H, K = params.history_steps, params.horizon_steps
    span = H + K  # readings a training window touches: history plus the target
    n_features = params.n_features
    if s.size < span:
        return (np.zeros((0, n_features), np.float32), np.zeros(0, np.int64),
                np.zeros(0, np.float32), np.zeros(0, np.int64))

    ok = np.isfinite(s) & (s > 0)
    # A step follows its predecessor when its absolute step in the week is one more.
    week_steps = 7 * params.steps_per_day
    absolute = weekday * params.steps_per_day + tod
    follows = np.concatenate([[False], (np.diff(absolute) % week_steps) == 1])
    starts = np.arange(s.size - span + 1)
    valid = np.lib.stride_tricks.sliding_window_view(ok, span).all(axis=1)
    # The first reading of a window need not follow anything; the other span-1 must.
    valid &= np.lib.stride_tricks.sliding_window_view(follows[1:], span - 1).all(axis=1)
    starts = starts[valid]

    t_index = starts + H - 1
    history = s[starts[:, None] + np.arange(H)]
    sin, cos = _tod_circle(params.steps_per_day)
    weekend = np.isin(weekday[t_index], WEEKEND).astype(np.float64)
    parts = [history / params.speed_scale, sin[tod[t_index], None], cos[tod[t_index], None], weekend[:, None]]
    if params.uses_profile:
        if (usual is None) != (day is None):
            raise ValueError("give both usual and day, or neither")
        tables = None if usual is None else np.asarray(usual, np.float64)
        which = None if day is None else np.asarray(day)[t_index]
        parts.append(_profile_part(tables, which, tod[t_index], weekday[t_index], params))
    X = np.concatenate(parts, axis=1).astype(np.float32)
    y_speed = s[t_index + K]
    return X, speed_state(y_speed, params).reshape(-1), y_speed.astype(np.float32), t_index.astype(np.int64)


class DetectorProfile:
    """A detector's usual speeds, learnt on the device from its own readings day by day.

    Keeps the readings of the last ``profile_max_days`` days of each day type plus today's;
    ``usual(today)`` averages the complete days before today (``usual_speeds``, the function
    training uses). ``to_dict``/``from_dict`` let the agent keep it across restarts.
    """

    def __init__(self, params: DetectorParams):
        self.params = params
        self._days: dict[int, np.ndarray] = {}  # day number (e.g. date.toordinal()) -> speeds per step
        self._weekend: dict[int, bool] = {}
        self._cache: tuple[int, np.ndarray] | None = None

    def add(self, speed: float | None, day: int, time_of_day_step: int, weekday: int) -> None:
        _check_time(time_of_day_step, weekday, self.params)
        if speed is None or not np.isfinite(speed) or speed <= 0:
            return
        row = self._days.get(day)
        if row is None:
            row = self._days[day] = np.full(self.params.steps_per_day, np.nan)
            self._weekend[day] = weekday in WEEKEND
            self._forget_old(max(self._days))  # a late reading of an old day must not count as the newest
        row[time_of_day_step] = float(speed)
        if self._cache is not None and day < self._cache[0]:
            self._cache = None  # a late reading of a past day changes what is usual

    def _forget_old(self, newest: int) -> None:
        keep = set()
        for kind in (False, True):
            past = sorted(d for d in self._days if d < newest and self._weekend[d] == kind)
            keep.update(past[-self.params.profile_max_days:])
        for d in [d for d in self._days if d < newest and d not in keep]:
            del self._days[d], self._weekend[d]

    @property
    def days(self) -> list[int]:
        return sorted(self._days)

    def usual(self, today: int) -> np.ndarray | None:
        """(2, steps per day) usual speeds from the days before ``today``; None before the first such day."""
        if self._cache is not None and self._cache[0] == today:
            return self._cache[1]
        past = [d for d in sorted(self._days) if d < today]
        table = None
        if past:
            table = usual_speeds(np.stack([self._days[d] for d in past]), np.array([self._weekend[d] for d in past]),
                                 self.params.profile_max_days)
            table.flags.writeable = False
        self._cache = (today, table)
        return table

    def to_dict(self) -> dict[str, Any]:
        return {"days": {str(d): {"weekend": self._weekend[d],
                                  "speeds": [None if np.isnan(v) else round(float(v), 3) for v in row]}
                         for d, row in sorted(self._days.items())}}

    @classmethod
    def from_dict(cls, params: DetectorParams, d: dict[str, Any]) -> DetectorProfile:
        """Inverse of to_dict, validated: a saved profile is relearnt, never trusted, when anything in it could
        not have come from ``to_dict`` (found by attack: a speed of 1e308 saved there kept alerting after
        restarts). ValueError names the day and what is wrong; a day of the wrong length was kept for other
        parameters."""
        days = d.get("days") if isinstance(d, dict) else None
        if not isinstance(days, dict) or len(days) > 2 * params.profile_max_days + 1:
            raise ValueError(f"profile 'days' must be a mapping of at most {2 * params.profile_max_days + 1} days")
        out = cls(params)
        for key, entry in days.items():
            day = int(key) if isinstance(key, str) and key.isdigit() and len(key) <= 7 else None
            if day is None or not isinstance(entry, dict) or not isinstance(entry.get("weekend"), bool) \
                    or not isinstance(entry.get("speeds"), list):
                raise ValueError(f"profile day {str(key)[:20]!r}: not a day number with 'weekend' and 'speeds'")
            speeds = entry["speeds"]
            if len(speeds) != params.steps_per_day:
                raise ValueError(f"profile day {key}: {len(speeds)} steps, the parameters have {params.steps_per_day}")
            if not all(v is None or (type(v) in (int, float) and 0 < v <= PROFILE_MAX_MPH) for v in speeds):
                raise ValueError(f"profile day {key}: speeds must be null or in (0, {PROFILE_MAX_MPH:g}] mph")
            out._days[day], out._weekend[day] = np.array([np.nan if v is None else float(v) for v in speeds]), \
                entry["weekend"]
        return out


class DetectorWindow:
    """Device-side ring buffer: push readings one at a time, get features once the history is full.

    A missing reading (None, NaN, <= 0) or a reading that does not follow the previous one
    in time empties the buffer, exactly as make_windows drops windows across gaps. With a
    profile in the parameters every reading also goes into ``profile`` (a DetectorProfile,
    given to keep one across restarts), and ``push`` needs the day number.
    """

    def __init__(self, params: DetectorParams = DetectorParams(), profile: DetectorProfile | None = None):
        self.params = params
        self.profile = (profile or DetectorProfile(params)) if params.uses_profile else None
        self._speeds: deque[float] = deque(maxlen=params.history_steps)
        self._last: int | None = None  # absolute step in the week of the last reading kept

    def reset(self) -> None:
        self._speeds.clear()
        self._last = None

    @property
    def ready(self) -> bool:
        return len(self._speeds) == self.params.history_steps

    def push(self, speed: float | None, time_of_day_step: int, weekday: int,
             day: int | None = None) -> np.ndarray | None:
        """Add the reading taken at this step; the feature vector when the history is full, else None.

        ``day``: a number that grows by one per local day (``date.toordinal()``), needed with a profile.
        """
        p = self.params
        _check_time(time_of_day_step, weekday, p)
        if self.profile is not None:
            if day is None:
                raise ValueError("these detector parameters use a profile: push needs the day number")
            self.profile.add(speed, day, time_of_day_step, weekday)
        now = weekday * p.steps_per_day + time_of_day_step
        missing = speed is None or not np.isfinite(speed) or speed <= 0
        follows = self._last is not None and (now - self._last) % (7 * p.steps_per_day) == 1
        if missing or not follows:
            self.reset()
        if missing:
            return None
        self._speeds.append(float(speed))
        self._last = now
        if not self.ready:
            return None
        usual = self.profile.usual(day) if self.profile is not None else None
        return window_features(np.fromiter(self._speeds, np.float64, p.history_steps),
                               time_of_day_step, weekday, p, usual)


@lru_cache(maxsize=4)
def _tod_circle(steps_per_day: int) -> tuple[np.ndarray, np.ndarray]:
    """sin and cos of every step of the day, from one table: a scalar np.sin and a vectorised
    one may differ in the last bit, and device and training must agree exactly."""
    angle = 2.0 * np.pi * np.arange(steps_per_day) / steps_per_day
    sin, cos = np.sin(angle), np.cos(angle)
    sin.flags.writeable = cos.flags.writeable = False
    return sin, cos


def _check_time(time_of_day_step: int, weekday: int, params: DetectorParams) -> None:
    if not isinstance(time_of_day_step, (int, np.integer)) or not isinstance(weekday, (int, np.integer)):
        raise ValueError(f"time_of_day_step and weekday must be integers, got {time_of_day_step!r}, {weekday!r}")
    if not 0 <= time_of_day_step < params.steps_per_day:
        raise ValueError(f"time_of_day_step must be in [0, {params.steps_per_day}), got {time_of_day_step}")
    if not 0 <= weekday <= 6:
        raise ValueError(f"weekday must be in [0, 6] (Monday = 0), got {weekday}")
