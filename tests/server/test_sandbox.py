"""The cst sandbox holds even when the CSF checks are bypassed: the runner is called directly."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import imx_pki
import pytest

from imgtool.server.imx import ImxError
from imgtool.server.sandbox import Artifact, CstRunner, dependencies

WHY = CstRunner.probe()
needs_bwrap = pytest.mark.skipif(WHY is not None, reason=f"no sandbox here: {WHY}")
needs_cst = pytest.mark.skipif(
    imx_pki.cst_available() is not None, reason=str(imx_pki.cst_available())
)


def _job(tmp: Path, pki_root: Path) -> tuple[Artifact, dict[str, Path]]:
    """The artifact staged in memory and the key tree to bind read-only (as the server does)."""
    tree = tmp / "tree"
    shutil.copytree(pki_root, tree)
    art = Artifact.from_bytes("flash.bin", os.urandom(0x8000), tmp)
    return art, {"crts": tree / "crts", "keys": tree / "keys"}


@needs_bwrap
@needs_cst
def test_cst_cannot_read_outside_its_job_even_with_a_hostile_csf(tmp_path: Path) -> None:
    pki = imx_pki.make_pki(tmp_path / "imx")
    cst = imx_pki.install_cst(tmp_path / "nxp")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(pki.root / "crts" / "SRK_1_2_3_4_table.bin", outside / "table.bin")
    # the CSF the parser would refuse: an absolute path outside the job (hidden behind '!')
    csf = imx_pki.csf_text("flash.bin").replace(
        '"crts/SRK_1_2_3_4_table.bin"', f'!"{outside}/table.bin"'
    )
    work = tmp_path / "work"
    work.mkdir()
    art, binds = _job(tmp_path, pki.root)
    runner = CstRunner(sandbox=True, cache_dir=tmp_path / "rt", work_dir=work)
    try:
        with pytest.raises(ImxError) as err:
            asyncio.run(runner.run(cst, csf.encode(), art, binds, 30))
        assert "File not present" in err.value.detail and str(outside) in err.value.detail
        # control: the same job without the sandbox reads that file and signs
        plain = CstRunner(sandbox=False, work_dir=work)
        assert asyncio.run(plain.run(cst, csf.encode(), art, binds, 30))[:1] == b"\xd4"
        plain.close()
        # and the sandboxed run of the honest CSF works
        honest = imx_pki.csf_text("flash.bin").encode()
        assert asyncio.run(runner.run(cst, honest, art, binds, 30))[:1] == b"\xd4"
    finally:
        art.close()
        runner.close()
    assert not any(work.iterdir())  # no job files left on the host


@needs_bwrap
def test_sandbox_shows_only_the_job(tmp_path: Path) -> None:
    """A 'cst' that looks around: no /etc, no /proc, no /dev, no key store, no other job,
    no network namespace peers; the key tree is read-only; its inputs are there, no other file
    descriptor is open, what it writes in /job never reaches the host, and /job is bounded."""
    keystore = tmp_path / "keystore"
    keystore.mkdir()
    (keystore / "own-man-ecc-prvk.pem").write_text("PRIVATE")
    other_job = tmp_path / "work" / "cptra-imx-other"
    other_job.mkdir(parents=True)
    (other_job / "secret.txt").write_text("x")
    fd, name = tempfile.mkstemp(prefix="cptra-sentinel-", dir="/tmp")
    os.close(fd)
    sentinel = Path(name)
    tree = tmp_path / "tree" / "crts"
    tree.mkdir(parents=True)
    (tree / "c.pem").write_text("cert")
    probes = [
        "/etc/passwd",
        "/etc/shadow",
        "/proc/1/environ",
        "/proc/self/status",
        "/dev/null",
        str(keystore / "own-man-ecc-prvk.pem"),
        str(other_job / "secret.txt"),
        str(sentinel),  # a file in the host's /tmp
        str(Path.home()),
        "crts/c.pem",
    ]
    checks = "".join(f'if [ -e "{p}" ]; then echo "visible {p}"; fi\n' for p in probes)
    fake = tmp_path / "bin" / "cst"
    fake.parent.mkdir()
    fake.write_text(
        '#!/bin/sh\nout="$4"\nprintf "\\324\\n" > "$out"\n'
        + checks.replace('echo "visible', 'echo >> "$out" "visible')
        + 'if echo x > crts/new 2>>err; then echo >> "$out" "tree writable"; fi\n'
        + 'echo >> "$out" "uid $(id -u 2>/dev/null || echo none)"\n'
        + 'echo >> "$out" "csf $(/usr/bin/cat csf-input.txt)"\n'
        + 'echo >> "$out" "artifact $(/usr/bin/cat flash.bin)"\n'
        # (no /dev/null in there: stderr goes to a file in /job)
        + "for fd in 1 3 4 5 6 7 8 9 10 11 12 13 14 15 16; do\n"
        + '  if (: <&$fd) 2>>err; then echo >> "$out" "fd $fd open"; fi\n'
        + "done\n"
        + "/usr/bin/yes | /usr/bin/head -c 41943040 > big 2>>err\n"
        + 'echo >> "$out" "big $(/usr/bin/wc -c < big)"\n'
    )
    fake.chmod(0o755)
    work = tmp_path / "work"
    before = sorted(work.rglob("*"))
    runner = CstRunner(
        sandbox=True, protected=[keystore, work], cache_dir=tmp_path / "rt", work_dir=work
    )
    art = Artifact.from_bytes("flash.bin", b"ARTIFACT-BYTES", tmp_path)
    try:
        raw = asyncio.run(runner.run(fake, b"CSF-TEXT", art, {"crts": tree}, 30))
    finally:
        sentinel.unlink()
        art.close()
        runner.close()
    out = raw.decode("latin-1")
    assert out.startswith("\xd4\n")
    seen = [line for line in out.splitlines() if line.startswith("visible")]
    assert seen == ["visible crts/c.pem"], out
    assert "tree writable" not in out
    assert not (tree / "new").exists()
    assert "csf CSF-TEXT" in out and "artifact ARTIFACT-BYTES" in out
    # stdout only (the pipe): bwrap closed the input descriptors, nothing else leaked in
    assert [line for line in out.splitlines() if line.endswith(" open")] == ["fd 1 open"], out
    # /job is writable but bounded: a 40 MiB write stops at the tmpfs size (16 MiB + inputs)
    big = int(next(line for line in out.splitlines() if line.startswith("big ")).split()[1])
    assert 15 << 20 <= big < 17 << 20, out
    assert sorted(work.rglob("*")) == before  # nothing of the job on the host afterwards
    # the fake cst was not even given /etc/passwd although its text names it
    assert Path("/etc/passwd") not in dependencies(fake)


def test_dependencies_of_a_wrapper_script(tmp_path: Path) -> None:
    w = tmp_path / "cst"
    w.write_text(
        f'#!/bin/sh\nLD_PRELOAD="{shutil.which("true")}" exec /bin/true "$@"\n# /etc/hosts\n'
    )
    w.chmod(0o755)
    deps = dependencies(w, protected=[tmp_path / "keys"])
    assert w in deps and Path("/bin/sh") in deps and Path("/bin/true") in deps
    assert any("libc" in p.name for p in deps)
    assert Path("/etc/hosts") not in deps
    # files under protected paths are never bound, even when a wrapper names them
    keys = tmp_path / "keys"
    keys.mkdir()
    shutil.copy(shutil.which("true") or "/bin/true", keys / "tool")
    w.write_text(f"#!/bin/sh\nexec {keys / 'tool'}\n")
    assert keys / "tool" not in dependencies(w, protected=[keys])


def test_probe_reports_a_missing_bwrap(tmp_path: Path) -> None:
    why = CstRunner.probe(str(tmp_path / "no-bwrap"))
    assert why is not None and "bwrap" in why


@pytest.mark.parametrize("allow", [False, True])
def test_without_namespaces_imx_is_refused_unless_allowed(tmp_path: Path, allow: bool) -> None:
    """A bwrap that cannot create namespaces (as in some containers): the server says so at
    start-up and answers /sign/imx with 503, unless --allow-unsandboxed-cst."""
    from srvfixtures import FAKE_CST_OK, start_server
    from test_server import _imx_form

    fakebin = tmp_path / "fakebin"
    fakebin.mkdir()
    (fakebin / "bwrap").write_text(
        "#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n"
    )
    (fakebin / "bwrap").chmod(0o755)
    env = {"PATH": f"{fakebin}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    args = ("--allow-unsandboxed-cst",) if allow else ()
    s = start_server(tmp_path / "srv", with_cst=False, extra_args=args, env_extra=env)
    try:
        log = (tmp_path / "srv" / "server.log").read_text()
        assert "cst sandbox not available" in log and "No permissions" in log
        with s.client() as c:
            r = c.post("/sign/imx", **_imx_form(version=FAKE_CST_OK))  # type: ignore[arg-type]
        if allow:
            assert r.status_code == 200 and b"argv:" in r.content
            assert "WITHOUT a sandbox" in log
        else:
            assert r.status_code == 503 and "sandbox" in r.text
            assert "--allow-unsandboxed-cst" in log
        assert not any(s.work.iterdir())
    finally:
        s.proc.terminate()
        s.proc.wait(timeout=10)


def _fake(tmp: Path, body: str) -> Path:
    fake = tmp / "fakebin" / "cst"
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_text("#!/bin/sh\n" + body)
    fake.chmod(0o755)
    return fake


@needs_bwrap
def test_a_large_artifact_is_bound_read_only(tmp_path: Path) -> None:
    """Above the in-memory limit the artifact is a 0600 work-dir file bound read-only: cst sees
    its exact bytes, cannot change it, and the file is gone once the job is released."""
    import hashlib
    import io
    import stat

    work = tmp_path / "work"
    work.mkdir()
    data = os.urandom(3 << 20)
    art = Artifact.from_stream("big.bin", io.BytesIO(data), work)
    assert art.path is not None and art.fd < 0 and art.size == len(data)
    assert art.sha256 == hashlib.sha256(data).hexdigest()
    assert stat.S_IMODE(art.path.stat().st_mode) == 0o600
    fake = _fake(
        tmp_path,
        'out="$4"\nprintf "\\324\\n" > "$out"\n'
        'echo >> "$out" "sum $(/usr/bin/sha256sum big.bin)"\n'
        'if echo x >> big.bin 2>>err; then echo >> "$out" "artifact writable"; fi\n',
    )
    runner = CstRunner(sandbox=True, cache_dir=tmp_path / "rt", work_dir=work)
    try:
        out = asyncio.run(runner.run(fake, b"csf", art, {}, 30)).decode("latin-1")
    finally:
        runner.close()
    assert f"sum {hashlib.sha256(data).hexdigest()}  big.bin" in out, out
    assert "artifact writable" not in out
    assert art.path.read_bytes() == data
    path = art.path
    art.close()
    art.close()  # idempotent
    assert not path.exists() and not any(work.iterdir())


@needs_bwrap
@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ("exit 0\n", "exited with 0 but wrote no output"),
        ('echo "cst: Error: something broke"\nexit 3\n', "exited with 3: cst: Error: something"),
    ],
)
def test_a_failing_cst_is_an_error_with_its_last_line(
    tmp_path: Path, body: str, detail: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    runner = CstRunner(sandbox=True, cache_dir=tmp_path / "rt", work_dir=work)
    art = Artifact.from_bytes("flash.bin", b"x", work)
    try:
        with pytest.raises(ImxError) as err:
            runner.run_sync(_fake(tmp_path, body), b"csf", art, {}, 30)
    finally:
        art.close()
        runner.close()
    assert err.value.status == 500 and detail in err.value.detail
    assert not any(work.iterdir())


@needs_bwrap
def test_a_hanging_cst_is_killed_at_the_timeout(tmp_path: Path) -> None:
    import time

    work = tmp_path / "work"
    work.mkdir()
    runner = CstRunner(sandbox=True, cache_dir=tmp_path / "rt", work_dir=work)
    art = Artifact.from_bytes("flash.bin", b"x", work)
    start = time.monotonic()
    try:
        with pytest.raises(ImxError) as err:
            runner.run_sync(_fake(tmp_path, "exec /bin/sleep 30\n"), b"csf", art, {}, 1)
    finally:
        art.close()
        runner.close()
    assert "timed out after 1 s" in err.value.detail
    assert time.monotonic() - start < 10
    assert not any(work.iterdir())


@needs_bwrap
def test_a_cancelled_job_still_finishes_and_cleans_up(tmp_path: Path) -> None:
    """Cancelling the awaiting request does not abandon a running cst: the cancellation is
    delivered once the job is over (its slot stays taken until then), and nothing is left."""
    import time

    work = tmp_path / "work"
    work.mkdir()
    fake = _fake(tmp_path, '/bin/sleep 1\nprintf "\\324" > "$4"\n')
    runner = CstRunner(sandbox=True, cache_dir=tmp_path / "rt", work_dir=work)
    art = Artifact.from_bytes("flash.bin", b"x", work)

    async def main() -> float:
        task = asyncio.ensure_future(runner.run(fake, b"csf", art, {}, 30))
        await asyncio.sleep(0.3)
        start = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - start

    try:
        waited = asyncio.run(main())
    finally:
        art.close()
        runner.close()
    assert waited > 0.4  # it waited for the job rather than returning at once
    assert not any(work.iterdir())


@pytest.mark.parametrize("name", ["csf-input.txt", "csf-output.bin", "crts", "a/b", "..", ""])
def test_the_runner_refuses_artifact_names_that_would_shadow_the_job(
    tmp_path: Path, name: str
) -> None:
    """Defence in depth behind the form checks: an artifact name that is a job file, a bound
    key-tree entry or a path never reaches bwrap (both runners)."""
    for sandbox in (True, False):
        runner = CstRunner(sandbox=sandbox, cache_dir=tmp_path / f"rt{sandbox}", work_dir=tmp_path)
        art = Artifact.from_bytes(name, b"x", tmp_path)
        try:
            with pytest.raises(ImxError) as err:
                runner.run_sync(Path("/bin/false"), b"csf", art, {"crts": tmp_path}, 5)
        finally:
            art.close()
            runner.close()
        assert err.value.status == 400
