"""`fuses` for Caliptra 2.x bundles: the hashes recomputed independently (tests/helpers/indep2),
the fuse words, the PQC type, and a written fuses file that verify accepts."""

from __future__ import annotations

import json
from pathlib import Path

import indep2
import pytest
from test_bundle2 import bundle

from imgtool import fuses
from imgtool.cli.main import main


@pytest.mark.parametrize("pqc", ["mldsa", "lms"])
def test_fuses_2x(tmp_path: Path, capsys: pytest.CaptureFixture[str], pqc: str) -> None:
    data, _ = bundle(pqc)
    cal = tmp_path / "caliptra-fw.bin"
    cal.write_bytes(data)
    out = tmp_path / "f.toml"
    capsys.readouterr()
    assert main(["fuses", "--caliptra-fw", str(cal), "--json", "--out", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    v, o = indep2.cmn2_vendor_pk_hash(data), indep2.cmn2_owner_pk_hash(data)
    assert doc["generation"] == "2.x"
    assert doc["vendor_pk_hash"]["hex"] == v.hex()
    assert doc["owner_pk_hash"]["hex"] == o.hex()
    assert doc["vendor_pk_hash"]["words"][0] == f"0x{int.from_bytes(v[:4], 'big'):08x}"
    assert doc["pqc_key_type"] == (1 if pqc == "mldsa" else 3)
    f = fuses.load(out)
    assert (f.vendor_pk_hash, f.owner_pk_hash, f.pqc_key_type) == (v, o, doc["pqc_key_type"])
    assert f.lms_verify is (pqc == "lms")
    capsys.readouterr()
    assert main(["verify", str(cal), "--fuses", str(out), "-q"]) == 0


def test_fuses_file_pqc_key_type_checked(tmp_path: Path) -> None:
    p = tmp_path / "f.toml"
    p.write_text(
        '[fuses]\nvendor_pk_hash = "' + "11" * 48 + '"\nowner_pk_hash = ""\npqc_key_type = 2\n'
    )
    with pytest.raises(Exception, match="pqc_key_type: must be 1"):
        fuses.load(p)
    p.write_text(
        '[fuses]\nvendor_pk_hash = "' + "11" * 48 + '"\nowner_pk_hash = ""\npqc_key_type = 1\n'
    )
    f = fuses.load(p)
    assert f.pqc_key_type == 1 and f.lms_verify is False
