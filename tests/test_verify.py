"""verify: a gate from trust anchors. Built images pass with each anchor; crafted and foreign
images fail naming the check; without an anchor authenticity is not established."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import craft
import pytest
from projects import Project, make_project

from imgtool.cli.main import main

# Caliptra 1.x verifies only H15/W4 LMS: sparse H15 test keys (fast; leaf 5 only, test use)
H15 = "h15-sparse"


def _build(prj: Project) -> None:
    args = prj.args("--man", str(prj.man), "--flash", str(prj.flash))
    assert main(["create-auth-flash", *args]) == 0


def _fuses(
    prj: Project, capsys: pytest.CaptureFixture[str], name: str = "fuses.toml", **edit: str
) -> Path:
    out = prj.root / name
    assert (
        main(["fuses", "--caliptra-fw", str(prj.prebuilt / "caliptra-fw.bin"), "--out", str(out)])
        == 0
    )
    text = out.read_text()
    for key, value in edit.items():
        lines = [ln for ln in text.splitlines() if not ln.startswith(f"{key} =")]
        text = "\n".join(lines) + f"\n{key} = {value}\n"
    out.write_text(text)
    capsys.readouterr()
    return out


def _verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, list[str]]:
    capsys.readouterr()
    rc = main(["verify", *args])
    out = capsys.readouterr().out
    return rc, out, [ln for ln in out.splitlines() if ln.startswith("FAIL")]


def _failed_ids(fails: list[str]) -> set[str]:
    return {ln.split()[1].rstrip(":") for ln in fails}


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """ECC + LMS, vendor IMC signatures, a sample bundle signed with the project's FW keys."""
    prj = make_project(
        tmp_path_factory.mktemp("signed"), sample_bundle=True, lms=True, flags=1, lms_kind=H15
    )
    _build(prj)
    return prj


VARIANTS = {
    "ecc-bundle": {"sample_bundle": True},
    "ecc-lms-bundle": {"sample_bundle": True, "lms": True, "flags": 1},
    "caliptra-1": {"fmt": "caliptra-1", "sample_bundle": True, "lms": True},
    "out-bundle": {"sample_bundle": True, "lms": True, "extra_runtime": "cptra_out_bundle = true"},
}
for _v in VARIANTS.values():
    _v["lms_kind"] = H15


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_built_images_pass_with_every_anchor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], variant: str
) -> None:
    prj = make_project(tmp_path, **VARIANTS[variant])  # type: ignore[arg-type]
    _build(prj)
    fz = _fuses(prj, capsys)
    lms = "lms" in variant
    if not lms:  # ECC-only images boot only on parts that do not verify LMS
        fz = _fuses(prj, capsys, lms_verify="false")
    f = str(prj.flash)
    cal = str(prj.prebuilt / "caliptra-fw.bin")
    keys = ["--key-dir", str(prj.keys)]
    cfg = ["--cfg", str(prj.cfg), "--prebuilt-dir", str(prj.prebuilt), *keys]
    for args in (["--fuses", str(fz)], cfg, [*keys, "--caliptra-fw", cal], ["--caliptra-fw", cal]):
        rc, out, fails = _verify(capsys, f, *args)
        if variant == "caliptra-1" and args is not cfg:
            # a flash image for the AST2700 carries the ASPEED layout: only the config can
            # say that this one is for a generic Caliptra 1.x SoC
            assert rc == 1 and _failed_ids(fails) == {"manifest.layout.target"}, (args, out)
            continue
        assert rc == 0 and not fails, (args, out)
        assert "PASS" in out
    # a key dir vouches for the selected vendor keys only, not for all 36 slots the ROM hashes
    rc, out, fails = _verify(capsys, f, *keys)
    assert rc == 1 and "bundle.vendor_keys" in _failed_ids(fails), out
    # the manifest on its own, with the bundle it runs under
    rc, out, _ = _verify(capsys, str(prj.man), "--caliptra-fw", cal, "--fuses", str(fz))
    assert rc == 0, out


