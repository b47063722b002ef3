"""Red-team round 3 (helper rt3): the Caliptra 2.x build (config2 / build2 / doit graph2), 2.x
verify and the ML-DSA signing server, as landed on 2026-12-02.

Every test named test_fN_* is a finding (RT3-Fn, /work/notes/report-rt3.md): it failed on the
code it was written against; still open ones are ``xfail(strict=True)`` (drop the marker with the
fix), fixed ones name their fix commit.
The other tests pin attacks that held, so a later change cannot silently reopen them.

Projects come from tests/helpers/projects2.py: one key set and prebuilt folder per module, each
test writing its own (hostile) config into its own directory."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.projects import lms_keys
from helpers.projects2 import Project2, make_project2

from imgtool.cli.main import main
from imgtool.config2 import load_config2
from imgtool.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
PRJ = "ast2705-test"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Project2:
    """Keys and images shared by the module (never written by a test)."""
    return make_project2(tmp_path_factory.mktemp("rt3-base"), "ast2705")


def _cfg(base: Project2, where: Path, edit: Callable[[str], str] = lambda t: t) -> Path:
    """A copy of the base config in ``where`` (keys and images stay the base project's)."""
    where.mkdir(parents=True, exist_ok=True)
    cfg = where / base.cfg.name
    cfg.write_text(edit(base.cfg.read_text()))
    return cfg


def _sub(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)

    return edit


def _args(base: Project2, cfg: Path, pqc: str = "1") -> list[str]:
    return [
        "--cfg", str(cfg), "--key-dir", str(base.keys), "--prebuilt-dir", str(base.prebuilt),
        "--pqc-key-type", pqc,
    ]  # fmt: skip


def _cli(
    capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, list[str]]:  # in-process: no traceback can hide in a subprocess
    capsys.readouterr()
    rc = main(list(argv))
    return rc, capsys.readouterr().err.strip().splitlines()


def _doit(root: Path, base: Project2, cfg: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), "-d", str(root), "flash"]
    cmd += [f"cfg={cfg}", f"key_dir={base.keys}", f"prebuilt_dir={base.prebuilt}", "pqc=mldsa"]
    return subprocess.run([*cmd, *extra], capture_output=True, text=True, env=env, timeout=300)


def _files_under(d: Path) -> set[Path]:
    return {p for p in d.rglob("*") if p.is_file()}


# ============================================================================== findings
# --- RT3-F1: prj_name is not checked in 2.x configs (1.x: config._PRJ_RE) -------------------
# RT3-F1 fixed in 475c3f4: 2.x prj_name with '..', '/' or empty accepted
@pytest.mark.parametrize("prj", ["../../escape", "/tmp/rt3-abs", "sub/dir", ""])
def test_f1_prj_name_must_be_a_plain_name(base: Project2, tmp_path: Path, prj: str) -> None:
    cfg = _cfg(base, tmp_path, _sub(f'prj_name = "{PRJ}"', f'prj_name = "{prj}"'))
    with pytest.raises(ConfigError, match="prj_name"):
        load_config2(cfg, key_dir=base.keys, prebuilt_dir=base.prebuilt)


