"""The doit flash task near the I/O limit: each image read once per change, copied without a
second pass, and never packed with a digest that is not that of the bytes in the image.

The builds run in this process (`cptra-imgtool build`), so that reads can be counted (a
`-P process` worker is a fork of it and appends to the same log file).
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from independent import check_flash, imc_entries, padded_sha384
from projects import Project, make_project

import imgtool.formats.flash1
from imgtool.cli.main import main
from imgtool.doit_tasks import checker


@pytest.fixture
def prj(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    p = make_project(tmp_path / "p", sizes=(40, 3 << 20, (1 << 20) + 2, 7, 64), flags=1)
    monkeypatch.chdir(p.root)
    return p


def _flash(p: Project) -> Path:
    return p.root / "out" / "test-flash-image.bin"


def _man(p: Project) -> Path:
    return p.root / "out" / "test-auth-manifest.bin"


class Reads:
    """Counts, across the processes of a build, which files the fingerprint pass hashed and
    which files the flash writer read and hashed while copying."""

    def __init__(self, log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.log = log
        real_hash = checker.hash_file
        real_copy = imgtool.formats.flash1._copy_file

        def hash_file(path: Any) -> tuple[bytes, int]:
            self._add("hash", path)
            return real_hash(path)

        def copy_file(path: Path, out: Any, crc: int, h: Any) -> tuple[int, int]:
            self._add("copy+hash" if h is not None else "copy", path)
            return real_copy(path, out, crc, h)

        monkeypatch.setattr(checker, "hash_file", hash_file)
        monkeypatch.setattr(imgtool.formats.flash1, "_copy_file", copy_file)

    def _add(self, what: str, path: Any) -> None:
        line = json.dumps([what, os.path.realpath(path), os.getpid()]) + "\n"
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def take(self) -> list[tuple[str, str, int]]:
        try:
            lines = self.log.read_text().splitlines()
        except FileNotFoundError:
            return []
        self.log.unlink()
        return [tuple(json.loads(x)) for x in lines]  # type: ignore[misc]

    @staticmethod
    def count(events: list[tuple[str, str, int]], what: str, path: Path) -> int:
        return sum(1 for w, p, _ in events if w == what and p == os.path.realpath(path))


def _images(p: Project) -> list[Path]:
    return sorted(p.prebuilt.glob("img*.bin")) + [p.prebuilt / "mcu.bin"]


def assert_manifest_matches_flash(p: Project) -> None:
    """Every SoC slot of the flash image holds bytes whose padded SHA-384 is the digest the
    manifest in that same flash image gives its fw_id (and the MCU slot, fw_id 1's)."""
    data = _flash(p).read_bytes()
    table = check_flash(data)
    by_id = {ident: data[off : off + size] for ident, off, size in table}
    man = by_id[2]
    digests = {fw_id: d for fw_id, _, d in imc_entries(man)}
    for ident, blob in by_id.items():
        if ident >= imgtool.formats.flash1.SOC_ID_BASE:
            assert padded_sha384(blob) == digests[ident - imgtool.formats.flash1.SOC_ID_BASE + 2]
    assert padded_sha384(by_id[3]) == digests[1]


def _cli_flash(p: Project) -> bytes:
    out = p.root / "cli"
    args = p.args("--man", str(out / "m.bin"), "--flash", str(out / "f.bin"))
    assert main(["create-auth-flash", *args]) == 0
    return (out / "f.bin").read_bytes()


@pytest.mark.parametrize("parallel", [[], ["-n", "2", "-P", "process"]], ids=["serial", "-P2"])
def test_cold_build_reads_each_image_once(
    prj: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parallel: list[str]
) -> None:
    """Cold build with settled images: each image is hashed exactly once (in whichever
    process ran its digest task; doit's main process and the flash task find the fingerprint
    instead of reading it again) and the flash writer copies them without reading them."""
    monkeypatch.setattr(checker, "RACY_NS", 0)  # the fresh test images count as settled
    reads = Reads(tmp_path / "reads.log", monkeypatch)
    assert main(["build", *prj.args(*parallel, "flash")]) == 0
    events = reads.take()
    for img in _images(prj):
        assert Reads.count(events, "hash", img) == 1, (img, events)
        assert Reads.count(events, "copy+hash", img) == 0
        assert Reads.count(events, "copy", img) == 0
    if parallel:
        assert len({pid for w, _, pid in events if w == "hash"}) >= 2  # really in workers
    assert_manifest_matches_flash(prj)
    assert _flash(prj).read_bytes() == _cli_flash(prj)
    assert not (prj.root / "out" / "test" / "fingerprints.json.new").exists()


def test_one_changed_image_is_the_only_one_read(
    prj: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a build, one image rewritten (just now: not settled): its digest task reads it,
    and the flash writer reads and hashes it again as it copies it (a fresh file's stat cannot
    vouch for its bytes); no other image is read."""
    monkeypatch.setattr(checker, "RACY_NS", 0)
    assert main(["build", *prj.args("flash")]) == 0
    monkeypatch.setattr(checker, "RACY_NS", 2_000_000_000)
    reads = Reads(tmp_path / "reads.log", monkeypatch)
    changed = prj.prebuilt / "img1.bin"
    changed.write_bytes(os.urandom(3 << 20))
    assert main(["build", *prj.args("flash")]) == 0
    events = reads.take()
    assert Reads.count(events, "hash", changed) == 1
    assert Reads.count(events, "copy+hash", changed) == 1
    for img in _images(prj):
        if img != changed:
            assert not [e for e in events if e[1] == os.path.realpath(img)], (img, events)
    assert_manifest_matches_flash(prj)
    assert _flash(prj).read_bytes() == _cli_flash(prj)


def test_image_changed_during_the_kernel_copy(
    prj: Project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An image rewritten while the flash task copies it without reading it (same size, its
    mtime put back): the task fails with one line naming it, the previous flash image stays,
    and the next build packs the new bytes with their own digest."""
    monkeypatch.setattr(checker, "RACY_NS", 0)
    assert main(["build", *prj.args("flash")]) == 0
    good = _flash(prj).read_bytes()
    victim = prj.prebuilt / "img2.bin"
    # a change elsewhere, so that the flash task runs again
    (prj.prebuilt / "img0.bin").write_bytes(b"another first image")
    time.sleep(0.01)
    real = os.copy_file_range
    done: list[bool] = []

    def copy_then_change(src: int, dst: int, count: int, *off: Any) -> int:
        n = real(src, dst, count, *off)
        if not done and os.fstat(src).st_ino == victim.stat().st_ino:
            done.append(True)
            st = victim.stat()
            with open(victim, "r+b") as fh:
                fh.write(b"LATE")
            os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
        return n

    monkeypatch.setattr(os, "copy_file_range", copy_then_change)
    capsys.readouterr()
    assert main(["build", *prj.args("flash")]) == 2
    out = capsys.readouterr()
    lines = [x for x in (out.out + out.err).splitlines() if "error" in x]
    assert done and len(lines) == 1 and "img2.bin: image changed while the flash image" in lines[0]
    assert "Traceback" not in out.out + out.err
    assert _flash(prj).read_bytes() == good
    assert [x.name for x in _flash(prj).parent.iterdir() if x.name.startswith(".")] == []
    monkeypatch.setattr(os, "copy_file_range", real)
    assert main(["build", *prj.args("flash")]) == 0
    assert_manifest_matches_flash(prj)
    assert _flash(prj).read_bytes() == _cli_flash(prj)


def test_no_kernel_copy_still_builds_the_same_image(
    prj: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checker, "RACY_NS", 0)

    def unsupported(*a: Any) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    monkeypatch.setattr(os, "sendfile", unsupported)
    assert main(["build", *prj.args("flash")]) == 0
    assert_manifest_matches_flash(prj)
    assert _flash(prj).read_bytes() == _cli_flash(prj)


def test_flash_target_changed_behind_doits_back_is_rebuilt(prj: Project) -> None:
    """The flash image truncated, or replaced by a file of the same size: the flash task runs
    again and restores it."""
    assert main(["build", *prj.args("flash")]) == 0
    good = _flash(prj).read_bytes()
    with open(_flash(prj), "r+b") as fh:
        fh.truncate(len(good) // 2)
    assert main(["build", *prj.args("flash")]) == 0
    assert _flash(prj).read_bytes() == good
    other = _flash(prj).with_name("other.bin")
    other.write_bytes(bytes(len(good)))
    os.replace(other, _flash(prj))
    assert main(["build", *prj.args("flash")]) == 0
    assert _flash(prj).read_bytes() == good


# ---------------------------------------------------------------------------- the journal
def test_journal_lines_of_other_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A settled journal line is a fingerprint for any later run; an unsettled one only for
    its own run. save() folds the settled ones into the JSON file and removes the journal."""
    store = tmp_path / "fp.json"
    checker.configure(tmp_path / "elsewhere.json")
    checker.configure(store)
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"aaaa")
    b.write_bytes(b"bbbb")
    da, ca = checker.hash_file(a)
    db, cb = checker.hash_file(b)

    def line(p: Path, d: bytes, c: int, run: str | None) -> str:
        return json.dumps([str(p), [*checker.ident(p.stat()), d.hex(), c], run]) + "\n"

    journal = tmp_path / "fp.json.new"
    journal.write_text(line(a, da, ca, None) + line(b, db, cb, "1-2") + "garbage\n[1,2")
    checker.configure(tmp_path / "elsewhere.json")
    checker.configure(store)  # a new run
    assert checker.lookup(a, a.stat(), settled=True) == da
    assert checker.fingerprint_of(b, b.stat()) is None  # another run's unsettled line
    checker.save()
    assert not journal.exists()
    saved = json.loads(store.read_text())
    assert list(saved) == [str(a)] and saved[str(a)][5:] == [da.hex(), ca]
    checker.configure(tmp_path / "elsewhere.json")


def test_fingerprint_is_one_read_of_digest_and_crc(tmp_path: Path) -> None:
    import zlib

    from imgtool.formats.manifest1 import image_digest_file

    for n in (0, 1, 5, (1 << 20) - 1, 1 << 20, (5 << 20) + 3):
        f = tmp_path / f"{n}.bin"
        data = os.urandom(n)
        f.write_bytes(data)
        assert checker.hash_file(f) == (image_digest_file(f), zlib.crc32(data))
