"""Red-team holes of the Caliptra 2.x verify path (issue 14), each a hostile file built in
tmp_path that verify must not pass: F1 fw_toc.bin alone / tampered; F2 lms_verify = false next to
a pqc_key_type; F3 no Caliptra bundle in the flash; F4 IMC fw_ids that are no flash image; F5
secure_boot = false; F6 an IMC nobody authenticates (owner fuse unprovisioned, no vendor IMC
signature); F7 --caliptra-fw alone; F8 runtime_svn 0..128 and --cfg / --key-dir as 2.x anchors.
Then our OWN create-auth-man-2x / create-auth-flash-2x outputs (both PQC types): exit 0 with the
right anchors, exit 1 with a foreign key set, a flipped byte, swapped images.

Hostile manifests and flashes are built with tests/helpers/indep2.py from the spec table (the
project's own builders make our own outputs)."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import indep2
import pytest
import test_bundle2
from indep2 import EccSigner, MldsaSigner, build_atm2, build_flash2, imc_entry
from test_bundle2 import LmsSigner, bundle, fuses_file
from test_verify2 import MCU, SOC, build

from imgtool.cli.main import main
from imgtool.fuses import Fuses
from imgtool.verify import Anchors, verify_bytes

PQCS = ["mldsa", "lms"]


def run(capsys: pytest.CaptureFixture[str], path: Path, *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    rc = main(["verify", str(path), "--json", *args])
    out = capsys.readouterr().out
    return rc, json.loads(out) if out.strip() else {}


def failed(doc: dict) -> list[str]:
    return [c["id"] for c in doc["checks"] if c["status"] == "FAIL"]


def check(doc: dict, cid: str) -> dict:
    return next(c for c in doc["checks"] if c["id"] == cid)


def one_line_exit2(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for w in words:
        assert w in err[0], err[0]


def _pair(pqc: str, seed: int) -> tuple[EccSigner, object]:
    return EccSigner(seed), (MldsaSigner(seed) if pqc == "mldsa" else LmsSigner())


_MAN_SIGNERS: dict[str, tuple[tuple[EccSigner, object], tuple[EccSigner, object]]] = {}


def manifest(pqc: str, entries: list[bytes], **kw: object) -> bytes:
    """An ATM2 manifest signed as the device wants it: pubkey signatures by the test bundle's
    active vendor / owner FW keys."""
    bundle(pqc)
    ve, vp, oe, op = test_bundle2._SIGNERS[pqc]
    if pqc not in _MAN_SIGNERS:
        _MAN_SIGNERS[pqc] = (_pair(pqc, 7100), _pair(pqc, 8100))
    vm, om = _MAN_SIGNERS[pqc]
    return build_atm2(pqc, entries, (ve[2], vp[1]), (oe, op), vm, om, **kw)  # type: ignore[arg-type]


def std_entries() -> list[bytes]:
    out = [imc_entry(2, hashlib.sha384(MCU + bytes(2)).digest(), exec_bit=2)]
    for i, img in enumerate(SOC):
        out.append(imc_entry(0x1000 + i, hashlib.sha384(img).digest(), component_id=i))
    return out


def std_images(cal: bytes, man: bytes) -> list[tuple[int, bytes]]:
    return [(0, cal), (1, man), (2, MCU)] + [(0x1000 + i, s) for i, s in enumerate(SOC)]


def toc_for(flash: bytes, names: list[bytes], count: int | None = None) -> bytearray:
    """A fw_toc.bin built from the spec (as test_verify2 does)."""
    n = struct.unpack_from("<H", flash, 6)[0]
    toc = bytearray(indep2.TOC_LEN)
    head = bytearray(flash[4:12])
    if count is not None:
        head[2:4] = count.to_bytes(2, "little")
    toc[0:16] = (0x434F5441).to_bytes(4, "little") + head + bytes(4)
    for i in range(min(n, len(names))):
        o = 16 + 20 * i
        e = bytearray(flash[o : o + 20])
        e[4:8] = (656 + 64 * i).to_bytes(4, "little")
        e[16:20] = indep2.neg_sum(bytes(e[:16])).to_bytes(4, "little")
        toc[o : o + 20] = e
        toc[656 + 64 * i : 656 + 64 * i + len(names[i])] = names[i]
    toc[12:16] = indep2.neg_sum(bytes(toc[:12])).to_bytes(4, "little")
    return toc


NAMES = [b"caliptra-fw.bin", b"manifest.bin", b"mcu.bin", b"soc0.bin", b"soc1.bin"]


def _fix_toc_entry(toc: bytearray, i: int) -> None:
    o = 16 + 20 * i
    toc[o + 16 : o + 20] = indep2.neg_sum(bytes(toc[o : o + 16])).to_bytes(4, "little")


# --- F1: fw_toc.bin --------------------------------------------------------------------------
def test_f1_fw_toc_alone_is_never_authentic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cal, _, flash = build("mldsa")
    t = tmp_path / "fw_toc.bin"
    toc = toc_for(flash, NAMES)
    t.write_bytes(bytes(toc))
    fz = str(fuses_file(tmp_path, cal))
    (tmp_path / "cal.bin").write_bytes(cal)
    for anchors in (["--fuses", fz], ["--caliptra-fw", str(tmp_path / "cal.bin")]):
        rc, doc = run(capsys, t, *anchors)
        assert rc == 1 and "toc.authenticity" in failed(doc), failed(doc)
        assert not doc["authentic"]
    rc, doc = run(capsys, t, "--integrity-only")
    assert rc == 0 and check(doc, "toc.authenticity")["status"] == "note"
    # tampered (an image size changed, its checksums recomputed): still never exit 0 with anchors
    toc[16 + 20 * 3 + 8] ^= 4
    _fix_toc_entry(toc, 3)
    t.write_bytes(bytes(toc))
    rc, doc = run(capsys, t, "--fuses", fz)
    assert rc == 1


def test_f1_fw_toc_entry_count_capped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, _, flash = build("mldsa")
    toc = toc_for(flash, NAMES, count=100)
    t = tmp_path / "fw_toc.bin"
    t.write_bytes(bytes(toc))
    rc, doc = run(capsys, t, "--integrity-only")
    assert rc == 1 and "toc.count" in failed(doc)
    assert "100" in check(doc, "toc.count")["detail"]


@pytest.mark.parametrize("tamper", ["size", "identifier", "checksum", "count"])
def test_f1_fw_toc_against_the_flash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tamper: str
) -> None:
    cal, _, flash = build("mldsa")
    f = tmp_path / "flash.bin"
    f.write_bytes(flash)
    fz = str(fuses_file(tmp_path, cal))
    t = tmp_path / "fw_toc.bin"
    toc = toc_for(flash, NAMES)
    t.write_bytes(bytes(toc))
    rc, doc = run(capsys, f, "--fuses", fz, "--fw-toc", str(t))
    assert rc == 0, failed(doc)
    assert check(doc, "fw_toc.flash")["status"] == "ok"
    if tamper == "count":
        toc = toc_for(flash, NAMES[:4], count=4)
        toc[16 + 20 * 4 : 16 + 20 * 5] = bytes(20)
        toc[656 + 64 * 4 : 656 + 64 * 5] = bytes(64)
    else:
        field = {"identifier": 0, "size": 8, "checksum": 12}[tamper]
        o = 16 + 20 * 3 + field
        toc[o] ^= 4
        _fix_toc_entry(toc, 3)
    t.write_bytes(bytes(toc))
    rc, doc = run(capsys, t, "--integrity-only")
    assert rc == 0, failed(doc)  # on its own the tampered fw_toc is well formed
    rc, doc = run(capsys, f, "--fuses", fz, "--fw-toc", str(t))
    assert rc == 1 and "fw_toc.flash" in failed(doc), failed(doc)


def test_f1_fw_toc_option_only_with_a_2x_flash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cal, man, flash = build("mldsa")
    m = tmp_path / "m.bin"
    m.write_bytes(man)
    t = tmp_path / "fw_toc.bin"
    t.write_bytes(bytes(toc_for(flash, NAMES)))
    one_line_exit2(
        capsys, ["verify", str(m), "--integrity-only", "--fw-toc", str(t)], "--fw-toc", "flash"
    )


# --- F2: lms_verify next to pqc_key_type -----------------------------------------------------
@pytest.mark.parametrize(("pqc", "lms_verify"), [(3, "false"), (1, "true")])
def test_f2_contradictory_lms_verify_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pqc: int, lms_verify: str
) -> None:
    cal, man, _ = build("lms" if pqc == 3 else "mldsa")
    fz = fuses_file(tmp_path, cal, lms_verify=lms_verify)
    m = tmp_path / "m.bin"
    m.write_bytes(man)
    one_line_exit2(
        capsys, ["verify", str(m), "--fuses", str(fz)], "lms_verify", "pqc_key_type", str(fz)
    )


def test_f2_lms_verify_fuse_never_skips_2x_lms_checks(tmp_path: Path) -> None:
    """Even a Fuses object made without the loader (lms_verify False, pqc_key_type 3): the 2.x
    LMS signatures of the bundle and the manifest are checked."""
    cal, man, flash = build("lms")
    f = Fuses(
        indep2.cmn2_vendor_pk_hash(cal),
        indep2.cmn2_owner_pk_hash(cal),
        False,
        True,
        pqc_key_type=3,
    )
    r = verify_bytes(flash, Anchors(fuses=f))
    assert r.ok, [c.id for c in r.failures]
    bad = bytearray(man)
    o = indep2.ATM2["own_imc_sig_pqc"] + 200  # inside the LMS signature
    bad[o] ^= 1
    flash_bad = build_flash2(std_images(cal, bytes(bad)))
    r = verify_bytes(flash_bad, Anchors(fuses=f))
    assert not r.ok and "manifest.sig.owner_imc.lms" in [c.id for c in r.failures]
    # the bundle's LMS signature too
    cb = bytearray(cal)
    o = indep2.CMN2["vnd_sig_pqc"] + 300
    cb[o] ^= 1
    r = verify_bytes(build_flash2(std_images(bytes(cb), man)), Anchors(fuses=f))
    assert "bundle.sig.vendor.lms" in [c.id for c in r.failures]


# --- F3: no Caliptra bundle in the flash -----------------------------------------------------
@pytest.mark.parametrize("cal_entry", ["empty", "zero"])
def test_f3_flash_without_bundle_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cal_entry: str
) -> None:
    cal, man, _ = build("mldsa")
    (tmp_path / "cal.bin").write_bytes(cal)
    body = b"" if cal_entry == "empty" else bytes(len(cal))
    f = tmp_path / "flash.bin"
    f.write_bytes(build_flash2(std_images(body, man)))
    fz = str(fuses_file(tmp_path, cal))
    for extra in ([], ["--caliptra-fw", str(tmp_path / "cal.bin")]):
        rc, doc = run(capsys, f, "--fuses", fz, *extra)
        assert rc == 1 and "flash.caliptra.present" in failed(doc), failed(doc)


# --- F4: IMC fw_ids against the flash identifiers --------------------------------------------
@pytest.mark.parametrize("case", ["fw_id0", "fw_id1", "swapped", "extra_empty_region", "odd_id"])
def test_f4_imc_ids_must_be_the_flash_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    cal, _, _ = build("mldsa")
    fz = str(fuses_file(tmp_path, cal))
    entries = std_entries()
    images_extra: list[tuple[int, bytes]] = []
    if case == "fw_id0":
        entries.append(imc_entry(0, hashlib.sha384(cal).digest()))
    elif case == "fw_id1":
        entries.append(imc_entry(1, bytes(48)))
    elif case == "swapped":
        entries = [entries[0], entries[2], entries[1]]
    elif case == "extra_empty_region":
        images_extra = [(0x1002, b"")]
    else:
        entries.append(imc_entry(0x2000, hashlib.sha384(b"").digest()))
    man = manifest("mldsa", entries)
    f = tmp_path / "flash.bin"
    f.write_bytes(build_flash2(std_images(cal, man) + images_extra))
    rc, doc = run(capsys, f, "--fuses", fz)
    assert rc == 1, doc["verdict"]
    assert "flash.imc.fw_ids" in failed(doc) or "flash.image.0x1002.imc" in failed(doc)
    # the same construction with the standard IMC passes (the builder is not at fault)
    f.write_bytes(build_flash2(std_images(cal, manifest("mldsa", std_entries()))))
    rc, doc = run(capsys, f, "--fuses", fz)
    assert rc == 0, failed(doc)


# --- F5: secure_boot = false -----------------------------------------------------------------
@pytest.mark.parametrize("pqc", PQCS)
def test_f5_secure_boot_off_still_checks_manifest_signatures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pqc: str
) -> None:
    cal, man, flash = build(pqc)
    fz = str(fuses_file(tmp_path, cal, secure_boot="false"))
    f = tmp_path / "flash.bin"
    f.write_bytes(flash)
    rc, doc = run(capsys, f, "--fuses", fz)
    assert rc == 0, failed(doc)
    assert check(doc, "policy.secure_boot")["status"] == "note"
    assert check(doc, "manifest.sig.owner_imc.ecc")["status"] == "ok"
    for name in ("own_imc_sig_ecc", "vnd_pub_sig_pqc"):
        bad = bytearray(man)
        bad[indep2.ATM2[name] + 10] ^= 1
        f.write_bytes(build_flash2(std_images(cal, bytes(bad))))
        rc, doc = run(capsys, f, "--fuses", fz)
        assert rc == 1, (name, doc["verdict"])
    # unsigned manifest (every signature slot zero)
    bare = bytearray(man)
    for name in ("vnd_pub_sig", "own_pub_sig", "vnd_imc_sig", "own_imc_sig"):
        for algo, size in (("ecc", 96), ("pqc", 4628)):
            o = indep2.ATM2[f"{name}_{algo}"]
            bare[o : o + size] = bytes(size)
    f.write_bytes(build_flash2(std_images(cal, bytes(bare))))
    rc, doc = run(capsys, f, "--fuses", fz)
    assert rc == 1 and "manifest.sig.owner_imc.ecc" in failed(doc)


# --- F6: an IMC nobody authenticates ---------------------------------------------------------
@pytest.mark.parametrize("pqc", PQCS)
def test_f6_unprovisioned_owner_without_vendor_imc_sig(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pqc: str
) -> None:
    cal, _, _ = build(pqc)
    fz = str(fuses_file(tmp_path, cal, owner_pk_hash='""'))
    f = tmp_path / "flash.bin"
    f.write_bytes(build_flash2(std_images(cal, manifest(pqc, std_entries(), flags=0))))
    rc, doc = run(capsys, f, "--fuses", fz)
    assert rc == 1 and "manifest.imc.authenticity" in failed(doc), failed(doc)
    assert (
        "authenticity of the IMC not established"
        in check(doc, "manifest.imc.authenticity")["detail"]
    )
    rc, doc = run(capsys, f, "--fuses", fz, "--accept-unprovisioned")
    assert rc == 0, failed(doc)
    assert check(doc, "manifest.imc.authenticity")["status"] == "note"
    # the vendor signs the IMC (flags bit 0): authenticated, no opt-in needed
    f.write_bytes(build_flash2(std_images(cal, manifest(pqc, std_entries(), flags=1))))
    rc, doc = run(capsys, f, "--fuses", fz)
    assert rc == 0, failed(doc)
    # the owner fuse provisioned: the owner authenticates it
    f.write_bytes(build_flash2(std_images(cal, manifest(pqc, std_entries(), flags=0))))
    rc, doc = run(capsys, f, "--fuses", str(fuses_file(tmp_path, cal)))
    assert rc == 0, failed(doc)


@pytest.mark.parametrize("flags", [0, 1])
def test_f6_unprovisioned_part_signed_by_anyone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: int
) -> None:
    """No vendor and no owner PK hash fuse (secure boot off): a bundle and manifest signed by
    keys nobody provisioned boot, and verify says nobody authenticates the IMC."""
    cal, man, _ = _foreign("mldsa", flags=flags)
    fz = tmp_path / "fz.toml"
    fz.write_text(
        '[fuses]\nvendor_pk_hash = ""\nowner_pk_hash = ""\nsecure_boot = false\npqc_key_type = 1\n'
    )
    f = tmp_path / "flash.bin"
    f.write_bytes(build_flash2(std_images(cal, man)))
    rc, doc = run(capsys, f, "--fuses", str(fz))
    assert rc == 1 and "manifest.imc.authenticity" in failed(doc), failed(doc)
    detail = check(doc, "manifest.imc.authenticity")["detail"]
    assert ("vendor PK hash fuse is unprovisioned" in detail) is bool(flags)
    rc, doc = run(capsys, f, "--fuses", str(fz), "--accept-unprovisioned")
    assert rc == 0, failed(doc)


def test_f6_option_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    out = capsys.readouterr().out
    assert "--accept-unprovisioned" in out and "--fw-toc" in out


# --- F7: --caliptra-fw alone -----------------------------------------------------------------
def _foreign(pqc: str, flags: int = 1) -> tuple[bytes, bytes, bytes]:
    """A bundle, manifest and flash signed consistently by keys nobody provisioned."""
    ve = [EccSigner(5000 + i) for i in range(2)]
    vp: list[object] = [MldsaSigner(5100)] if pqc == "mldsa" else [LmsSigner()]
    oe, op = EccSigner(5200), (MldsaSigner(5300) if pqc == "mldsa" else LmsSigner())
    keys = indep2.BundleKeys2(
        pqc,
        [s.pub_hw for s in ve],
        [s.pub for s in vp],  # type: ignore[attr-defined]
        ecc_idx=1,
        pqc_idx=0,
        owner_ecc=oe.pub_hw,
        owner_pqc=op.pub,  # type: ignore[attr-defined]
    )
    cal = indep2.build_cmn2(keys, ve[1], vp[0], oe, op)
    vm, om = _pair(pqc, 5400), _pair(pqc, 5500)
    man = build_atm2(pqc, std_entries(), (ve[1], vp[0]), (oe, op), vm, om, flags=flags)
    return cal, man, build_flash2(std_images(cal, man))


@pytest.mark.parametrize("pqc", PQCS)
@pytest.mark.parametrize("what", ["manifest", "flash", "bundle"])
def test_f7_caliptra_fw_alone_is_an_explicit_anchor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pqc: str, what: str
) -> None:
    """As for 1.x (issue 9), --caliptra-fw F is an anchor: F's keys are the reference and the
    report says that no fuse vouches for them. A foreign image passes only against its own
    bundle; against the real bundle or the real part's fuses it fails."""
    cal, man, flash = _foreign(pqc)
    c = tmp_path / "cal.bin"
    c.write_bytes(cal)
    f = tmp_path / "x.bin"
    f.write_bytes({"manifest": man, "flash": flash, "bundle": cal}[what])
    rc, doc = run(capsys, f, "--caliptra-fw", str(c))
    assert rc == 0, failed(doc)
    assert "no fuse anchors the vendor keys" in check(doc, "caliptra_fw.anchor")["detail"]
    real, _, _ = build(pqc)
    r = tmp_path / "real.bin"
    r.write_bytes(real)
    rc, doc = run(capsys, f, "--caliptra-fw", str(r))
    assert rc == 1, "a foreign image passed against the real bundle"
    rc, doc = run(capsys, f, "--caliptra-fw", str(c), "--fuses", str(fuses_file(tmp_path, real)))
    assert rc == 1 and "caliptra_fw.fuse.vendor_pk_hash" in failed(doc), failed(doc)


