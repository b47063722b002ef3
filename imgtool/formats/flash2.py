"""Caliptra 2.x flash image ("FLSH" v1, caliptra-mcu-sw main-2.1 as ASPEED's xtask-2x writes it).

Header 16 bytes (magic "FLSH", version u16 = 1, image_count u16, image_headers_offset u32 = 16,
header_checksum u32), then 20-byte entries (identifier, offset, size, image_checksum,
entry_checksum), then the images without gaps, each zero-padded to a multiple of 4.
Checksums are 0 - byte sum, mod 2^32.  No crypto.

:func:`write_flash2` streams the image to a binary file object from :class:`FlashItem2` items
(identifier, bytes or a file, padded size, checksum), 1 MiB at a time: the memory it needs does
not grow with the images (offsets are u32, so a flash image is at most 2^32 - 1 bytes).
:class:`Flash2` holds the images in memory (parsing, tests) and packs through the same writer.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from ..errors import FormatError, ImgtoolError

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

CHUNK = 1 << 20
MAX_FLASH_SIZE = 0xFFFFFFFF  # offsets and sizes are u32
MAX_IMAGES = 0xFFFF  # image_count is u16


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
        return flash_entries2(self.items())

    def items(self) -> list[FlashItem2]:
        return [flash_item2(ident, data) for ident, data in self.images]

    def pack(self) -> bytes:
        buf = io.BytesIO()
        write_flash2(buf, self.items())
        return buf.getvalue()

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


# --- streamed writer ----------------------------------------------------------------------------
Source = bytes | str | os.PathLike[str] | None  # image bytes, a file, or the empty image


@dataclass(frozen=True)
class FlashItem2:
    """One image of a flash image to write: ``source`` (bytes, a file, None = empty) zero-padded
    to ``size`` bytes (a multiple of 4), whose byte sum gives ``checksum``."""

    identifier: int
    source: Source
    size: int
    checksum: int

    def label(self) -> str:
        if self.source is None or isinstance(self.source, bytes):
            return f"flash image {self.identifier:#x}"
        return f"{os.fspath(self.source)} (flash image {self.identifier:#x})"


def padded_size(n: int, align: int = 0) -> int:
    """n bytes zero-padded to a multiple of ``align`` (padding_align_size, 0/1 = none), then of 4:
    the size of the image in the flash image."""
    if align > 1:
        n += -n % align
    return n + (-n % ALIGN)


def source_len(source: Source) -> int:
    """Length of ``source`` (a file's from stat(): nothing is read)."""
    if source is None:
        return 0
    if isinstance(source, bytes):
        return len(source)
    return os.stat(source).st_size


def _chunks(source: Source, chunk: int) -> Iterator[bytes | memoryview]:
    if source is None:
        return
    if isinstance(source, bytes):
        view = memoryview(source)
        for off in range(0, len(view), chunk):
            yield view[off : off + chunk]
        return
    with open(source, "rb") as fh:
        while block := fh.read(chunk):
            yield block


def scan(source: Source, chunk: int = CHUNK) -> tuple[int, int]:
    """(length, 0 - byte sum mod 2^32) of ``source``, read ``chunk`` bytes at a time (zero
    padding adds nothing to the sum)."""
    n = total = 0
    for block in _chunks(source, chunk):
        n += len(block)
        total += sum(block)
    return n, (-total) & 0xFFFFFFFF


def flash_item2(identifier: int, source: Source, align: int = 0, chunk: int = CHUNK) -> FlashItem2:
    """The item for ``source`` padded to ``align`` (then to 4), its checksum from one streamed
    pass over it."""
    n, csum = scan(source, chunk)
    return FlashItem2(identifier, source, padded_size(n, align), csum)


def flash_size2(sizes: Sequence[int]) -> int:
    """Size of a flash image whose images have these padded sizes."""
    return HEADER_LEN + ENTRY_LEN * len(sizes) + sum(sizes)


def check_flash_size2(size: int, what: str = "flash image") -> None:
    if size > MAX_FLASH_SIZE:
        raise FormatError(
            f"{what}: {size} bytes ({size / (1 << 30):.2f} GiB) is more than a flash image can "
            f"hold ({MAX_FLASH_SIZE} bytes: its offsets are u32)"
        )


def flash_entries2(items: Sequence[FlashItem2]) -> list[FlashEntry2]:
    """The entries of the items in order, images without gaps after the entries."""
    off = HEADER_LEN + ENTRY_LEN * len(items)
    out: list[FlashEntry2] = []
    for it in items:
        out.append(FlashEntry2(it.identifier, off, it.size, it.checksum))
        off += it.size
    return out


def _check_items(items: Sequence[FlashItem2]) -> None:
    if len(items) > MAX_IMAGES:
        raise FormatError("too many images for a flash image")
    ids = [it.identifier for it in items]
    if len(set(ids)) != len(ids):
        raise FormatError("duplicate identifier in the flash image")
    for it in items:
        if it.size % ALIGN or it.size < 0:
            raise FormatError(f"{it.label()}: size {it.size} is not a multiple of {ALIGN}")
    check_flash_size2(flash_size2([it.size for it in items]))


def _write_zeros(fh: BinaryIO, count: int, chunk: int) -> None:
    zeros = bytes(min(count, chunk))
    while count > 0:
        step = min(count, len(zeros))
        fh.write(zeros if step == len(zeros) else zeros[:step])
        count -= step


def write_flash2(fh: BinaryIO, items: Sequence[FlashItem2], chunk: int = CHUNK) -> int:
    """Write the flash image of ``items`` to ``fh``: header, entries, then every image copied
    ``chunk`` bytes at a time and zero-padded to its size. An image whose bytes are no longer
    those of its item (a file changed since its checksum was taken) is an error. Returns the
    number of bytes written."""
    _check_items(items)
    fh.write(FlashHeader2(len(items)).pack())
    fh.write(b"".join(e.pack() for e in flash_entries2(items)))
    written = HEADER_LEN + ENTRY_LEN * len(items)
    for it in items:
        n = total = 0
        for block in _chunks(it.source, chunk):
            n += len(block)
            if n > it.size:
                raise ImgtoolError(f"{it.label()}: grew while the flash image was written")
            total += sum(block)
            fh.write(block)
        if (-total) & 0xFFFFFFFF != it.checksum:
            raise ImgtoolError(f"{it.label()}: changed while the flash image was written")
        _write_zeros(fh, it.size - n, chunk)
        written += it.size
    return written
