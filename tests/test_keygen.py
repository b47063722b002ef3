"""keygen, lms-status and new-project through the CLI."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from imgtool.cli import keys as cli_keys
from imgtool.cli.main import main
from imgtool.config import load_config
from imgtool.keys import lms, lms_tree
from imgtool.keys.lms_signer import LmsSigner


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


def test_new_project_without_a_reference_is_a_lab_project(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --from: vendor keys too (the lab variant, and it says so), other heights only with
    --force; never overwrites."""
    assert main(["new-project", "p1", "--root", str(tmp_path), "--lms-height", "5"]) == 2
    assert "--force" in capsys.readouterr().err and not (tmp_path / "keys").exists()
    args = ["new-project", "p1", "--root", str(tmp_path), "--lms-height", "5", "--force"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "no --from: a LAB project with its own vendor keys" in err
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
    assert main(args) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert cfg.read_bytes() == before


def _tree(tmp_path: Path, **kw: Any) -> Any:
    from oem import vendor_tree

    return vendor_tree(tmp_path / "tree", **kw)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("key_folder", ["key", "keys"])
def test_new_project_uses_the_trees_key_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key_folder: str
) -> None:
    t = _tree(tmp_path, key_folder=key_folder)
    capsys.readouterr()
    root = str(t.root)
    assert main(["new-project", "oem", "--from", "vendorref", "--root", root]) == 0
    keys = t.root / key_folder / "oem"
    assert sorted(p.name for p in keys.glob("own-*-pubk.pem")) == [
        "own-fw-ecc-pubk.pem", "own-fw-lms-pubk.pem", "own-man-ecc-pubk.pem", "own-man-lms-pubk.pem"
    ]  # fmt: skip
    other = "keys" if key_folder == "key" else "key"
    assert not (t.root / other).exists()
    out = capsys.readouterr().out
    assert f"keys:     {key_folder}/oem" in out
    # the builds find them there (config.default_key_dir), without --key-dir
    import contextlib

    with contextlib.chdir(t.root):
        c = load_config("config/oem.toml")
    assert c.key_dir == Path(key_folder) / "oem"


def test_new_project_progress_one_line_per_key_without_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t = _tree(tmp_path)
    capsys.readouterr()  # the tree's own signing warnings
    assert main(["new-project", "oem", "--from", "vendorref", "--root", str(t.root)]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"1/4 own-fw-ecc ECC P-384 key pair: done in \d+\.\d s", lines[0])
    assert re.fullmatch(
        r"2/4 own-fw-lms LMS H15/W4 tree: 32768/32768 leaves in \d+\.\d s", lines[1]
    )
    assert lines[2].startswith("3/4 own-man-ecc ECC P-384 key pair: done in ")
    assert lines[3].startswith("4/4 own-man-lms LMS H15/W4 tree: 32768/32768 leaves in ")
    assert lines[4].startswith("caliptra-fw.bin: owner-signed") and len(lines) == 5


def test_new_project_ecc_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = _tree(tmp_path)
    capsys.readouterr()  # the tree's own signing warnings
    root = str(t.root)
    assert main(["new-project", "e", "--from", "vendorref", "--ecc-only", "--root", root]) == 0
    cap = capsys.readouterr()
    assert "ast" not in cap.out and "vendorref-ecc-manifest.toml" in cap.out
    assert "--no-lms-verify" in cap.out
    assert [ln.split(" ")[1] for ln in cap.err.splitlines()[:2]] == ["own-fw-ecc", "own-man-ecc"]
    assert not list((t.root / "key" / "e").glob("own-*-lms-*"))
    # --ecc-only with a config file that names owner LMS keys: refused
    cfg = str(t.config())
    assert main(["new-project", "f", "--from", cfg, "--ecc-only", "--root", root]) == 2
    assert "--ecc-only" in capsys.readouterr().err and not (t.root / "key" / "f").exists()


