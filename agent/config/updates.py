"""``updates:``: signed model updates over ``.../cmd/model`` (off when the section is absent)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ..schema import StrictModel


class UpdatesSection(StrictModel):
    trusted_keys: list[Path] = Field(min_length=1, description="Ed25519 public keys (PEM) that may sign a model "
                                                                "bundle's manifest (several: key rotation)")
    max_bundle_bytes: int = Field(50_000_000, ge=1_000, le=2_000_000_000, description="larger bundles are refused")
    fetch_timeout_s: float = Field(60.0, gt=0, le=3600, description="download timeout for a bundle given by url")
    keep: int = Field(2, ge=2, le=10, description="installed versions kept per task (current and previous at least)")
