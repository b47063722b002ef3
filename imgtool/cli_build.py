"""CLI: `cptra-imgtool build [DOIT ARGS...] --cfg C` runs the doit task graph without a dodo.py.

The options below may appear anywhere on the line; every other argument goes to doit in its
order (`build --cfg C -n 2 -P process flash`, `build list --cfg C`, `build --cfg C clean`).
Arguments after `--` all go to doit.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .errors import ImgtoolError

# (option, dest, help) of the options `build` keeps for itself
OPTIONS = (
    ("--cfg", "cfg", "project config (TOML), required"),
    ("--key-dir", "key_dir", "key directory (default keys/<prj>/ or key/<prj>/)"),
    ("--prebuilt-dir", "prebuilt_dir", "prebuilt binaries (default prebuilt/<prj>/)"),
    ("--vnd-sig-dir", "vnd_sig_dir", "directory of ASPEED's prebuilt vendor signatures"),
    ("--man", "man", "manifest output (default out/<prj>-auth-manifest.bin)"),
    ("--flash", "flash", "flash image output (default out/<prj>-flash-image.bin)"),
)
DESCRIPTION = (
    "Runs doit with cptra-imgtool's tasks (the same graph as dodo.py): digest per image, imc, "
    "sign:<slot> per signature slot in use, manifest, flash (default), verify. The options "
    "below may appear anywhere; every other argument goes to doit, e.g. "
    "`build --cfg C -n 2 -P process flash`, `build --cfg C list`, `build --cfg C clean`."
)


class BuildError(ImgtoolError):
    """Bad `build` command line."""


def options_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cptra-imgtool build",
        usage="cptra-imgtool build --cfg C [OPTIONS] [DOIT ARGS...]",
        description=DESCRIPTION,
        allow_abbrev=False,
    )
    for opt, dest, text in OPTIONS:
        p.add_argument(opt, dest=dest, help=text)
    return p


def split_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(build's own options, doit's arguments in their order). Options take their value as
    the next argument or after `=`."""
    names = {opt: dest for opt, dest, _ in OPTIONS}
    ours: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i + 1 :]
            break
        opt, eq, value = arg.partition("=")
        if opt in names:
            if not eq:
                if i + 1 >= len(argv):
                    raise BuildError(f"build: {opt} needs a value")
                i += 1
                value = argv[i]
            if names[opt] in ours:
                raise BuildError(f"build: {opt} given twice")
            ours[names[opt]] = value
        else:
            rest.append(arg)
        i += 1
    return ours, rest


def cmd_build(args: argparse.Namespace) -> int:
    from doit import cmd_run
    from doit.doit_cmd import DoitMain

    from tasks import graph
    from tasks.checker import save
    from tasks.loader import ImgtoolTaskLoader, LoadError

    argv: list[str] = list(args.build_args)
    if any(a in ("-h", "--help") for a in argv[: argv.index("--") if "--" in argv else None]):
        options_parser().print_help()
        return 0
    ours, doit_args = split_args(argv)
    if "cfg" not in ours:
        raise BuildError("build: --cfg CONFIG is required (see `cptra-imgtool build --help`)")
    settings = graph.Settings(**ours)
    streams = sys.stdout, sys.stderr
    # doit binds the default of `run --output-file` to the sys.stdout of its import time;
    # report to the current one (main() may run more than once in a process, e.g. in tests)
    cmd_run.opt_outfile["default"] = sys.stdout
    try:
        rc: int = DoitMain(ImgtoolTaskLoader(settings)).run(doit_args)
    except LoadError as exc:
        raise exc.error from None
    finally:
        # doit swaps sys.stdout/sys.stderr while a Python action runs; with `-P thread` two
        # actions can restore each other's streams and leave doit's capture in place
        sys.stdout, sys.stderr = streams
        save()
    return rc


def register(sub: Any) -> None:
    # Every argument after `build` must reach cmd_build unparsed (doit's options are not
    # known here): a parser whose prefix character never occurs in argv sees only positionals.
    p = sub.add_parser(
        "build",
        help="incremental build through doit (same tasks as dodo.py: flash, manifest, verify)",
        description=DESCRIPTION,
        prefix_chars="\0",
        add_help=False,
    )
    p.add_argument("build_args", nargs=argparse.REMAINDER, metavar="--cfg C [DOIT ARGS...]")
    p.set_defaults(func=cmd_build)
