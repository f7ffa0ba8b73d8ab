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

from ..schema import ConfigError, StrictModel, load_yaml
from .device import AudioInput, DeviceSection
from .level import LevelSection, Limits
from .sources import FilesSourceConfig, MicSourceConfig, MqttSourceConfig, SourceConfig
from .tasks import (BackendConfig, ClassRule, ModelTaskConfig, OnnxBackendConfig, RuleConfig, TasksSection,
                    TensorRTBackendConfig)
from .updates import UpdatesSection
from .uplink import BackoffConfig, BrokerConfig, OutboxSection, TlsConfig, UplinkSection

PACKAGE_ROOT = Path(__file__).resolve().parents[2]

__all__ = ["AgentConfig", "AudioInput", "BackendConfig", "BackoffConfig", "BrokerConfig", "ClassRule",
           "DeviceSection", "FilesSourceConfig", "LevelSection", "Limits", "MicSourceConfig", "ModelTaskConfig",
           "MqttSourceConfig", "OnnxBackendConfig", "OutboxSection", "RuleConfig", "SourceConfig",
           "TasksSection", "TensorRTBackendConfig", "TlsConfig", "UpdatesSection", "UplinkSection", "config_hash",
           "load_config", "preflight", "resolve", "resolve_files", "resolve_local"]


class HealthSection(StrictModel):
    log_every_s: float = Field(60.0, gt=0, le=86_400, description="at most one log line per malformed-input reason this often")
    file: Path | None = Field(None, description="health file rewritten every heartbeat, read by `roadside health` "
                                                "(the container healthcheck); default {state_dir}/health.json")
    offline_unhealthy_s: float | None = Field(None, gt=0, le=7 * 86_400, description="report unhealthy when the city broker has "
                                                                      "been unreachable this long (off when unset)")


class AgentConfig(StrictModel):
    device: DeviceSection
    audio: AudioInput = AudioInput()
    sources: list[SourceConfig] = Field(min_length=1, description="sensor inputs; each entry's type: picks a plug-in")
    tasks: TasksSection = TasksSection()
    level: LevelSection | None = Field(None, description="sound level meter; off when absent")
    uplink: UplinkSection
    outbox: OutboxSection = OutboxSection()
    health: HealthSection = HealthSection()
    updates: UpdatesSection | None = Field(None, description="signed model updates; refused when absent")


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


def resolve_local(path: Path, config_path: Path | str | None) -> Path:
    """A path the agent writes (health file, outbox): relative to the config's folder only, never the package."""
    if path.is_absolute() or config_path is None:
        return path
    return Path(config_path).resolve().parent / path


def config_hash(cfg: AgentConfig) -> str:
    """First 16 hex of the sha256 of the canonical JSON config: alerts name the config they came from."""
    canon = json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


# --------------------------------------------------------------------- files the config names

def _broker_files(key: str, b: BrokerConfig) -> list[tuple[str, Path]]:
    out = [(f"{key}.password_file", b.password_file)] if b.password_file else []
    if b.tls is not None:
        out += [(f"{key}.tls.{f}", getattr(b.tls, f)) for f in ("ca_file", "cert_file", "key_file")
                if getattr(b.tls, f) is not None]
    return out


def _files(cfg: AgentConfig) -> list[tuple[str, Path]]:
    """(dotted key, path) of every secret or key file the config names."""
    out = _broker_files("uplink.broker", cfg.uplink.broker)
    for i, s in enumerate(cfg.sources):
        if isinstance(s, MqttSourceConfig):
            out += _broker_files(f"sources.{i}.broker", s.broker)
    if cfg.updates is not None:
        out += [(f"updates.trusted_keys.{i}", p) for i, p in enumerate(cfg.updates.trusted_keys)]
    return out


def resolve_files(cfg: AgentConfig, config_path: Path | str | None) -> AgentConfig:
    """A copy with relative secret/key paths read against the config file's folder (never the package)."""
    if config_path is None:
        return cfg
    base = Path(config_path).resolve().parent
    fix = lambda p: p if p is None or p.is_absolute() else base / p  # noqa: E731

    def broker(b: BrokerConfig) -> BrokerConfig:
        tls = b.tls.model_copy(update={f: fix(getattr(b.tls, f)) for f in ("ca_file", "cert_file", "key_file")}) \
            if b.tls else None
        return b.model_copy(update={"password_file": fix(b.password_file), "tls": tls})

    sources = [s.model_copy(update={"broker": broker(s.broker)}) if isinstance(s, MqttSourceConfig) else s
               for s in cfg.sources]
    update = {"uplink": cfg.uplink.model_copy(update={"broker": broker(cfg.uplink.broker)}), "sources": sources}
    if cfg.updates is not None:
        update["updates"] = cfg.updates.model_copy(update={"trusted_keys": [fix(p) for p in cfg.updates.trusted_keys]})
    return cfg.model_copy(update=update)


def preflight(cfg: AgentConfig, source: str = "config") -> None:
    """Every file the (resolved) config names is readable, and trusted keys are Ed25519 public keys.

    Run before anything starts or is swapped, so a missing certificate is refused naming its key,
    not found at the first connection attempt. File contents are never part of a message.
    """
    from ..control.signing import SignatureError, load_public_key

    problems = []
    for key, path in _files(cfg):
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as e:
            problems.append(f"{key}: {path}: {e.strerror or e}")
            continue
        if key.startswith("updates.trusted_keys."):
            try:
                load_public_key(path)
            except SignatureError as e:
                problems.append(f"{key}: {e}")
    if problems:
        raise ConfigError(source, problems)
