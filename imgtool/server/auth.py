"""Bearer tokens: stored as SHA-256 hashes, compared in constant time, scoped to machines and
endpoints."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..errors import ServerError
from ..fileio import atomic_write

ENDPOINTS = ("imx", "caliptra")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Token:
    id: str
    sha256: str
    machines: tuple[str, ...]
    endpoints: tuple[str, ...]

    def allows(self, machine: str, endpoint: str) -> bool:
        return endpoint in self.endpoints and ("*" in self.machines or machine in self.machines)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_tokens(path: Path) -> list[Token]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return [
            Token(t["id"], t["sha256"], tuple(t["machines"]), tuple(t["endpoints"]))
            for t in doc["tokens"]
        ]
    except FileNotFoundError:
        raise ServerError(f"{path}: tokens file not found") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ServerError(f"{path}: not a valid tokens file ({type(exc).__name__})") from None


def add_token(path: Path, token_id: str, machines: list[str], endpoints: list[str]) -> str:
    """Create a token, store only its hash, return the token (shown once)."""
    from .validate import MACHINE_RE

    if not _ID_RE.match(token_id):
        raise ServerError(f"--id {token_id!r}: use letters, digits, '.', '_', '-'")
    for m in machines:
        if m != "*" and not MACHINE_RE.match(m):
            raise ServerError(f"--machines: invalid machine name {m!r}")
    for ep in endpoints:
        if ep not in ENDPOINTS:
            raise ServerError(f"--endpoints: unknown endpoint {ep!r} (imx, caliptra)")
    tokens = load_tokens(path) if path.exists() else []
    if any(t.id == token_id for t in tokens):
        raise ServerError(f"{path}: a token with id {token_id!r} exists already")
    secret = secrets.token_urlsafe(32)
    tokens.append(Token(token_id, _hash(secret), tuple(machines), tuple(endpoints)))
    doc = {
        "tokens": [
            {
                "id": t.id,
                "sha256": t.sha256,
                "machines": list(t.machines),
                "endpoints": list(t.endpoints),
            }
            for t in tokens
        ]
    }
    atomic_write(path, (json.dumps(doc, indent=1) + "\n").encode(), mode=0o600)
    return secret


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