# RT3-F1 fixed in 475c3f4: create-auth-flash-2x writes outside out/
def test_f1_cli_writes_nothing_outside_out(
    base: Project2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    work = tmp_path / "a" / "work"
    cfg = _cfg(base, work, _sub(f'prj_name = "{PRJ}"', 'prj_name = "../../escape"'))
    monkeypatch.chdir(work)
    rc, err = _cli(capsys, "create-auth-flash-2x", *_args(base, cfg))
    outside = _files_under(tmp_path) - _files_under(work)
    assert not outside, sorted(map(str, outside))  # today: escape-auth-manifest.bin, -flash-...
    assert rc == 2 and len(err) == 1 and "prj_name" in err[0], err


# RT3-F1 fixed in 475c3f4: doit's out/<prj>/ (db, sigs) outside out/
def test_f1_doit_writes_nothing_outside_out(base: Project2, tmp_path: Path) -> None:
    work = tmp_path / "a" / "work"
    cfg = _cfg(base, work, _sub(f'prj_name = "{PRJ}"', 'prj_name = "../../escape"'))
    r = _doit(work, base, cfg)
    outside = _files_under(tmp_path) - _files_under(work)
    assert not outside, sorted(map(str, outside))
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "prj_name" in lines[0], lines


# --- RT3-F2: padding_align_size has no upper bound ----------------------------------------------
# RT3-F2 fixed in 76e971a: padding_align_size 2^31 -> MemoryError, exit 3
def test_f2_huge_alignment_is_one_line_exit_2(base: Project2, tmp_path: Path) -> None:
    """2^31 pads every image to 2 GiB in memory (more than 10 GiB and minutes without a
    limit); under a 1 GiB address-space limit it is today 'internal error (MemoryError)',
    exit 3. It must be a config error naming the field (or a bound checked before reading)."""
    cfg = _cfg(base, tmp_path, _sub("version = 1", "version = 1\npadding_align_size = 2147483648"))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    r = subprocess.run(
        [sys.executable, "-m", "imgtool", "create-auth-flash-2x", *_args(base, cfg)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, preexec_fn=limit,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "padding_align_size" in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


# --- RT3-F3: an image may be a configured private key: it ships in the flash image --------------
# RT3-F3 fixed in c553727: a private key file accepted as an image
@pytest.mark.parametrize(
    "old, new",
    [
        ('file = "soc-image-0.bin"', 'file = "../keys/vnd-fw-ecc-prvk.pem"'),
        ('file = "soc-image-1.bin"', 'file = "../keys/own-man-mldsa-prvk.bin"'),
        ('mcu_file = "mcu-runtime.bin"', 'mcu_file = "../keys/vnd-man-lms-prvk.pem"'),
    ],
)
def test_f3_private_key_as_image_is_refused(
    base: Project2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], old: str, new: str,
) -> None:  # fmt: skip
    cfg = _cfg(base, tmp_path, _sub(old, new))
    monkeypatch.chdir(tmp_path)
    rc, err = _cli(capsys, "create-auth-flash-2x", *_args(base, cfg))
    key = (base.prebuilt / new.split('"')[1]).resolve().read_bytes()
    flash = tmp_path / "out" / f"{PRJ}-flash-image.bin"
    assert not (flash.exists() and key in flash.read_bytes()), "the private key is in the flash"
    assert rc == 2 and len(err) == 1 and "private key" in err[0], err


# --- RT3-F4: doit outputs over the build's own internal files -----------------------------------
# RT3-F4 fixed in b9ccb60: man=/flash= inside out/<prj>/: traceback/exit 3
@pytest.mark.parametrize(
    "opt",
    [
        f"flash=out/{PRJ}/.doit.sqlite3",  # today: sqlite3 traceback, dep db clobbered
        f"man=out/{PRJ}/imc.bin",  # today: doit's "Two different tasks...", exit 3
        f"man=out/{PRJ}/sig/own_imc_sig_pqc.bin",
    ],
)
def test_f4_doit_output_over_an_internal_file(base: Project2, tmp_path: Path, opt: str) -> None:
    cfg = _cfg(base, tmp_path)
    r = _doit(tmp_path, base, cfg, opt)
    out = r.stdout + r.stderr
    lines = out.strip().splitlines()
    assert "Traceback" not in out
    assert r.returncode == 2 and len(lines) == 1, out[-2000:]
    assert lines[0].startswith("cptra-imgtool: error:"), lines[0]


# --- RT3-F5: an output over an LMS key's state file ---------------------------------------------
# RT3-F5 fixed in 590a264: --man over <lms key>.state accepted
def test_f5_output_over_lms_state_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lms_keys(tmp_path / "keys", "h5")  # full-tree keys with a state file beside them
    p = make_project2(tmp_path, "ast2705")
    state = p.keys / "vnd-man-lms-prvk.pem.state"
    before = state.read_bytes()
    monkeypatch.chdir(tmp_path)
    rc, err = _cli(capsys, "create-auth-man-2x", *p.args("1"), "--man", str(state))
    assert state.read_bytes() == before  # today: the manifest; the next LMS build then fails
    assert rc == 2 and len(err) == 1, err


# --- RT3-F6: verify accepts fw_toc names that are no base name ----------------------------------
# RT3-F6 fixed in a6599d3: fw_toc names '.' and '..' pass verify
@pytest.mark.parametrize("name", [b"..", b"."])
def test_f6_fw_toc_dot_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: bytes
) -> None:
    from test_bundle2 import fuses_file
    from test_verify2 import build
    from test_verify2_redteam import NAMES, failed, run, toc_for

    cal, _, flash = build("mldsa")
    f = tmp_path / "flash.bin"
    f.write_bytes(flash)
    names = list(NAMES)
    names[3] = name
    toc = tmp_path / "fw_toc.bin"
    toc.write_bytes(bytes(toc_for(flash, names)))
    rc, doc = run(capsys, f, "--fuses", str(fuses_file(tmp_path, cal)), "--fw-toc", str(toc))
    assert rc == 1 and "fw_toc.entries" in failed(doc), failed(doc)


# ============================================================================== held
@pytest.mark.parametrize(
    "old, new, words",
    [
        ("version = 1", "version = 18446744073709551616", ["manifest_config.version"]),
        ("version = 1", "version = true", ["manifest_config.version", "bool"]),
        ("version = 1", "version = 1\npadding_align_size = -1", ["padding_align_size"]),
        ("security_version = 3", "security_version = 129", ["security_version"]),
        ("fw_id = 0x1000", 'fw_id = "0x1000"', ["fw_id", "expected integer"]),
        ("fw_id = 0x1001", "fw_id = 0x1000", ["fw_id", "must be 0x1001"]),
        ('file = "soc-image-0.bin"', 'file = "."', ["image_metadata_list[1].file"]),
        ('ecc_pub_key = "vnd-fw-ecc-pubk.pem"', 'ecc_pub_key = "."', ["ecc_pub_key"]),
        ("exec_bit = 0\n", "exec_bit = 128\n", ["exec_bit"]),
        ("image_load_address = 0x80000000", "image_load_address = -1", ["image_load_address"]),
        (
            'mldsa_pub_key = "vnd-fw-mldsa-pubk.bin"',
            'mldsa_pub_key = "vnd-fw-ecc-pubk.pem"',
            ["vnd_pub_sig", "2592"],
        ),  # fmt: skip
        (
            "version = 1",
            'version = 1\npadding_align_size = 4\npadding_out_folder = "/proc/1"',
            ["/proc/1"],
        ),  # fmt: skip
    ],
)
def test_held_hostile_values_are_one_line_exit_2(
    base: Project2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], old: str, new: str, words: list[str],
) -> None:  # fmt: skip
    cfg = _cfg(base, tmp_path, _sub(old, new))
    monkeypatch.chdir(tmp_path)
    rc, err = _cli(capsys, "create-auth-flash-2x", *_args(base, cfg))
    assert rc == 2 and len(err) == 1, err
    assert all(w in err[0] for w in words), err[0]
    assert not (tmp_path / "out" / f"{PRJ}-flash-image.bin").exists()


