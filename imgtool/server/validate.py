"""Strict patterns and allow-lists for every client-supplied name. Every pattern is a full
match (``re.fullmatch``): a trailing newline or any other control character never passes."""

from __future__ import annotations

import re

MACHINE_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
TOKEN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CST_VERSION_RE = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")
UPLOAD_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"[0-9a-fA-F]{96}")
SOCTYPES = ("mx8m",)
BACKENDS = ("ssl",)
CALIPTRA_KEYS = ("vnd-fw", "vnd-man", "own-fw", "own-man")
CALIPTRA_ALGOS = ("ecc", "lms")
RESERVED_NAMES = ("csf-input.txt", "csf-output.bin", "crts", "keys")
_UNSAFE = re.compile(r"[^\x20-\x7e]")


def machine_ok(value: str) -> bool:
    return MACHINE_RE.fullmatch(value) is not None and ".." not in value


def token_id_ok(value: str) -> bool:
    return TOKEN_ID_RE.fullmatch(value) is not None


def upload_name_ok(value: str) -> bool:
    return (
        UPLOAD_NAME_RE.fullmatch(value) is not None
        and ".." not in value
        and value not in RESERVED_NAMES
    )


def printable(value: str) -> bool:
    """True when ``value`` has only printable ASCII (no control characters at all)."""
    return _UNSAFE.search(value) is None


def log_safe(value: str, limit: int = 200) -> str:
    """``value`` fit for one log line: control and non-ASCII characters escaped, truncated."""
    out = _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else "?", value)
    return out if len(out) <= limit else out[: limit - 3] + "..."
