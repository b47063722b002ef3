"""Caliptra 2.x firmware bundle (caliptra-fw.bin, marker "CMN2"): parse the manifest header.

Source: chipsalliance/caliptra-sw ``image/types/src/lib.rs`` at 879608b9 (the commit ASPEED's
cptra_imgtool pins for 2.x; ``ImageManifest`` with ``#[repr(C)]``), cross-read with that
commit's ``image/verify/src/verifier.rs`` and ``image/gen/src/generator.rs``. Layout, all
integers little-endian:

| offset | size | field |
|---|---|---|
| 0 | 4 | marker "CMN2" (u32 0x324E4D43) |
| 4 | 4 | size = 16956 (the ROM rejects other values) |
| 8 | 1 + 3 | pqc_key_type (1 = ML-DSA-87, 3 = LMS), 3 reserved bytes |
| 12 | 196 | ECC key descriptor: version u16 (= 1), reserved u8, key_hash_count u8, 4 x 48 hashes |
| 208 | 1540 | PQC key descriptor: version u16, key_type u8, key_hash_count u8, 32 x 48 hashes |
| 1748 | 4 | vendor ECC key index |
| 1752 | 96 | active vendor ECC public key (hw format) |
| 1848 | 4 | vendor PQC key index |
| 1852 | 2592 | active vendor PQC public key (LMS: first 48 bytes; ML-DSA-87: all, raw) |
| 4444 | 96 + 4628 | vendor signatures (ECC, PQC) |
| 9168 | 96 + 2592 | owner public keys (ECC, PQC) |
| 11856 | 96 + 4628 | owner signatures |
| 16580 | 8 | reserved |
| 16588 | 160 | header (vendor signatures cover its first 120 bytes, up to owner_data) |
| 16748 | 2 x 104 | TOC entries FMC, runtime |
Total 16956, then the FMC and runtime images.

Key hashes in the descriptors are SHA-384 of the key as stored (ECC 96 bytes; LMS its 48; ML-DSA
its 2592), kept in Caliptra's word format (each 4-byte word byte-reversed). The vendor PK hash
fuse is SHA-384 of both descriptors (1736 bytes); the owner PK hash fuse is SHA-384 of the owner
public keys (2688 bytes). Signatures: ECDSA P-384 and LMS sign SHA-384 of the covered header
bytes; ML-DSA-87 signs those bytes raw (pure ML-DSA, empty context). This module does no crypto.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import FormatError

MARKER = b"CMN2"
MARKER_1X = b"CMAN"
MANIFEST_SIZE = 16956
PQC_MLDSA = 1
PQC_LMS = 3
PQC_NAMES = {PQC_MLDSA: "ML-DSA-87", PQC_LMS: "LMS"}
KEY_DESCRIPTOR_VERSION = 1
VENDOR_ECC_MAX = 4
VENDOR_LMS_MAX = 32
VENDOR_MLDSA_MAX = 4
HASH_LEN = 48
ECC_PUB_LEN = 96
ECC_SIG_LEN = 96
LMS_PUB_LEN = 48
LMS_SIG_LEN = 1620
MLDSA_PUB_LEN = 2592
MLDSA_SIG_LEN = 4627  # FIPS 204; the slot adds one reserved zero byte
PQC_PUB_SLOT = 2592
PQC_SIG_SLOT = 4628

ECC_DESC_OFF = 12
ECC_DESC_LEN = 4 + VENDOR_ECC_MAX * HASH_LEN  # 196
PQC_DESC_OFF = ECC_DESC_OFF + ECC_DESC_LEN  # 208
PQC_DESC_LEN = 4 + VENDOR_LMS_MAX * HASH_LEN  # 1540
VENDOR_INFO_OFF = ECC_DESC_OFF
VENDOR_INFO_LEN = ECC_DESC_LEN + PQC_DESC_LEN  # 1736: what the vendor PK hash fuse covers
VENDOR_ECC_IDX_OFF = VENDOR_INFO_OFF + VENDOR_INFO_LEN  # 1748
VENDOR_ECC_PUB_OFF = VENDOR_ECC_IDX_OFF + 4  # 1752
VENDOR_PQC_IDX_OFF = VENDOR_ECC_PUB_OFF + ECC_PUB_LEN  # 1848
VENDOR_PQC_PUB_OFF = VENDOR_PQC_IDX_OFF + 4  # 1852
VENDOR_SIGS_OFF = VENDOR_PQC_PUB_OFF + PQC_PUB_SLOT  # 4444
OWNER_KEYS_OFF = VENDOR_SIGS_OFF + ECC_SIG_LEN + PQC_SIG_SLOT  # 9168
OWNER_KEYS_LEN = ECC_PUB_LEN + PQC_PUB_SLOT  # 2688: what the owner PK hash fuse covers
OWNER_SIGS_OFF = OWNER_KEYS_OFF + OWNER_KEYS_LEN  # 11856
RESERVED_OFF = OWNER_SIGS_OFF + ECC_SIG_LEN + PQC_SIG_SLOT  # 16580
RESERVED_LEN = 8
HEADER_OFF = RESERVED_OFF + RESERVED_LEN  # 16588
HEADER_LEN = 160
VENDOR_HEADER_LEN = 120  # up to owner_data
TOC_OFF = HEADER_OFF + HEADER_LEN  # 16748
TOC_LEN = 104
MAX_TOC_ENTRIES = 2
assert TOC_OFF + 2 * TOC_LEN == MANIFEST_SIZE


def swap_words(b: bytes) -> bytes:
    """Caliptra's word format <-> normal byte order (each 4-byte word reversed)."""
    return b"".join(b[i : i + 4][::-1] for i in range(0, len(b), 4))


