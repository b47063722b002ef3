"""Parity with the newest reference tool (spec/caliptra2.md, "New in the newest reference tool for
1.x"): each point with a config written here in the reference's own style, checked byte-wise by
the independent checker (tests/helpers/independent.py)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
from independent import (
    ASPEED,
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
from refstyle import ALL_KEYS, OWNER_ECC_KEYS, Image, RefProject, default_images, write

from imgtool.cli.main import main

EMPTY = hashlib.sha384(b"").digest()


def _build(p: RefProject, monkeypatch: pytest.MonkeyPatch, *extra: str) -> tuple[bytes, bytes]:
    monkeypatch.chdir(p.root)
    assert main(["create-auth-flash", *p.args(*extra)]) == 0
    out = p.root / "out"
    return (
        (out / f"{p.prj}-auth-manifest.bin").read_bytes(),
        (out / f"{p.prj}-flash-image.bin").read_bytes(),
    )


def _zero_pad(data: bytes, n: int) -> bytes:
    return data + bytes(-len(data) % n)


def _flash_parts(flash: bytes, base: int = 0) -> dict[int, bytes]:
    return {i: flash[base + o : base + o + s] for i, o, s in check_flash(flash, base)}


# ---------------------------------------------------------------------------- padding
@pytest.mark.parametrize("folder", [None, "padded-out"])
def test_padding_align_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: str | None
) -> None:
    """padding_align_size = 256: caliptra_file, mcu_file and every named image are zero-padded
    to 256; the manifest hashes, and the flash image packs, the padded bytes; empty images stay
    empty. With padding_out_folder the copies <stem>_align_256.<ext> are left there; without
    it nothing is left behind."""
    images = [
        Image("zephyr-mcu-runtime.bin", 1, size=61),
        Image("ddr4_pmu_train_imem.bin", 2, size=1000),
        Image("", 3),
        Image("dp_fw.bin", 4, size=512),  # already aligned: the copy equals the original
        Image("obmc-phosphor-image.cpio.zst.fitImage", 5, 2, size=33),
        Image("kernel", 6, 2, size=7),  # no extension
    ]
    extra = "padding_align_size = 256" + (f'\npadding_out_folder = "{folder}"' if folder else "")
    p = write(tmp_path, images, keys=OWNER_ECC_KEYS, manifest_extra=extra)
    man, flash = _build(p, monkeypatch)
    parts = _flash_parts(flash)
    padded = {img.file: _zero_pad(p.data(img.file), 256) for img in images if img.file}
    cal = _zero_pad(p.data("caliptra-fw.bin"), 256)
    assert parts[1] == cal and len(cal) % 256 == 0
    assert parts[2] == man  # 1.x: the manifest itself is not padded
    assert parts[3] == padded["zephyr-mcu-runtime.bin"]
    for fw_id, _flags, digest in imc_entries(man):
        img = images[fw_id - 1]
        want = padded[img.file] if img.file else b""
        assert digest == padded_sha384(want) == hashlib.sha384(want).digest(), img.file
        if fw_id >= 2:
            assert parts[0x1000 + fw_id - 2] == want
    assert len(parts[0x1001]) == 0
    # the IMC signature covers these digests
    assert ecc_verify(p.keys / "own-man-ecc-pubk.pem", man[8888:], get(man, "own_imc_ecc", 96))
    copies = sorted(x.name for x in tmp_path.rglob("*_align_*"))
    if folder is None:
        assert copies == []
    else:
        assert copies == sorted(
            [
                "caliptra-fw_align_256.bin",
                "zephyr-mcu-runtime_align_256.bin",
                "ddr4_pmu_train_imem_align_256.bin",
                "dp_fw_align_256.bin",
                "obmc-phosphor-image.cpio.zst_align_256.fitImage",
                "kernel_align_256",
            ]
        )
        out = tmp_path / folder
        assert (out / "kernel_align_256").read_bytes() == padded["kernel"]
        assert (out / "caliptra-fw_align_256.bin").read_bytes() == cal
    # the originals are untouched
    assert p.data("kernel") == (p.prebuilt / "kernel").read_bytes() and len(p.data("kernel")) == 7


def test_padding_to_4_makes_irot_digests_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An iRoT image (load_stage 2) of 33 bytes warns, unless padding_align_size pads it."""
    images = [Image("zephyr-mcu-runtime.bin", 1), Image("irot.bin", 2, 2, size=33)]
    p = write(tmp_path, images)
    _build(p, monkeypatch)
    assert "load_stage 2" in capsys.readouterr().err
    p = write(tmp_path / "b", images, manifest_extra="padding_align_size = 4")
    man, _ = _build(p, monkeypatch)
    assert "load_stage 2" not in capsys.readouterr().err
    data = p.data("irot.bin") + bytes(3)
    assert imc_entries(man)[1][2] == hashlib.sha384(data).digest()  # = the unpadded hash


