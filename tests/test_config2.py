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
