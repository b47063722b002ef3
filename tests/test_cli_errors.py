"""Bad input: one line naming the file and field, exit 2, and no output created or replaced."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from projects import Project, make_project

from imgtool.cli.main import main

PREVIOUS = b"previous good image"


def _replace(old: str, new: str) -> Callable[[Project], None]:
    def edit(p: Project) -> None:
        text = p.cfg.read_text()
        assert old in text, old
        p.cfg.write_text(text.replace(old, new, 1))

    return edit


def _append(extra: str) -> Callable[[Project], None]:
    def edit(p: Project) -> None:
        p.cfg.write_text(p.cfg.read_text() + "\n" + extra + "\n")

    return edit


def _write_key(name: str, make: Callable[[], bytes]) -> Callable[[Project], None]:
    def edit(p: Project) -> None:
        (p.keys / name).write_bytes(make())

    return edit


def _p256() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _rsa() -> bytes:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _helper(body: str, by_file: bool = False) -> Callable[[Project], None]:
    """Owner manifest ECC key replaced by a helper script with this body (stdin mode, or by
    file: then the script gets --input PATH)."""

    def edit(p: Project) -> None:
        script = p.root / "helper.py"
        script.write_text("import sys, time\n" + body + "\n")
        text = p.cfg.read_text().replace('ecc_priv_key = "own-man-ecc-prvk.pem"\n', "")
        p.cfg.write_text(
            text + f"\n[sign_helper]\nowner_ecc_man_key_sign_helper = "
            f'"{sys.executable} {script}"\ntimeout = 1\n' + ("by_file = true\n" if by_file else "")
        )

    return edit


_EDITS: dict[str, Callable[[Project], None]] = {
    "by-file-delete": _helper("import os\nos.unlink(sys.argv[-1])", by_file=True),
}


WRONG_KEY_SIGNER = (
    "from imgtool.keys import ecc\n"
    "d = bytes.fromhex(sys.stdin.readline().strip())\n"
    "k = ecc.load_private(sys.argv[0].replace('helper.py', 'keys/own-fw-ecc-prvk.pem'))\n"
    "print(ecc.sign_digest_der(k, d).hex())"
)

# (id, edit, text the single error line must contain)
CASES: list[tuple[str, Callable[[Project], None] | str, str]] = [
    (
        "unknown key in manifest_config",
        _replace("flags = 0", "flags = 0\nflagz = 1"),
        "manifest_config.flagz: unknown key",
    ),
    (
        "unknown key in an image",
        _replace("load_stage = 0\n", "load_stage = 0\nsize = 4\n"),
        "image_metadata_list[0].size: unknown key",
    ),
    (
        "unknown key in a key section",
        _replace(
            'ecc_pub_key = "own-fw-ecc-pubk.pem"',
            'ecc_pub_key = "own-fw-ecc-pubk.pem"\necc_key = "x"',
        ),
        "owner_fw_key_config.ecc_key: unknown key",
    ),
    (
        "misspelled section",
        _append("[sign_helpr]\nby_file = true"),
        "[sign_helpr]: unknown section (did you mean [sign_helper]?)",
    ),
    (
        "misspelled key names the nearest",
        _replace("load_stage = 0\n", "load_stage = 0\nignore_auth_chek = true\n"),
        "image_metadata_list[0].ignore_auth_chek: unknown key (did you mean 'ignore_auth_check'?)",
    ),
    ("timeout nan", _append("[sign_helper]\ntimeout = nan"), "sign_helper.timeout: must be"),
    ("timeout inf", _append("[sign_helper]\ntimeout = inf"), "sign_helper.timeout: must be"),
    (
        "svn 256",
        _replace("fw_id = 3\n", "fw_id = 3\nsvn = 256\n"),
        "image_metadata_list[2].svn: must be 0..255",
    ),
    (
        "negative padding_align_size",
        _replace("flags = 0\n", "flags = 0\npadding_align_size = -4\n"),
        "manifest_config.padding_align_size: must be a 32-bit",
    ),
    (
        "0-byte caliptra_file",
        lambda p: (p.prebuilt / "caliptra-fw.bin").write_bytes(b""),
        "image_runtime_list.caliptra_file:",
    ),
    (
        "random caliptra_file",
        lambda p: (p.prebuilt / "caliptra-fw.bin").write_bytes(bytes(range(256)) * 40),
        "not a Caliptra firmware bundle",
    ),
    (
        "padded copy would overwrite an input",
        lambda p: (
            (p.prebuilt / "img0_align_8.bin").write_bytes(b"12345678"),
            _replace('file = "img1.bin"', 'file = "img0_align_8.bin"')(p),
            _replace(
                "flags = 0\n",
                f'flags = 0\npadding_align_size = 8\npadding_out_folder = "{p.prebuilt}"\n',
            )(p),
        ),
        "would overwrite the input",
    ),
    (
        "two inputs, one padded copy name",
        lambda p: (
            (p.prebuilt / "sub").mkdir(),
            (p.prebuilt / "sub" / "img0.bin").write_bytes(b"other"),
            _replace('file = "img1.bin"', 'file = "sub/img0.bin"')(p),
            _replace(
                "flags = 0\n",
                f'flags = 0\npadding_align_size = 8\npadding_out_folder = "{p.root / "pads"}"\n',
            )(p),
        ),
        "would also be the copy of",
    ),
    (
        "by-file helper deletes its input",
        "by-file-delete",
        "owner_ecc_man_key_sign_helper: by-file",
    ),
    (
        "string version",
        _replace("version = 1", 'version = "1"'),
        "manifest_config.version: expected integer",
    ),
    (
        "int for bool",
        _replace("ignore_auth_check = false", "ignore_auth_check = 0"),
        "image_metadata_list[0].ignore_auth_check: expected boolean",
    ),
    (
        "bool for int",
        _replace("source = 1", "source = true"),
        "image_metadata_list[0].source: expected integer",
    ),
    (
        "version > u32",
        _replace("version = 1", "version = 4294967296"),
        "manifest_config.version: must be a 32-bit",
    ),
    (
        "duplicate fw_id",
        _replace("fw_id = 3", "fw_id = 2"),
        "image_metadata_list[2].fw_id: duplicate",
    ),
    ("fw_id 1 not first", _replace("fw_id = 1", "fw_id = 9"), "image_metadata_list[0].fw_id"),
    ("fw_id gap", _replace("fw_id = 4", "fw_id = 9"), "image_metadata_list[3].fw_id: SoC images"),
    (
        "load_stage 4",
        _replace("load_stage = 1", "load_stage = 4"),
        "image_metadata_list[2].load_stage: must be 0..3",
    ),
    (
        "source 5",
        _replace("source = 1", "source = 5"),
        "image_metadata_list[0].source: must be 0..3",
    ),
    ("missing image", _replace('file = "img2.bin"', 'file = "nope.bin"'), "nope.bin"),
    (
        "missing mcu_file",
        _replace('mcu_file = "mcu.bin"', 'mcu_file = "mcu2.bin"'),
        "image_runtime_list.mcu_file: file not found",
    ),
    (
        "missing caliptra_file",
        _replace('caliptra_file = "caliptra-fw.bin"', 'caliptra_file = "cal.bin"'),
        "image_runtime_list.caliptra_file: file not found",
    ),
    (
        "key named but absent",
        _replace('"own-fw-ecc-pubk.pem"', '"own-fw-ecc-pubk-x.pem"'),
        "owner_fw_key_config.ecc_pub_key: key file not found",
    ),
    ("P-256 key", _write_key("own-man-ecc-prvk.pem", _p256), "secp256r1"),
    ("RSA key", _write_key("own-fw-ecc-prvk.pem", _rsa), "not an EC key"),
    (
        "public key as private",
        _write_key(
            "vnd-fw-ecc-prvk.pem",
            lambda: b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        ),
        "public key where a private key",
    ),
    (
        "garbage PEM",
        _write_key("vnd-man-ecc-pubk.pem", lambda: b"not a key at all"),
        "not a PEM/DER public key",
    ),
    ("invalid TOML", _append("[[image_metadata_list]\n"), "invalid TOML"),
    ("bad format", _replace('format = "aspeed"', 'format = "bogus"'), "manifest_config.format"),
    (
        "prebuilt with version 2",
        lambda p: (
            _replace('vendor_signature = "generate"', 'vendor_signature = "prebuilt"')(p),
            _replace("version = 1", "version = 2")(p),
        ),
        "prebuilt vendor signature covers only version = 1",
    ),
    (
        "prebuilt without vnd_sig",
        _replace('vendor_signature = "generate"', 'vendor_signature = "prebuilt"'),
        "prebuilt vendor signature not found",
    ),
    (
        "zero_caliptra_file_end with caliptra_file",
        _replace('mcu_file = "mcu.bin"', 'mcu_file = "mcu.bin"\nzero_caliptra_file_end = 0x1000'),
        "zero_caliptra_file_end: only allowed",
    ),
    ("helper exits 1", _helper("sys.exit(1)"), "owner_ecc_man_key_sign_helper: sign helper exited"),
    ("helper prints two lines", _helper("print('00'); print('11')"), "exactly one line"),
    ("helper prints non-hex", _helper("print('xyz')"), "not hex"),
    ("helper hangs", _helper("time.sleep(30)"), "timed out after 1 s"),
    ("helper signs with the wrong key", _helper(WRONG_KEY_SIGNER), "does not verify"),
    ("helper returns garbage", _helper("print('3004020101')"), "not a DER"),
    (
        "helper not found",
        lambda p: (_helper("")(p), _replace(sys.executable, "/nonexistent/py")(p)),
        "command not found",
    ),
]


@pytest.mark.parametrize(
    ("edit", "expect"), [(e, x) for _, e, x in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    edit: Callable[[Project], None] | str,
    expect: str,
) -> None:
    prj = make_project(tmp_path)
    (_EDITS[edit] if isinstance(edit, str) else edit)(prj)
    prj.flash.write_bytes(PREVIOUS)  # a previous good output must survive
    rc = main(["create-auth-flash", *prj.args("--man", str(prj.man), "--flash", str(prj.flash))])
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if not line.startswith("cptra-imgtool: warning:")]
    assert rc == 2
    assert len(errors) == 1, err
    assert errors[0].startswith("cptra-imgtool: error: ")
    assert expect in errors[0], errors[0]
    assert prj.flash.read_bytes() == PREVIOUS
    assert not prj.man.exists()
    assert sorted(p.name for p in prj.out.iterdir()) == ["f.bin"]  # no temp files left


def test_no_traceback_reaches_the_user(tmp_path: Path) -> None:
    prj = make_project(tmp_path)
    _replace("source = 1", "source = 7")(prj)
    r = subprocess.run(
        [sys.executable, "-m", "imgtool", "create-auth-man", *prj.args()],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0
    r = subprocess.run(
        [sys.executable, "-m", "imgtool", "create-auth-man", *prj.args(), "--debug"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["create-auth-man", "--cfg", str(tmp_path / "none.toml")]) == 2
    assert "none.toml: config file not found" in capsys.readouterr().err


def test_load_stage_2_unaligned_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prj = make_project(tmp_path, sizes=(40, 33), load_stages=(0, 2))
    assert main(["create-auth-man", *prj.args("--man", str(prj.man))]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "img1.bin" in warnings[0] and "load_stage 2" in warnings[0]


def test_too_many_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prj = make_project(tmp_path, sizes=(4,) * 127)
    assert main(["create-auth-man", *prj.args("--man", str(prj.man))]) == 2
    assert "128 entries, at most 127" in capsys.readouterr().err


def test_unknown_section_is_accepted_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reference tool's genimg.sh writes an [authtool] section: a warning, not an error."""
    prj = make_project(tmp_path)
    _append("[authtool]\ncaliptra_sw_auth = 'x'\ncaliptra_mcu_sw = 'y'")(prj)
    assert main(["create-auth-man", *prj.args("--man", str(prj.man))]) == 0
    assert "[authtool]: unknown section, ignored" in capsys.readouterr().err


