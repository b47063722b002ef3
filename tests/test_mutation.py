"""Mutation: flip single bytes all over built images (every region: FLSH header and table, the
Caliptra bundle with all its vendor key slots and reserved bytes, the manifest, every image,
the padding), fix the FLSH checksums after the flip, and require `verify --fuses` to reject
every one. The figures are printed (pytest -s) and asserted: tried == rejected.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import craft
import pytest
from projects import Project, make_project

from imgtool import fuses
from imgtool.cli.main import main
from imgtool.config import Format
from imgtool.demo import sample_bundle
from imgtool.formats import bundle1 as bundle
from imgtool.formats.manifest1 import offsets
from imgtool.verify import Anchors, verify_bytes

# Caliptra 1.x verifies only H15/W4 LMS: sparse H15 test keys (fast; leaf 5 only, test use)
H15 = "h15-sparse"

SIZES = (40, 64, 33, 128, 7, 301, 1000, 2)  # some not multiples of 4: padding bytes too
MIN_OFFSETS = 2000


def _build(prj: Project) -> bytes:
    args = prj.args("--man", str(prj.man), "--flash", str(prj.flash))
    assert main(["create-auth-flash", *args]) == 0
    return prj.flash.read_bytes()


def _a1_without_bundle(root: Path) -> tuple[Project, bytes]:
    """The reference A1 shape: no Caliptra bundle and no MCU runtime in the image (the bundle
    the device runs is given with --caliptra-fw)."""
    prj = make_project(root, sizes=SIZES, caliptra=None, lms=True, flags=1, lms_kind=H15)
    text = prj.cfg.read_text().replace('mcu_file = "mcu.bin"', 'mcu_file = ""')
    prj.cfg.write_text(text.replace('file = "mcu.bin"', 'file = ""', 1))
    cal = sample_bundle(prj.keys)
    (prj.root / "caliptra-fw.bin").write_bytes(cal)
    return prj, cal


@pytest.fixture(scope="module", params=["a2", "a1", "a1-out-bundle"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "a1":
        prj, cal = _a1_without_bundle(root)
    else:
        extra = "cptra_out_bundle = true" if request.param == "a1-out-bundle" else ""
        prj = make_project(
            root,
            sizes=SIZES,
            sample_bundle=True,
            lms=True,
            flags=1,
            extra_runtime=extra,
            lms_kind=H15,
        )
        cal = (prj.prebuilt / "caliptra-fw.bin").read_bytes()
    data = _build(prj)
    f = fuses.from_bundle(bundle.parse_bundle(cal), lms_verify=True)
    anchors = Anchors(fuses=f)
    if request.param == "a1":
        anchors.caliptra_fw, anchors.caliptra_fw_name = cal, "caliptra-fw.bin"
    base = craft.A1_FLSH if request.param == "a1-out-bundle" else 0
    return request.param, data, base, anchors, prj


def _spread(start: int, length: int, n: int) -> list[int]:
    """n offsets spread evenly over [start, start + length) (all of them if n >= length)."""
    if length <= n:
        return list(range(start, start + length))
    return sorted({start + (i * (length - 1)) // (n - 1) for i in range(n)})


def _regions(data: bytes, base: int) -> dict[str, list[int]]:
    """Offsets to flip, by region name."""
    count = struct.unpack_from("<H", data, base + 6)[0]
    out: dict[str, list[int]] = {
        "flsh header": list(range(base, base + 16)),
        "flsh table": list(range(base + 16, base + 16 + 12 * count)),
    }
    for i in range(count):
        ident, off, size = struct.unpack_from("<III", data, base + 16 + 12 * i)
        start = base + off
        if ident == 1 and size:
            out.update(_bundle_regions(start, size))
        elif ident == 2:
            for name, (o, n) in offsets(Format.ASPEED).items():
                out[f"manifest {name}"] = _spread(start + o, n, 96 if name != "imc" else 800)
        elif size:
            out[f"image 0x{ident:x}"] = _spread(start, size, 128)
    if base:  # the A1 out-bundle: bundle at 0, MCU at 0x20000, zero padding up to each
        b = bundle.parse_bundle(data[: craft.A1_MCU])
        out.update(_bundle_regions(0, b.end))
        out["a1 padding after the bundle"] = _spread(b.end, craft.A1_MCU - b.end, 100)
        mcu_end = len(data[craft.A1_MCU : craft.A1_FLSH].rstrip(b"\0"))
        out["a1 mcu runtime"] = _spread(craft.A1_MCU, mcu_end, 64)
        out["a1 padding after the mcu"] = _spread(
            craft.A1_MCU + mcu_end, craft.A1_FLSH - craft.A1_MCU - mcu_end, 100
        )
    return out


def _bundle_regions(start: int, size: int) -> dict[str, list[int]]:
    pre = start + 8
    return {
        "bundle marker and size": list(range(start, start + 8)),
        # every vendor key slot, selected or not: 4 ECC, 32 LMS
        **{f"bundle vendor ECC key {k}": _spread(pre + 96 * k, 96, 12) for k in range(4)},
        **{f"bundle vendor LMS key {k}": _spread(pre + 384 + 48 * k, 48, 6) for k in range(32)},
        "bundle key indexes": list(range(pre + 1920, pre + 1928)),
        "bundle vendor signatures": _spread(pre + 1928, 96 + 1620, 60),
        "bundle owner keys": _spread(pre + 3644, 144, 40),
        "bundle owner signatures": _spread(pre + 3788, 96 + 1620, 60),
        "bundle reserved": list(range(start + 5512, start + 5520)),
        "bundle header": _spread(start + 0x1590, 156, 60),
        "bundle TOC": _spread(start + 0x162C, 208, 60),
        "bundle FMC and runtime": _spread(start + 0x16FC, size - 0x16FC, 80),
    }


def test_every_flip_is_rejected(built: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    name, data, base, anchors, _ = built
    assert verify_bytes(data, anchors).exit_code == 0, [
        c.line() for c in verify_bytes(data, anchors).failures
    ]
    regions = _regions(data, base)
    rng = random.Random(f"mutation-{name}")
    tried = rejected = 0
    escaped: list[str] = []
    for region, offs in regions.items():
        for off in offs:
            mutated = bytearray(data)
            mutated[off] ^= rng.randrange(1, 256)
            if not base + 8 <= off < base + 16:  # a flip of a checksum itself stays
                craft.fix_crcs(mutated, base)
            tried += 1
            if verify_bytes(bytes(mutated), anchors).exit_code == 1:
                rejected += 1
            else:
                escaped.append(f"{region} @ 0x{off:x}")
    with capsys.disabled():
        print(f"\nmutation {name}: {tried} offsets in {len(regions)} regions, {rejected} rejected")
    assert tried >= MIN_OFFSETS
    assert not escaped, f"{len(escaped)} flips passed: {escaped[:20]}"


def test_cli_agrees(built: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A sample of the flips through the command line: exit 1 (and 0 for the original)."""
    name, data, base, anchors, prj = built
    fz = tmp_path / "fuses.toml"
    fz.write_text(fuses.to_toml(anchors.fuses))
    extra = ["--caliptra-fw", str(prj.root / "caliptra-fw.bin")] if name == "a1" else []
    f = tmp_path / "m.bin"
    f.write_bytes(data)
    assert main(["verify", str(f), "--fuses", str(fz), "-q", *extra]) == 0
    rng = random.Random(name)
    offs = [o for offs in _regions(data, base).values() for o in offs]
    for off in rng.sample(offs, 12):
        mutated = bytearray(data)
        mutated[off] ^= 0x80
        craft.fix_crcs(mutated, base)
        f.write_bytes(mutated)
        assert main(["verify", str(f), "--fuses", str(fz), "-q", *extra]) == 1, hex(off)
    capsys.readouterr()


@pytest.mark.parametrize("cut", [8, 15, 20, 200, 0.3, 0.7, -4, -1])
def test_truncations_fail_cleanly(
    built: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str], cut: float
) -> None:
    name, data, base, anchors, _ = built
    n = int(len(data) * cut) if isinstance(cut, float) else (cut if cut > 0 else len(data) + cut)
    f = tmp_path / "t.bin"
    f.write_bytes(data[:n])
    rc = main(["verify", str(f)])
    assert rc in (1, 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 or (len(err) == 1 and str(f) in err[0])
    if rc == 1:
        assert verify_bytes(data[:n], anchors).exit_code == 1
