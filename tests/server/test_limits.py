"""CSFs that pass the syntax checks but crash or hang cst (red-team finding F2): caps on counts
and numeric ranges in the parser, resource limits on cst, and the output checked before it is
returned."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import imx_pki
import pytest
from srvfixtures import IMX_MACHINE, Server

from imgtool.server import csf as csfmod
from imgtool.server.imx import ImxError, check_csf_binary
from imgtool.server.sandbox import Artifact, CstRunner
from imgtool.server.sandbox import _sandbox_pid as sandbox_pid

WHY = CstRunner.probe()
BASE = imx_pki.csf_text("art.bin", 0x1000)
BLOCK = 'Blocks = 0x40480000 0x0 0x1000 "art.bin"'
UNLOCK = "[Unlock]\n    Engine = CAAM\n    Features = MID\n"
AUTH_HEAD = "\n[Authenticate Data]\n    Verification index = 2\n"
AUTH = AUTH_HEAD + '    Blocks = 0x40480000 0x0 0x10 "art.bin"\n'


def _blocks(n: int) -> str:
    return "Blocks = " + ", \\\n    ".join(
        f'0x{0x40480000 + 16 * i:x} 0x{16 * i:x} 0x10 "art.bin"' for i in range(n)
    )


# name -> (CSF text, line named, words of the reason); cst 3.3.1 segfaults on the Unlock and
# Target Index ones and fails on the others
HOSTILE = {
    "245 blocks": (BASE.replace(BLOCK, _blocks(245)), 29, "more than 16 blocks"),
    "40 authenticate data": (BASE + AUTH * 40, 59, "more than 8 [authenticate data]"),
    "600 unlock": (BASE.replace(UNLOCK, UNLOCK * 600), 42, "more than 8 [unlock]"),
    "target index 0x80000000": (
        BASE.replace("Target Index = 2", "Target Index = 0x80000000"),
        24,
        "'target index' must be 2 to 4",
    ),
    "source index 0x80000000": (
        BASE.replace("Source index = 0", "Source index = 0x80000000"),
        11,
        "'source index' must be 0 to 3",
    ),
    "verification index 99": (
        BASE.replace("Verification index = 2", "Verification index = 99"),
        28,
        "'verification index' must be 0 to 4",
    ),
    "version 4.99999": (BASE.replace("4.3", "4.99999"), 2, "Version must be 4.0 to 4.9"),
    "engine configuration 0x1ff": (
        BASE.replace("Engine Configuration = 0", "Engine Configuration = 0x1ff"),
        5,
        "out of range",
    ),
    "block length 0": (BASE.replace("0x0 0x1000", "0x0 0x0"), 29, "length > 0"),
    "block address past 4 GiB": (
        BASE.replace("0x40480000 0x0", "0x100000000 0x0"),
        29,
        "32-bit",
    ),
    "17 features": (
        BASE.replace("Features = MID", "Features = " + ",".join(["MID"] * 17)),
        20,
        "more than 16 items",
    ),  # fmt: skip
    "two install csfk": (
        BASE.replace(
            "[Authenticate CSF]", '[Install CSFK]\n    File = "x.pem"\n[Authenticate CSF]'
        ),
        16,
        "more than 1 [install csfk]",
    ),
    "four install key": (
        BASE + '\n[Install Key]\n    File = "x.pem"\n' * 3,
        37,
        "more than 3 [install key]",
    ),  # fmt: skip
    "33 sections": (
        BASE
        + "\n[NOP]\n" * 8
        + "\n[Set Engine]\n    Engine = CAAM\n" * 8
        + "\n[Init]\n    Engine = CAAM\n" * 8
        + AUTH * 5,
        0,
        "sections",
    ),  # fmt: skip
}


def test_hostile_csfs_parse_in_the_real_line_count() -> None:
    """The caps above sit on lines that exist (the test texts are what they claim)."""
    for name, (text, line, _) in HOSTILE.items():
        assert line <= text.count("\n") + 1, name


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_counts_and_ranges_are_capped(name: str) -> None:
    text, line, why = HOSTILE[name]
    with pytest.raises(csfmod.CsfError) as exc:
        csfmod.parse(text.encode())
    assert why in str(exc.value), str(exc.value)
    if line:
        assert exc.value.line == line, str(exc.value)


def test_the_caps_leave_room_for_real_csfs() -> None:
    """16 blocks in one statement, 8 Authenticate Data sections, every index at its limit."""
    text = BASE.replace(BLOCK, _blocks(16)) + AUTH.replace("index = 2", "index = 4") * 7
    text = text.replace("Target Index = 2", "Target Index = 4").replace("4.3", "4.5")
    parsed = csfmod.parse(text.encode())
    assert len(parsed.blocks) == 16 + 7


def test_blocks_must_lie_inside_the_artifact() -> None:
    parsed = csfmod.parse(BASE.encode())
    files = {
        "crts/SRK_1_2_3_4_table.bin",
        f"crts/{imx_pki.CSF}_crt.pem",
        f"crts/{imx_pki.IMG}_crt.pem",
    }
    csfmod.check_files(parsed, files, "art.bin", None, 0x1000)
    with pytest.raises(csfmod.CsfError, match="line 29: .*past the end of the 4095-byte"):
        csfmod.check_files(parsed, files, "art.bin", None, 0xFFF)


def test_block_past_the_artifact_over_http_is_400(server: Server) -> None:
    with server.client() as c:
        r = c.post(
            "/sign/imx",
            data={"machine": IMX_MACHINE, "soctype": "mx8m", "cstversion": imx_pki.CST_VERSION},
            files={"csf": ("csf.txt", BASE), "artifact": ("art.bin", bytes(0x800))},
        )
    assert r.status_code == 400 and "past the end" in r.text, r.text


def _ulimit_cst(tmp_path: Path) -> Path:
    """A fake cst that writes a HAB tag and its own ulimits to its output file."""
    fake = tmp_path / "bin" / "cst"
    fake.parent.mkdir()
    fake.write_text(
        '#!/bin/sh\nout="$4"\nprintf "\\324\\n" > "$out"\n'
        'echo "as $(ulimit -v) fsize $(ulimit -f) cpu $(ulimit -t) core $(ulimit -c)" >> "$out"\n'
    )
    fake.chmod(0o755)
    return fake


@pytest.mark.skipif(WHY is not None, reason=f"no sandbox here: {WHY}")
def test_cst_never_runs_when_its_limits_cannot_be_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If prlimit(2) on the waiting sandbox process fails, that process is killed before it is
    released: the job fails with 500 and cst has written nothing to its output."""
    fake = _ulimit_cst(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    runner = CstRunner(sandbox=True, cache_dir=tmp_path / "rt", work_dir=work)
    art = Artifact.from_bytes("flash.bin", b"x" * 1024, work)
    outputs: list[bytes] = []
    real_unlink = os.unlink

    def refuse(pid: int, res: int, limits: tuple[int, int]) -> tuple[int, int]:
        raise PermissionError("prlimit refused")

    def keep(path: str) -> None:  # read the job's output file before it is removed
        if str(path).endswith(".out"):
            outputs.append(Path(path).read_bytes())
        real_unlink(path)

    monkeypatch.setattr(resource, "prlimit", refuse)  # the module sandbox calls
    monkeypatch.setattr(os, "unlink", keep)
    try:
        with pytest.raises(ImxError) as exc:
            runner.run_sync(fake, b"csf", art, {}, 7)
    finally:
        monkeypatch.undo()
        art.close()
        runner.close()
    assert exc.value.status == 500 and "resource limits" in exc.value.detail
    assert outputs == [b""]  # cst never ran
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("sandboxed", [True, False], ids=["sandbox", "unsandboxed"])
def test_cst_runs_under_resource_limits(tmp_path: Path, sandboxed: bool) -> None:
    """The limits reach the process that runs cst: address space, file size, CPU time, no core
    files (the fake cst reports its own ulimits). In the sandbox they are set with prlimit(2)
    while bwrap waits on --block-fd (no prlimit binary needed); without it (the operator's
    --allow-unsandboxed-cst) prlimit(1) sets the same ones."""
    if sandboxed and WHY is not None:
        pytest.skip(f"no sandbox here: {WHY}")
    fake = _ulimit_cst(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    runner = CstRunner(sandbox=sandboxed, cache_dir=tmp_path / "rt", work_dir=work)
    if not sandboxed and runner.prlimit is None:
        runner.close()
        pytest.skip("prlimit (util-linux) not installed")
    art = Artifact.from_bytes("flash.bin", b"x" * 1024, work)
    try:
        out = runner.run_sync(fake, b"csf", art, {}, 7).decode("latin-1")
    finally:
        art.close()
        runner.close()
    words = out.split()
    got = dict(zip(words[1::2], words[2::2], strict=True))
    assert int(got["as"]) * 1024 == (512 << 20) + 2 * 1024  # KiB: 512 MiB + twice the artifact
    assert int(got["fsize"]) * 512 == (17 << 20) + 1024  # 512-byte blocks: 17 MiB + the artifact
    assert got["cpu"] == "7" and got["core"] == "0"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xd4\n",  # too short
        b"garbage-not-a-csf",
        b"\xd5\x00\x08\x43\xc0\x00\x04\x00",  # wrong tag
        b"\xd4\x00\x08\x33\xc0\x00\x04\x00",  # not version 4
        b"\xd4\x00\x40\x43\xc0\x00\x04\x00",  # header length beyond the data
        b"\xd4\x00\x0c\x43\xc0\x00\x04\x00\xbe\x00\x10\x00",  # a command past the CSF
        b"\xd4\x00\x08\x43\xc0\x00\x00\x00",  # a zero-length command (would loop)
    ],
)
def test_output_that_is_not_a_hab_csf_is_never_returned(data: bytes) -> None:
    with pytest.raises(ImxError) as exc:
        check_csf_binary(data)
    assert exc.value.status == 500 and exc.value.public == "Signing error"


