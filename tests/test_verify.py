"""verify: everything we build verifies; failures are explained; exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from projects import Project, make_project

from imgtool.cli import main


def _build(prj: Project) -> None:
    assert (
        main(["create-auth-flash", *prj.args("--man", str(prj.man), "--flash", str(prj.flash))])
        == 0
    )


def _verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["verify", *args])
    return rc, capsys.readouterr().out


VARIANTS = {
    "ecc-bundle": {"sample_bundle": True},
    "ecc-lms-bundle": {"sample_bundle": True, "lms": True, "flags": 1},
    "caliptra-1": {"fmt": "caliptra-1", "sample_bundle": True, "lms": True},
    "out-bundle": {"sample_bundle": True, "lms": True, "extra_runtime": "cptra_out_bundle = true"},
    "zero-end": {"caliptra": None, "extra_runtime": "zero_caliptra_file_end = 0x1000"},
    "owner-only": {"vendor": False, "sample_bundle": True},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_built_images_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], variant: str
) -> None:
    prj = make_project(tmp_path, **VARIANTS[variant])  # type: ignore[arg-type]
    _build(prj)
    extra = ["--key-dir", str(prj.keys)]
    rc, out = _verify(
        capsys, str(prj.flash), "--cfg", str(prj.cfg), *extra, "--prebuilt-dir", str(prj.prebuilt)
    )
    assert rc == 0, out
    assert "FAIL" not in out and "checks passed, 0 failed" in out
    rc, out = _verify(capsys, str(prj.man), *extra)
    if variant != "zero-end" and "out" not in variant:
        rc2, out2 = _verify(
            capsys, str(prj.man), "--caliptra-fw", str(prj.prebuilt / "caliptra-fw.bin")
        )
        assert rc2 == 0, out2
    assert rc == 0, out


def test_reference_flash_verifies_with_its_bundle(
    ref: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pre = tmp_path / "prebuilt" / "ast2700-default"
    shutil.copytree(ref / "prebuilt" / "ast2700-default", pre)
    (pre / "zephyr-mcu-runtime.bin").write_bytes(b"MCU!" * 99)
    os.symlink(ref / "key", tmp_path / "key")
    os.symlink(ref / "vnd_sig", tmp_path / "vnd_sig")
    monkeypatch.chdir(tmp_path)
    cfg = ref / "config" / "ast2700-default-ecc-lms-manifest.toml"
    assert main(["create-auth-flash", "--cfg", str(cfg)]) == 0
    rc, out = _verify(capsys, "out/ast2700-default-flash-image.bin", "--cfg", str(cfg))
    assert rc == 0, out
    assert "prebuilt ECC signature applies" in out and "q = 5 (stored little-endian)" in out


def test_a1_prebuilt_lms_signature_fails_with_a1_bundle_key(
    ref: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A data fact worth knowing: the A1 reference bundle selects the demo vendor LMS key, which
    did not make ASPEED's prebuilt LMS signature; verify says exactly that and nothing else."""
    man = tmp_path / "m.bin"
    cfg = ref / "config" / "ast2700a1-default-ecc-lms-manifest.toml"
    assert (
        main(
            [
                "create-auth-man",
                "--cfg",
                str(cfg),
                "--key-dir",
                str(ref / "key" / "ast2700a1-default"),
                "--prebuilt-dir",
                str(ref / "prebuilt" / "ast2700a1-default"),
                "--vnd-sig-dir",
                str(ref / "vnd_sig"),
                "--man",
                str(man),
            ]
        )
        == 0
    )
    rc, out = _verify(
        capsys,
        str(man),
        "--caliptra-fw",
        str(ref / "prebuilt" / "ast2700a1-default" / "caliptra-fw.bin"),
    )
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert rc == 1 and len(fails) == 1 and "vendor pubkey signature" in fails[0]
    rc, out = _verify(
        capsys,
        str(man),
        "--caliptra-fw",
        str(ref / "prebuilt" / "ast2700-default" / "caliptra-fw.bin"),
    )
    assert rc == 0, out


def test_config_mismatch_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prj = make_project(tmp_path, sample_bundle=True)
    _build(prj)
    prj.cfg.write_text(prj.cfg.read_text().replace("security_version = 3", "security_version = 4"))
    (prj.prebuilt / "img3.bin").write_bytes(b"different")
    rc, out = _verify(
        capsys,
        str(prj.flash),
        "--cfg",
        str(prj.cfg),
        "--prebuilt-dir",
        str(prj.prebuilt),
        "--key-dir",
        str(prj.keys),
    )
    assert rc == 1
    assert "FAIL manifest vs" in out and "security_version: 3 vs 4" in out
    assert "entry 4 digest matches img3.bin" in out


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prj = make_project(tmp_path, sample_bundle=True)
    _build(prj)
    rc, out = _verify(capsys, str(prj.flash), "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["ok"] is True and doc["kind"].startswith("flash image")
    assert all({"region", "check", "ok", "detail"} <= set(c) for c in doc["checks"])


def test_missing_key_is_a_failure_not_a_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prj = make_project(tmp_path, sample_bundle=True)
    _build(prj)
    rc, out = _verify(capsys, str(prj.man))  # no bundle, no keys: pubkey sigs cannot be checked
    assert rc == 1 and "no key to verify it with" in out


@pytest.mark.parametrize(
    "content", [b"", b"garbage", b"\x00" * 64, b"CMN2" + bytes(60), b"ATM2"[::-1] + bytes(60)]
)
def test_unusable_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(content)
    assert main(["verify", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cptra-imgtool: error: ") and str(f) in err[0]
    assert main(["verify", str(tmp_path / "missing.bin")]) == 2


def test_newer_flsh_layout_is_recognised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import struct
    import zlib

    # the layout a day after the pinned commit: image_headers_offset at 8, header CRC over 12
    head = b"FLSH" + struct.pack("<HHI", 1, 2, 16)
    table = b"".join(struct.pack("<IIIII", 1 + i, 56 + 4 * i, 4, 0, 0) for i in range(2))
    f = tmp_path / "new.bin"
    f.write_bytes(head + struct.pack("<I", zlib.crc32(head)) + table + bytes(8))
    rc, out = _verify(capsys, str(f))
    assert rc == 1 and "later upstream layout" in out
