"""The audit log fails closed: no record, no signature, no LMS leaf spent. Every request is
recorded, including 404/405 and failed health probes; /pubkey is its own endpoint."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from srvfixtures import MACHINE, Server, start_server

from imgtool.keys import lms

DIGEST = bytes(range(48))


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Server]:
    s = start_server(tmp_path, with_cst=False)
    yield s
    s.proc.terminate()
    s.proc.wait(timeout=10)


def _sign(s: Server, algo: str) -> httpx.Response:
    with s.client() as c:
        return c.post(
            "/sign/caliptra",
            data={"machine": MACHINE, "key": "own-man", "algo": algo, "digest": DIGEST.hex()},
        )


def _records(s: Server) -> list[dict[str, object]]:
    return [json.loads(x) for x in s.audit.read_text().splitlines()]


def test_failing_audit_write_means_5xx_and_no_leaf_spent(own_server: Server) -> None:
    s = own_server
    r = _sign(s, "lms")
    assert r.status_code == 200
    q0 = lms.sig_q(r.content)
    saved = s.audit.with_name("audit.saved")
    s.audit.rename(saved)
    os.symlink("/dev/full", s.audit)  # every write now fails (ENOSPC)
    try:
        for algo in ("lms", "ecc", "lms"):
            r = _sign(s, algo)
            assert 500 <= r.status_code < 600, r.status_code
            assert len(r.content) < 200 and "audit" in r.text
        r = httpx.get(f"{s.url}/healthz")
        assert r.status_code == 503 and "audit log" in r.text
    finally:
        s.audit.unlink()
        saved.rename(s.audit)
    r = _sign(s, "lms")
    assert r.status_code == 200
    assert lms.sig_q(r.content) == q0 + 1  # the refused requests reserved no leaf
    log = (s.audit.parent / "server.log").read_text()
    assert "audit log unavailable" in log and "Traceback" not in log


def test_every_request_is_recorded(own_server: Server) -> None:
    s = own_server
    with s.client() as c:
        assert c.get("/no/such/path").status_code == 404
        assert c.get("/sign/imx").status_code == 405
        assert c.delete("/pubkey").status_code == 405
        assert (
            c.get(
                "/pubkey", params={"machine": MACHINE, "key": "own-man", "algo": "ecc"}
            ).status_code
            == 200
        )
    assert httpx.get(f"{s.url}/healthz").status_code == 200
    recs = [r for r in _records(s) if r["event"] == "request"]
    by = [(r["endpoint"], r["method"], r["result"]) for r in recs]
    assert ("other", "GET", 404) in by
    assert ("imx", "GET", 405) in by
    assert ("pubkey", "DELETE", 405) in by
    assert ("pubkey", "GET", 200) in by
    assert not any(e == "healthz" for e, _, _ in by)  # healthy probes are not recorded
    other = next(r for r in recs if r["endpoint"] == "other")
    assert other["path"] == "/no/such/path"
    # a failing health probe is recorded
    s.root.rename(s.root.with_name("keystore.away"))
    try:
        r = httpx.get(f"{s.url}/healthz")
        assert r.status_code == 503 and "key store" in r.text
    finally:
        s.root.with_name("keystore.away").rename(s.root)
    assert httpx.get(f"{s.url}/healthz").status_code == 200
    hz = [r for r in _records(s) if r["endpoint"] == "healthz"]
    assert [r["result"] for r in hz] == [503]
