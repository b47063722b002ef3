"""Manifest layouts and the bytes each signature covers, on self-made projects."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
from independent import ecc_pub_hw, ecc_verify, get, imc_entries, padded_sha384, u32
from projects import make_project, payload

from imgtool.cli.main import main
from imgtool.config import Format
from imgtool.formats import manifest1 as manifest
from imgtool.formats.manifest1 import Manifest


def test_prebuilt_vendor_tbs_digest_golden() -> None:
    tbs = struct.pack("<II", 1, 0) + bytes(144)
    assert hashlib.sha384(tbs).hexdigest() == (
        "eefb526a81fc9517436d768996ccf47887cfd279c56a428b8cc96c392f1b7c07"
        "e8c76af0b3600b9cb60e3631ae6804b8"
    )
    assert manifest.PREBUILT_VENDOR_TBS_DIGEST == hashlib.sha384(tbs).digest()
    m = Manifest(Format.ASPEED, version=1, flags=0)
    assert manifest.vendor_pubkey_tbs(m) == tbs


def test_layout_offsets_match_spec() -> None:
    a = manifest.offsets(Format.ASPEED)
    assert a["sec_ver"] == (12, 4) and a["flags"] == (16, 4)
    assert a["vnd_man_ecc_pub"][0] == 20 and a["vnd_pub_sig_ecc"][0] == 164
    assert a["own_man_ecc_pub"][0] == 1880 and a["own_pub_sig_ecc"][0] == 2024
    assert a["own_svn_sig_ecc"][0] == 3740 and a["own_svn_sig_lms"][0] == 3836
    assert a["vnd_imc_sig_ecc"][0] == 5456 and a["own_imc_sig_ecc"][0] == 7172
    assert a["imc"] == (8888, 7116)
    c = manifest.offsets(Format.CALIPTRA1)
    assert c["flags"] == (12, 4) and c["vnd_pub_sig_ecc"][0] == 160
    assert c["own_man_ecc_pub"][0] == 1876 and c["vnd_imc_sig_ecc"][0] == 3736
    assert c["own_imc_sig_ecc"][0] == 5452 and c["imc"] == (7168, 7116)


def test_parse_round_trip_and_rejects_garbage() -> None:
    m = Manifest(Format.CALIPTRA1, version=7, flags=1)
    m.imc = manifest.imc_to_bytes([manifest.ImcEntry(1, 0x40000001, bytes(range(48)))])
    data = m.to_bytes()
    assert len(data) == 14284
    back = Manifest.parse(data)
    assert back == m and back.entries[0].load_stage == 1 and back.entries[0].source == 1
    from imgtool.errors import FormatError

    with pytest.raises(FormatError, match="neither"):
        Manifest.parse(data[:-1])
    with pytest.raises(FormatError, match="marker"):
        Manifest.parse(b"XXXX" + data[4:])
    with pytest.raises(FormatError, match="2.x"):
        Manifest.parse(struct.pack("<I", 0x324D5441) + bytes(100))


@pytest.mark.parametrize("fmt", ["aspeed", "caliptra-1"])
def test_generated_vendor_and_owner_signatures(tmp_path: Path, fmt: str) -> None:
    prj = make_project(tmp_path, fmt=fmt, flags=1, version=9, security_version=0x1234)
    assert main(["create-auth-man", *prj.args("--man", str(prj.man))]) == 0
    man = prj.man.read_bytes()
    k = prj.keys
    assert len(man) == (16004 if fmt == "aspeed" else 14284)
    assert u32(man, 0) == 0x41544D4E and u32(man, 4) == 7168
    o = 20 if fmt == "aspeed" else 16
    vnd_keys = man[o : o + 144]
    assert vnd_keys[:96] == ecc_pub_hw(k / "vnd-man-ecc-pubk.pem") and vnd_keys[96:] == bytes(48)
    assert ecc_verify(
        k / "vnd-fw-ecc-pubk.pem", struct.pack("<II", 9, 1) + vnd_keys, get(man, "vnd_sig_ecc", 96)
    )
    own_keys = get(man, "own_ecc_pub", 144)
    assert ecc_verify(k / "own-fw-ecc-pubk.pem", own_keys, get(man, "own_sig_ecc", 96))
    imc = man[-7116:]
    assert ecc_verify(k / "vnd-man-ecc-pubk.pem", imc, get(man, "vnd_imc_ecc", 96))
    assert ecc_verify(k / "own-man-ecc-pubk.pem", imc, get(man, "own_imc_ecc", 96))
    if fmt == "aspeed":
        assert u32(man, 12) == 0x1234
        svn_tbs = struct.pack("<III", 9, 0x1234, 1) + own_keys
        assert ecc_verify(k / "own-fw-ecc-pubk.pem", svn_tbs, get(man, "svn_ecc", 96))
    # no LMS keys configured: LMS slots stay zero
    assert get(man, "own_sig_lms", 1620) == bytes(1620)


def test_imc_entries_flags_and_unused_slots(tmp_path: Path) -> None:
    prj = make_project(tmp_path, sizes=(5, 8, 12), load_stages=(1, 2, 3))
    assert main(["create-auth-man", *prj.args("--man", str(prj.man))]) == 0
    man = prj.man.read_bytes()
    entries = imc_entries(man)
    assert [e[0] for e in entries] == [1, 2, 3, 4]
    assert entries[1][1] == 0x40000001 and entries[2][1] == 0x80000001
    assert entries[3][1] == 0xC0000005  # load_stage 3, ignore_auth_check (image 2), source 1
    assert entries[1][2] == padded_sha384(payload(0, 5))
    assert entries[0][2] == padded_sha384(b"MCU-RUNTIME-0123")
    imc = man[8888:]
    for i in range(4, 127):
        assert imc[4 + 56 * i : 4 + 56 * (i + 1)] == b"\xff" * 4 + bytes(52)


def test_flags_other_bits_dropped_with_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prj = make_project(tmp_path, flags=6)
    assert main(["create-auth-man", *prj.args("--man", str(prj.man))]) == 0
    assert u32(prj.man.read_bytes(), 16) == 0
    assert "only bit 0" in capsys.readouterr().err


def test_owner_only_and_no_keys(tmp_path: Path) -> None:
    prj = make_project(tmp_path / "a", vendor=False)
    assert main(["create-auth-man", *prj.args("--man", str(prj.man))]) == 0
    man = prj.man.read_bytes()
    assert man[20 : 164 + 1716] == bytes(144 + 1716)
    assert man[1880 : 1880 + 96] != bytes(96)
    prj = make_project(tmp_path / "b", vendor=False, owner=False)
    assert main(["create-auth-man", *prj.args("--man", str(prj.man))]) == 0
    man = prj.man.read_bytes()
    assert man[20:8888] == bytes(8868)


def test_reproducible(tmp_path: Path) -> None:
    prj = make_project(tmp_path)
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    assert main(["create-auth-flash", *prj.args("--flash", str(a))]) == 0
    assert main(["create-auth-flash", *prj.args("--flash", str(b))]) == 0
    assert a.read_bytes() == b.read_bytes()


def test_prebuilt_vendor_signature(tmp_path: Path, ref: Path) -> None:
    """Our own vendor keys configured but ASPEED's prebuilt signature requested (it does not
    verify with this project's bundle: an error unless --allow-key-mismatch)."""
    prj = make_project(tmp_path, vendor_signature="prebuilt")
    args = [
        "create-auth-man",
        *prj.args("--man", str(prj.man), "--vnd-sig-dir", str(ref / "vnd_sig")),
    ]
    assert main(args) == 2
    assert main([*args, "--allow-key-mismatch"]) == 0
    man = prj.man.read_bytes()
    assert man[20:164] == bytes(144)  # vendor manifest keys zeroed
    ref_keys = ref / "key" / "ast2700-default"
    tbs = struct.pack("<II", 1, 0) + bytes(144)
    assert ecc_verify(ref_keys / "vnd-fw-ecc-pubk.pem", tbs, man[164:260])


def test_svn_lms_q_is_little_endian() -> None:
    sig = (5).to_bytes(4, "big") + bytes(range(20))
    assert manifest.svn_lms_sig_swap_q(sig)[:4] == (5).to_bytes(4, "little")
    assert manifest.svn_lms_sig_swap_q(manifest.svn_lms_sig_swap_q(sig)) == sig
