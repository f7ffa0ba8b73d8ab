"""Congestion warnings: operating curves of the model and both baselines, and the operating point.

A warning is what the pole sends ahead of a jam (``agent/features/warning.py`` decides it, here and
on the device). Each predictor has a curve: the model over thresholds of P(congested 15 min ahead),
persistence over the current speed, the historical average over its usual speed. The operating
point comes from the recipe (``warning.threshold``), chosen by a tuning run
(``data.tuning_split=true``) with ``choose_warning_point``; the held-out detectors' curve is
reported, never used to choose.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.features.detector import CONGESTED
from agent.features.warning import WarningPoint, warning_score

from compression.chain.plots import _pyplot
from compression.tasks.congestion.metrics import choose_warning_point, warning_curve

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


def at_operating_point(es, logits: np.ndarray, point: WarningPoint) -> dict:
    """The warning figures of the model on ``es`` at ``point`` (what ``roadside eval`` prints)."""
    score = _model_score(es, logits, point)
    return _curve(es, {point.threshold: score >= point.threshold}, logits.argmax(1))[0]


def warning_report(recipe, es, logits: np.ndarray) -> dict:
    """Curves, the recipe's operating point measured on ``es``, and the point a tuning run would choose here."""
    cfg = recipe.warning
    point = WarningPoint(cfg.threshold, cfg.congested_now)
    score = _model_score(es, logits, point)
    model = _curve(es, {th: score >= th for th in cfg.sweep}, logits.argmax(1))
    speeds = {"persistence": es.baselines["persistence"][1], "historical_average": es.baselines["historical_average"][1]}
    curves = {"model": model, **{name: _curve(es, {mph: _below(s, mph) for mph in cfg.baseline_sweep_mph}, None)
                                 for name, s in speeds.items()}}
    at_point = at_operating_point(es, logits, point)
    bounds = {"min_caught": cfg.min_caught, "max_false_alarms_per_detector_day": cfg.max_false_alarms_per_detector_day}
    return {
        "operating_point": point.to_dict(),
        "at_operating_point": at_point,
        "meets_bounds": at_point["caught_fraction"] >= cfg.min_caught
        and at_point["false_alarms_per_detector_day"] <= cfg.max_false_alarms_per_detector_day,
        "bounds": bounds,
        # on a tuning split this is the choice to copy into warning.threshold; on held-out detectors, a diagnostic
        "chosen_on_this_split": choose_warning_point(model, cfg.min_caught, cfg.max_false_alarms_per_detector_day),
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
        pts = sorted(pts, key=lambda q: q["false_alarms_per_detector_day"])
        ax.plot([q["false_alarms_per_detector_day"] for q in pts], [q["caught_in_advance_fraction"] for q in pts],
                marker="o", ms=3, label=name.replace("_", " "))
    op = warnings["at_operating_point"]
    ax.plot(op["false_alarms_per_detector_day"], op["caught_in_advance_fraction"], "k*", ms=12,
            label=f"operating point (P >= {op['setting']:g}): caught {op['caught_fraction']:.0%}")
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