def test_owner_only_manifest_lacks_the_vendor_endorsement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Caliptra checks the vendor pubkey signature of every manifest: without vendor keys in
    the config the device rejects it, whatever the owner signed."""
    prj = make_project(tmp_path, vendor=False, sample_bundle=True, lms_kind=H15)
    _build(prj)
    fz = _fuses(prj, capsys, lms_verify="false")
    rc, out, fails = _verify(capsys, str(prj.flash), "--fuses", str(fz))
    assert rc == 1 and _failed_ids(fails) == {"manifest.sig.vendor_pub.ecc"}, out


def test_no_anchor_is_not_a_pass(signed: Project, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, fails = _verify(capsys, str(signed.flash))
    assert rc == 1 and _failed_ids(fails) == {"trust.anchor"}
    assert "no trust anchor" in fails[0]
    rc, out, fails = _verify(capsys, str(signed.flash), "--integrity-only")
    assert rc == 0 and not fails and "authenticity not checked" in out


def _strip_manifest(data: bytes) -> bytes:
    """Every key and signature slot of the (ASPEED) manifest zeroed, an image replaced, its
    IMC digest patched, the FLSH rebuilt: the attack of the issue."""
    import hashlib

    images = craft.unpack(data)
    man = bytearray(next(d for i, d in images if i == 2))
    man[20:8888] = bytes(8888 - 20)  # keys and signatures
    evil = b"EVIL-U-BOOT!" * 10
    # fw_id 3 = flash 0x1001 is IMC entry 2 (entry 0 is the MCU, fw_id 1)
    off = 8888 + 4 + 2 * 56 + 8
    man[off : off + 48] = hashlib.sha384(evil).digest()
    return craft.pack(
        [(i, bytes(man) if i == 2 else evil if i == 0x1001 else d) for i, d in images]
    )


def test_stripped_manifest_fails_with_and_without_anchors(
    signed: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "stripped.bin"
    bad.write_bytes(_strip_manifest(signed.flash.read_bytes()))
    fz = _fuses(signed, capsys)
    cal = str(signed.prebuilt / "caliptra-fw.bin")
    rc, _, fails = _verify(capsys, str(bad))
    assert rc == 1 and "trust.anchor" in _failed_ids(fails)
    for args in (["--key-dir", str(signed.keys)], ["--caliptra-fw", cal], ["--fuses", str(fz)]):
        rc, out, fails = _verify(capsys, str(bad), *args)
        ids = _failed_ids(fails)
        assert rc == 1, out
        assert {"manifest.sig.owner_imc.ecc", "manifest.sig.owner_pub.ecc"} <= ids, (args, ids)
        assert any("empty" in ln for ln in fails)
    rc, out, fails = _verify(capsys, str(bad), "--fuses", str(fz), "--quiet")
    body = [ln for ln in out.splitlines()[1:-1] if not ln.startswith("trust anchors:")]
    assert body and all(ln.startswith("FAIL") for ln in body), out


def test_foreign_image_fails_against_our_keys(
    signed: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = make_project(tmp_path / "other", sample_bundle=True, lms=True, flags=1, lms_kind=H15)
    _build(other)  # someone else's keys, their own bundle inside: self-consistent
    rc, out, fails = _verify(capsys, str(other.flash), "--key-dir", str(signed.keys))
    ids = _failed_ids(fails)
    assert rc == 1
    assert {"bundle.key.vendor_fw.ecc", "bundle.key.owner_fw.ecc"} <= ids, out
    assert {"manifest.key.owner_man.ecc", "trust.chain"} <= ids, out
    fz = _fuses(signed, capsys)
    rc, out, fails = _verify(capsys, str(other.flash), "--fuses", str(fz))
    assert rc == 1
    assert {"bundle.fuse.vendor_pk_hash", "bundle.fuse.owner_pk_hash"} <= _failed_ids(fails)
    cal = str(signed.prebuilt / "caliptra-fw.bin")
    rc, out, fails = _verify(capsys, str(other.flash), "--caliptra-fw", cal)
    assert rc == 1 and "bundle.equals.caliptra_fw" in _failed_ids(fails)


def test_unsigned_manifest_fails_against_signed_config(
    signed: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the same images and bundle, manifest from a config without keys
    unsigned = tmp_path / "unsigned.toml"
    text = signed.cfg.read_text()
    for section in ("vendor_fw", "vendor_man", "owner_fw", "owner_man"):
        start = text.index(f"[{section}_key_config]")
        end = text.index("[", start + 1)
        text = text[:start] + text[end:]
    unsigned.write_text(text)
    man = tmp_path / "unsigned-man.bin"
    flash = tmp_path / "unsigned-flash.bin"
    args = [
        "--cfg",
        str(unsigned),
        "--key-dir",
        str(signed.keys),
        "--prebuilt-dir",
        str(signed.prebuilt),
    ]
    assert main(["create-auth-flash", *args, "--man", str(man), "--flash", str(flash)]) == 0
    rc, out, fails = _verify(capsys, str(flash), *signed.args())
    ids = _failed_ids(fails)
    assert rc == 1
    assert {"cfg.sig.own_imc_sig_ecc", "cfg.sig.own_pub_sig_lms", "cfg.keys"} <= ids, out
    assert "manifest.sig.owner_imc.ecc" in ids


def _out_bundle(tmp_path: Path) -> Project:
    prj = make_project(
        tmp_path,
        sample_bundle=True,
        lms=True,
        extra_runtime="cptra_out_bundle = true",
        lms_kind=H15,
    )
    _build(prj)
    return prj


def test_a1_out_bundle_mcu_replaced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prj = _out_bundle(tmp_path)
    fz = _fuses(prj, capsys)
    data = bytearray(prj.flash.read_bytes())
    assert data[craft.A1_MCU : craft.A1_MCU + 16] == b"MCU-RUNTIME-0123"
    rc, out, _ = _verify(capsys, str(prj.flash), "--fuses", str(fz))
    assert rc == 0, out
    data[craft.A1_MCU : craft.A1_MCU + 16] = b"EVIL-RUNTIME-666"
    bad = tmp_path / "bad.bin"
    bad.write_bytes(data)
    rc, out, fails = _verify(capsys, str(bad), "--fuses", str(fz))
    assert rc == 1 and "image.1.digest" in _failed_ids(fails), out
    # a byte after the MCU, in the padding before 0x100000
    data[craft.A1_MCU : craft.A1_MCU + 16] = b"MCU-RUNTIME-0123"
    data[craft.A1_FLSH - 100] = 1
    bad.write_bytes(data)
    rc, out, fails = _verify(capsys, str(bad), "--fuses", str(fz))
    assert rc == 1 and _failed_ids(fails) & {"a1.mcu.padding", "image.1.digest"}, out


def test_crafted_flash_tables(
    signed: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = signed.flash.read_bytes()
    fz = str(_fuses(signed, capsys))
    images = craft.unpack(data)
    bad = tmp_path / "bad.bin"
    cases = {
        # an extra image with an unknown identifier
        "unknown id": (craft.pack([*images, (0x42, b"HIDDEN!!")]), "flash.ids.known"),
        # the MCU runtime emptied (size 0), everything else consistent
        "mcu size 0": (
            craft.pack([(i, b"" if i == 3 else d) for i, d in images]),
            "image.1.digest",
        ),
        # the last SoC image dropped: its manifest entry has no image
        "missing image": (craft.pack(images[:-1]), "image.6.present"),
        # an extra SoC image the manifest does not authorize
        "unauthorized image": (craft.pack([*images, (0x1005, b"EXTRA!!!")]), "image.7.authorized"),
        # the Caliptra bundle emptied
        "no bundle": (craft.pack([(i, b"" if i == 1 else d) for i, d in images]), "trust.chain"),
    }
    for name, (blob, check) in cases.items():
        bad.write_bytes(blob)
        rc, out, fails = _verify(capsys, str(bad), "--fuses", fz)
        assert rc == 1 and check in _failed_ids(fails), (name, out)


def test_magic_flip_is_a_failed_check(
    signed: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytearray(signed.flash.read_bytes())
    data[1] ^= 0x20
    craft.fix_crcs(data)
    bad = tmp_path / "magic.bin"
    bad.write_bytes(data)
    rc, out, fails = _verify(capsys, str(bad), "--fuses", str(_fuses(signed, capsys)))
    assert rc == 1 and _failed_ids(fails) == {"flash.magic"}, out
    rc, out, fails = _verify(capsys, str(bad), *signed.args())
    assert rc == 1 and _failed_ids(fails) == {"flash.magic"}, out


def test_bundle_bytes_outside_the_signatures(
    signed: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unselected vendor key slots are covered by the vendor PK hash fuse; reserved bytes must
    be zero."""
    data = signed.flash.read_bytes()
    fz = str(_fuses(signed, capsys))
    cal = dict(craft.unpack(data))[1]
    bad = tmp_path / "b.bin"
    for off, check in (
        (8 + 96 * 2 + 5, "bundle.fuse.vendor_pk_hash"),  # vendor ECC key 2 (unselected)
        (8 + 384 + 48 * 20 + 7, "bundle.fuse.vendor_pk_hash"),  # vendor LMS key 20 (unselected)
        (5512 + 3, "bundle.reserved"),
    ):
        mutated = bytearray(cal)
        mutated[off] ^= 0x04
        bad.write_bytes(craft.replace(data, 1, bytes(mutated)))
        rc, out, fails = _verify(capsys, str(bad), "--fuses", fz)
        assert rc == 1 and check in _failed_ids(fails), (off, out)


