"""FLSH layout: worked examples of spec/flash.md, identifiers, A1 variants, streaming."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

from independent import check_flash, padded_sha384
from projects import make_project, payload

from imgtool import flash
from imgtool.cli import main
from imgtool.flash import FlashItem


def test_crc_check_value() -> None:
    assert flash.crc32(b"123456789") == 0xCBF43926


def test_header_crc_of_16_entry_image() -> None:
    head = flash.header_bytes(16)
    assert head[:8] == bytes.fromhex("464c534801001000")
    assert head[8:] == bytes.fromhex("eb179c19")


def test_upstream_unit_test_vector() -> None:
    contents = [
        b"Caliptra Firmware Data - ABCDEFGH",
        b"Soc Manifest Data - 123456789",
        b"MCU Runtime Data - QWERTYUI",
        b"Soc Image 1 Data - ZXCVBNMLKJ",
        b"Soc Image 2 Data - POIUYTREWQ",
    ]
    ids = [1, 2, 3, 0x1000, 0x1001]
    buf = io.BytesIO()
    n = flash.write_flsh([FlashItem(i, data=c) for i, c in zip(ids, contents, strict=True)], buf)
    data = buf.getvalue()
    assert n == len(data) == 236
    h = flash.parse_header(data)
    assert h.header_checksum == 0x2E29F1FF and h.payload_checksum == 0x2009D459
    assert [(e.identifier, e.offset, e.size) for e in h.entries] == [
        (1, 0x4C, 0x24),
        (2, 0x70, 0x20),
        (3, 0x90, 0x1C),
        (0x1000, 0xAC, 0x20),
        (0x1001, 0xCC, 0x20),
    ]


def test_flash_is_concatenation_of_payloads(tmp_path: Path) -> None:
    sizes = (40, 64, 33, 128, 7)
    prj = make_project(tmp_path, sizes=sizes)
    assert (
        main(["create-auth-flash", *prj.args("--man", str(prj.man), "--flash", str(prj.flash))])
        == 0
    )
    data = prj.flash.read_bytes()
    man = prj.man.read_bytes()

    def pad(b: bytes) -> bytes:
        return b + bytes(-len(b) % 4)

    parts = [pad((prj.prebuilt / "caliptra-fw.bin").read_bytes()), man, pad(b"MCU-RUNTIME-0123")]
    parts += [pad(payload(i, s)) for i, s in enumerate(sizes)]
    n = len(parts)
    table = b""
    off = 16 + 12 * n
    for ident, part in zip([1, 2, 3, *range(0x1000, 0x1000 + len(sizes))], parts, strict=True):
        table += struct.pack("<III", ident, off, len(part))
        off += len(part)
    payload_bytes = table + b"".join(parts)
    head = b"FLSH" + struct.pack("<HH", 1, n)
    expect = head + struct.pack("<II", zlib.crc32(head), zlib.crc32(payload_bytes)) + payload_bytes
    assert data == expect


def test_empty_file_entries(tmp_path: Path) -> None:
    prj = make_project(tmp_path, caliptra=None)
    assert main(["create-auth-flash", *prj.args("--flash", str(prj.flash))]) == 0
    table = check_flash(prj.flash.read_bytes())
    assert table[0][0] == 1 and table[0][2] == 0 and table[0][1] == table[1][1]


def test_zero_caliptra_file_end(tmp_path: Path) -> None:
    prj = make_project(tmp_path, caliptra=None, extra_runtime="zero_caliptra_file_end = 0x1000")
    assert main(["create-auth-flash", *prj.args("--flash", str(prj.flash))]) == 0
    data = prj.flash.read_bytes()
    table = check_flash(data)
    assert table[1][0] == 2 and table[1][1] == 0x1000  # the manifest starts at exactly N
    assert data[table[0][1] : 0x1000] == bytes(0x1000 - table[0][1])


def test_zero_caliptra_file_end_14_entries_spec_example(tmp_path: Path) -> None:
    prj = make_project(
        tmp_path,
        caliptra=None,
        sizes=tuple(range(4, 56, 4)),
        extra_runtime="zero_caliptra_file_end = 0x1000",
    )
    assert main(["create-auth-flash", *prj.args("--flash", str(prj.flash))]) == 0
    table = check_flash(prj.flash.read_bytes())
    assert len(table) == 16 and table[0][2] == 3888


def test_cptra_out_bundle(tmp_path: Path) -> None:
    prj = make_project(tmp_path, extra_runtime="cptra_out_bundle = true")
    assert (
        main(["create-auth-flash", *prj.args("--man", str(prj.man), "--flash", str(prj.flash))])
        == 0
    )
    data = prj.flash.read_bytes()
    cal = (prj.prebuilt / "caliptra-fw.bin").read_bytes()
    assert data[: len(cal)] == cal and data[len(cal) : 0x20000] == bytes(0x20000 - len(cal))
    assert data[0x20000 : 0x20000 + 16] == b"MCU-RUNTIME-0123"
    table = check_flash(data, 0x100000)
    assert table[0][2] == 0 and table[2][2] == 0  # Caliptra and MCU slots are empty
    _, off, size = table[1]
    assert data[0x100000 + off : 0x100000 + off + size] == prj.man.read_bytes()


def test_cptra_out_bundle_too_big(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    prj = make_project(tmp_path, caliptra=bytes(0x20001), extra_runtime="cptra_out_bundle = true")
    assert main(["create-auth-flash", *prj.args("--flash", str(prj.flash))]) == 2
    assert "0x20000" in capsys.readouterr().err
    assert not prj.flash.exists()


def test_stale_manifest_is_refused(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """`create-auth-flash --man M` with an image changed since M was built: the message says M
    is older than that image (not that it changed while the flash image was written)."""
    prj = make_project(tmp_path)
    assert main(["create-auth-man", *prj.args("--man", str(prj.man))]) == 0
    (prj.prebuilt / "img1.bin").write_bytes(b"changed!")
    assert (
        main(["create-auth-flash", *prj.args("--man", str(prj.man), "--flash", str(prj.flash))])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"{prj.man}: the manifest is older than image {prj.prebuilt / 'img1.bin'}" in err[0]
    assert "fw_id 3" in err[0] and "while the flash image was written" not in err[0]
    assert not prj.flash.exists()


def test_stale_manifest_for_the_mcu_runtime(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """mcu_file is also fw_id 1's image: its digest is checked too."""
    prj = make_project(tmp_path)
    assert main(["create-auth-man", *prj.args("--man", str(prj.man))]) == 0
    (prj.prebuilt / "mcu.bin").write_bytes(b"another MCU runtime")
    rc = main(["create-auth-flash", *prj.args("--man", str(prj.man), "--flash", str(prj.flash))])
    assert rc == 2
    assert "older than image" in capsys.readouterr().err and not prj.flash.exists()


