"""Incremental builds: doit re-runs exactly the tasks a change invalidates.

doit runs as a subprocess on the repository's dodo.py (`-d <project>`); the assertions are on the
task status doit reports (".  name" executed, "-- name" up to date), never on time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from projects import Project, make_project

from imgtool.cli.main import main

REPO = Path(__file__).resolve().parent.parent
SLOTS_ENDORSE = {"sign:vnd_pub_sig_ecc", "sign:own_pub_sig_ecc", "sign:own_svn_sig_ecc"}
SLOTS_IMC = {"sign:vnd_imc_sig_ecc", "sign:own_imc_sig_ecc"}
ALL_SLOTS = SLOTS_ENDORSE | SLOTS_IMC
DIGESTS = {
    f"digest:00{i}-{n}" for i, n in enumerate(["mcu.bin", *(f"img{k}.bin" for k in range(5))])
}


def doit(prj: Project, *args: str, ok: bool = True) -> tuple[set[str], set[str], str]:
    """Run doit on a project; returns (executed tasks, up-to-date tasks, output)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(prj.doit_cmd(*args), capture_output=True, text=True, env=env, timeout=120)
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


def _edit(prj: Project, old: str, new: str) -> None:
    text = prj.cfg.read_text()
    assert old in text
    prj.cfg.write_text(text.replace(old, new, 1))


def _cli_flash(prj: Project, out: Path) -> bytes:
    args = prj.args("--man", str(out / "m2.bin"), "--flash", str(out / "f2.bin"))
    assert main(["create-auth-flash", *args]) == 0
    return (out / "f2.bin").read_bytes()


def test_cold_then_noop(prj: Project) -> None:
    ran, _, _ = doit(prj, "flash")
    assert ran == DIGESTS | ALL_SLOTS | {"imc", "manifest", "flash"}
    ran, skipped, _ = doit(prj, "flash")
    assert ran == set()
    assert skipped == DIGESTS | ALL_SLOTS | {"imc", "manifest", "flash"}


def test_one_image_change_reruns_exactly_its_chain(prj: Project) -> None:
    doit(prj, "flash")
    img = prj.prebuilt / "img2.bin"
    img.write_bytes(img.read_bytes() + b"more")
    ran, skipped, _ = doit(prj, "flash")
    assert ran == {"digest:003-img2.bin", "imc", *SLOTS_IMC, "manifest", "flash"}
    assert SLOTS_ENDORSE | (DIGESTS - {"digest:003-img2.bin"}) <= skipped


def test_touch_without_change_reruns_nothing(prj: Project) -> None:
    """A new mtime with the same bytes: no task runs, not even the digest (the checker
    compares content), and the digest file keeps its mtime."""
    doit(prj, "flash")
    digest = prj.root / "out" / "test" / "digest" / "002.sha384"
    before = digest.stat().st_mtime_ns
    img = prj.prebuilt / "img1.bin"
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns - 5_000_000_000))
    assert doit(prj, "flash")[0] == set()
    assert doit(prj, "flash")[0] == set()
    assert digest.stat().st_mtime_ns == before


def test_same_bytes_under_new_name_rewrites_no_digest_file(prj: Project) -> None:
    """The digest task re-runs for the new path, finds the same digest, leaves its file alone:
    the IMC, the signatures and the manifest stay; the flash image (new path) is redone."""
    doit(prj, "flash")
    digest = prj.root / "out" / "test" / "digest" / "003.sha384"
    before = digest.stat().st_mtime_ns
    shutil.copy(prj.prebuilt / "img2.bin", prj.prebuilt / "img2-copy.bin")
    _edit(prj, 'file = "img2.bin"', 'file = "img2-copy.bin"')
    ran, _, _ = doit(prj, "flash")
    assert ran == {"digest:003-img2-copy.bin", "flash"}
    assert digest.stat().st_mtime_ns == before