@dataclass
class KeyDescriptor:
    version: int
    type_or_reserved: int  # PQC: key_type; ECC: the reserved byte
    count: int
    hashes: list[bytes]  # as stored (word format), all slots

    def hash_be(self, i: int) -> bytes:
        """Slot i's SHA-384 in normal byte order."""
        return swap_words(self.hashes[i])


@dataclass
class Toc2:
    name: str
    id: int
    type: int
    revision: bytes
    version: int
    reserved: bytes
    load_addr: int
    entry_point: int
    offset: int
    size: int
    digest: bytes  # as stored (word format)

    @property
    def digest_be(self) -> bytes:
        return swap_words(self.digest)


@dataclass
class Bundle2:
    raw: bytes  # the whole file
    size: int
    pqc_key_type: int
    type_reserved: bytes
    ecc_desc: KeyDescriptor
    pqc_desc: KeyDescriptor
    vendor_ecc_idx: int
    vendor_ecc_pub: bytes
    vendor_pqc_idx: int
    vendor_pqc_slot: bytes  # 2592 bytes
    vendor_ecc_sig: bytes
    vendor_pqc_sig_slot: bytes  # 4628 bytes
    owner_ecc_pub: bytes
    owner_pqc_slot: bytes
    owner_ecc_sig: bytes
    owner_pqc_sig_slot: bytes
    reserved: bytes
    header: bytes
    header_vendor_ecc_idx: int
    header_vendor_pqc_idx: int
    flags: int
    toc_len: int
    pl0_pauser: int
    toc_digest: bytes  # word format
    svn: int
    vendor_data: bytes
    owner_data: bytes
    fmc: Toc2
    runtime: Toc2

    @property
    def pqc_name(self) -> str:
        return PQC_NAMES.get(self.pqc_key_type, f"unknown ({self.pqc_key_type})")

    @property
    def pqc_pub_len(self) -> int:
        return MLDSA_PUB_LEN if self.pqc_key_type == PQC_MLDSA else LMS_PUB_LEN

    @property
    def pqc_sig_len(self) -> int:
        return MLDSA_SIG_LEN if self.pqc_key_type == PQC_MLDSA else LMS_SIG_LEN

    @property
    def vendor_pqc_pub(self) -> bytes:
        """The active vendor PQC key: the bytes the ROM hashes (48 for LMS, 2592 for ML-DSA)."""
        return self.vendor_pqc_slot[: self.pqc_pub_len]

    @property
    def owner_pqc_pub(self) -> bytes:
        return self.owner_pqc_slot[: self.pqc_pub_len]

    @property
    def vendor_pqc_sig(self) -> bytes:
        return self.vendor_pqc_sig_slot[: self.pqc_sig_len]

    @property
    def owner_pqc_sig(self) -> bytes:
        return self.owner_pqc_sig_slot[: self.pqc_sig_len]

    def vendor_tbs(self) -> bytes:
        """What the vendor signatures cover: the header up to owner_data (120 bytes)."""
        return self.header[:VENDOR_HEADER_LEN]

    def owner_tbs(self) -> bytes:
        """What the owner signatures cover: the whole 160-byte header."""
        return self.header

    def vendor_info_block(self) -> bytes:
        """Both key descriptors (1736 bytes): what the vendor PK hash fuse covers."""
        return self.raw[VENDOR_INFO_OFF : VENDOR_INFO_OFF + VENDOR_INFO_LEN]

    def owner_key_block(self) -> bytes:
        """The owner public keys (2688 bytes): what the owner PK hash fuse covers."""
        return self.raw[OWNER_KEYS_OFF : OWNER_KEYS_OFF + OWNER_KEYS_LEN]

    def toc_bytes(self) -> bytes:
        return self.raw[TOC_OFF : TOC_OFF + 2 * TOC_LEN]

    def image_bytes(self, toc: Toc2) -> bytes:
        return self.raw[toc.offset : toc.offset + toc.size]

    @property
    def end(self) -> int:
        return max(
            MANIFEST_SIZE, self.fmc.offset + self.fmc.size, self.runtime.offset + self.runtime.size
        )


