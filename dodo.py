"""doit entry point: `doit flash cfg=config/<prj>.toml` (also manifest, verify, list, clean).

Variables: cfg= (required), key_dir=, prebuilt_dir=, vnd_sig_dir=, man=, flash=.
The same tasks run without this file through `cptra-imgtool build`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from doit import get_var

from imgtool.errors import ImgtoolError
from tasks import graph

try:
    _SETTINGS = graph.Settings.from_vars(get_var)
    DOIT_CONFIG = graph.doit_config(_SETTINGS)
    _TASKS = list(graph.generate(_SETTINGS))
except ImgtoolError as exc:
    print(f"cptra-imgtool: error: {exc}", file=sys.stderr)
    sys.exit(2)


def _tasks(base: str) -> Iterator[dict[str, Any]]:
    for t in _TASKS:
        if t["basename"] == base:
            yield {k: v for k, v in t.items() if k != "basename"}


def task_digest() -> Iterator[dict[str, Any]]:
    yield from _tasks("digest")


def task_imc() -> dict[str, Any]:
    return next(_tasks("imc"))


def task_sign() -> Iterator[dict[str, Any]]:
    yield {"name": None, "doc": "every signature slot in use"}
    yield from _tasks("sign")


def task_manifest() -> dict[str, Any]:
    return next(_tasks("manifest"))


def task_flash() -> dict[str, Any]:
    return next(_tasks("flash"))


def task_verify() -> dict[str, Any]:
    return next(_tasks("verify"))
