"""Caliptra 2.x signing (imgtool.signing2): local keys, sign helpers by file and by stdin/stdout
for ECC, LMS and ML-DSA-87 (raw message, not a digest), every signature verified against the
configured public key; foreign or wrong signatures are errors naming the slot. Signatures are
checked independently (tests/helpers/indep2.py: cryptography, hsslms, dilithium-py)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import indep2
import pytest

from imgtool import signing2
from imgtool.cli.main import main
from imgtool.config2 import KeySet2
from imgtool.errors import SigningError
from imgtool.keys import ecc, lms, lms_tree, mldsa
from imgtool.signing2 import KeyHelpers, sign2

MSG = b"covered bytes of a 2.x manifest " * 300  # 9600 bytes: about an IMC's size

# An independent test helper (no imgtool for ECC and ML-DSA): argv KEY [--input PATH];
# the algorithm from CPTRA_IMGTOOL_SIGN_ALGO; every call appends what it saw to $LOG.
HELPER = r"""
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
key = Path(args[0])
mode = os.environ.get("MODE", "ok")
algo = os.environ["CPTRA_IMGTOOL_SIGN_ALGO"]
by_file = "--input" in args
if by_file:
    path = Path(args[args.index("--input") + 1])
    data = path.read_bytes()
else:
    line = sys.stdin.readline()
    data = bytes.fromhex(line.strip())
with open(os.environ["LOG"], "a") as fh:
    fh.write(json.dumps({"algo": algo, "input": os.environ["CPTRA_IMGTOOL_SIGN_INPUT"],
                         "len": len(data), "sha": __import__("hashlib").sha256(data).hexdigest(),
                         "by_file": by_file}) + "\n")
if mode == "other-message":
    data = data[:-1] + bytes([data[-1] ^ 1])
if algo == "mldsa":
    from dilithium_py.ml_dsa import ML_DSA_87
    sig = ML_DSA_87.sign(key.read_bytes(), data, deterministic=True)
    if mode == "short":
        sig = sig[:-1]
elif algo == "ecc":
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, utils
    k = serialization.load_pem_private_key(key.read_bytes(), None)
    sig = k.sign(data, ec.ECDSA(utils.Prehashed(hashes.SHA384())))
else:
    from imgtool.keys.lms_signer import LmsSigner
    sig = LmsSigner.load(key, signer="helper").sign_digest(data)
if by_file:
    path.write_bytes(sig)
else:
    print(sig.hex())
