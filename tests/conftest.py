"""Shared fixtures.

Tests that need the real data in ``../shared/data`` skip when it is absent (a
user's fresh clone), but fail under CI (``CI=true``), where it must be present:
a silently skipped data test would let a broken loader land.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path | None:
    env = os.environ.get("ROADSIDE_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real shared data directory, or skip (fail under CI) when it is absent."""
    d = _shared_data()
    if d is None:
        msg = "real data not found (set ROADSIDE_DATA or put shared/ beside the repo)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + "; CI must run the data tests")
        pytest.skip(msg)
    return d


@pytest.fixture(scope="session")
def mn04_dir(data_dir: Path) -> Path:
    d = data_dir / "audioset-mn04"
    if not (d / "mn04_as_mAP_432.pt").is_file():
        pytest.skip(f"mn04 checkpoint not found in {d}")
    return d


# fixtures by part: the edge agent's (noise model, brokers), the city stack's, the console's
pytest_plugins = ["agent_fixtures", "fleet_fixtures", "console_fixtures"]
