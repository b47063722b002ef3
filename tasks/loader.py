"""A doit TaskLoader2 that builds the task graph of :mod:`tasks.graph` from doit variables."""

from __future__ import annotations

from typing import Any

from doit import get_var
from doit.cmd_base import TaskLoader2
from doit.loader import generate_tasks

from . import graph


class ImgtoolTaskLoader(TaskLoader2):  # type: ignore[misc]
    """Loads the cptra-imgtool tasks without a dodo.py (``cptra-imgtool build``)."""

    def setup(self, opt_values: dict[str, Any]) -> None:
        self.settings: graph.Settings | None = None

    def load_doit_config(self) -> dict[str, Any]:
        self.settings = graph.Settings.from_vars(get_var)
        return graph.doit_config(self.settings)

    def load_tasks(self, cmd: Any, pos_args: list[str]) -> list[Any]:
        assert self.settings is not None
        tasks = []
        by_base: dict[str, list[dict[str, Any]]] = {}
        for t in graph.generate(self.settings):
            by_base.setdefault(t.pop("basename"), []).append(t)
        for base, items in by_base.items():
            if len(items) == 1 and "name" not in items[0]:
                tasks += generate_tasks(base, items[0])
            else:
                tasks += generate_tasks(base, (t for t in items))
        return tasks
