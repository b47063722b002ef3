"""FLSH flash image (version 1, the layout of caliptra-mcu-sw at 2b7837402328) and A1 variants."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import FormatError, ImgtoolError
from ..fileio import atomic_writer

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


_CRC_POLY = 0xEDB88320  # reflected CRC-32 polynomial (zlib's)


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial (bit-reflected, as in zlib's crc32.c)."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1


_X2N = [1 << 30]  # x^(2^k) modulo the polynomial, k = 0..31
for _ in range(31):
    _X2N.append(_multmodp(_X2N[-1], _X2N[-1]))


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of A + B from crc1 = CRC(A), crc2 = CRC(B) and len(B) (zlib's
    crc32_combine): lets the writer use an image's CRC from the pass that hashed it."""
    p, k, n = 1 << 31, 3, len2  # x^0; x^(8 * len2) = product of x^(2^k) over len2's bits
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return (_multmodp(p, crc1) ^ crc2) & 0xFFFFFFFF


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
class Known:
    """What the caller already knows of a file from the single pass that hashed it: its
    SHA-384 zero-padded to 4, the CRC-32 of its bytes, and the stat identity (size, mtime_ns,
    ctime_ns, inode, device) they belong to. The caller vouches that a change to the file
    after that pass changes its identity (the fingerprint cache's "settled" rule)."""

    digest: bytes
    crc: int
    ident: tuple[int, ...]


@dataclass(frozen=True)
class FlashItem:
    """One image of the flash: identifier, source file (None = empty), and an optional check.

    ``align`` > 1 zero-pads the file to a multiple of it while streaming (padding_align_size);
    every image is then zero-padded to a multiple of 4.

    With ``known`` (and ``expect_digest`` None or equal to ``known.digest``) the file is not
    read again: it is copied in the kernel (copy_file_range, else sendfile) and its CRC comes
    from ``known``; the file must have ``known.ident`` before and after the copy. Otherwise the
    file is read once, written, CRC'd and (with ``expect_digest``) hashed as it is copied."""

    identifier: int
    path: Path | None = None
    data: bytes | None = None  # in-memory content (the manifest, a zero-filled slot)
    expect_digest: bytes | None = None  # padded SHA-384 the file must still have
    name: str = ""
    align: int = 0
    fw_id: int | None = None  # the manifest entry expect_digest comes from (for messages)
    known: Known | None = None

    def trusted(self) -> bool:
        """Copied without reading (see the class doc)."""
        k = self.known
        return (
            self.path is not None
            and self.data is None
            and k is not None
            and (self.expect_digest is None or k.digest == self.expect_digest)
        )

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


class ImageChanged(DigestMismatch):
    """A file copied without reading (``FlashItem.known``) changed before or during the copy:
    its bytes are no longer those its digest and CRC were taken from."""

    def __init__(self, item: FlashItem):
        super().__init__(item, True)
        self.args = (f"{item.path}: image changed while the flash image was written",)


_hasher: tuple[int, ThreadPoolExecutor] | None = None


def _hash_pool() -> ThreadPoolExecutor:
    """This process's hashing thread (a forked doit worker has none of its parent's)."""
    global _hasher
    if _hasher is None or _hasher[0] != os.getpid():
        _hasher = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="flash-sha384"))
    return _hasher[1]


def _copy_file(path: Path, out: BinaryIO, crc: int, h: Any) -> tuple[int, int]:
    """Copy a file into ``out`` in CHUNK-sized pieces (two reused buffers), updating the CRC,
    and the SHA-384 ``h`` in a worker thread so that hashing overlaps the I/O."""
    bufs = (bytearray(CHUNK), bytearray(CHUNK))
    pending: Future[None] | None = None
    pool = _hash_pool() if h is not None else None
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
            if pool is not None:
                if pending is not None:
                    pending.result()  # the other buffer is free again
                pending = pool.submit(h.update, view)
            n += got
            i ^= 1
    if pending is not None:
        pending.result()
    return n, crc & 0xFFFFFFFF


