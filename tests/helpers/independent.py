"""An independent checker for built manifests and flash images.

Written from spec/manifest.md and spec/flash.md with plain struct offsets, `cryptography` for ECC
and the `hsslms` package for LMS. It deliberately imports nothing from imgtool.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from hsslms import LMS_Pub

# ASPEED layout offsets (spec/manifest.md)
ASPEED = {
    "version": 8,
    "sec_ver": 12,
    "flags": 16,
    "vnd_ecc_pub": 20,
    "vnd_lms_pub": 116,
    "vnd_sig_ecc": 164,
    "vnd_sig_lms": 260,
    "own_ecc_pub": 1880,
    "own_lms_pub": 1976,
    "own_sig_ecc": 2024,
    "own_sig_lms": 2120,
    "svn_ecc": 3740,
    "svn_lms": 3836,
    "vnd_imc_ecc": 5456,
    "vnd_imc_lms": 5552,
    "own_imc_ecc": 7172,
    "own_imc_lms": 7268,
    "imc": 8888,
    "len": 16004,
}
CAL1 = {
    "version": 8,
    "flags": 12,
    "vnd_ecc_pub": 16,
    "vnd_lms_pub": 112,
    "vnd_sig_ecc": 160,
    "vnd_sig_lms": 256,
    "own_ecc_pub": 1876,
    "own_lms_pub": 1972,
    "own_sig_ecc": 2020,
    "own_sig_lms": 2116,
    "vnd_imc_ecc": 3736,
    "vnd_imc_lms": 3832,
    "own_imc_ecc": 5452,
    "own_imc_lms": 5548,
    "imc": 7168,
    "len": 14284,
}
PREBUILT_TBS = struct.pack("<II", 1, 0) + bytes(144)


def word_swap(b: bytes) -> bytes:
    return b"".join(b[i : i + 4][::-1] for i in range(0, len(b), 4))


def ecc_pub_hw(pem: Path) -> bytes:
    key = serialization.load_pem_public_key(pem.read_bytes())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    n = key.public_numbers()
    return word_swap(n.x.to_bytes(48, "big") + n.y.to_bytes(48, "big"))


def ecc_verify(pub_pem_or_hw: Path | bytes, covered: bytes, hw_sig: bytes) -> bool:
    if isinstance(pub_pem_or_hw, Path):
        key = serialization.load_pem_public_key(pub_pem_or_hw.read_bytes())
    else:
        raw = word_swap(pub_pem_or_hw)
        key = ec.EllipticCurvePublicNumbers(
            int.from_bytes(raw[:48], "big"), int.from_bytes(raw[48:], "big"), ec.SECP384R1()
        ).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    raw = word_swap(hw_sig)
    der = utils.encode_dss_signature(
        int.from_bytes(raw[:48], "big"), int.from_bytes(raw[48:], "big")
    )
    try:
        key.verify(
            der, hashlib.sha384(covered).digest(), ec.ECDSA(utils.Prehashed(hashes.SHA384()))
        )
    except InvalidSignature:
        return False
    return True


def lms_exact(slot: bytes) -> bytes:
    """Cut a 1620-byte Caliptra LMS slot down to the exact RFC 8554 signature."""
    ots = struct.unpack(">I", slot[4:8])[0]
    p = {5: 200, 6: 101, 7: 51, 8: 26}[ots]
    lms_type = struct.unpack(">I", slot[1256:1260])[0]
    h = {10: 5, 11: 10, 12: 15, 13: 20}[lms_type]
    return slot[: 8 + 24 + 24 * p] + slot[1256 : 1260 + 24 * h]


def lms_verify(pub48: bytes, covered: bytes, slot: bytes) -> bool:
    try:
        LMS_Pub(pub48).verify(hashlib.sha384(covered).digest(), lms_exact(slot))
    except Exception:
        return False
    return True


def padded_sha384(data: bytes) -> bytes:
    return hashlib.sha384(data + bytes(-len(data) % 4)).digest()


def fields(man: bytes) -> dict[str, int]:
    return ASPEED if len(man) == ASPEED["len"] else CAL1


def get(man: bytes, name: str, size: int) -> bytes:
    off = fields(man)[name]
    return man[off : off + size]


def u32(b: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", b, off)[0])


def imc_entries(man: bytes) -> list[tuple[int, int, bytes]]:
    off = fields(man)["imc"]
    n = u32(man, off)
    return [
        (
            u32(man, off + 4 + 56 * i),
            u32(man, off + 8 + 56 * i),
            man[off + 12 + 56 * i : off + 60 + 56 * i],
        )
        for i in range(n)
    ]


def check_flash(data: bytes, base: int = 0) -> list[tuple[int, int, int]]:
    """Check FLSH magic, CRCs, offsets and padding; return the (id, offset, size) table."""
    f = data[base:]
    assert f[:4] == b"FLSH"
    version, count = struct.unpack_from("<HH", f, 4)
    assert version == 1
    assert u32(f, 8) == zlib.crc32(f[:8])
    assert u32(f, 12) == zlib.crc32(f[16:])
    table = [struct.unpack_from("<III", f, 16 + 12 * i) for i in range(count)]
    expect = 16 + 12 * count
    for ident, off, size in table:
        assert off == expect, (hex(ident), off, expect)
        assert size % 4 == 0
        expect += size
    assert expect == len(f)
    return [(int(a), int(b), int(c)) for a, b, c in table]
