"""The ``cptra-imgtool`` command line: one top-level error handler, tracebacks only with --debug."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import Config, load_config
from ..errors import ImgtoolError

PROG = "cptra-imgtool"
# Modules that add their own subcommands through register(subparsers).
COMMAND_MODULES = ("keys", "verify", "server", "build", "owner")


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = (
            "error"
            if record.levelno >= logging.ERROR
            else "warning"
            if record.levelno >= logging.WARNING
            else "info"
        )
        return f"{PROG}: {level}: {record.getMessage()}"


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when a record is emitted (not the one at set-up)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _setup_logging(debug: bool) -> None:
    log = logging.getLogger("imgtool")
    for h in list(log.handlers):
        if getattr(h, "_cptra_cli", False):
            log.removeHandler(h)
    handler = _Stderr()
    handler._cptra_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(_Formatter())
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if debug else logging.WARNING)
    log.propagate = False


def add_project_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cfg", required=True, type=Path, help="project config (TOML)")
    p.add_argument(
        "--key-dir",
        type=Path,
        help="key directory (default keys/<prj>/, or key/<prj>/ when that holds the keys)",
    )
    p.add_argument("--prebuilt-dir", type=Path, help="prebuilt binaries (default prebuilt/<prj>/)")
    p.add_argument(
        "--vnd-sig-dir",
        type=Path,
        help="directory holding ASPEED's prebuilt vnd_ecc_sig.der / vnd_lms_sig.der "
        "(default vnd_sig/, else src/vnd_sig/)",
    )
    p.add_argument(
        "--allow-key-mismatch",
        action="store_true",
        help="build even when the config's owner FW keys are not the owner keys in caliptra_file, "
        "or the vendor FW keys / prebuilt vendor signatures do not match its selected vendor "
        "keys (a warning instead of an error; the device rejects such an image)",
    )


def _load(args: argparse.Namespace) -> Config:
    from ..config import is_2x, read_toml
    from ..errors import ConfigError
    from ..keys import key_match

    if args.cfg.is_file() and is_2x(read_toml(args.cfg)):
        raise ConfigError(
            f"{args.cfg}: a Caliptra 2.x config (SoC image fw_ids from 0x1000); "
            f"use {args.command}-2x --pqc-key-type 1|3"
        )

    cfg = load_config(
        args.cfg, key_dir=args.key_dir, prebuilt_dir=args.prebuilt_dir, vnd_sig_dir=args.vnd_sig_dir
    )
    key_match.check(cfg, allow=args.allow_key_mismatch)
    return cfg


def cmd_create_auth_man(args: argparse.Namespace) -> int:
    from ..build import check_outputs, create_auth_man, with_padded_copies

    cfg = _load(args)
    out = args.man or cfg.default_manifest_path()
    check_outputs(cfg, {"--man": out})
    m = create_auth_man(with_padded_copies(cfg), out)
    print(f"SoC manifest ({cfg.format}, {m.entry_count} images): {out}")
    return 0


def cmd_create_auth_flash(args: argparse.Namespace) -> int:
    from ..build import (
        check_outputs,
        create_auth_flash,
        create_auth_man,
        read_manifest,
        with_padded_copies,
    )

    cfg = _load(args)
    out = args.flash or cfg.default_flash_path()
    use_existing = args.man is not None and args.man.exists() and not args.man.is_dir()
    man_path = args.man or cfg.default_manifest_path()
    # the manifest is an output unless an existing one is used; never the flash image's path
    outputs = {"--flash": out, "--man": man_path}
    check_outputs(cfg, outputs)
    cfg = with_padded_copies(cfg)
    if use_existing:
        man = read_manifest(man_path)
    else:
        # without --man (or with a --man that does not exist yet) build the manifest first
        man = create_auth_man(cfg, man_path)
        print(f"SoC manifest ({cfg.format}, {man.entry_count} images): {man_path}")
    n = create_auth_flash(cfg, out, man, str(man_path))
    print(f"flash image ({n} bytes): {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Signed Caliptra SoC manifests and flash images.",
        epilog="--debug (anywhere on the line) shows tracebacks and debug logs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("create-auth-man", help="build the SoC manifest")
    add_project_options(p)
    p.add_argument("--man", type=Path, help="output (default out/<prj>-auth-manifest.bin)")
    p.set_defaults(func=cmd_create_auth_man)

    p = sub.add_parser("create-auth-flash", help="build the flash image")
    add_project_options(p)
    p.add_argument(
        "--man",
        type=Path,
        help="use this manifest if it exists, else build it there "
        "(default: build out/<prj>-auth-manifest.bin first)",
    )
    p.add_argument("--flash", type=Path, help="output (default out/<prj>-flash-image.bin)")
    p.set_defaults(func=cmd_create_auth_flash)

    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"imgtool.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"imgtool.cli.{name}":
                raise
            continue
        mod.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]  # accepted anywhere on the line
    _setup_logging(debug)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        rc: int = args.func(args)
        return rc
    except ImgtoolError as exc:
        if debug:
            traceback.print_exc()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `cptra-imgtool verify ... | head`: the reader left, nothing to say
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if debug:
            traceback.print_exc()
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{PROG}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the one top-level handler
        if debug:
            traceback.print_exc()
        print(
            f"{PROG}: error: internal error ({type(exc).__name__}: {exc}); rerun with --debug",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
