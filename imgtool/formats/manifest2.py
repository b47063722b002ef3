"""Caliptra 2.x SoC manifest ("ATM2"): byte layout of caliptra-sw at ASPEED's pin 879608b9.

Pure byte layout (no I/O, no crypto): the 34456-byte manifest, the 80-byte IMC entries (127
slots, all always written) and the byte ranges each signature covers.  Signing (build) and
verify both use the ``COVER_*`` constants below.  Layout: /work/shared/spec/caliptra2.md.

Runtime generation: 127 IMC entries as ASPEED's pinned caliptra-sw; caliptra-sw fw-2.1.2 and
later hash only the first 4 + 80 x 80 IMC bytes, so these outputs are for the earlier runtimes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import FormatError

MARKER = 0x324D5441  # b"ATM2"
PREAMBLE_SIZE = 24292
ENTRY_LEN = 80
MAX_ENTRIES = 127
IMC_LEN = 4 + MAX_ENTRIES * ENTRY_LEN  # 10164
TOTAL_LEN = PREAMBLE_SIZE + IMC_LEN  # 34456
PUB_ECC = 96
PUB_PQC = 2592
SIG_ECC = 96
SIG_PQC = 4628
PUB_LMS = 48
SIG_LMS = 1620
SIG_MLDSA = 4627
DIGEST_LEN = 48
UNUSED_ID = 0xFFFFFFFF
RUNTIME_GENERATION = "caliptra-sw before fw-2.1.2 (127 IMC entries, ASPEED's pin 879608b9)"

# PQC key types as the reference's --pqc-key-type (and the pqc_key_type fuse)
PQC_MLDSA = 1
PQC_LMS = 3

# (field, size) in file order
FIELDS: list[tuple[str, int]] = [
    ("marker", 4),
    ("size", 4),
    ("version", 4),
    ("svn", 4),
    ("flags", 4),
    ("vnd_man_ecc_pub", PUB_ECC),
    ("vnd_man_pqc_pub", PUB_PQC),
    ("vnd_pub_sig_ecc", SIG_ECC),
    ("vnd_pub_sig_pqc", SIG_PQC),
    ("own_man_ecc_pub", PUB_ECC),
    ("own_man_pqc_pub", PUB_PQC),
    ("own_pub_sig_ecc", SIG_ECC),
    ("own_pub_sig_pqc", SIG_PQC),
    ("vnd_imc_sig_ecc", SIG_ECC),
    ("vnd_imc_sig_pqc", SIG_PQC),
    ("own_imc_sig_ecc", SIG_ECC),
    ("own_imc_sig_pqc", SIG_PQC),
    ("imc", IMC_LEN),
]


def _offsets() -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    off = 0
    for name, size in FIELDS:
        out[name] = (off, size)
        off += size
    assert off == TOTAL_LEN
    return out


OFFSETS: dict[str, tuple[int, int]] = _offsets()
IMC_OFFSET = OFFSETS["imc"][0]

# Covered byte ranges [start, end) of each signature
COVER_VENDOR_PUB = (8, 2708)  # version, svn, flags, vendor manifest public keys
COVER_OWNER_PUB = (7432, 10120)  # owner manifest public keys
COVER_IMC = (IMC_OFFSET, TOTAL_LEN)  # the whole 10164-byte IMC (vendor and owner IMC sigs)
COVERS: dict[str, tuple[int, int]] = {
    "vnd_pub_sig": COVER_VENDOR_PUB,
    "own_pub_sig": COVER_OWNER_PUB,
    "vnd_imc_sig": COVER_IMC,
    "own_imc_sig": COVER_IMC,
}
FLAG_VENDOR_IMC_SIG_REQUIRED = 1

# IMC entry flags
FLAG_SOURCE_MASK = 0x3
FLAG_IGNORE_AUTH = 1 << 2
EXEC_BIT_SHIFT = 8
EXEC_BIT_MASK = 0x7F
LOAD_STAGE_SHIFT = 30
LOAD_STAGE_MASK = 0x3


def entry_flags(
    image_source: int = 0, ignore_auth_check: bool = False, exec_bit: int = 0, load_stage: int = 0
) -> int:
    if not 0 <= image_source <= FLAG_SOURCE_MASK:
        raise FormatError(f"image_source {image_source} out of range 0..3")
    if not 0 <= exec_bit <= EXEC_BIT_MASK:
        raise FormatError(f"exec_bit {exec_bit} out of range 0..127")
    if not 0 <= load_stage <= LOAD_STAGE_MASK:
        raise FormatError(f"load_stage {load_stage} out of range 0..3")
    return (
        image_source
        | (FLAG_IGNORE_AUTH if ignore_auth_check else 0)
        | (exec_bit << EXEC_BIT_SHIFT)
        | (load_stage << LOAD_STAGE_SHIFT)
    )


_ENTRY = struct.Struct("<8I48s")


@dataclass
class ImcEntry2:
    fw_id: int
    component_id: int
    classification: int
    flags: int
    load_address: int  # u64
    staging_address: int  # u64
    digest: bytes

    @property
    def exec_bit(self) -> int:
        return (self.flags >> EXEC_BIT_SHIFT) & EXEC_BIT_MASK

    @property
    def load_stage(self) -> int:
        return (self.flags >> LOAD_STAGE_SHIFT) & LOAD_STAGE_MASK

    @property
    def image_source(self) -> int:
        return self.flags & FLAG_SOURCE_MASK

    @property
    def ignore_auth_check(self) -> bool:
        return bool(self.flags & FLAG_IGNORE_AUTH)

    def pack(self) -> bytes:
        if len(self.digest) != DIGEST_LEN:
            raise FormatError(f"IMC entry fw_id {self.fw_id:#x}: digest must be 48 bytes")
        for name, v, bits in (
            ("fw_id", self.fw_id, 32),
            ("component_id", self.component_id, 32),
            ("classification", self.classification, 32),
            ("flags", self.flags, 32),
            ("load_address", self.load_address, 64),
            ("staging_address", self.staging_address, 64),
        ):
            if not 0 <= v < (1 << bits):
                raise FormatError(f"IMC entry fw_id {self.fw_id:#x}: {name} out of range")
        return _ENTRY.pack(
            self.fw_id,
            self.component_id,
            self.classification,
            self.flags,
            self.load_address & 0xFFFFFFFF,
            self.load_address >> 32,
            self.staging_address & 0xFFFFFFFF,
            self.staging_address >> 32,
            self.digest,
        )

    @classmethod
    def parse(cls, data: bytes) -> ImcEntry2:
        if len(data) != ENTRY_LEN:
            raise FormatError(f"IMC entry must be {ENTRY_LEN} bytes, got {len(data)}")
        fw, comp, cls_, fl, llo, lhi, slo, shi, dig = _ENTRY.unpack(data)
        return cls(fw, comp, cls_, fl, llo | (lhi << 32), slo | (shi << 32), bytes(dig))


UNUSED_ENTRY = struct.pack("<2I", UNUSED_ID, UNUSED_ID) + bytes(ENTRY_LEN - 8)


@dataclass
class Imc2:
    entries: list[ImcEntry2] = field(default_factory=list)

    def pack(self) -> bytes:
        if len(self.entries) > MAX_ENTRIES:
            raise FormatError(f"IMC holds at most {MAX_ENTRIES} entries, got {len(self.entries)}")
        seen: set[int] = set()
        for e in self.entries:
            if e.fw_id in seen:
                raise FormatError(f"duplicate fw_id {e.fw_id:#x} in the IMC")
            seen.add(e.fw_id)
        body = b"".join(e.pack() for e in self.entries)
        body += UNUSED_ENTRY * (MAX_ENTRIES - len(self.entries))
        return struct.pack("<I", len(self.entries)) + body

    @classmethod
    def parse(cls, data: bytes) -> Imc2:
        if len(data) != IMC_LEN:
            raise FormatError(f"IMC must be {IMC_LEN} bytes, got {len(data)}")
        (count,) = struct.unpack_from("<I", data, 0)
        if count > MAX_ENTRIES:
            raise FormatError(f"IMC entry_count {count} > {MAX_ENTRIES}")
        entries = [
            ImcEntry2.parse(data[4 + i * ENTRY_LEN : 4 + (i + 1) * ENTRY_LEN]) for i in range(count)
        ]
        return cls(entries)


def _slot(name: str, value: bytes) -> bytes:
    size = OFFSETS[name][1]
    if len(value) > size:
        raise FormatError(f"manifest field {name}: {len(value)} bytes > slot of {size}")
    return value + bytes(size - len(value))


@dataclass
class Manifest2:
    """ATM2 manifest. Byte fields hold the slot contents (shorter values are zero-padded on pack:
    LMS public key 48 of 2592, LMS signature 1620 of 4628, ML-DSA-87 signature 4627 of 4628)."""

    version: int = 0
    svn: int = 0
    flags: int = 0
    vnd_man_ecc_pub: bytes = b""
    vnd_man_pqc_pub: bytes = b""
    vnd_pub_sig_ecc: bytes = b""
    vnd_pub_sig_pqc: bytes = b""
    own_man_ecc_pub: bytes = b""
    own_man_pqc_pub: bytes = b""
    own_pub_sig_ecc: bytes = b""
    own_pub_sig_pqc: bytes = b""
    vnd_imc_sig_ecc: bytes = b""
    vnd_imc_sig_pqc: bytes = b""
    own_imc_sig_ecc: bytes = b""
    own_imc_sig_pqc: bytes = b""
    imc: Imc2 = field(default_factory=Imc2)
    marker: int = MARKER
    size: int = PREAMBLE_SIZE

    def pack(self) -> bytes:
        out = bytearray(
            struct.pack("<5I", self.marker, self.size, self.version, self.svn, self.flags)
        )
        for name, _ in FIELDS[5:-1]:
            out += _slot(name, getattr(self, name))
        out += self.imc.pack()
        assert len(out) == TOTAL_LEN
        return bytes(out)

    @classmethod
    def parse(cls, data: bytes, strict: bool = True) -> Manifest2:
        """Parse exactly TOTAL_LEN bytes (trailing zero padding to an alignment is allowed)."""
        if len(data) < TOTAL_LEN:
            raise FormatError(f"ATM2 manifest must be {TOTAL_LEN} bytes, got {len(data)}")
        if any(data[TOTAL_LEN:]):
            raise FormatError("ATM2 manifest: non-zero bytes after the IMC")
        marker, size, version, svn, flags = struct.unpack_from("<5I", data, 0)
        if strict and marker != MARKER:
            raise FormatError(f"ATM2 manifest: marker {marker:#010x}, expected {MARKER:#010x}")
        if strict and size != PREAMBLE_SIZE:
            raise FormatError(f"ATM2 manifest: size {size}, expected {PREAMBLE_SIZE}")
        kw: dict[str, bytes] = {}
        for name, _ in FIELDS[5:-1]:
            off, sz = OFFSETS[name]
            kw[name] = bytes(data[off : off + sz])
        imc = Imc2.parse(bytes(data[IMC_OFFSET:TOTAL_LEN]))
        return cls(version=version, svn=svn, flags=flags, imc=imc, marker=marker, size=size, **kw)


def covered(data: bytes, which: str) -> bytes:
    """The bytes signature ``which`` (a COVERS key) covers, from a packed manifest."""
    start, end = COVERS[which]
    return bytes(data[start:end])


def pad_to(data: bytes, align: int) -> bytes:
    """Zero-pad the manifest to a multiple of ``align`` (padding_align_size; 0 = no padding)."""
    if align <= 0:
        return data
    return data + bytes((align - len(data) % align) % align)
