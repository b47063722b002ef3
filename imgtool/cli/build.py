"""CLI: `cptra-imgtool build [DOIT ARGS...] --cfg C` runs the doit task graph without a dodo.py.

The options below may appear anywhere on the line; every other argument goes to doit in its
order (`build --cfg C -n 2 -P process flash`, `build flash --cfg C`, `build --cfg C clean`).
Arguments after `--` all go to doit. Exit codes: 0 success, 1 `verify` found a failing check,
2 bad input (a config error, a failing sign helper, an unknown task name), 3 internal error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import ImgtoolError

# (option, dest, help) of the options `build` keeps for itself
OPTIONS = (
    ("--cfg", "cfg", "project config (TOML), required"),
    ("--key-dir", "key_dir", "key directory (default keys/<prj>/, or key/<prj>/ if it holds them)"),
    ("--prebuilt-dir", "prebuilt_dir", "prebuilt binaries (default prebuilt/<prj>/)"),
    ("--vnd-sig-dir", "vnd_sig_dir", "directory of ASPEED's prebuilt vendor signatures"),
    ("--man", "man", "manifest output (default out/<prj>-auth-manifest.bin)"),
    ("--flash", "flash", "flash image output (default out/<prj>-flash-image.bin)"),
    ("--fuses", "fuses", "verify task: the device's fuses file (see `cptra-imgtool fuses`)"),
    ("--caliptra-fw", "caliptra_fw", "verify task: the Caliptra bundle the device runs"),
    (
        "--pqc-key-type",
        "pqc",
        "Caliptra 2.x configs only, required there: 1 = ML-DSA-87, 3 = LMS (also mldsa, lms)",
    ),
)
# (flag, dest, help) of the value-less options `build` keeps for itself
FLAGS = (
    (
        "--allow-key-mismatch",
        "allow_key_mismatch",
        "build even when the config's keys do not match caliptra_file's (a warning instead of "
        "an error; the device rejects such an image)",
    ),
)
DESCRIPTION = (
    "Runs doit with cptra-imgtool's tasks (the same graph as dodo.py): digest per image, imc, "
    "sign:<slot> per signature slot in use, manifest, flash (default), verify. The config's "
    "keys are checked against caliptra_file first (--allow-key-mismatch: a warning). The options "
    "below may appear anywhere; every other argument goes to doit, e.g. "
    "`build --cfg C -n 2 -P process flash`, `build --cfg C list`, `build --cfg C clean`. "
    "A Caliptra 2.x config needs --pqc-key-type 1|3 (the same task names; sign:<pair>_ecc|_pqc, "
    "flash also writes fw_toc.bin)."
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
    for opt, dest, text in FLAGS:
        p.add_argument(opt, dest=dest, action="store_true", help=text)
    return p


def split_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(build's own options, doit's arguments in their order). Options take their value as
    the next argument or after `=`; flags (FLAGS) take none and are stored as "1"."""
    names = {opt: dest for opt, dest, _ in OPTIONS}
    flags = {opt: dest for opt, dest, _ in FLAGS}
    ours: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i + 1 :]
            break
        if arg in flags:
            ours[flags[arg]] = "1"
            i += 1
            continue
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


def _reporter_option(doit_args: list[str]) -> tuple[str, list[str]]:
    """Take doit's ``-r/--reporter NAME`` out of the arguments (build wraps that reporter so
    that it can map task failures to exit codes); returns (name, the other arguments)."""
    name, rest, i = "console", [], 0
    while i < len(doit_args):
        arg = doit_args[i]
        if arg in ("-r", "--reporter") and i + 1 < len(doit_args):
            name, i = doit_args[i + 1], i + 2
            continue
        if arg.startswith("--reporter="):
            name = arg.split("=", 1)[1]
        elif arg.startswith("-r") and len(arg) > 2 and not arg.startswith("--"):
            name = arg[2:]
        else:
            rest.append(arg)
        i += 1
    return name, rest


