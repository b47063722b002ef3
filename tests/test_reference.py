"""Round trip on the nine reference configs, checked by an independent path (tests/helpers)."""

from __future__ import annotations

import os
import shutil
import stat
import struct
import sys
from pathlib import Path

import pytest
from independent import (
    PREBUILT_TBS,
    check_flash,
    ecc_pub_hw,
    ecc_verify,
    get,
    imc_entries,
    lms_verify,
    padded_sha384,
    u32,
)

from imgtool.cli.main import main

CONFIGS = [
    "ast2700-default-manifest",
    "ast2700-default-ecc-manifest",
    "ast2700-default-ecc-lms-manifest",
    "ast2700a1-default-manifest",
    "ast2700a1-default-ecc-manifest",
    "ast2700a1-default-ecc-lms-manifest",
    "ast2700a1-default-ecc-lms-fw-sign-helper-stdin-manifest",
    "ast2700a1-default-ecc-lms-fw-man-sign-helper-stdin-manifest",
    "ast2700a1-default-ecc-lms-fw-man-sign-helper-byfile-manifest",
]
HELPER_PATH = "sign_helper_example/rust_sign_helper/target/debug/rust_sign_helper"
DEMO_HELPER = Path(__file__).parent / "helpers" / "demo_sign_helper.py"


def _prepare(ref: Path, tmp: Path, name: str) -> tuple[Path, Path]:
    """A working directory laid out like the reference tool's (config/, key/, prebuilt/)."""
    prj = "ast2700a1-default" if "a1" in name else "ast2700-default"
    shutil.copytree(ref / "prebuilt" / prj, tmp / "prebuilt" / prj)
    for p in (tmp / "prebuilt" / prj).iterdir():
        p.chmod(0o644)
    if prj == "ast2700-default":
        # the reference prebuilt folder lacks the MCU runtime: supply a stand-in
        (tmp / "prebuilt" / prj / "zephyr-mcu-runtime.bin").write_bytes(b"ZEPHYR-MCU-RT" * 100)
    os.symlink(ref / "key", tmp / "key")
    os.symlink(ref / "vnd_sig", tmp / "vnd_sig")
    helper = tmp / HELPER_PATH
    helper.parent.mkdir(parents=True)
    helper.write_text(
        f"#!{sys.executable}\nimport runpy\n"
        f"runpy.run_path({str(DEMO_HELPER)!r}, run_name='__main__')\n"
    )
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    return tmp / "key" / prj, tmp / "prebuilt" / prj


