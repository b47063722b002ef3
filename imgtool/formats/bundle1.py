"""Caliptra 1.x firmware bundle (caliptra-fw.bin, marker "CMAN"): parse and check it.

Layout (spec/flash.md): marker, size, a 5512-byte preamble (4 vendor ECC keys, 32 vendor LMS
keys, the selected indexes, vendor signatures, owner keys and signatures), a 156-byte header,
the FMC and runtime TOC entries, then the images. Keys and signatures use Caliptra's hardware
formats (see :mod:`imgtool.keys.ecc`, :mod:`imgtool.keys.lms`). The TOC and image digests are
stored as
SHA-384 values with each 4-byte word byte-reversed.

Signature coverage (Caliptra 1.x ROM): the vendor signatures cover the header without its
trailing 40-byte owner_data; the owner signatures cover the whole 156-byte header.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from ..errors import FormatError

MARKER = b"CMAN"
MARKER_2X = b"CMN2"
MANIFEST_SIZE = 5884
VENDOR_ECC_KEYS = 4
VENDOR_LMS_KEYS = 32
PREAMBLE_OFF = 8
HEADER_OFF = 0x1590
HEADER_LEN = 156
OWNER_DATA_LEN = 40
TOC_OFF = 0x162C
TOC_LEN = 104
# the preamble's key blocks, as the fuses hash them (spec/trust.md)
VENDOR_KEYS_OFF = PREAMBLE_OFF
VENDOR_KEYS_LEN = 96 * VENDOR_ECC_KEYS + 48 * VENDOR_LMS_KEYS  # 1920
OWNER_KEYS_OFF = VENDOR_KEYS_OFF + VENDOR_KEYS_LEN + 8 + 96 + 1620  # 3652
OWNER_KEYS_LEN = 96 + 48
RESERVED_OFF = OWNER_KEYS_OFF + OWNER_KEYS_LEN + 96 + 1620  # 5512: the preamble's last 8 bytes
RESERVED_LEN = 8
MAX_TOC_ENTRIES = 2


def _swap(b: bytes) -> bytes:
    return b"".join(b[i : i + 4][::-1] for i in range(0, len(b), 4))


@dataclass
class TocEntry:
    name: str
    id: int
    type: int
    revision: bytes
    version: int
    svn: int
    load_addr: int
    entry_point: int
    offset: int
    size: int
    digest: bytes  # as stored (word-swapped)
    raw: bytes

    @property
    def digest_be(self) -> bytes:
        """The SHA-384 value in normal byte order."""
        return _swap(self.digest)


@dataclass
class Bundle:
    size: int
    vendor_ecc_pubkeys: list[bytes]
    vendor_lms_pubkeys: list[bytes]
    vendor_ecc_idx: int
    vendor_lms_idx: int
    vendor_ecc_sig: bytes
    vendor_lms_sig: bytes
    owner_ecc_pubkey: bytes
    owner_lms_pubkey: bytes
    owner_ecc_sig: bytes
    owner_lms_sig: bytes
    header: bytes
    header_vendor_ecc_idx: int
    header_vendor_lms_idx: int
    flags: int
    toc_len: int
    toc_digest: bytes  # as stored (word-swapped)
    fmc: TocEntry
    runtime: TocEntry
    data: bytes

    @property
    def vendor_ecc_pubkey(self) -> bytes:
        return self.vendor_ecc_pubkeys[self.vendor_ecc_idx]

    @property
    def vendor_lms_pubkey(self) -> bytes:
        return self.vendor_lms_pubkeys[self.vendor_lms_idx]

    def vendor_tbs(self) -> bytes:
        return self.header[: HEADER_LEN - OWNER_DATA_LEN]

    def owner_tbs(self) -> bytes:
        return self.header

    def vendor_key_block(self) -> bytes:
        """All 4 vendor ECC and 32 vendor LMS public keys as stored: what vendor_pk_hash covers."""
        return self.data[VENDOR_KEYS_OFF : VENDOR_KEYS_OFF + VENDOR_KEYS_LEN]

    def owner_key_block(self) -> bytes:
        """The owner ECC and LMS public keys as stored: what owner_pk_hash covers."""
        return self.data[OWNER_KEYS_OFF : OWNER_KEYS_OFF + OWNER_KEYS_LEN]

    def reserved(self) -> bytes:
        return self.data[RESERVED_OFF : RESERVED_OFF + RESERVED_LEN]

    @property
    def end(self) -> int:
        """Where the last image ends."""
        return max(self.fmc.offset + self.fmc.size, self.runtime.offset + self.runtime.size)

    def toc_bytes(self) -> bytes:
        return self.fmc.raw + self.runtime.raw

    def image_bytes(self, toc: TocEntry) -> bytes:
        return self.data[toc.offset : toc.offset + toc.size]


def _toc(data: bytes, off: int, name: str) -> TocEntry:
    raw = data[off : off + TOC_LEN]
    tid, ttype = struct.unpack_from("<II", raw, 0)
    revision = raw[8:28]
    version, svn, _reserved, load, entry, offset, size = struct.unpack_from("<7I", raw, 28)
    return TocEntry(
        name, tid, ttype, revision, version, svn, load, entry, offset, size, raw[56:104], raw
    )


def parse_bundle(data: bytes, source: str = "caliptra-fw.bin") -> Bundle:
    """Parse a Caliptra 1.x firmware bundle. Raises FormatError with a one-line message."""
    if data[:4] == MARKER_2X:
        raise FormatError(f"{source}: Caliptra 2.x firmware bundle (CMN2): not supported yet")
    if data[:4] != MARKER:
        raise FormatError(f"{source}: not a Caliptra firmware bundle (no CMAN marker)")
    if len(data) < TOC_OFF + 2 * TOC_LEN:
        raise FormatError(f"{source}: {len(data)} bytes, truncated Caliptra firmware bundle")
    (size,) = struct.unpack_from("<I", data, 4)
    if size != MANIFEST_SIZE:
        raise FormatError(f"{source}: manifest size {size}, expected {MANIFEST_SIZE}")
    off = PREAMBLE_OFF
    ecc_keys = [data[off + 96 * i : off + 96 * (i + 1)] for i in range(VENDOR_ECC_KEYS)]
    off += 96 * VENDOR_ECC_KEYS
    lms_keys = [data[off + 48 * i : off + 48 * (i + 1)] for i in range(VENDOR_LMS_KEYS)]
    off += 48 * VENDOR_LMS_KEYS
    ecc_idx, lms_idx = struct.unpack_from("<II", data, off)
    off += 8
    vsig_ecc = data[off : off + 96]
    vsig_lms = data[off + 96 : off + 96 + 1620]
    off += 96 + 1620
    own_ecc = data[off : off + 96]
    own_lms = data[off + 96 : off + 144]
    off += 144
    osig_ecc = data[off : off + 96]
    osig_lms = data[off + 96 : off + 96 + 1620]
    if ecc_idx >= VENDOR_ECC_KEYS or lms_idx >= VENDOR_LMS_KEYS:
        raise FormatError(f"{source}: vendor key index out of range ({ecc_idx}, {lms_idx})")
    header = data[HEADER_OFF : HEADER_OFF + HEADER_LEN]
    h_ecc, h_lms, flags, toc_len = struct.unpack_from("<4I", header, 8)
    toc_digest = header[28:76]
    fmc = _toc(data, TOC_OFF, "fmc")
    rt = _toc(data, TOC_OFF + TOC_LEN, "runtime")
    for toc in (fmc, rt):
        if toc.offset + toc.size > len(data) or toc.offset < MANIFEST_SIZE:
            raise FormatError(
                f"{source}: {toc.name} image (offset {toc.offset}, size "
                f"{toc.size}) outside the file"
            )
    return Bundle(
        size,
        ecc_keys,
        lms_keys,
        ecc_idx,
        lms_idx,
        vsig_ecc,
        vsig_lms,
        own_ecc,
        own_lms,
        osig_ecc,
        osig_lms,
        header,
        h_ecc,
        h_lms,
        flags,
        toc_len,
        toc_digest,
        fmc,
        rt,
        data,
    )


def digest_checks(b: Bundle) -> list[tuple[str, bool]]:
    """(what, ok) for the TOC digest and the FMC / runtime digests."""
    toc_ok = hashlib.sha384(b.toc_bytes()).digest() == _swap(b.toc_digest)
    out = [("toc digest", toc_ok)]
    for toc in (b.fmc, b.runtime):
        out.append(
            (f"{toc.name} digest", hashlib.sha384(b.image_bytes(toc)).digest() == toc.digest_be)
        )
    return out


# ---------------------------------------------------------------------------- re-signing
# (spec/trust.md: no vendor signature covers the owner keys, the owner signatures or owner_data)
VENDOR_IDX_OFF = VENDOR_KEYS_OFF + VENDOR_KEYS_LEN  # the preamble's ECC and LMS key indexes
VENDOR_SIGS_OFF = VENDOR_IDX_OFF + 8
OWNER_SIGS_OFF = OWNER_KEYS_OFF + OWNER_KEYS_LEN
OWNER_DATA_OFF = HEADER_OFF + HEADER_LEN - OWNER_DATA_LEN
ECC_SIG_LEN, LMS_SIG_LEN = 96, 1620
# owner_data (caliptra-sw OwnerSignedData): not_before[15], not_after[15], epoch[2], reserved[8]
TIME_LEN = 15
OWNER_EPOCH_OFF = 2 * TIME_LEN


def with_owner(b: Bundle, ecc_pub: bytes, lms_pub: bytes, owner_data: bytes) -> bytes:
    """The bundle's bytes with new owner public keys (hardware format ECC, 48-byte LMS) and a new
    owner_data, the owner signatures zeroed; nothing the vendor signatures cover changes."""
    if len(ecc_pub) != 96 or len(lms_pub) != 48 or len(owner_data) != OWNER_DATA_LEN:
        raise ValueError("owner keys are 96 + 48 bytes and owner_data 40")
    out = bytearray(b.data)
    out[OWNER_KEYS_OFF : OWNER_KEYS_OFF + OWNER_KEYS_LEN] = ecc_pub + lms_pub
    out[OWNER_SIGS_OFF : OWNER_SIGS_OFF + ECC_SIG_LEN + LMS_SIG_LEN] = bytes(
        ECC_SIG_LEN + LMS_SIG_LEN
    )
    out[OWNER_DATA_OFF : OWNER_DATA_OFF + OWNER_DATA_LEN] = owner_data
    return bytes(out)


def with_owner_signatures(data: bytes, ecc_sig: bytes, lms_sig: bytes) -> bytes:
    """Store the owner ECC (hardware format) and LMS (1620-byte slot) signatures."""
    if len(ecc_sig) != ECC_SIG_LEN or len(lms_sig) != LMS_SIG_LEN:
        raise ValueError("owner signatures are 96 + 1620 bytes")
    out = bytearray(data)
    out[OWNER_SIGS_OFF : OWNER_SIGS_OFF + ECC_SIG_LEN + LMS_SIG_LEN] = ecc_sig + lms_sig
    return bytes(out)


def with_vendor_keys(
    b: Bundle, ecc_pub: bytes, lms_pub: bytes, ecc_sig: bytes, lms_sig: bytes
) -> bytes:
    """The bundle with new vendor keys in the selected slots and new vendor signatures (lab
    bundles for parts without vendor fuses: `new-project --vendor-keys`)."""
    if len(ecc_pub) != 96 or len(lms_pub) != 48:
        raise ValueError("vendor keys are 96 + 48 bytes")
    if len(ecc_sig) != ECC_SIG_LEN or len(lms_sig) != LMS_SIG_LEN:
        raise ValueError("vendor signatures are 96 + 1620 bytes")
    out = bytearray(b.data)
    e = VENDOR_KEYS_OFF + 96 * b.vendor_ecc_idx
    out[e : e + 96] = ecc_pub
    m = VENDOR_KEYS_OFF + 96 * VENDOR_ECC_KEYS + 48 * b.vendor_lms_idx
    out[m : m + 48] = lms_pub
    out[VENDOR_SIGS_OFF : VENDOR_SIGS_OFF + ECC_SIG_LEN + LMS_SIG_LEN] = ecc_sig + lms_sig
    return bytes(out)


def owner_data_fields(raw: bytes) -> dict[str, str | int | None]:
    """owner_data as plain data: not_before / not_after as text when they are an ASN.1
    GeneralizedTime (YYYYMMDDHHMMSSZ), else hex (None: all zero); epoch as a u16 (little
    endian, as the rest of the header)."""

    def time(b: bytes) -> str | None:
        if not any(b):
            return None
        ok = len(b) == TIME_LEN and b[:14].isdigit() and b[14:] == b"Z"
        return b.decode("ascii") if ok else b.hex()

    return {
        "not_before": time(raw[0:TIME_LEN]),
        "not_after": time(raw[TIME_LEN : 2 * TIME_LEN]),
        "epoch": int(struct.unpack_from("<H", raw, OWNER_EPOCH_OFF)[0]),
    }
