"""Congestion warnings: operating curves of the model and both baselines, and the operating point.

A warning is what the pole sends ahead of a jam (``agent/features/warning.py`` decides it, here and
on the device: the congestion rule's own hysteresis, run over the recorded windows). Each predictor
has a curve: the model over thresholds of P(congested 15 min ahead) and release points, persistence
over the current speed, the historical average over its usual speed. The operating point comes from
the recipe (``warning.threshold``, ``warning.release``), chosen by a tuning run
(``data.tuning_split=true``) with ``choose_warning_point``, its false alarms bounded at a detector
bootstrap quantile; the held-out detectors' curve is reported, never used to choose.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.features.detector import CONGESTED
from agent.features.warning import WarningPoint, warning_score, warning_states

from compression.chain.plots import _pyplot
from compression.tasks.congestion.metrics import (choose_warning_point, false_alarm_quantile, false_alarms_by_detector,
                                                  warning_curve)

LABELS = ["free", "slowed", "congested"]


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _curve(es, warn_at: dict, base: np.ndarray | None) -> list:
    w, p = es.windows, es.params
    return warning_curve(warn_at, w.y_state, w.det, w.t, es.states, p.horizon_steps, p.step_s, base, LABELS)


def _model_score(es, logits: np.ndarray, point: WarningPoint) -> np.ndarray:
    p_congested = _softmax(logits)[:, CONGESTED]
    return warning_score(p_congested, es.baselines["persistence"][1], point, es.params.congested_mph)


def _states(es, score: np.ndarray, point: WarningPoint) -> np.ndarray:
    return warning_states(score, es.windows.det, es.windows.t, point)


def at_operating_point(es, logits: np.ndarray, point: WarningPoint) -> dict:
    """The warning figures of the model on ``es`` at ``point`` (what ``roadside eval`` prints)."""
    score = _model_score(es, logits, point)
    warn = _states(es, score, point)
    return {**_curve(es, {point.threshold: warn}, logits.argmax(1))[0], "release": point.release_at,
            "warning_share": float(warn.mean()), "false_alarms_by_detector": _by_detector(es, warn)}


def _by_detector(es, warn: np.ndarray) -> dict:
    """Per detector: [false alarms, detector-days] of ``warn`` (how the streets differ; a report's raw figures
    for any group-size question asked later)."""
    w, p = es.windows, es.params
    dets, per = false_alarms_by_detector(warn, w.y_state, w.det, w.t, es.states, p.horizon_steps, p.step_s)
    return {str(es.table.ids[d]): [int(fa), round(float(days), 4)] for d, (fa, days) in zip(dets, per)}


def model_curve(cfg, es, logits: np.ndarray, seed: int) -> list[dict]:
    """One point per threshold and release (a fraction of the threshold), each with its false alarms'
    detector bootstrap quantile (``false_alarms_upper``)."""
    score = _model_score(es, logits, WarningPoint(cfg.threshold, cfg.congested_now))
    w, p = es.windows, es.params
    points = []
    for th in cfg.sweep:
        for fraction in cfg.release_fractions:
            warn = _states(es, score, WarningPoint(th, cfg.congested_now, round(th * fraction, 6)))
            point = _curve(es, {th: warn}, logits.argmax(1))[0]
            point["release"] = round(th * fraction, 6)
            point["warning_share"] = float(warn.mean())  # of the windows: a warning on all day warns of nothing
            point["false_alarms_upper"] = false_alarm_quantile(
                warn, w.y_state, w.det, w.t, es.states, p.horizon_steps, p.step_s, cfg.false_alarm_quantile,
                cfg.bootstrap_resamples, seed, cfg.false_alarm_group)
            points.append(point)
    return points


def warning_report(recipe, es, logits: np.ndarray) -> dict:
    """Curves, the recipe's operating point measured on ``es``, and the point a tuning run would choose here."""
    cfg = recipe.warning
    point = WarningPoint(cfg.threshold, cfg.congested_now, cfg.release)
    model = model_curve(cfg, es, logits, recipe.seed)
    speeds = {"persistence": es.baselines["persistence"][1], "historical_average": es.baselines["historical_average"][1]}
    curves = {"model": model, **{name: _curve(es, {mph: _below(s, mph) for mph in cfg.baseline_sweep_mph}, None)
                                 for name, s in speeds.items()}}
    at_point = at_operating_point(es, logits, point)
    bounds = {"min_caught": cfg.min_caught, "max_false_alarms_per_detector_day": cfg.max_false_alarms_per_detector_day,
              "false_alarms_judged_at": f"the {cfg.false_alarm_quantile:g} quantile over "
                                        f"{cfg.bootstrap_resamples} detector resamples"
                                        + (f" of {cfg.false_alarm_group} detectors" if cfg.false_alarm_group else "")}
    return {
        "operating_point": point.to_dict(),
        "at_operating_point": at_point,
        "meets_bounds": at_point["caught_fraction"] >= cfg.min_caught
        and at_point["false_alarms_per_detector_day"] <= cfg.max_false_alarms_per_detector_day,
        "bounds": bounds,
        # on a tuning split this is the choice to copy into warning.threshold; on held-out detectors, a diagnostic
        "chosen_on_this_split": choose_warning_point(model, cfg.min_caught, cfg.max_false_alarms_per_detector_day,
                                                     "false_alarms_upper"),
        "curves": curves,
    }


def _below(speed: np.ndarray, mph: float) -> np.ndarray:
    s = np.asarray(speed, np.float64)
    return np.isfinite(s) & (s > 0) & (s < mph)


def plot_warning_curves(warnings: dict, path: Path, title: str) -> Path:
    """Onsets caught at least a step ahead against false alarms per detector-day, each predictor's curve,
    the operating point marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, pts in warnings["curves"].items():
        by_release: dict = {}
        for q in pts:  # the model's points, one line per release fraction
            by_release.setdefault(round(q["release"] / q["setting"], 2) if "release" in q else None, []).append(q)
        for fraction, line in by_release.items():
            line = sorted(line, key=lambda q: q["false_alarms_per_detector_day"])
            label = name.replace("_", " ") + ("" if fraction is None else f", release {fraction:g} x threshold")
            ax.plot([q["false_alarms_per_detector_day"] for q in line],
                    [q["caught_in_advance_fraction"] for q in line], marker="o", ms=3, label=label)
    op = warnings["at_operating_point"]
    ax.plot(op["false_alarms_per_detector_day"], op["caught_in_advance_fraction"], "k*", ms=12,
            label=f"operating point (P >= {op['setting']:g}, release {op['release']:g}): "
                  f"caught {op['caught_fraction']:.0%}")
    b = warnings["bounds"]
    ax.axvline(b["max_false_alarms_per_detector_day"], color="grey", ls=":", lw=1)
    ax.set_xlabel("false alarms per detector-day")
    ax.set_ylabel("jam onsets caught >= 5 min ahead")
    ax.set_xlim(0, max(3.0, b["max_false_alarms_per_detector_day"] * 2))
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
