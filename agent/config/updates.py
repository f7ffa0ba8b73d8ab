"""``updates:``: signed model updates over ``.../cmd/model`` (off when the section is absent)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ..schema import StrictModel


class ShadowSection(StrictModel):
    """Bounds on ``cmd/shadow`` (docs/rollouts.md): what a candidate beside the active model may cost the pole."""

    max_windows: int = Field(10_000, ge=1, le=1_000_000,
                             description="a shadow compares at most this many windows (caps the command's windows)")
    max_minutes: float = Field(1440.0, gt=0, le=10_080,
                               description="a shadow runs at most this long (caps the command's minutes; "
                                           "a week at most)")
    cpu_share: float = Field(2.0, gt=0, le=10,
                             description="the candidate skips a window while its inference time so far exceeds this "
                                         "share of the active model's over the same windows (counted as sk)")
    max_model_bytes: int = Field(100_000_000, ge=1_000, le=2_000_000_000,
                                 description="a larger candidate model file is refused before it is loaded")
    max_rss_mb: float = Field(512.0, gt=0, le=65_536,
                              description="a candidate whose load grew the agent's resident memory by more is "
                                          "unloaded and refused")
    min_report_every: int = Field(10, ge=1, le=100_000,
                                  description="the command's report_every is raised to at least this (bounds the "
                                              "message rate: a report per window would flood a cellular link)")


class UpdatesSection(StrictModel):
    trusted_keys: list[Path] = Field(min_length=1, max_length=8,
                                     description="Ed25519 public keys (PEM) that may sign a model bundle's manifest "
                                                 "or a cmd/reload config (several: key rotation); a reload cannot "
                                                 "change them")
    max_bundle_bytes: int = Field(50_000_000, ge=1_000, le=2_000_000_000,
                                  description="larger bundles are refused (also what a gzip bundle may expand to)")
    fetch_timeout_s: float = Field(60.0, gt=0, le=3600, description="overall deadline for downloading a bundle "
                                                                    "given by url (connect, headers and body)")
    url_hosts: list[str] = Field([], max_length=32, description="hosts a bundle may be downloaded from by url "
                                                                "(empty: only inline bundles)")
    keep: int = Field(2, ge=2, le=10, description="installed versions kept per task (current and previous at least)")
    shadow: ShadowSection = Field(default_factory=ShadowSection,
                                  description="candidate models run beside the active one (cmd/shadow)")
