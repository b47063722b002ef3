"""FLSH flash image (version 1, the layout of caliptra-mcu-sw at 2b7837402328) and A1 variants."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import FormatError, ImgtoolError
from .fileio import atomic_writer

MAGIC = b"FLSH"
VERSION = 1
HEADER_LEN = 16
ENTRY_LEN = 12
ID_CALIPTRA = 1
ID_MANIFEST = 2
ID_MCU = 3
SOC_ID_BASE = 0x1000
MAX_IMAGES = 127
A1_FLSH_OFFSET = 0x100000
A1_MCU_OFFSET = 0x20000
A1_CALIPTRA_MAX = A1_MCU_OFFSET
A1_MCU_MAX = A1_FLSH_OFFSET - A1_MCU_OFFSET
CHUNK = 1 << 20
U32_MAX = 0xFFFFFFFF


def crc32(data: bytes, value: int = 0) -> int:
    return zlib.crc32(data, value) & 0xFFFFFFFF


def padded(n: int) -> int:
    return n + (-n % 4)


def soc_fw_id(identifier: int) -> int:
    """The AST2700 BootMCU's fixed table: flash identifier 0x1000+i is manifest fw_id i+2."""
    return identifier - SOC_ID_BASE + 2


@dataclass
class FlashEntry:
    identifier: int
    offset: int
    size: int


@dataclass
class FlashHeader:
    version: int
    image_count: int
    header_checksum: int
    payload_checksum: int
    entries: list[FlashEntry]

    @property
    def table_end(self) -> int:
        return HEADER_LEN + ENTRY_LEN * self.image_count


def header_bytes(image_count: int) -> bytes:
    head = MAGIC + struct.pack("<HH", VERSION, image_count)
    return head + struct.pack("<I", crc32(head))


def parse_header(data: bytes, source: str = "flash image") -> FlashHeader:
    """Parse the FLSH header and image table (data must start at the FLSH magic)."""
    if len(data) < HEADER_LEN:
        raise FormatError(f"{source}: {len(data)} bytes, too short for a FLSH header")
    if data[:4] != MAGIC:
        raise FormatError(f"{source}: no FLSH magic (found {data[:4].hex()})")
    version, count = struct.unpack_from("<HH", data, 4)
    hcrc, pcrc = struct.unpack_from("<II", data, 8)
    need = HEADER_LEN + ENTRY_LEN * count
    if len(data) < need:
        raise FormatError(f"{source}: image table of {count} entries is truncated")
    entries = [
        FlashEntry(*struct.unpack_from("<III", data, HEADER_LEN + ENTRY_LEN * i))
        for i in range(count)
    ]
    return FlashHeader(version, count, hcrc, pcrc, entries)


@dataclass(frozen=True)
class FlashItem:
    """One image of the flash: identifier, source file (None = empty), and an optional check.

    ``align`` > 1 zero-pads the file to a multiple of it while streaming (padding_align_size);
    every image is then zero-padded to a multiple of 4."""

    identifier: int
    path: Path | None = None
    data: bytes | None = None  # in-memory content (the manifest, a zero-filled slot)
    expect_digest: bytes | None = None  # padded SHA-384 the file must still have
    name: str = ""
    align: int = 0
    fw_id: int | None = None  # the manifest entry expect_digest comes from (for messages)

    def size(self) -> int:
        """Length before the final padding to 4 (after padding to ``align``)."""
        if self.data is not None:
            return len(self.data)
        if self.path is None:
            return 0
        try:
            n = self.path.stat().st_size
        except OSError as exc:
            raise ImgtoolError(f"{self.path}: cannot read image: {exc.strerror}") from None
        return n if self.align <= 1 else n + (-n % self.align)


class DigestMismatch(ImgtoolError):
    """An image's padded SHA-384 is not the manifest's. ``changed_while_writing``: its stat
    changed during the copy (else the manifest was already stale)."""

    def __init__(self, item: FlashItem, changed_while_writing: bool):
        super().__init__(f"{item.path}: digest does not match the manifest")
        self.item = item
        self.changed_while_writing = changed_while_writing


_HASHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flash-sha384")


