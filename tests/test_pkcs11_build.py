"""Issue 16: a manifest and an owner-signed bundle made with HSM keys verify.

A SoftHSM2 token holds the vendor and owner ECC keys, generated there by `cptra-imgtool keygen
--algo ecc --out pkcs11:... --pubkey-out`; the 1.x config names them by PKCS#11 URIs in its
ecc_priv_key fields (LMS keys and every public key are files). The vendor-signed bundle is
owner-signed with the token's owner FW key (`owner-sign-bundle`); create-auth-man /
create-auth-flash and `doit flash` build with the token keys; `verify` with the fuse values of
the bundle and with the config as anchors passes. The bundle's owner signatures are also read
back independently (tests/helpers/oem.py). Bad input (wrong PIN, missing token or object, a
URI where only a file can be) is one line, exit 2, with no PIN anywhere in the output."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from independent import ecc_pub_hw
from oem import owner_sigs_ok, parse, vendor_sigs_ok
from projects import KEY_NAMES, Project, ecc_keys, lms_keys, payload
from softhsm import Token, make_token

from imgtool.cli.main import main
from imgtool.keys import pkcs11

REPO = Path(__file__).resolve().parent.parent
SIZES = (40, 64, 33)
BAD_PIN = "wrong-pin-31337"
# the ECC signature slots of the ASPEED manifest (tests/helpers/independent.py offsets)
ECC_SLOTS = (164, 2024, 3740, 5456, 7172)


@dataclass
class Hsm:
    token: Token
    prj: Project
    pin_file: Path
    bad_pin_file: Path
    vendor_bundle: Path  # vendor-signed by the token's vnd-fw key, old owner part

    def uri(self, obj: str, pin_file: Path | None = None, module: bool = True) -> str:
        return self.token.uri(obj, pin_file or self.pin_file, module)

    def secrets(self) -> tuple[str, ...]:
        return (self.token.pin, BAD_PIN)


def _config_text(uris: dict[str, str], caliptra: str = "caliptra-fw.bin") -> str:
    text = (
        "[manifest_config]\nversion = 1\nflags = 1\nsecurity_version = 3\n"
        'prj_name = "hsm"\nformat = "aspeed"\nvendor_signature = "generate"\n\n'
    )
    for section, prefix in (
        ("vendor_fw_key_config", "vnd-fw"),
        ("vendor_man_key_config", "vnd-man"),
        ("owner_fw_key_config", "own-fw"),
        ("owner_man_key_config", "own-man"),
    ):
        text += (
            f'[{section}]\necc_pub_key = "{prefix}-ecc-pubk.pem"\n'
            f'ecc_priv_key = "{uris[prefix]}"\n'
            f'lms_pub_key = "{prefix}-lms-pubk.pem"\nlms_priv_key = "{prefix}-lms-prvk.pem"\n\n'
        )
    text += f'[image_runtime_list]\ncaliptra_file = "{caliptra}"\nmcu_file = "mcu.bin"\n\n'
    text += '[[image_metadata_list]]\nfile = "mcu.bin"\nsource = 1\nfw_id = 1\n'
    for i in range(len(SIZES)):
        text += f'\n[[image_metadata_list]]\nfile = "img{i}.bin"\nsource = 1\nfw_id = {i + 2}\n'
    return text


def _vendor_bundle(lab: Path, keys: Path, vnd_uri: str) -> bytes:
    """A sample bundle (demo.sample_bundle, file keys of a lab) whose vendor ECC key slot is
    the token's vnd-fw key, vendor-signed on the token (owner_sign.vendor_sign_lab)."""
    from imgtool import owner_sign
    from imgtool.demo import sample_bundle
    from imgtool.keys import ecc, lms
    from imgtool.signing import LocalLmsSigner, ecc_key_signer

    pub = ecc.load_public(keys / "vnd-fw-ecc-pubk.pem")
    return owner_sign.vendor_sign_lab(
        sample_bundle(lab),
        "sample",
        ecc_key_signer(vnd_uri, pub),
        ecc.public_to_hw(pub),
        LocalLmsSigner(keys / "vnd-fw-lms-prvk.pem", keys / "vnd-fw-lms-pubk.pem"),
        lms.load_public(keys / "vnd-fw-lms-pubk.pem").to_bytes(),
    )


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hsm]:
    root = tmp_path_factory.mktemp("hsm")
    with pytest.MonkeyPatch.context() as mp:
        pkcs11.reset_modules()
        mp.delenv(pkcs11.PIN_ENV, raising=False)
        mp.delenv(pkcs11.MODULE_ENV, raising=False)
        token = make_token(root, mp)
        pin_file, bad = root / "pin", root / "bad-pin"
        pin_file.write_text(token.pin + "\n")
        bad.write_text(BAD_PIN + "\n")
        keys, pre, out, lab = root / "keys", root / "prebuilt", root / "out", root / "lab"
        for d in (keys, pre, out):
            d.mkdir()
        lms_keys(keys)
        ecc_keys(lab)  # file keys only for the sample bundle's lab signatures
        for name in KEY_NAMES:
            for kind in ("prvk", "pubk"):
                shutil.copy(keys / f"{name}-lms-{kind}.pem", lab / f"{name}-lms-{kind}.pem")
        uris = {n: token.uri(f"{n}-ecc", pin_file) for n in KEY_NAMES}
        for name, uri in uris.items():
            pub = keys / f"{name}-ecc-pubk.pem"
            assert main(["keygen", "--algo", "ecc", "--out", uri, "--pubkey-out", str(pub)]) == 0
        (pre / "mcu.bin").write_bytes(b"MCU-RUNTIME-0123")
        for i, size in enumerate(SIZES):
            (pre / f"img{i}.bin").write_bytes(payload(i, size))
        vendor = root / "vendor-caliptra-fw.bin"
        vendor.write_bytes(_vendor_bundle(lab, keys, uris["vnd-fw"]))
        cfg = root / "hsm.toml"
        cfg.write_text(_config_text(uris))
        yield Hsm(token, Project(root, cfg, keys, pre, out), pin_file, bad, vendor)
        pkcs11.reset_modules()


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    got = capsys.readouterr()
    return rc, got.out, got.err