def test_new_project_other_heights_need_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t = _tree(tmp_path)
    capsys.readouterr()  # the tree's own signing warnings
    before = _snapshot(t.root)
    args = ["new-project", "h5", "--from", "vendorref", "--root", str(t.root), "--lms-height", "5"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--force" in err[0]
    assert _snapshot(t.root) == before
    assert main([*args, "--force"]) == 0
    out = capsys.readouterr().out
    pub = lms.load_public(t.root / "key" / "h5" / "own-fw-lms-pubk.pem")
    assert pub.lms_type == lms.LMS_SHA256_M24_H5
    assert "--no-lms-verify" in out  # its bundle boots only where LMS is not verified


def test_new_project_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = _tree(tmp_path)
    capsys.readouterr()  # the tree's own signing warnings
    root = t.root
    for existing in ("config/oem.toml", "key/oem", "keys/oem", "prebuilt/oem"):
        p = root / existing
        if existing.endswith(".toml"):
            p.write_text("# mine\n")
        else:
            p.mkdir(parents=True)
            (p / "mine.txt").write_text("mine")
        before = _snapshot(root)
        assert main(["new-project", "oem", "--from", "vendorref", "--root", str(root)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{existing}: already exists, refusing to overwrite" in err[0]
        assert _snapshot(root) == before, existing
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    # an existing dodo.py is kept
    (root / "dodo.py").write_text("# my dodo\n")
    assert main(["new-project", "oem", "--from", "vendorref", "--root", str(root)]) == 0
    assert (root / "dodo.py").read_text() == "# my dodo\n"


def test_new_project_failure_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Interrupted while the keys are made (Ctrl-C), or failing at the bundle: no partial
    project, and a second try works."""
    t = _tree(tmp_path)
    capsys.readouterr()  # the tree's own signing warnings
    before = _snapshot(t.root)
    calls = []

    def interrupted(*a: Any, **kw: Any) -> Any:
        calls.append(a)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_keys, "make_lms_key", interrupted)
    assert main(["new-project", "oem", "--from", "vendorref", "--root", str(t.root)]) == 130
    assert calls and _snapshot(t.root) == before
    monkeypatch.undo()
    t.bundle.write_bytes(t.bundle.read_bytes()[:-1] + b"\x00")  # the runtime digest breaks
    before = _snapshot(t.root)
    assert main(["new-project", "oem", "--from", "vendorref", "--root", str(t.root)]) == 2
    err = capsys.readouterr().err
    assert "not a vendor-signed Caliptra 1.x bundle" in err and "bundle.runtime.digest" in err
    assert _snapshot(t.root) == before


def test_new_project_reference_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = _tree(tmp_path)
    capsys.readouterr()  # the tree's own signing warnings
    root = str(t.root)

    def err(*args: str) -> str:
        capsys.readouterr()
        assert main(["new-project", "x", "--root", root, *args]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    # a reference name with no matching config: names what there is
    e = err("--from", "ast2700-irot")
    assert "no reference config" in e and "ast2700-irot-ecc-lms-manifest.toml" in e
    assert "vendorref-ecc-lms-manifest.toml" in e
    assert "no such config file" in err("--from", "nowhere/x.toml")
    # owner keys signed by helpers; a key name that is not a plain file name; no owner keys
    text = t.config().read_text()
    helper = t.root / "config" / "helper.toml"
    helper.write_text(text + '\n[sign_helper]\nowner_ecc_fw_key_sign_helper = "x --key fw"\n')
    assert "[sign_helper]" in err("--from", str(helper))
    evil = t.root / "config" / "evil.toml"
    evil.write_text(text.replace('"own-fw-ecc-prvk.pem"', '"../../../evil-prvk.pem"', 1))
    assert "not a plain file name" in err("--from", str(evil))
    none = t.root / "config" / "none.toml"
    none.write_text(
        text.replace("own-", "gone-").replace("[owner_fw_key_config]", "[owner_fw_key_config]\n")
    )
    nokeys = "\n".join(ln for ln in text.splitlines() if "own-" not in ln)
    none.write_text(nokeys)
    assert "not named" in err("--from", str(none))
    assert not (t.root / "key" / "x").exists() and not (t.root / "config" / "x.toml").exists()


def test_adopt_a_full_tree_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from imgtool.keys import lms_state, lms_tree

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


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_without_a_terminal_is_a_line_every_few_seconds_with_an_eta() -> None:
    out, clock = io.StringIO(), _Clock()
    show = cli_keys._progress("own-fw-lms LMS H15/W4 tree", stream=out, clock=clock, every=3.0)
    for done, t in ((1024, 1.0), (2048, 2.0), (8192, 3.5), (9216, 4.0), (16384, 7.0)):
        clock.t = 100.0 + t
        show(done, 32768)
    clock.t = 100.0 + 13.9
    show(32768, 32768)
    lines = out.getvalue().splitlines()
    assert lines == [
        # 3.5 s for 8192 leaves: 24576 more take 10.5 s
        "own-fw-lms LMS H15/W4 tree: 8192/32768 leaves (25%), ETA 10 s",
        "own-fw-lms LMS H15/W4 tree: 16384/32768 leaves (50%), ETA 7 s",
        "own-fw-lms LMS H15/W4 tree: 32768/32768 leaves in 13.9 s",
    ]
    assert "\r" not in out.getvalue()


def test_progress_eta_in_minutes() -> None:
    out, clock = io.StringIO(), _Clock()
    show = cli_keys._progress("k", stream=out, clock=clock)
    clock.t += 60.0
    show(1 << 15, 1 << 20)  # 1/32 in a minute: 31 more
    assert out.getvalue() == "k: 32768/1048576 leaves (3%), ETA 31 min 00 s\n"


def test_progress_on_a_terminal_is_one_bar_redrawn_in_place() -> None:
    out, clock = _Tty(), _Clock()
    show = cli_keys._progress("k", stream=out, clock=clock)
    show(0, 4)
    clock.t += 0.05
    show(1, 4)  # within 0.1 s of the last redraw: skipped
    clock.t += 0.2
    show(2, 4)
    clock.t += 0.25
    show(4, 4)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    frames = text.split("\r")[1:]
    assert [f.split("] ")[1].split(",")[0].split(" in")[0] for f in frames] == [
        "0/4 leaves",
        "2/4 leaves",
        "4/4 leaves",
    ]
    assert "ETA unknown" in frames[0] and "[###############...............]" in frames[1]
    assert frames[2].startswith("k [" + "#" * 30 + "] 4/4 leaves in 0.5 s")


def test_keygen_without_a_terminal_says_what_it_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["keygen", "--algo", "lms", "--height", "10", "--force", "--out", str(tmp_path / "ak")]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert re.fullmatch(r"ak LMS H10/W4 tree: 1024/1024 leaves in \d+\.\d s\n", err), err


def test_new_project_shows_one_line_per_key_with_its_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["new-project", "p3", "--root", str(tmp_path), "--lms-height", "5", "--force"]
    assert main(args) == 0
    lines = capsys.readouterr().err.splitlines()[1:]  # after the lab-project note
    names = [f"{p}-{a}" for p in ("vnd-fw", "vnd-man", "own-fw", "own-man") for a in ("ecc", "lms")]
    assert [" ".join(ln.split(" ")[:2]) for ln in lines] == [
        f"{n}/8 {name}" for n, name in enumerate(names, 1)
    ]
    assert all(" 32/32 leaves in " in ln for ln in lines if "LMS" in ln)
    assert all(" key pair: done in " in ln for ln in lines if "ECC" in ln)


def test_keygen_progress_reports_real_leaf_counts(tmp_path: Path) -> None:
    """The callback sees the leaves actually computed, on every backend."""
    for backend in lms_tree.backends():
        calls: list[tuple[int, int]] = []
        lms_tree.generate(
            tmp_path / backend,
            lms.LMS_SHA256_M24_H5,
            lms.LMOTS_SHA256_N24_W4,
            workers=2,
            backend=backend,
            progress=lambda d, t, c=calls: c.append((d, t)),
        )
        assert calls[-1] == (32, 32) and len(calls) > 1
        assert all(0 < d <= 32 and t == 32 for d, t in calls)


@pytest.mark.parametrize("backend", ["c", "python"])
def test_interrupted_keygen_stops_at_once_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """Ctrl-C during the tree: the queued chunks are cancelled (not all computed first) and no
    key, cache or state file is left behind."""
    if backend not in lms_tree.backends():
        pytest.skip(f"LMS backend {backend} not available here")
    started: list[int] = []
    if backend == "c":
        real = lms_tree._compiled_leaves

        def counting(fast: object, impl: str) -> object:
            run = real(fast, impl)  # type: ignore[arg-type]

            def wrapped(job: lms_tree.LeafJob) -> bytes:
                started.append(job[4])
                return run(job)

            return wrapped

        monkeypatch.setattr(lms_tree, "_compiled_leaves", counting)

    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    # H10 with 2 workers: 16 chunks of 64 leaves
    with pytest.raises(KeyboardInterrupt):
        lms_tree.generate(
            tmp_path / "k",
            lms.LMS_SHA256_M24_H10,
            lms.LMOTS_SHA256_N24_W4,
            workers=2,
            backend=backend,
            progress=interrupt,
        )
    if backend == "c":
        assert 1 <= len(started) < 16, started
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_new_project_into_an_empty_tree_leaves_nothing_when_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    t = _tree(tmp_path)
    root = tmp_path / "fw"
    root.mkdir()

    def interrupted(*a: Any, **kw: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_keys, "make_lms_key", interrupted)
    args = ["new-project", "oem", "--from", str(t.config()), "--root", str(root)]
    assert main(args) == 130
    assert list(root.iterdir()) == []
    monkeypatch.undo()
    assert main(args) == 0
    assert {p.name for p in root.iterdir()} == {"config", "keys", "prebuilt", "vnd_sig", "dodo.py"}


def test_new_project_writes_nothing_outside_the_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A reference config whose vendor_sig_dir is an absolute folder elsewhere: the prebuilt
    vendor signatures are not copied there."""
    t = _tree(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    cfg = t.config()
    cfg.write_text(
        cfg.read_text().replace(
            "[manifest_config]\n", f'[manifest_config]\nvendor_sig_dir = "{elsewhere}"\n'
        )
    )
    root = tmp_path / "fw"
    root.mkdir()
    assert main(["new-project", "oem", "--from", str(cfg), "--root", str(root)]) == 0
    assert not elsewhere.exists() and not (root / "vnd_sig").exists()
