"""Slow clients cannot take the server down: 1000+ connections trickling headers or bodies,
/healthz answers within 1 s throughout, the log stays small (no traceback per connection)."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from slowload import slow_load
from srvfixtures import MACHINE, Server, start_server

SOFT, HARD = resource.getrlimit(resource.RLIMIT_NOFILE)
needs_fds = pytest.mark.skipif(
    max(SOFT, HARD) < 2600, reason=f"needs ~2600 file descriptors (limit {SOFT}/{HARD})"
)


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[Server]:
    if SOFT < min(HARD, 8192):  # the test process holds the attacker's sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(HARD, 8192), HARD))
    s = start_server(
        tmp_path,
        with_cst=False,
        extra_args=("--header-timeout", "2", "--body-timeout", "2", "--max-per-client", "200"),
    )
    yield s
    s.proc.terminate()
    s.proc.wait(timeout=10)


def _log_size(s: Server) -> int:
    return (s.audit.parent / "server.log").stat().st_size + s.audit.stat().st_size


@needs_fds
def test_thousand_trickling_connections_from_many_addresses(slow_server: Server) -> None:
    """1200 connections from 8 addresses (within the per-client limit), half trickling headers,
    half bodies, reconnecting when closed: the deadlines close them, /healthz keeps answering."""
    s = slow_server
    attackers = tuple(f"127.0.0.{i}" for i in range(2, 10))
    r = slow_load(
        int(s.url.rsplit(":", 1)[1]),
        connections=1200,
        duration=10,
        attackers=attackers,
        mode="mixed",
        body_length=50_000,
        trickle_every=1.0,
        reconnect=True,
    )
    print(r.summary(), f"log+audit {_log_size(s)} B")
    assert r.opened >= 1200
    assert r.probes >= 20 and r.probe_failures == 0, r
    assert r.probe_max_s < 1.0, r
    assert r.closed_by_server >= 1000  # header and body deadlines (2 s + length/64 KiB/s)
    assert _log_size(s) < 1_000_000
    with s.client() as c:  # and it still signs
        resp = c.post(
            "/sign/caliptra",
            data={"machine": MACHINE, "key": "own-man", "algo": "ecc", "digest": "00" * 48},
        )
        assert resp.status_code == 200


@needs_fds
def test_one_client_cannot_take_every_connection(slow_server: Server) -> None:
    """1000 connections from one address: beyond the per-client limit they are reset at once;
    a probe from another address is never refused."""
    s = slow_server
    r = slow_load(
        int(s.url.rsplit(":", 1)[1]),
        connections=1000,
        duration=6,
        attackers=("127.0.0.2",),
        mode="headers",
        trickle_every=1.0,
    )
    print(r.summary())
    assert r.opened + r.refused >= 1000
    assert r.probes >= 10 and r.probe_failures == 0 and r.probe_max_s < 1.0, r
    log = (s.audit.parent / "server.log").read_text()
    assert "Traceback" not in log and len(log) < 100_000
    assert len(log.splitlines()) < 50  # counts, not a line per refused connection
    assert httpx.get(f"{s.url}/healthz", timeout=1).status_code == 200
