"""The device config: one strict pydantic model per section (one file each), validated before anything starts.

``load_config`` refuses a file whole, each problem as ``line N: dotted.key: message (got value)``.
Relative paths in the file are read against the config file's folder, then against the
installed package's root (where ``agent/models/...`` ships).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import Field

from ..schema import StrictModel, load_yaml
from .device import AudioInput, DeviceSection
from .level import LevelSection, Limits
from .sources import FilesSourceConfig, MicSourceConfig, MqttSourceConfig, SourceConfig
from .tasks import (BackendConfig, ClassRule, CongestionTaskConfig, NoiseTaskConfig, OnnxBackendConfig, RuleConfig,
                    TasksSection, TensorRTBackendConfig, VehiclesTaskConfig)
from .uplink import BackoffConfig, BrokerConfig, OutboxSection, TlsConfig, UplinkSection

PACKAGE_ROOT = Path(__file__).resolve().parents[2]

__all__ = ["AgentConfig", "AudioInput", "BackendConfig", "BackoffConfig", "BrokerConfig", "ClassRule",
           "CongestionTaskConfig", "DeviceSection", "FilesSourceConfig", "LevelSection", "Limits", "MicSourceConfig",
           "MqttSourceConfig", "NoiseTaskConfig", "OnnxBackendConfig", "OutboxSection", "RuleConfig", "SourceConfig",
           "TasksSection", "TensorRTBackendConfig", "TlsConfig", "UplinkSection", "VehiclesTaskConfig",
           "config_hash", "load_config", "resolve"]


class HealthSection(StrictModel):
    log_every_s: float = Field(60.0, gt=0, description="at most one log line per malformed-input reason this often")


class AgentConfig(StrictModel):
    device: DeviceSection
    audio: AudioInput = AudioInput()
    sources: list[SourceConfig] = Field(min_length=1, description="sensor inputs; each entry's type: picks a plug-in")
    tasks: TasksSection = TasksSection()
    level: LevelSection | None = Field(None, description="sound level meter; off when absent")
    uplink: UplinkSection
    outbox: OutboxSection = OutboxSection()
    health: HealthSection = HealthSection()


def load_config(path: Path | str) -> AgentConfig:
    return load_yaml(path, AgentConfig)


def resolve(path: Path, config_path: Path | str | None) -> Path:
    """A path from the config: absolute as is; relative to the config's folder, else to the package root."""
    if path.is_absolute() or config_path is None:
        return path
    near = Path(config_path).resolve().parent / path
    if near.exists():
        return near
    shipped = PACKAGE_ROOT / path
    return shipped if shipped.exists() else near


def config_hash(cfg: AgentConfig) -> str:
    """First 16 hex of the sha256 of the canonical JSON config: alerts name the config they came from."""
    canon = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]