def test_security_version_change(prj: Project) -> None:
    doit(prj, "flash")
    _edit(prj, "security_version = 3", "security_version = 4")
    ran, _, _ = doit(prj, "flash")
    assert ran == {"sign:own_svn_sig_ecc", "manifest", "flash"}


def _helper_cmd(prj: Project) -> str:
    helper = prj.root / "helper.py"
    helper.write_text(
        "import sys\nfrom imgtool.keys import ecc\n"
        f"k = ecc.load_private({str(prj.keys / 'own-man-ecc-prvk.pem')!r})\n"
        "d = bytes.fromhex(sys.stdin.readline().strip())\n"
        "print(ecc.sign_digest_der(k, d).hex())\n"
    )
    return f"{sys.executable} {helper}"


_OUT_BUNDLE = "[image_runtime_list]\ncptra_out_bundle = true"


def _add_helper(prj: Project) -> None:
    section = f'[sign_helper]\nowner_ecc_man_key_sign_helper = "{_helper_cmd(prj)}"\n\n'
    _edit(prj, "[image_runtime_list]", section + "[image_runtime_list]")


@pytest.mark.parametrize(
    "change, expect",
    [
        # version is covered by the vendor endorsement and the SVN signature only
        (
            lambda p: _edit(p, "version = 1", "version = 2"),
            {"sign:vnd_pub_sig_ecc", "sign:own_svn_sig_ecc", "manifest", "flash"},
        ),
        # flags bits other than bit 0 are not stored: identical output, nothing to do
        (lambda p: _edit(p, "flags = 1", "flags = 3"), set()),
        # flags bit 0 off: the vendor IMC slot goes, the other signatures cover the new flags
        (
            lambda p: _edit(p, "flags = 1", "flags = 0"),
            {"sign:vnd_pub_sig_ecc", "sign:own_svn_sig_ecc", "manifest", "flash"},
        ),
        # a load_stage enters the IMC, not the digests
        (
            lambda p: _edit(p, "load_stage = 1", "load_stage = 3"),
            {"imc", *SLOTS_IMC, "manifest", "flash"},
        ),
        # layout options touch only the flash image
        (lambda p: _edit(p, "[image_runtime_list]", _OUT_BUNDLE), {"flash"}),
        # another format: every signature and the manifest (no SVN slot in caliptra-1)
        (
            lambda p: _edit(p, 'format = "aspeed"', 'format = "caliptra-1"'),
            (ALL_SLOTS - {"sign:own_svn_sig_ecc"}) | {"manifest", "flash"},
        ),
        # a sign helper for the owner manifest key: that slot is re-signed; ECDSA is
        # deterministic, so its bytes are the same and nothing downstream runs
        (_add_helper, {"sign:own_imc_sig_ecc"}),
    ],
    ids=["version", "unstored-flags", "flags-bit0", "load-stage", "out-bundle", "format", "helper"],
)
def test_config_value_change(
    prj: Project, change: Callable[[Project], None], expect: set[str]
) -> None:
    doit(prj, "flash")
    man, flash = _outputs(prj)
    change(prj)
    ran, _, _ = doit(prj, "flash")
    assert ran == expect
    assert flash.read_bytes() == _cli_flash(prj, prj.root / "cli")  # and the result is right


def test_key_file_change(prj: Project) -> None:
    from imgtool.keys import ecc

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


def test_key_dir_change_same_keys(prj: Project) -> None:
    """Other key paths re-run every signature task and the manifest (its key files moved);
    the bytes are the same, so the flash image is not rewritten."""
    doit(prj, "flash")
    moved = prj.root / "keys2"
    shutil.copytree(prj.keys, moved)
    prj.keys = moved
    ran, _, _ = doit(prj, "flash")
    assert ran == ALL_SLOTS | {"manifest"}


