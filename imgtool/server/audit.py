"""Append-only JSON-lines audit log: one record per request, plus an "about to sign" record
written before every signature is made. No secrets. A record that cannot be written raises
:class:`AuditError`: the caller fails closed (no record, no signature)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any


class AuditError(Exception):
    """The audit record could not be written."""


class AuditLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.last_error: str | None = None  # the last write's failure (None once one succeeds)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._write(b"")  # unwritable at start-up: refuse to start (caller maps it)

    def record(self, **fields: Any) -> None:
        """Append one record (written to the file before this returns). Raises AuditError."""
        if self.path is None:
            return
        now = time.time()
        stamp = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        )
        rec = {"time": stamp, **fields}
        self._write((json.dumps(rec, sort_keys=True, ensure_ascii=True) + "\n").encode())

    def _write(self, line: bytes) -> None:
        assert self.path is not None
        with self._lock:
            try:
                fd = os.open(
                    self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
                )
                try:
                    if line and os.write(fd, line) != len(line):
                        raise OSError("short write")
                finally:
                    os.close(fd)
            except OSError as exc:
                self.last_error = f"{self.path}: {exc.strerror or exc}"
                raise AuditError(self.last_error) from None
            self.last_error = None


class FailureSummary:
    """Bounds what unauthenticated failures (4xx without a valid token) add to the audit log:
    the first ``burst`` of each ``interval`` s are recorded in full, the rest only counted, and
    one summary record per interval gives the counts (by endpoint and status, and the busiest
    client addresses). A flood therefore adds at most ``burst + 1`` records per interval, while
    every authenticated request is still recorded one by one."""

    MAX_CLIENTS = 1024  # distinct addresses counted per interval (the rest: "other")

    def __init__(self, burst: int = 20, interval: float = 60.0) -> None:
        self.burst = burst
        self.interval = interval
        self._lock = threading.Lock()
        self._reset(time.time())

    def _reset(self, now: float) -> None:
        self.start = now
        self.recorded = 0
        self.counted = 0
        self.by_kind: dict[str, int] = {}
        self.clients: dict[str, int] = {}

    def admit(self, endpoint: str, status: int, client: str) -> bool:
        """True: record this failure in full; False: it was counted for the summary."""
        with self._lock:
            if self.recorded < self.burst:
                self.recorded += 1
                return True
            self.counted += 1
            kind = f"{endpoint} {status}"
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
            key = (
                client
                if client in self.clients or len(self.clients) < self.MAX_CLIENTS
                else "other"
            )
            self.clients[key] = self.clients.get(key, 0) + 1
            return False

    def due(self, now: float | None = None, force: bool = False) -> dict[str, Any] | None:
        """The summary record of the interval that has ended (None if nothing was left out);
        starts the next interval."""
        now = time.time() if now is None else now
        with self._lock:
            if not force and now - self.start < self.interval:
                return None
            rec: dict[str, Any] | None = None
            if self.counted:
                top = sorted(self.clients.items(), key=lambda kv: -kv[1])[:10]
                rec = {
                    "event": "unauthenticated_failures",
                    "interval_start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.start)),
                    "interval_s": round(now - self.start, 1),
                    "recorded": self.recorded,
                    "not_recorded": self.counted,
                    "by_endpoint_status": dict(sorted(self.by_kind.items())),
                    "top_clients": [[c, n] for c, n in top],
                }
            self._reset(now)
            return rec
