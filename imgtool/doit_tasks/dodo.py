"""The task creators a ``dodo.py`` imports: ``from imgtool.doit_tasks.dodo import *``.

Variables: cfg= (required), key_dir=, prebuilt_dir=, vnd_sig_dir= (the CLI's defaults when
unset), man=, flash= (output paths), allow_key_mismatch=1 (build although the config's keys do
not match caliptra_file: a warning, not an error), pqc=mldsa|lms (or 1|3: required for a Caliptra
2.x config, refused for 1.x); paths are relative to the dodo.py's folder
(doit's working directory). The graph is described in :mod:`imgtool.doit_tasks.graph`; the same
tasks run without a dodo.py through `cptra-imgtool build --cfg C [DOIT ARGS...]`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

from doit import get_var
from doit.doit_cmd import DoitMain

from imgtool.errors import ImgtoolError

from . import graph

__all__ = [
    "DOIT_CONFIG",
    "task_digest",
    "task_imc",
    "task_sign",
    "task_manifest",
    "task_flash",
    "task_verify",
]

graph.setup_logging()
if os.path.basename(DoitMain.BIN_NAME) in ("-m", "__main__.py"):  # `python -m doit`
    DoitMain.BIN_NAME = "doit"  # doit's hints then read "doit list", not "-m list"


def _command(argv: list[str]) -> str:
    """The doit command of this run (doit accepts its options before the command, e.g.
    `doit -f dodo.py -d DIR list`): the first plain argument naming a doit command, else run."""
    cmds = DoitMain().get_cmds()
    for arg in argv:
        if not arg.startswith("-") and "=" not in arg and arg in cmds:
            return arg
    return "run"


def _given_vars() -> list[str]:
    """The names of this run's ``name=value`` doit variables."""
    import doit.doit_cmd

    return list(getattr(doit.doit_cmd, "_CMDLINE_VARS", None) or {})


try:
    _SETTINGS = graph.Settings.from_vars(get_var, _given_vars())
    DOIT_CONFIG = graph.doit_config(_SETTINGS, _command(sys.argv[1:]))
    _TASKS = list(graph.generate(_SETTINGS))
except ImgtoolError as exc:  # a config error: one line, like the CLI, not a doit traceback
    print(f"cptra-imgtool: error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)


def _tasks(base: str) -> Iterator[dict[str, Any]]:
    for t in _TASKS:
        if t["basename"] == base:
            yield {k: v for k, v in t.items() if k != "basename"}


def task_digest() -> Iterator[dict[str, Any]]:
    yield from _tasks("digest")


def task_imc() -> dict[str, Any]:
    return next(_tasks("imc"))


def task_sign() -> Iterator[dict[str, Any]]:
    yield from _tasks("sign")


def task_manifest() -> dict[str, Any]:
    return next(_tasks("manifest"))


def task_flash() -> dict[str, Any]:
    return next(_tasks("flash"))


def task_verify() -> dict[str, Any]:
    return next(_tasks("verify"))


if any(t["basename"] == "pad" for t in _TASKS):  # only with manifest_config.padding_align_size

    def task_pad() -> Iterator[dict[str, Any]]:
        yield from _tasks("pad")

    __all__.append("task_pad")
