"""``level:``: the sound level meter and its day/night limits."""

from __future__ import annotations

import datetime as dt

from pydantic import Field

from ..schema import StrictModel


class Limits(StrictModel):
    laeq_db: float | None = Field(None, ge=0, le=200, description="alert when a period's LAeq exceeds this")
    lafmax_db: float | None = Field(None, ge=0, le=200, description="alert when a period's LAFmax exceeds this")


class LevelSection(StrictModel):
    calibration_db: float = Field(0.0, ge=-50, le=200, description="dB SPL = dBFS + this (from a 94 dB calibrator)")
    period_s: int = Field(60, ge=1, le=3600, description="summary period (LAeq, LAFmax, L10, L90)")
    day: Limits = Limits()
    night: Limits = Limits()
    day_start: dt.time = Field(dt.time(7, 0), description="local time the day limits start")
    night_start: dt.time = Field(dt.time(23, 0), description="local time the night limits start")