def test_image_changed_while_writing(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """An image rewritten during the copy (here: right after its first chunk is read) is told
    apart from a stale manifest."""
    from imgtool import flash as flash_mod

    prj = make_project(tmp_path)
    real = flash_mod._copy_file

    def copy_then_change(path, out, crc, h):  # type: ignore[no-untyped-def]
        r = real(path, out, crc, h)
        if path.name == "img3.bin":
            path.write_bytes(path.read_bytes() + b"late")
        return r

    monkeypatch.setattr(flash_mod, "_copy_file", copy_then_change)
    assert main(["create-auth-man", *prj.args("--man", str(prj.man))]) == 0
    (prj.prebuilt / "img3.bin").write_bytes(b"changed before the copy")
    rc = main(["create-auth-flash", *prj.args("--man", str(prj.man), "--flash", str(prj.flash))])
    assert rc == 2
    assert "img3.bin: image changed while the flash image was written" in capsys.readouterr().err


def test_soc_image_digest_matches_manifest_by_identifier(tmp_path: Path) -> None:
    prj = make_project(tmp_path, sizes=(12, 16, 20))
    assert (
        main(["create-auth-flash", *prj.args("--man", str(prj.man), "--flash", str(prj.flash))])
        == 0
    )
    data = prj.flash.read_bytes()
    man = prj.man.read_bytes()
    for ident, off, size in check_flash(data)[3:]:
        fw_id = ident - 0x1000 + 2
        entry = man[8888 + 4 + 56 * (fw_id - 1) :][:56]
        assert struct.unpack("<I", entry[:4])[0] == fw_id
        assert entry[8:] == padded_sha384(data[off : off + size])
