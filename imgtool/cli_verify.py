"""CLI: verify and inspect."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .errors import FormatError


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    except OSError as exc:
        raise FormatError(f"{path}: cannot read: {exc.strerror}") from None


def cmd_verify(args: argparse.Namespace) -> int:
    from .config import load_config
    from .verify import report_json, verify_bytes

    data = _read(args.file)
    cfg = None
    if args.cfg is not None:
        cfg = load_config(args.cfg, key_dir=args.key_dir, prebuilt_dir=args.prebuilt_dir)
    cal = _read(args.caliptra_fw) if args.caliptra_fw else None
    try:
        report = verify_bytes(data, cfg=cfg, key_dir=args.key_dir, caliptra_fw=cal)
    except FormatError as exc:
        raise FormatError(f"{args.file}: {exc}") from None
    if args.json:
        print(json.dumps(report_json(report), indent=2))
    else:
        print(f"{args.file}: {report.kind}")
        for c in report.checks:
            print(c.line())
        failed = sum(not c.ok for c in report.checks)
        print(f"{len(report.checks) - failed} checks passed, {failed} failed")
    return 0 if report.ok else 1


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect import describe, render

    data = _read(args.file)
    cfg = None
    if args.cfg is not None:  # also show where that config's inputs resolve (vnd_sig, keys)
        from .config import load_config

        cfg = load_config(
            args.cfg,
            key_dir=args.key_dir,
            prebuilt_dir=args.prebuilt_dir,
            vnd_sig_dir=args.vnd_sig_dir,
            check_files=False,
        )
    try:
        doc = describe(data, cfg)
    except FormatError as exc:
        raise FormatError(f"{args.file}: {exc}") from None
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("verify", help="check every checksum, digest and signature of a file")
    p.add_argument("file", type=Path, help="flash image, SoC manifest or caliptra-fw.bin")
    p.add_argument("--cfg", type=Path, help="also compare with what this config says")
    p.add_argument("--key-dir", type=Path, help="FW public keys (vnd-fw-ecc-pubk.pem, ...)")
    p.add_argument("--prebuilt-dir", type=Path, help="prebuilt binaries of --cfg")
    p.add_argument("--caliptra-fw", type=Path, help="Caliptra bundle whose keys to verify with")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("inspect", help="show what is inside a file")
    p.add_argument("file", type=Path)
    p.add_argument("--cfg", type=Path, help="also show where this config's inputs resolve")
    p.add_argument("--key-dir", type=Path, help="with --cfg: key directory")
    p.add_argument("--prebuilt-dir", type=Path, help="with --cfg: prebuilt binaries")
    p.add_argument("--vnd-sig-dir", type=Path, help="with --cfg: prebuilt vendor signatures")
    p.add_argument("--json", action="store_true", help="stable JSON (docs/inspect-json.md)")
    p.set_defaults(func=cmd_inspect)
