"""``uplink:`` and ``outbox:``: the city broker and the durable store in front of it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ..schema import StrictModel


class TlsConfig(StrictModel):
    ca_file: Path = Field(description="the CA that signed the broker's certificate: the only one trusted (pinned)")
    cert_file: Path | None = Field(None, description="client certificate (mutual TLS)")
    key_file: Path | None = Field(None, description="client key (mutual TLS); its contents are never logged")
    min_version: Literal["1.2", "1.3"] = Field("1.2", description="oldest TLS version accepted")

    @model_validator(mode="after")
    def _pair(self):
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS needs both)")
        return self


class BrokerConfig(StrictModel):
    host: str = Field(min_length=1, description="broker host name or address")
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password_file: Path | None = Field(None, description="file holding the password (never the password itself)")
    tls: TlsConfig | None = None
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive; the watchdog allows twice this")
    connect_timeout_s: float = Field(5.0, gt=0, le=120, description="TCP connect plus CONNACK")


class BackoffConfig(StrictModel):
    initial_s: float = Field(1.0, gt=0, le=3600, description="first retry delay cap")
    max_s: float = Field(60.0, gt=0, le=3600, description="delay cap; each wait is uniform in [0, cap] (full jitter)")

    @model_validator(mode="after")
    def _ordered(self):
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s ({self.max_s}) must be >= initial_s ({self.initial_s})")
        return self


class UplinkSection(StrictModel):
    broker: BrokerConfig
    protocol: Literal["auto", "5", "3.1.1"] = Field("auto", description="'auto': MQTT 5, else 3.1.1 if refused")
    topic_prefix: str = Field("roadside/v1", pattern=r"^[A-Za-z0-9_/-]+$",
                              description="topics are {prefix}/{site}/{device}/...")
    max_inflight: int = Field(20, ge=1, le=1000, description="alerts published and not yet acknowledged")
    ack_timeout_s: float = Field(30.0, gt=0, le=3600, description="no PUBACK for this long: the watchdog reconnects")
    backoff: BackoffConfig = BackoffConfig()
    heartbeat_s: float = Field(60.0, ge=0.1, le=3600, description="health message period (at most an hour: the "
                               "health file goes stale after 3 periods, so a hung agent is noticed)")


class OutboxSection(StrictModel):
    path: Path | None = Field(None, description="SQLite file (default {state_dir}/outbox.sqlite)")
    max_bytes: int = Field(1_000_000, ge=10_000, le=10**12,
                           description="above this many payload bytes, oldest summaries are dropped")
    hard_cap_bytes: int = Field(4_000_000, ge=10_000, le=10**12,
                                description="above this, oldest alerts are dropped (counted); also the bound on "
                                            "the store's files on disk (database + WAL)")

    @model_validator(mode="after")
    def _ordered(self):
        if self.hard_cap_bytes < self.max_bytes:
            raise ValueError(f"hard_cap_bytes ({self.hard_cap_bytes}) must be >= max_bytes ({self.max_bytes})")
        return self