def test_huge_image_is_refused_before_anything_is_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 5 GiB (sparse) image cannot fit the FLSH 32-bit size fields: refused by the config
    check, before a byte of it is read (create-auth-man included)."""
    import imgtool.formats.padding

    prj = make_project(tmp_path)
    big = prj.prebuilt / "img2.bin"
    with open(big, "r+b") as fh:
        fh.truncate(5 << 30)

    def no_hashing(*a: object, **k: object) -> bytes:
        raise AssertionError("an image was hashed")

    monkeypatch.setattr(imgtool.formats.padding, "image_digest", no_hashing)
    for extra in ([], ["--flash", str(prj.flash)]):
        cmd = "create-auth-flash" if extra else "create-auth-man"
        rc = main([cmd, *prj.args("--man", str(prj.man), *extra)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, err
        assert "image_metadata_list[3].file" in err[0] and "5368709120 bytes" in err[0]
        assert "32-bit" in err[0]
    assert not prj.man.exists() and not prj.flash.exists()


def test_images_adding_up_past_4_gib_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prj = make_project(tmp_path)
    for name in ("img0.bin", "img1.bin"):
        with open(prj.prebuilt / name, "r+b") as fh:
            fh.truncate(3 << 30)
    assert main(["create-auth-man", *prj.args("--man", str(prj.man))]) == 2
    assert "FLSH offsets and sizes are 32-bit" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", ["create-auth-man", "create-auth-flash"])
def test_man_naming_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cmd: str
) -> None:
    prj = make_project(tmp_path)
    d = prj.out / "adir"
    d.mkdir()
    extra = ["--flash", str(prj.flash)] if cmd == "create-auth-flash" else []
    assert main([cmd, *prj.args("--man", str(d), *extra)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{d}: --man names a directory" in err[0] and ".tmp" not in err[0]
    assert sorted(p.name for p in prj.out.iterdir()) == ["adir"]


def test_output_in_a_file_that_is_not_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prj = make_project(tmp_path)
    (prj.out / "file").write_text("x")
    assert main(["create-auth-man", *prj.args("--man", str(prj.out / "file" / "m.bin"))]) == 2
    err = capsys.readouterr().err
    assert f"{prj.out / 'file'} is a file, not a directory" in err and ".tmp" not in err


def test_same_man_and_flash_path_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prj = make_project(tmp_path)
    same = str(prj.out / "x.bin")
    assert main(["create-auth-flash", *prj.args("--man", same, "--flash", same)]) == 2
    assert "--man and --flash name the same file" in capsys.readouterr().err
    assert not (prj.out / "x.bin").exists()
    # also through a symlink, and with an existing manifest given as --man
    assert main(["create-auth-man", *prj.args("--man", same)]) == 0
    (prj.out / "link.bin").symlink_to(same)
    before = (prj.out / "x.bin").read_bytes()
    assert (
        main(["create-auth-flash", *prj.args("--man", same, "--flash", str(prj.out / "link.bin"))])
        == 2
    )
    assert "name the same file" in capsys.readouterr().err
    assert (prj.out / "x.bin").read_bytes() == before


def test_output_over_an_input_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prj = make_project(tmp_path)
    img = prj.prebuilt / "img0.bin"
    before = img.read_bytes()
    assert main(["create-auth-flash", *prj.args("--flash", str(img))]) == 2
    assert f"{img}: --flash would overwrite the input" in capsys.readouterr().err
    assert main(["create-auth-man", *prj.args("--man", str(prj.cfg))]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert img.read_bytes() == before


def test_output_over_an_input_by_another_name_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same file by a hard link or a symlink is the input; a dangling symlink to where an
    LMS side file of a configured key would go is refused by that path."""
    prj = make_project(tmp_path)
    img = prj.prebuilt / "img0.bin"
    before = img.read_bytes()
    hard = prj.out / "hard.bin"
    hard.parent.mkdir(parents=True, exist_ok=True)
    hard.hardlink_to(img)
    (prj.out / "sym.bin").symlink_to(img)
    for out in (hard, prj.out / "sym.bin"):
        assert main(["create-auth-flash", *prj.args("--flash", str(out))]) == 2
        assert f"{out}: --flash would overwrite the input {img}" in capsys.readouterr().err
    side = prj.keys / "vnd-man-ecc-prvk.pem.lock"
    assert not side.exists()
    (prj.out / "dangling.bin").symlink_to(side)
    assert main(["create-auth-man", *prj.args("--man", str(prj.out / "dangling.bin"))]) == 2
    assert "would overwrite the input" in capsys.readouterr().err and not side.exists()
    assert img.read_bytes() == before


