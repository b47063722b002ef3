"""Config loading: the reference schema unchanged, defaults, key selection."""

from __future__ import annotations

from pathlib import Path

import pytest
from projects import make_project

from imgtool.build import key_selection, plan
from imgtool.config import Format, VendorSignature, default_key_dir, load_config


def test_all_reference_configs_load(ref: Path) -> None:
    for cfg in sorted((ref / "config").glob("*.toml")):
        c = load_config(cfg, check_files=False)
        assert c.format is Format.ASPEED and c.vendor_signature is VendorSignature.PREBUILT
        assert c.version == 1 and c.security_version == 1 and len(c.images) == 14
        assert [i.fw_id for i in c.images] == list(range(1, 15))
        assert c.images[9].flags == 0x40000001 and c.images[0].flags == 1


def test_key_selection_with_helpers(ref: Path) -> None:
    cfg = ref / "config" / "ast2700a1-default-ecc-lms-fw-man-sign-helper-byfile-manifest.toml"
    c = load_config(cfg, check_files=False, key_dir=ref / "key" / "ast2700a1-default")
    assert c.helpers.by_file and c.helpers.owner_lms_man is not None
    sel = key_selection(c)
    assert all(s.enabled for s in sel.values())
    kinds = {sp.slot: sp.kind for sp in plan(c).slots}
    assert kinds == {
        "vnd_pub_sig_ecc": "prebuilt",
        "vnd_pub_sig_lms": "prebuilt",
        "own_pub_sig_ecc": "helper",
        "own_svn_sig_ecc": "helper",
        "own_imc_sig_ecc": "helper",
        "own_pub_sig_lms": "helper",
        "own_svn_sig_lms": "helper",
        "own_imc_sig_lms": "helper",
    }


def test_default_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_key_dir("p") == Path("keys/p")
    (tmp_path / "key" / "p").mkdir(parents=True)
    assert default_key_dir("p") == Path("key/p")
    (tmp_path / "keys" / "p").mkdir(parents=True)
    assert default_key_dir("p") == Path("keys/p")


def test_caliptra1_defaults_to_generated_vendor_signature(tmp_path: Path) -> None:
    prj = make_project(tmp_path, fmt="caliptra-1")
    c = load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)
    assert c.format is Format.CALIPTRA1
    assert {sp.slot for sp in plan(c).slots} == {
        "vnd_pub_sig_ecc",
        "own_pub_sig_ecc",
        "own_imc_sig_ecc",
    }


def test_incomplete_key_set_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    prj = make_project(tmp_path)
    text = prj.cfg.read_text().replace('ecc_priv_key = "own-man-ecc-prvk.pem"\n', "")
    prj.cfg.write_text(text)
    c = load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)
    with caplog.at_level("WARNING", logger="imgtool"):
        sel = key_selection(c, warn=True)
    assert not sel[("owner", "ecc")].enabled
    assert "owner_man_key_config.ecc_priv_key" in caplog.text


def test_newer_per_image_svn_is_accepted_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prj = make_project(tmp_path)
    text = prj.cfg.read_text().replace("fw_id = 1\n", "fw_id = 1\nsvn = 1\n", 1)
    prj.cfg.write_text(text)
    with caplog.at_level("WARNING", logger="imgtool"):
        c = load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)
    assert c.images[0].fw_id == 1
    assert "image_metadata_list[0].svn" in caplog.text and "ignored" in caplog.text
