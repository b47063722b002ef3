"""`cptra-imgtool fuses` and the fuses file: hashes recomputed independently (offsets from
spec/flash.md, hashlib), fuse words, strict parsing."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path

import pytest

from imgtool import fuses
from imgtool.cli.main import main
from imgtool.errors import ConfigError

# spec/flash.md: preamble at 8: 4 x 96 vendor ECC keys, 32 x 48 vendor LMS keys, 2 indexes,
# vendor ECC sig 96, vendor LMS sig 1620, then the owner ECC (96) and LMS (48) keys
VENDOR = slice(8, 8 + 4 * 96 + 32 * 48)
OWNER_START = 8 + 4 * 96 + 32 * 48 + 8 + 96 + 1620
OWNER = slice(OWNER_START, OWNER_START + 96 + 48)


@pytest.mark.parametrize("prj", ["ast2700-default", "ast2700a1-default"])
def test_fuses_of_reference_bundles(
    ref: Path, prj: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cal = ref / "prebuilt" / prj / "caliptra-fw.bin"
    data = cal.read_bytes()
    vendor = hashlib.sha384(data[VENDOR]).digest()
    owner = hashlib.sha384(data[OWNER]).digest()
    # the owner block is the demo owner FW keys (ECC x||y in hardware order, LMS raw)
    assert data[OWNER][96:] == (ref / "key" / prj / "own-fw-lms-pubk.pem").read_bytes()
    out = tmp_path / "f.toml"
    assert main(["fuses", "--caliptra-fw", str(cal), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"vendor_pk_hash = {vendor.hex()}" in text
    assert f"owner_pk_hash = {owner.hex()}" in text
    words = " ".join(f"0x{int.from_bytes(vendor[i : i + 4], 'big'):08x}" for i in range(0, 24, 4))
    assert words in text  # first six fuse words, big-endian words of the hash
    doc = tomllib.loads(out.read_text())["fuses"]
    assert doc == {
        "vendor_pk_hash": vendor.hex(),
        "owner_pk_hash": owner.hex(),
        "lms_verify": True,
        "secure_boot": True,
    }
    f = fuses.load(out)
    assert (f.vendor_pk_hash, f.owner_pk_hash, f.lms_verify) == (vendor, owner, True)

    assert main(["fuses", "--caliptra-fw", str(cal), "--json", "--no-lms-verify"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["lms_verify"] is False and j["owner_pk_hash"]["hex"] == owner.hex()
    assert j["vendor_pk_hash"]["words"] == [
        f"0x{int.from_bytes(vendor[i : i + 4], 'big'):08x}" for i in range(0, 48, 4)
    ]


def test_fuse_words_order() -> None:
    digest = bytes(range(48))
    assert fuses.fuse_words(digest)[0] == 0x00010203
    assert fuses.fuse_words(digest)[11] == 0x2C2D2E2F


def test_fuses_of_garbage_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "x.bin"
    bad.write_bytes(b"not a bundle" * 100)
    assert main(["fuses", "--caliptra-fw", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "CMAN" in err[0]


H = "ab" * 48
BAD_FILES = {
    "no section": ("lms_verify = true\n", "outside the [fuses] section"),
    "empty": ("", "[fuses]: missing section"),
    "other section": ('[fuses]\nowner_pk_hash = ""\nlms_verify = true\n[x]\n', "[x]: unknown"),
    "unknown key": (f'[fuses]\nvendor_pk_hash = "{H}"\nowner_pk_hash = ""\nlms = true\n', "lms"),
    "short hash": (
        '[fuses]\nvendor_pk_hash = "abcd"\nowner_pk_hash = ""\nlms_verify = true\n',
        "fuses.vendor_pk_hash",
    ),
    "non-hex": (
        f'[fuses]\nvendor_pk_hash = "{"zz" * 48}"\nowner_pk_hash = ""\nlms_verify = true\n',
        "fuses.vendor_pk_hash",
    ),
    "int hash": (
        '[fuses]\nvendor_pk_hash = 5\nowner_pk_hash = ""\nlms_verify = true\n',
        "fuses.vendor_pk_hash",
    ),
    "zero hash": (
        f'[fuses]\nvendor_pk_hash = "{"00" * 48}"\nowner_pk_hash = ""\nlms_verify = true\n',
        "all zero",
    ),
    "no vendor hash, secure boot on": (
        '[fuses]\nowner_pk_hash = ""\nlms_verify = true\n',
        "fuses.vendor_pk_hash",
    ),
    "owner missing": (f'[fuses]\nvendor_pk_hash = "{H}"\nlms_verify = true\n', "owner_pk_hash"),
    "lms missing": (f'[fuses]\nvendor_pk_hash = "{H}"\nowner_pk_hash = ""\n', "fuses.lms_verify"),
    "lms int": (
        f'[fuses]\nvendor_pk_hash = "{H}"\nowner_pk_hash = ""\nlms_verify = 1\n',
        "fuses.lms_verify",
    ),
    "secure boot string": (
        f'[fuses]\nvendor_pk_hash = "{H}"\nowner_pk_hash = ""\nlms_verify = true\n'
        'secure_boot = "yes"\n',
        "fuses.secure_boot",
    ),
    "min_svn bool": (
        f'[fuses]\nvendor_pk_hash = "{H}"\nowner_pk_hash = ""\nlms_verify = true\nmin_svn = true\n',
        "fuses.min_svn",
    ),
    "min_svn negative": (
        f'[fuses]\nvendor_pk_hash = "{H}"\nowner_pk_hash = ""\nlms_verify = true\nmin_svn = -1\n',
        "fuses.min_svn",
    ),
    "min_svn huge": (
        f'[fuses]\nvendor_pk_hash = "{H}"\nowner_pk_hash = ""\nlms_verify = true\n'
        "min_svn = 4294967296\n",
        "fuses.min_svn",
    ),
    "revocation too wide": (
        f'[fuses]\nvendor_pk_hash = "{H}"\nowner_pk_hash = ""\nlms_verify = true\n'
        "vendor_ecc_revocation = 16\n",
        "fuses.vendor_ecc_revocation",
    ),
    "runtime svn above 64": (
        f'[fuses]\nvendor_pk_hash = "{H}"\nowner_pk_hash = ""\nlms_verify = true\n'
        "runtime_svn = 65\n",
        "fuses.runtime_svn",
    ),
    "invalid toml": ("[fuses\n", "invalid TOML"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_malformed_fuses_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    text, needle = BAD_FILES[name]
    f = tmp_path / "fuses.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=None) as exc:
        fuses.load(f)
    assert needle in str(exc.value) and str(f) in str(exc.value)
    img = tmp_path / "img.bin"
    img.write_bytes(b"FLSH")
    assert main(["verify", str(img), "--fuses", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_missing_fuses_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "img.bin"
    img.write_bytes(b"FLSH")
    assert main(["verify", str(img), "--fuses", str(tmp_path / "nope.toml")]) == 2
    assert "fuses file not found" in capsys.readouterr().err


def test_secure_boot_off_needs_no_vendor_hash(tmp_path: Path) -> None:
    f = tmp_path / "f.toml"
    f.write_text('[fuses]\nowner_pk_hash = ""\nlms_verify = false\nsecure_boot = false\n')
    got = fuses.load(f)
    assert got.vendor_pk_hash is None and got.owner_pk_hash is None and not got.secure_boot