def test_held_200_images_one_line(
    base: Project2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    def edit(text: str) -> str:
        for i in range(3, 200):
            text += (
                f'[[image_metadata_list]]\nfile = ""\nfw_id = {0x1000 + i:#x}\nexec_bit = 0\n'
                "component_id = 0\nclassification = 0\nimage_load_address = 0\n"
                "image_staging_address = 0\n\n"
            )
        return text

    cfg = _cfg(base, tmp_path, edit)
    monkeypatch.chdir(tmp_path)
    rc, err = _cli(capsys, "create-auth-flash-2x", *_args(base, cfg))
    assert rc == 2 and len(err) == 1 and "at most 127 images" in err[0], err


def test_held_shared_lms_key_parallel_killed_reruns_never_reuse_a_leaf(tmp_path: Path) -> None:
    """One full-tree LMS key for all four key sections; doit -n 2 with threads and processes,
    a run killed part-way, re-runs and image changes: no leaf (q) ever signs two different
    messages (the same message, the two IMC signatures, may share its leaf)."""
    import signal
    import time

    lms_keys(tmp_path / "keys", "h5")
    p = make_project2(tmp_path, "ast2705")
    text = re.sub(
        r'lms_(pub|priv)_key = "[a-z-]+-lms-(pubk|prvk)\.pem"',
        lambda m: f'lms_{m[1]}_key = "vnd-man-lms-{m[2]}.pem"',
        p.cfg.read_text(),
    )
    p.cfg.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), "-d", str(p.root), "flash"]
    cmd += [f"cfg={p.cfg}", f"key_dir={p.keys}", f"prebuilt_dir={p.prebuilt}", "pqc=lms"]
    seen: dict[int, set[bytes]] = {}

    def collect() -> None:
        for f in (p.root / "out" / PRJ / "sig").glob("*_pqc.bin"):
            b = f.read_bytes()
            seen.setdefault(int.from_bytes(b[:4], "big"), set()).add(b)

    for i, (mode, kill) in enumerate([("thread", None), ("process", 0.6), ("thread", 0.3)]):
        (p.prebuilt / "soc-image-1.bin").write_bytes(b"version %d" % i)
        run = [*cmd[:5], "-n", "2", "-P", mode, *cmd[5:]]
        if kill is not None:
            pr = subprocess.Popen(run, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
            time.sleep(kill)
            if pr.poll() is None:
                os.killpg(pr.pid, signal.SIGKILL)
            pr.wait()
            collect()
        r = subprocess.run(run, capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        collect()
    assert seen and all(len(v) == 1 for v in seen.values()), {q: len(v) for q, v in seen.items()}


# --- RT3-F7: a mistyped doit variable is ignored: the build signs with the default keys ---------
def test_f7_mistyped_doit_variable_is_refused(base: Project2, tmp_path: Path) -> None:
    """``keydir=`` for ``key_dir=``: doit ignores it and signs with keys/<prj>/ (here another
    key set, e.g. demo keys) without a word; it must be one line, exit 2, naming the variable."""
    other = make_project2(tmp_path / "other", "ast2705")  # another ECC/LMS key set
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / PRJ).symlink_to(other.keys, target_is_directory=True)
    cfg = _cfg(base, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), "-d", str(tmp_path), "flash"]
    cmd += [f"cfg={cfg}", f"keydir={base.keys}", f"prebuilt_dir={base.prebuilt}", "pqc=mldsa"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "keydir" in lines[0], lines[-3:]


# --- RT3-F8: an output below an existing file is found only after every signature is made ------
def test_f8_output_below_a_file_is_refused_before_signing(base: Project2, tmp_path: Path) -> None:
    """flash=<an input file>/f.bin: today every signature is made (LMS leaves spent), then the
    flash task fails with '<file>: File exists', doit exit 1 and a 20-line report; it is bad
    input, known before any task: one line, exit 2, no task run."""
    cfg = _cfg(base, tmp_path)
    (tmp_path / "notes.txt").write_text("a file, not a directory\n")
    r = _doit(tmp_path, base, cfg, "flash=notes.txt/f.bin")
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert not re.findall(r"^\.  sign:", r.stdout, re.M), "signatures made before the refusal"
    assert r.returncode == 2 and len(lines) == 1 and "notes.txt" in lines[0], lines[-3:]


@pytest.mark.parametrize("pqc", ["mldsa", "lms"])
def test_held_no_flash_bit_is_unauthenticated(tmp_path: Path, pqc: str) -> None:
    """125 single-bit flips spread over every region of a good 2.x flash image (bundle,
    manifest, MCU, SoC images), each with the FLSH image and entry checksums recomputed so that
    only the cryptographic and semantic checks are left: verify fails every one (exit 1 or 2),
    never exit 0, never a traceback."""
    import contextlib
    import io
    import random
    import struct

    import indep2
    from test_bundle2 import fuses_file
    from test_verify2 import build

    cal, _, flash = build(pqc)
    fz = str(fuses_file(tmp_path, cal))
    f = tmp_path / "flash.bin"
    n = struct.unpack_from("<H", flash, 6)[0]
    regions = [struct.unpack_from("<3I", flash, 16 + 20 * i) for i in range(n)]
    f.write_bytes(flash)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["verify", str(f), "--fuses", fz]) == 0  # the unmodified image passes
    rng = random.Random(5)
    for k in range(125):
        fl = bytearray(flash)
        ident, off, size = regions[k % n]
        pos = off + rng.randrange(size)
        fl[pos] ^= 1 << rng.randrange(8)
        for i, (_, o2, s2) in enumerate(regions):
            e = 16 + 20 * i
            struct.pack_into("<I", fl, e + 12, indep2.neg_sum(bytes(fl[o2 : o2 + s2])))
            struct.pack_into("<I", fl, e + 16, indep2.neg_sum(bytes(fl[e : e + 16])))
        f.write_bytes(fl)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            rc = main(["verify", str(f), "--fuses", fz])
        assert rc in (1, 2), (f"identifier {ident:#x} byte {pos - off}", rc)