# --- F8: runtime_svn and 2.x config / key-dir anchors ----------------------------------------
def test_f8_runtime_svn_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cal, man, flash = build("mldsa")  # bundle svn 3
    f = tmp_path / "flash.bin"
    f.write_bytes(flash)
    rc, doc = run(capsys, f, "--fuses", str(fuses_file(tmp_path, cal, runtime_svn=100)))
    assert rc == 1 and "bundle.svn" in failed(doc)  # 100 is a valid 2.x fuse, above svn 3
    rc, doc = run(capsys, f, "--fuses", str(fuses_file(tmp_path, cal, runtime_svn=3)))
    assert rc == 0, failed(doc)
    one_line_exit2(
        capsys,
        ["verify", str(f), "--fuses", str(fuses_file(tmp_path, cal, runtime_svn=129))],
        "runtime_svn",
        "0..128",
    )
    # a 1.x fuses file (no pqc_key_type) keeps 0..64
    p = tmp_path / "f1.toml"
    p.write_text(
        f'[fuses]\nvendor_pk_hash = "{"ab" * 48}"\nowner_pk_hash = ""\nlms_verify = true\n'
        "runtime_svn = 65\n"
    )
    one_line_exit2(capsys, ["verify", str(f), "--fuses", str(p)], "runtime_svn", "0..64")


