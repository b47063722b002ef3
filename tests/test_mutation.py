"""Flip one byte in every region of a built flash image (and truncate it): verify must fail
with exit 1 and a message naming the region."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from projects import make_project

from imgtool.cli import main


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    root = tmp_path_factory.mktemp("mut")
    prj = make_project(root, sample_bundle=True, lms=True, flags=1)
    assert (
        main(["create-auth-flash", *prj.args("--man", str(prj.man), "--flash", str(prj.flash))])
        == 0
    )
    return prj.flash.read_bytes(), root


def _entries(data: bytes) -> dict[int, tuple[int, int]]:
    count = struct.unpack_from("<H", data, 6)[0]
    out = {}
    for i in range(count):
        ident, off, size = struct.unpack_from("<III", data, 16 + 12 * i)
        out[ident] = (off, size)
    return out


def _cases(data: bytes) -> list[tuple[str, int, str]]:
    """(label, absolute offset, text that a FAIL line must contain)."""
    e = _entries(data)
    cal, man = e[1][0], e[2][0]
    soc = [(ident, off, size) for ident, (off, size) in sorted(e.items()) if ident >= 0x1000]
    c = [
        ("header version", 4, "flash header"),
        ("header image_count", 6, "flash header CRC"),
        ("header CRC", 9, "flash header CRC"),
        ("payload CRC", 14, "flash payload CRC"),
        ("entry 0 identifier", 16, "flash entries"),
        ("entry 1 offset", 16 + 12 + 4, "flash entries"),
        ("entry 3 size", 16 + 36 + 8, "flash entries"),
        ("entry 7 identifier", 16 + 84, "flash entries"),
        ("bundle marker", cal + 1, "caliptra bundle"),
        ("bundle vendor ECC key", cal + 8 + 10, "caliptra bundle"),
        ("bundle vendor LMS key", cal + 8 + 384 + 30, "caliptra bundle"),
        ("bundle vendor ECC signature", cal + 8 + 384 + 1536 + 8 + 5, "caliptra bundle"),
        (
            "bundle owner LMS signature",
            cal + 8 + 384 + 1536 + 8 + 96 + 1620 + 144 + 96 + 700,
            "caliptra bundle",
        ),
        ("bundle header", cal + 0x1590 + 20, "caliptra bundle"),
        ("bundle TOC", cal + 0x162C + 40, "caliptra bundle"),
        ("bundle FMC", cal + 6000, "caliptra bundle"),
        ("bundle runtime", cal + e[1][1] - 10, "caliptra bundle"),
        ("manifest marker", man + 2, "manifest"),
        ("manifest size", man + 4, "manifest preamble"),
        ("manifest version", man + 8, "manifest vendor pubkey signature"),
        ("manifest sec_ver", man + 12, "manifest owner SVN signature"),
        ("manifest flags", man + 16, "manifest"),
        ("vendor manifest ECC key", man + 20 + 7, "manifest vendor"),
        ("vendor manifest LMS key", man + 116 + 30, "manifest vendor"),
        ("vendor pubkey ECC sig", man + 164 + 50, "manifest vendor pubkey signature"),
        ("vendor pubkey LMS sig", man + 260 + 100, "manifest vendor pubkey signature"),
        ("owner manifest ECC key", man + 1880 + 3, "manifest owner"),
        ("owner manifest LMS key", man + 1976 + 40, "manifest owner"),
        ("owner pubkey ECC sig", man + 2024 + 90, "manifest owner pubkey signature"),
        ("owner pubkey LMS sig", man + 2120 + 1000, "manifest owner pubkey signature"),
        ("owner SVN ECC sig", man + 3740 + 1, "manifest owner SVN signature"),
        ("owner SVN LMS sig q", man + 3836, "manifest owner SVN signature"),
        ("owner SVN LMS sig", man + 3836 + 500, "manifest owner SVN signature"),
        ("vendor IMC ECC sig", man + 5456 + 20, "manifest vendor IMC signature"),
        ("vendor IMC LMS sig", man + 5552 + 40, "manifest vendor IMC signature"),
        ("owner IMC ECC sig", man + 7172 + 60, "manifest owner IMC signature"),
        ("owner IMC LMS sig", man + 7268 + 1300, "manifest owner IMC signature"),
        ("IMC entry count", man + 8888, "manifest"),
        ("IMC fw_id", man + 8888 + 4 + 56, "manifest"),
        ("IMC digest", man + 8888 + 4 + 56 * 2 + 8 + 5, "image 0x1001"),
        ("IMC unused slot", man + 8888 + 4 + 56 * 100, "manifest IMC"),
        ("mcu runtime", e[3][0] + 3, "image mcu"),
    ]
    for ident, off, size in soc:
        c.append((f"soc image 0x{ident:x}", off + size // 2, f"image 0x{ident:x}"))
    return c


def test_every_region_byte_flip_fails(
    built: tuple[bytes, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = built
    cases = _cases(data)
    assert len(cases) >= 30
    f = tmp_path / "m.bin"
    problems = []
    for label, off, region in cases:
        mutated = bytearray(data)
        mutated[off] ^= 0x01
        f.write_bytes(mutated)
        capsys.readouterr()
        rc = main(["verify", str(f)])
        out = capsys.readouterr().out
        fails = [line for line in out.splitlines() if line.startswith("FAIL")]
        if rc != 1 or not any(region in line for line in fails):
            problems.append(f"{label} @ {off}: rc={rc}, fails={fails[:4]}")
    assert not problems, "\n".join(problems)
    f.write_bytes(data)
    assert main(["verify", str(f)]) == 0


@pytest.mark.parametrize("cut", [8, 15, 20, 200, 0.3, 0.7, -4, -1])
def test_truncations_fail_cleanly(
    built: tuple[bytes, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], cut: float
) -> None:
    data, _ = built
    n = int(len(data) * cut) if isinstance(cut, float) else (cut if cut > 0 else len(data) + cut)
    f = tmp_path / "t.bin"
    f.write_bytes(data[:n])
    capsys.readouterr()
    assert main(["verify", str(f)]) == 1
    out = capsys.readouterr().out
    assert any(line.startswith("FAIL flash") for line in out.splitlines()), out
