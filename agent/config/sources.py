"""``sources:``: where sensor data comes from. Each entry's ``type:`` picks a plug-in (agent.sources)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field

from ..schema import StrictModel
from .uplink import BrokerConfig


class MqttSourceConfig(StrictModel):
    type: Literal["mqtt"]
    broker: BrokerConfig = Field(default_factory=lambda: BrokerConfig(host="127.0.0.1"),
                                 description="the device's local broker")
    topic_prefix: str = Field("sensors", pattern=r"^[A-Za-z0-9_/-]+$",
                              description="topics are {prefix}/{device}/{audio|camera|detector}/{sensor}")
    qos: Literal[0, 1] = Field(1, description="subscription QoS")
    queue_max: int = Field(2000, ge=10, le=1_000_000,
                           description="messages waiting for the worker; more are dropped and counted")
    queue_max_bytes: int = Field(32 << 20, ge=4 << 20, le=1 << 32,
                                 description="payload bytes waiting for the worker (>= one largest image, 2 MiB)")
    rate_limit: float | None = Field(None, gt=0, le=100_000, description="messages per second per sensor; more are "
                                     "dropped as 'rate_limited' (off when unset: the queue is fair between sensors)")
    rate_burst: int = Field(50, ge=1, le=100_000, description="messages a sensor may send at once above rate_limit")


class FilesSourceConfig(StrictModel):
    type: Literal["files"]
    audio: Path | None = Field(None, description="a WAV/FLAC file or a folder of them, played as microphone 'file'")
    images: Path | None = Field(None, description="a folder of JPEG/PNG crops, played as camera 'file'")
    detectors: Path | None = Field(None, description="a CSV of detector readings (see docs/mqtt.md)")
    rate: float = Field(1.0, ge=0, le=1000,
                        description="speed: 1 = real time, 4 = four times faster, 0 = as fast as possible")
    chunk_ms: int = Field(100, ge=10, le=1000, description="audio chunk length")
    image_interval_s: float = Field(1.0, gt=0, le=3600, description="stream seconds between two images")
    detector_interval_s: float = Field(1.0, gt=0, le=3600, description="stream seconds between two detector readings")


class MicSourceConfig(StrictModel):
    type: Literal["mic"]
    device: str | int | None = Field(None, description="sounddevice input device (name or index); default input if unset")
    chunk_ms: int = Field(100, ge=10, le=1000, description="audio chunk length")


SourceConfig = Annotated[Union[MqttSourceConfig, FilesSourceConfig, MicSourceConfig], Field(discriminator="type")]
