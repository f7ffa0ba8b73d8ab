"""``device:``: who this pole is, where its state lives, how its clock is trusted."""

from __future__ import annotations

import re
import zoneinfo
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..schema import StrictModel

# Ids go into topics and into every alert id: short, and no MQTT wildcard or separator.
ID_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"
SENSOR_PATTERN = r"[^/+#\x00]{1,64}"  # a topic level the agent subscribes with '+'


class Location(StrictModel):
    """Where the pole stands (WGS84); the city console draws its schematic map from it."""

    lat: float = Field(ge=-90, le=90, description="latitude, degrees north (-90..90)")
    lon: float = Field(ge=-180, le=180, description="longitude, degrees east (-180..180)")


class DeviceSection(StrictModel):
    id: str = Field(pattern=ID_PATTERN, description="device id: topic level and alert id prefix (<= 32 chars)")
    site: str = Field(pattern=ID_PATTERN, description="site (street, junction) the device reports under")
    timezone: str = Field("UTC", description="IANA zone for day/night limits and detector time of day")
    state_dir: Path = Field(Path("/var/lib/roadside"),
                            description="outbox, boot counter and engine cache; relative paths are under the config's folder")
    time_quality: Literal["auto", "synced", "free_running"] = Field(
        "auto", description="'auto' asks the kernel (adjtimex) whether the clock is NTP/PTP-synchronised")
    location: Location | None = Field(None, description="the pole's coordinates, sent in the retained state "
                                      "message as 'loc' (optional; for the city's map)")
    max_sensors: int = Field(16, ge=1, le=1024, description="sensors per kind (audio, camera, detector) the agent "
                             "keeps state for; messages from more are dropped as 'too_many_sensors' (bounded memory)")
    sensors: dict[Literal["audio", "camera", "detector"], list[str]] = Field(
        default_factory=dict, description="this pole's sensors by kind, e.g. {audio: [mic0]}: each always has its "
        "slot (part of max_sensors) and its own share of the input queue, whatever other senders do")
    unknown_sensors: Literal["accept", "refuse"] = Field(
        "accept", description="sensors not listed in 'sensors': 'accept' shares the slots left (the one idle longest "
        "gives way after sensor_idle_s), 'refuse' drops them as 'unknown_sensor'")
    sensor_idle_s: float = Field(300.0, gt=0, le=86400, description="an unlisted sensor silent this long may lose "
                                 "its slot (and state) to a new one")

    @model_validator(mode="after")
    def _slots_fit(self):
        for kind, names in self.sensors.items():
            bad = [n for n in names if not re.fullmatch(SENSOR_PATTERN, n)]
            if bad:
                raise ValueError(f"sensors.{kind}: {[n[:20] for n in bad[:3]]} not sensor names "
                                 "(1..64 characters, no / + #)")
            if len(set(names)) > self.max_sensors:
                raise ValueError(f"sensors.{kind}: {len(set(names))} sensors listed, more than max_sensors "
                                 f"({self.max_sensors})")
        return self

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
