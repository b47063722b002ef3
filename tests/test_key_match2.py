"""Caliptra 2.x: the config's vendor / owner FW keys against caliptra_file's CMN2 bundle
(imgtool.keys.key_match2, RT3-F13). A real bundle (tests/test_bundle2 `bundle`) with other keys
is refused before anything is signed (exit 2, one line naming both fingerprints and
--allow-key-mismatch); with --allow-key-mismatch / allow_key_mismatch=1 the build goes on with
a warning; the same bundle with the config's keys patched in builds; a stand-in blob builds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.projects2 import Project2, make_project2

from imgtool.cli.main import main
from imgtool.config2 import load_config2
from imgtool.formats import bundle2 as b2
from imgtool.keys import key_match2
from imgtool.keys.key_match import stored_public
from imgtool.keys.mldsa import MldsaPublicKey

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Project2:
    return make_project2(tmp_path_factory.mktemp("km2-base"), "ast2705")


def _other_bundle() -> bytes:
    from test_bundle2 import bundle

    return bundle("mldsa")[0]


def _matching_bundle(base: Project2) -> bytes:
    """The test bundle with its active vendor keys and owner keys replaced by the config's
    (signatures stay the bundle's: key_match2 compares keys only)."""
    data = _other_bundle()
    b = b2.parse_bundle2(data)
    cfg2 = load_config2(base.cfg, key_dir=base.keys, prebuilt_dir=base.prebuilt)
    vnd, own = cfg2.keys["vendor_fw_key_config"], cfg2.keys["owner_fw_key_config"]
    for old, new in (
        (b.vendor_ecc_pub, stored_public(vnd.ecc_pub, "ecc")),
        (b.vendor_pqc_pub, MldsaPublicKey.load(vnd.mldsa_pub).raw),
        (b.owner_ecc_pub, stored_public(own.ecc_pub, "ecc")),
        (b.owner_pqc_pub, MldsaPublicKey.load(own.mldsa_pub).raw),
    ):
        assert data.count(old) == 1 and len(old) == len(new)
        data = data.replace(old, new)
    return data


def _project(base: Project2, tmp: Path, caliptra: bytes | None) -> tuple[Path, Path]:
    pre = tmp / "pre"
    pre.mkdir()
    for f in base.prebuilt.iterdir():
        (pre / f.name).write_bytes(f.read_bytes())
    if caliptra is not None:
        (pre / "caliptra-fw.bin").write_bytes(caliptra)
    cfg = tmp / base.cfg.name
    cfg.write_text(base.cfg.read_text())
    return cfg, pre


def _flash_cli(
    capsys: pytest.CaptureFixture[str], base: Project2, cfg: Path, pre: Path, *extra: str
) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = main(
        [
            "create-auth-flash-2x", "--cfg", str(cfg), "--key-dir", str(base.keys),
            "--prebuilt-dir", str(pre), "--pqc-key-type", "1", *extra,
        ]
    )  # fmt: skip
    return rc, capsys.readouterr().err.strip().splitlines()


def test_other_bundle_refused_before_signing(
    base: Project2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    cfg, pre = _project(base, tmp_path, _other_bundle())
    monkeypatch.chdir(tmp_path)
    rc, err = _flash_cli(capsys, base, cfg, pre)
    assert rc == 2 and len(err) == 1, err
    line = err[0]
    assert "device would reject" in line and "--allow-key-mismatch" in line
    for party in ("vendor", "owner"):
        for field in ("ecc_pub_key", "mldsa_pub_key"):
            assert f"{party}_fw_key_config.{field}" in line
    assert line.count("ecc:") == 4 and line.count("mldsa:") == 4
    assert "Traceback" not in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.bin"))


def test_allow_builds_with_warning(
    base: Project2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    cfg, pre = _project(base, tmp_path, _other_bundle())
    monkeypatch.chdir(tmp_path)
    rc, err = _flash_cli(capsys, base, cfg, pre, "--allow-key-mismatch")
    assert rc == 0, err
    assert any("device rejects this image" in e and "--allow-key-mismatch" in e for e in err)
    assert list((tmp_path / "out").glob("*-flash-image.bin"))


def test_matching_bundle_builds(
    base: Project2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    cfg, pre = _project(base, tmp_path, _matching_bundle(base))
    monkeypatch.chdir(tmp_path)
    cfg2 = load_config2(cfg, key_dir=base.keys, prebuilt_dir=pre)
    assert key_match2.mismatches(cfg2, "mldsa") == []
    # the LMS build of the same (ML-DSA) bundle is a mismatch
    assert [m.party for m in key_match2.mismatches(cfg2, "lms")] == ["vendor"]
    rc, err = _flash_cli(capsys, base, cfg, pre)
    assert rc == 0, err
    assert not any("reject" in e for e in err)


@pytest.mark.parametrize("blob", [b"", b"not a bundle" * 10])
def test_stand_in_bundle_builds(
    base: Project2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], blob: bytes,
) -> None:  # fmt: skip
    cfg, pre = _project(base, tmp_path, blob)
    monkeypatch.chdir(tmp_path)
    rc, err = _flash_cli(capsys, base, cfg, pre)
    assert rc == 0, err


def _doit(
    tmp: Path, base: Project2, cfg: Path, pre: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), "-d", str(tmp), "flash"]
    cmd += [f"cfg={cfg}", f"key_dir={base.keys}", f"prebuilt_dir={pre}", "pqc=mldsa", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_doit_refuses_then_allows(base: Project2, tmp_path: Path) -> None:
    cfg, pre = _project(base, tmp_path, _other_bundle())
    r = _doit(tmp_path, base, cfg, pre)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and "device would reject" in lines[0], r.stderr
    sig = tmp_path / "out"
    assert not any(sig.rglob("sig/*.bin")) and not any(sig.glob("*-flash-image.bin"))
    r = _doit(tmp_path, base, cfg, pre, "allow_key_mismatch=1")
    assert r.returncode == 0, r.stderr
    assert "device rejects this image" in r.stderr + r.stdout
    assert list(sig.glob("*-flash-image.bin"))


def test_build_command_refuses_other_bundle(
    base: Project2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    cfg, pre = _project(base, tmp_path, _other_bundle())
    monkeypatch.chdir(tmp_path)
    argv = ["build", "--cfg", str(cfg), "--key-dir", str(base.keys), "--prebuilt-dir", str(pre)]
    argv += ["--pqc-key-type", "1"]
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "device would reject" in err[0], err
    assert not list((tmp_path / "out").glob("*-flash-image.bin"))
    rc = main([*argv, "--allow-key-mismatch"])
    assert rc == 0, capsys.readouterr().err
    assert list((tmp_path / "out").glob("*-flash-image.bin"))
