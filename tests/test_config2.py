"""Caliptra 2.x configs and commands: builds in the three reference styles for both PQC types,
and bad input (one line, exit 2)."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.projects2 import make_project2

from imgtool.config2 import load_config2
from imgtool.errors import ConfigError
from imgtool.formats import flash2, fw_toc
from imgtool.formats import manifest2 as m2
from imgtool.keys import mldsa


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imgtool", *args], capture_output=True, text=True, cwd=cwd
    )


def one_line_exit2(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.parametrize("style", ["ast2755", "ast2705", "ast1040"])
@pytest.mark.parametrize("pqc", ["1", "3"])
def test_build_styles(tmp_path: Path, style: str, pqc: str) -> None:
    p = make_project2(tmp_path, style)
    r = run(
        "create-auth-flash-2x",
        *p.args(pqc),
        "--man",
        str(p.man),
        "--flash",
        str(p.flash),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    man = p.man.read_bytes()
    assert len(man) == (34560 if style == "ast2755" else 34456)
    assert not any(man[34456:])
    parsed = m2.Manifest2.parse(man)
    cfg2 = load_config2(p.cfg, key_dir=p.keys, prebuilt_dir=p.prebuilt)
    assert parsed.svn == 3 and parsed.flags == 1
    assert [e.fw_id for e in parsed.imc.entries] == [2, 0x1000, 0x1001, 0x1002]
    if style == "ast2705":
        assert all(e.component_id == e.fw_id for e in parsed.imc.entries)
    align = 256 if style == "ast2755" else 0
    for e, img in zip(parsed.imc.entries, cfg2.images, strict=True):
        data = img.file.read_bytes() if img.file else b""
        if align:
            data += bytes(-len(data) % align)
        data += bytes(-len(data) % 4)
        assert e.digest == hashlib.sha384(data).digest()
    # PQC slots: ML-DSA 4627 bytes + a zero, LMS 1620 then zeros; ML-DSA verified over RAW bytes
    if pqc == "1":
        pub = (p.keys / "own-man-mldsa-pubk.bin").read_bytes()
        assert parsed.own_man_pqc_pub == pub
        sig = parsed.own_imc_sig_pqc
        assert sig[4627] == 0
        assert mldsa.verify(pub, m2.covered(man, "own_imc_sig"), sig[:4627])
    else:
        assert not any(parsed.own_imc_sig_pqc[1620:]) and any(parsed.own_imc_sig_pqc[:1620])
        assert not any(parsed.own_man_pqc_pub[48:])
    fl = flash2.Flash2.parse(p.flash.read_bytes())
    ids = [i for i, _ in fl.images]
    assert ids == [0, 1, 2, 0x1000, 0x1001, 0x1002]
    assert fl.images[1][1] == man
    toc = fw_toc.FwToc.parse((p.flash.parent / "fw_toc.bin").read_bytes())
    names = [t.name for t in toc.items]
    assert names[1] == "m.bin"
    if style == "ast2755":
        assert names[0] == "caliptra-fw_align_256.bin"
        assert names[3] == "soc-image-0_align_256.bin"


def test_deterministic_mldsa_build(tmp_path: Path) -> None:
    p = make_project2(tmp_path, "ast2705")
    out = []
    for n in range(2):
        m = tmp_path / f"m{n}.bin"
        r = run("create-auth-man-2x", *p.args("1"), "--man", str(m), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        out.append(m.read_bytes())
    assert out[0] == out[1]


def test_bad_pqc_key_type(tmp_path: Path) -> None:
    p = make_project2(tmp_path, "ast2705")
    for bad in ("2", "0", "mldsa87"):
        r = run("create-auth-man-2x", *p.args(bad), cwd=tmp_path)
        one_line_exit2(r, "--pqc-key-type")


def test_1x_config_with_2x_command_and_back(tmp_path: Path) -> None:
    from helpers.projects import make_project

    p1 = make_project(tmp_path / "one")
    r = run("create-auth-man-2x", "--cfg", str(p1.cfg), "--pqc-key-type", "1", cwd=tmp_path)
    one_line_exit2(r, "1.x config", "create-auth-man")
    p2 = make_project2(tmp_path / "two", "ast2705")
    r = run("create-auth-man", "--cfg", str(p2.cfg), "--key-dir", str(p2.keys), cwd=tmp_path)
    one_line_exit2(r, "2.x config", "create-auth-man-2x")


def _edit(p: Path, old: str, new: str, count: int = 1) -> None:
    t = p.read_text()
    assert old in t
    p.write_text(t.replace(old, new, count))


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ("exec_bit = 0\n", "", ["image_metadata_list[1].exec_bit", "required"]),
        ('ecc_pub_key = "own-fw-ecc-pubk.pem"\n', "", ["owner_fw_key_config.ecc_pub_key"]),
        ('mldsa_pub_key = "vnd-fw-mldsa-pubk.bin"\n', "", ["mldsa_pub_key", "required"]),
        ("security_version = 3", "security_version = 129", ["security_version", "0..128"]),
        ("exec_bit = 1\n", "exec_bit = 128\n", ["exec_bit"]),
        ("load_stage = 0\n", "load_stage = 4\n", ["load_stage"]),
        ("fw_id = 0x1001", "fw_id = 0x1005", ["fw_id", "0x1001"]),
        (
            "image_load_address = 0x80000000",
            "image_load_address = 0x10000000000000000",
            ["image_metadata_list[1].image_load_address", "0xffffffffffffffff"],
        ),
    ],
)
def test_bad_2x_fields(tmp_path: Path, old: str, new: str, words: list[str]) -> None:
    p = make_project2(tmp_path, "ast2705")
    _edit(p.cfg, old, new)
    r = run("create-auth-man-2x", *p.args("1"), cwd=tmp_path)
    one_line_exit2(r, *words)
    with pytest.raises(ConfigError):
        load_config2(p.cfg, key_dir=p.keys, prebuilt_dir=p.prebuilt)


def test_wrong_mldsa_key_size_cli(tmp_path: Path) -> None:
    p = make_project2(tmp_path, "ast2705")
    k = p.keys / "own-man-mldsa-prvk.bin"
    k.write_bytes(k.read_bytes()[:32])
    r = run("create-auth-man-2x", *p.args("1"), cwd=tmp_path)
    one_line_exit2(r, "own-man-mldsa-prvk.bin", "4896")
    r = run("create-auth-man-2x", *p.args("3"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr  # LMS builds do not read the ML-DSA private keys


def test_unused_slot_layout_in_built_manifest(tmp_path: Path) -> None:
    p = make_project2(tmp_path, "ast2705", flags=0)
    r = run("create-auth-man-2x", *p.args("3"), "--man", str(p.man), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    man = p.man.read_bytes()
    assert struct.unpack_from("<I", man, 24292)[0] == 4
    assert man[24292 + 4 + 80 * 4 : 24292 + 4 + 80 * 5] == b"\xff" * 8 + bytes(72)
    # flags bit 0 clear: no vendor IMC signatures
    assert not any(man[14844 : 14844 + 96 + 4628])


# ----------------------------------------------------------------------------- [sign_helper]
def _with_helpers(p: Path, body: str) -> None:
    p.write_text(p.read_text() + "\n[sign_helper]\n" + body)


def test_sign_helper_table_is_kept(tmp_path: Path) -> None:
    """Every 2.x helper field (owner and vendor, ecc/lms/mldsa, fw/man), by_file, timeout."""
    from imgtool.signing2 import HELPER_FIELDS2

    p = make_project2(tmp_path, "ast2705")
    body = "".join(f'{f} = "helper {i}"\n' for i, f in enumerate(HELPER_FIELDS2))
    _with_helpers(p.cfg, body + "by_file = true\ntimeout = 5\n")
    cfg2 = load_config2(p.cfg, key_dir=p.keys, prebuilt_dir=p.prebuilt)
    assert len(HELPER_FIELDS2) == 12
    assert {k: cfg2.sign_helper[k] for k in HELPER_FIELDS2} == {
        f: f"helper {i}" for i, f in enumerate(HELPER_FIELDS2)
    }
    assert cfg2.sign_helper["by_file"] is True and cfg2.sign_helper["timeout"] == 5.0
    h = cfg2.helpers("vendor_man_key_config")
    assert h is not None and h.by_file and h.timeout == 5.0
    want = [f"helper {HELPER_FIELDS2.index(f'vendor_{a}_man_key_sign_helper')}"
            for a in ("ecc", "lms", "mldsa")]  # fmt: skip
    assert [h.ecc, h.lms, h.mldsa] == want
    # without the table: no helpers, defaults
    q = make_project2(tmp_path / "q", "ast2705")
    cfg2 = load_config2(q.cfg, key_dir=q.keys, prebuilt_dir=q.prebuilt)
    assert cfg2.sign_helper == {"by_file": False, "timeout": 60.0}
    assert cfg2.helpers("owner_fw_key_config") is None


def test_private_key_may_be_absent_with_a_helper(tmp_path: Path) -> None:
    """A private key the helper stands in for may be left out; the public keys stay required."""
    p = make_project2(tmp_path, "ast2705")
    _edit(p.cfg, 'ecc_priv_key = "own-man-ecc-prvk.pem"\n', "")
    _with_helpers(p.cfg, 'owner_ecc_man_key_sign_helper = "h"\n')
    cfg2 = load_config2(p.cfg, key_dir=p.keys, prebuilt_dir=p.prebuilt)
    assert cfg2.keys["owner_man_key_config"].ecc_priv is None
    _edit(p.cfg, 'ecc_pub_key = "own-man-ecc-pubk.pem"\n', "")
    with pytest.raises(ConfigError, match="owner_man_key_config.ecc_pub_key: required"):
        load_config2(p.cfg, key_dir=p.keys, prebuilt_dir=p.prebuilt)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ('owner_mldsa_man_key_sign_helpr = "h"\n',
         ["sign_helper.owner_mldsa_man_key_sign_helpr", "unknown key",
          "'owner_mldsa_man_key_sign_helper'"]),
        ('vendor_lms_fw_key_sign_helper = "  "\n',
         ["sign_helper.vendor_lms_fw_key_sign_helper", "empty command"]),
        ("owner_ecc_fw_key_sign_helper = 3\n",
         ["sign_helper.owner_ecc_fw_key_sign_helper", "expected string"]),
        ('by_file = "yes"\n', ["sign_helper.by_file", "expected boolean"]),
        ("timeout = 0\n", ["sign_helper.timeout", "(0, 86400]"]),
        ("timeout = nan\n", ["sign_helper.timeout", "(0, 86400]"]),
        ("timeout = 86401\n", ["sign_helper.timeout", "(0, 86400]"]),
        ("timeout = true\n", ["sign_helper.timeout", "expected integer or number"]),
    ],
)  # fmt: skip
def test_bad_sign_helper_fields(tmp_path: Path, body: str, words: list[str]) -> None:
    p = make_project2(tmp_path, "ast2705")
    _with_helpers(p.cfg, body)
    r = run("create-auth-man-2x", *p.args("1"), cwd=tmp_path)
    one_line_exit2(r, str(p.cfg), *words)


# ----------------------------------------------------------------------------- PKCS#11 URIs
URI = "pkcs11:token=cptra;object=own-man-ecc"


def test_pkcs11_uri_in_ecc_priv_key(tmp_path: Path) -> None:
    """As in 1.x: checked when the config loads, never joined onto the key dir, not a file."""
    from imgtool.config import HsmKey

    p = make_project2(tmp_path, "ast2705")
    _edit(p.cfg, 'ecc_priv_key = "own-man-ecc-prvk.pem"', f'ecc_priv_key = "{URI}"')
    cfg2 = load_config2(p.cfg, key_dir=p.keys, prebuilt_dir=p.prebuilt)
    assert cfg2.keys["owner_man_key_config"].ecc_priv == HsmKey(URI)
    assert cfg2.hsm_keys() == [HsmKey(URI)]
    assert all("pkcs11:" not in str(f) for f in cfg2.key_files())
    assert len(cfg2.key_files()) == 4 * 6 - 1


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ('ecc_pub_key = "own-man-ecc-pubk.pem"', f'ecc_pub_key = "{URI}"',
         ["owner_man_key_config.ecc_pub_key", "public key stays a PEM file"]),
        ('lms_priv_key = "own-man-lms-prvk.pem"', f'lms_priv_key = "{URI}"',
         ["owner_man_key_config.lms_priv_key", "LMS keys cannot live on a PKCS#11 token"]),
        ('lms_pub_key = "vnd-fw-lms-pubk.pem"', f'lms_pub_key = "{URI}"',
         ["vendor_fw_key_config.lms_pub_key", "ecc_priv_key only"]),
        ('mldsa_priv_key = "own-fw-mldsa-prvk.bin"', f'mldsa_priv_key = "{URI}"',
         ["owner_fw_key_config.mldsa_priv_key", "ML-DSA keys cannot live on a PKCS#11 token"]),
        ('mldsa_pub_key = "own-fw-mldsa-pubk.bin"', f'mldsa_pub_key = "{URI}"',
         ["owner_fw_key_config.mldsa_pub_key", "ML-DSA keys cannot"]),
        ('ecc_priv_key = "own-man-ecc-prvk.pem"', f'ecc_priv_key = "PKCS11:{URI[7:]}"',
         ["owner_man_key_config.ecc_priv_key", "lower case"]),
        ('ecc_priv_key = "own-man-ecc-prvk.pem"', 'ecc_priv_key = "pkcs11:object=a;pin-value=1234"',
         ["owner_man_key_config.ecc_priv_key", "pin-value"]),
        ('ecc_priv_key = "own-man-ecc-prvk.pem"', 'ecc_priv_key = "pkcs11:token=%zz"',
         ["owner_man_key_config.ecc_priv_key"]),
    ],
)  # fmt: skip
def test_pkcs11_uri_where_no_token_key_can_be(
    tmp_path: Path, old: str, new: str, words: list[str]
) -> None:
    p = make_project2(tmp_path, "ast2705")
    _edit(p.cfg, old, new)
    r = run("create-auth-man-2x", *p.args("1"), cwd=tmp_path)
    one_line_exit2(r, *words)
    assert "key file not found" not in r.stderr and "1234" not in r.stderr