# --- our own 2.x outputs ---------------------------------------------------------------------
def _sign_ecc(priv: Path) -> object:
    from imgtool.signing import LocalEccSigner

    return LocalEccSigner(priv).sign_digest


def _sign_pqc(pqc: str, keys: Path, name: str) -> object:
    from imgtool.keys import mldsa
    from imgtool.signing import LocalLmsSigner

    if pqc == "mldsa":
        key = mldsa.MldsaPrivateKey.load(keys / f"{name}-mldsa-prvk.bin")
        pub = (keys / f"{name}-mldsa-pubk.bin").read_bytes()
        return lambda msg: key.sign(msg, pub)
    s = LocalLmsSigner(keys / f"{name}-lms-prvk.pem", keys / f"{name}-lms-pubk.pem")
    return lambda msg: s.sign_digest(hashlib.sha384(msg).digest())


def _pqc_pub(pqc: str, keys: Path, name: str) -> bytes:
    from imgtool.keys import lms

    if pqc == "mldsa":
        return (keys / f"{name}-mldsa-pubk.bin").read_bytes()
    return bytes(lms.load_public(keys / f"{name}-lms-pubk.pem").to_bytes())


def project_bundle(pqc: str, keys: Path) -> bytes:
    """A CMN2 bundle (indep2's builder) whose active vendor keys are the project's vnd-fw keys
    and whose owner keys its own-fw keys, signed by them: what the device would run."""
    from imgtool.keys import ecc

    def ecc_hw(name: str) -> bytes:
        return ecc.public_to_hw(ecc.load_public(keys / f"{name}-ecc-pubk.pem"))

    bk = indep2.BundleKeys2(
        pqc,
        [ecc_hw("vnd-fw")],
        [_pqc_pub(pqc, keys, "vnd-fw")],
        ecc_idx=0,
        pqc_idx=0,
        owner_ecc=ecc_hw("own-fw"),
        owner_pqc=_pqc_pub(pqc, keys, "own-fw"),
    )
    return indep2.build_cmn2(
        bk,
        _sign_ecc(keys / "vnd-fw-ecc-prvk.pem"),
        _sign_pqc(pqc, keys, "vnd-fw"),
        _sign_ecc(keys / "own-fw-ecc-prvk.pem"),
        _sign_pqc(pqc, keys, "own-fw"),
    )