@pytest.mark.parametrize("name", CONFIGS)
def test_reference_config_round_trip(
    ref: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    keys, pre = _prepare(ref, tmp_path, name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEMO_SIGN_HELPER_KEYS", str(keys))
    cfg = ref / "config" / f"{name}.toml"
    args = ["create-auth-flash", "--cfg", str(cfg)]
    if "helper" in name:
        # these name the A1 bundle, whose selected vendor LMS key did not make ASPEED's prebuilt
        # vendor LMS signature: refused unless allowed (imgtool/keys/key_match.py)
        assert main(args) == 2
        args.append("--allow-key-mismatch")
    assert main(args) == 0
    prj = keys.name
    man = (tmp_path / "out" / f"{prj}-auth-manifest.bin").read_bytes()
    flash = (tmp_path / "out" / f"{prj}-flash-image.bin").read_bytes()
    assert len(man) == 16004
    assert u32(man, 0) == 0x41544D4E and u32(man, 4) == 7168
    assert (u32(man, 8), u32(man, 12), u32(man, 16)) == (1, 1, 0)

    cfg_text = cfg.read_text()
    ecc_on = 'ecc_pub_key = "own-man-ecc-pubk.pem"' in cfg_text.replace("# ecc", "#")
    lms_on = '\nlms_pub_key = "own-man-lms-pubk.pem"' in cfg_text
    vnd_ecc_on = '\necc_pub_key = "vnd-fw-ecc-pubk.pem"' in cfg_text
    vnd_lms_on = '\nlms_pub_key = "vnd-fw-lms-pubk.pem"' in cfg_text

    # vendor: prebuilt signatures, zeroed vendor keys
    assert get(man, "vnd_ecc_pub", 96) == bytes(96)
    assert get(man, "vnd_lms_pub", 48) == bytes(48)
    if vnd_ecc_on:
        assert ecc_verify(keys / "vnd-fw-ecc-pubk.pem", PREBUILT_TBS, get(man, "vnd_sig_ecc", 96))
    else:
        assert get(man, "vnd_sig_ecc", 96) == bytes(96)
    if vnd_lms_on:
        # the signer is vendor LMS key index 3 of the ast2700-default bundle
        bundle = (ref / "prebuilt" / "ast2700-default" / "caliptra-fw.bin").read_bytes()
        idx = u32(bundle, 8 + 4 * 96 + 32 * 48 + 4)
        vnd_lms_key = bundle[8 + 4 * 96 + 48 * idx : 8 + 4 * 96 + 48 * (idx + 1)]
        sig = get(man, "vnd_sig_lms", 1620)
        assert struct.unpack(">I", sig[:4])[0] == 1
        assert lms_verify(vnd_lms_key, PREBUILT_TBS, sig)
    else:
        assert get(man, "vnd_sig_lms", 1620) == bytes(1620)
    # vendor IMC signatures: flags bit 0 is clear
    assert get(man, "vnd_imc_ecc", 96 + 1620) == bytes(96 + 1620)

    imc = man[8888:]
    own_keys = get(man, "own_ecc_pub", 96) + get(man, "own_lms_pub", 48)
    svn_tbs = man[8:20] + own_keys
    if ecc_on:
        assert get(man, "own_ecc_pub", 96) == ecc_pub_hw(keys / "own-man-ecc-pubk.pem")
        assert ecc_verify(keys / "own-fw-ecc-pubk.pem", own_keys, get(man, "own_sig_ecc", 96))
        assert ecc_verify(keys / "own-fw-ecc-pubk.pem", svn_tbs, get(man, "svn_ecc", 96))
        assert ecc_verify(keys / "own-man-ecc-pubk.pem", imc, get(man, "own_imc_ecc", 96))
    else:
        assert get(man, "own_ecc_pub", 96) == bytes(96)
        for slot in ("own_sig_ecc", "svn_ecc", "own_imc_ecc"):
            assert get(man, slot, 96) == bytes(96)
    if lms_on:
        fw_pub = (keys / "own-fw-lms-pubk.pem").read_bytes()
        man_pub = (keys / "own-man-lms-pubk.pem").read_bytes()
        assert get(man, "own_lms_pub", 48) == man_pub
        assert lms_verify(fw_pub, own_keys, get(man, "own_sig_lms", 1620))
        svn = get(man, "svn_lms", 1620)
        assert svn[:4] == (5).to_bytes(4, "little")  # q little-endian in this slot only
        assert lms_verify(fw_pub, svn_tbs, svn[:4][::-1] + svn[4:])
        assert lms_verify(man_pub, imc, get(man, "own_imc_lms", 1620))
    else:
        for slot in ("own_sig_lms", "svn_lms", "own_imc_lms"):
            assert get(man, slot, 1620) == bytes(1620)

    # IMC: config order, padded SHA-384, flags with load_stage in bits 31:30
    entries = imc_entries(man)
    assert len(entries) == 14
    assert u32(imc, 4 + 56 * 14) == 0xFFFFFFFF and imc[4 + 56 * 127 - 48 :] == bytes(48)
    mcu_name = (
        "zephyr-mcu-runtime.bin"
        if "a1" not in name
        else ("u-boot-spl.bin" if "helper" in name else "")
    )
    names = [
        mcu_name,
        "ddr4_pmu_train_imem.bin",
        "ddr4_pmu_train_dmem.bin",
        "ddr4_2d_pmu_train_imem.bin",
        "ddr4_2d_pmu_train_dmem.bin",
        "ddr5_pmu_train_imem.bin",
        "ddr5_pmu_train_dmem.bin",
        "dp_fw.bin",
        "uefi_ast2700.bin",
        "atf.bin",
        "optee.bin",
        "u-boot.bin",
        "ssp.bin",
        "tsp.bin",
    ]
    for i, (fw_id, flags, digest) in enumerate(entries):
        assert fw_id == i + 1
        assert flags == (0x40000001 if fw_id >= 10 else 1)
        data = (pre / names[i]).read_bytes() if names[i] else b""
        assert digest == padded_sha384(data), names[i]

    # flash
    table = check_flash(flash)
    assert [t[0] for t in table] == [1, 2, 3, *range(0x1000, 0x100D)]
    assert table[0][1] == 0xD0  # 16 entries: image data starts at 0xD0
    by_id = {t[0]: t for t in table}
    _, off, size = by_id[2]
    assert flash[off : off + size] == man
    for i, img in enumerate(names[1:]):
        _, off, size = by_id[0x1000 + i]
        data = (pre / img).read_bytes()
        assert flash[off : off + size] == data + bytes(-len(data) % 4)
    cal_name = "caliptra-fw.bin" if "helper" in name or "a1" not in name else ""
    _, off, size = by_id[1]
    assert size == len((pre / cal_name).read_bytes()) if cal_name else size == 0


def test_reference_default_config_fails_without_mcu_runtime(
    ref: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As shipped, the ast2700-default configs name a file the prebuilt folder lacks."""
    monkeypatch.chdir(tmp_path)
    os.symlink(ref / "key", tmp_path / "key")
    os.symlink(ref / "prebuilt", tmp_path / "prebuilt")
    rc = main(
        ["create-auth-flash", "--cfg", str(ref / "config" / "ast2700-default-ecc-manifest.toml")]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "zephyr-mcu-runtime.bin" in err[0] and "prebuilt/ast2700-default" in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
