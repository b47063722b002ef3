"""A doit TaskLoader2 that builds the task graph of :mod:`tasks.graph` without a dodo.py."""

from __future__ import annotations

from typing import Any

from doit.cmd_base import TaskLoader2

from imgtool.errors import ImgtoolError

from . import graph


class LoadError(BaseException):
    """An ImgtoolError while doit loads the tasks, carried past doit's own handler (which
    prints a traceback for every Exception) to the caller of ``DoitMain.run``."""

    def __init__(self, error: ImgtoolError) -> None:
        super().__init__(str(error))
        self.error = error


class ImgtoolTaskLoader(TaskLoader2):  # type: ignore[misc]
    """Loads the cptra-imgtool tasks for ``cptra-imgtool build``. Config errors raise
    :class:`LoadError` out of ``DoitMain.run``."""

    def __init__(self, settings: graph.Settings) -> None:
        super().__init__()
        self.settings = settings

    def setup(self, opt_values: dict[str, Any]) -> None:
        pass

    def load_doit_config(self) -> dict[str, Any]:
        try:
            return graph.doit_config(self.settings)
        except ImgtoolError as exc:
            raise LoadError(exc) from None

    def load_tasks(self, cmd: Any, pos_args: list[str]) -> list[Any]:
        try:
            return graph.doit_tasks(self.settings)
        except ImgtoolError as exc:
            raise LoadError(exc) from None