def _desc(data: bytes, off: int, slots: int) -> KeyDescriptor:
    version, t, count = struct.unpack_from("<HBB", data, off)
    hashes = [
        bytes(data[off + 4 + i * HASH_LEN : off + 4 + (i + 1) * HASH_LEN]) for i in range(slots)
    ]
    return KeyDescriptor(version, t, count, hashes)


def _toc(data: bytes, off: int, name: str) -> Toc2:
    ident, typ = struct.unpack_from("<II", data, off)
    revision = bytes(data[off + 8 : off + 28])
    (version,) = struct.unpack_from("<I", data, off + 28)
    reserved = bytes(data[off + 32 : off + 40])
    load, entry, offset, size = struct.unpack_from("<IIII", data, off + 40)
    digest = bytes(data[off + 56 : off + 104])
    return Toc2(name, ident, typ, revision, version, reserved, load, entry, offset, size, digest)


def is_bundle2(data: bytes | memoryview) -> bool:
    return bytes(data[:4]) == MARKER


def parse_bundle2(data: bytes | memoryview, source: str = "caliptra-fw.bin") -> Bundle2:
    """Parse a CMN2 bundle's manifest. FormatError (one line, naming ``source`` and the field)
    when it is not one or is cut short; values are not judged here (verify does that)."""
    raw = bytes(data)
    if raw[:4] == MARKER_1X:
        raise FormatError(f"{source}: a Caliptra 1.x bundle (CMAN), not 2.x (CMN2)")
    if raw[:4] != MARKER:
        raise FormatError(f"{source}: marker: not a Caliptra 2.x bundle (CMN2), got {raw[:4]!r}")
    if len(raw) < MANIFEST_SIZE:
        raise FormatError(
            f"{source}: {len(raw)} bytes, shorter than the {MANIFEST_SIZE}-byte 2.x manifest"
        )
    (size,) = struct.unpack_from("<I", raw, 4)
    hdr = raw[HEADER_OFF : HEADER_OFF + HEADER_LEN]
    e_idx, p_idx, flags, toc_len, pauser = struct.unpack_from("<IIIII", hdr, 8)
    (svn,) = struct.unpack_from("<I", hdr, 76)

    def u32(off: int) -> int:
        return int(struct.unpack_from("<I", raw, off)[0])

    sig = ECC_SIG_LEN
    return Bundle2(
        raw=raw,
        size=size,
        pqc_key_type=raw[8],
        type_reserved=raw[9:12],
        ecc_desc=_desc(raw, ECC_DESC_OFF, VENDOR_ECC_MAX),
        pqc_desc=_desc(raw, PQC_DESC_OFF, VENDOR_LMS_MAX),
        vendor_ecc_idx=u32(VENDOR_ECC_IDX_OFF),
        vendor_ecc_pub=raw[VENDOR_ECC_PUB_OFF : VENDOR_ECC_PUB_OFF + ECC_PUB_LEN],
        vendor_pqc_idx=u32(VENDOR_PQC_IDX_OFF),
        vendor_pqc_slot=raw[VENDOR_PQC_PUB_OFF : VENDOR_PQC_PUB_OFF + PQC_PUB_SLOT],
        vendor_ecc_sig=raw[VENDOR_SIGS_OFF : VENDOR_SIGS_OFF + sig],
        vendor_pqc_sig_slot=raw[VENDOR_SIGS_OFF + sig : OWNER_KEYS_OFF],
        owner_ecc_pub=raw[OWNER_KEYS_OFF : OWNER_KEYS_OFF + ECC_PUB_LEN],
        owner_pqc_slot=raw[OWNER_KEYS_OFF + ECC_PUB_LEN : OWNER_SIGS_OFF],
        owner_ecc_sig=raw[OWNER_SIGS_OFF : OWNER_SIGS_OFF + sig],
        owner_pqc_sig_slot=raw[OWNER_SIGS_OFF + sig : RESERVED_OFF],
        reserved=raw[RESERVED_OFF:HEADER_OFF],
        header=hdr,
        header_vendor_ecc_idx=e_idx,
        header_vendor_pqc_idx=p_idx,
        flags=flags,
        toc_len=toc_len,
        pl0_pauser=pauser,
        toc_digest=hdr[28:76],
        svn=svn,
        vendor_data=hdr[80:120],
        owner_data=hdr[120:160],
        fmc=_toc(raw, TOC_OFF, "fmc"),
        runtime=_toc(raw, TOC_OFF + TOC_LEN, "runtime"),
    )
