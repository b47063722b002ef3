"""Craft hostile flash images in tests, independently of imgtool: unpack and repack FLSH v1
(struct + zlib, from spec/flash.md), and recompute the checksums after a change."""

from __future__ import annotations

import struct
import zlib

A1_FLSH = 0x100000
A1_MCU = 0x20000


def unpack(data: bytes, base: int = 0) -> list[tuple[int, bytes]]:
    """(identifier, bytes) of every image, in table order."""
    (count,) = struct.unpack_from("<H", data, base + 6)
    out = []
    for i in range(count):
        ident, off, size = struct.unpack_from("<III", data, base + 16 + 12 * i)
        out.append((ident, data[base + off : base + off + size]))
    return out


def pack(images: list[tuple[int, bytes]]) -> bytes:
    """A FLSH v1 image of these (identifier, bytes); sizes padded to 4 with zeros."""
    images = [(i, d + bytes(-len(d) % 4)) for i, d in images]
    off = 16 + 12 * len(images)
    table = b""
    for ident, d in images:
        table += struct.pack("<III", ident, off, len(d))
        off += len(d)
    head = b"FLSH" + struct.pack("<HH", 1, len(images))
    payload = table + b"".join(d for _, d in images)
    return head + struct.pack("<II", zlib.crc32(head), zlib.crc32(payload)) + payload


def fix_crcs(buf: bytearray, base: int = 0) -> None:
    """Recompute both FLSH checksums in place (the header CRC covers bytes 0..7, whatever the
    magic; the payload CRC bytes 16..end)."""
    struct.pack_into("<I", buf, base + 8, zlib.crc32(bytes(buf[base : base + 8])))
    struct.pack_into("<I", buf, base + 12, zlib.crc32(bytes(buf[base + 16 :])))


def replace(data: bytes, ident: int, new: bytes, base: int = 0) -> bytes:
    """The FLSH image with one image's bytes replaced (table and checksums rebuilt)."""
    images = [(i, new if i == ident else d) for i, d in unpack(data, base)]
    return data[:base] + pack(images)


def manifest_offset(data: bytes, base: int = 0) -> int:
    for i in range(struct.unpack_from("<H", data, base + 6)[0]):
        ident, off, _ = struct.unpack_from("<III", data, base + 16 + 12 * i)
        if ident == 2:
            return base + off
    raise ValueError("no manifest entry")
