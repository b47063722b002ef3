"""Repository hygiene: tests leave the checkout as they found it; packaging metadata is current."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from tree_guard import REPO, difference, snapshot


def test_tests_run_outside_the_checkout() -> None:
    cwd = Path.cwd().resolve()
    assert REPO not in (cwd, *cwd.parents)


def test_snapshot_sees_new_and_removed_paths_but_not_caches(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("x")
    before = snapshot(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "test-auth-manifest.bin").write_bytes(b"m")
    (tmp_path / "src" / "__pycache__").mkdir()
    (tmp_path / "src" / "__pycache__" / "a.pyc").write_bytes(b"c")
    os.unlink(tmp_path / "src" / "a.py")
    assert difference(before, snapshot(tmp_path)) == [
        "+ out",
        "+ out/test-auth-manifest.bin",
        "- src/a.py",
    ]


def test_license_is_an_spdx_string() -> None:
    """setuptools deprecates `project.license` as a table (it printed a banner on install)."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"
    # and the installed packages are ours alone: no top-level `tasks` package
    assert meta["tool"]["setuptools"]["packages"]["find"]["include"] == ["imgtool*"]


def test_checkout_tasks_folder_is_an_alias() -> None:
    """Inside the checkout `tasks.graph` (older scripts) is the installed module itself."""
    import subprocess
    import sys

    code = (
        "import tasks, tasks.graph, tasks.checker, imgtool.doit_tasks as d\n"
        "assert tasks.graph is d.graph and tasks.checker is d.checker\n"
        "assert tasks.loader is d.loader\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
