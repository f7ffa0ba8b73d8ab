"""``device:``: who this pole is, where its state lives, how its clock is trusted."""

from __future__ import annotations

import zoneinfo
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from ..schema import StrictModel

# Ids go into topics and into every alert id: short, and no MQTT wildcard or separator.
ID_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"


class DeviceSection(StrictModel):
    id: str = Field(pattern=ID_PATTERN, description="device id: topic level and alert id prefix (<= 32 chars)")
    site: str = Field(pattern=ID_PATTERN, description="site (street, junction) the device reports under")
    timezone: str = Field("UTC", description="IANA zone for day/night limits and detector time of day")
    state_dir: Path = Field(Path("/var/lib/roadside"),
                            description="outbox, boot counter and engine cache; relative paths are under the config's folder")
    time_quality: Literal["auto", "synced", "free_running"] = Field(
        "auto", description="'auto' asks the kernel (adjtimex) whether the clock is NTP/PTP-synchronised")
    max_sensors: int = Field(16, ge=1, le=1024, description="sensors per kind (audio, camera, detector) the agent "
                             "keeps state for; messages from more are dropped as 'too_many_sensors' (bounded memory)")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (IANA name expected, e.g. Europe/Berlin)") from None
        return v


class AudioInput(StrictModel):
    """What the microphones send; chunks in any other format are dropped and counted."""

    sample_rate: int = Field(16000, ge=8000, le=96000, description="Hz of every audio chunk")
    channels: int = Field(1, ge=1, le=8, description="interleaved channels per chunk (downmixed to mono)")
    max_chunk_seconds: float = Field(2.0, gt=0, le=10, description="longer chunks are refused (bounded memory)")
