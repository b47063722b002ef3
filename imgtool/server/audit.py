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
