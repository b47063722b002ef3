"""Sign helpers (spec/signing.md): stdin and by-file modes, verified before use."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
from projects import Project, make_project

from imgtool.cli.main import main
from imgtool.errors import SigningError
from imgtool.keys import ecc
from imgtool.signing import HelperSigner

HELPER = Path(__file__).parent / "helpers" / "demo_sign_helper.py"


def _use_helpers(prj: Project, by_file: bool, drop_fw_pub: bool = False) -> None:
    """Owner FW and MAN ECC private keys replaced by the demo helper."""
    text = prj.cfg.read_text()
    text = text.replace('ecc_priv_key = "own-fw-ecc-prvk.pem"\n', "")
    text = text.replace('ecc_priv_key = "own-man-ecc-prvk.pem"\n', "")
    if drop_fw_pub:
        text = text.replace('ecc_pub_key = "own-fw-ecc-pubk.pem"\n', "")
    flag = " --by-file" if by_file else ""
    text += (
        "\n[sign_helper]\n"
        f'owner_ecc_fw_key_sign_helper = "{sys.executable} {HELPER} --key fw{flag}"\n'
        f'owner_ecc_man_key_sign_helper = "{sys.executable} {HELPER} --key man{flag}"\n'
        f"by_file = {'true' if by_file else 'false'}\n"
    )
    prj.cfg.write_text(text)


@pytest.mark.parametrize("by_file", [False, True])
def test_helpers_give_the_same_manifest_as_local_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by_file: bool
) -> None:
    prj = make_project(tmp_path)
    local = tmp_path / "local.bin"
    assert main(["create-auth-man", *prj.args("--man", str(local))]) == 0
    _use_helpers(prj, by_file)
    monkeypatch.setenv("DEMO_SIGN_HELPER_KEYS", str(prj.keys))
    assert main(["create-auth-man", *prj.args("--man", str(prj.man))]) == 0
    assert prj.man.read_bytes() == local.read_bytes()  # RFC 6979: deterministic


def test_owner_fw_key_from_the_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No owner FW public key configured: helper output is checked with the bundle's owner key."""
    prj = make_project(tmp_path, sample_bundle=True)
    _use_helpers(prj, by_file=False, drop_fw_pub=True)
    monkeypatch.setenv("DEMO_SIGN_HELPER_KEYS", str(prj.keys))
    assert main(["create-auth-man", *prj.args("--man", str(prj.man))]) == 0
    # and a bundle whose owner key differs makes the helper's signature fail verification
    (prj.prebuilt / "caliptra-fw.bin").write_bytes(b"not a bundle")
    assert main(["create-auth-man", *prj.args("--man", str(prj.man))]) == 2


def test_no_key_to_check_the_helper_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prj = make_project(tmp_path, caliptra=None)
    _use_helpers(prj, by_file=False, drop_fw_pub=True)
    monkeypatch.setenv("DEMO_SIGN_HELPER_KEYS", str(prj.keys))
    assert main(["create-auth-man", *prj.args("--man", str(prj.man))]) == 2
    assert "owner_fw_key_config.ecc_pub_key: needed to verify" in capsys.readouterr().err


def _signer(tmp_path: Path, body: str, algo: str = "ecc", by_file: bool = False) -> HelperSigner:
    script = tmp_path / "h.py"
    script.write_text("import sys\n" + body + "\n")
    key = tmp_path / "k-pubk.pem"
    if not key.exists():
        ecc.generate_keypair(tmp_path / "k")
    from imgtool.keys import lms

    pub: object = ecc.load_public(key)
    if algo == "lms":
        pub = lms.LmsPublicKey(lms.LMS_SHA256_M24_H15, 7, bytes(16), bytes(24))
    return HelperSigner(f"{sys.executable} {script}", algo, "sign_helper.x", by_file, 5, pub)


def test_helper_signer_errors(tmp_path: Path) -> None:
    digest = hashlib.sha384(b"m").digest()
    with pytest.raises(SigningError, match="1620-byte"):
        _signer(tmp_path, "print('00' * 100)", algo="lms").sign_digest(digest)
    with pytest.raises(SigningError, match="does not verify"):
        _signer(tmp_path, "print('00' * 1620)", algo="lms").sign_digest(digest)
    with pytest.raises(SigningError, match="exited with 3: boom"):
        _signer(tmp_path, "print('boom', file=sys.stderr); sys.exit(3)").sign_digest(digest)
    with pytest.raises(SigningError, match="not a DER"):
        # by-file helper that leaves the digest in place instead of a signature
        _signer(tmp_path, "pass", by_file=True).sign_digest(digest)


def test_by_file_protocol_details(tmp_path: Path) -> None:
    """The tool appends --input PATH; PATH holds the raw 48-byte digest."""
    log = tmp_path / "seen.txt"
    body = (
        "from pathlib import Path\n"
        "from imgtool.keys import ecc\n"
        f"k = ecc.load_private({str(tmp_path / 'k-prvk.pem')!r})\n"
        "assert sys.argv[-2] == '--input'\n"
        "p = Path(sys.argv[-1])\n"
        "d = p.read_bytes()\n"
        f"Path({str(log)!r}).write_text(str(len(d)))\n"
        "p.write_bytes(ecc.sign_digest_der(k, d))\n"
    )
    signer = _signer(tmp_path, body, by_file=True)
    sig = signer.sign_digest(hashlib.sha384(b"m").digest())
    assert len(sig) == 96 and log.read_text() == "48"


def test_by_file_helper_gets_no_stdin(tmp_path: Path) -> None:
    """A by-file helper that reads stdin sees an empty one (it used to inherit the build's stdin
    and wait on it until its timeout), then signs the file it was given."""
    key = tmp_path / "k-prvk.pem"
    ecc.generate_keypair(tmp_path / "k")
    body = (
        "from pathlib import Path\n"
        "from imgtool.keys import ecc\n"
        "extra = sys.stdin.read()\n"
        "assert extra == '', extra\n"
        "p = Path(sys.argv[sys.argv.index('--input') + 1])\n"
        f"k = ecc.load_private({str(key)!r})\n"
        "p.write_bytes(ecc.sign_digest_der(k, p.read_bytes()))\n"
    )
    digest = hashlib.sha384(b"m").digest()
    import os

    r, w = os.pipe()  # the build's stdin: something a helper must never read
    os.write(w, b"the build's stdin\n")
    os.close(w)
    saved = os.dup(0)
    os.dup2(r, 0)
    try:
        sig = _signer(tmp_path, body, by_file=True).sign_digest(digest)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(r)
    assert len(sig) == ecc.SIG_LEN
