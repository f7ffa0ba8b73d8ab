"""``updates:``: signed model updates over ``.../cmd/model`` (off when the section is absent)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from ..schema import StrictModel


def _cap(default: float, lowest: float, highest: float, description: str, *, above: bool = False) -> Any:
    """A bound with its default: at least ``lowest`` (more than it when ``above``), at most ``highest``."""
    low = {"gt": lowest} if above else {"ge": lowest}
    return Field(default, **low, le=highest, description=description)


class ShadowSection(StrictModel):
    """Bounds on ``cmd/shadow`` (docs/rollouts.md): what a candidate beside the active model may cost the pole."""

    max_windows: int = _cap(10_000, 1, 1_000_000,
                            "a shadow compares at most this many windows (caps the command's windows)")
    max_minutes: float = _cap(1440.0, 0, 10_080, "a shadow runs at most this long (caps the command's minutes; "
                                                 "a week at most)", above=True)
    cpu_share: float = _cap(2.0, 0, 10, "the candidate skips a window while its inference time so far exceeds this "
                                        "share of the active model's over the same windows (counted as sk)",
                            above=True)
    max_model_bytes: int = _cap(100_000_000, 1_000, 2_000_000_000,
                                "a larger candidate model file is refused before it is loaded")
    max_rss_mb: float = _cap(512.0, 0, 65_536, "a candidate whose load grew the agent's resident memory by more is "
                                               "unloaded and refused", above=True)
    min_report_every: int = _cap(10, 1, 100_000, "the command's report_every is raised to at least this (bounds the "
                                                 "message rate: a report per window would flood a cellular link)")


class UpdatesSection(StrictModel):
    trusted_keys: list[Path] = Field(min_length=1, max_length=8,
                                     description="Ed25519 public keys (PEM) that may sign a model bundle's manifest "
                                                 "or a cmd/reload config (several: key rotation); a reload cannot "
                                                 "change them")
    max_bundle_bytes: int = _cap(50_000_000, 1_000, 2_000_000_000,
                                 "larger bundles are refused (also what a gzip bundle may expand to)")
    fetch_timeout_s: float = _cap(60.0, 0, 3600, "overall deadline for downloading a bundle given by url (connect, "
                                                 "headers and body)", above=True)
    url_hosts: list[str] = Field([], max_length=32, description="hosts a bundle may be downloaded from by url "
                                                                "(empty: only inline bundles)")
    keep: int = _cap(2, 2, 10, "installed versions kept per task (current and previous at least)")
    shadow: ShadowSection = Field(default_factory=ShadowSection,
                                  description="candidate models run beside the active one (cmd/shadow)")
