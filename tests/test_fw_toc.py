"""fw_toc.bin (ATOC): golden structure from spec/caliptra2.md (names, name slots, checksums)."""

from __future__ import annotations

import struct

import pytest

from imgtool.errors import FormatError
from imgtool.formats import flash2 as f
from imgtool.formats import fw_toc as t


def _neg(b: bytes) -> int:
    return (0x100000000 - sum(b) % 0x100000000) % 0x100000000


IMAGES = [(0, b"CAL"), (1, b"MANIFEST"), (2, b"mcu-rt!"), (0x1000, b""), (0x1001, b"\xff" * 5)]


def test_fw_toc_golden() -> None:
    flash = f.Flash2(IMAGES)
    names = ["caliptra-fw.bin", "manifest.bin", "mcu.bin", "empty.bin", "soc_align_256.bin"]
    toc = t.FwToc.from_flash(flash.entries(), names).pack()
    assert len(toc) == 2704
    assert toc[0:4] == b"ATOC" and struct.unpack_from("<I", toc, 0)[0] == 0x434F5441
    assert struct.unpack_from("<HHI", toc, 4) == (1, 5, 16)
    assert struct.unpack_from("<I", toc, 12)[0] == _neg(toc[0:12])
    fl = flash.pack()
    for i, name in enumerate(names):
        ent = toc[16 + 20 * i : 36 + 20 * i]
        fent = fl[16 + 20 * i : 36 + 20 * i]
        ident, off, size, icsum, ecsum = struct.unpack("<5I", ent)
        assert ent[0:4] == fent[0:4] and ent[8:16] == fent[8:16]
        assert off == 656 + 64 * i
        assert ecsum == _neg(ent[:16])
        assert toc[off : off + 64] == name.encode() + bytes(64 - len(name))
    assert toc[16 + 20 * 5 : 656] == bytes(656 - 116)
    assert toc[656 + 64 * 5 :] == bytes(2704 - 656 - 320)
    back = t.FwToc.parse(toc)
    assert [x.name for x in back.items] == names
    assert back.pack() == toc


def test_fw_toc_bad_input() -> None:
    for bad in ("x" * 64, ".", "..", "a/b", "a\0b"):  # base names of at most 63 bytes only
        with pytest.raises(FormatError, match="is not a base name of at most 63 bytes"):
            t.FwToc([t.TocItem(0, 0, 0, bad)]).pack()
    with pytest.raises(FormatError, match="at most 32"):
        t.FwToc([t.TocItem(i, 0, 0, "a") for i in range(33)]).pack()
    with pytest.raises(FormatError, match="2704"):
        t.FwToc.parse(bytes(10))
