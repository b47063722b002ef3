"""pytest plugin: tests run in temporary directories and leave the checkout as they found it.

* every test starts in a fresh empty working directory (so a default output such as
  ``out/<prj>-auth-manifest.bin``, or what ``csf_parser`` writes into its cwd, lands there);
* at the end of the session the checkout is compared with a snapshot taken at the start: a file
  or directory that appeared or vanished (ignored ones included: ``out/``, ``output/``) fails
  the run, naming it. Caches (``.venv``, ``__pycache__``, tool caches) are not compared.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SKIP_DIRS = {
    ".git",
    ".venv",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "node_modules",
}
SKIP_SUFFIXES = (".egg-info",)
_KEY = pytest.StashKey[set[str]]()


def snapshot(root: Path = REPO) -> set[str]:
    """Every path under ``root`` (files and directories, relative, '/'-separated), caches
    excluded."""
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(SKIP_SUFFIXES)]
        rel = os.path.relpath(dirpath, root)
        for name in [*dirnames, *filenames]:
            out.add(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
    return out


def difference(before: set[str], after: set[str]) -> list[str]:
    """Human-readable changes between two snapshots ("+ path" appeared, "- path" vanished)."""
    return [f"+ {p}" for p in sorted(after - before)] + [f"- {p}" for p in sorted(before - after)]


def pytest_sessionstart(session: pytest.Session) -> None:
    session.stash[_KEY] = snapshot()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.stash.get(_KEY, None)
    if before is None:
        return
    changes = difference(before, snapshot())
    if not changes:
        return
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    text = "the tests changed the checkout (they must work in temporary directories):\n  "
    text += "\n  ".join(changes[:40])
    if tr is not None:
        tr.write_line(text, red=True)
    else:  # pragma: no cover
        print(text)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _work_in_tmp_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Each test runs in its own empty working directory, never in the checkout."""
    d = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(d)
    return d