def test_min_svn_and_the_splice_note(signed: Project, capsys: pytest.CaptureFixture[str]) -> None:
    ok = _fuses(signed, capsys, "svn-ok.toml", min_svn="3")
    rc, out, _ = _verify(capsys, str(signed.flash), "--fuses", str(ok))
    assert rc == 0 and "note manifest.svn.splice" in out, out
    high = _fuses(signed, capsys, "svn-high.toml", min_svn="4")
    rc, out, fails = _verify(capsys, str(signed.flash), "--fuses", str(high))
    assert rc == 1 and _failed_ids(fails) == {"manifest.svn.min"}, out


def test_unprovisioned_owner_fuse_is_a_note(
    signed: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    fz = _fuses(signed, capsys, "no-owner.toml", owner_pk_hash='""')
    rc, out, _ = _verify(capsys, str(signed.flash), "--fuses", str(fz))
    assert rc == 0 and "note bundle.fuse.owner_pk_hash" in out, out


def test_json_and_key_sources(signed: Project, capsys: pytest.CaptureFixture[str]) -> None:
    fz = _fuses(signed, capsys)
    capsys.readouterr()
    rc = main(["verify", str(signed.flash), "--fuses", str(fz), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["ok"] is True and doc["authentic"] is True and doc["exit_code"] == 0
    by_id = {c["id"]: c for c in doc["checks"]}
    assert by_id["flash.crc.header"]["status"] == "ok"
    assert "vendor_pk_hash fuse" in by_id["bundle.sig.vendor.ecc"]["key"]
    assert "owner pubkey signature" in by_id["manifest.sig.owner_imc.lms"]["key"]
    assert all(set(c) == {"id", "status", "check", "detail", "key"} for c in doc["checks"])
    assert len(by_id) == len(doc["checks"]), "check ids are unique"


def _ref_project(ref: Path, tmp_path: Path, prj: str) -> None:
    pre = tmp_path / "prebuilt" / prj
    shutil.copytree(ref / "prebuilt" / prj, pre)
    (pre / "zephyr-mcu-runtime.bin").write_bytes(b"MCU!" * 99)
    os.symlink(ref / "key", tmp_path / "key")
    os.symlink(ref / "vnd_sig", tmp_path / "vnd_sig")


def _fuses_file(path: Path, cal: Path, **edit: str) -> Path:
    assert main(["fuses", "--caliptra-fw", str(cal), "--out", str(path)]) == 0
    text = path.read_text()
    for key, value in edit.items():
        text = "\n".join(ln for ln in text.splitlines() if not ln.startswith(f"{key} ="))
        text += f"\n{key} = {value}\n"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "prj,config",
    [
        ("ast2700-default", "ast2700-default-manifest.toml"),
        ("ast2700a1-default", "ast2700a1-default-manifest.toml"),
    ],
)
def test_secure_boot_off_reference_configs(
    ref: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    prj: str,
    config: str,
) -> None:
    _ref_project(ref, tmp_path, prj)
    monkeypatch.chdir(tmp_path)
    assert main(["create-auth-flash", "--cfg", str(ref / "config" / config)]) == 0
    image = f"out/{prj}-flash-image.bin"
    cal = ref / "prebuilt" / prj / "caliptra-fw.bin"
    off = _fuses_file(tmp_path / "off.toml", cal, secure_boot="false")
    on = _fuses_file(tmp_path / "on.toml", cal)
    extra = [] if prj == "ast2700-default" else ["--caliptra-fw", str(cal)]
    rc, out, fails = _verify(capsys, image, "--fuses", str(off), *extra)
    assert rc == 0, out
    rc, out, fails = _verify(capsys, image, "--fuses", str(on), *extra)
    assert rc == 1 and "manifest.sig.owner_imc.ecc" in _failed_ids(fails), out


def test_reference_signed_image_passes_with_its_fuses(
    ref: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _ref_project(ref, tmp_path, "ast2700-default")
    monkeypatch.chdir(tmp_path)
    cfg = ref / "config" / "ast2700-default-ecc-lms-manifest.toml"
    assert main(["create-auth-flash", "--cfg", str(cfg)]) == 0
    image = "out/ast2700-default-flash-image.bin"
    cal = ref / "prebuilt" / "ast2700-default" / "caliptra-fw.bin"
    fz = _fuses_file(tmp_path / "f.toml", cal)
    for args in (["--fuses", str(fz)], ["--cfg", str(cfg)]):
        rc, out, _ = _verify(capsys, image, *args)
        assert rc == 0, out
        assert "q = 5 (stored little-endian)" in out


def test_lms_verify_fuse_decides_the_prebuilt_a1_lms_signature(
    ref: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The A1 reference bundle selects the demo vendor LMS key, which did not make ASPEED's
    prebuilt vendor LMS signature: a FAIL where the part verifies LMS, not checked where not."""
    man = tmp_path / "m.bin"
    cfg = ref / "config" / "ast2700a1-default-ecc-lms-manifest.toml"
    a1 = ref / "prebuilt" / "ast2700a1-default"
    args = ["--cfg", str(cfg), "--key-dir", str(ref / "key" / "ast2700a1-default")]
    args += ["--prebuilt-dir", str(a1), "--vnd-sig-dir", str(ref / "vnd_sig"), "--man", str(man)]
    assert main(["create-auth-man", *args]) == 0
    cal = a1 / "caliptra-fw.bin"
    on = _fuses_file(tmp_path / "on.toml", cal)
    off = _fuses_file(tmp_path / "off.toml", cal, lms_verify="false")
    rc, out, fails = _verify(capsys, str(man), "--caliptra-fw", str(cal), "--fuses", str(on))
    assert rc == 1 and _failed_ids(fails) == {"manifest.sig.vendor_pub.lms"}, out
    rc, out, fails = _verify(capsys, str(man), "--caliptra-fw", str(cal), "--fuses", str(off))
    assert rc == 0, out
    line = next(ln for ln in out.splitlines() if "manifest.sig.vendor_pub.lms" in ln)
    assert line.startswith("skip") and "lms_verify = false" in line and "does NOT verify" in line


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
    assert main(["verify", str(tmp_path)]) == 2
    assert main(["verify", str(f), "--key-dir", str(tmp_path / "nope")]) == 2


def test_newer_flsh_layout_is_recognised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import zlib

    # the layout a day after the pinned commit: image_headers_offset at 8, header CRC over 12
    head = b"FLSH" + struct.pack("<HHI", 1, 2, 16)
    table = b"".join(struct.pack("<IIIII", 1 + i, 56 + 4 * i, 4, 0, 0) for i in range(2))
    f = tmp_path / "new.bin"
    f.write_bytes(head + struct.pack("<I", zlib.crc32(head)) + table + bytes(8))
    rc, out, fails = _verify(capsys, str(f), "--integrity-only")
    assert rc == 1 and "later upstream layout" in out


def test_unreadable_anchor_key_is_one_line(
    signed: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "vnd-fw-ecc-pubk.pem").write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n")
    capsys.readouterr()
    assert main(["verify", str(signed.flash), "--key-dir", str(keys)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vnd-fw-ecc-pubk.pem" in err[0], err


def test_damaged_magic_is_explained_by_inspect_too(
    signed: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytearray(signed.flash.read_bytes())
    data[0] ^= 1
    bad = tmp_path / "m.bin"
    bad.write_bytes(data)
    capsys.readouterr()
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "FLSH" in err[0], err


def test_key_files_are_read_again_after_a_change(
    signed: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same key file name in another directory (or replaced) is another key."""
    other = make_project(tmp_path / "other", sample_bundle=True, lms=True, flags=1, lms_kind=H15)
    keys = tmp_path / "k"
    for source, want in ((signed.keys, 0), (other.keys, 1)):
        shutil.rmtree(keys, ignore_errors=True)
        shutil.copytree(source, keys)
        cal = str(signed.prebuilt / "caliptra-fw.bin")
        rc, out, _ = _verify(
            capsys, str(signed.flash), "--key-dir", str(keys), "--caliptra-fw", cal, "-q"
        )
        assert rc == want, out


# ---------------------------------------------------------------------------- red-team findings
def _repack_manifest(data: bytes, edit: object) -> bytes:
    from imgtool.formats.manifest1 import Manifest

    images = craft.unpack(data)
    m = Manifest.parse(dict(images)[2])
    edit(m)  # type: ignore[operator]
    return craft.pack([(i, m.to_bytes() if i == 2 else d) for i, d in images])


def test_aspeed_manifest_downgraded_to_1x_layout(
    signed: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Re-emitting a signed ASPEED manifest in the 1.x layout drops the SVN and its signature
    with no key; every other signature still verifies. The AST2700 reads only ASPEED's."""
    from imgtool.config import Format

    def downgrade(m: object) -> None:
        m.format = Format.CALIPTRA1  # type: ignore[attr-defined]

    bad = tmp_path / "1x.bin"
    bad.write_bytes(_repack_manifest(signed.flash.read_bytes(), downgrade))
    fz = _fuses(signed, capsys, "svn.toml", min_svn="1")
    rc, out, fails = _verify(capsys, str(bad), "--fuses", str(fz))
    assert rc == 1 and {"manifest.layout.target", "manifest.svn.min"} <= _failed_ids(fails), out
    cal = str(signed.prebuilt / "caliptra-fw.bin")
    rc, out, fails = _verify(capsys, str(bad), "--caliptra-fw", cal)
    assert rc == 1 and "manifest.layout.target" in _failed_ids(fails), out


def test_stripped_lms_without_fuses(
    signed: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """All LMS signature slots zeroed: with the LMS fuse unknown that is no pass."""

    def strip(m: object) -> None:
        for slot in ("vnd_pub_sig_lms", "own_pub_sig_lms", "own_svn_sig_lms", "vnd_imc_sig_lms"):
            setattr(m, slot, bytes(1620))
        m.own_imc_sig_lms = bytes(1620)  # type: ignore[attr-defined]

    bad = tmp_path / "nolms.bin"
    bad.write_bytes(_repack_manifest(signed.flash.read_bytes(), strip))
    cal = str(signed.prebuilt / "caliptra-fw.bin")
    rc, out, fails = _verify(capsys, str(bad), "--caliptra-fw", cal)
    assert rc == 1 and "manifest.sig.owner_imc.lms" in _failed_ids(fails), out
    assert "LMS verify fuse is unknown" in out


def test_h5_lms_is_not_what_caliptra_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prj = make_project(tmp_path, sample_bundle=True, lms=True, lms_kind="h5")
    _build(prj)
    rc, out, fails = _verify(capsys, str(prj.flash), "--fuses", str(_fuses(prj, capsys)))
    assert rc == 1 and "manifest.sig.owner_imc.lms" in _failed_ids(fails), out
    assert "verifies only LMS_SHA256_M24_H15" in out
    off = _fuses(prj, capsys, "off.toml", lms_verify="false")
    rc, out, _ = _verify(capsys, str(prj.flash), "--fuses", str(off))
    assert rc == 0, out  # where LMS is not checked, the H5 signatures do not matter


def test_fuses_need_a_bundle_to_check(
    signed: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another project's manifest with device A's fuses and that project's key dir: the fuses
    are checked against nothing unless the running bundle is known."""
    fz = _fuses(signed, capsys)
    other = make_project(tmp_path / "other", sample_bundle=True, lms=True, flags=1)
    _build(other)
    rc, out, fails = _verify(
        capsys, str(other.man), "--fuses", str(fz), "--key-dir", str(other.keys)
    )
    assert rc == 1 and "bundle.fuse.vendor_pk_hash" in _failed_ids(fails), out
    images = craft.unpack(other.flash.read_bytes())
    nobundle = tmp_path / "nobundle.bin"
    nobundle.write_bytes(craft.pack([(i, b"" if i == 1 else d) for i, d in images]))
    rc, out, fails = _verify(capsys, str(nobundle), "--key-dir", str(other.keys))
    assert rc == 1 and "bundle.present" in _failed_ids(fails), out


def test_junk_in_slots_the_config_fills(
    signed: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """lms_verify = false: the device skips LMS, but the config signs those slots, so they
    must verify."""

    def junk(m: object) -> None:
        m.own_imc_sig_lms = b"HIDDEN DATA " * 135  # type: ignore[attr-defined]

    bad = tmp_path / "junk.bin"
    bad.write_bytes(_repack_manifest(signed.flash.read_bytes(), junk))
    off = _fuses(signed, capsys, "off.toml", lms_verify="false")
    rc, out, fails = _verify(capsys, str(bad), "--fuses", str(off))
    assert rc == 0, out  # the device would boot it
    assert "does NOT verify" in out
    rc, out, fails = _verify(capsys, str(bad), "--fuses", str(off), *signed.args())
    assert rc == 1 and "manifest.sig.owner_imc.lms" in _failed_ids(fails), out


def test_irot_image_length_with_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prj = make_project(tmp_path, sample_bundle=True, sizes=(40, 33), load_stages=(0, 2))
    _build(prj)
    rc, out, fails = _verify(capsys, str(prj.flash), *prj.args())
    assert rc == 1 and _failed_ids(fails) == {"cfg.imc.2.irot_length"}, out


def test_ignore_auth_entries_are_noted(signed: Project, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _verify(capsys, str(signed.flash), *signed.args())
    assert rc == 0 and "note manifest.imc.4.ignore_auth" in out  # fw_id 4 of the test projects


def test_identifiers_beyond_the_readers_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prj = make_project(tmp_path, sample_bundle=True, sizes=(8,) * 15, load_stages=(1,) * 15)
    _build(prj)  # fw_ids 2..16: 0x100d (load_stage 1) and 0x100e are loaded by no reader
    rc, out, fails = _verify(capsys, str(prj.flash), *prj.args())
    assert rc == 1 and _failed_ids(fails) == {"image.15.loadable", "image.16.loadable"}, out


def test_empty_key_dir_is_bad_input(
    signed: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["verify", str(signed.flash), "--key-dir", str(empty)]) == 2
    assert "no public keys" in capsys.readouterr().err
    assert main(["verify", str(signed.flash), "--prebuilt-dir", str(empty)]) == 2
    assert "only with --cfg" in capsys.readouterr().err


def test_revocation_and_firmware_svn_fuses(
    signed: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sample bundle selects vendor key 0 and has FMC / runtime SVN 0."""
    rc, out, _ = _verify(capsys, str(signed.flash), "--fuses", str(_fuses(signed, capsys)))
    assert rc == 0 and "note bundle.fuse.unchecked" in out
    ok = _fuses(signed, capsys, "ok.toml", vendor_ecc_revocation="8", fmc_svn="0")
    rc, out, _ = _verify(capsys, str(signed.flash), "--fuses", str(ok))
    assert rc == 0 and "ok   bundle.revocation.ecc" in out, out
    for name, edit, check in (
        ("ecc.toml", {"vendor_ecc_revocation": "1"}, "bundle.revocation.ecc"),
        ("lms.toml", {"vendor_lms_revocation": "1"}, "bundle.revocation.lms"),
        ("fmc.toml", {"fmc_svn": "1"}, "bundle.svn.fmc"),
        ("rt.toml", {"runtime_svn": "2"}, "bundle.svn.runtime"),
    ):
        fz = _fuses(signed, capsys, name, **edit)
        rc, out, fails = _verify(capsys, str(signed.flash), "--fuses", str(fz))
        assert rc == 1 and check in _failed_ids(fails), (name, out)


def test_config_anchor_needs_no_private_keys(
    signed: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A machine that verifies holds public keys only."""
    pub = tmp_path / "pub"
    pub.mkdir()
    for f in signed.keys.glob("*-pubk.pem"):
        shutil.copy(f, pub / f.name)
    args = ["--cfg", str(signed.cfg), "--key-dir", str(pub), "--prebuilt-dir", str(signed.prebuilt)]
    rc, out, _ = _verify(capsys, str(signed.flash), *args, "-q")
    assert rc == 0, out
    (pub / "own-man-ecc-pubk.pem").unlink()
    assert main(["verify", str(signed.flash), *args]) == 2
    assert "own-man-ecc-pubk.pem" in capsys.readouterr().err
