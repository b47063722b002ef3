"""FLSH layout: worked examples of spec/flash.md, identifiers, A1 variants, streaming."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from independent import check_flash, padded_sha384
from projects import make_project, payload

from imgtool.cli.main import main
from imgtool.errors import ImgtoolError
from imgtool.formats import flash1 as flash
from imgtool.formats.flash1 import FlashItem


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
    from imgtool.formats import flash1 as flash_mod

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


# ---------------------------------------------------------------------------- copy without reading
def test_crc32_combine_matches_zlib() -> None:
    import os
    import random

    rnd = random.Random(15)
    for _ in range(200):
        a = rnd.randbytes(rnd.randrange(0, 300))
        b = rnd.randbytes(rnd.choice([0, 1, 3, 4, 5, rnd.randrange(0, 5000)]))
        got = flash.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b))
        assert got == zlib.crc32(a + b)
    big = os.urandom(3 << 20)  # lengths with high bits set
    assert flash.crc32_combine(zlib.crc32(b"x"), zlib.crc32(big), len(big)) == zlib.crc32(
        b"x" + big
    )


def _known(path: Path) -> flash.Known:
    from imgtool.doit_tasks import checker

    digest, crc = checker.hash_file(path)
    return flash.Known(digest, crc, checker.ident(path.stat()))


def _items(tmp_path: Path, sizes: tuple[int, ...], known: bool) -> list[FlashItem]:
    import os

    items = [FlashItem(flash.ID_CALIPTRA, data=b"CAL"), FlashItem(flash.ID_MANIFEST, data=b"M")]
    for i, size in enumerate(sizes):
        p = tmp_path / f"img{i}.bin"
        if not p.exists():
            p.write_bytes(os.urandom(size))
        k = _known(p) if known else None
        items.append(
            FlashItem(
                flash.SOC_ID_BASE + i, p, expect_digest=padded_sha384(p.read_bytes()), known=k
            )
        )
    return items


SIZES = (0, 1, 5, 4096, (1 << 20) + 3, 3 << 20)


def test_known_images_are_copied_byte_identical(tmp_path: Path) -> None:
    """The kernel-copy path (known digest and CRC) writes exactly what the hashing path writes;
    the payload CRC combined from the images' CRCs is the CRC of the bytes."""
    hashed, copied = tmp_path / "a.bin", tmp_path / "b.bin"
    flash.write_flash_file(hashed, _items(tmp_path, SIZES, known=False))
    items = _items(tmp_path, SIZES, known=True)
    assert all(it.trusted() for it in items[2:])
    flash.write_flash_file(copied, items)
    assert copied.read_bytes() == hashed.read_bytes()
    data = copied.read_bytes()
    for (_, off, size), it in zip(check_flash(data)[2:], items[2:], strict=True):
        assert it.path is not None and padded_sha384(data[off : off + size]) == it.expect_digest


def test_known_digest_other_than_the_manifest_is_read_and_checked(tmp_path: Path) -> None:
    """A cached digest that is not the manifest's does not count: the file is hashed while it
    is copied, and the manifest's digest decides."""
    import dataclasses

    items = _items(tmp_path, (100,), known=True)
    assert items[2].known is not None
    bogus = dataclasses.replace(items[2].known, digest=bytes(48), crc=0)
    items[2] = dataclasses.replace(items[2], known=bogus)
    assert not items[2].trusted()
    flash.write_flash_file(tmp_path / "f.bin", items)  # the real bytes match the manifest
    check_flash((tmp_path / "f.bin").read_bytes())
    items[2] = dataclasses.replace(items[2], expect_digest=b"\1" * 48)  # not the bytes' either
    try:
        flash.write_flash_file(tmp_path / "g.bin", items)
        raise AssertionError("a wrong manifest digest was packed")
    except flash.DigestMismatch as exc:
        assert not exc.changed_while_writing
    assert not (tmp_path / "g.bin").exists()


