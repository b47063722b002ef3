"""keygen, lms-status and new-project through the CLI."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from imgtool import cli_keys, lms, lms_tree
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


def test_new_project_shows_one_bar_per_key_with_its_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new-project", "p3", "--root", str(tmp_path), "--lms-height", "5"]) == 0
    lines = capsys.readouterr().err.splitlines()
    names = ("vnd-fw", "vnd-man", "own-fw", "own-man")
    assert [ln.split(":")[0] for ln in lines] == [
        f"{n}/4 {name}-lms LMS H5/W4 tree" for n, name in enumerate(names, 1)
    ]
    assert all(" 32/32 leaves in " in ln for ln in lines)


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
