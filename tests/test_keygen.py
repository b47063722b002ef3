"""keygen, lms-status and new-project through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgtool import lms
from imgtool.cli import main
from imgtool.config import load_config
from imgtool.lms_signer import LmsSigner


def test_keygen_ecc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--algo", "ecc", "--out", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k-prvk.pem").stat().st_mode & 0o777 == 0o600
    assert b"BEGIN PUBLIC KEY" in (tmp_path / "k-pubk.pem").read_bytes()
    assert main(["keygen", "--algo", "ecc", "--out", str(tmp_path / "k")]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_keygen_lms_needs_force_for_non_caliptra_types(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keygen", "--algo", "lms", "--height", "5", "--out", str(tmp_path / "k")]) == 2
    assert "--force" in capsys.readouterr().err
    assert not (tmp_path / "k-prvk.pem").exists()
    args = ["keygen", "--algo", "lms", "--height", "5", "--w", "8", "--force"]
    assert main([*args, "--out", str(tmp_path / "k")]) == 0
    pub = lms.load_public(tmp_path / "k-pubk.pem")
    assert (pub.lms_type, pub.ots_type) == (lms.LMS_SHA256_M24_H5, lms.LMOTS_SHA256_N24_W8)
    capsys.readouterr()
    assert main(["lms-status", str(tmp_path / "k-prvk.pem")]) == 0
    assert "used: 0  left: 32" in capsys.readouterr().out
    LmsSigner.load(tmp_path / "k-prvk.pem").sign_digest(bytes(48))
    assert main(["lms-status", str(tmp_path / "k-prvk.pem")]) == 0
    assert "used: 1  left: 31" in capsys.readouterr().out


def test_lms_status_of_sparse_demo_key(ref: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = ref / "key" / "ast2700-default" / "own-fw-lms-prvk.pem"
    assert main(["lms-status", str(key)]) == 0
    assert "sparse demo key" in capsys.readouterr().out


def test_new_project(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new-project", "p1", "--root", str(tmp_path), "--lms-height", "5"]) == 0
    cfg = tmp_path / "config" / "p1.toml"
    keys = tmp_path / "keys" / "p1"
    c = load_config(cfg, key_dir=keys, check_files=False)
    assert c.prj_name == "p1" and str(c.vendor_signature) == "generate"
    for prefix in ("vnd-fw", "vnd-man", "own-fw", "own-man"):
        for algo in ("ecc", "lms"):
            assert (keys / f"{prefix}-{algo}-prvk.pem").exists()
        assert (keys / f"{prefix}-lms-prvk.pem.state").exists()
    assert "zephyr-mcu-runtime.bin" in (tmp_path / "prebuilt" / "p1" / "README.md").read_text()
    before = cfg.read_bytes()
    capsys.readouterr()
    assert main(["new-project", "p1", "--root", str(tmp_path), "--lms-height", "5"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert cfg.read_bytes() == before


def test_new_project_from_reference_prebuilt(tmp_path: Path) -> None:
    src = tmp_path / "prebuilt" / "ref"
    src.mkdir(parents=True)
    (src / "u-boot.bin").write_bytes(b"UBOOT")
    assert (
        main(["new-project", "p2", "--root", str(tmp_path), "--from", "ref", "--lms-height", "5"])
        == 0
    )
    assert (tmp_path / "prebuilt" / "p2" / "u-boot.bin").read_bytes() == b"UBOOT"


def test_adopt_a_full_tree_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from imgtool import lms_state, lms_tree

    priv, _ = lms_tree.generate(tmp_path / "k", lms.LMS_SHA256_M24_H5, lms.LMOTS_SHA256_N24_W4)
    lms_state.state_path(priv).unlink()
    lms_tree.cache_path(priv).unlink()
    assert main(["lms-status", str(priv), "--init", "--next-q", "7"]) == 0
    assert lms.sig_q(LmsSigner.load(priv).sign_digest(bytes(48))) == 7
    capsys.readouterr()
    assert main(["lms-status", str(priv), "--init"]) == 2  # needs --next-q or --scan
    assert "--init needs --next-q N" in capsys.readouterr().err
    assert main(["lms-status", str(priv), "--init", "--next-q", "3"]) == 2  # never backwards
    err = capsys.readouterr().err
    assert "refusing to go back" in err and "--next-q 8" in err and err.count("\n") == 1
    assert main(["lms-status", str(priv), "--init", "--next-q", "20"]) == 0  # forward is fine
    assert lms.sig_q(LmsSigner.load(priv).sign_digest(bytes(48))) == 20


def test_adopting_a_sparse_key_is_refused(
    ref: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    for name in ("own-fw-lms-prvk.pem", "own-fw-lms-pubk.pem"):
        shutil.copy(ref / "key" / "ast2700-default" / name, tmp_path / name)
    assert main(["lms-status", str(tmp_path / "own-fw-lms-prvk.pem"), "--init"]) == 2
    assert "sparse demo key" in capsys.readouterr().err
    assert not (tmp_path / "own-fw-lms-prvk.pem.state").exists()
