"""Incremental Caliptra 2.x builds through doit and `cptra-imgtool build` (pqc=mldsa|lms).

doit runs as a subprocess on the repository's dodo.py (`-d <project>`); the assertions are on the
task status doit reports (".  name" executed, "-- name" up to date), never on time. The outputs
are compared byte for byte with create-auth-flash-2x (ML-DSA-87 and ECDSA sign
deterministically; the default test LMS keys are sparse demo keys, whose signatures reuse one
leaf, so they are deterministic too).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.projects import lms_keys, make_project
from helpers.projects2 import Project2, make_project2

from imgtool.cli.main import main

REPO = Path(__file__).resolve().parent.parent
PAIRS = ("vnd_pub_sig", "own_pub_sig", "vnd_imc_sig", "own_imc_sig")
SIGS = {f"sign:{p}_{a}" for p in PAIRS for a in ("ecc", "pqc")}
IMC_SIGS = {s for s in SIGS if "_imc_" in s}
PUB_SIGS = SIGS - IMC_SIGS
DIGESTS = {"digest:000-mcu-runtime.bin", *(f"digest:00{i + 1}-soc-image-{i}.bin" for i in range(3))}
ALL = DIGESTS | SIGS | {"imc", "manifest", "flash"}
PQC = {"mldsa": "1", "lms": "3"}


def doit(
    p: Project2, *args: str, ok: bool = True, pqc: str | None = "mldsa"
) -> tuple[set[str], str]:
    """Run doit on a 2.x project; returns (executed tasks, output)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), "-d", str(p.root), *args]
    cmd += [f"cfg={p.cfg}", f"key_dir={p.keys}", f"prebuilt_dir={p.prebuilt}"]
    if pqc is not None:
        cmd.append(f"pqc={pqc}")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    out = r.stdout + r.stderr
    assert (r.returncode == 0) == ok, out
    return set(re.findall(r"^\.  (\S+)", r.stdout, re.M)), out


def outputs(p: Project2) -> list[Path]:
    prj = f"{p.style}-test"
    out = p.root / "out"
    return [out / f"{prj}-auth-manifest.bin", out / f"{prj}-flash-image.bin", out / "fw_toc.bin"]


def cli_outputs(p: Project2, pqc: str, where: str = "cli") -> list[bytes]:
    """create-auth-flash-2x's manifest, flash image and fw_toc.bin (same manifest file name as
    the doit build: fw_toc records it)."""
    d = p.root / where
    man = d / outputs(p)[0].name
    args = [*p.args(PQC[pqc]), "--man", str(man), "--flash", str(d / "f.bin")]
    r = subprocess.run(
        [sys.executable, "-m", "imgtool", "create-auth-flash-2x", *args],
        capture_output=True, text=True, cwd=p.root, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return [man.read_bytes(), (d / "f.bin").read_bytes(), (d / "fw_toc.bin").read_bytes()]


def same_as_cli(p: Project2, pqc: str, where: str = "cli") -> None:
    assert [f.read_bytes() for f in outputs(p)] == cli_outputs(p, pqc, where)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("pqc", ["mldsa", "lms"])
def test_cold_noop_one_image(tmp_path: Path, pqc: str) -> None:
    p = make_project2(tmp_path, "ast2755")
    ran, _ = doit(p, "flash", pqc=pqc)
    assert ran == ALL
    same_as_cli(p, pqc)
    ran, out = doit(p, "flash", pqc=pqc)
    assert ran == set()
    assert set(re.findall(r"^-- (\S+)", out, re.M)) == ALL
    img = p.prebuilt / "soc-image-1.bin"
    img.write_bytes(img.read_bytes() + b"more")
    ran, _ = doit(p, "flash", pqc=pqc)
    # the public-key signatures do not cover the IMC: they stay
    assert ran == {"digest:002-soc-image-1.bin", "imc", *IMC_SIGS, "manifest", "flash"}
    same_as_cli(p, pqc, "cli2")
    assert doit(p, "flash", pqc=pqc)[0] == set()


def test_touch_without_change_reruns_nothing(tmp_path: Path) -> None:
    p = make_project2(tmp_path, "ast2705")
    doit(p, "flash")
    img = p.prebuilt / "soc-image-0.bin"
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns - 5_000_000_000))
    assert doit(p, "flash")[0] == set()