def _owner_sign(hsm: Hsm, capsys: pytest.CaptureFixture[str], cfg: Path, out: Path) -> tuple:
    args = ["owner-sign-bundle", "--cfg", str(cfg), "--key-dir", str(hsm.prj.keys)]
    return _run(capsys, *args, "--in", str(hsm.vendor_bundle), "--out", str(out))


@pytest.fixture(scope="module")
def bundle(hsm: Hsm) -> Path:
    """The vendor bundle owner-signed with the token's owner FW key, as the config's bundle."""
    out = hsm.prj.prebuilt / "caliptra-fw.bin"
    args = ["owner-sign-bundle", "--cfg", str(hsm.prj.cfg), "--key-dir", str(hsm.prj.keys)]
    assert main([*args, "--in", str(hsm.vendor_bundle), "--out", str(out)]) == 0
    return out


def _no_secret(hsm: Hsm, *texts: str) -> None:
    for t in texts:
        for s in hsm.secrets():
            assert s not in t


# ---------------------------------------------------------------------------- the test
def test_owner_sign_bundle_with_an_hsm_owner_key(
    hsm: Hsm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "oem-caliptra-fw.bin"
    rc, text, err = _owner_sign(hsm, capsys, hsm.prj.cfg, out)
    assert rc == 0, err
    own_uri = hsm.uri("own-fw-ecc")
    assert f"owner signed with {own_uri}" in text
    _no_secret(hsm, text, err)
    # independently: vendor signatures intact, owner signatures by the token's key
    p = parse(out.read_bytes())
    assert vendor_sigs_ok(p)
    keys = hsm.prj.keys
    lms_pub = (keys / "own-fw-lms-pubk.pem").read_bytes()
    assert owner_sigs_ok(p, ecc_pub_hw(keys / "own-fw-ecc-pubk.pem"), lms_pub)
    # and `verify` with the bundle's own fuse values
    fuses = tmp_path / "fuses.toml"
    assert main(["fuses", "--caliptra-fw", str(out), "--out", str(fuses)]) == 0
    rc, vout, _ = _run(capsys, "verify", str(out), "--fuses", str(fuses))
    assert rc == 0 and "PASS" in vout, vout


def test_manifest_and_flash_with_hsm_keys_verify(
    hsm: Hsm, bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prj = hsm.prj
    man, flash = tmp_path / "m.bin", tmp_path / "f.bin"
    rc, out, err = _run(capsys, "create-auth-man", *prj.args("--man", str(man)))
    assert rc == 0, err
    rc, out2, err2 = _run(
        capsys, "create-auth-flash", *prj.args("--man", str(tmp_path / "m2.bin"), "--flash",
                                              str(flash)),
    )  # fmt: skip
    assert rc == 0, err2
    _no_secret(hsm, out, err, out2, err2)
    fuses = tmp_path / "fuses.toml"
    assert main(["fuses", "--caliptra-fw", str(bundle), "--out", str(fuses)]) == 0
    for anchors in (
        ["--fuses", str(fuses)],
        ["--cfg", str(prj.cfg), "--key-dir", str(prj.keys), "--prebuilt-dir", str(prj.prebuilt)],
    ):
        rc, vout, _ = _run(capsys, "verify", str(flash), *anchors)
        assert rc == 0 and "PASS" in vout and "FAIL" not in vout, (anchors, vout)
    rc, vout, _ = _run(capsys, "verify", str(man), "--caliptra-fw", str(bundle), "--fuses",
                       str(fuses))  # fmt: skip
    assert rc == 0, vout
    # HSM ECDSA is randomized: the two manifests differ in the ECC signature slots only
    a, b = man.read_bytes(), (tmp_path / "m2.bin").read_bytes()
    assert len(a) == len(b) == 16004
    changed = {i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y}
    ecc_bytes = {i for off in ECC_SLOTS for i in range(off, off + 96)}
    assert changed and changed <= ecc_bytes
    # every ECC slot was signed (and so differs between the builds)
    assert all(changed & set(range(off, off + 96)) for off in ECC_SLOTS)


def test_doit_flash_with_hsm_keys_from_env(
    hsm: Hsm, bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The doit path, with URIs that name neither module nor PIN source: both from the
    environment. URIs are no file_dep (doit would refuse a missing file), and a second run is
    up to date."""
    prj = hsm.prj
    uris = {n: f"pkcs11:token={hsm.token.label};object={n}-ecc" for n in KEY_NAMES}
    cfg = tmp_path / "hsm-env.toml"
    cfg.write_text(_config_text(uris))
    dprj = Project(tmp_path, cfg, prj.keys, prj.prebuilt, tmp_path / "out")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        pkcs11.MODULE_ENV: hsm.token.module,
        pkcs11.PIN_ENV: hsm.token.pin,
    }

    def doit(*args: str) -> tuple[int, str]:
        r = subprocess.run(
            dprj.doit_cmd(*args), capture_output=True, text=True, env=env, timeout=300
        )
        return r.returncode, r.stdout + r.stderr

    rc, out = doit("flash")
    assert rc == 0, out
    _no_secret(hsm, out)
    ran = set(re.findall(r"^\.  (\S+)", out, re.M))
    assert {"sign:vnd_pub_sig_ecc", "sign:own_imc_sig_ecc", "manifest", "flash"} <= ran, out
    rc, again = doit("flash")
    assert rc == 0 and not re.findall(r"^\.  sign:", again, re.M), again
    flash = tmp_path / "out" / "hsm-flash-image.bin"
    fuses = tmp_path / "fuses.toml"
    assert main(["fuses", "--caliptra-fw", str(bundle), "--out", str(fuses)]) == 0
    rc, vout, _ = _run(capsys, "verify", str(flash), "--fuses", str(fuses))
    assert rc == 0 and "PASS" in vout, vout


# ---------------------------------------------------------------------------- bad input
def _edited(hsm: Hsm, tmp_path: Path, **uris: str) -> Path:
    base = {n: hsm.uri(f"{n}-ecc") for n in KEY_NAMES}
    cfg = tmp_path / "edited.toml"
    cfg.write_text(_config_text({**base, **uris}))
    return cfg


def _bad_cases(hsm: Hsm) -> dict[str, tuple[dict[str, str], str]]:
    mod = hsm.token.module
    return {
        "wrong PIN": ({"own-man": hsm.uri("own-man-ecc", hsm.bad_pin_file)}, "wrong PIN"),
        "missing token": (
            {
                "vnd-fw": f"pkcs11:token=nope;object=vnd-fw-ecc?module-path={mod}"
                f"&pin-source=file:{hsm.pin_file}"
            },
            "no such token",
        ),  # fmt: skip
        "missing object": ({"own-fw": hsm.uri("no-such-key")}, "no EC private key"),
        "another key": (
            {"vnd-man": hsm.uri("own-man-ecc")},
            "does not verify with the configured public key",
        ),
        "pin-value": (
            {"own-man": f"pkcs11:token=cptra;object=own-man-ecc?pin-value={BAD_PIN}"},
            "pin-value is refused",
        ),
    }


@pytest.mark.parametrize(
    "case", ["wrong PIN", "missing token", "missing object", "another key", "pin-value"]
)
def test_bad_token_input_is_one_line_exit_2(
    hsm: Hsm, bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    edit, why = _bad_cases(hsm)[case]
    cfg = _edited(hsm, tmp_path, **edit)
    prj = hsm.prj
    man = tmp_path / "m.bin"
    args = ["--cfg", str(cfg), "--key-dir", str(prj.keys), "--prebuilt-dir", str(prj.prebuilt)]
    for cmd in (["create-auth-man"], ["--debug", "create-auth-man"]):
        rc, out, err = _run(capsys, *cmd, *args, "--man", str(man))
        lines = [ln for ln in err.splitlines() if ln.startswith("cptra-imgtool: error:")]
        assert rc == 2 and len(lines) == 1 and why in lines[0], err
        if "--debug" not in cmd:
            assert len(err.strip().splitlines()) == 1, err
        _no_secret(hsm, out, err)
        assert not man.exists()


def test_owner_sign_with_a_wrong_pin_writes_nothing(
    hsm: Hsm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _edited(hsm, tmp_path, **{"own-fw": hsm.uri("own-fw-ecc", hsm.bad_pin_file)})
    out = tmp_path / "oem.bin"
    rc, text, err = _owner_sign(hsm, capsys, cfg, out)
    assert rc == 2 and "wrong PIN" in err and len(err.strip().splitlines()) == 1, err
    _no_secret(hsm, text, err)
    assert not out.exists()


@pytest.mark.parametrize(
    ("field", "why"),
    [
        ("ecc_pub_key", "the public key stays a PEM file"),
        ("lms_priv_key", "LMS keys cannot live on a PKCS#11 token"),
        ("lms_pub_key", "LMS keys cannot live on a PKCS#11 token"),
    ],
)
def test_uri_where_a_file_must_be(
    hsm: Hsm, tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, why: str
) -> None:
    cfg = tmp_path / "c.toml"
    text = hsm.prj.cfg.read_text()
    uri = hsm.uri("own-fw-ecc")
    old = re.search(rf'(?m)^{field} = "own-fw-[^"]*"$', text)
    assert old is not None
    cfg.write_text(text.replace(old.group(0), f'{field} = "{uri}"', 1))
    prj = hsm.prj
    for cmd in (
        ["create-auth-man", *prj.args("--man", str(tmp_path / "m.bin"))],
        ["owner-sign-bundle", "--cfg", str(cfg), "--key-dir", str(prj.keys), "--in",
         str(hsm.vendor_bundle), "--out", str(tmp_path / "o.bin")],
    ):  # fmt: skip
        cmd[cmd.index("--cfg") + 1] = str(cfg)
        rc, out, err = _run(capsys, *cmd)
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert f"owner_fw_key_config.{field}: a PKCS#11 URI here is not supported" in err
        assert why in err
        _no_secret(hsm, out, err)


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_build_command_in_parallel(
    hsm: Hsm, bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    """`cptra-imgtool build -n 2 -P process|thread`: signers in forked processes (after this
    process has used the token) or in threads sharing one loaded module."""
    prj = hsm.prj
    pkcs11.public_key(hsm.uri("own-fw-ecc"))  # the module is loaded and initialized here
    cfg = tmp_path / "hsm.toml"
    shutil.copy(prj.cfg, cfg)
    fuses = tmp_path / "fuses.toml"
    assert main(["fuses", "--caliptra-fw", str(bundle), "--out", str(fuses)]) == 0
    args = ["--cfg", str(cfg), "--key-dir", str(prj.keys), "--prebuilt-dir", str(prj.prebuilt)]
    flash = tmp_path / "f.bin"
    rc, out, err = _run(capsys, "build", *args, "--flash", str(flash), "-n", "2", "-P", mode)
    assert rc == 0, out + err
    _no_secret(hsm, out, err)
    rc, vout, _ = _run(capsys, "verify", str(flash), "--fuses", str(fuses))
    assert rc == 0 and "PASS" in vout, vout


# ---------------------------------------------------------------------------- new-project
def test_new_project_keeps_a_vendor_uri_and_refuses_owner_uris(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reference whose vendor private keys are on a token: new-project keeps the URIs in the
    new config (nothing copied, nothing named after them); owner keys are generated as files,
    so an owner URI (or a vendor URI with --vendor-keys) is one line, exit 2."""
    import tomllib

    from oem import vendor_tree

    t = vendor_tree(tmp_path / "tree")
    ref_cfg = t.root / "config" / "vendorref-ecc-manifest.toml"
    text = ref_cfg.read_text()
    uri = "pkcs11:token=vendor;object=vnd-fw-ecc"
    text = text.replace('ecc_priv_key = "vnd-fw-ecc-prvk.pem"', f'ecc_priv_key = "{uri}"', 1)
    ref_cfg.write_text(text)
    monkeypatch.chdir(t.root)
    rc, out, err = _run(capsys, "new-project", "oem", "--from", "vendorref", "--ecc-only")
    assert rc == 0, err
    new = tomllib.loads((t.root / "config" / "oem.toml").read_text())
    assert new["vendor_fw_key_config"]["ecc_priv_key"] == uri
    made = [p.name for p in (t.root / "key" / "oem").iterdir()]
    assert "own-fw-ecc-prvk.pem" in made and not [n for n in made if "pkcs11" in n]
    # an owner key on a token: new-project cannot generate it
    owner = text.replace('ecc_priv_key = "own-fw-ecc-prvk.pem"', f'ecc_priv_key = "{uri}"', 1)
    ref_cfg.write_text(owner)
    rc, out, err = _run(capsys, "new-project", "oem2", "--from", "vendorref", "--ecc-only")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "owner_fw_key_config.ecc_priv_key: a key on a PKCS#11 token" in err
    ref_cfg.write_text(text)
    rc, out, err = _run(
        capsys, "new-project", "oem3", "--from", "vendorref", "--ecc-only", "--vendor-keys"
    )
    assert rc == 2 and "vendor_fw_key_config.ecc_priv_key: a key on a PKCS#11 token" in err, err
    assert not (t.root / "config" / "oem2.toml").exists()
    assert not (t.root / "config" / "oem3.toml").exists()
