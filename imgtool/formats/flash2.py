"""Caliptra 2.x flash image ("FLSH" v1, caliptra-mcu-sw main-2.1 as ASPEED's xtask-2x writes it).

Header 16 bytes (magic "FLSH", version u16 = 1, image_count u16, image_headers_offset u32 = 16,
header_checksum u32), then 20-byte entries (identifier, offset, size, image_checksum,
entry_checksum), then the images without gaps, each zero-padded to a multiple of 4.
Checksums are 0 - byte sum, mod 2^32.  No I/O, no crypto.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import FormatError

MAGIC = b"FLSH"
VERSION = 1
HEADER_LEN = 16
ENTRY_LEN = 20
ALIGN = 4

ID_CALIPTRA_FW = 0
ID_SOC_MANIFEST = 1
ID_MCU_RUNTIME = 2
ID_SOC_IMAGE_BASE = 0x1000

_HEAD = struct.Struct("<4sHHII")
_ENTRY = struct.Struct("<5I")


def neg_sum(data: bytes) -> int:
    """0 - (sum of bytes), mod 2^32."""
    return (-sum(data)) & 0xFFFFFFFF


def pad4(data: bytes) -> bytes:
    return data + bytes((ALIGN - len(data) % ALIGN) % ALIGN)


@dataclass
class FlashHeader2:
    image_count: int
    magic: bytes = MAGIC
    version: int = VERSION
    image_headers_offset: int = HEADER_LEN

    def pack(self) -> bytes:
        head = _HEAD.pack(self.magic, self.version, self.image_count, self.image_headers_offset, 0)
        return head[:12] + struct.pack("<I", neg_sum(head[:12]))

    @classmethod
    def parse(cls, data: bytes) -> FlashHeader2:
        if len(data) < HEADER_LEN:
            raise FormatError(f"flash header must be {HEADER_LEN} bytes, got {len(data)}")
        magic, version, count, hoff, csum = _HEAD.unpack_from(data, 0)
        if csum != neg_sum(bytes(data[:12])):
            raise FormatError("flash header checksum mismatch")
        return cls(
            image_count=count, magic=bytes(magic), version=version, image_headers_offset=hoff
        )


@dataclass
class FlashEntry2:
    identifier: int
    offset: int
    size: int
    image_checksum: int

    def pack(self) -> bytes:
        head = struct.pack("<4I", self.identifier, self.offset, self.size, self.image_checksum)
        return head + struct.pack("<I", neg_sum(head))

    @classmethod
    def parse(cls, data: bytes) -> FlashEntry2:
        if len(data) != ENTRY_LEN:
            raise FormatError(f"flash entry must be {ENTRY_LEN} bytes, got {len(data)}")
        ident, off, size, icsum, ecsum = _ENTRY.unpack(data)
        if ecsum != neg_sum(bytes(data[:16])):
            raise FormatError(f"flash entry {ident:#x}: entry checksum mismatch")
        return cls(ident, off, size, icsum)


@dataclass
class Flash2:
    """A parsed or to-be-written flash image: (identifier, image bytes) in order."""

    images: list[tuple[int, bytes]] = field(default_factory=list)

    def entries(self) -> list[FlashEntry2]:
        off = HEADER_LEN + ENTRY_LEN * len(self.images)
        out: list[FlashEntry2] = []
        for ident, data in self.images:
            padded = pad4(data)
            out.append(FlashEntry2(ident, off, len(padded), neg_sum(padded)))
            off += len(padded)
        return out

    def pack(self) -> bytes:
        if len(self.images) > 0xFFFF:
            raise FormatError("too many images for a flash image")
        ids = [i for i, _ in self.images]
        if len(set(ids)) != len(ids):
            raise FormatError("duplicate identifier in the flash image")
        parts = [FlashHeader2(len(self.images)).pack()]
        parts += [e.pack() for e in self.entries()]
        parts += [pad4(d) for _, d in self.images]
        return b"".join(parts)

    @classmethod
    def parse(cls, data: bytes) -> Flash2:
        head = FlashHeader2.parse(data)
        if head.magic != MAGIC:
            raise FormatError(f"flash image: magic {head.magic!r}, expected {MAGIC!r}")
        if head.version != VERSION:
            raise FormatError(f"flash image: version {head.version}, expected {VERSION}")
        images: list[tuple[int, bytes]] = []
        base = head.image_headers_offset
        for i in range(head.image_count):
            e = FlashEntry2.parse(bytes(data[base + i * ENTRY_LEN : base + (i + 1) * ENTRY_LEN]))
            blob = bytes(data[e.offset : e.offset + e.size])
            if len(blob) != e.size:
                raise FormatError(f"flash entry {e.identifier:#x}: image runs past the end")
            if neg_sum(blob) != e.image_checksum:
                raise FormatError(f"flash entry {e.identifier:#x}: image checksum mismatch")
            images.append((e.identifier, blob))
        return cls(images)