"""


def _keys(d: Path, name: str = "own-man", lms_key: bool = True) -> KeySet2:
    d.mkdir(parents=True, exist_ok=True)
    ecc.generate_keypair(d / f"{name}-ecc")
    if lms_key:
        lms_tree.generate(d / f"{name}-lms", lms.LMS_SHA256_M24_H5, lms.LMOTS_SHA256_N24_W4)
    seed = hashlib.sha256(str(d / name).encode()).digest()
    mldsa.generate_keypair(d / f"{name}-mldsa", seed=seed)
    return KeySet2(
        d / f"{name}-ecc-pubk.pem",
        d / f"{name}-ecc-prvk.pem",
        d / f"{name}-lms-pubk.pem",
        d / f"{name}-lms-prvk.pem" if lms_key else None,
        d / f"{name}-mldsa-pubk.bin",
        d / f"{name}-mldsa-prvk.bin",
    )


def _public(ks: KeySet2) -> KeySet2:
    """The same key set without private keys (a helper stands in for them)."""
    return KeySet2(ks.ecc_pub, None, ks.lms_pub, None, ks.mldsa_pub, None)


def _ecc_hw_pub(ks: KeySet2) -> bytes:
    return ecc.public_to_hw(ecc.load_public(ks.ecc_pub))


def _check(ks: KeySet2, pqc: str, msg: bytes, ecc_sig: bytes, pqc_sig: bytes) -> None:
    """Independent verification: cryptography (ECC), hsslms (LMS), dilithium-py + OpenSSL."""
    assert indep2.ecc_verify_hw(_ecc_hw_pub(ks), msg, ecc_sig)
    if pqc == "mldsa":
        pub = ks.mldsa_pub.read_bytes()
        assert len(pqc_sig) == 4627
        assert indep2.mldsa_verify_dilithium(pub, msg, pqc_sig)
        assert indep2.mldsa_verify_openssl(pub, msg, pqc_sig)
    else:
        assert len(pqc_sig) == 1620
        assert indep2.lms_verify(ks.lms_pub.read_bytes(), msg, pqc_sig)


@pytest.fixture
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "helper.py"
    script.write_text(HELPER)
    log = tmp_path / "helper-log.jsonl"
    monkeypatch.setenv("LOG", str(log))
    monkeypatch.delenv("MODE", raising=False)
    return script


def _helpers(script: Path, ks: KeySet2, by_file: bool, algos: tuple[str, ...]) -> KeyHelpers:
    priv = {"ecc": ks.ecc_priv, "lms": ks.lms_priv, "mldsa": ks.mldsa_priv}
    cmds = {a: f"{sys.executable} {script} {priv[a]}" for a in algos}
    return KeyHelpers(**cmds, by_file=by_file, timeout=60, section="owner_man_key_config")


def _log(tmp_path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in (tmp_path / "helper-log.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- local keys
@pytest.mark.parametrize("pqc", ["mldsa", "lms"])
def test_local_keys_sign_and_verify_independently(tmp_path: Path, pqc: str) -> None:
    ks = _keys(tmp_path / "k")
    e, p = sign2(ks, pqc, MSG)
    _check(ks, pqc, MSG, e, p)


def test_local_mldsa_is_deterministic_and_matches_dilithium(tmp_path: Path) -> None:
    from dilithium_py.ml_dsa import ML_DSA_87

    ks = _keys(tmp_path / "k", lms_key=False)
    a = sign2(ks, "mldsa", MSG)
    b = sign2(ks, "mldsa", MSG)
    assert a == b  # RFC 6979 ECDSA and deterministic ML-DSA: byte-identical
    assert a[1] == ML_DSA_87.sign(ks.mldsa_priv.read_bytes(), MSG, deterministic=True)  # type: ignore[union-attr]


def test_local_lms_uses_the_leaf_state(tmp_path: Path) -> None:
    ks = _keys(tmp_path / "k")
    q = [lms.sig_q(sign2(ks, "lms", MSG + bytes([i]))[1]) for i in range(3)]
    assert q == sorted(set(q)) and len(q) == 3  # a new leaf for every message


def test_no_private_key_no_helper_leaves_the_slot_empty(tmp_path: Path) -> None:
    ks = _public(_keys(tmp_path / "k", lms_key=False))
    assert sign2(ks, "mldsa", MSG) == (b"", b"")


def test_local_private_key_of_another_pair_is_refused(tmp_path: Path) -> None:
    ks = _keys(tmp_path / "a", lms_key=False)
    other = _keys(tmp_path / "b", lms_key=False)
    mixed = KeySet2(ks.ecc_pub, ks.ecc_priv, ks.lms_pub, None, ks.mldsa_pub, other.mldsa_priv)
    with pytest.raises(SigningError, match=r"^own_imc_sig: .*did not verify"):
        sign2(mixed, "mldsa", MSG, slot="own_imc_sig")


def test_unknown_pqc_is_an_error(tmp_path: Path) -> None:
    ks = _keys(tmp_path / "k", lms_key=False)
    with pytest.raises(SigningError, match="lms or mldsa"):
        sign2(ks, "rsa", MSG)


# ----------------------------------------------------------------------------- sign helpers
@pytest.mark.parametrize("by_file", [False, True])
@pytest.mark.parametrize("pqc", ["mldsa", "lms"])
def test_helpers_stand_in_for_every_private_key(
    tmp_path: Path, helper: Path, pqc: str, by_file: bool
) -> None:
    ks = _keys(tmp_path / "k")
    h = _helpers(helper, ks, by_file, ("ecc", pqc))
    e, p = sign2(_public(ks), pqc, MSG, h, slot="own_imc_sig")
    _check(ks, pqc, MSG, e, p)
    seen = {r["algo"]: r for r in _log(tmp_path)}
    assert seen["ecc"] == {
        "algo": "ecc",
        "input": "digest",
        "len": 48,
        "sha": hashlib.sha256(hashlib.sha384(MSG).digest()).hexdigest(),
        "by_file": by_file,
    }
    if pqc == "mldsa":  # the RAW message, whole, not a digest
        assert seen["mldsa"] == {
            "algo": "mldsa",
            "input": "message",
            "len": len(MSG),
            "sha": hashlib.sha256(MSG).hexdigest(),
            "by_file": by_file,
        }
    else:
        assert seen["lms"]["len"] == 48 and seen["lms"]["input"] == "digest"


def test_mldsa_helper_gives_the_same_signature_as_the_local_key(
    tmp_path: Path, helper: Path
) -> None:
    ks = _keys(tmp_path / "k", lms_key=False)
    local = sign2(ks, "mldsa", MSG)
    for by_file in (False, True):
        h = _helpers(helper, ks, by_file, ("ecc", "mldsa"))
        e, p = sign2(_public(ks), "mldsa", MSG, h)
        assert p == local[1]  # deterministic ML-DSA (the helper's ECDSA is randomized)
        _check(ks, "mldsa", MSG, e, p)


def test_helper_wins_over_a_local_key(tmp_path: Path, helper: Path) -> None:
    ks = _keys(tmp_path / "k", lms_key=False)
    sign2(ks, "mldsa", MSG, _helpers(helper, ks, False, ("mldsa",)))
    assert [r["algo"] for r in _log(tmp_path)] == ["mldsa"]  # ECC: the local key


@pytest.mark.parametrize("by_file", [False, True])
@pytest.mark.parametrize("algo", ["mldsa", "ecc"])
def test_foreign_signature_is_refused_naming_the_slot(
    tmp_path: Path, helper: Path, algo: str, by_file: bool
) -> None:
    """A helper that signs with another key (valid signatures, wrong key) never gets into a
    manifest: SigningError naming the slot and the helper's config field."""
    ks = _keys(tmp_path / "mine", lms_key=False)
    foreign = _keys(tmp_path / "foreign", lms_key=False)
    h = _helpers(helper, foreign, by_file, ("ecc", "mldsa"))
    h = KeyHelpers(**{algo: getattr(h, algo)}, by_file=by_file, section="owner_man_key_config")
    with pytest.raises(SigningError) as err:
        sign2(_public(ks), "mldsa", MSG, h, slot="own_pub_sig")
    text = str(err.value)
    assert text.startswith("own_pub_sig: sign_helper.owner_")
    assert f"owner_{algo}_man_key_sign_helper" in text and "does not verify" in text
    assert len(text.splitlines()) == 1