def test_not_enough_lms_leaves_is_refused_before_the_first_is_spent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The owner FW LMS key signs the owner endorsement and the SVN signature: with one leaf
    left, create-auth-man refuses before any key signs (no leaf of any key is spent)."""
    import hashlib

    from imgtool.keys.lms_signer import LmsSigner

    prj = make_project(tmp_path, lms=True, lms_kind="h5")
    key = prj.keys / "own-fw-lms-prvk.pem"
    signer = LmsSigner.load(key)
    for i in range(31):
        signer.sign_digest(hashlib.sha384(b"spend %d" % i).digest())
    names = ("vnd-fw", "vnd-man", "own-fw", "own-man")

    def left() -> dict[str, int | None]:
        return {n: LmsSigner.load(prj.keys / f"{n}-lms-prvk.pem").leaves_left() for n in names}

    before = left()
    assert before["own-fw"] == 1
    assert main(["create-auth-man", *prj.args("--man", str(prj.man))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{key}: LMS key has 1 one-time signature left" in err[0]
    assert "needs 2 (own_pub_sig_lms, own_svn_sig_lms)" in err[0]
    assert left() == before and not prj.man.exists()


# ---------------------------------------------------------------------------- key mismatches
def _fp(stored: bytes, algo: str) -> str:
    """The fingerprint as documented (imgtool/keys/key_match.py), computed here independently."""
    import hashlib

    return f"{algo}:{hashlib.sha256(stored).hexdigest()[:16]}"


def _new_pair(p: Project, prefix: str) -> None:
    """Replace a key pair of the project by a fresh one (ECC, or a sparse H15 LMS key)."""
    from projects import ecc_keys, lms_keys

    other = p.root / "other"
    algo = prefix.rsplit("-", 1)[1]
    (ecc_keys if algo == "ecc" else lms_keys)(other)
    for kind in ("prvk", "pubk"):
        (p.keys / f"{prefix}-{kind}.pem").write_bytes((other / f"{prefix}-{kind}.pem").read_bytes())


def _prebuilt_sigs(p: Project, lms_by: str = "vnd-fw") -> Path:
    """vnd_sig/ made over ASPEED's prebuilt TBS: ECC by the project's vnd-fw key, LMS by
    ``lms_by`` (another key: the signature the bundle's vendor LMS key did not make)."""
    import hashlib

    from independent import PREBUILT_TBS
    from projects import lms_keys

    from imgtool.keys import ecc
    from imgtool.keys.lms_signer import LmsSigner

    d = p.root / "vnd_sig"
    d.mkdir()
    digest = hashlib.sha384(PREBUILT_TBS).digest()
    der = ecc.sign_digest_der(ecc.load_private(p.keys / "vnd-fw-ecc-prvk.pem"), digest)
    (d / "vnd_ecc_sig.der").write_bytes(der)
    keys = p.keys
    if lms_by != "vnd-fw":
        keys = p.root / "stranger"
        lms_keys(keys)
    sig = LmsSigner.load(keys / f"{lms_by}-lms-prvk.pem").sign_digest(digest)
    (d / "vnd_lms_sig.der").write_bytes(sig)
    return d


@pytest.mark.parametrize("which", ["owner ecc", "owner lms", "vendor ecc", "vendor lms prebuilt"])
@pytest.mark.parametrize("cmd", ["create-auth-man", "create-auth-flash"])
def test_key_mismatch_with_the_bundle_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str, cmd: str
) -> None:
    """The config's keys against caliptra_file's: exit 2, one line naming both fingerprints and
    the fix, nothing written; --allow-key-mismatch builds it, with a warning."""
    from independent import ecc_pub_hw
    from oem import parse

    prebuilt = which.endswith("prebuilt")
    p = make_project(
        tmp_path,
        sample_bundle=True,
        lms=True,
        vendor_signature="prebuilt" if prebuilt else "generate",
    )
    extra: list[str] = []
    if prebuilt:
        extra = ["--vnd-sig-dir", str(_prebuilt_sigs(p, lms_by="vnd-fw"))]
        assert main(["create-auth-man", *p.args("--man", str(p.man), *extra)]) == 0  # consistent
        p.man.unlink()
        p.flash.unlink(missing_ok=True)
        import shutil

        shutil.rmtree(p.root / "vnd_sig")
        extra = ["--vnd-sig-dir", str(_prebuilt_sigs(p, lms_by="own-fw"))]
    b = parse((p.prebuilt / "caliptra-fw.bin").read_bytes())
    party, algo = which.split()[:2]
    if not prebuilt:
        _new_pair(p, f"{'own' if party == 'owner' else 'vnd'}-fw-{algo}")
    target = p.flash if cmd == "create-auth-flash" else p.man  # the output it would replace
    target.write_bytes(PREVIOUS)
    outs = ["--man", str(p.man)] + (["--flash", str(p.flash)] if cmd == "create-auth-flash" else [])
    capsys.readouterr()
    assert main([cmd, *p.args(*outs, *extra)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    line = err[0]
    if party == "owner":
        pub = p.keys / f"own-fw-{algo}-pubk.pem"
        mine = ecc_pub_hw(pub) if algo == "ecc" else pub.read_bytes()
        theirs = b.owner_ecc if algo == "ecc" else b.owner_lms
        assert f"owner_fw_key_config.{algo}_pub_key" in line and "owner-sign-bundle" in line
        assert _fp(mine, algo) in line and _fp(theirs, algo) in line
    elif not prebuilt:
        mine = ecc_pub_hw(p.keys / "vnd-fw-ecc-pubk.pem")
        assert "vendor_fw_key_config.ecc_pub_key" in line and "vendor ECC key 0" in line
        assert _fp(mine, "ecc") in line and _fp(b.vendor_ecc, "ecc") in line
        assert "the bundle made for these vendor keys" in line
    else:
        assert "prebuilt vendor LMS signature" in line and "vendor LMS key 0" in line
        assert _fp(b.vendor_lms, "lms") in line and "none of the bundle's vendor LMS keys" in line
        assert "vendor ECC" not in line  # the ECC one is made by the selected key
    assert "--allow-key-mismatch" in line
    assert target.read_bytes() == PREVIOUS
    assert not (p.man.exists() and target != p.man)
    assert main([cmd, *p.args(*outs, *extra, "--allow-key-mismatch")]) == 0
    warn = capsys.readouterr().err
    assert (
        "warning:" in warn and "the device rejects this image (--allow-key-mismatch given)" in warn
    )
    assert target.read_bytes() != PREVIOUS


def test_no_bundle_no_key_check(tmp_path: Path) -> None:
    """caliptra_file = "" (the A1 configs): nothing to compare, the build goes on."""
    p = make_project(tmp_path, caliptra=None, lms=True)
    assert main(["create-auth-man", *p.args("--man", str(p.man))]) == 0


def test_log_lines_name_their_level() -> None:
    """An error-level log line (the server's "internal error", a key store it cannot use) says
    "error", not "warning"."""
    import logging

    from imgtool.cli.main import _Formatter

    f = _Formatter()

    def line(level: int) -> str:
        return f.format(logging.LogRecord("imgtool", level, __file__, 1, "m", None, None))

    assert line(logging.ERROR) == "cptra-imgtool: error: m"
    assert line(logging.WARNING) == "cptra-imgtool: warning: m"
    assert line(logging.INFO) == "cptra-imgtool: info: m"