def test_lms_leaves_spent_only_by_rerun_signatures(tmp_path: Path) -> None:
    """Full-tree LMS keys: an image change re-signs only the IMC (manifest keys); the FW keys
    (endorsements, SVN) spend no leaf."""
    from imgtool.keys import lms, lms_state

    prj = make_project(tmp_path, lms=True, flags=1, lms_kind="h5")

    def used() -> dict[str, int]:
        return {
            k: lms_state.read_state(
                prj.keys / f"{k}-lms-prvk.pem", lms.load_public(prj.keys / f"{k}-lms-pubk.pem")
            )
            for k in ("vnd-fw", "vnd-man", "own-fw", "own-man")
        }

    doit(prj, "flash")
    before = used()
    assert doit(prj, "flash")[0] == set()
    assert used() == before
    img = prj.prebuilt / "img0.bin"
    img.write_bytes(b"changed")
    ran, _, _ = doit(prj, "flash")
    assert {"sign:vnd_imc_sig_lms", "sign:own_imc_sig_lms"} <= ran
    assert not {"sign:vnd_pub_sig_lms", "sign:own_pub_sig_lms", "sign:own_svn_sig_lms"} & ran
    after = used()
    assert after == {**before, "vnd-man": before["vnd-man"] + 1, "own-man": before["own-man"] + 1}


def test_doit_output_equals_create_auth_flash(prj: Project, tmp_path: Path) -> None:
    doit(prj, "flash")
    man, flash = _outputs(prj)
    assert flash.read_bytes() == _cli_flash(prj, tmp_path)
    assert man.read_bytes() == (tmp_path / "m2.bin").read_bytes()


def test_failing_helper_keeps_outputs_and_retries(prj: Project) -> None:
    _add_helper(prj)
    doit(prj, "flash")
    man, flash = _outputs(prj)
    before = man.read_bytes(), flash.read_bytes()
    script = prj.root / "helper.py"
    good = script.read_text()
    script.write_text("import sys\nsys.exit(1)\n")
    (prj.prebuilt / "img0.bin").write_bytes(b"new content!")
    ran, _, out = doit(prj, "flash", ok=False)
    assert "exited with 1" in out and "Traceback" not in out
    assert "sign:own_imc_sig_ecc" in ran and not {"manifest", "flash"} & ran
    assert (man.read_bytes(), flash.read_bytes()) == before
    ran, _, _ = doit(prj, "flash", ok=False)  # still failing: retried, not remembered as done
    assert "sign:own_imc_sig_ecc" in ran
    script.write_text(good)
    ran, _, _ = doit(prj, "flash")
    # (the vendor IMC signature may or may not have run before doit stopped at the failure)
    assert ran - {"sign:vnd_imc_sig_ecc"} == {"sign:own_imc_sig_ecc", "manifest", "flash"}
    assert flash.read_bytes() != before[1]
    assert flash.read_bytes() == _cli_flash(prj, prj.root / "cli")


def test_parallel_processes(prj: Project, tmp_path: Path) -> None:
    ran, _, _ = doit(prj, "-n", "2", "-P", "process", "flash")
    assert ran == DIGESTS | ALL_SLOTS | {"imc", "manifest", "flash"}
    _, flash = _outputs(prj)
    assert flash.read_bytes() == _cli_flash(prj, tmp_path)
    assert doit(prj, "-n", "2", "-P", "process", "flash")[0] == set()


def test_manifest_verify_list_clean(tmp_path: Path) -> None:
    prj = make_project(tmp_path, sample_bundle=True)
    man, flash = _outputs(prj)
    ran, _, _ = doit(prj, "manifest")
    assert "manifest" in ran and "flash" not in ran and man.exists() and not flash.exists()
    ran, _, out = doit(prj, "verify")
    assert ran == {"flash", "verify"} and " 0 failed" in out
    _, _, out = doit(prj, "list")
    listed = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {"digest", "imc", "sign", "manifest", "flash", "verify"} <= listed
    doit(prj, "clean")
    assert not man.exists() and not flash.exists()
    # the digest and signature directories are gone too; doit's state and the cache stay
    left = {p.name for p in (prj.root / "out" / "test").iterdir()}
    assert ".doit.sqlite3" in left and left <= {
        ".doit.sqlite3",
        "fingerprints.json",
        "keycheck.json",
    }


