"""ATM2 layout: every offset from the spec table (spec/caliptra2.md), tiny distinctive payloads."""

from __future__ import annotations

import struct

import pytest

from imgtool.errors import FormatError
from imgtool.formats import manifest2 as m

# (offset, size, field) straight from the spec table
SPEC = [
    (0, 4, "marker"),
    (4, 4, "size"),
    (8, 4, "version"),
    (12, 4, "svn"),
    (16, 4, "flags"),
    (20, 96, "vnd_man_ecc_pub"),
    (116, 2592, "vnd_man_pqc_pub"),
    (2708, 96, "vnd_pub_sig_ecc"),
    (2708 + 96, 4628, "vnd_pub_sig_pqc"),
    (7432, 96, "own_man_ecc_pub"),
    (7432 + 96, 2592, "own_man_pqc_pub"),
    (10120, 96, "own_pub_sig_ecc"),
    (10120 + 96, 4628, "own_pub_sig_pqc"),
    (14844, 96, "vnd_imc_sig_ecc"),
    (14844 + 96, 4628, "vnd_imc_sig_pqc"),
    (19568, 96, "own_imc_sig_ecc"),
    (19568 + 96, 4628, "own_imc_sig_pqc"),
    (24292, 4 + 127 * 80, "imc"),
]


def _filled() -> tuple[m.Manifest2, dict[str, bytes]]:
    vals: dict[str, bytes] = {}
    for i, (_, size, name) in enumerate(SPEC[5:-1]):
        vals[name] = bytes([i + 1]) * size
    vals["vnd_man_pqc_pub"] = b"\x41" * 48  # LMS: first 48 bytes, rest zero
    vals["own_pub_sig_pqc"] = b"\x42" * 4627  # ML-DSA-87: 4627 + one zero byte
    e1 = m.ImcEntry2(
        fw_id=2,
        component_id=0x11,
        classification=0x22,
        flags=m.entry_flags(exec_bit=5, load_stage=2),
        load_address=0x1_2345_6789,
        staging_address=0xAABB_CCDD_0000_0004,
        digest=bytes(range(48)),
    )
    e2 = m.ImcEntry2(0x1000, 0x1000, 0, m.entry_flags(ignore_auth_check=True), 0, 0, b"\x99" * 48)
    man = m.Manifest2(version=7, svn=128, flags=1, imc=m.Imc2([e1, e2]), **vals)
    return man, vals


def test_offsets_match_spec_table() -> None:
    assert m.TOTAL_LEN == 34456
    for off, size, name in SPEC:
        assert m.OFFSETS[name] == (off, size), name
    assert SPEC[-1][0] + SPEC[-1][1] == 34456


def test_pack_puts_every_field_at_its_spec_offset() -> None:
    man, vals = _filled()
    data = man.pack()
    assert len(data) == 34456
    assert data[0:4] == b"ATM2"
    assert struct.unpack_from("<4I", data, 4) == (24292, 7, 128, 1)
    for off, size, name in SPEC[5:-1]:
        want = vals[name] + bytes(size - len(vals[name]))
        assert data[off : off + size] == want, name
    imc = data[24292:]
    assert struct.unpack_from("<I", imc, 0) == (2,)
    e = imc[4:84]
    assert struct.unpack_from("<8I", e, 0) == (
        2,
        0x11,
        0x22,
        (5 << 8) | (2 << 30),
        0x2345_6789,
        1,
        4,
        0xAABB_CCDD,
    )
    assert e[32:80] == bytes(range(48))
    e2 = imc[84:164]
    assert struct.unpack_from("<4I", e2, 0) == (0x1000, 0x1000, 0, 4)
    for i in range(2, 127):
        slot = imc[4 + 80 * i : 4 + 80 * (i + 1)]
        assert slot == b"\xff" * 8 + bytes(72), i


def test_roundtrip_and_fields() -> None:
    man, _ = _filled()
    data = man.pack()
    back = m.Manifest2.parse(data)
    assert back.pack() == data
    assert back.svn == 128 and back.flags == 1
    assert back.imc.entries[0].exec_bit == 5
    assert back.imc.entries[0].load_stage == 2
    assert back.imc.entries[0].load_address == 0x1_2345_6789
    assert back.imc.entries[1].ignore_auth_check


def test_covered_ranges() -> None:
    man, _ = _filled()
    data = man.pack()
    assert m.covered(data, "vnd_pub_sig") == data[8:2708]
    assert m.covered(data, "own_pub_sig") == data[7432:10120]
    assert m.covered(data, "vnd_imc_sig") == data[24292:34456]
    assert len(m.covered(data, "own_imc_sig")) == 10164


def test_padding_to_align() -> None:
    assert len(m.pad_to(bytes(34456), 256)) == 34560
    assert m.pad_to(b"abc", 0) == b"abc"
    padded = m.pad_to(_filled()[0].pack(), 256)
    assert m.Manifest2.parse(padded).pack() == padded[:34456]


def test_bad_input() -> None:
    e = m.ImcEntry2(1, 1, 0, 0, 0, 0, bytes(48))
    with pytest.raises(FormatError, match="duplicate fw_id"):
        m.Imc2([e, e]).pack()
    with pytest.raises(FormatError, match="at most 127"):
        m.Imc2([m.ImcEntry2(i, i, 0, 0, 0, 0, bytes(48)) for i in range(128)]).pack()
    with pytest.raises(FormatError, match="exec_bit"):
        m.entry_flags(exec_bit=128)
    with pytest.raises(FormatError, match="load_address"):
        m.ImcEntry2(1, 1, 0, 0, 1 << 64, 0, bytes(48)).pack()
    with pytest.raises(FormatError, match="slot"):
        m.Manifest2(vnd_man_ecc_pub=bytes(97)).pack()
    data = bytearray(m.Manifest2().pack())
    data[0] ^= 1
    with pytest.raises(FormatError, match="marker"):
        m.Manifest2.parse(bytes(data))
    with pytest.raises(FormatError, match="34456"):
        m.Manifest2.parse(bytes(100))
