"""inspect --json, checked against values computed here with struct and hashlib."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
from projects import make_project

from imgtool.cli.main import main


def _json(capsys: pytest.CaptureFixture[str], path: Path) -> dict:  # type: ignore[type-arg]
    capsys.readouterr()
    assert main(["inspect", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_flash_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prj = make_project(tmp_path, sample_bundle=True, lms=True, load_stages=(0, 1, 2, 3, 1))
    assert (
        main(["create-auth-flash", *prj.args("--man", str(prj.man), "--flash", str(prj.flash))])
        == 0
    )
    data = prj.flash.read_bytes()
    doc = _json(capsys, prj.flash)
    assert doc["schema"] == 1 and doc["length"] == len(data)
    fl = doc["flash"]
    count = struct.unpack_from("<H", data, 6)[0]
    assert fl["header"]["image_count"] == count == 8
    assert fl["header"]["payload_checksum"] == f"0x{struct.unpack_from('<I', data, 12)[0]:08x}"
    for i, im in enumerate(fl["images"]):
        ident, off, size = struct.unpack_from("<III", data, 16 + 12 * i)
        assert (im["identifier"], im["offset"], im["size"]) == (ident, off, size)
        if ident >= 0x1000:
            body = data[off : off + size]
            assert im["digest"] == hashlib.sha384(body).hexdigest()
            assert im["fw_id"] == ident - 0x1000 + 2
    stages = [im["load_stage"] for im in fl["images"][3:]]
    assert stages == [0, 1, 2, 3, 1]
    assert fl["images"][5]["ignore_auth_check"] is True
    man = fl["manifest"]
    mdata = prj.man.read_bytes()
    assert man["security_version"] == struct.unpack_from("<I", mdata, 12)[0] == 3
    assert man["keys"]["owner_manifest_lms"]["I"] == mdata[1976 + 8 : 1976 + 24].hex()
    assert man["signatures"]["own_svn_sig_lms"]["q"] == struct.unpack_from("<I", mdata, 3836)[0]
    assert man["signatures"]["own_imc_sig_lms"]["q"] == struct.unpack_from(">I", mdata, 7268)[0]
    assert man["signatures"]["vnd_imc_sig_ecc"]["filled"] is False
    b = fl["bundle"]
    assert b["vendor_ecc_key_index"] == 0 and len(b["toc"]) == 2
    cal = (prj.prebuilt / "caliptra-fw.bin").read_bytes()
    fmc_off, fmc_size = struct.unpack_from("<II", cal, 0x162C + 48)
    assert (b["toc"][0]["offset"], b["toc"][0]["size"]) == (fmc_off, fmc_size)
    assert b["toc"][0]["digest"] == hashlib.sha384(cal[fmc_off : fmc_off + fmc_size]).hexdigest()


def test_reference_bundle_json(ref: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _json(capsys, ref / "prebuilt" / "ast2700-default" / "caliptra-fw.bin")
    b = doc["bundle"]
    assert b["vendor_ecc_key_index"] == 3 and b["vendor_lms_key_index"] == 3
    own = (ref / "key" / "ast2700-default" / "own-fw-lms-pubk.pem").read_bytes()
    assert b["owner_lms_key"]["root"] == own[24:].hex()


def test_text_table_and_a1_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prj = make_project(tmp_path, sample_bundle=True, extra_runtime="cptra_out_bundle = true")
    assert main(["create-auth-flash", *prj.args("--flash", str(prj.flash))]) == 0
    capsys.readouterr()
    assert main(["inspect", str(prj.flash)]) == 0
    out = capsys.readouterr().out
    assert "A1 out-bundle" in out and "FLSH header (at 0x100000)" in out
    assert "Caliptra firmware bundle" in out and "Signature slots" in out


def test_caliptra2_manifest_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "m2.bin"
    f.write_bytes(struct.pack("<II", 0x324D5441, 24292) + bytes(100))
    assert main(["inspect", str(f)]) == 2
    assert "Caliptra 2.x SoC manifest" in capsys.readouterr().err


def test_bundle_shows_both_fuse_hashes_and_the_selected_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The vendor and owner PK hashes as `fuses` computes them (checked here with hashlib over
    the spec's offsets), every vendor key slot with the selected one, owner_data, fingerprints."""
    from oem import parse, vendor_tree
    from projects import ecc_keys, lms_keys

    t = vendor_tree(tmp_path / "v")
    keys = tmp_path / "oemkeys"
    ecc_keys(keys)
    lms_keys(keys)
    cfg = tmp_path / "oem.toml"
    cfg.write_text(
        '[manifest_config]\nprj_name = "oem"\n[owner_fw_key_config]\n'
        'ecc_pub_key = "own-fw-ecc-pubk.pem"\necc_priv_key = "own-fw-ecc-prvk.pem"\n'
        'lms_pub_key = "own-fw-lms-pubk.pem"\nlms_priv_key = "own-fw-lms-prvk.pem"\n'
        '[image_runtime_list]\ncaliptra_file = ""\n[[image_metadata_list]]\nfile = ""\nfw_id = 1\n'
    )
    out = tmp_path / "o.bin"
    args = ["--cfg", str(cfg), "--key-dir", str(keys), "--in", str(t.bundle), "--out", str(out)]
    opts = ["--not-before", "20250101000000Z", "--epoch", "9"]
    assert main(["owner-sign-bundle", *args, *opts]) == 0
    data = out.read_bytes()
    p = parse(data)
    b = _json(capsys, out)["bundle"]
    vendor_hash = hashlib.sha384(data[8 : 8 + 1920]).digest()
    owner_hash = hashlib.sha384(p.owner_ecc + p.owner_lms).digest()
    assert b["vendor_pk_hash"]["hex"] == vendor_hash.hex()
    assert b["owner_pk_hash"]["hex"] == owner_hash.hex()
    assert b["owner_pk_hash"]["words"][0] == f"0x{int.from_bytes(owner_hash[:4], 'big'):08x}"
    assert len(b["vendor_ecc_keys"]) == 4 and len(b["vendor_lms_keys"]) == 32
    assert [s["selected"] for s in b["vendor_ecc_keys"]] == [True, False, False, False]
    assert b["vendor_ecc_keys"][1]["fingerprint"] is None  # an empty slot
    fp = "ecc:" + hashlib.sha256(p.vendor_ecc).hexdigest()[:16]
    assert b["vendor_ecc_keys"][0]["fingerprint"] == b["vendor_ecc_key"]["fingerprint"] == fp
    assert (
        b["owner_lms_key"]["fingerprint"] == "lms:" + hashlib.sha256(p.owner_lms).hexdigest()[:16]
    )
    assert b["owner_data"] == {"not_before": "20250101000000Z", "not_after": None, "epoch": 9}
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"owner PK hash          {owner_hash.hex()}" in text
    assert f"vendor PK hash         {vendor_hash.hex()}" in text
    assert f"vendor ECC key slots   selected 0 ({fp}); 1 of 4 slots filled" in text
    assert "not_before 20250101000000Z, not_after -, epoch 9" in text


def test_reference_bundle_slots(ref: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = ref / "prebuilt" / "ast2700-default" / "caliptra-fw.bin"
    data = path.read_bytes()
    b = _json(capsys, path)["bundle"]
    assert [s["index"] for s in b["vendor_lms_keys"] if s["selected"]] == [3]
    assert b["vendor_pk_hash"]["hex"] == hashlib.sha384(data[8 : 8 + 1920]).hexdigest()
    assert b["owner_data"] == {"not_before": None, "not_after": None, "epoch": 0}
