"""Trust anchors of a device: the fuse values the boot chain checks against (spec/trust.md).

A fuses file (TOML) says what the device has burnt in::

    [fuses]
    vendor_pk_hash = "<96 hex>"   # SHA-384 of the bundle's vendor public key block (1920 bytes)
    owner_pk_hash  = "<96 hex>"   # SHA-384 of the bundle's owner public keys (144 bytes); "" = none
    lms_verify     = true         # ECDSA and LMS (false: ECDSA only)
    secure_boot    = true         # false: the BootMCU skips the manifest checks
    min_svn        = 0            # optional: anti-rollback floor for the manifest security_version
    # optional, as the Caliptra ROM checks them: vendor_ecc_revocation (4-bit mask),
    # vendor_lms_revocation (32-bit mask), fmc_svn (0..32), runtime_svn (0..64; 0..128 on 2.x)

Caliptra 2.x parts add ``pqc_key_type`` (1 = ML-DSA-87, 3 = LMS: the fuse the 2.x ROM and runtime
take the PQC type from; ``lms_verify`` is then not needed, and refused when it contradicts the PQC
type: 2.x always checks ECC and the PQC type)
and ``vendor_mldsa_revocation`` (4-bit mask); their hashes are over the 2.x bundle's key
descriptors and owner keys (:func:`vendor_pk_hash2`, :func:`owner_pk_hash2`), and ``min_svn`` is
the SoC manifest SVN fuse.

Fuse words: Caliptra reads each hash as 12 u32 registers into an ``Array4x12`` and compares it
with the SHA-384 engine's digest word by word. caliptra-sw ``drivers/src/array.rs`` converts
between that array and bytes with big-endian words (``u8_to_u32_be_impl``), so register i holds
``u32.from_be_bytes(digest[4i : 4i + 4])``: the value software writes into
``fuse_key_manifest_pk_hash[i]`` / ``fuse_owner_pk_hash[i]``.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .formats.bundle1 import Bundle
from .formats.bundle2 import PQC_LMS, PQC_MLDSA, Bundle2

HASH_LEN = 48
_HEX96 = re.compile(r"[0-9a-fA-F]{96}")
FIELDS = (
    "vendor_pk_hash",
    "owner_pk_hash",
    "lms_verify",
    "secure_boot",
    "min_svn",
    "vendor_ecc_revocation",
    "vendor_lms_revocation",
    "fmc_svn",
    "runtime_svn",
    "pqc_key_type",
    "vendor_mldsa_revocation",
)
RUNTIME_SVN_MAX_1X = 64
# optional integer fuses: name -> (maximum, what it is)
RANGES = {
    "min_svn": (0xFFFFFFFF, "anti-rollback floor for the manifest security_version"),
    "vendor_ecc_revocation": (0xF, "bit i revokes vendor ECC key i (key 3 is never revoked)"),
    "vendor_lms_revocation": (0xFFFFFFFF, "bit i revokes vendor LMS key i (key 31 never)"),
    "fmc_svn": (32, "FMC firmware SVN fuse"),
    "runtime_svn": (128, "runtime firmware SVN fuse (0..64 on 1.x, 0..128 on 2.x)"),
    "vendor_mldsa_revocation": (0xF, "2.x: bit i revokes vendor ML-DSA key i (key 3 never)"),
}


@dataclass(frozen=True)
class Fuses:
    """What the device checks. ``vendor_pk_hash`` None: not given (allowed only with secure boot
    off); ``owner_pk_hash`` None: the owner hash fuse is not provisioned (any owner keys pass)."""

    vendor_pk_hash: bytes | None
    owner_pk_hash: bytes | None
    lms_verify: bool
    secure_boot: bool = True
    min_svn: int | None = None
    source: str = "fuses"
    vendor_ecc_revocation: int | None = None
    vendor_lms_revocation: int | None = None
    fmc_svn: int | None = None
    runtime_svn: int | None = None
    pqc_key_type: int | None = None  # Caliptra 2.x: 1 = ML-DSA-87, 3 = LMS
    vendor_mldsa_revocation: int | None = None


def vendor_pk_hash(b: Bundle) -> bytes:
    return hashlib.sha384(b.vendor_key_block()).digest()


def owner_pk_hash(b: Bundle) -> bytes:
    return hashlib.sha384(b.owner_key_block()).digest()


def vendor_pk_hash2(b: Bundle2) -> bytes:
    """Caliptra 2.x: SHA-384 of the ECC and PQC key descriptors (1736 bytes; caliptra-sw
    ``ImageManifest::vendor_pub_key_descriptors_range``). The descriptors hold the hashes of
    every vendor key, so the fuse covers all of them, active or not."""
    return hashlib.sha384(b.vendor_info_block()).digest()


def owner_pk_hash2(b: Bundle2) -> bytes:
    """Caliptra 2.x: SHA-384 of the owner ECC key and the whole 2592-byte PQC key slot
    (2688 bytes; ``ImageManifest::owner_pub_key_range``, unused LMS bytes included)."""
    return hashlib.sha384(b.owner_key_block()).digest()


def from_bundle2(b: Bundle2, source: str = "bundle") -> Fuses:
    """The fuses a Caliptra 2.x part needs to boot this bundle. Where the public source stops:
    how the SoC encodes ``pqc_key_type`` into its fuse register (caliptra-sw reads a value
    and maps 1 / 3; other encodings are the integrator's) is not defined there."""
    return Fuses(
        vendor_pk_hash2(b),
        owner_pk_hash2(b),
        b.pqc_key_type == PQC_LMS,
        True,
        None,
        source,
        pqc_key_type=b.pqc_key_type,
    )


def fuse_words(digest: bytes) -> list[int]:
    """The 12 fuse register values of a SHA-384 hash (big-endian words, see the module doc)."""
    if len(digest) != HASH_LEN:
        raise ValueError("a fuse hash is 48 bytes")
    return [int.from_bytes(digest[i : i + 4], "big") for i in range(0, HASH_LEN, 4)]


def from_bundle(b: Bundle, lms_verify: bool, source: str = "bundle") -> Fuses:
    return Fuses(vendor_pk_hash(b), owner_pk_hash(b), lms_verify, True, None, source)


def _err(path: Path, field: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: fuses.{field}: {msg}")


def _hash(path: Path, table: dict[str, Any], field: str) -> bytes | None:
    value = table.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _err(path, field, f"expected a string of 96 hex digits, got {type(value).__name__}")
    if value == "":
        return None
    if not _HEX96.fullmatch(value):
        raise _err(path, field, f"expected 96 hex digits (a SHA-384 hash), got {len(value)} chars")
    digest = bytes.fromhex(value)
    if not any(digest):
        raise _err(path, field, 'all zero: write "" for a hash fuse that is not provisioned')
    return digest


def _bool(path: Path, table: dict[str, Any], field: str, default: bool | None) -> bool:
    value = table.get(field, default)
    if value is None:
        raise _err(path, field, "missing (true or false)")
    if not isinstance(value, bool):
        raise _err(path, field, f"expected true or false, got {value!r}")
    return value


def load(path: str | Path) -> Fuses:
    """Read and validate a fuses file. Raises ConfigError with a one-line message."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: fuses file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read fuses file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    for name, value in raw.items():
        if name == "fuses":
            continue
        if isinstance(value, dict):
            raise ConfigError(f"{p}: [{name}]: unknown section (a fuses file has only [fuses])")
        raise ConfigError(f"{p}: {name}: outside the [fuses] section")
    table = raw.get("fuses")
    if not isinstance(table, dict):
        raise ConfigError(f"{p}: [fuses]: missing section")
    unknown = sorted(set(table) - set(FIELDS))
    if unknown:
        raise _err(p, unknown[0], f"unknown key (known: {', '.join(FIELDS)})")
    secure_boot = _bool(p, table, "secure_boot", True)
    pqc = table.get("pqc_key_type")
    if pqc is not None and (isinstance(pqc, bool) or pqc not in (PQC_MLDSA, PQC_LMS)):
        raise _err(p, "pqc_key_type", f"must be 1 (ML-DSA-87) or 3 (LMS), got {pqc!r}")
    lms_verify = _bool(p, table, "lms_verify", None if pqc is None else pqc == PQC_LMS)
    if pqc is not None and lms_verify != (pqc == PQC_LMS):
        raise _err(
            p,
            "lms_verify",
            f"{'true' if lms_verify else 'false'} contradicts pqc_key_type = {pqc}: on Caliptra "
            "2.x the PQC type decides (LMS is verified exactly when pqc_key_type = 3); drop "
            "lms_verify",
        )
    vendor = _hash(p, table, "vendor_pk_hash")
    if "owner_pk_hash" not in table:
        raise _err(p, "owner_pk_hash", 'missing ("" when the owner hash fuse is not provisioned)')
    owner = _hash(p, table, "owner_pk_hash")
    if vendor is None and secure_boot:
        raise _err(
            p,
            "vendor_pk_hash",
            "required with secure boot on (a provisioned part's vendor hash fuse is never zero)",
        )
    ints: dict[str, int | None] = {}
    for name, (top, _) in RANGES.items():
        value = table.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                raise _err(p, name, f"expected an integer, got {value!r}")
            if name == "runtime_svn" and pqc is None:
                top = RUNTIME_SVN_MAX_1X  # Caliptra 1.x; 2.x (pqc_key_type given): 0..128
            if not 0 <= value <= top:
                raise _err(p, name, f"must be 0..{top}, got {value}")
        ints[name] = value
    return Fuses(
        vendor,
        owner,
        lms_verify,
        secure_boot,
        ints["min_svn"],
        f"fuses {p}",
        ints["vendor_ecc_revocation"],
        ints["vendor_lms_revocation"],
        ints["fmc_svn"],
        ints["runtime_svn"],
        pqc,
        ints["vendor_mldsa_revocation"],
    )


def to_toml(f: Fuses, comment: str = "") -> str:
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [
        "[fuses]",
        f'vendor_pk_hash = "{f.vendor_pk_hash.hex() if f.vendor_pk_hash else ""}"',
        f'owner_pk_hash = "{f.owner_pk_hash.hex() if f.owner_pk_hash else ""}"',
        f"lms_verify = {'true' if f.lms_verify else 'false'}",
        f"secure_boot = {'true' if f.secure_boot else 'false'}",
    ]
    if f.pqc_key_type is not None:
        lines.append(f"pqc_key_type = {f.pqc_key_type}")
    for name in RANGES:
        value = getattr(f, name)
        if value is not None:
            lines.append(f"{name} = {value}")
    return "\n".join(lines) + "\n"


def to_json(f: Fuses) -> dict[str, Any]:
    def h(d: bytes | None) -> dict[str, Any] | None:
        if d is None:
            return None
        return {"hex": d.hex(), "words": [f"0x{w:08x}" for w in fuse_words(d)]}

    return {
        "vendor_pk_hash": h(f.vendor_pk_hash),
        "owner_pk_hash": h(f.owner_pk_hash),
        "lms_verify": f.lms_verify,
        "secure_boot": f.secure_boot,
        "pqc_key_type": f.pqc_key_type,
        **{name: getattr(f, name) for name in RANGES},
    }
