"""Shared fixtures: the real data folder and small synthetic sessions."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real vendor DICOM collection (../shared/data), or skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real DICOM data not found at {SHARED_DATA} (see README: Tests)")
    return SHARED_DATA