# ---------------------------------------------------------------------------- svn
def test_per_image_svn_in_imc_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    images = default_images()  # svn = 1 on fw_id 1, as the newest configs
    images[4].svn = 7
    images[12].svn = 255  # fw_id 13, load_stage 1
    p = write(tmp_path, images, keys=ALL_KEYS, lms=True, manifest_extra=_NON_OVERRIDE)
    man, flash = _build(p, monkeypatch)
    flags = {fw_id: f for fw_id, f, _ in imc_entries(man)}
    assert flags[1] == 0x00010001 and flags[5] == 0x00070001 and flags[13] == 0x40FF0001
    assert flags[2] == 0x00000001 and flags[10] == 0x40000001
    capsys.readouterr()
    assert main(["inspect", "--json", str(p.root / "out" / f"{p.prj}-flash-image.bin")]) == 0
    doc = json.loads(capsys.readouterr().out)
    svns = {e["fw_id"]: e["svn"] for e in doc["flash"]["manifest"]["entries"]}
    assert svns[1] == 1 and svns[5] == 7 and svns[13] == 255 and svns[2] == 0
    by_id = {im["identifier"]: im for im in doc["flash"]["images"]}
    assert by_id[0x100B]["svn"] == 255 and by_id[0x1003]["svn"] == 7
    assert main(["inspect", str(p.root / "out" / f"{p.prj}-auth-manifest.bin")]) == 0
    assert "stage svn" in capsys.readouterr().out
    # verify --cfg compares the entry flags (svn included) with the config
    rc = main(["verify", str(p.root / "out" / f"{p.prj}-flash-image.bin"), "--cfg", str(p.cfg)])
    out = capsys.readouterr().out
    assert rc == 0, out
    images[4].svn = 8
    write(tmp_path, images, keys=ALL_KEYS, lms=True, manifest_extra=_NON_OVERRIDE)
    rc = main(["verify", str(p.root / "out" / f"{p.prj}-flash-image.bin"), "--cfg", str(p.cfg)])
    assert rc == 1


# ---------------------------------------------------------------------------- vendor switch
_NON_OVERRIDE = "manifest_overrides_presigned_key_and_signature = false"


def test_non_override_keeps_generated_vendor_keys_and_signatures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ast2700-default-ecc-lms-manifest-vnd-sig-non-override.toml: the generated vendor manifest
    keys and vendor endorsements stay (no vnd_sig/ exists here, so the prebuilt ones cannot be
    used), and the SVN signature is still added."""
    p = write(tmp_path, default_images(), keys=ALL_KEYS, lms=True, manifest_extra=_NON_OVERRIDE)
    man, flash = _build(p, monkeypatch)
    k = p.keys
    vnd_keys = get(man, "vnd_ecc_pub", 96) + get(man, "vnd_lms_pub", 48)
    assert vnd_keys[:96] == ecc_pub_hw(k / "vnd-man-ecc-pubk.pem")
    assert vnd_keys[96:] == (k / "vnd-man-lms-pubk.pem").read_bytes()
    tbs = struct.pack("<II", 1, 0) + vnd_keys  # version, flags, vendor manifest keys
    assert tbs != PREBUILT_TBS
    assert ecc_verify(k / "vnd-fw-ecc-pubk.pem", tbs, get(man, "vnd_sig_ecc", 96))
    assert lms_verify((k / "vnd-fw-lms-pubk.pem").read_bytes(), tbs, get(man, "vnd_sig_lms", 1620))
    own = get(man, "own_ecc_pub", 96) + get(man, "own_lms_pub", 48)
    svn_tbs = man[8:20] + own
    assert u32(man, ASPEED["sec_ver"]) == 1
    assert ecc_verify(k / "own-fw-ecc-pubk.pem", svn_tbs, get(man, "svn_ecc", 96))
    svn = get(man, "svn_lms", 1620)
    assert lms_verify((k / "own-fw-lms-pubk.pem").read_bytes(), svn_tbs, svn[:4][::-1] + svn[4:])
    assert _flash_parts(flash)[2] == man
    # the same config without the switch wants ASPEED's prebuilt signatures (none here)
    text = p.cfg.read_text().replace(_NON_OVERRIDE + "\n", "")
    p.cfg.write_text(text)
    assert main(["create-auth-man", *p.args("--man", "x.bin")]) == 2


# ---------------------------------------------------------------------------- owner fallback
def test_owner_imc_ecc_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No owner FW ECC pair, owner_man_key_config with an ECC pair: the IMC is signed with the
    owner manifest pair; as in the reference tool, the owner ECC key slot, the owner ECC
    endorsement and the SVN ECC signature stay zero."""
    keys = {"own-man": {"ecc_pub", "ecc_priv"}}
    p = write(tmp_path, default_images(), keys=keys)
    man, _ = _build(p, monkeypatch)
    assert "only the owner IMC ECC signature is made" in capsys.readouterr().err
    assert ecc_verify(p.keys / "own-man-ecc-pubk.pem", man[8888:], get(man, "own_imc_ecc", 96))
    for slot, n in (("own_ecc_pub", 96), ("own_sig_ecc", 96), ("svn_ecc", 96)):
        assert get(man, slot, n) == bytes(n), slot
    assert man[20:1880] == bytes(1860)  # no vendor keys, no vendor signatures
    assert get(man, "own_imc_lms", 1620) == bytes(1620)