def test_foreign_lms_signature_is_refused(tmp_path: Path, helper: Path) -> None:
    ks = _keys(tmp_path / "mine")
    foreign = _keys(tmp_path / "foreign")
    h = _helpers(helper, foreign, False, ("lms",))
    with pytest.raises(SigningError, match=r"^vnd_imc_sig: .*does not verify"):
        sign2(KeySet2(ks.ecc_pub, None, ks.lms_pub, None, ks.mldsa_pub, None), "lms", MSG, h,
              slot="vnd_imc_sig")  # fmt: skip


@pytest.mark.parametrize("mode,match", [("other-message", "does not verify"),
                                        ("short", "4626 bytes, expected a 4627-byte")])  # fmt: skip
def test_wrong_mldsa_helper_output_is_refused(
    tmp_path: Path, helper: Path, monkeypatch: pytest.MonkeyPatch, mode: str, match: str
) -> None:
    ks = _keys(tmp_path / "k", lms_key=False)
    monkeypatch.setenv("MODE", mode)
    h = _helpers(helper, ks, False, ("mldsa",))
    with pytest.raises(SigningError, match=rf"^own_imc_sig: .*{match}"):
        sign2(KeySet2(ks.ecc_pub, ks.ecc_priv, ks.lms_pub, None, ks.mldsa_pub, None), "mldsa",
              MSG, h, slot="own_imc_sig")  # fmt: skip