# --- RT3-F9: the RT3-F3 fix misses private keys the config does not name -----------------------
@pytest.mark.parametrize("key", ["own-man-mldsa-prvk.bin", "own-man-ecc-prvk.der"])
def test_f9_unconfigured_private_key_as_image_is_refused(
    base: Project2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], key: str,
) -> None:  # fmt: skip
    """The owner signs its manifest keys' signatures elsewhere (a helper, a server): the
    config names only the public keys of owner_man_key_config, but keygen left the private
    key files in the key folder. An image pointing at one (raw ML-DSA, or a DER ECC key: no
    PEM header) is accepted and ships the key in the flash image."""
    from cryptography.hazmat.primitives import serialization

    from imgtool.keys import ecc

    keys = tmp_path / "keys"
    keys.mkdir()
    for f in base.keys.iterdir():
        if f.is_file():
            (keys / f.name).write_bytes(f.read_bytes())
    der = ecc.load_private(keys / "own-man-ecc-prvk.pem").private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (keys / "own-man-ecc-prvk.der").write_bytes(der)

    def edit(text: str) -> str:
        sect = text.split("[owner_man_key_config]\n", 1)
        body, rest = sect[1].split("\n\n", 1)
        body = "\n".join(x for x in body.splitlines() if "_priv_key" not in x)
        text = sect[0] + "[owner_man_key_config]\n" + body + "\n\n" + rest
        return _sub('file = "soc-image-0.bin"', f'file = "{keys / key}"')(text)

    cfg = _cfg(base, tmp_path / "w", edit)
    monkeypatch.chdir(tmp_path / "w")
    args = ["--cfg", str(cfg), "--key-dir", str(keys), "--prebuilt-dir", str(base.prebuilt)]
    rc, err = _cli(capsys, "create-auth-flash-2x", *args, "--pqc-key-type", "1")
    flash = tmp_path / "w" / "out" / f"{PRJ}-flash-image.bin"
    secret = (keys / key).read_bytes()
    assert not (flash.exists() and secret in flash.read_bytes()), "the private key is in the flash"
    assert rc == 2 and len(err) == 1 and "private key" in err[0], err


