"""The OEM flow end to end: new-project from the vendor's reference -> fuses -> create-auth-flash
(or build) -> verify --fuses, on the reference ast2700-default and ast2700a1-default data and on
a reference tree made here. The bundle and the manifest are also read back independently
(tests/helpers/oem.py, independent.py: struct offsets, `cryptography`, `hsslms`)."""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path

import pytest
from independent import ecc_pub_hw, ecc_verify, get, lms_verify
from oem import Tree, owner_sigs_ok, parse, sha384, vendor_sigs_ok, vendor_tree

from imgtool.cli.main import main


def _copy_reference(ref: Path, root: Path) -> Path:
    """The reference tree as an OEM receives it (config/, key/, prebuilt/, vnd_sig/)."""
    for d in ("config", "key", "prebuilt", "vnd_sig"):
        shutil.copytree(ref / d, root / d)
    for dirpath, _, files in os.walk(root):
        for f in files:
            (Path(dirpath) / f).chmod(0o644)
    return root


def _flow(
    root: Path,
    name: str,
    capsys: pytest.CaptureFixture[str],
    *,
    lms_verify_fuse: bool = True,
    bundle_in_flash: bool = True,
    build: bool = False,
) -> tuple[Path, Path]:
    """fuses -> build -> verify --fuses, in ROOT; returns (the bundle, the flash image)."""
    bundle = Path("prebuilt") / name / "caliptra-fw.bin"
    fuses = Path("out") / f"{name}-fuses.toml"
    flag = [] if lms_verify_fuse else ["--no-lms-verify"]
    assert main(["fuses", "--caliptra-fw", str(bundle), *flag, "--out", str(fuses)]) == 0
    cfg = f"config/{name}.toml"
    flash = root / "out" / f"{name}-flash-image.bin"
    extra = [] if bundle_in_flash else ["--caliptra-fw", str(bundle)]
    capsys.readouterr()
    if build:  # doit, with the verify task anchored by the fuses
        rc = main(["build", "--cfg", cfg, "verify", "--fuses", str(fuses), *extra])
        out = capsys.readouterr().out
        assert rc == 0 and " 0 failed" in out and "PASS" in out, out
    else:
        assert main(["create-auth-flash", "--cfg", cfg]) == 0
        capsys.readouterr()
        rc = main(["verify", str(flash), "--fuses", str(fuses), *extra])
        out = capsys.readouterr().out
        assert rc == 0, out
    return root / bundle, flash


def _new_keys(root: Path, name: str) -> Path:
    k = root / "key" / name
    return k if k.is_dir() else root / "keys" / name


def _check_bundles(ref_bundle: Path, new_bundle: Path, keys: Path, lms_on: bool = True) -> None:
    """Vendor part unchanged and verifying with the ORIGINAL vendor keys; owner part by the new
    keys; the owner PK hash differs from the reference, the vendor PK hash does not."""
    a, b = parse(ref_bundle.read_bytes()), parse(new_bundle.read_bytes())
    assert vendor_sigs_ok(a) and vendor_sigs_ok(b)
    assert (b.vendor_ecc, b.vendor_lms, b.vendor_tbs) == (a.vendor_ecc, a.vendor_lms, a.vendor_tbs)
    assert sha384(b.vendor_block) == sha384(a.vendor_block)
    assert sha384(b.owner_ecc + b.owner_lms) != sha384(a.owner_ecc + a.owner_lms)
    lms_pub = (keys / "own-fw-lms-pubk.pem").read_bytes() if lms_on else None
    assert owner_sigs_ok(b, ecc_pub_hw(keys / "own-fw-ecc-pubk.pem"), lms_pub)


def _check_manifest(flash: Path, keys: Path, lms_on: bool = True) -> None:
    """The manifest's owner pubkey signatures verify with the NEW owner FW keys."""
    data = flash.read_bytes()
    off = data.find(bytes.fromhex("4e4d5441") + (7168).to_bytes(4, "little"))
    man = data[off : off + 16004]
    covered = get(man, "own_ecc_pub", 96) + get(man, "own_lms_pub", 48)
    assert ecc_verify(keys / "own-fw-ecc-pubk.pem", covered, get(man, "own_sig_ecc", 96))
    assert get(man, "own_ecc_pub", 96) == ecc_pub_hw(keys / "own-man-ecc-pubk.pem")
    if lms_on:
        pub = (keys / "own-fw-lms-pubk.pem").read_bytes()
        assert lms_verify(pub, covered, get(man, "own_sig_lms", 1620))