def _copy_file(path: Path, out: BinaryIO, crc: int, h: Any) -> tuple[int, int]:
    """Copy a file into ``out`` in CHUNK-sized pieces (two reused buffers), updating the CRC,
    and the SHA-384 ``h`` in a worker thread so that hashing overlaps the I/O."""
    bufs = (bytearray(CHUNK), bytearray(CHUNK))
    pending: Future[None] | None = None
    n = 0
    with open(path, "rb", buffering=0) as fh:
        i = 0
        while True:
            buf = bufs[i]
            got = fh.readinto(buf)
            if not got:
                break
            view = memoryview(buf)[:got]
            out.write(view)
            crc = zlib.crc32(view, crc)
            if h is not None:
                if pending is not None:
                    pending.result()  # the other buffer is free again
                pending = _HASHER.submit(h.update, view)
            n += got
            i ^= 1
    if pending is not None:
        pending.result()
    return n, crc & 0xFFFFFFFF


def _ident(path: Path) -> tuple[int, ...]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


def _stream_item(item: FlashItem, out: BinaryIO, crc: int) -> tuple[int, int]:
    """Copy an item into out, zero-padded to ``align`` and then to 4; returns (bytes written,
    running CRC). Raises DigestMismatch when ``expect_digest`` is not what was copied."""
    n = 0
    h = hashlib.sha384() if item.expect_digest is not None else None
    before = _ident(item.path) if h is not None and item.path is not None else None
    if item.data is not None:
        out.write(item.data)
        crc = crc32(item.data, crc)
        n = len(item.data)
        if h:
            h.update(item.data)
    elif item.path is not None:
        n, crc = _copy_file(item.path, out, crc, h)
    target = n if item.align <= 1 else n + (-n % item.align)
    target += -target % 4
    pad = bytes(target - n)
    out.write(pad)
    crc = crc32(pad, crc)
    if h is not None:
        h.update(pad)
        if h.digest() != item.expect_digest:
            changed = before is not None and (item.path is None or _ident(item.path) != before)
            raise DigestMismatch(item, changed)
    return n + len(pad), crc


def write_flsh(items: list[FlashItem], out: BinaryIO) -> int:
    """Write a FLSH v1 image at the file's current position; returns its length.

    Images are streamed in chunks; the payload CRC is patched in afterwards.
    """
    if not 1 <= len(items) <= MAX_IMAGES:
        raise ImgtoolError(f"flash image needs 1..{MAX_IMAGES} images, got {len(items)}")
    base = out.tell()
    sizes = [padded(it.size()) for it in items]
    offset = HEADER_LEN + ENTRY_LEN * len(items)
    table = bytearray()
    for it, size in zip(items, sizes, strict=True):
        if offset + size > U32_MAX:
            raise ImgtoolError(
                f"{it.path or it.name}: the flash image would be {offset + size} bytes or more; "
                "FLSH offsets and sizes are 32-bit"
            )
        table += struct.pack("<III", it.identifier, offset, size)
        offset += size
    out.write(header_bytes(len(items)))
    out.write(b"\0\0\0\0")  # payload checksum, patched below
    out.write(table)
    crc = crc32(bytes(table))
    total = HEADER_LEN + len(table)
    for it, size in zip(items, sizes, strict=True):
        n, crc = _stream_item(it, out, crc)
        if n != size:
            raise ImgtoolError(f"{it.path}: image size changed while writing the flash image")
        total += n
    end = out.tell()
    out.seek(base + 12)
    out.write(struct.pack("<I", crc))
    out.seek(end)
    return total


def write_flash_file(
    path: Path,
    items: list[FlashItem],
    *,
    out_bundle: tuple[FlashItem, FlashItem] | None = None,
    progress: Callable[[str], None] | None = None,
) -> int:
    """Write the flash image atomically. With ``out_bundle`` (caliptra, mcu), build the AST2700 A1
    out-bundle: raw Caliptra at 0, raw MCU at 0x20000, the FLSH image at 0x100000."""
    with atomic_writer(path) as out:
        if out_bundle is not None:
            cal, mcu = out_bundle
            if cal.size() > A1_CALIPTRA_MAX:
                raise ImgtoolError(
                    f"{cal.path}: Caliptra image is {cal.size()} bytes, more than the "
                    f"0x{A1_CALIPTRA_MAX:x} bytes before the MCU slot"
                )
            if mcu.size() > A1_MCU_MAX:
                raise ImgtoolError(
                    f"{mcu.path}: MCU image is {mcu.size()} bytes, more than the "
                    f"0x{A1_MCU_MAX:x} bytes before the FLSH image"
                )
            for item, start in ((cal, 0), (mcu, A1_MCU_OFFSET)):
                out.seek(start)
                _stream_item(item, out, 0)
            out.seek(A1_FLSH_OFFSET)
            out.truncate(A1_FLSH_OFFSET)
        n = write_flsh(items, out)
        total = out.tell()
    if progress:
        progress(f"wrote {path} ({total} bytes, FLSH {n} bytes)")
    return total
