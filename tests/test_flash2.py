"""2.x flash image (FLSH v1): golden structure from spec/caliptra2.md."""

from __future__ import annotations

import struct

import pytest

from imgtool.errors import FormatError
from imgtool.formats import flash2 as f


def _neg(b: bytes) -> int:
    return (0x100000000 - sum(b) % 0x100000000) % 0x100000000


IMAGES = [(0, b"CAL"), (1, b"MANIFEST"), (2, b"mcu-rt!"), (0x1000, b""), (0x1001, b"\xff" * 5)]


def test_golden_structure() -> None:
    data = f.Flash2(IMAGES).pack()
    assert data[0:4] == b"FLSH"
    assert struct.unpack_from("<HHI", data, 4) == (1, 5, 16)
    assert struct.unpack_from("<I", data, 12)[0] == _neg(data[0:12])
    off = 16 + 20 * 5
    for i, (ident, blob) in enumerate(IMAGES):
        ent = data[16 + 20 * i : 36 + 20 * i]
        padded = blob + bytes((-len(blob)) % 4)
        ident2, o, size, icsum, ecsum = struct.unpack("<5I", ent)
        assert (ident2, o, size) == (ident, off, len(padded))
        assert icsum == _neg(padded)
        assert ecsum == _neg(ent[:16])
        assert data[o : o + size] == padded
        off += len(padded)
    assert len(data) == off  # no gaps, nothing after the last image
    assert f.Flash2.parse(data).pack() == data


def test_flash_bad_input() -> None:
    data = bytearray(f.Flash2(IMAGES).pack())
    with pytest.raises(FormatError, match="duplicate"):
        f.Flash2([(1, b""), (1, b"")]).pack()
    bad = bytearray(data)
    bad[-1] ^= 1
    with pytest.raises(FormatError, match="image checksum"):
        f.Flash2.parse(bytes(bad))
    bad = bytearray(data)
    bad[16] ^= 1
    with pytest.raises(FormatError, match="entry checksum"):
        f.Flash2.parse(bytes(bad))
    bad = bytearray(data)
    bad[5] ^= 1
    with pytest.raises(FormatError, match="header checksum"):
        f.Flash2.parse(bytes(bad))
