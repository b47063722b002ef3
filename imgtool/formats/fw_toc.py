"""fw_toc.bin ("ATOC"), written beside a 2.x flash image (newest reference src/fw_toc.rs).

Header like the FLSH header with magic u32 LE 0x434F5441 and its checksum recomputed; 32 entries
of 20 bytes copied from the flash image except offset = 656 + 64 i (the name slot) and the entry
checksum recomputed; then 32 x 64-byte NUL-padded base names.  2704 bytes in all.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..errors import FormatError
from .flash2 import ENTRY_LEN, HEADER_LEN, VERSION, FlashEntry2, FlashHeader2

MAGIC = struct.pack("<I", 0x434F5441)  # b"ATOC"
MAX_ENTRIES = 32
NAME_LEN = 64
NAMES_OFFSET = HEADER_LEN + MAX_ENTRIES * ENTRY_LEN  # 656
TOTAL_LEN = NAMES_OFFSET + MAX_ENTRIES * NAME_LEN  # 2704


@dataclass
class TocItem:
    identifier: int
    size: int
    image_checksum: int
    name: str


@dataclass
class FwToc:
    items: list[TocItem] = field(default_factory=list)

    @classmethod
    def from_flash(cls, entries: list[FlashEntry2], names: list[str]) -> FwToc:
        if len(entries) != len(names):
            raise FormatError("fw_toc: one name per flash entry")
        return cls(
            [
                TocItem(e.identifier, e.size, e.image_checksum, n)
                for e, n in zip(entries, names, strict=True)
            ]
        )

    def pack(self) -> bytes:
        if len(self.items) > MAX_ENTRIES:
            raise FormatError(f"fw_toc holds at most {MAX_ENTRIES} images, got {len(self.items)}")
        head = FlashHeader2(len(self.items), magic=MAGIC).pack()
        ents = bytearray()
        names = bytearray()
        for i, it in enumerate(self.items):
            ents += FlashEntry2(
                it.identifier, NAMES_OFFSET + NAME_LEN * i, it.size, it.image_checksum
            ).pack()
            raw = it.name.encode()
            if len(raw) >= NAME_LEN or b"\0" in raw or b"/" in raw or raw in (b".", b".."):
                raise FormatError(
                    f"fw_toc: name {it.name!r} is not a base name of at most {NAME_LEN - 1} bytes"
                )
            names += raw + bytes(NAME_LEN - len(raw))
        ents += bytes(MAX_ENTRIES * ENTRY_LEN - len(ents))
        names += bytes(MAX_ENTRIES * NAME_LEN - len(names))
        out = head + bytes(ents) + bytes(names)
        assert len(out) == TOTAL_LEN
        return out

    @classmethod
    def parse(cls, data: bytes) -> FwToc:
        if len(data) != TOTAL_LEN:
            raise FormatError(f"fw_toc must be {TOTAL_LEN} bytes, got {len(data)}")
        head = FlashHeader2.parse(data)
        if head.magic != MAGIC:
            raise FormatError(f"fw_toc: magic {head.magic!r}, expected {MAGIC!r}")
        if head.version != VERSION or head.image_count > MAX_ENTRIES:
            raise FormatError("fw_toc: bad version or image count")
        items: list[TocItem] = []
        for i in range(head.image_count):
            off = HEADER_LEN + i * ENTRY_LEN
            e = FlashEntry2.parse(bytes(data[off : off + ENTRY_LEN]))
            if e.offset != NAMES_OFFSET + NAME_LEN * i:
                raise FormatError(f"fw_toc entry {i}: offset {e.offset} is not its name slot")
            raw = bytes(data[e.offset : e.offset + NAME_LEN])
            name = raw.split(b"\0", 1)[0].decode(errors="replace")
            items.append(TocItem(e.identifier, e.size, e.image_checksum, name))
        return cls(items)
