"""Per-token quota of LMS signatures: a durable sliding-window counter (SQLite, one row per
signature a token was granted), checked and charged in one ``BEGIN IMMEDIATE`` transaction
before any leaf is reserved, so a token cannot burn a key's one-time leaves. Several server
processes on one host may share the file."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

from ..errors import ServerError
from .auth import Quota

_SCHEMA = """
CREATE TABLE IF NOT EXISTS grants (token_id TEXT NOT NULL, t REAL NOT NULL);
CREATE INDEX IF NOT EXISTS grants_by_token ON grants (token_id, t);
"""


class QuotaExceeded(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__("LMS signature quota of this token is used up")
        self.retry_after = retry_after


class LmsQuota:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            self._db = sqlite3.connect(
                path, timeout=30, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ServerError(f"{path}: cannot open the LMS quota database ({exc})") from None

    def charge(self, token_id: str, quota: Quota, now: float | None = None) -> None:
        """Grant one LMS signature to ``token_id`` or raise QuotaExceeded (blocking)."""
        now = time.time() if now is None else now
        since = now - quota.period_s
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                (used, oldest) = db.execute(
                    "SELECT COUNT(*), MIN(t) FROM grants WHERE token_id = ? AND t > ?",
                    (token_id, since),
                ).fetchone()
                if used >= quota.count:
                    db.execute("ROLLBACK")
                    wait = int((oldest or now) + quota.period_s - now) + 1 if quota.count else 0
                    raise QuotaExceeded(max(1, wait) if quota.count else quota.period_s)
                db.execute("INSERT INTO grants (token_id, t) VALUES (?, ?)", (token_id, now))
                db.execute("DELETE FROM grants WHERE token_id = ? AND t <= ?", (token_id, since))
                db.execute("COMMIT")
            except sqlite3.Error:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def used(self, token_id: str, quota: Quota, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self._lock:
            (n,) = self._db.execute(
                "SELECT COUNT(*) FROM grants WHERE token_id = ? AND t > ?",
                (token_id, now - quota.period_s),
            ).fetchone()
        return int(n)
