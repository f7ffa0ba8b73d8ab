"""Sound level: audio chunks -> A-weighted meter -> LAeq, LAFmax, L10, L90 per period, and limit alerts.

Periods are counted in audio time (samples), so a replay at any speed gives the same
summaries. The limit in force is the day or night one at the period's end, local time.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo

from ..config import LevelSection, Limits
from ..features.level import SoundLevelMeter
from ..payloads import AudioChunk
from . import Detection, LevelReport
from .registry import TaskSpec, register


class LevelTask:
    kind = "level"
    consumes = "audio"

    def __init__(self, cfg: LevelSection, input_rate: int, timezone: str = "UTC"):
        self.cfg, self.input_rate = cfg, input_rate
        self.tz = zoneinfo.ZoneInfo(timezone)
        self._meters: dict[str, list] = {}  # sensor -> [meter, samples in this period]

    def period_at(self, ts_ms: float) -> tuple[str, Limits]:
        t = dt.datetime.fromtimestamp(ts_ms / 1000, self.tz).time()
        start, end = self.cfg.day_start, self.cfg.night_start
        day = start <= t < end if start < end else not (end <= t < start)
        return ("day", self.cfg.day) if day else ("night", self.cfg.night)

    def forget(self, sensor: str) -> None:
        self._meters.pop(sensor, None)

    def handle(self, chunk: AudioChunk) -> list[Detection | LevelReport]:
        state = self._meters.get(chunk.sensor)
        if state is None:
            state = self._meters[chunk.sensor] = [SoundLevelMeter(self.input_rate, self.cfg.calibration_db), 0]
        meter = state[0]
        meter.process(chunk.samples)
        state[1] += chunk.samples.size
        if state[1] < self.cfg.period_s * self.input_rate:  # counted here: summary() sorts, too dear per chunk
            return []
        state[1] = 0
        s = meter.summary(reset=True)
        ts = int(round(chunk.capture_ms + 1000.0 * chunk.samples.size / self.input_rate))
        name, limits = self.period_at(ts)
        out: list[Detection | LevelReport] = [LevelReport(chunk.sensor, ts, s, limits.laeq_db, name)]
        for metric, value, limit in (("laeq", s.laeq, limits.laeq_db), ("lafmax", s.lafmax, limits.lafmax_db)):
            if limit is not None and value > limit:
                out.append(Detection(self.kind, chunk.sensor, f"{metric}_{name}", 1.0, ts, int(s.seconds * 1000),
                                     None, {metric: value, "lim": limit}))
        return out


# no model; configured in the top-level ``level:`` section, as it always was
register(TaskSpec("level", LevelTask.consumes, LevelSection, section="level",
                  factory=lambda cfg, model, ctx: LevelTask(cfg, ctx.sample_rate, ctx.timezone)))
