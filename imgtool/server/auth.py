"""Bearer tokens: stored as SHA-256 hashes, compared in constant time, scoped to machines and
endpoints, with an optional per-token LMS signature quota. The server re-reads the tokens file
whenever it changes (``token add`` / ``token revoke`` take effect without a restart)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ServerError
from ..fileio import atomic_write
from .validate import machine_ok, token_id_ok

ENDPOINTS = ("imx", "caliptra")
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_QUOTA_RE = re.compile(r"([0-9]{1,9})(?:/([0-9]{1,9})([smhd]?))?")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Quota:
    count: int  # LMS signatures allowed ...
    period_s: int  # ... per this many seconds (sliding window)

    def __str__(self) -> str:
        return f"{self.count}/{self.period_s}s"


def parse_quota(text: str, what: str = "--lms-quota") -> Quota:
    """``N`` (per day), ``N/PERIOD`` with PERIOD in seconds or e.g. ``1h``, ``7d``."""
    m = _QUOTA_RE.fullmatch(text.strip())
    if m is None:
        raise ServerError(f"{what} {text!r}: use N or N/PERIOD (e.g. 200/1d, 50/1h)")
    count = int(m.group(1))
    period = int(m.group(2)) * _UNITS[m.group(3)] if m.group(2) else 86400
    if period <= 0:
        raise ServerError(f"{what} {text!r}: the period must be positive")
    return Quota(count, period)


@dataclass(frozen=True)
class Token:
    id: str
    sha256: str
    machines: tuple[str, ...]
    endpoints: tuple[str, ...]
    lms_quota: Quota | None = None  # None: the server's default

    def allows(self, machine: str, endpoint: str) -> bool:
        return endpoint in self.endpoints and ("*" in self.machines or machine in self.machines)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "sha256": self.sha256,
            "machines": list(self.machines),
            "endpoints": list(self.endpoints),
        }
        if self.lms_quota is not None:
            d["lms_quota"] = [self.lms_quota.count, self.lms_quota.period_s]
        return d


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _token_from(t: Any, path: Path, i: int) -> Token:
    where = f"{path}: tokens[{i}]"
    if not isinstance(t, dict):
        raise ServerError(f"{where}: not an object")
    tid, sha = t.get("id"), t.get("sha256")
    machines, endpoints = t.get("machines"), t.get("endpoints")
    if not isinstance(tid, str) or not token_id_ok(tid):
        raise ServerError(f"{where}.id: not a valid token id")
    if not isinstance(sha, str) or not _SHA_RE.fullmatch(sha):
        raise ServerError(f"{where}.sha256: not a SHA-256 hex digest")
    if not isinstance(machines, list) or not all(
        isinstance(m, str) and (m == "*" or machine_ok(m)) for m in machines
    ):
        raise ServerError(f"{where}.machines: a list of machine names or '*'")
    if not isinstance(endpoints, list) or not all(e in ENDPOINTS for e in endpoints):
        raise ServerError(f"{where}.endpoints: a list of {', '.join(ENDPOINTS)}")
    quota = None
    q = t.get("lms_quota")
    if q is not None:
        if (
            not isinstance(q, list)
            or len(q) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in q)
            or q[0] < 0
            or q[1] <= 0
        ):
            raise ServerError(f"{where}.lms_quota: [count, period_seconds]")
        quota = Quota(q[0], q[1])
    return Token(tid, sha, tuple(machines), tuple(endpoints), quota)


def load_tokens(path: Path) -> list[Token]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ServerError(f"{path}: tokens file not found") from None
    except (OSError, ValueError) as exc:
        raise ServerError(f"{path}: not a valid tokens file ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tokens"), list):
        raise ServerError(f"{path}: not a valid tokens file (no 'tokens' list)")
    tokens = [_token_from(t, path, i) for i, t in enumerate(doc["tokens"])]
    ids = [t.id for t in tokens]
    if len(set(ids)) != len(ids):
        raise ServerError(f"{path}: duplicate token ids")
    return tokens


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of the tokens file between `token` commands."""
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _save(path: Path, tokens: list[Token]) -> None:
    doc = {"tokens": [t.to_json() for t in tokens]}
    atomic_write(path, (json.dumps(doc, indent=1) + "\n").encode(), mode=0o600)


def add_token(
    path: Path,
    token_id: str,
    machines: list[str],
    endpoints: list[str],
    lms_quota: Quota | None = None,
) -> str:
    """Create a token, store only its hash, return the token (shown once)."""
    if not token_id_ok(token_id):
        raise ServerError(f"--id {token_id!r}: use letters, digits, '.', '_', '-'")
    for m in machines:
        if m != "*" and not machine_ok(m):
            raise ServerError(f"--machines: invalid machine name {m!r}")
    for ep in endpoints:
        if ep not in ENDPOINTS:
            raise ServerError(f"--endpoints: unknown endpoint {ep!r} (imx, caliptra)")
    with _locked(path):
        tokens = load_tokens(path) if path.exists() else []
        if any(t.id == token_id for t in tokens):
            raise ServerError(f"{path}: a token with id {token_id!r} exists already")
        secret = secrets.token_urlsafe(32)
        tokens.append(Token(token_id, _hash(secret), tuple(machines), tuple(endpoints), lms_quota))
        _save(path, tokens)
    return secret


def revoke_token(path: Path, token_id: str) -> None:
    with _locked(path):
        tokens = load_tokens(path)
        kept = [t for t in tokens if t.id != token_id]
        if len(kept) == len(tokens):
            raise ServerError(f"{path}: no token with id {token_id!r}")
        _save(path, kept)


def authenticate(tokens: list[Token], header: str | None) -> Token | None:
    """The token an ``Authorization: Bearer ...`` header presents, or None."""
    if not header or not header.startswith("Bearer "):
        return None
    presented = _hash(header[len("Bearer ") :].strip())
    found = None
    for t in tokens:  # look at every entry: the time does not depend on which one matches
        if hmac.compare_digest(presented, t.sha256):
            found = t
    return found


class TokenStore:
    """The server's view of the tokens file, re-read when it changes (checked on every request:
    one stat). A file that becomes unreadable or invalid fails closed: no token is accepted
    until it is fixed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._sig: tuple[int, ...] | None = None
        self.tokens: list[Token] = load_tokens(path)  # a bad file at start-up: refuse to start
        self._sig = self._stat()
        self.error: str | None = None

    def _stat(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def current(self) -> list[Token] | None:
        """The tokens now in force; None when the file is broken (fail closed)."""
        sig = self._stat()
        if sig != self._sig:
            with self._lock:
                if sig != self._sig:
                    try:
                        self.tokens = load_tokens(self.path)
                        self.error = None
                    except ServerError as exc:
                        self.tokens = []
                        self.error = str(exc)
                    self._sig = sig
        return None if self.error else self.tokens