def test_verify_task_with_the_fuses_anchor(tmp_path: Path) -> None:
    """`doit verify cfg=... fuses=F`: the device's fuses are an anchor of the verify task too."""
    prj = make_project(tmp_path, sample_bundle=True, lms=True)
    cal = prj.prebuilt / "caliptra-fw.bin"
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    assert main(["fuses", "--caliptra-fw", str(cal), "--out", str(good)]) == 0
    text = good.read_text().splitlines()
    bad.write_text(
        "\n".join(
            ln if not ln.startswith("owner_pk_hash") else f'owner_pk_hash = "{"ab" * 48}"'
            for ln in text
        )
        + "\n"
    )
    ran, _, out = doit(prj, "verify", f"fuses={good}")
    assert "verify" in ran and "PASS" in out and f"fuses {good}" in out
    _, _, out = doit(prj, "verify", f"fuses={bad}", ok=False)
    assert "FAIL bundle.fuse.owner_pk_hash" in out


def test_build_command_runs_same_tasks_without_dodo(
    prj: Project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(prj.root)
    opts = ["--key-dir", str(prj.keys), "--prebuilt-dir", str(prj.prebuilt)]
    # doit arguments before and after build's own options
    assert main(["build", "-n", "2", "-P", "thread", "flash", "--cfg", str(prj.cfg), *opts]) == 0
    out = capsys.readouterr().out
    assert set(re.findall(r"^\.  (\S+)", out, re.M)) == DIGESTS | ALL_SLOTS | {
        "imc",
        "manifest",
        "flash",
    }
    assert (prj.root / "out" / "test-flash-image.bin").read_bytes() == _cli_flash(
        prj, prj.root / "cli"
    )
    assert main(["build", f"--cfg={prj.cfg}", *opts]) == 0  # default task: flash
    out = capsys.readouterr().out
    assert "-- flash" in out and ".  " not in out
    assert main(["build", "--cfg", str(prj.cfg), *opts, "list"]) == 0
    assert "manifest" in capsys.readouterr().out


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "config file not found"),
        # valid TOML, but plan() refuses it: the error comes while the tasks are generated
        ("version = 2", "prebuilt vendor signature covers only version = 1"),
    ],
)
def test_config_errors_are_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    text: str | None,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    if text is None:
        prj = Project(tmp_path, tmp_path / "nope.toml", tmp_path, tmp_path, tmp_path)
    else:
        prj = make_project(tmp_path, vendor_signature="prebuilt", version=2)
    _, _, out = doit(prj, "flash", ok=False)
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cptra-imgtool: error:") and message in out
    assert main(["build", *prj.args("flash")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cptra-imgtool: error:") and message in err[0]


def test_build_needs_cfg(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "flash"]) == 2
    assert "--cfg" in capsys.readouterr().err
    assert main(["build", "--help"]) == 0
    assert "--prebuilt-dir" in capsys.readouterr().out


def test_fingerprint_cache_sees_restored_mtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checker's cache is keyed by the full stat (ctime included): rewriting a file and
    restoring its mtime does not return the old digest."""
    from imgtool.doit_tasks import checker
    from imgtool.formats.manifest1 import image_digest_file

    checker.configure(tmp_path / "fp.json")
    f = tmp_path / "a.bin"
    f.write_bytes(b"one")
    old = time.time_ns() - 10 * checker.RACY_NS
    os.utime(f, ns=(old, old))
    monkeypatch.setattr(checker, "RACY_NS", 0)  # ctime is now: settled for this test
    assert checker.digest_file(f)[0] == image_digest_file(f)
    checker.save()
    assert str(f) in (tmp_path / "fp.json").read_text()
    checker.configure(tmp_path / "other.json")
    checker.configure(tmp_path / "fp.json")  # a new run: the cache comes from the file
    one = image_digest_file(f)
    assert checker.lookup(f, f.stat()) == one
    time.sleep(0.05)  # past the filesystem's timestamp granularity
    f.write_bytes(b"two")
    os.utime(f, ns=(old, old))
    assert checker.lookup(f, f.stat()) is None
    assert checker.digest_file(f)[0] == image_digest_file(f) != one


def test_flash_skips_rehash_of_known_images_but_not_changes(
    prj: Project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Images whose settled fingerprint equals the manifest digest are not hashed again by the
    flash writer; an image that changes while the flash image is written still fails the
    task and leaves the previous flash image in place."""
    import imgtool.formats.flash1
    from imgtool.doit_tasks import checker

    monkeypatch.chdir(prj.root)
    monkeypatch.setattr(checker, "RACY_NS", 0)  # the fresh test images count as settled
    real = imgtool.formats.flash1.write_flash_file
    seen: list[list[imgtool.formats.flash1.FlashItem]] = []
    tamper: list[Path] = []

    def spy(path: Path, items: list[imgtool.formats.flash1.FlashItem], **kw: Any) -> int:
        seen.append(items)
        check = kw.get("before_commit")

        def tamper_then_check() -> None:  # every byte written, the target not yet replaced
            for p in tamper:
                p.write_bytes(p.read_bytes() + b"late")
            if check is not None:
                check()

        return real(path, items, **{**kw, "before_commit": tamper_then_check})

    monkeypatch.setattr(imgtool.formats.flash1, "write_flash_file", spy)
    assert main(["build", *prj.args("flash")]) == 0
    soc = [it for it in seen[-1] if it.identifier >= imgtool.formats.flash1.SOC_ID_BASE]
    assert len(soc) == 5 and all(it.trusted() for it in soc)  # copied, not read again
    _, flash = _outputs(prj)
    before = flash.read_bytes()
    assert before == _cli_flash(prj, prj.root / "cli")

    (prj.prebuilt / "img0.bin").write_bytes(b"other bytes")
    tamper.append(prj.prebuilt / "img1.bin")
    capsys.readouterr()
    assert main(["build", *prj.args("flash")]) == 2
    out = capsys.readouterr()
    assert "img1.bin: image changed while the flash image was written" in out.out + out.err
    assert flash.read_bytes() == before
    assert [p.name for p in flash.parent.iterdir() if "staged" in p.name] == []


# ---------------------------------------------------------------------------- cannot be fooled
def test_manifest_replaced_by_another_config_is_rebuilt(prj: Project) -> None:
    """`build flash`, then `create-auth-man` with another config of the same prj_name (it
    writes the same default manifest path), then `build flash` again: the manifest task sees its
    target replaced and runs again; the flash image keeps this config's signed manifest."""
    doit(prj, "flash")
    man, flash = _outputs(prj)
    good_man, good_flash = man.read_bytes(), flash.read_bytes()
    other = prj.root / "other.toml"
    text = prj.cfg.read_text()
    for section in ("vendor_fw", "vendor_man", "owner_fw", "owner_man"):
        text = text.replace(f"[{section}_key_config]\n", f"[{section}_key_config]\n# ", 1)
    other.write_text(text.replace('ecc_priv_key = "', '# ecc_priv_key = "'))
    r = subprocess.run(
        [sys.executable, "-m", "imgtool", "create-auth-man", "--cfg", str(other),
         "--key-dir", str(prj.keys), "--prebuilt-dir", str(prj.prebuilt)],
        cwd=prj.root, capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert man.read_bytes() != good_man  # the other config's manifest is in place now
    ran, _, _ = doit(prj, "flash")
    assert ran == {"manifest"}  # re-signed from the intact signature targets
    assert man.read_bytes() == good_man and flash.read_bytes() == good_flash
    assert doit(prj, "flash")[0] == set()


@pytest.mark.parametrize(
    "target, expect",
    [
        ("out/test/sig/own_imc_sig_ecc.bin", {"sign:own_imc_sig_ecc"}),
        ("out/test/digest/002.sha384", {"digest:002-img1.bin"}),
        ("out/test/imc.bin", {"imc"}),
        ("out/test-flash-image.bin", {"flash"}),
    ],
)
def test_edited_target_is_rewritten(prj: Project, target: str, expect: set[str]) -> None:
    """A target edited in place (same size) since its task wrote it: that task runs again and
    restores it; the tasks after it see the same content and stay up to date."""
    doit(prj, "flash")
    path = prj.root / target
    good = path.read_bytes()
    path.write_bytes(bytes([good[0] ^ 1]) + good[1:])
    ran, _, _ = doit(prj, "flash")
    assert ran == expect
    assert path.read_bytes() == good
    assert doit(prj, "flash")[0] == set()


def test_touched_target_reruns_only_its_task(prj: Project) -> None:
    """A new mtime on a target (the bytes may have changed): its task runs again; the flash
    image, whose input is the same content, stays."""
    doit(prj, "flash")
    man, _ = _outputs(prj)
    st = man.stat()
    os.utime(man, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert doit(prj, "flash")[0] == {"manifest"}


def test_build_exit_codes(
    prj: Project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(prj.root)
    # unknown task name: 2, naming the tasks
    assert main(["build", *prj.args("flsh")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'flsh': no such task" in err[0]
    assert "tasks: digest, imc, sign, manifest, flash, verify" in err[0]
    assert main(["build", *prj.args("clean", "sign:nope")]) == 2
    assert "'sign:nope': no such task" in capsys.readouterr().err
    # known names, subtasks and targets are fine (`info` shows a status, whatever it is)
    assert main(["build", *prj.args("info", "sign:own_imc_sig_ecc")]) == 0
    assert main(["build", *prj.args("list", "sign")]) == 0
    # doit's own option errors: bad input too, and doit's hints name our command
    assert main(["build", *prj.args("--no-such-option")]) == 2
    capsys.readouterr()
    assert main(["build", *prj.args("help")]) == 0
    assert f"cptra-imgtool build --cfg {prj.cfg}" in capsys.readouterr().out
    # a failing sign helper (bad input): 2, not doit's 1
    _add_helper(prj)
    (prj.root / "helper.py").write_text("import sys\nsys.exit(1)\n")
    assert main(["build", *prj.args("flash")]) == 2
    assert "sign helper exited with 1" in capsys.readouterr().out
    assert main(["build", *prj.args("-r", "json", "flash")]) == 2


def test_build_exit_code_1_only_for_a_failed_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prj = make_project(tmp_path, sample_bundle=True)
    monkeypatch.chdir(prj.root)
    assert main(["build", *prj.args("verify")]) == 0
    # another, unsigned bundle: the flash image builds, verify finds the owner keys differ
    from projects import STAND_IN_BUNDLE

    (prj.prebuilt / "caliptra-fw.bin").write_bytes(STAND_IN_BUNDLE)
    capsys.readouterr()
    assert main(["build", *prj.args("verify")]) == 2  # the keys differ: refused before building
    assert main(["build", *prj.args("verify", "--allow-key-mismatch")]) == 1
    assert "failed a check" in capsys.readouterr().out


def test_same_output_twice_is_refused(
    prj: Project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(prj.root)
    same = str(prj.root / "x.bin")
    assert main(["build", *prj.args("--man", same, "--flash", same)]) == 2
    assert "name the same file" in capsys.readouterr().err
    _, _, out = doit(prj, f"man={same}", f"flash={same}", ok=False)
    assert "name the same file" in out and "Traceback" not in out
    img = str(prj.prebuilt / "img0.bin")
    assert main(["build", *prj.args("--flash", img)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err


def test_padding_tasks(tmp_path: Path) -> None:
    """padding_align_size: one pad task per input; the digests, the flash image and a CLI
    build agree; a changed original re-pads only itself; doit clean removes the copies."""
    prj = make_project(tmp_path, extra_manifest="padding_align_size = 64")
    ran, _, _ = doit(prj, "flash")
    pads = {t for t in ran if t.startswith("pad:")}
    names = ["caliptra-fw", "mcu", *(f"img{i}" for i in range(5))]
    assert pads == {f"pad:{n}_align_64.bin" for n in names}
    padded = prj.root / "out" / "test" / "padded"
    assert (padded / "img4_align_64.bin").read_bytes() == (
        prj.prebuilt / "img4.bin"
    ).read_bytes() + bytes(57)
    _, flash = _outputs(prj)
    assert flash.read_bytes() == _cli_flash(prj, prj.root / "cli")
    (prj.prebuilt / "img2.bin").write_bytes(b"changed")
    ran, _, _ = doit(prj, "flash")
    assert ran == {"pad:img2_align_64.bin", "digest:003-img2.bin", "imc", "sign:own_imc_sig_ecc",
                   "manifest", "flash"}  # fmt: skip
    assert flash.read_bytes() == _cli_flash(prj, prj.root / "cli2")
    doit(prj, "clean")
    assert not padded.exists()


def test_padding_out_folder_tasks(tmp_path: Path) -> None:
    prj = make_project(
        tmp_path,
        extra_manifest=f'padding_align_size = 8\npadding_out_folder = "{tmp_path / "pads"}"',
    )
    doit(prj, "flash")
    assert (tmp_path / "pads" / "img2_align_8.bin").read_bytes() == (
        prj.prebuilt / "img2.bin"
    ).read_bytes() + bytes(7)
    assert not (prj.root / "out" / "test" / "padded").exists()
    _, flash = _outputs(prj)
    assert flash.read_bytes() == _cli_flash(prj, prj.root / "cli")


def test_lms_leaves_checked_before_the_first_is_spent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The owner FW LMS key signs two slots (endorsement, SVN); with one leaf left, the build
    refuses before signing anything with it."""
    import hashlib

    from imgtool.keys.lms_signer import LmsSigner

    prj = make_project(tmp_path, lms=True, lms_kind="h5")
    key = prj.keys / "own-fw-lms-prvk.pem"
    signer = LmsSigner.load(key)
    for i in range(31):
        signer.sign_digest(hashlib.sha384(b"spend %d" % i).digest())
    assert LmsSigner.load(key).leaves_left() == 1
    monkeypatch.chdir(prj.root)
    capsys.readouterr()
    assert main(["build", *prj.args("flash")]) == 2
    out = capsys.readouterr().out
    assert "has 1 one-time signature left, this build needs 2" in out
    assert LmsSigner.load(key).leaves_left() == 1


def test_firmware_tree_with_a_two_line_dodo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A firmware tree made by `new-project` (which writes the two-line dodo.py), with its own
    tasks.py (as invoke users have): `doit flash cfg=...` from that tree builds, without this
    checkout on the import path."""
    from imgtool.demo import fill_prebuilt
    from imgtool.doit_tasks import DODO_PY

    tree = tmp_path / "fw"
    tree.mkdir()
    (tree / "tasks.py").write_text("raise ImportError('the firmware tree own tasks.py')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(
        [sys.executable, "-m", "imgtool", "new-project", "board"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    dodo = (tree / "dodo.py").read_text()
    assert dodo == DODO_PY and len(dodo.splitlines()) == 2
    assert "dodo.py" in r.stdout
    monkeypatch.chdir(tree)
    fill_prebuilt(Path("config/board.toml"), Path("keys/board"))
    cmd = [sys.executable, "-m", "doit", "flash", "cfg=config/board.toml"]
    r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tree / "out" / "board-flash-image.bin").stat().st_size > 0
    r = subprocess.run([*cmd[:-2], "verify", cmd[-1]], cwd=tree, env=env, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0 and " 0 failed" in r.stdout, r.stdout + r.stderr
    # the installed import path is ours alone: no top-level `tasks` package comes with it
    probe = "import importlib.util as u; print(u.find_spec('tasks'))"
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True,
                       text=True)  # fmt: skip
    assert r.stdout.strip() == "None"


def test_doit_and_build_refuse_keys_that_do_not_match_the_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """doit and build check the config's keys against caliptra_file before any task runs (also
    when every task is up to date): one line, exit 2, nothing signed; allow_key_mismatch=1 /
    --allow-key-mismatch builds with a warning; clean and list are not blocked."""
    from projects import ecc_keys

    prj = make_project(tmp_path, sample_bundle=True)
    doit(prj, "flash")
    other = tmp_path / "other"
    ecc_keys(other)
    for kind in ("prvk", "pubk"):  # a new owner FW ECC key; the bundle keeps the old one
        (prj.keys / f"own-fw-ecc-{kind}.pem").write_bytes(
            (other / f"own-fw-ecc-{kind}.pem").read_bytes()
        )
    sig_dir = prj.root / "out" / "test" / "sig"
    before = {p.name: p.read_bytes() for p in sig_dir.iterdir()}
    ran, _, out = doit(prj, "flash", ok=False)
    errors = [ln for ln in out.splitlines() if "error" in ln]
    assert not ran and len(errors) == 1 and "owner_fw_key_config.ecc_pub_key" in errors[0]
    assert "allow" in errors[0] and "Traceback" not in out
    assert {p.name: p.read_bytes() for p in sig_dir.iterdir()} == before
    _, _, out = doit(prj, "flash", "allow_key_mismatch=maybe", ok=False)
    assert "allow_key_mismatch=maybe: expected 1" in out
    ran, _, out = doit(prj, "flash", "allow_key_mismatch=1")
    assert "sign:own_pub_sig_ecc" in ran and "the device rejects this image" in out
    doit(prj, "list")
    monkeypatch.chdir(prj.root)
    capsys.readouterr()
    assert main(["build", *prj.args("flash")]) == 2
    assert "owner_fw_key_config.ecc_pub_key" in capsys.readouterr().err
    assert main(["build", "--allow-key-mismatch", *prj.args("flash")]) == 0
    assert "warning:" in capsys.readouterr().err
    assert main(["build", *prj.args("clean")]) == 0


@pytest.mark.parametrize(
    "opt", ["flash=out/test/.doit.sqlite3", "man=out/test/imc.bin", "man=out/test/sig/x.bin"]
)
def test_outputs_inside_the_build_dir_are_refused(prj: Project, opt: str) -> None:
    """man=/flash= inside out/<prj>/ would overwrite doit's database or another task's target
    (a sqlite3 traceback, or doit's 'two different tasks'): one line, exit 2, before any task."""
    ran, _, out = doit(prj, "flash", opt.replace("out/", f"{prj.root}/out/", 1), ok=False)
    lines = out.strip().splitlines()
    assert not ran and len(lines) == 1 and "Traceback" not in out, out
    assert lines[0].startswith("cptra-imgtool: error:") and "where the build keeps" in lines[0]


def test_unknown_doit_variable_is_refused(prj: Project) -> None:
    """keydir= (for key_dir=) was ignored: the build signed with keys/<prj>/ and exited 0."""
    ran, _, out = doit(prj, "flash", "keydir=/elsewhere", ok=False)
    lines = out.strip().splitlines()
    assert not ran and len(lines) == 1, out
    assert "unknown doit variable keydir= (did you mean key_dir=?)" in lines[0]
