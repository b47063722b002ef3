"""Caliptra 2.x builds whose signatures do not all come from key files in the key directory:
[sign_helper] commands (stdin and by-file; `cptra-imgtool sign-helper --key-file K --algo
ecc|lms|mldsa` as the helper) and ECC keys on a PKCS#11 token (SoftHSM2).

With helpers standing in for the owner private keys (moved out of the key directory), the
manifest is byte-identical to the local-key build (ECDSA RFC 6979, deterministic ML-DSA, sparse
demo LMS keys). A helper that returns a foreign signature is one line, exit 2, naming the slot,
and nothing is written. Through doit a changed helper command re-runs only the signatures it
makes. A token ECC key builds and `verify --cfg` passes. The -2x commands refuse outputs that
would overwrite an input.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import indep2
import pytest
from helpers.projects import lms_keys
from helpers.projects2 import Project2, make_project2

from imgtool.cli.main import main
from imgtool.keys import ecc, mldsa

REPO = Path(__file__).resolve().parent.parent
PQC_ARG = {"mldsa": "1", "lms": "3"}
EXT = {"ecc": "pem", "lms": "pem", "mldsa": "bin"}
OWNER = {"fw": "owner_fw_key_config", "man": "owner_man_key_config"}
HELPER_SIGS = {f"sign:own_{p}_sig_{a}" for p in ("pub", "imc") for a in ("ecc", "pqc")}


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def _helper_cmd(key: Path, algo: str, *extra: str) -> str:
    return " ".join([sys.executable, "-m", "imgtool", "sign-helper", "--key-file", str(key),
                     "--algo", algo, *extra])  # fmt: skip


def with_owner_helpers(
    p: Project2,
    by_file: bool,
    side: Path | None = None,
    keys: dict[str, Path] | None = None,
    parties: tuple[str, ...] = ("owner",),
) -> Path:
    """Move the owner (or ``parties``') private keys out of the key dir and drop them from the
    config; a [sign_helper] command per key and algorithm signs instead (``keys`` overrides the
    key a helper uses, by "<role>-<algo>"). Returns the helpers' key directory."""
    side = side or p.root / "helper-keys"
    side.mkdir(exist_ok=True)
    body = "\n[sign_helper]\n"
    for party in parties:
        for role in OWNER:
            for algo in ("ecc", "lms", "mldsa"):
                prefix = "own" if party == "owner" else "vnd"
                name = f"{prefix}-{role}-{algo}-prvk.{EXT[algo]}"
                _edit(p.cfg, f'{algo}_priv_key = "{name}"\n', "")
                if (p.keys / name).exists():
                    shutil.move(p.keys / name, side / name)
                    pub = name.replace("-prvk.", "-pubk.")
                    shutil.copy(p.keys / pub, side / pub)  # the LMS helper looks for it there
                key = (keys or {}).get(f"{role}-{algo}", side / name)
                body += f'{party}_{algo}_{role}_key_sign_helper = "{_helper_cmd(key, algo)}"\n'
    body += f"by_file = {'true' if by_file else 'false'}\n"
    p.cfg.write_text(p.cfg.read_text() + body)
    return side


def man_2x(p: Project2, pqc: str, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """create-auth-man-2x in this process; returns stderr (asserts exit 0)."""
    capsys.readouterr()
    rc = main(["create-auth-man-2x", *p.args(PQC_ARG[pqc]), "--man", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    return err


def one_line_exit2(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> str:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    # (sparse demo LMS keys warn, one line each, before the error)
    lines = [x for x in err.strip().splitlines() if not x.startswith("cptra-imgtool: warning:")]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- helpers
@pytest.mark.parametrize("by_file", [False, True], ids=["stdin", "by-file"])
@pytest.mark.parametrize("pqc", ["mldsa", "lms"])
def test_helpers_give_the_local_build(
    tmp_path: Path, pqc: str, by_file: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    p = make_project2(tmp_path, "ast2705")
    local = tmp_path / "local.bin"
    man_2x(p, pqc, local, capsys)
    with_owner_helpers(p, by_file)
    assert not list(p.keys.glob("own-*-prvk.*"))  # only the helpers can sign for the owner
    via = tmp_path / "helpers.bin"
    man_2x(p, pqc, via, capsys)
    assert via.read_bytes() == local.read_bytes()
    # and the owner signatures are really there: independently verified
    man = via.read_bytes()
    cov = indep2.atm2_covered(man)
    for slot, role, what in (("own_pub_sig", "fw", "owner_pub"),
                             ("own_imc_sig", "man", "owner_imc")):  # fmt: skip
        e = indep2.atm2_field(man, f"{slot}_ecc", 96)
        pub = ecc.public_to_hw(ecc.load_public(p.keys / f"own-{role}-ecc-pubk.pem"))
        assert indep2.ecc_verify_hw(pub, cov[what], e)
        q = indep2.atm2_field(man, f"{slot}_pqc", 4628)
        if pqc == "mldsa":
            mpub = (p.keys / f"own-{role}-mldsa-pubk.bin").read_bytes()
            assert indep2.mldsa_verify_dilithium(mpub, cov[what], q[:4627])
        else:
            lpub = (p.keys / f"own-{role}-lms-pubk.pem").read_bytes()
            assert indep2.lms_verify(lpub, cov[what], q[:1620])


def test_vendor_helpers_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """2.x has no prebuilt vendor signatures: vendor_* helpers stand in for the vendor keys."""
    p = make_project2(tmp_path, "ast2755")
    local = tmp_path / "local.bin"
    man_2x(p, "mldsa", local, capsys)
    with_owner_helpers(p, by_file=True, parties=("vendor", "owner"))
    assert not list(p.keys.glob("*-prvk.*"))
    via = tmp_path / "helpers.bin"
    man_2x(p, "mldsa", via, capsys)
    assert via.read_bytes() == local.read_bytes()


def _foreign_keys(d: Path) -> dict[str, Path]:
    d.mkdir()
    ecc.generate_keypair(d / "x-ecc")
    mldsa.generate_keypair(d / "x-mldsa", seed=hashlib.sha256(b"foreign").digest())
    lms_keys(d)  # own-fw-lms-prvk.pem and its public key beside it, another key
    return {
        "man-ecc": d / "x-ecc-prvk.pem",
        "fw-mldsa": d / "x-mldsa-prvk.bin",
        "fw-lms": d / "own-fw-lms-prvk.pem",
    }


@pytest.mark.parametrize(
    ("pqc", "role_algo", "slot", "field"),
    [
        ("mldsa", "man-ecc", "own_imc_sig", "sign_helper.owner_ecc_man_key_sign_helper"),
        ("mldsa", "fw-mldsa", "own_pub_sig", "sign_helper.owner_mldsa_fw_key_sign_helper"),
        ("lms", "fw-lms", "own_pub_sig", "sign_helper.owner_lms_fw_key_sign_helper"),
    ],
)
def test_foreign_helper_signature_is_refused(
    tmp_path: Path,
    pqc: str,
    role_algo: str,
    slot: str,
    field: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    p = make_project2(tmp_path / "p", "ast2705")
    foreign = _foreign_keys(tmp_path / "foreign")
    with_owner_helpers(p, by_file=role_algo != "man-ecc", keys={role_algo: foreign[role_algo]})
    out = tmp_path / "m.bin"
    line = one_line_exit2(
        capsys, ["create-auth-man-2x", *p.args(PQC_ARG[pqc]), "--man", str(out)], field,
        "does not verify",
    )  # fmt: skip
    assert line.startswith(f"cptra-imgtool: error: {slot}: "), line
    assert not out.exists()
    # through doit (cptra-imgtool build): the same, exit 2
    r = build(p, "manifest", pqc=pqc, ok=False)
    assert r.returncode == 2
    assert f"{slot}: {field}" in r.stdout + r.stderr


# ----------------------------------------------------------------------------- doit
def build(
    p: Project2, *args: str, pqc: str = "mldsa", ok: bool = True
) -> subprocess.CompletedProcess[str]:
    """`cptra-imgtool build` (doit) on the project, in its root."""
    cmd = [sys.executable, "-m", "imgtool", "build", "--cfg", str(p.cfg), "--key-dir",
           str(p.keys), "--prebuilt-dir", str(p.prebuilt), "--pqc-key-type", PQC_ARG[pqc],
           *args]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=p.root, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert (r.returncode == 0) == ok, r.stdout + r.stderr
    return r


def ran(r: subprocess.CompletedProcess[str]) -> set[str]:
    return set(re.findall(r"^\.  (\S+)", r.stdout, re.M))


@pytest.mark.parametrize("pqc", ["mldsa", "lms"])
def test_doit_reruns_only_the_signatures_of_a_changed_helper(
    tmp_path: Path, pqc: str, capsys: pytest.CaptureFixture[str]
) -> None:
    p = make_project2(tmp_path, "ast2705")
    local = tmp_path / "local.bin"
    man_2x(p, pqc, local, capsys)
    side = with_owner_helpers(p, by_file=False)
    r = build(p, "manifest", pqc=pqc)
    assert HELPER_SIGS <= ran(r)
    man = p.root / "out" / "ast2705-test-auth-manifest.bin"
    assert man.read_bytes() == local.read_bytes()
    assert ran(build(p, "manifest", pqc=pqc)) == set()
    # another command line for the owner MAN ECC helper (same key, adds a --pubkey check): that
    # signature is made again; its bytes are the same, so nothing after it runs
    pub = p.keys / "own-man-ecc-pubk.pem"
    old = f'owner_ecc_man_key_sign_helper = "{_helper_cmd(side / "own-man-ecc-prvk.pem", "ecc")}'
    _edit(p.cfg, old, f"{old} --pubkey {pub}")
    assert ran(build(p, "manifest", pqc=pqc)) == {"sign:own_imc_sig_ecc"}
    # the FW key's PQC helper
    algo = pqc
    key = side / f"own-fw-{algo}-prvk.{EXT[algo]}"
    old = f'owner_{algo}_fw_key_sign_helper = "{_helper_cmd(key, algo)}'
    _edit(p.cfg, old, f"{old} --key fw")
    assert ran(build(p, "manifest", pqc=pqc)) == {"sign:own_pub_sig_pqc"}
    # the other algorithm's helper does not sign in this build: nothing re-runs
    other = "lms" if pqc == "mldsa" else "mldsa"
    key = side / f"own-fw-{other}-prvk.{EXT[other]}"
    old = f'owner_{other}_fw_key_sign_helper = "{_helper_cmd(key, other)}'
    _edit(p.cfg, old, f"{old} --key fw")
    assert ran(build(p, "manifest", pqc=pqc)) == set()
    # by_file applies to every helper: all four owner signatures, nothing of the vendor's
    _edit(p.cfg, "by_file = false", "by_file = true")
    assert ran(build(p, "manifest", pqc=pqc)) == HELPER_SIGS
    assert man.read_bytes() == local.read_bytes()
    # a helper removed while its private key is back in the key dir: the key signs again
    for role in ("fw", "man"):
        shutil.copy(side / f"own-{role}-ecc-prvk.pem", p.keys)
    text = p.cfg.read_text()
    text = re.sub(r"owner_ecc_(fw|man)_key_sign_helper = .*\n", "", text)
    for role, section in OWNER.items():
        text = text.replace(
            f"[{section}]\n", f'[{section}]\necc_priv_key = "own-{role}-ecc-prvk.pem"\n'
        )
    p.cfg.write_text(text)
    assert ran(build(p, "manifest", pqc=pqc)) == {"sign:own_pub_sig_ecc", "sign:own_imc_sig_ecc"}
    assert man.read_bytes() == local.read_bytes()


def test_doit_helper_slot_without_private_key_gets_a_task(tmp_path: Path) -> None:
    """A slot whose private key is absent but has a helper is signed (not left zero)."""
    p = make_project2(tmp_path, "ast2705")
    _edit(p.cfg, 'mldsa_priv_key = "own-man-mldsa-prvk.bin"\n', "")
    r = build(p, "list", "--all")
    assert "sign:own_imc_sig_pqc" not in r.stdout
    key = p.keys / "own-man-mldsa-prvk.bin"
    p.cfg.write_text(p.cfg.read_text() + "\n[sign_helper]\nowner_mldsa_man_key_sign_helper = "
                     f'"{_helper_cmd(key, "mldsa")}"\n')  # fmt: skip
    r = build(p, "list", "--all")
    assert "sign:own_imc_sig_pqc" in r.stdout


# ----------------------------------------------------------------------------- outputs
def test_2x_commands_refuse_outputs_that_overwrite_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default outputs (out/...) would land here
    p = make_project2(tmp_path, "ast2705")
    img = p.prebuilt / "soc-image-1.bin"
    key = p.keys / "own-man-ecc-prvk.pem"
    before = {f: f.read_bytes() for f in (img, key, p.cfg)}
    man, flash = ["create-auth-man-2x", *p.args("1")], ["create-auth-flash-2x", *p.args("1")]
    cases = [
        (man + ["--man", str(img)], ["--man", "would overwrite the input", "image_metadata_list"]),
        (man + ["--man", str(key)], ["--man", "a key file"]),
        (man + ["--man", str(p.cfg)], ["--man", "the config"]),
        (man + ["--man", str(p.prebuilt)], ["--man", "names a directory"]),
        (flash + ["--man", str(img)], ["--man", "would overwrite the input"]),
        (flash + ["--flash", str(p.prebuilt / "mcu-runtime.bin")], ["--flash", "mcu_file"]),
        (flash + ["--man", str(p.man), "--flash", str(p.man)], ["--man", "the same file"]),
        (flash + ["--flash", str(p.prebuilt / "x" / "fw_toc.bin")], ["fw_toc.bin", "same file"]),
    ]
    link = tmp_path / "link.bin"
    os.link(img, link)  # another name of the same file
    cases.append((man + ["--man", str(link)], ["--man", "would overwrite the input"]))
    for argv, words in cases:
        one_line_exit2(capsys, argv, *words)
    assert {f: f.read_bytes() for f in before} == before
    assert not p.man.exists() and not (p.prebuilt / "x").exists()
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- PKCS#11
def _project_bundle(keys: Path) -> bytes:
    """A CMN2 bundle (tests/helpers/indep2) whose vendor and owner keys are the project's
    vnd-fw / own-fw ML-DSA and ECC keys, signed by them: what the device would run."""

    def ecc_hw(name: str) -> bytes:
        return ecc.public_to_hw(ecc.load_public(keys / f"{name}-ecc-pubk.pem"))

    def ecc_sign(name: str) -> object:
        from imgtool.signing import LocalEccSigner

        return LocalEccSigner(keys / f"{name}-ecc-prvk.pem").sign_digest

    def pqc_sign(name: str) -> object:
        key = mldsa.MldsaPrivateKey.load(keys / f"{name}-mldsa-prvk.bin")
        pub = (keys / f"{name}-mldsa-pubk.bin").read_bytes()
        return lambda msg: key.sign(msg, pub)

    bk = indep2.BundleKeys2(
        "mldsa",
        [ecc_hw("vnd-fw")],
        [(keys / "vnd-fw-mldsa-pubk.bin").read_bytes()],
        ecc_idx=0,
        pqc_idx=0,
        owner_ecc=ecc_hw("own-fw"),
        owner_pqc=(keys / "own-fw-mldsa-pubk.bin").read_bytes(),
    )
    return indep2.build_cmn2(
        bk, ecc_sign("vnd-fw"), pqc_sign("vnd-fw"), ecc_sign("own-fw"), pqc_sign("own-fw")
    )


def test_pkcs11_token_keys_in_a_2x_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The owner ECC keys on a SoftHSM2 token (ecc_priv_key URIs; the PEM private keys gone):
    create-auth-flash-2x and doit build, `verify --cfg` passes; no file named after a URI."""
    from softhsm import make_token

    from imgtool.keys import pkcs11

    pkcs11.reset_modules()
    monkeypatch.delenv(pkcs11.PIN_ENV, raising=False)
    monkeypatch.delenv(pkcs11.MODULE_ENV, raising=False)
    token = make_token(tmp_path, monkeypatch)  # skips without softhsm2
    p = make_project2(tmp_path / "p", "ast2705")
    (p.prebuilt / "caliptra-fw.bin").write_bytes(_project_bundle(p.keys))
    pin = tmp_path / "pin"
    pin.write_text(token.pin + "\n")
    try:
        for role in OWNER:
            pem = p.keys / f"own-{role}-ecc-prvk.pem"
            token.import_pem(pem, f"own-{role}-ecc", key_id={"fw": "01", "man": "02"}[role])
            pem.unlink()
            uri = token.uri(f"own-{role}-ecc", pin)
            _edit(p.cfg, f'ecc_priv_key = "own-{role}-ecc-prvk.pem"', f'ecc_priv_key = "{uri}"')
        capsys.readouterr()
        argv = [*p.args("1"), "--man", str(p.man), "--flash", str(p.flash)]
        assert main(["create-auth-flash-2x", *argv]) == 0, capsys.readouterr().err
        assert token.pin not in "".join(capsys.readouterr())
        cfg = ["--cfg", str(p.cfg), "--key-dir", str(p.keys), "--prebuilt-dir", str(p.prebuilt)]
        fuses = tmp_path / "fuses.toml"
        assert main(["fuses", "--caliptra-fw", str(p.prebuilt / "caliptra-fw.bin"),
                     "--out", str(fuses)]) == 0  # fmt: skip
        for anchors in (cfg, [*cfg, "--fuses", str(fuses)]):
            capsys.readouterr()
            rc = main(["verify", str(p.flash), *anchors, "--fw-toc",
                       str(p.flash.parent / "fw_toc.bin")])  # fmt: skip
            out = capsys.readouterr().out
            assert rc == 0 and "PASS" in out and "FAIL" not in out, out
        man = p.man.read_bytes()
        cov = indep2.atm2_covered(man)
        for slot, role, what in (("own_pub_sig", "fw", "owner_pub"),
                                 ("own_imc_sig", "man", "owner_imc")):  # fmt: skip
            pub = ecc.public_to_hw(ecc.load_public(p.keys / f"own-{role}-ecc-pubk.pem"))
            assert indep2.ecc_verify_hw(pub, cov[what], indep2.atm2_field(man, f"{slot}_ecc", 96))
        # doit: the URI is no file dependency; a second run signs nothing
        r = build(p, "flash")
        assert {"sign:own_pub_sig_ecc", "sign:own_imc_sig_ecc"} <= ran(r)
        assert ran(build(p, "flash")) == set()
        capsys.readouterr()
        rc = main(["verify", str(p.root / "out" / "ast2705-test-flash-image.bin"), *cfg])
        assert rc == 0, capsys.readouterr().out
        assert not [f for f in p.root.rglob("*") if "pkcs11:" in f.name]
        # in parallel (one token, its use serialized by keys.pkcs11): the same checks pass
        for mode in ("thread", "process"):
            shutil.rmtree(p.root / "out")
            r = build(p, "-n", "2", "-P", mode, "flash")
            assert {"sign:own_pub_sig_ecc", "sign:own_imc_sig_ecc"} <= ran(r)
            capsys.readouterr()
            rc = main(["verify", str(p.root / "out" / "ast2705-test-flash-image.bin"), *cfg])
            assert rc == 0, (mode, capsys.readouterr().out)
        # the token key of another object than the configured public key: one line, exit 2
        other = token.uri("own-fw-ecc", pin)
        _edit(p.cfg, token.uri("own-man-ecc", pin), other)
        line = one_line_exit2(capsys, ["create-auth-man-2x", *p.args("1"), "--man",
                                       str(tmp_path / "m2.bin")], "own_imc_sig")  # fmt: skip
        assert token.pin not in line
    finally:
        pkcs11.reset_modules()
