"""Congestion state: loop-detector speeds -> 5-minute steps -> history window -> model -> rule.

Detectors send either one reading per step (``period_s`` = the contract's ``step_s``) or
30 s aggregates, which are averaged into steps here (weighted by vehicle count when
given). A step's time of day and weekday are local to the device's time zone, as the
training data's were. A missing or late step restarts that detector's history
(``DetectorWindow`` does, exactly like the training windows skip gaps).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

from ..backends.contract import ContractError
from ..config import CongestionTaskConfig
from ..features.detector import DetectorParams, DetectorParamsError, DetectorWindow
from ..payloads import DetectorReading, PayloadError
from ..rules import Rule, softmax
from . import Detection, LoadedModel, check_frontend, dry_run

import numpy as np


class _StepAggregator:
    """Averages sub-step readings into one per step; yields a step once a later step starts."""

    def __init__(self, step_ms: int):
        self.step_ms = step_ms
        self.bucket: int | None = None
        self.sum = self.weight = 0.0

    def push(self, r: DetectorReading) -> list[tuple[int, float | None]]:
        bucket = r.ts_ms // self.step_ms
        out = []
        if self.bucket is not None and bucket < self.bucket:
            raise PayloadError("out_of_order", f"reading at {r.ts_ms} is older than the current step")
        if self.bucket is not None and bucket != self.bucket:
            out.append((self.bucket * self.step_ms, self.sum / self.weight if self.weight else None))
            self.sum = self.weight = 0.0
        self.bucket = bucket
        if r.speed_mph is not None and r.speed_mph > 0:
            w = float(r.count) if r.count else 1.0
            self.sum += w * r.speed_mph
            self.weight += w
        return out


class CongestionTask:
    kind = "congestion"
    consumes = "detector"
    frontend_kind = "detector"

    def __init__(self, cfg: CongestionTaskConfig, model: LoadedModel, input_rate: int = 0, timezone: str = "UTC"):
        contract = model.contract
        try:
            self.params = DetectorParams.from_dict(contract.frontend)
        except (DetectorParamsError, TypeError) as e:
            raise ContractError(f"{contract.model_path}: frontend: {e}") from None
        check_frontend(contract, self.params)
        self.cfg, self.model = cfg, model
        self.tz = zoneinfo.ZoneInfo(timezone)
        Rule(cfg.rule, contract.labels, "tasks.congestion.rule")
        dry_run(model, np.zeros(self.params.n_features, np.float32))
        self._sensors: dict[str, tuple[DetectorWindow, _StepAggregator, Rule]] = {}

    def handle(self, r: DetectorReading) -> list[Detection]:
        p = self.params
        if r.sensor not in self._sensors:
            self._sensors[r.sensor] = (DetectorWindow(p), _StepAggregator(p.step_s * 1000),
                                       Rule(self.cfg.rule, self.model.contract.labels))
        window, agg, rule = self._sensors[r.sensor]
        if r.period_s == p.step_s:
            steps = [(r.ts_ms, r.speed_mph)]
        else:
            steps = agg.push(r)
        out = []
        for start_ms, speed in steps:
            local = dt.datetime.fromtimestamp(start_ms / 1000, self.tz)
            tod = (local.hour * 3600 + local.minute * 60 + local.second) // p.step_s
            x = window.push(speed, tod, local.weekday())
            if x is None:
                continue
            probs = softmax(self.model.backend.run(x[None])[0])
            end_ms = start_ms + p.step_s * 1000
            for ev in rule.update(probs, end_ms - p.history_steps * p.step_s * 1000, end_ms):
                out.append(Detection(self.kind, r.sensor, ev.cls, ev.confidence, ev.end_ms,
                                     ev.end_ms - ev.start_ms, self.model.info, {"speed": speed}))
        return out
