"""Config loading: the reference schema unchanged, defaults, key selection."""

from __future__ import annotations

from pathlib import Path

import pytest
from projects import make_project

from imgtool.build import key_selection, plan
from imgtool.cli.main import main
from imgtool.config import Format, VendorSignature, default_key_dir, load_config
from imgtool.errors import ConfigError


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
    names = ["a.pem", "b.pem"]
    assert default_key_dir("p", names)[0] == Path("keys/p")
    (tmp_path / "key" / "p").mkdir(parents=True)
    assert default_key_dir("p", names)[0] == Path("key/p")
    # an empty keys/p/ does not hide a populated key/p/
    (tmp_path / "keys" / "p").mkdir(parents=True)
    for n in names:
        (tmp_path / "key" / "p" / n).write_text("x")
    path, why = default_key_dir("p", names)
    assert path == Path("key/p") and "2 of the 2" in why and "keys/p/ only 0" in why
    # both populated: ours wins, and the reason says the other one exists
    for n in names:
        (tmp_path / "keys" / "p" / n).write_text("x")
    path, why = default_key_dir("p", names)
    assert path == Path("keys/p") and "key/p/ also exists" in why


def test_key_folder_choice_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A project in the reference layout (key/<prj>/) plus an empty keys/<prj>/: the build uses
    key/<prj>/ and --debug says which folder and why."""
    prj = make_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "key").mkdir()
    prj.keys.rename(tmp_path / "key" / "test")
    (tmp_path / "keys" / "test").mkdir(parents=True)
    args = ["--cfg", str(prj.cfg), "--prebuilt-dir", str(prj.prebuilt), "--man", "m.bin"]
    assert main(["create-auth-man", *args, "--debug"]) == 0
    err = capsys.readouterr().err
    assert "key directory: key/test/ (holds 8 of the 8 configured key files" in err


def test_manifest_lengths_match_the_layouts() -> None:
    from imgtool.config import MANIFEST_LEN
    from imgtool.formats import manifest1 as manifest

    assert MANIFEST_LEN == {f: manifest.file_length(f) for f in Format}


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


def test_per_image_svn_enters_the_flags(tmp_path: Path) -> None:
    prj = make_project(tmp_path)
    text = prj.cfg.read_text().replace("fw_id = 1\n", "fw_id = 1\nsvn = 1\n", 1)
    text = text.replace("fw_id = 4\n", "fw_id = 4\nsvn = 255\n", 1)
    prj.cfg.write_text(text)
    c = load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)
    assert [i.svn for i in c.images] == [1, 0, 0, 255, 0, 0]
    assert c.images[0].flags == 0x00010001 and c.images[3].flags == 0x00FF0005
    assert c.warnings == ()


@pytest.mark.parametrize("value", ["256", "-1"])
def test_per_image_svn_range(tmp_path: Path, value: str) -> None:
    prj = make_project(tmp_path)
    prj.cfg.write_text(prj.cfg.read_text().replace("fw_id = 2\n", f"fw_id = 2\nsvn = {value}\n"))
    with pytest.raises(ConfigError, match=r"image_metadata_list\[1\]\.svn: must be 0\.\.255"):
        load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)


@pytest.mark.parametrize(
    "where, key, hint",
    [
        ("flags = 0\n", "flagz = 1", "did you mean 'flags'?"),
        ("flags = 0\n", "padding_align_sise = 4", "did you mean 'padding_align_size'?"),
        ("fw_id = 2\n", "load_stag = 1", "did you mean 'load_stage'?"),
        ('ecc_pub_key = "own-fw-ecc-pubk.pem"\n', 'ecc_pubkey = "x"', "'ecc_pub_key'"),
    ],
)
def test_misspelled_keys_name_the_nearest(tmp_path: Path, where: str, key: str, hint: str) -> None:
    prj = make_project(tmp_path)
    prj.cfg.write_text(prj.cfg.read_text().replace(where, f"{where}{key}\n", 1))
    with pytest.raises(ConfigError, match="unknown key") as err:
        load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)
    assert hint in str(err.value) and key.split(" ")[0] in str(err.value)


def test_unknown_sections_warn_misspelled_sections_fail(tmp_path: Path) -> None:
    prj = make_project(tmp_path)
    base = prj.cfg.read_text()
    # the reference tool's genimg.sh writes [authtool]: accepted, with a warning
    prj.cfg.write_text(base + '\n[authtool]\ncaliptra_sw_auth = "x"\ncaliptra_mcu_sw = "y"\n')
    c = load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)
    assert any("[authtool]: unknown section, ignored" in w for w in c.warnings)
    prj.cfg.write_text(base.replace("[sign_helper]", "[sign_helpers]") + "\n[sign_helpr]\n")
    with pytest.raises(ConfigError, match=r"\[sign_helpr\]: unknown section \(did you mean"):
        load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)


def test_caliptra_2x_fields_warn_in_a_1x_build(tmp_path: Path) -> None:
    prj = make_project(tmp_path)
    text = prj.cfg.read_text().replace("fw_id = 2\n", "fw_id = 2\nexec_bit = 3\n", 1)
    text = text.replace(
        'ecc_pub_key = "own-fw-ecc-pubk.pem"\n',
        'ecc_pub_key = "own-fw-ecc-pubk.pem"\nmldsa_pub_key = "own-fw-mldsa-pubk.pem"\n',
    )
    prj.cfg.write_text(text)
    c = load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)
    assert sum("a Caliptra 2.x field" in w for w in c.warnings) == 2


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "86401"])
def test_helper_timeout_must_be_finite_and_positive(tmp_path: Path, value: str) -> None:
    prj = make_project(tmp_path)
    prj.cfg.write_text(prj.cfg.read_text() + f"\n[sign_helper]\ntimeout = {value}\n")
    with pytest.raises(ConfigError, match="sign_helper.timeout: must be a number of seconds"):
        load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)


@pytest.mark.parametrize(
    "extra, expect",
    [
        ("manifest_overrides_presigned_key_and_signature = false", VendorSignature.GENERATE),
        ("manifest_overrides_presigned_key_and_signature = true", VendorSignature.PREBUILT),
        ("", VendorSignature.PREBUILT),
    ],
)
def test_override_switch(tmp_path: Path, extra: str, expect: VendorSignature) -> None:
    prj = make_project(tmp_path)
    text = prj.cfg.read_text().replace('vendor_signature = "generate"\n', extra + "\n")
    prj.cfg.write_text(text)
    c = load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)
    assert c.vendor_signature is expect


def test_override_switch_contradicting_vendor_signature(tmp_path: Path) -> None:
    prj = make_project(
        tmp_path, extra_manifest="manifest_overrides_presigned_key_and_signature = true"
    )
    with pytest.raises(ConfigError, match="contradicts vendor_signature = 'generate'"):
        load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)


def test_vendor_sig_dir_falls_back_to_src_vnd_sig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    prj = make_project(tmp_path)
    c = load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)
    assert c.vendor_sig_dir == Path("vnd_sig") and "none of the candidates" in c.vendor_sig_reason
    (tmp_path / "src" / "vnd_sig").mkdir(parents=True)
    (tmp_path / "src" / "vnd_sig" / "vnd_ecc_sig.der").write_bytes(b"x")
    c = load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)
    assert c.vendor_sig_dir == Path("src/vnd_sig") and "first of vnd_sig/, src/vnd_sig/" in (
        c.vendor_sig_reason
    )
    (tmp_path / "vnd_sig").mkdir()
    (tmp_path / "vnd_sig" / "vnd_lms_sig.der").write_bytes(b"x")
    assert load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt).vendor_sig_dir == (
        Path("vnd_sig")
    )
    c = load_config(
        prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt, vnd_sig_dir=tmp_path / "elsewhere"
    )
    assert c.vendor_sig_dir == tmp_path / "elsewhere" and c.vendor_sig_dirs == (c.vendor_sig_dir,)


# ---------------------------------------------------------------------------- PKCS#11 URIs
URI = "pkcs11:token=cptra;object=own-man-ecc?pin-source=file:/run/pin"


def _hsm_cfg(tmp_path: Path, field: str = "ecc_priv_key", value: str = URI) -> Path:
    prj = make_project(tmp_path)
    text = prj.cfg.read_text()
    old = {
        "ecc_priv_key": 'ecc_priv_key = "own-man-ecc-prvk.pem"',
        "ecc_pub_key": 'ecc_pub_key = "own-man-ecc-pubk.pem"',
    }[field]
    assert text.count(old) == 1
    prj.cfg.write_text(text.replace(old, f'{field} = "{value}"'))
    (prj.keys / "own-man-ecc-prvk.pem").unlink()  # the key is on the token now
    return prj.cfg


def test_ecc_private_key_uri_is_kept_not_joined(tmp_path: Path) -> None:
    from imgtool.config import HsmKey

    cfg_path = _hsm_cfg(tmp_path)
    keys = tmp_path / "keys"
    c = load_config(cfg_path, key_dir=keys, prebuilt_dir=tmp_path / "prebuilt")
    assert c.owner_man.ecc_priv == HsmKey(URI) and str(c.owner_man.ecc_priv) == URI
    assert c.owner_man.ecc_pub == keys / "own-man-ecc-pubk.pem"
    assert c.hsm_keys() == [HsmKey(URI)]
    # no file dependency, no path holding the URI (never joined onto the key directory)
    assert all(isinstance(p, Path) and "pkcs11" not in str(p) for p in c.key_files())
    assert len(c.key_files()) == 7
    # the signing plan names the URI for both owner manifest slots and no key file for it
    slots = {sp.slot: sp for sp in plan(c).slots}
    sp = slots["own_imc_sig_ecc"]
    assert sp.kind == "key" and sp.key is None and sp.uri == URI and sp.signing_key == URI
    assert sp.inputs == [keys / "own-man-ecc-pubk.pem"]
    assert slots["own_pub_sig_ecc"].key == keys / "own-fw-ecc-prvk.pem"


def test_uri_is_not_a_key_dir_vote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """default_key_dir counts key files only: a URI never makes key/<prj>/ win."""
    cfg_path = _hsm_cfg(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "key" / "test").mkdir(parents=True)
    (tmp_path / "keys" / "test").mkdir(parents=True)
    c = load_config(cfg_path, prebuilt_dir=tmp_path / "prebuilt", check_files=False)
    assert c.key_dir == Path("keys/test") and "of the 7 configured key files" in c.key_dir_reason


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("ecc_pub_key", URI, "the public key stays a PEM file"),
        ("ecc_priv_key", "PKCS11:token=a;object=b", "lower case"),
        ("ecc_priv_key", "pkcs11:token=a;object=b?pin-value=s3cr3t", "pin-value is refused"),
        ("ecc_priv_key", "pkcs11:token=a", "names no key"),
        ("ecc_priv_key", "pkcs11:token=a;object=b;bogus=1", "unknown attribute"),
    ],
)
def test_bad_uri_in_config(tmp_path: Path, field: str, value: str, why: str) -> None:
    cfg_path = _hsm_cfg(tmp_path, field, value)
    for check in (True, False):
        with pytest.raises(ConfigError) as e:
            load_config(
                cfg_path, key_dir=tmp_path / "keys", prebuilt_dir=tmp_path / "prebuilt",
                check_files=check, private_keys=check,
            )  # fmt: skip
        msg = str(e.value)
        assert f"owner_man_key_config.{field}:" in msg and why in msg and "\n" not in msg
        assert "s3cr3t" not in msg


def test_uri_in_lms_fields_refused(tmp_path: Path) -> None:
    prj = make_project(tmp_path, lms=True)
    text = prj.cfg.read_text().replace('"own-fw-lms-prvk.pem"', f'"{URI}"', 1)
    prj.cfg.write_text(text)
    with pytest.raises(ConfigError, match="LMS keys cannot live on a PKCS#11 token"):
        load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)


def test_load_config_leaves_a_parsed_toml_unchanged(tmp_path: Path) -> None:
    """doit parses the config once (is_2x and the loader share it): the loader must not change
    the dict it is given, and must load the same config as from the file."""
    import copy

    from imgtool.config import read_toml

    prj = make_project(tmp_path)
    parsed = read_toml(prj.cfg)
    before = copy.deepcopy(parsed)
    a = load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt, parsed=parsed)
    assert parsed == before
    assert a == load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)


@pytest.mark.parametrize("value", [(16 << 20) + 1, 2**31, 2**32 - 1])
def test_padding_align_size_is_bounded(tmp_path: Path, value: int) -> None:
    """Every image is padded to this: 2^31 made gigabytes of padded copies (and, in 2.x, a
    MemoryError). One line naming the field, before any image is read."""
    prj = make_project(tmp_path)
    text = prj.cfg.read_text()
    prj.cfg.write_text(
        text.replace("[manifest_config]\n", f"[manifest_config]\npadding_align_size = {value}\n", 1)
    )
    with pytest.raises(
        ConfigError, match=r"manifest_config\.padding_align_size: must be 0 \(off\) to"
    ):
        load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)
    prj.cfg.write_text(
        text.replace(
            "[manifest_config]\n", f"[manifest_config]\npadding_align_size = {16 << 20}\n", 1
        )
    )
    assert (
        load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt).padding_align_size
        == 16 << 20
    )


def test_a_private_key_is_never_an_image(tmp_path: Path) -> None:
    """An image that is a configured private key (by path, symlink or hard link), or any file
    that starts as a PEM private key, would ship the key in the flash image: one line naming the
    image field."""
    import os
    import shutil

    prj = make_project(tmp_path)
    text = prj.cfg.read_text()
    priv = prj.keys / "own-man-ecc-prvk.pem"
    os.symlink(priv, prj.prebuilt / "link.bin")
    os.link(priv, prj.prebuilt / "hard.bin")
    shutil.copy(priv, prj.prebuilt / "copy.bin")  # not the configured file: caught by its PEM head
    for name in (f"../{prj.keys.name}/own-man-ecc-prvk.pem", "link.bin", "hard.bin", "copy.bin"):
        prj.cfg.write_text(text.replace('file = "img1.bin"', f'file = "{name}"', 1))
        with pytest.raises(ConfigError, match=r"image_metadata_list\[\d+\]\.file: .*would ship"):
            load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)


def test_prj_name_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    """re.match with "$" let "p\\n" through (out/p\\n/, two-line errors): fullmatch."""
    prj = make_project(tmp_path)
    text = prj.cfg.read_text()
    assert 'prj_name = "test"' in text
    prj.cfg.write_text(text.replace('prj_name = "test"', 'prj_name = "test\\n"', 1))
    with pytest.raises(ConfigError, match="manifest_config.prj_name: not a plain name"):
        load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)


def test_unconfigured_private_keys_are_never_images(tmp_path: Path) -> None:
    """Keys the config does not name: anything in the key directory, and DER or raw ML-DSA-87
    private keys by content (keygen leaves them beside the keys a config uses)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from imgtool.keys import mldsa

    prj = make_project(tmp_path)
    text = prj.cfg.read_text()
    (prj.keys / "spare.bin").write_bytes(b"anything")
    der = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (prj.prebuilt / "k.der").write_bytes(der)
    priv, _ = mldsa.generate_keypair(tmp_path / "m", seed=bytes(32))
    (prj.prebuilt / "m.bin").write_bytes(priv.read_bytes())
    (prj.prebuilt / "same-size.bin").write_bytes(bytes(range(256)) * 19 + bytes(32))  # 4896 B
    cases = {
        f"../{prj.keys.name}/spare.bin": "in the key directory",
        "k.der": "a DER private key",
        "m.bin": "a raw ML-DSA-87 private key",
    }
    for name, why in cases.items():
        prj.cfg.write_text(text.replace('file = "img1.bin"', f'file = "{name}"', 1))
        with pytest.raises(ConfigError, match=why):
            load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)
    prj.cfg.write_text(text.replace('file = "img1.bin"', 'file = "same-size.bin"', 1))
    load_config(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)  # 4896 bytes, no key


def test_one_folder_for_keys_and_images_still_builds(tmp_path: Path) -> None:
    """--key-dir and --prebuilt-dir may be the same folder (a flat project): its images are not
    refused for being "in the key directory"; a private key among them still is (content)."""
    import shutil

    prj = make_project(tmp_path)
    flat = tmp_path / "flat"
    shutil.copytree(prj.keys, flat)
    shutil.copytree(prj.prebuilt, flat, dirs_exist_ok=True)
    cfg = load_config(prj.cfg, key_dir=flat, prebuilt_dir=flat)
    assert all(p.parent == flat for _, p in cfg.input_files())
    text = prj.cfg.read_text()
    prj.cfg.write_text(text.replace('file = "img1.bin"', 'file = "own-man-ecc-prvk.pem"', 1))
    with pytest.raises(ConfigError, match="would ship in the flash image"):
        load_config(prj.cfg, key_dir=flat, prebuilt_dir=flat)