# --- RT3-F10: the RT3-F2 bound is per image: 127 images x 16 MiB is a 2 GiB flash in memory -----
def test_f10_flash_size_is_bounded_before_reading(base: Project2, tmp_path: Path) -> None:
    """padding_align_size = 16 MiB (the new maximum) with 124 one-byte SoC images: a 2 GiB
    flash image built in memory (several GiB at peak); under a 1 GiB address-space limit today
    'internal error (MemoryError)', exit 3. The flash size is known from the file sizes before
    anything is read or signed: one line, exit 2, naming the size."""
    (tmp_path / "pre").mkdir()
    for f in base.prebuilt.iterdir():
        (tmp_path / "pre" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "pre" / "one.bin").write_bytes(b"1")

    def edit(text: str) -> str:
        text = text.replace("version = 1", "version = 1\npadding_align_size = 16777216", 1)
        for i in range(3, 124):
            text += (
                f'[[image_metadata_list]]\nfile = "one.bin"\nfw_id = {0x1000 + i:#x}\n'
                "exec_bit = 0\ncomponent_id = 0\nclassification = 0\nimage_load_address = 0\n"
                "image_staging_address = 0\n\n"
            )
        return text

    cfg = _cfg(base, tmp_path, edit)
    args = ["--cfg", str(cfg), "--key-dir", str(base.keys), "--prebuilt-dir", str(tmp_path / "pre")]

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    r = subprocess.run(
        [sys.executable, "-m", "imgtool", "create-auth-flash-2x", *args, "--pqc-key-type", "1"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, preexec_fn=limit,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "MemoryError" not in lines[0], lines[0]


# --- RT3-F11: an output over the LMS state store itself ----------------------------------------
def test_f11_output_over_the_lms_state_store_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The RT3-F5 fix protects K.state / K.lock / K.tree beside each key, not the state store
    (CPTRA_IMGTOOL_STATE, the primary witness with the log of every signature): --man over it
    replaces the database with a manifest."""
    lms_keys(tmp_path / "keys", "h5")  # keygen registers the keys in the store
    p = make_project2(tmp_path, "ast2705")
    store = Path(os.environ["CPTRA_IMGTOOL_STATE"])
    before = store.read_bytes()
    monkeypatch.chdir(tmp_path)
    rc, err = _cli(capsys, "create-auth-man-2x", *p.args("1"), "--man", str(store))
    assert store.read_bytes()[:16] == before[:16] == b"SQLite format 3\0"
    assert rc == 2 and len(err) == 1, err


# --- RT3-F12: prj_name's check is re.match with '$': a trailing newline passes ------------------
def test_f12_prj_name_with_a_trailing_newline(base: Project2, tmp_path: Path) -> None:
    """config._PRJ_RE.match: '$' also matches before a final newline, so prj_name = "p\\n"
    names out/p\\n/ and out/p\\n-auth-manifest.bin (and splits one-line errors in two)."""
    cfg = _cfg(base, tmp_path, _sub(f'prj_name = "{PRJ}"', 'prj_name = "p\\n"'))
    with pytest.raises(ConfigError, match="prj_name"):
        load_config2(cfg, key_dir=base.keys, prebuilt_dir=base.prebuilt)


# --- RT3-F13: 2.x builds never compare the FW keys with caliptra_file's bundle ------------------
def test_f13_fw_keys_of_another_bundle_are_refused(
    base: Project2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """caliptra_file is a real 2.x bundle (tests/test_bundle2) whose vendor / owner FW keys are
    not the config's: create-auth-flash-2x exits 0 and verify of its own output fails the
    pubkey signatures (the device rejects the manifest). 1.x refuses this before signing
    (keys.key_match, --allow-key-mismatch); 2.x has no such check."""
    from test_bundle2 import bundle, fuses_file

    cal, _ = bundle("mldsa")
    (tmp_path / "pre").mkdir()
    for f in base.prebuilt.iterdir():
        (tmp_path / "pre" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "pre" / "caliptra-fw.bin").write_bytes(cal)
    cfg = _cfg(base, tmp_path)
    monkeypatch.chdir(tmp_path)
    args = ["--cfg", str(cfg), "--key-dir", str(base.keys), "--prebuilt-dir", str(tmp_path / "pre")]
    rc, err = _cli(capsys, "create-auth-flash-2x", *args, "--pqc-key-type", "1")
    if rc == 0:  # today: the image it wrote fails verify (the FW keys are not the bundle's)
        flash = tmp_path / "out" / f"{PRJ}-flash-image.bin"
        fz = str(fuses_file(tmp_path, cal))
        capsys.readouterr()
        vrc = main(["verify", str(flash), "--fuses", fz])
        fails = re.findall(r"^FAIL (\S+)", capsys.readouterr().out, re.M)
        assert vrc == 0, f"create-auth-flash-2x exit 0 wrote a flash image verify rejects: {fails}"
    assert rc == 2 and len(err) == 1, err
