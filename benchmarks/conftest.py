from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = Path(os.environ.get("ROADSIDE_DATA", REPO.parent / "shared" / "data"))
    if not d.is_dir():
        pytest.skip(f"no data directory at {d}")
    return d