def test_config_value_changes(tmp_path: Path) -> None:
    p = make_project2(tmp_path, "ast2705")
    doit(p, "flash")
    # svn is covered by the vendor public-key signatures only (bytes 8..2708)
    _edit(p.cfg, "security_version = 3", "security_version = 4")
    assert doit(p, "flash")[0] == {"sign:vnd_pub_sig_ecc", "sign:vnd_pub_sig_pqc", "manifest",
                                   "flash"}  # fmt: skip
    same_as_cli(p, "mldsa", "cli-svn")
    # a load_stage enters the IMC, not the digests
    _edit(p.cfg, "load_stage = 1", "load_stage = 3")
    assert doit(p, "flash")[0] == {"imc", *IMC_SIGS, "manifest", "flash"}
    # the other PQC type: every PQC signature and the ECC public-key signatures (they cover the
    # PQC public keys); the ECC IMC signatures cover the same IMC and stay
    ran, _ = doit(p, "flash", pqc="3")
    assert ran == SIGS - {"sign:vnd_imc_sig_ecc", "sign:own_imc_sig_ecc"} | {"manifest", "flash"}
    same_as_cli(p, "lms", "cli-lms")
    # flags bit 0 off: no vendor IMC signatures; the vendor public-key signatures cover flags
    _edit(p.cfg, "flags = 1", "flags = 0")
    ran, _ = doit(p, "flash", pqc="lms")
    assert ran == {"sign:vnd_pub_sig_ecc", "sign:vnd_pub_sig_pqc", "manifest", "flash"}
    same_as_cli(p, "lms", "cli-flags")


def test_missing_private_key_leaves_its_slot_empty(tmp_path: Path) -> None:
    p = make_project2(tmp_path, "ast2705")
    _edit(p.cfg, 'mldsa_priv_key = "own-man-mldsa-prvk.bin"\n', "")
    ran, _ = doit(p, "flash")
    assert ran == ALL - {"sign:own_imc_sig_pqc"}
    same_as_cli(p, "mldsa")


def test_lms_leaves_spent_only_by_rerun_signatures(tmp_path: Path) -> None:
    """Full-tree LMS keys with real leaf state: a no-op run spends no leaf; an image change
    spends one leaf of each manifest key (the IMC signatures) and none of the FW keys."""
    from imgtool.keys import lms, lms_state

    lms_keys(tmp_path / "keys", "h5")  # make_project2 keeps these
    p = make_project2(tmp_path, "ast1040")

    def used() -> dict[str, int]:
        return {
            k: lms_state.read_state(
                p.keys / f"{k}-lms-prvk.pem", lms.load_public(p.keys / f"{k}-lms-pubk.pem")
            )
            for k in ("vnd-fw", "vnd-man", "own-fw", "own-man")
        }

    doit(p, "flash", pqc="lms")
    before = used()
    assert doit(p, "flash", pqc="lms")[0] == set()
    assert used() == before
    (p.prebuilt / "soc-image-0.bin").write_bytes(b"changed")
    ran, _ = doit(p, "flash", pqc="lms")
    assert "sign:own_imc_sig_pqc" in ran and not PUB_SIGS & ran
    assert used() == {**before, "vnd-man": before["vnd-man"] + 1, "own-man": before["own-man"] + 1}


@pytest.mark.parametrize(
    "value, words",
    [
        (None, ["a Caliptra 2.x config needs the PQC type", "pqc=mldsa"]),
        ("2", ["pqc=2", "must be mldsa"]),
        ("", ["needs the PQC type"]),
    ],
)
def test_pqc_missing_or_invalid(tmp_path: Path, value: str | None, words: list[str]) -> None:
    p = make_project2(tmp_path, "ast2705")
    ran, out = doit(p, "flash", ok=False, pqc=value)
    lines = out.strip().splitlines()
    assert not ran and len(lines) == 1 and lines[0].startswith("cptra-imgtool: error:"), out
    assert all(w in lines[0] for w in words), lines[0]
    assert not (p.root / "out" / "ast2705-test").exists()


