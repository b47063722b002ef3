"""The HTTP front end of ``serve``: uvicorn's h11 protocol with the guards it lacks.

uvicorn, hypercorn and granian were tried against the same slow-client load
(``bench/asgi_slowclients.py``: 1000 connections trickling a byte every 2 s): uvicorn has no
header or body read timeout (every slow connection stays open, forever), and its
``limit_concurrency`` answers the health probe with 503 too; hypercorn's ``read_timeout`` closes
header tricklers but not body tricklers; granian's header timeout works but it has no body
timeout and its backpressure setting starved the probe. None limits connections per client.
So the server keeps uvicorn (pure Python, already a dependency) and adds, per connection:

* a header deadline: the request line and headers must be complete within ``header_timeout`` s
  of the connection opening or of the previous response (keep-alive), however slowly they trickle;
* a body deadline: ``body_timeout`` s plus the announced length at ``min_body_rate`` bytes/s;
* a connection limit per client address and one in total (kept below the process's file
  descriptor limit, which is raised to its hard maximum): connections beyond it are reset at once,
  so one client cannot take all descriptors and /healthz keeps answering other clients;
* a send deadline: a client that stops reading (the response waits in a full socket buffer)
  is dropped after ``send_timeout`` s, however the response was started;
* after a response to a request whose body was not read (an error answered before the upload),
  the connection is closed (``Connection: close``), not kept for the body's deadline;
* keep-alive: at most ``keep_alive`` s idle and ``max_requests`` requests per connection;
* no protocol switch: websocket upgrades are not offered (``ws="none"``, and an upgrade header is
  answered as plain HTTP), so every connection is counted and released by this protocol;
* ``X-Forwarded-For`` is ignored unless ``forwarded_allow_ips`` names the proxies to trust
  (otherwise any client could choose the address its limits and audit records are kept under);
* no log line per refused or timed-out connection: counts are logged at most once a minute, and
  uvicorn's own per-request warnings are rate-limited.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("imgtool.server")


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 9999
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    min_body_rate: int = 64 * 1024  # bytes/s allowed on top of body_timeout
    max_connections: int = 4096
    max_per_client: int = 128
    keep_alive: float = 5.0
    send_timeout: float = 30.0  # a response that cannot be written for this long: dropped
    max_requests: int = 1000  # per connection (keep-alive)
    forwarded_allow_ips: str | None = None  # proxies whose X-Forwarded-For is trusted
    max_body: int = 64 * 1024 * 1024
    log_level: str = "info"
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None


class _Stats:
    """Shared counters of one server process (the event loop is single-threaded)."""

    def __init__(self) -> None:
        self.per_client: Counter[str] = Counter()
        self.total = 0
        self.refused = 0
        self.timed_out = 0
        self.last_report = time.monotonic()

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if (self.refused or self.timed_out) and (force or now - self.last_report >= 60):
            log.warning(
                "connection guard: %d connections refused over the limits, %d closed for "
                "reading too slowly (last %.0f s)",
                self.refused,
                self.timed_out,
                now - self.last_report,
            )
            self.refused = self.timed_out = 0
            self.last_report = now


def guarded_protocol(opts: ServeOptions) -> type[H11Protocol]:
    """An H11Protocol subclass bound to ``opts`` (uvicorn instantiates it per connection)."""
    stats = _Stats()
    limit = effective_connection_limit(opts.max_connections)

    class GuardedH11Protocol(H11Protocol):
        _peer = ""
        _admitted = False
        _timer: asyncio.TimerHandle | None = None
        _send_timer: asyncio.TimerHandle | None = None
        _phase = ""
        _requests = 0
        guard_stats = stats  # for tests

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            peer = transport.get_extra_info("peername")
            self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
            if stats.total >= limit or stats.per_client[self._peer] >= opts.max_per_client:
                stats.refused += 1
                stats.report()
                transport.abort()  # type: ignore[attr-defined]
                return
            self._admitted = True
            stats.total += 1
            stats.per_client[self._peer] += 1
            super().connection_made(transport)  # type: ignore[arg-type]
            self._update()

        def connection_lost(self, exc: Exception | None) -> None:
            if not self._admitted:
                return
            self._admitted = False
            stats.total -= 1
            stats.per_client[self._peer] -= 1
            if stats.per_client[self._peer] <= 0:
                del stats.per_client[self._peer]
            self._cancel()
            self._cancel_send()
            super().connection_lost(exc)

        def _should_upgrade(self) -> bool:
            return False  # never hand the transport to another protocol (its slot would leak)

        def handle_websocket_upgrade(self, event: h11.Request) -> None:  # pragma: no cover
            self.send_400_response("Upgrades are not supported.")

        def data_received(self, data: bytes) -> None:
            if not self._admitted:
                return
            super().data_received(data)
            self._update()

        def on_response_complete(self) -> None:
            self._requests += 1
            if self.transport is not None and not self.transport.is_closing():
                # a body the app did not read (an early error), or enough requests: close
                # rather than wait for the rest of the body or the next request
                if self.conn.their_state is not h11.DONE or self._requests >= opts.max_requests:
                    self.transport.close()
            super().on_response_complete()
            if self.transport is not None and self.transport.is_closing():
                self._cancel()
                if self.transport.get_write_buffer_size():
                    self._arm_send()  # the response still has to drain: bounded
                return
            self._update()

        def pause_writing(self) -> None:
            super().pause_writing()
            self._arm_send()

        def resume_writing(self) -> None:
            super().resume_writing()
            self._cancel_send()

        def _arm_send(self) -> None:
            if self._send_timer is None:
                self._send_timer = self.loop.call_later(opts.send_timeout, self._expired)

        def _cancel_send(self) -> None:
            if self._send_timer is not None:
                self._send_timer.cancel()
                self._send_timer = None

        # -- deadlines
        def _cancel(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _update(self) -> None:
            state = self.conn.their_state
            if state is h11.IDLE:
                phase, delay = "headers", opts.header_timeout
            elif state is h11.SEND_BODY:
                phase, delay = "body", opts.body_timeout + self._announced() / opts.min_body_rate
            else:
                phase, delay = "app", 0.0
            if phase == self._phase:
                return
            self._phase = phase
            self._cancel()
            if delay:
                self._timer = self.loop.call_later(delay, self._expired)

        def _announced(self) -> int:
            for k, v in self.headers or ():
                if k == b"content-length" and v.isdigit():
                    return min(int(v), opts.max_body)
            return opts.max_body

        def _expired(self) -> None:
            self._timer = None
            self._send_timer = None
            if self.transport is None or self.transport.is_closing():
                return
            stats.timed_out += 1
            stats.report()
            self.transport.abort()  # in the body phase the app sees a disconnect

    return GuardedH11Protocol


def effective_connection_limit(wanted: int) -> int:
    """``wanted``, but below the file-descriptor limit (raised to its hard maximum)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        new = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    return max(16, min(wanted, soft - 128))


