"""CLI: verify, inspect, fuses."""

from __future__ import annotations

import argparse
import json
import mmap
from pathlib import Path
from typing import Any

from ..errors import ConfigError, FormatError


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise FormatError(f"{path}: is a directory") from None
    except OSError as exc:
        raise FormatError(f"{path}: cannot read: {exc.strerror}") from None


def _map(path: Path) -> memoryview:
    """The file's bytes without reading a large flash image into memory twice."""
    try:
        with open(path, "rb") as fh:
            if fh.seek(0, 2) == 0:
                return memoryview(b"")
            return memoryview(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise FormatError(f"{path}: is a directory") from None
    except OSError as exc:
        raise FormatError(f"{path}: cannot read: {exc.strerror}") from None


def cmd_verify(args: argparse.Namespace) -> int:
    from .. import fuses
    from ..config import load_config
    from ..verify import AnchorError, Anchors, Status, verify_bytes

    data = _map(args.file)
    anchors = Anchors()
    if args.fuses is not None:
        anchors.fuses = fuses.load(args.fuses)
    if args.cfg is not None:
        from ..config import is_2x, read_toml
        from ..config2 import load_config2

        if is_2x(read_toml(args.cfg)):
            anchors.cfg2 = load_config2(
                args.cfg, key_dir=args.key_dir, prebuilt_dir=args.prebuilt_dir, private_keys=False
            )
        else:
            anchors.cfg = load_config(
                args.cfg, key_dir=args.key_dir, prebuilt_dir=args.prebuilt_dir, private_keys=False
            )
    if args.prebuilt_dir is not None and args.cfg is None:
        raise ConfigError("--prebuilt-dir: only with --cfg (it says where the config's files are)")
    if args.key_dir is not None:
        if not args.key_dir.is_dir():
            raise ConfigError(f"{args.key_dir}: --key-dir: not a directory")
        if not any(args.key_dir.glob("*-pubk.pem")) and not any(
            args.key_dir.glob("*-ecc-prvk.pem")
        ):
            raise ConfigError(
                f"{args.key_dir}: --key-dir: no public keys in it (vnd-fw-ecc-pubk.pem, "
                "own-man-lms-pubk.pem, ...)"
            )
        anchors.key_dir = args.key_dir
    if args.caliptra_fw is not None:
        anchors.caliptra_fw = _read(args.caliptra_fw)
        anchors.caliptra_fw_name = str(args.caliptra_fw)
    anchors.accept_unprovisioned = args.accept_unprovisioned
    if args.fw_toc is not None:
        anchors.fw_toc = _read(args.fw_toc)
        anchors.fw_toc_name = str(args.fw_toc)
    try:
        report = verify_bytes(data, anchors, integrity_only=args.integrity_only)
    except FormatError as exc:
        raise FormatError(f"{args.file}: {exc}") from None
    except AnchorError as exc:
        raise ConfigError(str(exc)) from None
    if args.json:
        doc = {"file": str(args.file), **report.to_json()}
        print(json.dumps(doc, indent=2))
    else:
        print(f"{args.file}: {report.kind}")
        if report.anchors:
            print(f"trust anchors: {'; '.join(report.anchors)}")
        for c in report.checks:
            if not args.quiet or c.status is Status.FAIL:
                print(c.line())
        print(report.summary())
    return report.exit_code


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..inspect import describe, render

    data = _read(args.file)
    cfg = None
    if args.cfg is not None:  # also show where that config's inputs resolve (vnd_sig, keys)
        from ..config import load_config

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


def cmd_fuses(args: argparse.Namespace) -> int:
    from .. import fuses
    from ..fileio import atomic_write
    from ..formats import bundle1 as bundle
    from ..formats import bundle2

    data = _read(args.caliptra_fw)
    if data[:4] == bundle2.MARKER:
        return _fuses2(args, bundle2.parse_bundle2(data, str(args.caliptra_fw)))
    b = bundle.parse_bundle(data, str(args.caliptra_fw))
    f = fuses.from_bundle(b, lms_verify=args.lms_verify)
    if args.out is not None:
        comment = (
            f"fuse values for {args.caliptra_fw} (cptra-imgtool fuses)\n"
            "vendor_pk_hash: SHA-384 of the 4 ECC + 32 LMS vendor public keys (1920 bytes)\n"
            "owner_pk_hash: SHA-384 of the owner ECC + LMS public keys (144 bytes)"
        )
        atomic_write(args.out, fuses.to_toml(f, comment).encode())
    if args.json:
        print(json.dumps({"caliptra_fw": str(args.caliptra_fw), **fuses.to_json(f)}, indent=2))
        return 0
    print(f"{args.caliptra_fw}: Caliptra 1.x firmware bundle")
    for name, reg, digest in (
        ("vendor_pk_hash", "fuse_key_manifest_pk_hash", f.vendor_pk_hash),
        ("owner_pk_hash", "fuse_owner_pk_hash", f.owner_pk_hash),
    ):
        _print_hash(name, reg, digest)
    print(f"lms_verify = {'true' if f.lms_verify else 'false'}")
    if args.out is not None:
        print(f"written: {args.out}")
    return 0


def _fuses2(args: argparse.Namespace, b: Any) -> int:
    """`fuses` for a Caliptra 2.x bundle: the hashes as far as caliptra-sw (879608b9) defines
    them (vendor: both key descriptors; owner: the owner keys), and the PQC type."""
    from .. import fuses
    from ..fileio import atomic_write

    f = fuses.from_bundle2(b, source=str(args.caliptra_fw))
    if args.out is not None:
        comment = (
            f"fuse values for {args.caliptra_fw} (cptra-imgtool fuses, Caliptra 2.x)\n"
            "vendor_pk_hash: SHA-384 of the ECC and PQC key descriptors (1736 bytes)\n"
            "owner_pk_hash: SHA-384 of the owner ECC + PQC public keys (2688 bytes)\n"
            "pqc_key_type: 1 = ML-DSA-87, 3 = LMS (how the SoC encodes it into its fuse "
            "register is not in the public source)"
        )
        atomic_write(args.out, fuses.to_toml(f, comment).encode())
    if args.json:
        doc = {"caliptra_fw": str(args.caliptra_fw), "generation": "2.x", **fuses.to_json(f)}
        print(json.dumps(doc, indent=2))
        return 0
    print(f"{args.caliptra_fw}: Caliptra 2.x firmware bundle (PQC {b.pqc_name})")
    for name, reg, digest in (
        ("vendor_pk_hash", "fuse_vendor_pk_hash", f.vendor_pk_hash),
        ("owner_pk_hash", "fuse_owner_pk_hash", f.owner_pk_hash),
    ):
        _print_hash(name, reg, digest)
    print(f"pqc_key_type = {f.pqc_key_type} ({b.pqc_name})")
    if args.out is not None:
        print(f"written: {args.out}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "verify",
        help="check a file as the boot chain does, from trust anchors",
        description="Check a flash image, SoC manifest or caliptra-fw.bin the way the AST2700 "
        "boot chain does. Authenticity needs at least one trust anchor: --fuses (what the "
        "device has burnt in), --cfg (the image is what this config builds; 1.x or 2.x), --key-dir "
        "(the image's keys are these), --caliptra-fw (the image's bundle is this one). Caliptra "
        "2.x: the PQC type (pqc_key_type fuse) decides which PQC signatures are checked, and "
        "secure_boot = false does not switch the runtime's manifest checks off. Exit 0: the "
        "device would boot it and it is what the anchors say; 1: a check failed or "
        "authenticity was not established; 2: bad input.",
    )
    p.add_argument("file", type=Path, help="flash image, SoC manifest or caliptra-fw.bin")
    p.add_argument("--fuses", type=Path, help="fuses file (TOML, see `cptra-imgtool fuses`)")
    p.add_argument("--cfg", type=Path, help="the config this image must be built from")
    p.add_argument("--key-dir", type=Path, help="public keys the image's keys must equal")
    p.add_argument("--prebuilt-dir", type=Path, help="prebuilt binaries of --cfg")
    p.add_argument("--caliptra-fw", type=Path, help="the Caliptra bundle the device runs")
    p.add_argument(
        "--accept-unprovisioned",
        action="store_true",
        help="Caliptra 2.x: accept an IMC that no provisioned fuse authenticates: the owner PK "
        "hash fuse unprovisioned (any owner key boots) and either flags bit 0 clear (no vendor "
        "IMC signature) or the vendor PK hash fuse unprovisioned too; without it such a "
        "manifest fails (exit 1, authenticity of the IMC not established) unless --cfg or "
        "--key-dir names its keys",
    )
    p.add_argument(
        "--fw-toc",
        type=Path,
        help="Caliptra 2.x: the fw_toc.bin written beside the flash image; its entries must be "
        "the flash's (and, with --cfg, its names the config's files)",
    )
    p.add_argument(
        "--integrity-only",
        action="store_true",
        help="without anchors: exit 0 when structure, checksums and digests hold (a fw_toc.bin "
        "alone, which carries no signature, exits 0 only with this)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.add_argument("--quiet", "-q", action="store_true", help="print only failures and the summary")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("inspect", help="show what is inside a file")
    p.add_argument("file", type=Path)
    p.add_argument("--cfg", type=Path, help="also show where this config's inputs resolve")
    p.add_argument("--key-dir", type=Path, help="with --cfg: key directory")
    p.add_argument("--prebuilt-dir", type=Path, help="with --cfg: prebuilt binaries")
    p.add_argument("--vnd-sig-dir", type=Path, help="with --cfg: prebuilt vendor signatures")
    p.add_argument("--json", action="store_true", help="stable JSON (docs/inspect-json.md)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "fuses",
        help="the vendor/owner PK hash fuse values of a Caliptra bundle",
        description="Compute the fuse values a device needs to boot this Caliptra firmware "
        "bundle: the vendor and owner public key hashes (hex, and as the 12 fuse register "
        "words), and write them as a fuses file for `verify --fuses`.",
    )
    p.add_argument("--caliptra-fw", type=Path, required=True, help="caliptra-fw.bin")
    lms = p.add_mutually_exclusive_group()
    lms.add_argument(
        "--lms-verify",
        dest="lms_verify",
        action="store_true",
        default=True,
        help="the device checks ECDSA and LMS (default)",
    )
    lms.add_argument("--no-lms-verify", dest="lms_verify", action="store_false", help="ECDSA only")
    p.add_argument("--out", type=Path, help="write a fuses file (TOML) for verify --fuses")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_fuses)


def _print_hash(name: str, reg: str, digest: bytes | None) -> None:
    """A PK hash as hex and as the 12 fuse words the ROM compares."""
    from .. import fuses

    assert digest is not None
    print(f"{name} = {digest.hex()}")
    words = fuses.fuse_words(digest)
    print(f"  {reg}[0..11] (u32, big-endian words of the hash):")
    print("   " + " ".join(f"0x{w:08x}" for w in words[:6]))
    print("   " + " ".join(f"0x{w:08x}" for w in words[6:]))
