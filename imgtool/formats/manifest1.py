"""SoC manifest (Caliptra authorization manifest) layouts: Caliptra 1.x and the ASPEED variant.

Pure byte layout: parsing, serialising, and the exact bytes each signature covers.
Building (keys, signing) lives in :mod:`imgtool.build`.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..config import Format
from ..errors import FormatError

MARKER = 0x41544D4E
MARKER_2X = 0x324D5441
PREAMBLE_SIZE = 7168  # the 1.x preamble size, also written (stale) into the ASPEED layout
ENTRY_LEN = 56
MAX_ENTRIES = 127
IMC_LEN = 4 + MAX_ENTRIES * ENTRY_LEN  # 7116
SLOT_ECC = 96
SLOT_LMS = 1620
PUB_ECC = 96
PUB_LMS = 48
ASPEED_PREAMBLE = 8888
ASPEED_LEN = ASPEED_PREAMBLE + IMC_LEN  # 16004
CALIPTRA1_LEN = PREAMBLE_SIZE + IMC_LEN  # 14284
UNUSED_FW_ID = 0xFFFFFFFF
DIGEST_LEN = 48
EMPTY_DIGEST = hashlib.sha384(b"").digest()
# SHA-384(u32le 1 || u32le 0 || 144 zero bytes): what ASPEED's prebuilt vendor signatures cover
PREBUILT_VENDOR_TBS_DIGEST = bytes.fromhex(
    "eefb526a81fc9517436d768996ccf47887cfd279c56a428b8cc96c392f1b7c07"
    "e8c76af0b3600b9cb60e3631ae6804b8"
)

# (field name, size) in file order, per layout. "imc" is the image metadata collection.
_HEAD_1X = [("marker", 4), ("size", 4), ("version", 4), ("flags", 4)]
_HEAD_ASPEED = [("marker", 4), ("size", 4), ("version", 4), ("sec_ver", 4), ("flags", 4)]
_KEYS_AND_SIGS = [
    ("vnd_man_ecc_pub", PUB_ECC),
    ("vnd_man_lms_pub", PUB_LMS),
    ("vnd_pub_sig_ecc", SLOT_ECC),
    ("vnd_pub_sig_lms", SLOT_LMS),
    ("own_man_ecc_pub", PUB_ECC),
    ("own_man_lms_pub", PUB_LMS),
    ("own_pub_sig_ecc", SLOT_ECC),
    ("own_pub_sig_lms", SLOT_LMS),
]
_SVN = [("own_svn_sig_ecc", SLOT_ECC), ("own_svn_sig_lms", SLOT_LMS)]
_IMC_SIGS = [
    ("vnd_imc_sig_ecc", SLOT_ECC),
    ("vnd_imc_sig_lms", SLOT_LMS),
    ("own_imc_sig_ecc", SLOT_ECC),
    ("own_imc_sig_lms", SLOT_LMS),
]
LAYOUTS: dict[Format, list[tuple[str, int]]] = {
    Format.CALIPTRA1: _HEAD_1X + _KEYS_AND_SIGS + _IMC_SIGS + [("imc", IMC_LEN)],
    Format.ASPEED: _HEAD_ASPEED + _KEYS_AND_SIGS + _SVN + _IMC_SIGS + [("imc", IMC_LEN)],
}
SIG_SLOTS = tuple(name for name, _ in _KEYS_AND_SIGS + _SVN + _IMC_SIGS if "_sig_" in name)


def offsets(fmt: Format) -> dict[str, tuple[int, int]]:
    """Field name -> (offset, size) for a layout."""
    out: dict[str, tuple[int, int]] = {}
    off = 0
    for name, size in LAYOUTS[fmt]:
        out[name] = (off, size)
        off += size
    return out


def file_length(fmt: Format) -> int:
    return ASPEED_LEN if fmt is Format.ASPEED else CALIPTRA1_LEN


assert file_length(Format.ASPEED) == sum(s for _, s in LAYOUTS[Format.ASPEED])
assert file_length(Format.CALIPTRA1) == sum(s for _, s in LAYOUTS[Format.CALIPTRA1])
assert offsets(Format.ASPEED)["own_svn_sig_ecc"][0] == 3740
assert offsets(Format.CALIPTRA1)["vnd_imc_sig_ecc"][0] == 3736


@dataclass
class ImcEntry:
    fw_id: int
    flags: int
    digest: bytes

    @property
    def source(self) -> int:
        return self.flags & 3

    @property
    def ignore_auth_check(self) -> bool:
        return bool(self.flags & 4)

    @property
    def load_stage(self) -> int:
        return (self.flags >> 30) & 3


def imc_to_bytes(entries: list[ImcEntry]) -> bytes:
    """The 7116-byte image metadata collection; unused slots are fw_id 0xFFFFFFFF, zeros."""
    if not 1 <= len(entries) <= MAX_ENTRIES:
        raise ValueError(f"entry count {len(entries)} outside 1..{MAX_ENTRIES}")
    out = bytearray(struct.pack("<I", len(entries)))
    for e in entries:
        if len(e.digest) != DIGEST_LEN:
            raise ValueError("digest must be 48 bytes")
        out += struct.pack("<II", e.fw_id, e.flags) + e.digest
    unused = struct.pack("<II", UNUSED_FW_ID, 0) + bytes(DIGEST_LEN)
    out += unused * (MAX_ENTRIES - len(entries))
    return bytes(out)


def imc_entries(imc: bytes) -> tuple[int, list[ImcEntry]]:
    """(entry_count, the first min(entry_count, 127) entries) of an IMC."""
    (count,) = struct.unpack_from("<I", imc, 0)
    entries = []
    for i in range(min(count, MAX_ENTRIES)):
        fw_id, flags = struct.unpack_from("<II", imc, 4 + i * ENTRY_LEN)
        off = 4 + i * ENTRY_LEN + 8
        entries.append(ImcEntry(fw_id, flags, bytes(imc[off : off + DIGEST_LEN])))
    return count, entries


def _z(n: int) -> bytes:
    return bytes(n)


@dataclass
class Manifest:
    format: Format
    version: int = 0
    flags: int = 0
    sec_ver: int = 0
    size: int = PREAMBLE_SIZE
    marker: int = MARKER
    vnd_man_ecc_pub: bytes = field(default_factory=lambda: _z(PUB_ECC))
    vnd_man_lms_pub: bytes = field(default_factory=lambda: _z(PUB_LMS))
    vnd_pub_sig_ecc: bytes = field(default_factory=lambda: _z(SLOT_ECC))
    vnd_pub_sig_lms: bytes = field(default_factory=lambda: _z(SLOT_LMS))
    own_man_ecc_pub: bytes = field(default_factory=lambda: _z(PUB_ECC))
    own_man_lms_pub: bytes = field(default_factory=lambda: _z(PUB_LMS))
    own_pub_sig_ecc: bytes = field(default_factory=lambda: _z(SLOT_ECC))
    own_pub_sig_lms: bytes = field(default_factory=lambda: _z(SLOT_LMS))
    own_svn_sig_ecc: bytes = field(default_factory=lambda: _z(SLOT_ECC))
    own_svn_sig_lms: bytes = field(default_factory=lambda: _z(SLOT_LMS))
    vnd_imc_sig_ecc: bytes = field(default_factory=lambda: _z(SLOT_ECC))
    vnd_imc_sig_lms: bytes = field(default_factory=lambda: _z(SLOT_LMS))
    own_imc_sig_ecc: bytes = field(default_factory=lambda: _z(SLOT_ECC))
    own_imc_sig_lms: bytes = field(default_factory=lambda: _z(SLOT_LMS))
    imc: bytes = field(default_factory=lambda: _z(IMC_LEN))

    @property
    def entry_count(self) -> int:
        return imc_entries(self.imc)[0]

    @property
    def entries(self) -> list[ImcEntry]:
        return imc_entries(self.imc)[1]

    def imc_bytes(self) -> bytes:
        return self.imc

    def to_bytes(self) -> bytes:
        out = bytearray()
        for name, size in LAYOUTS[self.format]:
            value = getattr(self, name)
            if isinstance(value, int):
                value = struct.pack("<I", value)
            if len(value) != size:
                raise ValueError(f"manifest field {name}: {len(value)} bytes, expected {size}")
            out += value
        return bytes(out)

    @classmethod
    def parse(cls, data: bytes, source: str = "manifest") -> Manifest:
        """Parse either layout (chosen by length). Raises FormatError."""
        if len(data) >= 4 and struct.unpack_from("<I", data)[0] == MARKER_2X:
            raise FormatError(f"{source}: Caliptra 2.x manifest (marker ATM2): not supported yet")
        if len(data) == ASPEED_LEN:
            fmt = Format.ASPEED
        elif len(data) == CALIPTRA1_LEN:
            fmt = Format.CALIPTRA1
        else:
            raise FormatError(
                f"{source}: {len(data)} bytes is neither an ASPEED ({ASPEED_LEN}) nor a "
                f"Caliptra 1.x ({CALIPTRA1_LEN}) SoC manifest"
            )
        (marker,) = struct.unpack_from("<I", data)
        if marker != MARKER:
            raise FormatError(f"{source}: bad marker 0x{marker:08x}, expected 0x{MARKER:08x}")
        m = cls(format=fmt)
        for name, (off, size) in offsets(fmt).items():
            chunk = bytes(data[off : off + size])
            setattr(m, name, struct.unpack("<I", chunk)[0] if size == 4 else chunk)
        return m

    def regions(self) -> list[tuple[str, int, int]]:
        return [(name, off, size) for name, (off, size) in offsets(self.format).items()]

    def copy(self) -> Manifest:
        return Manifest(**{f.name: getattr(self, f.name) for f in fields(self)})


def vendor_pubkey_tbs(m: Manifest) -> bytes:
    """version, flags, vendor manifest keys (the 1.x bytes 8..160; sec_ver is NOT covered)."""
    return struct.pack("<II", m.version, m.flags) + m.vnd_man_ecc_pub + m.vnd_man_lms_pub


def owner_pubkey_tbs(m: Manifest) -> bytes:
    return m.own_man_ecc_pub + m.own_man_lms_pub


def svn_tbs(m: Manifest) -> bytes:
    """ASPEED SVN signature: version, sec_ver, flags (as stored) + owner manifest keys."""
    return struct.pack("<III", m.version, m.sec_ver, m.flags) + owner_pubkey_tbs(m)


def imc_tbs(m: Manifest) -> bytes:
    return m.imc


def svn_lms_sig_swap_q(sig: bytes) -> bytes:
    """Byte-reverse q (the first 4 bytes): ASPEED stores the SVN LMS signature's q little-endian."""
    return sig[:4][::-1] + sig[4:]


def image_digest_file(path: Path | None, chunk: int = 1 << 20) -> bytes:
    """SHA-384 of a file zero-padded to a multiple of 4 bytes; None means an empty file."""
    h = hashlib.sha384()
    if path is None:
        return h.digest()
    n = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
            n += len(block)
    h.update(bytes(-n % 4))
    return h.digest()
