"""Incremental builds: doit re-runs exactly the tasks a change invalidates."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from projects import Project, make_project

from imgtool.cli import main

REPO = Path(__file__).resolve().parent.parent
SLOTS_ENDORSE = {"sign:vnd_pub_sig_ecc", "sign:own_pub_sig_ecc", "sign:own_svn_sig_ecc"}
SLOTS_IMC = {"sign:vnd_imc_sig_ecc", "sign:own_imc_sig_ecc"}


def doit(prj: Project, *args: str, ok: bool = True) -> tuple[set[str], set[str], str]:
    """Run doit on a project; returns (executed tasks, up-to-date tasks, output)."""
    cmd = prj.doit_cmd(*args)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    out = r.stdout + r.stderr
    assert (r.returncode == 0) == ok, out
    ran = set(re.findall(r"^\.  (\S+)", r.stdout, re.M))
    skipped = set(re.findall(r"^-- (\S+)", r.stdout, re.M))
    return ran, skipped, out


@pytest.fixture
def prj(tmp_path: Path) -> Project:
    # flags = 1 so that the vendor IMC signature is in use too
    return make_project(tmp_path, flags=1)


def _outputs(prj: Project) -> tuple[Path, Path]:
    return prj.root / "out" / "test-auth-manifest.bin", prj.root / "out" / "test-flash-image.bin"


def test_cold_then_noop(prj: Project) -> None:
    ran, _, _ = doit(prj, "flash")
    assert {"imc", "manifest", "flash"} <= ran
    assert SLOTS_ENDORSE | SLOTS_IMC | {"sign:vnd_pub_sig_ecc"} <= ran
    assert len([t for t in ran if t.startswith("digest:")]) == 6
    ran, skipped, _ = doit(prj, "flash")
    assert ran == set()
    assert {"flash", "manifest", "imc"} <= skipped


def test_one_image_change_reruns_exactly_its_chain(prj: Project) -> None:
    doit(prj, "flash")
    img = prj.prebuilt / "img2.bin"
    img.write_bytes(img.read_bytes() + b"more")
    ran, _, _ = doit(prj, "flash")
    assert ran == {"digest:003-img2.bin", "imc", *SLOTS_IMC, "manifest", "flash"}


def test_touch_without_change_reruns_nothing(prj: Project) -> None:
    doit(prj, "flash")
    img = prj.prebuilt / "img1.bin"
    st = img.stat()
    os.utime(img, (st.st_atime + 100, st.st_mtime + 100))
    ran, _, _ = doit(prj, "flash")
    assert ran == set()


def test_security_version_change(prj: Project) -> None:
    doit(prj, "flash")
    prj.cfg.write_text(prj.cfg.read_text().replace("security_version = 3", "security_version = 4"))
    ran, _, _ = doit(prj, "flash")
    assert ran == {"sign:own_svn_sig_ecc", "manifest", "flash"}


def test_key_file_change(prj: Project) -> None:
    from imgtool import ecc

    doit(prj, "flash")
    for suffix in ("prvk", "pubk"):
        (prj.keys / f"own-man-ecc-{suffix}.pem").unlink()
    ecc.generate_keypair(prj.keys / "own-man-ecc")
    ran, _, _ = doit(prj, "flash")
    # the owner manifest key is covered by the owner endorsement and the SVN signature,
    # and it signs the owner IMC signature
    assert ran == {
        "sign:own_pub_sig_ecc",
        "sign:own_svn_sig_ecc",
        "sign:own_imc_sig_ecc",
        "manifest",
        "flash",
    }


def test_doit_output_equals_create_auth_flash(prj: Project, tmp_path: Path) -> None:
    doit(prj, "flash")
    man, flash = _outputs(prj)
    assert (
        main(
            [
                "create-auth-flash",
                *prj.args("--man", str(tmp_path / "m2.bin"), "--flash", str(tmp_path / "f2.bin")),
            ]
        )
        == 0
    )
    assert man.read_bytes() == (tmp_path / "m2.bin").read_bytes()
    assert flash.read_bytes() == (tmp_path / "f2.bin").read_bytes()


def test_failing_helper_keeps_outputs_and_retries(prj: Project) -> None:
    helper = prj.root / "helper.py"
    helper.write_text(
        "import sys\nfrom imgtool import ecc\n"
        f"k = ecc.load_private({str(prj.keys / 'own-man-ecc-prvk.pem')!r})\n"
        "d = bytes.fromhex(sys.stdin.readline().strip())\n"
        "print(ecc.sign_digest_der(k, d).hex())\n"
    )
    text = prj.cfg.read_text()
    prj.cfg.write_text(
        text + f'\n[sign_helper]\nowner_ecc_man_key_sign_helper = "{sys.executable} {helper}"\n'
    )
    doit(prj, "flash")
    man, flash = _outputs(prj)
    before = man.read_bytes(), flash.read_bytes()
    good = helper.read_text()
    helper.write_text("import sys\nsys.exit(1)\n")
    img = prj.prebuilt / "img0.bin"
    img.write_bytes(b"new content!")
    _, _, out = doit(prj, "flash", ok=False)
    assert "exited with 1" in out and "Traceback" not in out
    assert (man.read_bytes(), flash.read_bytes()) == before
    helper.write_text(good)
    ran, _, _ = doit(prj, "flash")
    assert "sign:own_imc_sig_ecc" in ran and "flash" in ran
    assert flash.read_bytes() != before[1]


def test_parallel_processes(prj: Project) -> None:
    ran, _, _ = doit(prj, "-n", "2", "-P", "process", "flash")
    assert "flash" in ran
    _, flash = _outputs(prj)
    from independent import check_flash

    check_flash(flash.read_bytes())


def test_build_command_runs_same_tasks_without_dodo(
    prj: Project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(prj.root)
    args = [
        "build",
        "--cfg",
        str(prj.cfg),
        "--key-dir",
        str(prj.keys),
        "--prebuilt-dir",
        str(prj.prebuilt),
        "flash",
    ]
    assert main(args) == 0
    assert (prj.root / "out" / "test-flash-image.bin").exists()
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "-- flash" in out and ".  " not in out


def test_build_bad_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "--cfg", str(tmp_path / "nope.toml"), "flash"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.toml" in err[0]


def test_dodo_bad_config_is_one_line(tmp_path: Path) -> None:
    prj = Project(tmp_path, tmp_path / "nope.toml", tmp_path, tmp_path, tmp_path)
    _, _, out = doit(prj, "flash", ok=False)
    assert "cptra-imgtool: error:" in out and "Traceback" not in out
