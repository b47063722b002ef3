"""CLI: owner-sign-bundle (an OEM's own owner keys in the vendor's Caliptra firmware bundle)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def cmd_owner_sign_bundle(args: argparse.Namespace) -> int:
    from .. import owner_sign
    from ..config import load_config
    from ..fileio import atomic_write
    from ..fuses import fuse_words, owner_pk_hash

    cfg = load_config(
        args.cfg, key_dir=args.key_dir, prebuilt_dir=args.prebuilt_dir, check_files=False
    )
    src = owner_sign.input_path(cfg, args.input)
    owner_sign.check_output(cfg, src, args.out)
    od = owner_sign.OwnerData(
        owner_sign.parse_time(args.not_before, "--not-before") if args.not_before else None,
        owner_sign.parse_time(args.not_after, "--not-after") if args.not_after else None,
        _epoch(args.epoch),
    )
    data = owner_sign.read_bundle(src)
    owner_sign.check_vendor_signed(data, str(src))  # before any key is loaded or leaf spent
    keys = owner_sign.owner_keys(cfg, force=args.force)
    signed = owner_sign.owner_sign(data, str(src), keys, od)
    atomic_write(args.out, signed.data)
    print(f"owner-signed bundle: {args.out} (from {src})")
    for line in owner_sign.changes(signed):
        print(f"  {line}")
    b = signed.after
    print(
        f"  vendor signatures unchanged and verified (vendor ECC key {b.vendor_ecc_idx}, "
        f"LMS key {b.vendor_lms_idx}); owner signed with {keys.ecc_from}"
        + (f" and {keys.lms_from}" if signed.lms else " (ECC only)")
    )
    digest = owner_pk_hash(b)
    print(f"  owner_pk_hash = {digest.hex()}")
    print("  fuse_owner_pk_hash[0..11] = " + " ".join(f"0x{w:08x}" for w in fuse_words(digest)))
    lms_flag = "" if signed.lms_verify else " --no-lms-verify"
    print(
        f"next: cptra-imgtool fuses --caliptra-fw {args.out}{lms_flag} --out FUSES.toml; "
        f"set image_runtime_list.caliptra_file to {args.out.name} (in the prebuilt folder) "
        "unless it already names it"
    )
    if not signed.lms:
        print(
            "note: no owner FW LMS key: the owner LMS slots are empty, so this bundle boots only "
            "where the LMS verify fuse is off"
        )
    elif not signed.lms_verify:
        print(
            "note: the owner LMS key is not H15/W4 (--force): this bundle boots only where the "
            "LMS verify fuse is off"
        )
    return 0


def _epoch(text: str | None) -> int | None:
    """--epoch N: 0..65535 (a u16); checked here so that a bad value is one line, exit 2."""
    from ..errors import ConfigError

    if text is None:
        return None
    try:
        v = int(text, 0)
    except ValueError:
        raise ConfigError(f"--epoch {text!r}: not an integer") from None
    if not 0 <= v <= 0xFFFF:
        raise ConfigError(f"--epoch {v}: must be 0..65535 (a u16)")
    return v


def register(sub: Any) -> None:
    p = sub.add_parser(
        "owner-sign-bundle",
        help="put the config's owner keys into a vendor-signed Caliptra bundle and owner-sign it",
        description="Replace the owner ECC and LMS public keys of a vendor-signed Caliptra 1.x "
        "firmware bundle with the config's owner_fw_key_config keys, set owner_data, and sign "
        "the header with the owner FW keys (key files, an ECC key on a PKCS#11 token named by a "
        "pkcs11: URI in ecc_priv_key, a [sign_helper] command, or the signing server through "
        "`cptra-imgtool sign-helper --server`). The vendor signatures cover "
        "neither the owner keys nor owner_data, so they stay valid (checked); the result must "
        "pass `verify` with its own fuse values, or nothing is written. Never writes over its "
        "input.",
    )
    p.add_argument("--cfg", required=True, type=Path, help="project config (TOML)")
    p.add_argument("--key-dir", type=Path, help="key directory (default as for create-auth-man)")
    p.add_argument("--prebuilt-dir", type=Path, help="prebuilt binaries (default prebuilt/<prj>/)")
    p.add_argument(
        "--in",
        dest="input",
        type=Path,
        help="the vendor-signed bundle (default: the config's caliptra_file)",
    )
    p.add_argument("--out", required=True, type=Path, help="the owner-signed bundle to write")
    p.add_argument("--not-before", metavar="T", help="owner not_before, YYYYMMDDHHMMSSZ")
    p.add_argument("--not-after", metavar="T", help="owner not_after, YYYYMMDDHHMMSSZ")
    p.add_argument("--epoch", metavar="N", help="owner epoch, 0..65535")
    p.add_argument(
        "--force",
        action="store_true",
        help="accept an owner LMS key of another type than H15/W4 (tests; the result boots only "
        "where the LMS verify fuse is off)",
    )
    p.set_defaults(func=cmd_owner_sign_bundle)
