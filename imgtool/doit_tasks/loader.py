"""Run the task graph of :mod:`.graph` without a dodo.py (`cptra-imgtool build`), with the exit
codes of the README: 0 success, 1 `verify` found a failing check, 2 bad input (including an
unknown task name), 3 internal error."""

from __future__ import annotations

from typing import Any

from doit import reporter as doit_reporter
from doit.cmd_base import TaskLoader2
from doit.exceptions import DependencyError

from imgtool.errors import ImgtoolError

from . import graph

REPORTERS: dict[str, type] = {
    "console": doit_reporter.ConsoleReporter,
    "executed-only": doit_reporter.ExecutedOnlyReporter,
    "json": doit_reporter.JsonReporter,
    "zero": doit_reporter.ZeroReporter,
    "error-only": doit_reporter.ErrorOnlyReporter,
}
# doit commands whose positional arguments are task names (or targets)
TASK_COMMANDS = ("run", "clean", "forget", "ignore", "info", "list")


class LoadError(BaseException):
    """An ImgtoolError while doit loads the tasks, carried past doit's own handler (which
    prints a traceback for every Exception) to the caller of ``DoitMain.run``."""

    def __init__(self, error: ImgtoolError) -> None:
        super().__init__(str(error))
        self.error = error


class Outcome:
    """The exit codes of the failures a reporter saw (filled in the main doit process)."""

    def __init__(self) -> None:
        self.codes: list[int] = []

    def add(self, fail: Any) -> None:
        if isinstance(fail, graph.ImgtoolFailed):
            self.codes.append(int(fail.exit_code))
        elif isinstance(fail, DependencyError):
            self.codes.append(2)  # e.g. an input file vanished after the tasks were loaded
        else:
            self.codes.append(3)  # an exception escaped an action

    def exit_code(self, doit_rc: int | None, command: str = "run") -> int:
        # `clean` (and other commands) return None from DoitMain.run when they succeed
        if not doit_rc or (command == "info" and doit_rc == 1):
            return 0  # `info` exits 1 for "not up to date": a status, not a failure
        if self.codes:
            for code in (3, 2, 1):
                if code in self.codes:
                    return code
        # doit's own user errors (bad option, ...) come before any task runs
        return 2 if doit_rc == 3 else 3


def recording_reporter(base: type, outcome: Outcome) -> type:
    """``base`` (a doit reporter class) that also records each failure's exit code."""

    def add_failure(self: Any, task: Any, fail: Any) -> None:
        outcome.add(fail)
        parent: Any = base
        parent.add_failure(self, task, fail)

    return type(f"Recording{base.__name__}", (base,), {"add_failure": add_failure})


class ImgtoolTaskLoader(TaskLoader2):  # type: ignore[misc]
    """Loads the cptra-imgtool tasks for ``cptra-imgtool build`` (computed once by the caller,
    or here). Config errors raise :class:`LoadError` out of ``DoitMain.run``."""

    def __init__(
        self,
        settings: graph.Settings,
        config: dict[str, Any] | None = None,
        tasks: list[Any] | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self._config = config
        self._tasks = tasks

    def setup(self, opt_values: dict[str, Any]) -> None:
        pass

    def load_doit_config(self) -> dict[str, Any]:
        if self._config is not None:
            return self._config
        try:
            return graph.doit_config(self.settings)
        except ImgtoolError as exc:
            raise LoadError(exc) from None

    def load_tasks(self, cmd: Any, pos_args: list[str]) -> list[Any]:
        if self._tasks is not None:
            return self._tasks
        try:
            return graph.doit_tasks(self.settings)
        except ImgtoolError as exc:
            raise LoadError(exc) from None


def doit_command(doit_args: list[str]) -> tuple[str, list[str]]:
    """(the doit command these arguments run, its arguments without doit variables)."""
    from doit.doit_cmd import DoitMain

    args = [a for a in doit_args if a.startswith("-") or "=" not in a]  # drop doit variables
    if args and args[0] in DoitMain().get_cmds():
        return args[0], args[1:]
    return "run", args


def unknown_tasks(doit_args: list[str], tasks: list[Any]) -> list[str]:
    """Positional arguments of a task-taking doit command that name no task, group or target."""
    from doit.cmdparse import CmdOption, CmdParse, CmdParseError
    from doit.doit_cmd import DoitMain

    name, args = doit_command(doit_args)
    cmds = DoitMain().get_cmds()
    if name not in TASK_COMMANDS:
        return []
    cmd_cls = cmds.get_plugin(name)
    options = tuple(getattr(cmd_cls, "base_options", ())) + tuple(cmd_cls.cmd_options)
    try:
        _, positional = CmdParse([CmdOption(o) for o in options]).parse(args)
    except (CmdParseError, AttributeError, TypeError):
        return []  # let doit report its own parse error
    known: set[str] = set()
    for t in tasks:
        known.add(t.name)
        known.update(t.targets)
        if ":" in t.name:
            known.add(t.name.split(":", 1)[0])
    return [p for p in positional if p not in known and "*" not in p]