# ---------------------------------------------------------------------------- reference data
def test_reference_ast2700_default(
    ref: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy_reference(ref, tmp_path / "tree")
    monkeypatch.chdir(root)
    assert main(["new-project", "myboard", "--from", "ast2700-default"]) == 0
    out = capsys.readouterr().out
    assert "missing:  zephyr-mcu-runtime.bin" in out  # the reference prebuilt folder lacks it
    (root / "prebuilt" / "myboard" / "zephyr-mcu-runtime.bin").write_bytes(b"OEM-MCU-RT" * 500)
    keys = root / "key" / "myboard"  # the tree has key/: the new keys go there too
    assert keys.is_dir() and not (root / "keys").exists()
    cfg = tomllib.loads((root / "config" / "myboard.toml").read_text())
    refcfg = tomllib.loads((ref / "config" / "ast2700-default-ecc-lms-manifest.toml").read_text())
    assert cfg["manifest_config"].pop("prj_name") == "myboard"
    refcfg["manifest_config"].pop("prj_name")
    assert cfg == refcfg  # images and every setting kept
    for name in ("vnd-fw-ecc-pubk.pem", "vnd-man-lms-pubk.pem"):  # the vendor setup is kept
        assert (keys / name).read_bytes() == (ref / "key" / "ast2700-default" / name).read_bytes()
    for name in ("own-fw-ecc-pubk.pem", "own-man-lms-pubk.pem"):  # the owner keys are new
        assert (keys / name).read_bytes() != (ref / "key" / "ast2700-default" / name).read_bytes()
    bundle, flash = _flow(root, "myboard", capsys)
    _check_bundles(ref / "prebuilt" / "ast2700-default" / "caliptra-fw.bin", bundle, keys)
    _check_manifest(flash, keys)
    # the reference's own fuses (ASPEED's demo owner keys) do not boot the OEM's image
    assert main(["fuses", "--caliptra-fw", str(ref / "prebuilt/ast2700-default/caliptra-fw.bin"),
                 "--out", "out/ref-fuses.toml"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["verify", str(flash), "--fuses", "out/ref-fuses.toml"]) == 1
    assert "bundle.fuse.owner_pk_hash" in capsys.readouterr().out


def test_reference_ast2700a1_default(
    ref: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A1: the configs name no bundle (caliptra_file = ""), the device runs prebuilt's
    caliptra-fw.bin; its selected vendor LMS key did not make ASPEED's prebuilt vendor LMS
    signature, so the ECC+LMS project is refused (the device would reject every image where
    it verifies LMS) and the ECC-only one builds and verifies."""
    root = _copy_reference(ref, tmp_path / "tree")
    monkeypatch.chdir(root)
    capsys.readouterr()
    assert main(["new-project", "a1board", "--from", "ast2700a1-default"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vnd_lms_sig.der does not verify with vendor LMS key 3" in err[-1]
    assert "(lms:" in err[-1] and "--ecc-only" in err[-1] and "--allow-key-mismatch" in err[-1]
    assert not any(p.name.startswith(("a1board", ".a1board")) for p in root.rglob("*"))
    assert main(["new-project", "a1board", "--from", "ast2700a1-default", "--ecc-only"]) == 0
    out = capsys.readouterr().out
    assert "--no-lms-verify" in out and "--caliptra-fw prebuilt/a1board/caliptra-fw.bin" in out
    keys = root / "key" / "a1board"
    assert not list(keys.glob("own-*-lms-*"))
    bundle, flash = _flow(root, "a1board", capsys, lms_verify_fuse=False, bundle_in_flash=False)
    _check_bundles(ref / "prebuilt/ast2700a1-default/caliptra-fw.bin", bundle, keys, lms_on=False)
    _check_manifest(flash, keys, lms_on=False)
    # --allow-key-mismatch: made, with a warning; the LMS-verifying part rejects exactly that
    assert (
        main(["new-project", "a1lms", "--from", "ast2700a1-default", "--allow-key-mismatch"]) == 0
    )
    assert "warning:" in capsys.readouterr().out
    _flow(root, "a1lms", capsys, lms_verify_fuse=False, bundle_in_flash=False)
    fuses = "out/a1lms-on.toml"
    assert main(["fuses", "--caliptra-fw", "prebuilt/a1lms/caliptra-fw.bin", "--out", fuses]) == 0
    capsys.readouterr()
    args = ["--fuses", fuses, "--caliptra-fw", "prebuilt/a1lms/caliptra-fw.bin", "--quiet"]
    assert main(["verify", "out/a1lms-flash-image.bin", *args]) == 1
    fails = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("FAIL")]
    assert len(fails) == 1 and "manifest.sig.vendor_pub.lms" in fails[0], fails


def test_reference_config_file_outside_the_tree(
    ref: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--from the read-only reference's config file into an empty tree: keys/NAME (no key/
    there), the prebuilt vendor signatures copied to vnd_sig/."""
    root = tmp_path / "fw"
    root.mkdir()
    monkeypatch.chdir(root)
    cfg = ref / "config" / "ast2700-default-ecc-lms-manifest.toml"
    assert main(["new-project", "board", "--from", str(cfg)]) == 0
    assert (root / "keys" / "board" / "own-fw-lms-prvk.pem").is_file()
    for n in ("vnd_ecc_sig.der", "vnd_lms_sig.der"):
        assert (root / "vnd_sig" / n).read_bytes() == (ref / "vnd_sig" / n).read_bytes()
    (root / "prebuilt" / "board" / "zephyr-mcu-runtime.bin").write_bytes(b"MCU" * 999)
    _flow(root, "board", capsys)


# ---------------------------------------------------------------------------- a made tree
@pytest.mark.parametrize("vendor_signature", ["prebuilt", "generate"])
def test_made_reference_tree(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    vendor_signature: str,
) -> None:
    t: Tree = vendor_tree(tmp_path / "tree", vendor_signature=vendor_signature)
    monkeypatch.chdir(t.root)
    assert main(["new-project", "oem", "--from", "vendorref"]) == 0
    assert "missing:" not in capsys.readouterr().out
    keys = _new_keys(t.root, "oem")
    bundle, flash = _flow(t.root, "oem", capsys, build=True)  # doit, verify task with --fuses
    _check_bundles(t.bundle, bundle, keys)
    _check_manifest(flash, keys)


def test_vendor_keys_lab_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--vendor-keys: fresh vendor keys too, the vendor signature generated, the bundle
    vendor-signed with them (a lab part with no vendor fuses), and it says so."""
    t = vendor_tree(tmp_path / "tree")
    monkeypatch.chdir(t.root)
    assert main(["new-project", "lab", "--from", "vendorref", "--vendor-keys"]) == 0
    cap = capsys.readouterr()
    assert "--vendor-keys" in cap.err and "lab parts with no vendor fuses" in cap.err
    assert "8/8 vnd-man-lms LMS H15/W4 tree" in cap.err
    keys = _new_keys(t.root, "lab")
    cfg = tomllib.loads((t.root / "config" / "lab.toml").read_text())
    assert cfg["manifest_config"]["vendor_signature"] == "generate"
    bundle, flash = _flow(t.root, "lab", capsys)
    b, a = parse(bundle.read_bytes()), parse(t.bundle.read_bytes())
    assert b.vendor_ecc == ecc_pub_hw(keys / "vnd-fw-ecc-pubk.pem") != a.vendor_ecc
    assert b.vendor_lms == (keys / "vnd-fw-lms-pubk.pem").read_bytes()
    assert vendor_sigs_ok(b) and sha384(b.vendor_block) != sha384(a.vendor_block)
    assert owner_sigs_ok(
        b, ecc_pub_hw(keys / "own-fw-ecc-pubk.pem"), (keys / "own-fw-lms-pubk.pem").read_bytes()
    )
    _check_manifest(flash, keys)
