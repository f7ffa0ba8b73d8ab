"""Congestion evaluation (numpy only): held-out detectors, evaluation days, and two baselines beside the model.

The evaluation windows are those of the given detectors whose forecast is issued in the
last ``eval_days`` days of the table. Two baselines forecast the same windows:
- persistence: the state (and speed) in ``horizon`` steps is the one now;
- historical average: the detector's mean speed at the target's time of day and day type
  (weekday / weekend), computed from the days before the evaluation days only.
``roadside eval`` on a speed CSV runs this on every detector the model was not trained on
(its manifest lists them), so the numbers it prints are those of unseen detectors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from agent.features.detector import STATES, DetectorParams, forget_profile, speed_state
from agent.features.warning import WarningPoint

from compression.tasks.congestion import traffic
from compression.tasks.congestion.metrics import detector_bootstrap, forecast_metrics, rmse_bootstrap, state_grid
from compression.tasks.congestion.warning import at_operating_point

# (B, n_features) float32 -> (logits (B, 3), speed in mph (B,) or None for a model without a speed head)
Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]
BASELINES = ("persistence", "historical_average")


@dataclass(frozen=True)
class Windows:
    X: np.ndarray        # (N, n_features) float32, the front-end's vectors
    y_state: np.ndarray  # (N,) int64 true state at the target row
    y_speed: np.ndarray  # (N,) float32 true speed at the target row, mph
    det: np.ndarray      # (N,) int64 column of the detector in the table
    t: np.ndarray        # (N,) int64 row of the last reading (when the forecast is issued)

    def __len__(self) -> int:
        return len(self.t)

    def subset(self, keep: np.ndarray) -> Windows:
        return Windows(self.X[keep], self.y_state[keep], self.y_speed[keep], self.det[keep], self.t[keep])


def windows(table: traffic.SpeedTable, detector_ids: Sequence[str], params: DetectorParams,
            usual: np.ndarray | None = None) -> Windows:
    return Windows(*traffic.detector_windows(table, detector_ids, params, usual))


def training_windows(table: traffic.SpeedTable, detector_ids: Sequence[str], params: DetectorParams,
                     eval_start: int) -> Windows:
    """Windows whose target lies before the evaluation days (training time). With a profile,
    each window's usual speeds come from the other whole training days of its detector."""
    usual = (traffic.usual_speed_tables(table, params, training_days=eval_start // traffic.STEPS_PER_DAY)
             if params.uses_profile else None)
    w = windows(table, detector_ids, params, usual)
    return w.subset(w.t + params.horizon_steps < eval_start)


@dataclass(frozen=True)
class EvalSet:
    table: traffic.SpeedTable
    params: DetectorParams
    eval_start: int                   # first row of the evaluation days
    detectors: tuple[str, ...]        # evaluated detectors
    windows: Windows
    states: np.ndarray                # (T, D) state of every reading, -1 where missing
    baselines: dict[str, tuple[np.ndarray, np.ndarray]] = field(repr=False)  # name -> (state, speed)
    skipped_detectors: tuple[str, ...] = ()  # no reading before the evaluation days: no historical average

    def score(self, pred_state: np.ndarray, pred_speed: np.ndarray | None) -> dict:
        w, p = self.windows, self.params
        speed = w.y_speed if pred_speed is None else pred_speed
        out = forecast_metrics(pred_state, speed, w.y_state, w.y_speed, w.det, w.t, self.states,
                               p.horizon_steps, p.step_s, STATES)
        if pred_speed is None:
            out["speed"] = None
        return out

    def score_without_profile(self, predict: Predict) -> dict:
        """The same windows with the usual speeds unknown: a device in its first days."""
        logits, speed = predict_all(predict, forget_profile(self.windows.X, self.params))
        out = self.score(logits.argmax(1), speed)
        return {"macro_f1": out["macro_f1"], "congested": out["congested"], "speed": out["speed"]}

    def profile_known(self) -> float:
        """Share of the windows whose usual speeds were known."""
        return float(self.windows.X[:, -1].mean()) if self.params.uses_profile else 0.0

    def describe(self) -> dict:
        return {"eval_days": (self.table.speeds.shape[0] - self.eval_start) // self.params.steps_per_day,
                "eval_start_row": self.eval_start, "rows": int(self.table.speeds.shape[0]),
                "detectors": len(self.detectors), "windows": len(self.windows),
                "skipped_detectors": list(self.skipped_detectors),
                **({"profile_known_fraction": self.profile_known()} if self.params.uses_profile else {})}


def pool_eval_sets(sets: Sequence[EvalSet]) -> EvalSet:
    """One evaluation set from several over the same table and days with disjoint detectors (cross-fitting):
    windows index the table's columns, so the state grid is shared and the windows simply stack."""
    first = sets[0]
    if any(s.table is not first.table or s.eval_start != first.eval_start for s in sets):
        raise ValueError("pooled evaluation sets must share the speed table and the evaluation days")
    dets = [d for s in sets for d in s.detectors]
    if len(set(dets)) != len(dets):
        raise ValueError("pooled evaluation sets must not share a detector")
    stack = lambda f: np.concatenate([f(s) for s in sets])  # noqa: E731
    w = Windows(stack(lambda s: s.windows.X), stack(lambda s: s.windows.y_state), stack(lambda s: s.windows.y_speed),
                stack(lambda s: s.windows.det), stack(lambda s: s.windows.t))
    baselines = {name: (stack(lambda s: s.baselines[name][0]), stack(lambda s: s.baselines[name][1]))
                 for name in first.baselines}
    return EvalSet(first.table, first.params, first.eval_start, tuple(dets), w, first.states, baselines,
                   tuple(d for s in sets for d in s.skipped_detectors))


def build_eval_set(table: traffic.SpeedTable, detector_ids: Sequence[str], params: DetectorParams,
                   eval_days: int) -> EvalSet:
    start = traffic.eval_start_row(table.speeds.shape[0], eval_days)
    ha = traffic.historical_average(table, start)
    cols = [table.ids.index(d) for d in detector_ids]
    skipped = tuple(d for d, c in zip(detector_ids, cols) if np.isnan(ha[:, :, c]).any())
    kept = [d for d in detector_ids if d not in skipped]
    # a device learns its detector's usual speeds from every day before today, evaluation days included
    w = windows(table, kept, params, traffic.usual_speed_tables(table, params) if params.uses_profile else None)
    w = w.subset(w.t >= start)
    if len(w) == 0:
        raise ValueError(f"{table.path}: no gap-free window of {params.history_steps} + {params.horizon_steps} "
                         f"readings in the last {eval_days} day(s) of the {len(kept)} evaluated detector(s)")
    target = w.t + params.horizon_steps
    now = table.speeds[w.t, w.det]
    hist = ha[traffic.is_weekend(table.weekday[target]).astype(np.int64), table.time_of_day[target], w.det]
    baselines = {"persistence": (speed_state(now, params).reshape(-1), now.astype(np.float32)),
                 "historical_average": (speed_state(hist, params).reshape(-1), hist.astype(np.float32))}
    return EvalSet(table, params, start, tuple(kept), w, state_grid(table.speeds, params), baselines, skipped)


def predict_all(predict: Predict, X: np.ndarray, batch: int = 4096) -> tuple[np.ndarray, np.ndarray | None]:
    logits, speeds = [], []
    for i in range(0, len(X), batch):
        lg, sp = predict(X[i:i + batch])
        logits.append(np.asarray(lg, np.float32))
        speeds.append(None if sp is None else np.asarray(sp, np.float32).reshape(-1))
    has_speed = all(s is not None for s in speeds)
    return np.concatenate(logits), (np.concatenate(speeds) if has_speed else None)


def score_with_baselines(predict: Predict, es: EvalSet) -> dict:
    """The model's metrics, with the baselines' on the same windows under ``baselines``; for a
    model with a profile, also as a device in its first days would score (``without_profile``)."""
    logits, speed = predict_all(predict, es.windows.X)
    result = es.score(logits.argmax(1), speed)
    if es.params.uses_profile:
        result["without_profile"] = es.score_without_profile(predict)
    result["baselines"] = {name: es.score(*es.baselines[name]) for name in BASELINES}
    result["evaluation"] = es.describe()
    result["logits"], result["speed_forecast"] = logits, speed  # for agreement between stages; not in JSON
    return result


def onnx_predict(session) -> Predict:
    """Both heads of an onnxruntime session: ``logits`` and, when the model has it, ``speed``."""
    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    wanted = ["logits"] + (["speed"] if "speed" in names else [])

    def run(x: np.ndarray):
        out = session.run(wanted, {input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return out[0], (out[1] if len(out) > 1 else None)

    return run


def evaluate_congestion(scorer, path: Path, include_training: bool = False) -> dict:
    """``roadside eval`` for congestion: ``path`` is a speed CSV shaped like los_speed.csv.

    Detectors the model was trained on (its manifest's ``evaluation.train_detectors``) are
    left out and counted; the evaluation days come from the manifest too (default 2).
    ``include_training`` also scores the training detectors, apart, under ``training_detectors``: the
    same evaluation days, which no training window reached, on streets the model learnt from. Set
    beside the held-out figures, it says whether a gap is the model or the streets.
    """
    params = DetectorParams.from_dict(scorer.frontend)
    table = traffic.load_speeds(path)
    evaluation = (getattr(scorer, "manifest", None) or {}).get("evaluation", {})
    seen = set(evaluation.get("train_detectors", []))
    detectors = [d for d in table.ids if d not in seen]
    if not detectors:
        raise ValueError(f"{path}: every detector in it was used to train the model; nothing unseen to evaluate")
    eval_days = int(evaluation.get("eval_days", 2))
    es = build_eval_set(table, detectors, params, eval_days)
    predict = _predict(scorer)
    result = score_with_baselines(predict, es)
    result["evaluation"]["excluded_training_detectors"] = len(table.ids) - len(detectors)
    logits = result.pop("logits")
    point = (getattr(scorer, "manifest", None) or {}).get("warning")
    if point is not None:  # the warning the pole sends, at the operating point the artefact carries
        result["warning_at_operating_point"] = _warnings_at(es, logits, point)
    result["detector_bootstrap"] = bootstrap_vs_persistence(es, logits.argmax(1), result.pop("speed_forecast"))
    trained = [d for d in table.ids if d in seen]
    if include_training and trained:
        result["training_detectors"] = _training_detectors(predict, build_eval_set(table, trained, params, eval_days),
                                                           point)
    return result


def _predict(scorer) -> Predict:
    outputs = getattr(scorer, "outputs", None)  # every named output; a model without them gives logits only

    def predict(x: np.ndarray):
        if outputs is None:
            return scorer.logits(x), None
        named = outputs(x)
        return named["logits"], named.get("speed")

    return predict


def _warnings_at(es: EvalSet, logits: np.ndarray, point: dict) -> dict:
    wp = WarningPoint.from_dict(point)
    return {**wp.to_dict(), **at_operating_point(es, logits, wp)}


def _training_detectors(predict: Predict, es: EvalSet, point: dict | None) -> dict:
    logits, speed = predict_all(predict, es.windows.X)
    out = {"why": "detectors the model trained on, scored on the evaluation days (no training window reached "
                  "them): not an evaluation of unseen streets", **es.score(logits.argmax(1), speed),
           "evaluation": es.describe()}
    if point is not None:
        out["warning_at_operating_point"] = _warnings_at(es, logits, point)
    return out


def bootstrap_vs_persistence(es: EvalSet, pred_state: np.ndarray, pred_speed: np.ndarray | None, seed: int = 0,
                             targets=None) -> dict:
    """How much the gains over persistence depend on which detectors these are (whole detectors
    resampled): the macro-F1 gain and, with a speed forecast, the RMSE and its ratio. ``targets``
    (a recipe's TargetsSection): also the share of resamples reaching each target."""
    p_state, p_speed = es.baselines["persistence"]
    w = es.windows
    out = {"macro_f1_gain_over_persistence": detector_bootstrap(
        w.y_state, pred_state, p_state, w.det, seed=seed, threshold=targets.f1_gain if targets else None)}
    if pred_speed is not None:
        out["speed_vs_persistence"] = rmse_bootstrap(
            pred_speed, p_speed, w.y_speed, w.det, seed=seed, max_rmse=targets.rmse_mph if targets else None,
            max_ratio=targets.rmse_ratio if targets else None)
    return out