def cmd_build(args: argparse.Namespace) -> int:
    from doit import cmd_run
    from doit.doit_cmd import DoitMain

    from ..doit_tasks import graph
    from ..doit_tasks.checker import save
    from ..doit_tasks.loader import (
        REPORTERS,
        ImgtoolTaskLoader,
        LoadError,
        Outcome,
        doit_command,
        recording_reporter,
        unknown_tasks,
    )

    argv: list[str] = list(args.build_args)
    if any(a in ("-h", "--help") for a in argv[: argv.index("--") if "--" in argv else None]):
        options_parser().print_help()
        return 0
    ours, doit_args = split_args(argv)
    if "cfg" not in ours:
        raise BuildError("build: --cfg CONFIG is required (see `cptra-imgtool build --help`)")
    settings = graph.Settings(**ours)
    reporter, doit_args = _reporter_option(doit_args)
    if reporter not in REPORTERS:
        raise BuildError(f"build: unknown reporter {reporter!r} (one of {', '.join(REPORTERS)})")
    config = graph.doit_config(settings, doit_command(doit_args)[0])
    tasks = graph.doit_tasks(settings)
    bad = unknown_tasks(doit_args, tasks)
    if bad:
        groups = ", ".join(graph.task_names(settings))
        raise BuildError(
            f"build: {', '.join(repr(b) for b in bad)}: no such task (tasks: {groups}; "
            f"`cptra-imgtool build --cfg {settings.cfg} list --all` shows every one)"
        )
    outcome = Outcome()
    config["reporter"] = recording_reporter(REPORTERS[reporter], outcome)
    main_cls = type(
        "BuildMain", (DoitMain,), {"BIN_NAME": f"cptra-imgtool build --cfg {settings.cfg}"}
    )
    streams = sys.stdout, sys.stderr
    # doit binds the default of `run --output-file` to the sys.stdout of its import time;
    # report to the current one (main() may run more than once in a process, e.g. in tests)
    cmd_run.opt_outfile["default"] = sys.stdout
    try:
        rc: int | None = main_cls(ImgtoolTaskLoader(settings, config, tasks)).run(doit_args)
    except LoadError as exc:
        raise exc.error from None
    finally:
        # doit swaps sys.stdout/sys.stderr while a Python action runs; with `-P thread` two
        # actions can restore each other's streams and leave doit's capture in place
        sys.stdout, sys.stderr = streams
        save()
    return outcome.exit_code(rc, doit_command(doit_args)[0])


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
    register_2x(sub)


# --- Caliptra 2.x commands (the reference tool's names and options) ----------------------------
def _add_2x_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cfg", required=True, type=Path, help="Caliptra 2.x project config (TOML)")
    p.add_argument("--key-dir", type=Path, help="key directory (default keys/<prj>/ or key/<prj>/)")
    p.add_argument("--prebuilt-dir", type=Path, help="prebuilt binaries (default prebuilt/<prj>/)")
    p.add_argument(
        "--pqc-key-type",
        required=True,
        metavar="1|3",
        help="PQC signature type: 1 = ML-DSA-87, 3 = LMS (the pqc_key_type fuse)",
    )
    p.add_argument("--man", type=Path, help="manifest (default out/<prj>-auth-manifest.bin)")
    p.add_argument(
        "--allow-key-mismatch",
        action="store_true",
        help="build even when the config's vendor / owner FW keys are not caliptra_file's "
        "active vendor / owner keys (a warning instead of an error; the device rejects the image)",
    )


def _load_2x(args: argparse.Namespace) -> tuple[Any, str]:
    from ..build2 import pqc_algo
    from ..config2 import load_config2
    from ..keys import key_match2

    pqc = pqc_algo(args.pqc_key_type)
    cfg2 = load_config2(args.cfg, key_dir=args.key_dir, prebuilt_dir=args.prebuilt_dir)
    key_match2.check(cfg2, pqc, allow=args.allow_key_mismatch)
    return cfg2, pqc


