"""Red-team findings F3-F8 and the smaller ones: connections held after an error to an unread
body, websocket upgrades, the audit log required, X-Forwarded-For, unauthenticated floods in
the audit log, injective log escaping, reserved archive names, the token re-checked after the
queue wait, the bench's state store, and the warning for a wildcard address without TLS."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from srvfixtures import FAKE_CST_HANG, MACHINE, Server, _add_token, free_port, start_server

from imgtool.server import validate
from imgtool.server.asgi import ServeOptions, guarded_protocol
from imgtool.server.audit import FailureSummary
from imgtool.server.imx import ImxError
from imgtool.server.keycache import KeyCache

REPO = Path(__file__).resolve().parents[2]


def _records(s: Server) -> list[dict[str, Any]]:
    return [json.loads(x) for x in s.audit.read_text().splitlines()]


def _recv_all(sock: socket.socket, deadline_s: float) -> tuple[bytes, bool]:
    """Read until the server closes (True) or ``deadline_s`` passes (False)."""
    sock.settimeout(0.5)
    data = b""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


# ------------------------------------------------------------------ F3: unread bodies
def test_error_to_an_unread_body_closes_the_connection(server: Server) -> None:
    """An unauthenticated upload announcing 10 MB gets its 401 and the connection is closed
    then -- not kept for the body's deadline (30 s + 10 MB at 64 KiB/s, ~3 minutes)."""
    host, port = server.url.split("//")[1].split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            b"POST /sign/caliptra HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream"
            b"\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 1000
        )
        data, closed = _recv_all(s, 10)
    assert data.startswith(b"HTTP/1.1 401"), data[:100]
    assert b"connection: close" in data.lower()
    assert closed, "the server kept the connection open after answering"


def test_keep_alive_still_works_after_a_read_body(server: Server) -> None:
    """A request whose body was read keeps its connection (the close is for unread ones)."""
    with server.client() as c:
        for _ in range(3):
            r = c.post(
                "/sign/caliptra",
                data={"machine": MACHINE, "key": "own-man", "algo": "ecc", "digest": "00" * 48},
            )
            assert r.status_code == 200 and r.headers.get("connection") != "close"


class _Transport(asyncio.Transport):
    """A transport that never drains (a client that stops reading)."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False
        self.closing = False
        self.buffered = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("10.1.2.3", 5555), "sockname": ("127.0.0.1", 9999)}.get(name, default)

    def write(self, data: Any) -> None:
        self.buffered += len(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing or self.aborted

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _protocol(opts: ServeOptions, app: Any, ws_class: Any = None) -> tuple[Any, Any]:
    """The guarded protocol class and a factory of its instances (one per connection)."""
    import uvicorn
    from uvicorn.server import ServerState

    config = uvicorn.Config(app, log_level="error", ws="none", lifespan="off")
    config.load()
    config.ws_protocol_class = ws_class  # as if a websocket library were installed
    cls = guarded_protocol(opts)
    state = ServerState()
    return cls, lambda: cls(config=config, server_state=state, app_state={})


def test_a_client_that_stops_reading_is_dropped_at_the_send_deadline() -> None:
    """The response cannot be written (the client does not read): the connection is aborted
    after send_timeout instead of being held until TCP gives up."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x" * 100, "more_body": True})
        await asyncio.sleep(30)

    async def scenario() -> bool:
        cls, new = _protocol(ServeOptions(send_timeout=0.3, header_timeout=60), app)
        proto = new()
        t = _Transport()
        proto.connection_made(t)
        proto.data_received(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.05)
        proto.pause_writing()  # the socket buffer is full
        for _ in range(50):
            if t.aborted:
                break
            await asyncio.sleep(0.1)
        for task in list(proto.tasks):
            task.cancel()
        proto.connection_lost(None)
        return t.aborted and cls.guard_stats.total == 0

    assert asyncio.run(scenario())