def test_pqc_refused_for_1x_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prj = make_project(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(prj.doit_cmd("flash", "pqc=mldsa"), capture_output=True, text=True,
                       env=env, timeout=120)  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert len(lines) == 1 and "only for Caliptra 2.x configs" in lines[0]
    monkeypatch.chdir(tmp_path)
    assert main(["build", *prj.args("--pqc-key-type", "1", "flash")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only for Caliptra 2.x configs" in err[0]


@pytest.mark.parametrize("pqc", ["1", "3"])
def test_build_command(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pqc: str,
) -> None:
    p = make_project2(tmp_path, "ast2755")
    monkeypatch.chdir(p.root)
    args = p.args(pqc)  # --cfg ... --pqc-key-type N, as for create-auth-flash-2x
    assert main(["build", *args, "-n", "2", "-P", "thread", "flash"]) == 0
    assert set(re.findall(r"^\.  (\S+)", capsys.readouterr().out, re.M)) == ALL
    same_as_cli(p, "mldsa" if pqc == "1" else "lms")
    assert main(["build", *args]) == 0  # default task: flash, up to date
    out = capsys.readouterr().out
    assert "-- flash" in out and ".  " not in out
    assert main(["build", *args[:-2], "flash"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--pqc-key-type 1|3" in err[0]
    assert main(["build", *args[:-1], "5", "flash"]) == 2
    assert "pqc=5: must be" in capsys.readouterr().err
    assert main(["build", *args, "flsh"]) == 2
    err = capsys.readouterr().err
    assert "'flsh': no such task (tasks: digest, imc, sign, manifest, flash, verify" in err


def test_parallel_processes(tmp_path: Path) -> None:
    p = make_project2(tmp_path, "ast2705")
    assert doit(p, "-n", "2", "-P", "process", "flash", pqc="lms")[0] == ALL
    same_as_cli(p, "lms")
    assert doit(p, "-n", "2", "-P", "process", "flash", pqc="lms")[0] == set()


def test_padding_out_folder(tmp_path: Path) -> None:
    """padding_out_folder: the padded copies are written there (one pad task each), by doit
    and by create-auth-flash-2x alike; a changed image re-pads only its copy."""
    p = make_project2(tmp_path, "ast2755")
    pads = tmp_path / "pads"
    _edit(
        p.cfg,
        "padding_align_size = 256\n",
        f'padding_align_size = 256\npadding_out_folder = "{pads}"\n',
    )
    ran, _ = doit(p, "flash")
    names = ["caliptra-fw", "mcu-runtime", *(f"soc-image-{i}" for i in range(3))]
    assert {t for t in ran if t.startswith("pad:")} == {f"pad:{n}_align_256.bin" for n in names}
    assert ran - {t for t in ran if t.startswith("pad:")} == ALL
    img = (p.prebuilt / "soc-image-2.bin").read_bytes()
    assert (pads / "soc-image-2_align_256.bin").read_bytes() == img + bytes(256 - len(img))
    copies = {f.name: f.read_bytes() for f in pads.iterdir()}
    for f in pads.iterdir():
        f.unlink()
    same_as_cli(p, "mldsa")  # the CLI writes the same copies
    assert {f.name: f.read_bytes() for f in pads.iterdir()} == copies
    # copies replaced behind doit's back: their pad tasks run again (and find the same bytes)
    assert doit(p, "flash")[0] == {f"pad:{n}_align_256.bin" for n in names}
    (p.prebuilt / "soc-image-0.bin").write_bytes(b"changed")
    ran, _ = doit(p, "flash")
    assert ran == {"pad:soc-image-0_align_256.bin", "digest:001-soc-image-0.bin", "imc",
                   *IMC_SIGS, "manifest", "flash"}  # fmt: skip
    same_as_cli(p, "mldsa", "cli2")
    doit(p, "clean")
    assert not pads.exists()


def test_manifest_verify_list_clean(tmp_path: Path) -> None:
    p = make_project2(tmp_path, "ast2705")
    man, flash, toc = outputs(p)
    ran, _ = doit(p, "manifest")
    assert "manifest" in ran and "flash" not in ran and man.exists() and not flash.exists()
    # the test bundle is a stand-in (not a signed 2.x bundle): verify runs every check and
    # fails only the bundle ones
    ran, out = doit(p, "verify", ok=False)
    assert ran == {"flash", "verify"} and "Caliptra 2.x flash image" in out
    assert re.search(r"^ok   trust\.chain", out, re.M)
    assert re.search(r"^ok   .*fw_toc", out, re.M), out
    fails = set(re.findall(r"^FAIL (\S+)", out, re.M))
    assert fails and all(f.startswith("bundle.") for f in fails), fails
    _, out = doit(p, "list")
    listed = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {"digest", "imc", "sign", "manifest", "flash", "verify"} <= listed
    doit(p, "clean")
    assert not man.exists() and not flash.exists() and not toc.exists()


@pytest.mark.parametrize(
    "target, expect",
    [
        ("out/ast2705-test/sig/own_imc_sig_pqc.bin", {"sign:own_imc_sig_pqc"}),
        ("out/ast2705-test/imc.bin", {"imc"}),
        ("out/fw_toc.bin", {"flash"}),
    ],
)
def test_edited_target_is_rewritten(tmp_path: Path, target: str, expect: set[str]) -> None:
    p = make_project2(tmp_path, "ast2705")
    doit(p, "flash")
    path = p.root / target
    good = path.read_bytes()
    path.write_bytes(bytes([good[0] ^ 1]) + good[1:])
    assert doit(p, "flash")[0] == expect
    assert path.read_bytes() == good


def test_flash_refuses_a_stale_manifest(tmp_path: Path) -> None:
    """create-auth-flash-2x --man with a manifest older than an image: one line, exit 2 (the
    device would reject the image); the doit flash task cannot be given one (it rebuilds)."""
    p = make_project2(tmp_path, "ast2705")
    r = subprocess.run(
        [sys.executable, "-m", "imgtool", "create-auth-man-2x", *p.args("1"), "--man", str(p.man)],
        capture_output=True, text=True, cwd=p.root,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    (p.prebuilt / "soc-image-2.bin").write_bytes(b"newer")
    args = [*p.args("1"), "--man", str(p.man), "--flash", str(p.flash)]
    r = subprocess.run(
        [sys.executable, "-m", "imgtool", "create-auth-flash-2x", *args],
        capture_output=True, text=True, cwd=p.root,
    )  # fmt: skip
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "older than image" in lines[0] and "0x1002" in lines[0]
    assert not p.flash.exists()


def test_lms_leaves_checked_before_the_first_is_spent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One LMS key for the vendor FW and MAN sections signs two slots per build; with one leaf
    left, doit/build and create-auth-man-2x refuse before signing anything with it."""
    import hashlib

    from imgtool.keys.lms_signer import LmsSigner

    lms_keys(tmp_path / "keys", "h5")
    p = make_project2(tmp_path, "ast2705")
    _edit(p.cfg, 'lms_priv_key = "vnd-man-lms-prvk.pem"', 'lms_priv_key = "vnd-fw-lms-prvk.pem"')
    _edit(p.cfg, 'lms_pub_key = "vnd-man-lms-pubk.pem"', 'lms_pub_key = "vnd-fw-lms-pubk.pem"')
    key = p.keys / "vnd-fw-lms-prvk.pem"
    signer = LmsSigner.load(key)
    for i in range(31):
        signer.sign_digest(hashlib.sha384(b"spend %d" % i).digest())
    assert LmsSigner.load(key).leaves_left() == 1
    monkeypatch.chdir(p.root)
    capsys.readouterr()
    assert main(["build", *p.args("3"), "flash"]) == 2
    assert "has 1 one-time signature left, this build needs 2" in capsys.readouterr().out
    assert LmsSigner.load(key).leaves_left() == 1
    assert main(["create-auth-man-2x", *p.args("3")]) == 2
    assert "this build needs 2" in capsys.readouterr().err
    assert LmsSigner.load(key).leaves_left() == 1