def _check_outputs_2x(cfg2: Any, outputs: dict[str, Path]) -> None:
    """Refuse outputs that would overwrite an input (image, key file, the config), name one
    file twice or a directory, before anything is written (1.x: build.check_outputs)."""
    from ..build2 import check_outputs2, padded_copies2

    outputs = dict(outputs)
    outputs.update({f"padded copy of {c.field}": c.copy for c in padded_copies2(cfg2)})
    check_outputs2(cfg2, outputs)


def cmd_create_auth_man_2x(args: argparse.Namespace) -> int:
    from ..build2 import create_auth_man2, write_padded_copies2
    from ..formats.manifest2 import RUNTIME_GENERATION

    cfg2, pqc = _load_2x(args)
    out = args.man or cfg2.default_manifest_path()
    _check_outputs_2x(cfg2, {"--man": out})
    write_padded_copies2(cfg2)  # padding_out_folder: the padded copies, as the reference does
    data = create_auth_man2(cfg2, pqc, out)
    print(f"SoC manifest (ATM2, {pqc}, {len(cfg2.images)} images, {len(data)} bytes): {out}")
    print(f"runtime: {RUNTIME_GENERATION}")
    return 0


def cmd_create_auth_flash_2x(args: argparse.Namespace) -> int:
    from ..build2 import create_auth_flash2, create_auth_man2, write_padded_copies2

    cfg2, pqc = _load_2x(args)
    out = args.flash or cfg2.default_flash_path()
    man_path = args.man or cfg2.default_manifest_path()
    # the manifest is an output unless an existing one is used; never an input's path
    _check_outputs_2x(
        cfg2,
        {
            "--flash": out,
            "--man": man_path,
            "fw_toc.bin (beside --flash)": out.parent / "fw_toc.bin",
        },
    )
    write_padded_copies2(cfg2)  # padding_out_folder: the padded copies, as the reference does
    if args.man is not None and args.man.is_file():
        man = args.man.read_bytes()
    else:
        man = create_auth_man2(cfg2, pqc, man_path)
        print(f"SoC manifest (ATM2, {pqc}, {len(cfg2.images)} images): {man_path}")
    n, toc = create_auth_flash2(cfg2, out, man, man_path.name)
    print(f"flash image (FLSH v1, {n} bytes): {out}; fw_toc: {toc}")
    return 0


SIGNING_2X = (
    "Each signature comes from its key section's [sign_helper] command for that algorithm "
    "(owner_|vendor_ + ecc|lms|mldsa + _fw_|_man_ + key_sign_helper; an ML-DSA helper gets the "
    "raw message), else its private key: a file in the key directory or, for ecc_priv_key, a "
    "pkcs11: URI. Without either the slot stays zero. Every signature is verified against the "
    "configured public key. Outputs never overwrite an input."
)


def register_2x(sub: Any) -> None:
    p = sub.add_parser(
        "create-auth-man-2x",
        help="build a Caliptra 2.x SoC manifest (ATM2)",
        description="Build a Caliptra 2.x SoC manifest (ATM2). " + SIGNING_2X,
    )
    _add_2x_options(p)
    p.set_defaults(func=cmd_create_auth_man_2x)
    p = sub.add_parser(
        "create-auth-flash-2x",
        help="build a Caliptra 2.x flash image (FLSH v1) and fw_toc.bin",
        description="Build a Caliptra 2.x flash image (FLSH v1) and fw_toc.bin beside it; "
        "without --man, or with a --man that does not exist yet, the manifest first. " + SIGNING_2X,
    )
    _add_2x_options(p)
    p.add_argument("--flash", type=Path, help="output (default out/<prj>-flash-image.bin)")
    p.set_defaults(func=cmd_create_auth_flash_2x)
