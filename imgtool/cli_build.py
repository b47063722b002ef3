"""CLI: `cptra-imgtool build [DOIT ARGS...] --cfg C` runs the doit task graph without a dodo.py."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_build(args: argparse.Namespace) -> int:
    from doit.doit_cmd import DoitMain

    from tasks.loader import ImgtoolTaskLoader

    from .config import load_config

    # validate first, so that a bad config is a one-line error and not a doit traceback
    load_config(
        args.cfg, key_dir=args.key_dir, prebuilt_dir=args.prebuilt_dir, vnd_sig_dir=args.vnd_sig_dir
    )

    doit_args = list(args.doit_args)
    if doit_args and doit_args[0] == "--":
        doit_args = doit_args[1:]
    variables = [f"cfg={args.cfg}"]
    for name in ("key_dir", "prebuilt_dir", "vnd_sig_dir", "man", "flash"):
        value = getattr(args, name)
        if value:
            variables.append(f"{name}={value}")
    rc: int = DoitMain(ImgtoolTaskLoader()).run([*doit_args, *variables])
    return rc


def register(sub: Any) -> None:
    p = sub.add_parser(
        "build",
        help="incremental build through doit (same tasks as dodo.py: flash, manifest, verify)",
        description="Runs doit with cptra-imgtool's tasks; arguments other than the options "
        "below go to doit, e.g. `build --cfg C -n 2 flash` or `build --cfg C list`.",
    )
    p.add_argument("--cfg", required=True, help="project config (TOML)")
    p.add_argument("--key-dir", dest="key_dir")
    p.add_argument("--prebuilt-dir", dest="prebuilt_dir")
    p.add_argument("--vnd-sig-dir", dest="vnd_sig_dir")
    p.add_argument("--man", help="manifest output")
    p.add_argument("--flash", help="flash image output")
    p.add_argument("doit_args", nargs=argparse.REMAINDER, help="doit command and arguments")
    p.set_defaults(func=cmd_build)