# errors of copy_file_range / sendfile that mean "not between these files": try the next way
_NO_KERNEL_COPY = {
    errno.EXDEV,
    errno.ENOSYS,
    errno.EINVAL,
    errno.EOPNOTSUPP,
    errno.ENOTSUP,
    errno.EBADF,
    errno.ETXTBSY,
    errno.EPERM,
}


def _kernel_copy(src: int, dst: int, offset: int, n: int) -> bool:
    """Copy n bytes of src (from 0) to dst at ``offset`` without a pass through user space:
    copy_file_range, else sendfile. False if neither works between these files (then nothing
    was written). A source shorter than n raises ShortCopy."""
    done = 0
    if hasattr(os, "copy_file_range"):
        try:
            while done < n:
                k = os.copy_file_range(src, dst, n - done, done, offset + done)
                if k == 0:
                    raise _ShortCopy
                done += k
            return True
        except OSError as exc:
            if done or exc.errno not in _NO_KERNEL_COPY:
                raise
    try:
        os.lseek(dst, offset, os.SEEK_SET)
        while done < n:
            k = os.sendfile(dst, src, done, n - done)
            if k == 0:
                raise _ShortCopy
            done += k
        return True
    except OSError as exc:
        if done or exc.errno not in _NO_KERNEL_COPY:
            raise
    return False


class _ShortCopy(Exception):
    """The source ended before its size at open time."""


def _copy_known(item: FlashItem, out: BinaryIO, crc: int) -> tuple[int, int]:
    """Copy a file whose CRC and digest are known (``item.known``) without reading it; the
    file must keep the identity they belong to from before the copy until after it."""
    assert item.path is not None and item.known is not None
    known = item.known
    with open(item.path, "rb", buffering=0) as fh:
        st = os.fstat(fh.fileno())
        if _st_ident(st) != known.ident or not stat.S_ISREG(st.st_mode):
            raise ImageChanged(item)
        n = st.st_size
        out.flush()
        start = out.tell()
        try:
            copied = _kernel_copy(fh.fileno(), out.fileno(), start, n)
        except _ShortCopy:
            raise ImageChanged(item) from None
        if copied:
            out.seek(start + n)
            got = known.crc
        else:  # no kernel copy here: through user space, checking the CRC on the way
            out.seek(start)
            m, got = _copy_file(item.path, out, 0, None)
            if m != n or got != known.crc:
                raise ImageChanged(item)
        if _st_ident(os.fstat(fh.fileno())) != known.ident:
            raise ImageChanged(item)
    return n, crc32_combine(crc, got, n)


def _st_ident(st: os.stat_result) -> tuple[int, ...]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


def _ident(path: Path) -> tuple[int, ...]:
    return _st_ident(os.stat(path))


def _stream_item(item: FlashItem, out: BinaryIO, crc: int) -> tuple[int, int]:
    """Copy an item into out, zero-padded to ``align`` and then to 4; returns (bytes written,
    running CRC). Raises DigestMismatch when ``expect_digest`` is not what was copied."""
    n = 0
    trusted = item.trusted()
    h = hashlib.sha384() if item.expect_digest is not None and not trusted else None
    before = _ident(item.path) if h is not None and item.path is not None else None
    if item.data is not None:
        out.write(item.data)
        crc = crc32(item.data, crc)
        n = len(item.data)
        if h:
            h.update(item.data)
    elif trusted:
        n, crc = _copy_known(item, out, crc)
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
    before_commit: Callable[[], None] | None = None,
) -> int:
    """Write the flash image atomically. With ``out_bundle`` (caliptra, mcu), build the AST2700 A1
    out-bundle: raw Caliptra at 0, raw MCU at 0x20000, the FLSH image at 0x100000.
    ``before_commit`` runs once every byte is written, before the file replaces ``path``: an
    exception there leaves ``path`` as it was."""
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
        if before_commit is not None:
            before_commit()
    if progress:
        progress(f"wrote {path} ({total} bytes, FLSH {n} bytes)")
    return total