# ---------------------------------------------------------------------------- src/vnd_sig
def test_prebuilt_vendor_signatures_from_src_vnd_sig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reference repository keeps vnd_ecc_sig.der / vnd_lms_sig.der in src/vnd_sig/: found
    there when vnd_sig/ has none, and the chosen folder is named by --debug and inspect --cfg.
    (The signatures here are made with this project's vendor FW keys over the prebuilt TBS.)"""
    from imgtool.keys import ecc
    from imgtool.keys.lms_signer import LmsSigner

    p = write(tmp_path, default_images(), keys=ALL_KEYS, lms=True)
    digest = hashlib.sha384(PREBUILT_TBS).digest()
    der = ecc.sign_digest_der(ecc.load_private(p.keys / "vnd-fw-ecc-prvk.pem"), digest)
    lms_sig = LmsSigner.load(p.keys / "vnd-fw-lms-prvk.pem").sign_digest(digest)
    sig_dir = tmp_path / "src" / "vnd_sig"
    sig_dir.mkdir(parents=True)
    (sig_dir / "vnd_ecc_sig.der").write_bytes(der)
    (sig_dir / "vnd_lms_sig.der").write_bytes(lms_sig)
    (tmp_path / "vnd_sig").mkdir()  # an empty vnd_sig/ does not hide src/vnd_sig/
    man, flash = _build(p, monkeypatch, "--debug")
    err = capsys.readouterr().err
    assert "prebuilt vendor signatures: src/vnd_sig/ (first of vnd_sig/, src/vnd_sig/)" in err
    assert "prebuilt vendor ECC signature: src/vnd_sig/vnd_ecc_sig.der" in err
    assert get(man, "vnd_ecc_pub", 144) == bytes(144)  # zeroed, as the reference does
    assert ecc_verify(p.keys / "vnd-fw-ecc-pubk.pem", PREBUILT_TBS, get(man, "vnd_sig_ecc", 96))
    assert get(man, "vnd_sig_lms", 1620) == lms_sig
    image = p.root / "out" / f"{p.prj}-flash-image.bin"
    assert main(["inspect", str(image), "--cfg", str(p.cfg)]) == 0
    out = capsys.readouterr().out
    assert "vendor signature       prebuilt from src/vnd_sig/ (first of" in out
    assert main(["inspect", str(image), "--cfg", str(p.cfg), "--json"]) == 0
    inputs = json.loads(capsys.readouterr().out)["inputs"]
    assert inputs["vendor_sig_dir"] == "src/vnd_sig" and inputs["key_dir"] == f"key/{p.prj}"


# ---------------------------------------------------------------------------- new shapes
def test_rtos_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ast2700-rtos-manifest.toml: atf/optee/u-boot empty with load_stage 2, fw_id 13 is
    ast2700-rtos.bin, tsp with load_stage 0; no keys."""
    images = default_images()
    for i in (9, 10, 11):  # fw_id 10, 11, 12
        images[i] = Image("", i + 1, 2)
    images[12] = Image("ast2700-rtos.bin", 13, 1, size=4099)
    images[13] = Image("tsp.bin", 14, 0, size=70)
    p = write(tmp_path, images, prj="ast2700-rtos", caliptra=None)
    man, flash = _build(p, monkeypatch)
    entries = {fw_id: (flags, d) for fw_id, flags, d in imc_entries(man)}
    for fw_id in (10, 11, 12):
        assert entries[fw_id] == (0x80000001, EMPTY)
    assert entries[13] == (0x40000001, padded_sha384(p.data("ast2700-rtos.bin")))
    assert entries[14] == (0x00000001, padded_sha384(p.data("tsp.bin")))
    assert entries[1][0] == 0x00010001  # svn 1 on the MCU runtime
    parts = _flash_parts(flash)
    assert [len(parts[0x1000 + i]) for i in (8, 9, 10)] == [0, 0, 0]
    assert parts[0x100B] == _zero_pad(p.data("ast2700-rtos.bin"), 4)
    assert parts[3] == _zero_pad(p.data("zephyr-mcu-runtime.bin"), 4)  # also fw_id 1
    assert man[20:8888] == bytes(8868)  # no keys: every key and signature slot is empty


def test_irot_kernel_shape_with_15_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ast2700-irot-kernel-ecc-lms-manifest.toml: 15 entries; fw_id 14 empty, fw_id 15 is a
    kernel fitImage with load_stage 2 at flash identifier 0x100D."""
    images = default_images()
    for i in (9, 10, 11):
        images[i].load_stage = 2
    images[12] = Image("zephyr-aspeed-ssp-irot.bin", 13, 1, size=300)
    images[13] = Image("", 14, 0)
    images.append(Image("obmc-phosphor-image-ast2700-irot.cpio.zst.fitImage", 15, 2, size=5000))
    p = write(
        tmp_path, images, prj="ast2700-irot", keys=ALL_KEYS, lms=True, manifest_extra=_NON_OVERRIDE
    )
    man, flash = _build(p, monkeypatch)
    entries = imc_entries(man)
    assert len(entries) == 15 and [e[0] for e in entries] == list(range(1, 16))
    fit = p.data("obmc-phosphor-image-ast2700-irot.cpio.zst.fitImage")
    assert entries[14] == (15, 0x80000001, padded_sha384(fit))
    assert entries[13] == (14, 0x00000001, EMPTY)
    table = check_flash(flash)
    assert [t[0] for t in table] == [1, 2, 3, *range(0x1000, 0x100E)]
    assert table[0][1] == 16 + 12 * 17
    parts = _flash_parts(flash)
    assert parts[0x100D] == fit and len(parts[0x100C]) == 0
    k = p.keys
    imc = man[8888:]
    assert ecc_verify(k / "own-man-ecc-pubk.pem", imc, get(man, "own_imc_ecc", 96))
    assert lms_verify((k / "own-man-lms-pubk.pem").read_bytes(), imc, get(man, "own_imc_lms", 1620))


def test_force_caliptra_file_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """force_caliptra_file_end.toml: no keys, caliptra_file = "", zero_caliptra_file_end =
    0x20000, fw_id 1 empty: the manifest starts at flash offset 0x20000 exactly."""
    images = default_images()
    images[0] = Image("", 1, 0)
    p = write(
        tmp_path,
        images,
        caliptra_file="",
        runtime_extra="zero_caliptra_file_end = 0x20000",
    )
    man, flash = _build(p, monkeypatch)
    table = check_flash(flash)
    assert len(table) == 16
    assert table[0] == (1, 16 + 12 * 16, 0x20000 - (16 + 12 * 16))
    assert table[1][:2] == (2, 0x20000)
    assert flash[0x20000 : 0x20000 + len(man)] == man and len(man) == 16004
    assert flash[table[0][1] : 0x20000] == bytes(0x20000 - table[0][1])
    parts = _flash_parts(flash)
    assert parts[3] == _zero_pad(p.data("zephyr-mcu-runtime.bin"), 4)
    assert imc_entries(man)[0] == (1, 0x00000001, EMPTY)
    assert man[20:8888] == bytes(8868)