def test_mldsa_helper_failures_are_one_line(tmp_path: Path) -> None:
    ks = _keys(tmp_path / "k", lms_key=False)
    pub = ks.mldsa_pub.read_bytes()
    script = tmp_path / "bad.py"
    cases = {
        "import sys; print('broken', file=sys.stderr); sys.exit(4)": "exited with 4: broken",
        "print('zz')": "not hex",
        "print('00'); print('00')": "exactly one line",
        "pass": "exactly one line of hex, got 0",  # stdin mode, printed nothing
        "print('00' * 4626)": "4626 bytes, expected a 4627-byte",
    }
    for body, match in cases.items():
        script.write_text(body + "\n")
        s = signing2.HelperMldsaSigner(
            f"{sys.executable} {script}", "sign_helper.x", False, 30, pub
        )
        with pytest.raises(SigningError, match=match):
            s.sign_message(MSG)
    # by file: a helper that leaves the message in place returns the message, not a signature
    script.write_text("pass\n")
    s = signing2.HelperMldsaSigner(f"{sys.executable} {script}", "sign_helper.x", True, 30, pub)
    with pytest.raises(SigningError, match=f"{len(MSG)} bytes, expected a 4627-byte"):
        s.sign_message(MSG)
    with pytest.raises(SigningError, match="larger than the 65536 bytes"):
        s.sign_message(bytes(signing2.MAX_MESSAGE + 1))


def test_helper_field_names() -> None:
    assert (
        KeyHelpers(section="vendor_fw_key_config").field("mldsa")
        == "sign_helper.vendor_mldsa_fw_key_sign_helper"
    )
    assert KeyHelpers().field("ecc") == "sign_helper.ecc"


