"""Shared fixtures. Reference data lives in ../shared (never copied into the repo)."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REF = REPO.parent / "shared" / "reference" / "cptra_imgtool"
HELPERS = Path(__file__).resolve().parent / "helpers"
sys.path.insert(0, str(HELPERS))
# each test in its own working directory; the checkout must be unchanged at the end
pytest_plugins = ["tree_guard"]


def pytest_configure(config: pytest.Config) -> None:
    """Session default for the LMS state store (module- and session-scoped fixtures start
    before any per-test fixture): a throw-away directory, never the user's real store."""
    d = tempfile.mkdtemp(prefix="cptra-lms-state-")
    atexit.register(shutil.rmtree, d, True)
    os.environ["XDG_STATE_HOME"] = d
    os.environ["CPTRA_IMGTOOL_STATE"] = str(Path(d) / "lms-state.sqlite3")


@pytest.fixture(autouse=True)
def _isolated_lms_state(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """No test touches the real per-user LMS state store: each gets its own (subprocesses
    inherit the environment)."""
    d = tmp_path_factory.mktemp("lms-state")
    monkeypatch.setenv("XDG_STATE_HOME", str(d))
    monkeypatch.setenv("CPTRA_IMGTOOL_STATE", str(d / "lms-state.sqlite3"))
    yield d
    from imgtool.keys import lms_store as store

    store.close_all()  # this test's store connections


@pytest.fixture
def ref() -> Path:
    if not REF.is_dir():
        pytest.skip(f"reference data not present at {REF}")
    return REF