def own_project(root: Path, pqc: str, style: str = "ast2705") -> tuple[object, Path]:
    from helpers.projects2 import make_project2

    p = make_project2(root, style)
    (p.prebuilt / "caliptra-fw.bin").write_bytes(project_bundle(pqc, p.keys))
    argv = ["create-auth-flash-2x", *p.args("1" if pqc == "mldsa" else "3")]
    assert main([*argv, "--man", str(p.man), "--flash", str(p.flash)]) == 0
    fz = root / "fuses.toml"
    assert (
        main(["fuses", "--caliptra-fw", str(p.prebuilt / "caliptra-fw.bin"), "--out", str(fz)]) == 0
    )
    return p, fz


@pytest.mark.parametrize("pqc", PQCS)
@pytest.mark.parametrize("style", ["ast2705", "ast2755"])
def test_own_outputs_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pqc: str, style: str
) -> None:
    """ast2755: padding_align_size 256 (every image, the bundle and the manifest padded)."""
    p, fz = own_project(tmp_path / "a", pqc, style)
    cfg = ["--cfg", str(p.cfg), "--key-dir", str(p.keys), "--prebuilt-dir", str(p.prebuilt)]  # type: ignore[attr-defined]
    flash, man = p.flash, p.man  # type: ignore[attr-defined]
    toc = flash.parent / "fw_toc.bin"
    cal = str(p.prebuilt / "caliptra-fw.bin")  # type: ignore[attr-defined]
    good = [
        (flash, ["--fuses", str(fz)]),
        (flash, ["--fuses", str(fz), "--fw-toc", str(toc), *cfg]),
        (flash, cfg),
        (flash, ["--key-dir", str(p.keys)]),  # type: ignore[attr-defined]
        (man, ["--fuses", str(fz), "--caliptra-fw", cal]),
        (man, ["--caliptra-fw", cal, *cfg]),
    ]
    # create-auth-man-2x on its own (LMS signs with the next leaf: other bytes, same checks)
    man2 = tmp_path / "man2.bin"
    pqc_arg = "1" if pqc == "mldsa" else "3"
    assert main(["create-auth-man-2x", *p.args(pqc_arg), "--man", str(man2)]) == 0  # type: ignore[attr-defined]
    if pqc == "mldsa":
        assert man2.read_bytes() == man.read_bytes()
    good.append((man2, ["--fuses", str(fz), "--caliptra-fw", cal]))
    for f, args in good:
        rc, doc = run(capsys, f, *args)
        assert rc == 0, (f.name, args, failed(doc))
    rc, doc = run(capsys, flash, *cfg)
    for cid in (
        "cfg.imc",
        "cfg.flash",
        "manifest.key.owner_man.ecc",
        f"bundle.key.vendor_fw.{pqc}",
    ):
        assert check(doc, cid)["status"] == "ok", cid
    rc, doc = run(capsys, flash, "--fw-toc", str(toc), *cfg)
    assert check(doc, "fw_toc.names")["status"] == "ok"

    # a foreign key set: another project's keys, bundle and fuses
    q, fz_q = own_project(tmp_path / "b", pqc)
    other_cfg = ["--cfg", str(q.cfg), "--key-dir", str(q.keys), "--prebuilt-dir", str(q.prebuilt)]  # type: ignore[attr-defined]
    for f, args in (
        (flash, ["--fuses", str(fz_q)]),
        (flash, ["--key-dir", str(q.keys)]),  # type: ignore[attr-defined]
        (flash, other_cfg),
        (man, ["--fuses", str(fz_q), "--caliptra-fw", str(q.prebuilt / "caliptra-fw.bin")]),  # type: ignore[attr-defined]
        (man, ["--fuses", str(fz), "--caliptra-fw", str(q.prebuilt / "caliptra-fw.bin")]),  # type: ignore[attr-defined]
    ):
        rc, doc = run(capsys, f, *args)
        assert rc == 1, (f.name, args)
    # a flipped byte in an SoC image, the manifest, the bundle
    data = flash.read_bytes()
    entries = indep2.check_flash2(data)
    bad_f = tmp_path / "bad.bin"
    for ident in (0, 1, 0x1001):
        e = next(x for x in entries if x.identifier == ident)
        b = bytearray(data)
        b[e.offset + e.size // 2] ^= 0x01
        bad_f.write_bytes(bytes(b))
        for args in (["--fuses", str(fz)], cfg):
            rc, doc = run(capsys, bad_f, *args)
            assert rc == 1, (ident, args)
    # swapped SoC images 0 and 1 (checksums recomputed: a well-formed flash)
    regions = {e.identifier: data[e.offset : e.offset + e.size] for e in entries}
    order = [e.identifier for e in entries]
    imgs = [(i, regions[{0x1000: 0x1001, 0x1001: 0x1000}.get(i, i)]) for i in order]
    bad_f.write_bytes(build_flash2(imgs))
    indep2.check_flash2(bad_f.read_bytes())
    for args in (["--fuses", str(fz)], cfg):
        rc, doc = run(capsys, bad_f, *args)
        assert rc == 1 and "flash.image.0x1000.digest" in failed(doc), args
    # an image file of the config changed after the build: not what the config builds
    (p.prebuilt / "soc-image-1.bin").write_bytes(b"changed")  # type: ignore[attr-defined]
    rc, doc = run(capsys, flash, *cfg)
    assert rc == 1 and "cfg.imc" in failed(doc) and "cfg.flash" in failed(doc)
    rc, doc = run(capsys, flash, "--fuses", str(fz))
    assert rc == 0, failed(doc)  # the fuses alone do not know the config's files


def test_2x_config_only_for_2x_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from helpers.projects import stand_in_bundle
    from helpers.projects2 import make_project2

    p = make_project2(tmp_path, "ast2705")
    x = tmp_path / "x.bin"
    x.write_bytes(stand_in_bundle())  # a Caliptra 1.x bundle
    cfg = ["--cfg", str(p.cfg), "--key-dir", str(p.keys), "--prebuilt-dir", str(p.prebuilt)]
    one_line_exit2(capsys, ["verify", str(x), *cfg], "2.x config", "not 2.x")