# ------------------------------------------------------------------ F4: websocket upgrades
def test_websocket_upgrade_never_leaks_a_connection_slot() -> None:
    """Even with a websocket protocol available, an upgrade request is answered as plain HTTP by
    the guarded protocol (never handed to another protocol, whose close would not release the
    slot), and the slot is released when the connection goes."""
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"no"})

    class Boom:
        def __init__(self, **kw: Any) -> None:
            raise AssertionError("the upgrade was handed to a websocket protocol")

    async def scenario() -> int:
        cls, new = _protocol(ServeOptions(), app, Boom)
        for _ in range(5):
            proto = new()
            t = _Transport()
            proto.connection_made(t)
            proto.data_received(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            await asyncio.sleep(0.05)
            proto.connection_lost(None)
        return int(cls.guard_stats.total)

    assert asyncio.run(scenario()) == 0
    assert seen == ["http"] * 5


def test_serve_runs_uvicorn_without_websockets_and_proxy_headers(monkeypatch: Any) -> None:
    import uvicorn

    from imgtool.server import asgi

    got: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: got.update(kw))
    asgi.run(object(), ServeOptions())
    assert got["ws"] == "none"
    assert got["proxy_headers"] is False
    asgi.run(object(), ServeOptions(forwarded_allow_ips="10.0.0.1"))
    assert got["proxy_headers"] is True and got["forwarded_allow_ips"] == "10.0.0.1"


def test_websocket_scope_is_closed_by_the_app(tmp_path: Path) -> None:
    from imgtool.server.app import AuditMiddleware

    called: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope["type"])

    sent: list[dict[str, Any]] = []

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    mw = AuditMiddleware(inner, service=None)  # type: ignore[arg-type]
    asyncio.run(mw({"type": "websocket", "path": "/x", "headers": []}, receive, send))
    assert called == [] and sent == [{"type": "websocket.close", "code": 1008}]


