"""Shared fixtures. Reference data lives in ../shared (never copied into the repo)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REF = REPO.parent / "shared" / "reference" / "cptra_imgtool"
HELPERS = Path(__file__).resolve().parent / "helpers"
sys.path.insert(0, str(HELPERS))


@pytest.fixture
def ref() -> Path:
    if not REF.is_dir():
        pytest.skip(f"reference data not present at {REF}")
    return REF
