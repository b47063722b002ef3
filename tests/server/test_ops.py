"""Operations: tokens (list, revoke, reload without restart), per-token LMS quotas, --keys and a
missing key store, public keys derived from private keys, sign-helper's public-key check, the
key-archive cache, names with control characters."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest
from srvfixtures import IMX_MACHINE, MACHINE, Server, _add_token

from imgtool.cli.main import main
from imgtool.keys import ecc, lms
from imgtool.server.auth import load_tokens
from imgtool.server.imx import ImxError
from imgtool.server.keycache import KeyCache

DIGEST = bytes(range(48))


def _sign(c: httpx.Client, key: str, algo: str, machine: str = MACHINE) -> httpx.Response:
    return c.post(
        "/sign/caliptra",
        data={"machine": machine, "key": key, "algo": algo, "digest": DIGEST.hex()},
    )


def _records(server: Server) -> list[dict[str, object]]:
    return [json.loads(x) for x in server.audit.read_text().splitlines()]


def test_token_added_and_revoked_without_restart(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = server.audit.parent / "tokens.json"
    tok = _add_token(tokens, "short-lived", MACHINE, "caliptra")
    with server.client(tok) as c:
        assert _sign(c, "own-man", "ecc").status_code == 200  # picked up at once
        assert main(["token", "list", "--tokens", str(tokens)]) == 0
        listed = capsys.readouterr().out
        assert "short-lived" in listed and "ci-builder" in listed
        assert all(t.sha256 not in listed for t in load_tokens(tokens))
        assert main(["token", "revoke", "--tokens", str(tokens), "--id", "short-lived"]) == 0
        r = _sign(c, "own-man", "ecc")
        assert r.status_code == 401  # refused at once, same server process
    assert main(["token", "revoke", "--tokens", str(tokens), "--id", "short-lived"]) == 2
    capsys.readouterr()
    assert main(["token", "list", "--tokens", str(tokens), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert "short-lived" not in [t["id"] for t in doc]


def test_broken_tokens_file_fails_closed(server: Server) -> None:
    tokens = server.audit.parent / "tokens.json"
    good = tokens.read_bytes()
    try:
        tokens.write_text('{"tokens": [{"id": "x\\n", "sha256": "00"}]}')
        with server.client() as c:
            assert _sign(c, "own-man", "ecc").status_code == 503
        assert httpx.get(f"{server.url}/healthz").status_code == 503
    finally:
        tmp = tokens.with_name("tokens.json.tmp")
        tmp.write_bytes(good)
        os.replace(tmp, tokens)
    with server.client() as c:
        assert _sign(c, "own-man", "ecc").status_code == 200


def test_lms_quota_per_token(server: Server) -> None:
    tokens = server.audit.parent / "tokens.json"
    buf = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(buf):
        assert (
            main(
                [
                    "token",
                    "add",
                    "--tokens",
                    str(tokens),
                    "--id",
                    "quota2",
                    "--machines",
                    MACHINE,
                    "--endpoints",
                    "caliptra",
                    "--lms-quota",
                    "2/1h",
                ]
            )
            == 0
        )
    tok = buf.getvalue().strip()
    with server.client(tok) as c:
        qs = [lms.sig_q(_sign(c, "vnd-man", "lms").content) for _ in range(2)]
        r = _sign(c, "vnd-man", "lms")
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        assert "quota" in r.text
        assert _sign(c, "vnd-man", "ecc").status_code == 200  # ECC is not limited
    with server.client() as c:  # another token: the refused request spent no leaf
        r = _sign(c, "vnd-man", "lms")
        assert r.status_code == 200 and lms.sig_q(r.content) == qs[1] + 1
    recs = [x for x in _records(server) if x.get("token_id") == "quota2"]
    assert [
        x["result"] for x in recs if x["event"] == "request" and x.get("key") == "vnd-man-lms"
    ] == [
        200,
        200,
        429,
    ]
    assert len([x for x in recs if x["event"] == "sign" and x.get("key") == "vnd-man-lms"]) == 2


def test_control_characters_never_pass_and_never_reach_the_log(server: Server) -> None:
    with server.client() as c:
        for machine in ("bmc-a\n", "bmc-a\r\nX-Evil: 1", "bmc-a\x00", "bmc-\u00e9"):
            r = _sign(c, "own-man", "ecc", machine=machine)
            assert r.status_code == 400, machine
        r = c.get("/pubkey", params={"machine": "bmc-a\n", "key": "own-man", "algo": "ecc"})
        assert r.status_code == 400
        r = c.get("/nowhere%0Ainjected%1B[2J")
        assert r.status_code == 404
    log = (server.audit.parent / "server.log").read_text()
    audit = server.audit.read_text()
    assert "\ninjected" not in log and "\x1b" not in log and "\x1b" not in audit
    assert "X-Evil" not in log
    assert all(json.loads(line) for line in audit.splitlines())  # still one record per line
    rec = [x for x in _records(server) if x["endpoint"] == "other"][-1]
    assert rec["result"] == 404 and "\\x0a" in str(rec["path"])


def test_serve_keys_option_and_missing_key_store(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGSIGSERVER")}
    tokens = tmp_path / "tokens.json"
    _add_token(tokens, "t", "m")
    r = subprocess.run(
        [sys.executable, "-m", "imgtool", "serve", "--port", "1", "--tokens", str(tokens)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "--keys" in r.stderr and len(r.stderr.splitlines()) == 1
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "imgtool",
            "serve",
            "--port",
            "1",
            "--tokens",
            str(tokens),
            "--keys",
            str(tmp_path / "missing"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "key store not found" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("algo", ["ecc", "lms"])
def test_public_key_derived_when_the_pubk_file_is_missing(server: Server, algo: str) -> None:
    pub = server.keys / f"vnd-fw-{algo}-pubk.pem"
    saved = pub.read_bytes()
    pub.rename(pub.with_suffix(".away"))
    try:
        with server.client() as c:
            r = c.get("/pubkey", params={"machine": MACHINE, "key": "vnd-fw", "algo": algo})
        assert r.status_code == 200
        if algo == "ecc":
            got = ecc.load_public_bytes(r.content)
            assert ecc.public_to_hw(got) == ecc.public_to_hw(ecc.load_public_bytes(saved))
        else:
            assert lms.LmsPublicKey.from_bytes(r.content) == lms.LmsPublicKey.from_bytes(saved)
    finally:
        pub.with_suffix(".away").rename(pub)
    recs = [x for x in _records(server) if x["endpoint"] == "pubkey"]
    assert recs and recs[-1]["result"] == 200 and recs[-1]["key"] == f"vnd-fw-{algo}"


def test_sign_helper_checks_the_public_key_before_asking(server: Server, tmp_path: Path) -> None:
    tok = tmp_path / "token"
    tok.write_text(server.token)
    wrong = tmp_path / "other-ecc"
    ecc.generate_keypair(wrong)
    before = len([x for x in _records(server) if x["event"] == "sign"])
    cmd = [
        sys.executable,
        "-m",
        "imgtool",
        "sign-helper",
        "--server",
        server.url,
        "--machine",
        MACHINE,
        "--key",
        "own-fw",
        "--algo",
        "ecc",
        "--token-file",
        str(tok),
    ]
    r = subprocess.run(
        [*cmd, "--pubkey", f"{wrong}-pubk.pem"],
        input=DIGEST.hex() + "\n",
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "no signature requested" in r.stderr and r.stdout == ""
    assert len([x for x in _records(server) if x["event"] == "sign"]) == before
    r = subprocess.run(
        [*cmd, "--pubkey", str(server.keys / "own-fw-ecc-pubk.pem")],
        input=DIGEST.hex() + "\n",
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    sig = bytes.fromhex(r.stdout.strip())
    assert ecc.verify_digest(ecc.load_public(server.keys / "own-fw-ecc-pubk.pem"), DIGEST, sig)


# ---------------------------------------------------------------- the key-archive cache
def _tarball(path: Path, files: dict[str, bytes]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    path.write_bytes(buf.getvalue())


def test_key_archive_is_unpacked_once_and_refreshed_when_it_changes(tmp_path: Path) -> None:
    archive = tmp_path / "imx-cst-keys.tar.gz"
    _tarball(archive, {"crts/a_crt.pem": b"A", "keys/a_key.pem": b"K"})
    cache = KeyCache(tmp_path / "cache", 1 << 20, 64)
    t1 = cache.acquire(archive)
    t2 = cache.acquire(archive)
    assert t1 == t2 and cache.unpacks == 1
    assert t1.files == {"crts/a_crt.pem", "keys/a_key.pem"} and t1.tops == ("crts", "keys")
    assert (t1.root / "crts" / "a_crt.pem").read_bytes() == b"A"
    assert oct((t1.root / "keys" / "a_key.pem").stat().st_mode & 0o777) == "0o400"
    cache.release(t2)
    # same bytes, new inode/mtime: hashed again, not unpacked again
    data = archive.read_bytes()
    archive.unlink()
    archive.write_bytes(data)
    t3 = cache.acquire(archive)
    assert t3.digest == t1.digest and cache.unpacks == 1
    cache.release(t3)
    # new contents: a new tree; the old one goes once its last user releases it
    _tarball(archive, {"crts/b_crt.pem": b"B"})
    t4 = cache.acquire(archive)
    assert t4.digest != t1.digest and cache.unpacks == 2 and t4.files == {"crts/b_crt.pem"}
    assert t1.root.exists()  # t1 is still held
    cache.release(t1)
    assert not t1.root.exists()
    cache.release(t4)
    assert t4.root.exists()  # still the current tree
    cache.close()
    assert not (tmp_path / "cache").exists()


def test_key_cache_refuses_a_bad_archive_and_missing_one(tmp_path: Path) -> None:
    cache = KeyCache(tmp_path / "cache", 1 << 20, 64)
    with pytest.raises(ImxError) as err:
        cache.acquire(tmp_path / "none.tar.gz")
    assert err.value.status == 404
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(ImxError) as err:
        cache.acquire(bad)
    assert err.value.status == 500
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []  # nothing half-unpacked


def test_imx_requests_reuse_the_unpacked_archive(server: Server) -> None:
    """Over HTTP: the work dir holds only the job (the key tree comes from the cache)."""
    from srvfixtures import FAKE_CST_OK
    from test_server import _imx_form

    with server.client() as c:
        for _ in range(3):
            r = c.post("/sign/imx", **_imx_form(version=FAKE_CST_OK))  # type: ignore[arg-type]
            assert r.status_code == 200
    assert not any(server.work.iterdir())
    assert IMX_MACHINE


def test_cache_dir_is_private(tmp_path: Path) -> None:
    KeyCache(tmp_path / "c", 1 << 20, 8)
    assert oct((tmp_path / "c").stat().st_mode & 0o777) == "0o700"
    shutil.rmtree(tmp_path / "c")


def test_jobs_beyond_the_limit_queue_then_get_429_with_retry_after(tmp_path: Path) -> None:
    import concurrent.futures

    from srvfixtures import FAKE_CST_HANG, FAKE_CST_OK, start_server
    from test_server import _imx_form

    s = start_server(
        tmp_path, max_jobs=1, with_cst=False, env_extra={"CPTRA_IMGTOOL_QUEUE_TIMEOUT": "1"}
    )
    try:

        def one(version: str) -> httpx.Response:
            with s.client() as c:
                return c.post("/sign/imx", **_imx_form(version=version))  # type: ignore[arg-type]

        # one slot, fast jobs: the others wait their turn instead of failing
        with concurrent.futures.ThreadPoolExecutor(6) as ex:
            codes = [r.status_code for r in ex.map(one, [FAKE_CST_OK] * 6)]
        assert codes == [200] * 6
        # the slot is held by a hanging cst (3 s timeout): a queued job gives up after 1 s
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            hang = ex.submit(one, FAKE_CST_HANG)
            import time

            time.sleep(0.3)
            r = ex.submit(one, FAKE_CST_OK).result()
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            assert hang.result().status_code == 500
        assert one(FAKE_CST_OK).status_code == 200
        assert not any(s.work.iterdir())
    finally:
        s.proc.terminate()
        s.proc.wait(timeout=10)


def test_stale_key_caches_of_killed_servers_are_removed(tmp_path: Path) -> None:
    import tempfile

    from srvfixtures import start_server

    dead = subprocess.Popen(["true"])
    dead.wait()
    tmp = Path(tempfile.gettempdir())
    stale = tmp / f"cptra-imgtool-keys-{dead.pid}-test"
    live = tmp / f"cptra-imgtool-keys-{os.getpid()}-test"
    for d in (stale, live):
        (d / "trees" / "x").mkdir(parents=True, exist_ok=True)
        (d / "trees" / "x" / "k.pem").write_text("k")
        (d / "trees" / "x").chmod(0o500)
    try:
        s = start_server(tmp_path, with_cst=False)
        s.proc.terminate()
        s.proc.wait(timeout=10)
        assert not stale.exists()  # its server is gone
        assert live.exists()  # a running process's cache is never touched
    finally:
        for d in (stale, live):
            if d.exists():
                (d / "trees" / "x").chmod(0o700)
                shutil.rmtree(d)