# ------------------------------------------------------------------ F5: the audit log
def _serve(tmp: Path, *args: str, env_extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    keys = tmp / "keys"
    (keys / "m" / "caliptra").mkdir(parents=True, exist_ok=True)
    tokens = tmp / "tokens.json"
    if not tokens.exists():
        _add_token(tokens, "t", "m")
    env = {**os.environ, "XDG_STATE_HOME": str(tmp / "xdg"), **(env_extra or {})}
    env.pop("CPTRA_IMGTOOL_AUDIT_LOG", None)
    env.pop("CPTRA_IMGTOOL_STATE", None)
    return subprocess.Popen(
        [sys.executable, "-m", "imgtool", "serve", "--keys", str(keys), "--tokens", str(tokens),
         "--port", str(free_port()), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _startup_lines(p: subprocess.Popen[str], want: str) -> str:
    """stderr up to the line containing ``want`` (the server is then stopped)."""
    assert p.stderr is not None
    seen = ""
    end = time.monotonic() + 20
    try:
        while time.monotonic() < end:
            line = p.stderr.readline()
            if not line:
                break
            seen += line
            if want in line:
                break
    finally:
        p.terminate()
        p.wait(timeout=10)
    return seen


def test_audit_log_defaults_to_the_state_dir_and_is_announced(tmp_path: Path) -> None:
    p = _serve(tmp_path)
    err = _startup_lines(p, "Uvicorn running")
    audit = tmp_path / "xdg" / "cptra-imgtool" / "server-audit.jsonl"
    assert f"cptra-imgtool: audit log: {audit}" in err, err
    assert audit.exists()


def test_audit_log_follows_the_state_store_and_can_be_refused_explicitly(tmp_path: Path) -> None:
    state = tmp_path / "st" / "lms.sqlite3"
    state.parent.mkdir()
    err = _startup_lines(_serve(tmp_path, "--state", str(state)), "Uvicorn running")
    assert f"audit log: {state.parent / 'server-audit.jsonl'}" in err, err
    err = _startup_lines(_serve(tmp_path, "--no-audit-log"), "Uvicorn running")
    assert "warning: no audit log (--no-audit-log)" in err and "audit log: " not in err, err
    p = _serve(tmp_path, "--no-audit-log", "--audit-log", str(tmp_path / "a.jsonl"))
    _, err = p.communicate(timeout=20)
    assert p.returncode == 2 and "exclude each other" in err and "Traceback" not in err


def test_wildcard_address_without_tls_is_warned_about(tmp_path: Path) -> None:
    err = _startup_lines(_serve(tmp_path, "--host", "0.0.0.0"), "Uvicorn running")
    assert "warning: listening on 0.0.0.0 (every interface) without TLS" in err, err
    err = _startup_lines(_serve(tmp_path), "Uvicorn running")
    assert "without TLS" not in err


# ------------------------------------------------------------------ F6: X-Forwarded-For
def test_x_forwarded_for_is_ignored_by_default(server: Server) -> None:
    with server.client("not-a-token") as c:
        r = c.get(
            "/pubkey", params={"machine": MACHINE}, headers={"X-Forwarded-For": "203.0.113.9"}
        )
    assert r.status_code == 401
    recs = [x for x in _records(server) if x.get("endpoint") == "pubkey" and x["result"] == 401]
    assert recs and recs[-1]["client"] == "127.0.0.1"
    assert "203.0.113.9" not in server.audit.read_text()


def test_x_forwarded_for_from_a_trusted_proxy(tmp_path: Path) -> None:
    s = start_server(tmp_path, with_cst=False, extra_args=("--forwarded-allow-ips", "127.0.0.1"))
    try:
        with s.client("not-a-token") as c:
            c.get("/pubkey", headers={"X-Forwarded-For": "203.0.113.9"})
        assert [x["client"] for x in _records(s) if x.get("endpoint") == "pubkey"] == [
            "203.0.113.9"
        ]
    finally:
        s.proc.terminate()
        s.proc.wait(timeout=10)


# ------------------------------------------------------------------ F7: floods in the audit log
def test_unauthenticated_flood_is_summarised_authenticated_requests_are_all_recorded(
    tmp_path: Path,
) -> None:
    s = start_server(tmp_path, with_cst=False)
    try:
        size0 = s.audit.stat().st_size
        with httpx.Client(base_url=s.url, timeout=30) as c:
            for i in range(300):
                c.get(f"/nothing-{i}")
                c.post(
                    "/sign/caliptra",
                    data={"machine": MACHINE},
                    headers={"Authorization": "Bearer x"},
                )
        with s.client() as c:
            for _ in range(30):
                r = c.post(
                    "/sign/caliptra",
                    data={"machine": MACHINE, "key": "own-man", "algo": "ecc", "digest": "11" * 48},
                )
                assert r.status_code == 200
    finally:
        s.proc.terminate()  # the last summary is written at shutdown
        s.proc.wait(timeout=10)
    recs = _records(s)
    anon = [x for x in recs if x.get("event") == "request" and x.get("token_id") is None]
    assert len(anon) == FailureSummary().burst  # the first ones in full
    summaries = [x for x in recs if x.get("event") == "unauthenticated_failures"]
    assert sum(x["not_recorded"] for x in summaries) == 600 - len(anon)
    assert summaries[-1]["top_clients"][0][0] == "127.0.0.1"
    assert {"other 404", "caliptra 401"} <= set(summaries[0]["by_endpoint_status"])
    authed = [x for x in recs if x.get("event") == "request" and x.get("token_id") == "ci-builder"]
    assert len(authed) == 30
    assert s.audit.stat().st_size - size0 < 64 * 1024


def test_failure_summary_intervals() -> None:
    f = FailureSummary(burst=2, interval=60)
    assert [f.admit("other", 404, "a") for _ in range(4)] == [True, True, False, False]
    assert f.due(now=f.start + 1) is None  # the interval is not over
    rec = f.due(now=f.start + 61)
    assert rec is not None and rec["not_recorded"] == 2 and rec["recorded"] == 2
    assert f.admit("other", 404, "a") is True  # a new interval, a new burst
    assert f.due(force=True) is None  # nothing was left out in it


# ------------------------------------------------------------------ F8: names in logs, archives
@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("a\nb", "a\\x0ab"),  # a control character and its escape written out
        ("é", "\\xe9"),
        ("\u20ac", "?"),
        ("\U0001f600", "\\U0001f600"),
        ("x" * 300, "x" * 299 + "y"),  # equal up to the cut
    ],
)
def test_log_escaping_is_injective(a: str, b: str) -> None:
    assert validate.log_safe(a) != validate.log_safe(b)
    for v in (a, b):
        out = validate.log_safe(v)
        assert out.isascii() and out.isprintable() and len(out) <= 200


@pytest.mark.parametrize("top", ["csf-input.txt", "csf-output.bin"])
def test_archive_with_a_job_file_name_is_refused(tmp_path: Path, top: str) -> None:
    """Bound into /job, such an entry would replace the checked CSF (or the output)."""
    archive = tmp_path / "imx-cst-keys.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in ((top, b"[Header]\n"), ("crts/x.pem", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    cache = KeyCache(tmp_path / "c", 1 << 20, 16)
    try:
        with pytest.raises(ImxError) as exc:
            cache.acquire(archive)
        assert exc.value.status == 500 and "reserved top-level name" in exc.value.detail
        assert not any((tmp_path / "c").iterdir())  # nothing of it left unpacked
    finally:
        cache.close()


def test_runner_refuses_a_key_tree_entry_that_shadows_a_job_file(tmp_path: Path) -> None:
    from imgtool.server.sandbox import Artifact, CstRunner

    for sandbox in (True, False):
        runner = CstRunner(sandbox=sandbox, cache_dir=tmp_path / f"rt{sandbox}", work_dir=tmp_path)
        art = Artifact.from_bytes("flash.bin", b"x", tmp_path)
        try:
            with pytest.raises(ImxError, match="shadows a job file"):
                runner.run_sync(Path("/bin/false"), b"csf", art, {"csf-input.txt": tmp_path}, 5)
        finally:
            art.close()
            runner.close()


# ------------------------------------------------------------------ smaller findings
def test_token_revoked_while_queued_is_refused_after_the_wait(tmp_path: Path) -> None:
    """One job slot held by a hanging cst; a request of a second token waits for it; the token
    is revoked meanwhile: when the slot frees, the request is refused (401), cst never runs."""
    from test_server import _imx_form

    s = start_server(tmp_path, max_jobs=1, with_cst=False, timeout=3)
    tokens = tmp_path / "tokens.json"
    late = _add_token(tokens, "late", "imx8mm-evk", "imx")
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as ex:

            def post(token: str | None, version: str) -> httpx.Response:
                with s.client(token) as c:
                    return c.post("/sign/imx", **_imx_form(version=version))  # type: ignore[arg-type]

            hang = ex.submit(post, None, FAKE_CST_HANG)
            time.sleep(0.5)
            queued = ex.submit(post, late, "8.8.8")
            time.sleep(0.5)
            from imgtool.server.auth import revoke_token

            revoke_token(tokens, "late")
            assert queued.result().status_code == 401
            assert hang.result().status_code == 500
        recs = [x for x in _records(s) if x.get("token_id") == "late"]
        assert [x["result"] for x in recs if x["event"] == "request"] == [401]
        assert not any(x["event"] == "sign" for x in recs)
    finally:
        s.proc.terminate()
        s.proc.wait(timeout=10)


def test_bench_server_uses_a_temporary_state_store() -> None:
    text = (REPO / "bench" / "server.py").read_text()
    i = text.index('os.environ["CPTRA_IMGTOOL_STATE"] = str(tmp')
    assert i < text.index("server = start_server(")  # before the server and the keygen


def test_pubkey_never_falls_back_to_the_sparse_root(server: Server) -> None:
    """A full-tree LMS key without its -pubk.pem and without a state file or tree cache beside
    it: /pubkey answers the root the LMS state store recorded for it, or 404 -- never the
    sparse demo tree's root (which no signature of a full-tree key verifies against)."""
    from imgtool.keys import lms

    stem = server.keys / "vnd-man-lms"
    saved = lms.load_public(Path(f"{stem}-pubk.pem"))
    sparse = lms.sparse_root(lms.load_private(Path(f"{stem}-prvk.pem")))
    assert sparse != saved.root
    moved = []
    for suffix in ("pubk.pem", "prvk.pem.state", "prvk.pem.tree"):
        p = Path(f"{stem}-{suffix}")
        if p.exists():
            p.rename(p.with_name(p.name + ".away"))
            moved.append(p)
    try:
        with server.client() as c:
            r = c.get("/pubkey", params={"machine": MACHINE, "key": "vnd-man", "algo": "lms"})
    finally:
        for p in moved:
            p.with_name(p.name + ".away").rename(p)
    assert sparse.hex() not in r.content.hex()
    if r.status_code == 200:
        assert lms.LmsPublicKey.from_bytes(r.content) == saved  # the store's record
    else:
        assert r.status_code == 404 and "not derived" in r.text, r.text