def test_real_cst_output_shape_passes() -> None:
    # header 0x0c, one 8-byte command; certificates/signatures follow the CSF commands
    check_csf_binary(b"\xd4\x00\x0c\x43\xbe\x00\x08\x00\x00\x00\x00\x58" + b"\x30" * 100)


@pytest.mark.parametrize(
    ("info", "want"),
    [
        (b'{\n    "child-pid": 4242,\n    "mnt-namespace": 1\n}\n', 4242),
        (b'{"child-pid": 7, "x": "a}b"}', 7),  # a "}" inside a value: read on
        (b"", -1),  # bwrap closed it first: it failed, its exit status says why
        (b'{"child-pid": 0}', ValueError),
        (b'{"child-pid": -5}', ValueError),
        (b'{"child-pid": true}', ValueError),
        (b'{"child-pid": "12"}', ValueError),
        (b"[1]", -1),  # not the info, then EOF: as if bwrap failed (it is then waited for)
        (b"{" + b" " * 65535, ValueError),  # 64 KiB and no end: too long
        (b'{"child-pid": 1', ValueError),  # never complete: the deadline
    ],
)
def test_sandbox_pid_from_bwraps_info(info: bytes, want: int | type[Exception]) -> None:
    r, w = os.pipe()
    try:
        os.write(w, info)  # at most 64 KiB: fits in the pipe
        if info != b'{"child-pid": 1':  # that one stays open: the deadline ends it
            os.close(w)
            w = -1
        if isinstance(want, int):
            assert sandbox_pid(r, 2.0) == want
        else:
            with pytest.raises(want):
                sandbox_pid(r, 0.3)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_sandbox_pid_from_a_descriptor_above_fd_setsize() -> None:
    """A busy server has thousands of sockets open: bwrap's info pipe may be above 1024, where
    select() cannot wait on it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1100:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1100), hard))
    r, w = os.pipe()
    high = -1
    try:
        high = os.dup2(r, 1050, inheritable=False)
        os.write(w, b'{"child-pid": 99}')
        assert sandbox_pid(high, 2.0) == 99
    finally:
        for fd in (r, w, high):
            if fd >= 0:
                os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
