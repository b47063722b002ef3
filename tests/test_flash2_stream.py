"""The streamed 2.x flash writer (formats/flash2.write_flash2, build2.create_auth_flash2) and the
flash size bound checked before anything is read or signed (RT3-F10).

The streamed bytes are compared with the in-memory Flash2.pack (golden structure in
test_flash2.py); the memory bound is measured with tracemalloc (allocations, not time)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from helpers.projects2 import Project2, make_project2

from imgtool import build2
from imgtool.cli.main import main
from imgtool.config2 import load_config2
from imgtool.errors import ConfigError, FormatError, ImgtoolError
from imgtool.formats import flash2 as f2
from imgtool.formats import fw_toc

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Project2:
    return make_project2(tmp_path_factory.mktemp("stream-base"), "ast2755")


def _project(base: Project2, where: Path, extra: str = "", align: int | None = None) -> Path:
    """A copy of the base config in ``where`` (keys and prebuilt files stay the base's) with
    ``extra`` appended and padding_align_size replaced by ``align``."""
    where.mkdir(parents=True, exist_ok=True)
    text = base.cfg.read_text()
    if align is not None:
        assert "padding_align_size = 256" in text
        text = text.replace("padding_align_size = 256", f"padding_align_size = {align}", 1)
    cfg = where / base.cfg.name
    cfg.write_text(text + extra)
    return cfg


def _soc(file: str, fw_id: int) -> str:
    return (
        f'[[image_metadata_list]]\nfile = "{file}"\nfw_id = {fw_id:#x}\nexec_bit = 0\n'
        "component_id = 0\nclassification = 0\nimage_load_address = 0\n"
        "image_staging_address = 0\n\n"
    )


def _sparse(path: Path, size: int, head: bytes = b"HEAD", tail: bytes = b"TAIL") -> Path:
    """A sparse file of ``size`` bytes (no disk blocks but its first and last bytes)."""
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)
        fh.seek(size - len(tail))
        fh.write(tail)
    return path


# --- formats/flash2: the writer -----------------------------------------------------------------
IMAGES = [(0, b"CAL"), (1, b"MANIFEST"), (2, b"mcu-rt!"), (0x1000, b""), (0x1001, b"\xff" * 5)]


@pytest.mark.parametrize("chunk", [1, 3, 4, 7, 1 << 20])
def test_streamed_bytes_and_files_equal_pack(tmp_path: Path, chunk: int) -> None:
    """Files and bytes, any chunk size: the same bytes as Flash2.pack (whose layout
    test_flash2.py pins), and entries as Flash2.entries."""
    want = f2.Flash2(IMAGES).pack()
    items = []
    for ident, data in IMAGES:
        p = tmp_path / f"{ident:x}.bin"
        p.write_bytes(data)
        src: f2.Source = p if ident % 2 else data  # mix files and bytes
        items.append(f2.flash_item2(ident, src, chunk=chunk))
    buf = io.BytesIO()
    assert f2.write_flash2(buf, items, chunk=chunk) == len(want)
    assert buf.getvalue() == want
    assert f2.flash_entries2(items) == f2.Flash2(IMAGES).entries()
    assert f2.Flash2.parse(want).images == [(i, f2.pad4(d)) for i, d in IMAGES]


@pytest.mark.parametrize("align", [0, 1, 16, 256])
def test_alignment_padding_is_zeros_after_the_file(tmp_path: Path, align: int) -> None:
    data = bytes(range(1, 200))
    p = tmp_path / "img.bin"
    p.write_bytes(data)
    item = f2.flash_item2(0x1000, p, align, chunk=64)
    padded = data + bytes((-len(data) % align) if align > 1 else 0)
    padded += bytes(-len(padded) % 4)
    assert (item.size, item.checksum) == (len(padded), f2.neg_sum(padded))
    buf = io.BytesIO()
    f2.write_flash2(buf, [item], chunk=64)
    assert buf.getvalue() == f2.Flash2([(0x1000, padded)]).pack()


def test_an_image_changed_after_its_checksum_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "img.bin"
    p.write_bytes(b"ABCDEFGH")
    item = f2.flash_item2(0x1000, p)
    p.write_bytes(b"ABCDEFGX")
    with pytest.raises(ImgtoolError, match="changed while the flash image was written"):
        f2.write_flash2(io.BytesIO(), [item])
    p.write_bytes(b"ABCDEFGH" + b"more")
    with pytest.raises(ImgtoolError, match="grew while"):
        f2.write_flash2(io.BytesIO(), [item])


def test_u32_bound_refused_before_anything_is_written() -> None:
    """Sizes past 2^32 - 1 (the u32 offsets) are refused before the header is written."""
    items = [f2.FlashItem2(0, None, 0xFFFF_0000, 0), f2.FlashItem2(1, None, 0x10000, 0)]
    buf = io.BytesIO()
    with pytest.raises(FormatError, match=r"4294967352 bytes .*u32"):
        f2.write_flash2(buf, items)
    assert buf.getvalue() == b""
    fits = [f2.FlashItem2(0, None, 0xFFFF_FFFF - f2.HEADER_LEN - f2.ENTRY_LEN - 3, 0)]
    f2.check_flash_size2(f2.flash_size2([it.size for it in fits]))  # the largest that fits
    with pytest.raises(FormatError, match="duplicate"):
        f2.write_flash2(io.BytesIO(), [f2.FlashItem2(1, None, 0, 0)] * 2)


def test_writer_memory_does_not_grow_with_the_image(tmp_path: Path) -> None:
    """64 MiB sparse image: tracemalloc peak of checksum pass + write stays below 8 MiB."""
    big = _sparse(tmp_path / "big.bin", 64 * MIB + 1)
    out = tmp_path / "out.bin"
    tracemalloc.start()
    try:
        item = f2.flash_item2(0x1000, big, 16)
        with open(out, "wb") as fh:
            n = f2.write_flash2(fh, [f2.flash_item2(0, b"CAL"), item])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MIB, peak
    assert n == out.stat().st_size == 16 + 40 + 4 + 64 * MIB + 16
    with open(out, "rb") as fh:
        fh.seek(16 + 40 + 4)
        assert fh.read(4) == b"HEAD"
        fh.seek(16 + 40 + 4 + 64 * MIB + 1 - 4)
        assert fh.read(4) == b"TAIL"
        assert fh.read() == bytes(15)


# --- build2: the flash size from stat(), before reading or signing ------------------------------
def test_planned_size_is_the_written_size(base: Project2, tmp_path: Path) -> None:
    """flash2_planned_size2 (stat only) is the size create-auth-flash-2x writes."""
    cfg = _project(base, tmp_path / "p")
    out = ["--man", str(tmp_path / "m.bin"), "--flash", str(tmp_path / "f.bin")]
    assert main(["create-auth-flash-2x", *_args(base, cfg), *out]) == 0
    cfg2 = load_config2(cfg, key_dir=base.keys, prebuilt_dir=base.prebuilt)
    assert build2.flash2_planned_size2(cfg2) == (tmp_path / "f.bin").stat().st_size


def test_streamed_build_equals_the_in_memory_image(base: Project2, tmp_path: Path) -> None:
    """create_auth_flash2 (streamed) writes Flash2.pack of flash2_parts (every image in memory)
    and the fw_toc of its entries; a 64 MiB sparse SoC image is written with a tracemalloc peak
    below 8 MiB (the in-memory build held it three times)."""
    pre = tmp_path / "pre"
    pre.mkdir()
    for f in base.prebuilt.iterdir():
        (pre / f.name).write_bytes(f.read_bytes())
    _sparse(pre / "big.bin", 64 * MIB + 3)
    cfg = _project(base, tmp_path, _soc("big.bin", 0x1003), align=4096)
    cfg2 = load_config2(cfg, key_dir=base.keys, prebuilt_dir=pre)
    man = build2.create_auth_man2(cfg2, "mldsa", tmp_path / "out" / "m.bin")
    out = tmp_path / "out" / "f.bin"
    tracemalloc.start()
    try:
        n, toc = build2.create_auth_flash2(cfg2, out, man, "m.bin")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MIB, peak
    parts, names = build2.flash2_parts(cfg2, man, "m.bin")
    fl = f2.Flash2(parts)
    assert out.read_bytes() == fl.pack()
    assert n == out.stat().st_size == build2.flash2_planned_size2(cfg2, len(man))
    assert toc.read_bytes() == fw_toc.FwToc.from_flash(fl.entries(), names).pack()
    assert "big_align_4096.bin" in names


def test_flash_over_u32_is_refused_before_signing(
    base: Project2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A 4 GiB (sparse) SoC image: one line naming the size, exit 2, nothing signed, read or
    written (the padded sizes come from stat())."""
    pre = tmp_path / "pre"
    pre.mkdir()
    for f in base.prebuilt.iterdir():
        (pre / f.name).write_bytes(f.read_bytes())
    _sparse(pre / "huge.bin", 1 << 32)
    cfg = _project(base, tmp_path / "w", _soc("huge.bin", 0x1003))

    def no_signing(*a: object, **k: object) -> tuple[bytes, bytes]:
        raise AssertionError("signed before the size check")

    monkeypatch.setattr(build2, "sign2", no_signing)
    monkeypatch.chdir(tmp_path / "w")
    args = ["--cfg", str(cfg), "--key-dir", str(base.keys), "--prebuilt-dir", str(pre)]
    capsys.readouterr()
    rc = main(["create-auth-flash-2x", *args, "--pqc-key-type", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    size = build2.flash2_planned_size2(load_config2(cfg, key_dir=base.keys, prebuilt_dir=pre))
    assert size > 0xFFFFFFFF and f"{size} bytes" in err[0] and "u32" in err[0], err
    assert not (tmp_path / "w" / "out").exists()
    cfg2 = load_config2(cfg, key_dir=base.keys, prebuilt_dir=pre)
    with pytest.raises(ConfigError, match="u32"):
        build2.check_outputs2(cfg2, {"flash=": tmp_path / "w" / "f.bin"})
    build2.check_outputs2(cfg2, {"--man": tmp_path / "w" / "m.bin"})  # a manifest alone fits


def test_doit_refuses_the_flash_before_any_task(base: Project2, tmp_path: Path) -> None:
    """doit (graph2.doit_config -> build2.check_outputs2): one line, exit 2, no task run."""
    pre = tmp_path / "pre"
    pre.mkdir()
    for f in base.prebuilt.iterdir():
        (pre / f.name).write_bytes(f.read_bytes())
    _sparse(pre / "huge.bin", 1 << 32)
    cfg = _project(base, tmp_path / "w", _soc("huge.bin", 0x1003))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), "-d", str(tmp_path / "w")]
    cmd += ["flash", f"cfg={cfg}", f"key_dir={base.keys}", f"prebuilt_dir={pre}", "pqc=mldsa"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "u32" in lines[0], lines
    assert not list((tmp_path / "w").rglob("*.sig")) and not list((tmp_path / "w").rglob("*.bin"))


def test_more_images_than_fw_toc_holds_is_refused_before_signing(
    base: Project2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """fw_toc.bin has 32 slots: 3 + 30 SoC images used to be found after every signature."""
    extra = "".join(_soc("soc-image-0.bin", 0x1003 + i) for i in range(27))  # 3 + 27 = 30
    cfg = _project(base, tmp_path / "w", extra)
    monkeypatch.setattr(build2, "sign2", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    monkeypatch.chdir(tmp_path / "w")
    capsys.readouterr()
    rc = main(["create-auth-flash-2x", *_args(base, cfg)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "fw_toc.bin holds at most 32" in err[0], err
    assert "33 images" in err[0], err


def _args(base: Project2, cfg: Path) -> list[str]:
    return ["--cfg", str(cfg), "--key-dir", str(base.keys), "--prebuilt-dir", str(base.prebuilt),
            "--pqc-key-type", "1"]  # fmt: skip
