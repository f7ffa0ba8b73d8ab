"""Congestion state: loop-detector speeds -> 5-minute steps -> history window -> model -> rule.

Detectors send either one reading per step (``period_s`` = the contract's ``step_s``) or
30 s aggregates, which are averaged into steps here (weighted by vehicle count when
given). A step's time of day and weekday are local to the device's time zone, as the
training data's were. A missing or late step restarts that detector's history
(``DetectorWindow`` does, exactly like the training windows skip gaps).

A model whose contract carries a profile also gets each detector's usual speeds, which the
device learns from that detector's own readings day by day (``DetectorProfile``). They are
kept in ``profile_file`` (JSON, written atomically once an hour of the readings' clock and at each new
day) so a restart or a model update does not send the device back to its first day; a
file that cannot be read is logged and learning starts again, nothing else is affected.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import zoneinfo
from pathlib import Path

from ..backends.contract import ContractError
from ..config import ModelTaskConfig
from ..features.detector import CONGESTED, DetectorParams, DetectorParamsError, DetectorProfile, DetectorWindow
from ..features.warning import WarningPoint, warning_score
from ..payloads import DetectorReading, PayloadError
from ..rules import Rule, softmax
from . import Detection, LoadedModel, dry_run, frontend_params
from .registry import TaskSpec, register

import numpy as np

log = logging.getLogger("roadside.congestion")
SAVE_EVERY_MS = 3_600_000  # of the readings' time: at most an hour of learning lost to a power cut, and a
# few hundred KB an hour of flash writes however many detectors there are


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


class CongestionTaskConfig(ModelTaskConfig):
    pass


def _warning_point(contract, cfg: CongestionTaskConfig) -> WarningPoint | None:
    """The warning operating point the artefact carries (None for a model from before it did). The rule's
    congested threshold is the operator's to set; where it is not the model's point, say so once."""
    raw = contract.extra.get("warning")
    if raw is None:
        return None
    try:
        point = WarningPoint.from_dict(raw)
    except (ValueError, TypeError, AttributeError) as e:
        raise ContractError(f"{contract.model_path}: manifest warning: {e}") from None
    rule = cfg.rule.classes.get("congested")
    if rule is not None and rule.threshold != point.threshold:
        log.warning("tasks.congestion.rule.classes.congested.threshold %g is not the model's warning operating "
                    "point %g (chosen on its tuning split): warnings will come %s", rule.threshold, point.threshold,
                    "later and fewer" if rule.threshold > point.threshold else "earlier and more often")
    if rule is not None and point.release is not None and rule.release_threshold != point.release:
        log.warning("tasks.congestion.rule.classes.congested.release %g is not the model's warning release %g "
                    "(chosen on its tuning split): warnings will %s", rule.release_threshold, point.release,
                    "end sooner and start again more often" if rule.release_threshold > point.release
                    else "last longer")
    return point


class CongestionTask:
    kind = "congestion"
    consumes = "detector"
    frontend_kind = "detector"

    def __init__(self, cfg: CongestionTaskConfig, model: LoadedModel, input_rate: int = 0, timezone: str = "UTC",
                 profile_file: Path | None = None):
        contract = model.contract
        self.params = frontend_params(contract, DetectorParams.from_dict, (DetectorParamsError, TypeError))
        self.cfg, self.model = cfg, model
        self.tz = zoneinfo.ZoneInfo(timezone)
        Rule(cfg.rule, contract.labels, "tasks.congestion.rule")
        self.warning = _warning_point(contract, cfg)
        dry_run(model, np.zeros(self.params.n_features, np.float32))
        self._sensors: dict[str, tuple[DetectorWindow, _StepAggregator, Rule]] = {}
        self.profile_file = profile_file if self.params.uses_profile else None
        self._profiles = self._load_profiles()
        self._saved_at_ms: int | None = None  # time of the reading at the last save

    def _load_profiles(self) -> dict[str, DetectorProfile]:
        if self.profile_file is None or not self.profile_file.exists():
            return {}
        try:
            raw = json.loads(self.profile_file.read_text())
            sensors = raw["sensors"].items()
        except Exception as e:  # whatever is in the file, a profile is only worth relearning, never a crash
            log.warning("detector profiles %s not usable (%s: %s); learning them again", self.profile_file,
                        type(e).__name__, str(e)[:200])
            return {}
        out = {}
        for sensor, d in sensors:  # one bad profile is relearnt; the others are kept
            try:
                out[sensor] = DetectorProfile.from_dict(self.params, d)
            except Exception as e:
                log.warning("detector profile of %s in %s not usable (%s: %s); learning it again", str(sensor)[:64],
                            self.profile_file, type(e).__name__, str(e)[:200])
        return out

    def forget(self, sensor: str) -> None:
        """The sensor lost its slot (agent.sources.slots): its window, rule and profile go."""
        self._sensors.pop(sensor, None)
        self._profiles.pop(sensor, None)

    def save_profiles(self) -> None:
        """Write every detector's profile (atomically: a crash leaves the old file or the new one)."""
        if self.profile_file is None:
            return
        sensors = {s: prof.to_dict() for s, prof in self._profiles.items()}  # loaded, not reporting yet
        sensors.update({s: w.profile.to_dict() for s, (w, _, _) in self._sensors.items() if w.profile})
        data = {"frontend": self.params.to_dict(), "sensors": sensors}
        tmp = self.profile_file.with_name(self.profile_file.name + ".tmp")
        try:
            self.profile_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, separators=(",", ":")))
            os.replace(tmp, self.profile_file)
        except OSError as e:  # a full or read-only disk must not stop the forecasts
            log.warning("cannot save detector profiles to %s: %s", self.profile_file, e)

    def handle(self, r: DetectorReading) -> list[Detection]:
        p = self.params
        if r.sensor not in self._sensors:
            self._sensors[r.sensor] = (DetectorWindow(p, self._profiles.pop(r.sensor, None)),
                                       _StepAggregator(p.step_s * 1000), Rule(self.cfg.rule, self.model.contract.labels))
        window, agg, rule = self._sensors[r.sensor]
        if r.period_s == p.step_s:
            steps = [(r.ts_ms, r.speed_mph)]
        else:
            steps = agg.push(r)
        out = []
        for start_ms, speed in steps:
            local = dt.datetime.fromtimestamp(start_ms / 1000, self.tz)
            tod = (local.hour * 3600 + local.minute * 60 + local.second) // p.step_s
            day = local.date().toordinal()
            new_day = window.profile is not None and bool(window.profile.days) and day > window.profile.days[-1]
            x = window.push(speed, tod, local.weekday(), day)
            if window.profile is not None and (new_day or self._saved_at_ms is None
                                               or start_ms - self._saved_at_ms >= SAVE_EVERY_MS):
                self.save_profiles()
                self._saved_at_ms = start_ms
            if x is None:
                continue
            probs = softmax(self.model.backend.run(x[None])[0])
            if self.warning is not None:  # the artefact's operating point: also warn while congested now
                probs[CONGESTED] = warning_score(probs[CONGESTED], speed, self.warning, p.congested_mph)
            end_ms = start_ms + p.step_s * 1000
            for ev in rule.update(probs, end_ms - p.history_steps * p.step_s * 1000, end_ms):
                out.append(Detection(self.kind, r.sensor, ev.cls, ev.confidence, ev.end_ms,
                                     ev.end_ms - ev.start_ms, self.model.info, {"speed": speed}))
        return out


def _build(cfg: CongestionTaskConfig, model: LoadedModel, ctx) -> CongestionTask:
    # the detectors' learnt usual speeds are kept in the state folder: they survive restarts and updates
    return CongestionTask(cfg, model, ctx.sample_rate, timezone=ctx.timezone,
                          profile_file=ctx.state_dir / "detector_profiles.json")


register(TaskSpec("congestion", CongestionTask.consumes, CongestionTaskConfig, frontend=CongestionTask.frontend_kind,
                  factory=_build))