# ------------------------------------------------------------------- sign-helper --key-file
@pytest.mark.parametrize("by_file", [False, True])
def test_sign_helper_key_file_mldsa(
    tmp_path: Path,
    by_file: bool,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`cptra-imgtool sign-helper --key-file K --algo mldsa` is itself an ML-DSA sign helper."""
    import io

    ks = _keys(tmp_path / "k", lms_key=False)
    args = ["sign-helper", "--key-file", str(ks.mldsa_priv), "--algo", "mldsa",
            "--pubkey", str(ks.mldsa_pub)]  # fmt: skip
    if by_file:
        f = tmp_path / "msg.bin"
        f.write_bytes(MSG)
        assert main([*args, "--by-file", "--input", str(f)]) == 0
        sig = f.read_bytes()
    else:
        monkeypatch.setattr(sys, "stdin", io.StringIO(MSG.hex() + "\n"))
        assert main(args) == 0
        sig = bytes.fromhex(capsys.readouterr().out.strip())
    assert indep2.mldsa_verify_dilithium(ks.mldsa_pub.read_bytes(), MSG, sig)
    # and used as a config's helper command, it gives the local key's signature
    h = KeyHelpers(
        mldsa=f"{sys.executable} -m imgtool sign-helper --key-file {ks.mldsa_priv} --algo mldsa",
        by_file=by_file,
    )
    assert sign2(_public(ks), "mldsa", MSG, h)[1] == sign2(ks, "mldsa", MSG)[1]


def test_sign_helper_key_file_mldsa_refuses_another_pubkey(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ks = _keys(tmp_path / "a", lms_key=False)
    other = _keys(tmp_path / "b", lms_key=False)
    f = tmp_path / "msg.bin"
    f.write_bytes(MSG)
    args = ["sign-helper", "--key-file", str(ks.mldsa_priv), "--algo", "mldsa", "--pubkey",
            str(other.mldsa_pub), "--by-file", "--input", str(f)]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "does not match --pubkey" in err and len(err.strip().splitlines()) == 1
    assert f.read_bytes() == MSG  # nothing written
    f.write_bytes(bytes(signing2.MAX_MESSAGE + 1))
    assert main(args[:5] + args[7:]) == 2
    assert "more than 65536 bytes" in capsys.readouterr().err


def test_helpers_for_a_key_section(tmp_path: Path, helper: Path) -> None:
    """[sign_helper] fields per key section: owner_<algo>_<role>_key_sign_helper (the
    reference's), owner_mldsa_* and vendor_* for 2.x; by_file and timeout for all."""
    table: dict[str, object] = {
        "owner_ecc_man_key_sign_helper": "e",
        "owner_mldsa_man_key_sign_helper": "m",
        "vendor_lms_fw_key_sign_helper": "l",
        "by_file": True,
        "timeout": 7,
    }
    h = signing2.helpers_for(table, "owner_man_key_config")
    assert h == KeyHelpers(ecc="e", mldsa="m", by_file=True, timeout=7.0,
                           section="owner_man_key_config")  # fmt: skip
    v = signing2.helpers_for(table, "vendor_fw_key_config")
    assert v is not None and (v.ecc, v.lms, v.mldsa) == (None, "l", None)
    assert signing2.helpers_for(table, "owner_fw_key_config") is None
    assert set(signing2.HELPER_FIELDS2) >= {k for k in table if k.endswith("_helper")}
    # and what it gives is what sign2 runs
    ks = _keys(tmp_path / "k", lms_key=False)
    cmd = f"{sys.executable} {helper} {ks.mldsa_priv}"
    h = signing2.helpers_for({"owner_mldsa_fw_key_sign_helper": cmd}, "owner_fw_key_config")
    e, p = sign2(KeySet2(ks.ecc_pub, ks.ecc_priv, ks.lms_pub, None, ks.mldsa_pub, None),
                 "mldsa", MSG, h)  # fmt: skip
    _check(ks, "mldsa", MSG, e, p)


def test_sign2_is_a_drop_in_for_build2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """build2's manifest is byte-identical when its sign2 is signing2.sign2 (local keys)."""
    from projects2 import make_project2

    from imgtool import build2
    from imgtool.config2 import load_config2

    prj = make_project2(tmp_path / "p")
    cfg = load_config2(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)
    before = build2.build_manifest2(cfg, "mldsa")
    monkeypatch.setattr(build2, "sign2", signing2.sign2)
    assert build2.build_manifest2(cfg, "mldsa") == before


def test_sign_helper_refuses_a_slot_of_another_algorithm(tmp_path: Path) -> None:
    """An ECC `sign-helper` configured where the build asks for ML-DSA (the build says which
    in CPTRA_IMGTOOL_SIGN_ALGO) fails in one line instead of signing the wrong input."""
    ks = _keys(tmp_path / "k", lms_key=False)
    h = KeyHelpers(
        mldsa=f"{sys.executable} -m imgtool sign-helper --key-file {ks.ecc_priv} --algo ecc",
        section="owner_man_key_config",
    )
    with pytest.raises(SigningError) as err:
        sign2(KeySet2(ks.ecc_pub, ks.ecc_priv, ks.lms_pub, None, ks.mldsa_pub, None), "mldsa",
              MSG, h, slot="own_imc_sig")  # fmt: skip
    text = str(err.value)
    assert text.startswith("own_imc_sig: sign_helper.owner_mldsa_man_key_sign_helper: ")
    assert "asks for an mldsa signature" in text and len(text.splitlines()) == 1


def test_lms_helper_that_reuses_a_leaf_is_refused(tmp_path: Path) -> None:
    """LMS in 2.x keeps real leaf state: a helper that signs every message at the same leaf
    (valid signatures, one-time key reused) gets its second signature refused."""
    ks = _keys(tmp_path / "k")
    script = tmp_path / "reuse.py"
    script.write_text(
        "import sys\nfrom imgtool.keys import lms, lms_tree\n"
        f"key = lms.load_private({str(ks.lms_priv)!r})\n"
        f"pub = lms.load_public({str(ks.lms_pub)!r})\n"
        f"nodes = lms_tree.get_tree({str(ks.lms_priv)!r}, key, pub)\n"
        "d = bytes.fromhex(sys.stdin.readline().strip())\n"
        "sig = key.sign_at(3, d, lms.auth_path(nodes, key.height, 3))\n"
        "print(lms.sig_to_slot(sig).hex())\n"
    )
    h = KeyHelpers(lms=f"{sys.executable} {script}", section="owner_fw_key_config")
    public = KeySet2(ks.ecc_pub, ks.ecc_priv, ks.lms_pub, None, ks.mldsa_pub, None)
    e, p = sign2(public, "lms", MSG, h, slot="own_pub_sig")
    assert lms.sig_q(p) == 3 and indep2.lms_verify(ks.lms_pub.read_bytes(), MSG, p)
    assert sign2(public, "lms", MSG, h, slot="own_pub_sig")[1] == p  # same message: same leaf
    with pytest.raises(SigningError, match=r"^own_pub_sig: .*reused a one-time leaf"):
        sign2(public, "lms", MSG + b"!", h, slot="own_pub_sig")
