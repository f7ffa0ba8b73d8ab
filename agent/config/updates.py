"""``updates:``: signed model updates over ``.../cmd/model`` (off when the section is absent)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ..schema import StrictModel


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
