"""Congestion forecast metrics (numpy only): the three states, the speed, and congestion warnings.

Every predictor (a model, persistence, the historical average) gives, for each evaluation
window, a state and a speed ``horizon`` steps after the window's last reading; all of them
are scored here, by the same code, on the same windows.

A window is (detector, t), t the row of its last reading: the time the forecast is issued.
Its target row is t + horizon.

- An **onset** is a target row r whose true state is congested after ``quiet`` readings
  (default 2 * horizon: 30 min) known and not congested: a new congestion, not the
  flicker of speeds hovering around the threshold.
- A forecast "congested" issued at s in [r - horizon, r] **catches** it; the lead time is
  r - s for the earliest such s (0 .. horizon steps). Caught *in advance* means a lead of
  at least one step: a forecast issued at the onset itself warns of nothing.
- An **alarm** is a forecast "congested" whose window one step earlier (same detector) did
  not forecast congestion or does not exist. It is **false** when no reading from s to
  s + 2 * horizon is congested (a warning may come early or a little late, not from nowhere).

Forecasts are scored raw, window by window, without the agent's smoothing rule.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from agent.features.detector import CONGESTED, SECONDS_PER_DAY, speed_state

from compression.metrics import classification_report


def state_grid(speeds: np.ndarray, params) -> np.ndarray:
    """(T, D) int64 state of every reading, -1 where it is missing."""
    ok = np.isfinite(speeds) & (speeds > 0)
    out = np.full(speeds.shape, -1, np.int64)
    out[ok] = speed_state(speeds[ok], params)
    return out


def forecast_metrics(pred_state: np.ndarray, pred_speed: np.ndarray, y_state: np.ndarray, y_speed: np.ndarray,
                     det: np.ndarray, t: np.ndarray, states: np.ndarray, horizon: int, step_s: int,
                     labels: Sequence[str], quiet: int | None = None) -> dict:
    """Classification report of the states, speed errors, and warnings (see the module's docstring).

    ``det`` indexes the columns of ``states`` (T, D) (from ``state_grid``), ``t`` its rows.
    """
    pred_state, det, t = np.asarray(pred_state), np.asarray(det), np.asarray(t)
    report = classification_report(y_state, pred_state, labels)
    err = np.asarray(pred_speed, np.float64) - np.asarray(y_speed, np.float64)
    report["speed"] = {"rmse_mph": float(np.sqrt(np.mean(err ** 2))) if err.size else 0.0,
                       "mae_mph": float(np.mean(np.abs(err))) if err.size else 0.0,
                       "bias_mph": float(np.mean(err)) if err.size else 0.0}
    c = report["per_class"][labels[CONGESTED]]
    report["congested"] = {"recall": c["recall"], "precision": c["precision"], "f1": c["f1"],
                           "support": c["support"]}
    report["warnings"] = warning_metrics(pred_state, y_state, det, t, states, horizon, step_s, quiet)
    return report


def warning_metrics(pred_state: np.ndarray, y_state: np.ndarray, det: np.ndarray, t: np.ndarray,
                    states: np.ndarray, horizon: int, step_s: int, quiet: int | None = None) -> dict:
    n_rows = states.shape[0]
    quiet = 2 * horizon if quiet is None else quiet
    if np.any(t + horizon >= n_rows) or np.any(t < 0):
        raise ValueError(f"window rows must satisfy 0 <= t and t + horizon < {n_rows} (the state grid's rows)")
    if quiet < 1:
        raise ValueError(f"quiet must be at least one reading, got {quiet}")
    forecast = np.full(states.shape, -1, np.int64)  # the state forecast issued at each (row, detector)
    forecast[t, det] = pred_state

    # onsets and the forecasts that catch them
    r = t + horizon
    rows = r[:, None] - np.arange(1, quiet + 1)[None, :]  # the readings before the target
    before = np.where(rows >= 0, states[np.maximum(rows, 0), det[:, None]], -1)
    onset = (np.asarray(y_state) == CONGESTED) & ((before >= 0) & (before != CONGESTED)).all(1)
    r_on, d_on = r[onset], det[onset]
    issued = r_on[:, None] - horizon + np.arange(horizon + 1)[None, :]  # s = r - horizon .. r, earliest first
    said = forecast[np.clip(issued, 0, n_rows - 1), d_on[:, None]] == CONGESTED
    said &= issued >= 0
    caught = said.any(1)
    lead_steps = horizon - said.argmax(1)  # the earliest s that said so
    lead_min = lead_steps[caught] * step_s / 60.0

    # alarms, and those with no congestion anywhere near
    congested = np.cumsum(np.vstack([np.zeros((1, states.shape[1]), np.int64), states == CONGESTED]), axis=0)
    prev = np.where(t >= 1, forecast[np.maximum(t - 1, 0), det], -1)
    alarm = (pred_state == CONGESTED) & (prev != CONGESTED)
    s, d = t[alarm], det[alarm]
    end = np.minimum(s + 2 * horizon, n_rows - 1)
    false = (congested[end + 1, d] - congested[s, d]) == 0
    detector_days = len(t) * step_s / SECONDS_PER_DAY

    n_on = int(onset.sum())
    return {
        "onset_quiet_min": quiet * step_s / 60.0,
        "onsets": n_on,
        "caught": int(caught.sum()),
        "caught_fraction": float(caught.mean()) if n_on else 0.0,
        "caught_in_advance_fraction": float((caught & (lead_steps >= 1)).mean()) if n_on else 0.0,
        "mean_lead_min": float(lead_min.mean()) if lead_min.size else 0.0,
        "median_lead_min": float(np.median(lead_min)) if lead_min.size else 0.0,
        "alarms": int(alarm.sum()),
        "false_alarms": int(false.sum()),
        "detector_days": float(detector_days),
        "false_alarms_per_detector_day": float(false.sum() / detector_days) if detector_days else 0.0,
    }


def macro_f1_of(cm: np.ndarray) -> np.ndarray:
    """Macro-F1 of (..., k, k) confusion matrices (rows truth), over the classes that occur in each."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    denom = cm.sum(-2) + cm.sum(-1)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return f1.sum(-1) / np.maximum((denom > 0).sum(-1), 1)


def _detector_draws(n_detectors: int, resamples: int, seed: int, size: int | None = None) -> np.ndarray:
    """(resamples, D): how many times each detector is drawn in each resample (with replacement), ``size``
    draws per resample (default D: the usual bootstrap)."""
    picks = np.random.default_rng(seed).integers(0, n_detectors, (resamples, size or n_detectors))
    return np.stack([np.bincount(row, minlength=n_detectors) for row in picks])


def detector_bootstrap(y_state: np.ndarray, pred: np.ndarray, ref: np.ndarray, det: np.ndarray, n_classes: int = 3,
                       resamples: int = 2000, seed: int = 0, threshold: float | None = None) -> dict:
    """Macro-F1 gain of ``pred`` over ``ref`` on the same windows, with a 95 % interval from resampling
    whole detectors with replacement: a detector's windows are not independent of each other, the
    detectors (roughly) are. ``threshold``: also the share of resamples whose gain reaches it."""
    dets, inverse = np.unique(det, return_inverse=True)
    cms = np.zeros((2, len(dets), n_classes, n_classes), np.int64)
    for k, p in enumerate((pred, ref)):
        np.add.at(cms[k], (inverse, y_state, p), 1)
    counts = _detector_draws(len(dets), resamples, seed)
    gains = macro_f1_of(np.einsum("rd,kdij->krij", counts, cms))
    gains = gains[0] - gains[1]
    point = macro_f1_of(cms.sum(1))
    out = {"gain": float(point[0] - point[1]), "detectors": len(dets), "resamples": resamples, "seed": seed,
           "ci95": [float(v) for v in np.percentile(gains, [2.5, 97.5])]}
    if threshold is not None:
        out["share_reaching"] = float((gains >= threshold).mean())
    return out


def rmse_bootstrap(pred_speed: np.ndarray, ref_speed: np.ndarray, y_speed: np.ndarray, det: np.ndarray,
                   resamples: int = 2000, seed: int = 0, max_rmse: float | None = None,
                   max_ratio: float | None = None) -> dict:
    """RMSE of ``pred_speed`` and its ratio to ``ref_speed``'s on the same windows, each with a 95 %
    interval from resampling whole detectors (as ``detector_bootstrap``). A few detectors with
    sudden breakdowns carry much of the squared error, so which detectors are held out moves the
    RMSE more than the window count suggests. ``max_rmse`` / ``max_ratio``: also the share of
    resamples within them. Windows without a known target speed are left out."""
    known = np.isfinite(y_speed)
    dets, inverse = np.unique(det[known], return_inverse=True)
    sse = np.zeros((2, len(dets)))
    for k, s in enumerate((pred_speed, ref_speed)):
        np.add.at(sse[k], inverse, (s[known] - y_speed[known]).astype(np.float64) ** 2)
    n = np.bincount(inverse, minlength=len(dets)).astype(np.float64)
    counts = _detector_draws(len(dets), resamples, seed)
    rmse = np.sqrt((counts @ sse.T) / (counts @ n)[:, None])  # (resamples, 2)
    ratio = rmse[:, 0] / rmse[:, 1]
    point = np.sqrt(sse.sum(1) / n.sum())
    out = {"rmse_mph": float(point[0]), "ratio": float(point[0] / point[1]), "detectors": len(dets),
           "resamples": resamples, "seed": seed,
           "rmse_ci95": [float(v) for v in np.percentile(rmse[:, 0], [2.5, 97.5])],
           "ratio_ci95": [float(v) for v in np.percentile(ratio, [2.5, 97.5])]}
    if max_rmse is not None:
        out["share_within_rmse"] = float((rmse[:, 0] <= max_rmse).mean())
    if max_ratio is not None:
        out["share_within_ratio"] = float((ratio <= max_ratio).mean())
    return out


def warning_curve(warn_at: dict, y_state: np.ndarray, det: np.ndarray, t: np.ndarray, states: np.ndarray,
                  horizon: int, step_s: int, base_state: np.ndarray | None = None, labels: Sequence[str] = ()) -> list:
    """One point per setting: ``warn_at`` maps a setting (a threshold) to the windows that warn.

    Each point has the warning figures (onsets caught, caught at least a step ahead, false alarms per
    detector-day) and, given ``base_state`` (the forecast's states) and ``labels``, the macro-F1 of the
    states with "congested" decided by the warning (a window that does not warn keeps its state, or
    "slowed" where the forecast said congested)."""
    points = []
    for setting, warn in warn_at.items():
        warn = np.asarray(warn, bool)
        w = warning_metrics(np.where(warn, CONGESTED, -1), y_state, det, t, states, horizon, step_s)
        point = {"setting": float(setting), "caught_fraction": w["caught_fraction"],
                 "caught_in_advance_fraction": w["caught_in_advance_fraction"],
                 "false_alarms_per_detector_day": w["false_alarms_per_detector_day"],
                 "mean_lead_min": w["mean_lead_min"], "onsets": w["onsets"]}
        if base_state is not None:
            pred = np.where(warn, CONGESTED, np.where(base_state == CONGESTED, CONGESTED - 1, base_state))
            point["macro_f1"] = classification_report(y_state, pred, list(labels))["macro_f1"]
        points.append(point)
    return points


def false_alarms_by_detector(warn: np.ndarray, y_state: np.ndarray, det: np.ndarray, t: np.ndarray,
                             states: np.ndarray, horizon: int, step_s: int) -> tuple[np.ndarray, np.ndarray]:
    """The detectors and, per detector, (false alarms, detector-days) of the warnings ``warn``."""
    dets = np.unique(det)
    per = []
    for d in dets:
        k = det == d
        m = warning_metrics(np.where(warn[k], CONGESTED, -1), y_state[k], det[k], t[k], states, horizon, step_s)
        per.append((m["false_alarms"], m["detector_days"]))
    return dets, np.asarray(per, np.float64)


def false_alarm_quantile(warn: np.ndarray, y_state: np.ndarray, det: np.ndarray, t: np.ndarray, states: np.ndarray,
                         horizon: int, step_s: int, q: float, resamples: int, seed: int,
                         group: int | None = None) -> float:
    """The ``q`` quantile of false alarms per detector-day over detector bootstrap resamples: a split of a
    few dozen detectors is a small sample, and a point chosen on it should meet its bound with room.

    ``group``: detectors per resample (default: as many as there are). The usual bootstrap says how well
    the mean over *these* detectors is known; a bound that must hold for a new group of ``group`` streets
    (a district, a held-out split) is judged on resamples of that size, whose rates spread wider the
    smaller the group is."""
    dets, per = false_alarms_by_detector(warn, y_state, det, t, states, horizon, step_s)
    draws = _detector_draws(len(dets), resamples, seed, group)
    return float(np.quantile(draws @ per[:, 0] / (draws @ per[:, 1]), q))


def choose_warning_point(curve: list, min_caught: float, max_false_alarms: float,
                         false_alarms: str = "false_alarms_per_detector_day") -> dict:
    """The point with the most onsets caught ahead among those within both bounds (false alarms read from
    the ``false_alarms`` key: the point estimate, or a bootstrap quantile); where none is, the one with
    the most caught ahead within the false-alarm bound (``meets_bounds`` false says so)."""
    ok = [p for p in curve if p["caught_fraction"] >= min_caught and p[false_alarms] <= max_false_alarms]
    pool = ok or [p for p in curve if p[false_alarms] <= max_false_alarms] or curve
    best = max(pool, key=lambda p: (p["caught_in_advance_fraction"], p["caught_fraction"], p["setting"]))
    return {**best, "meets_bounds": bool(ok)}