@pytest.mark.parametrize("broken", ["copy_file_range", "both"])
def test_fallbacks_without_kernel_copy(tmp_path: Path, monkeypatch, broken: str) -> None:  # type: ignore[no-untyped-def]
    """Where copy_file_range does not work between the files, sendfile; where neither does,
    through user space (then the CRC is checked against the known one)."""
    import errno
    import os

    calls: list[str] = []

    def no(name: str):  # type: ignore[no-untyped-def]
        def fail(*a):  # type: ignore[no-untyped-def]
            calls.append(name)
            raise OSError(errno.EXDEV if name == "copy_file_range" else errno.EINVAL, name)

        return fail

    monkeypatch.setattr(os, "copy_file_range", no("copy_file_range"))
    if broken == "both":
        monkeypatch.setattr(os, "sendfile", no("sendfile"))
    ref = tmp_path / "ref.bin"
    flash.write_flash_file(ref, _items(tmp_path, SIZES, known=False))
    out = tmp_path / "out.bin"
    flash.write_flash_file(out, _items(tmp_path, SIZES, known=True))
    assert out.read_bytes() == ref.read_bytes()
    assert "copy_file_range" in calls and ("sendfile" in calls) == (broken == "both")


def test_user_space_fallback_checks_the_known_crc(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import dataclasses
    import errno
    import os

    def fail(*a):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSYS, "no")

    monkeypatch.setattr(os, "copy_file_range", fail)
    monkeypatch.setattr(os, "sendfile", fail)
    items = _items(tmp_path, (5000,), known=True)
    assert items[2].known is not None
    items[2] = dataclasses.replace(
        items[2], known=dataclasses.replace(items[2].known, crc=items[2].known.crc ^ 1)
    )
    out = tmp_path / "out.bin"
    try:
        flash.write_flash_file(out, items)
        raise AssertionError("bytes with another CRC were packed")
    except flash.ImageChanged:
        pass
    assert not out.exists()


def _previous(tmp_path: Path) -> tuple[Path, bytes]:
    out = tmp_path / "flash.bin"
    flash.write_flash_file(out, _items(tmp_path, SIZES, known=False))
    return out, out.read_bytes()


def _no_temp_files(folder: Path) -> None:
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def test_known_image_changed_before_the_copy(tmp_path: Path) -> None:
    """A known image written again after its fingerprint was taken (same size, mtime put
    back: ctime still moves) is refused; the previous flash image stays."""
    import os
    import time

    out, before = _previous(tmp_path)
    items = _items(tmp_path, SIZES, known=True)
    p = tmp_path / "img4.bin"
    st = p.stat()
    time.sleep(0.01)
    data = bytearray(p.read_bytes())
    data[7] ^= 1
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    try:
        flash.write_flash_file(out, items)
        raise AssertionError("a changed image was packed with its old digest")
    except flash.ImageChanged as exc:
        assert exc.item.path == p and "image changed while" in str(exc)
    assert out.read_bytes() == before
    _no_temp_files(tmp_path)


@pytest.mark.parametrize("how", ["rewrite", "truncate", "append"])
def test_known_image_changed_during_the_copy(tmp_path: Path, monkeypatch, how: str) -> None:  # type: ignore[no-untyped-def]
    """An image written while the kernel copies it: the copy is not committed, whatever the
    change (same size, shorter, longer); the previous flash image stays."""
    import os

    out, before = _previous(tmp_path)
    items = _items(tmp_path, SIZES, known=True)
    victim = tmp_path / "img5.bin"
    real = os.copy_file_range
    state = {"done": False}

    def copy_then_change(src, dst, count, offset_src=None, offset_dst=None):  # type: ignore[no-untyped-def]
        n = real(src, dst, min(count, 1 << 16), offset_src, offset_dst)
        if not state["done"] and os.fstat(src).st_ino == victim.stat().st_ino:
            state["done"] = True
            with open(victim, "r+b") as fh:
                if how == "rewrite":
                    fh.seek(1 << 20)
                    fh.write(b"late bytes")
                elif how == "truncate":
                    fh.truncate(1 << 17)
                else:
                    fh.seek(0, os.SEEK_END)
                    fh.write(b"more")
        return n

    monkeypatch.setattr(os, "copy_file_range", copy_then_change)
    try:
        flash.write_flash_file(out, items)
        raise AssertionError("an image changed during its copy was packed")
    except ImgtoolError as exc:
        assert "img5.bin" in str(exc)
    assert state["done"] and out.read_bytes() == before
    _no_temp_files(tmp_path)


def test_before_commit_failure_keeps_the_previous_image(tmp_path: Path) -> None:
    out, before = _previous(tmp_path)

    def refuse() -> None:
        raise ImgtoolError("no")

    try:
        flash.write_flash_file(out, _items(tmp_path, SIZES, known=True), before_commit=refuse)
        raise AssertionError("committed")
    except ImgtoolError:
        pass
    assert out.read_bytes() == before
    _no_temp_files(tmp_path)
