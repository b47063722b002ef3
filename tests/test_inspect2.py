"""inspect of a Caliptra 2.x bundle: PQC type, active keys, descriptors, fuse hashes, and the
runtime generation the output targets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import indep2
import pytest
from test_bundle2 import bundle

from imgtool.cli.main import main


@pytest.mark.parametrize("pqc", ["mldsa", "lms"])
def test_inspect_bundle2(tmp_path: Path, capsys: pytest.CaptureFixture[str], pqc: str) -> None:
    data, keys = bundle(pqc)
    f = tmp_path / "caliptra-fw.bin"
    f.write_bytes(data)
    capsys.readouterr()
    assert main(["inspect", str(f), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["bundle2"]
    assert d["pqc_key_type"] == (1 if pqc == "mldsa" else 3)
    assert "879608b9" in d["target"] and "127" in d["target"]
    assert (d["vendor_ecc_key_index"], d["vendor_pqc_key_index"]) == (2, 1)
    hashes = d["pqc_key_descriptor"]["key_hashes"]
    assert [h["sha384"] for h in hashes] == [hashlib.sha384(k).hexdigest() for k in keys.vendor_pqc]
    assert [h["selected"] for h in hashes].index(True) == 1
    assert d["vendor_pk_hash"]["hex"] == indep2.cmn2_vendor_pk_hash(data).hex()
    assert d["owner_pk_hash"]["hex"] == indep2.cmn2_owner_pk_hash(data).hex()
    assert [t["offset"] for t in d["toc"]] == [16956, 16956 + 64]
    assert main(["inspect", str(f)]) == 0
    text = capsys.readouterr().out
    assert "Caliptra 2.x firmware bundle" in text and "879608b9" in text


def test_inspect_manifest_and_flash_2x(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_verify2 import build

    _, man, flash = build("mldsa")
    for name, data in (("m.bin", man), ("f.bin", flash)):
        f = tmp_path / name
        f.write_bytes(data)
        capsys.readouterr()
        assert main(["inspect", str(f), "--json"]) == 0
        g = json.loads(capsys.readouterr().out)["gen2"]
        assert "879608b9" in g["target"]
        if name == "m.bin":
            assert g["imc_slots"] == 127 and g["entry_count"] == 3
            assert [e["fw_id"] for e in g["entries"]] == [2, 0x1000, 0x1001]
            assert g["entries"][0]["exec_bit"] == 2 and g["entries"][1]["load_stage"] == 2
        else:
            assert [i["identifier"] for i in g["images"]] == [0, 1, 2, 0x1000, 0x1001]
        assert main(["inspect", str(f)]) == 0
        assert "879608b9" in capsys.readouterr().out