class _RateLimit(logging.Filter):
    """At most ``burst`` records per ``window`` s from a logger; the rest are counted."""

    def __init__(self, burst: int = 20, window: float = 60.0) -> None:
        super().__init__()
        self.burst, self.window = burst, window
        self.start, self.count, self.dropped = time.monotonic(), 0, 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self.start >= self.window:
            if self.dropped:
                record.msg = f"{record.getMessage()} ({self.dropped} similar messages dropped)"
                record.args = ()
            self.start, self.count, self.dropped = now, 0, 0
        self.count += 1
        if self.count > self.burst:
            self.dropped += 1
            return False
        return True


def run(app: Any, opts: ServeOptions) -> None:
    """Serve ``app`` until interrupted."""
    import uvicorn

    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(_RateLimit())
    uvicorn.run(
        app,
        host=opts.host,
        port=opts.port,
        http=guarded_protocol(opts),
        ws="none",
        proxy_headers=opts.forwarded_allow_ips is not None,
        forwarded_allow_ips=opts.forwarded_allow_ips or "",
        log_level=opts.log_level,
        ssl_certfile=opts.ssl_certfile,
        ssl_keyfile=opts.ssl_keyfile,
        server_header=False,
        access_log=False,
        timeout_keep_alive=int(opts.keep_alive),
        h11_max_incomplete_event_size=16 * 1024,
        backlog=2048,
    )
