"""Strict patterns and allow-lists for every client-supplied name. Every pattern is a full
match (``re.fullmatch``): a trailing newline or any other control character never passes."""

from __future__ import annotations

import hashlib
import re

MACHINE_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
TOKEN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CST_VERSION_RE = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")
UPLOAD_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"[0-9a-fA-F]{96}")
SOCTYPES = ("mx8m",)
BACKENDS = ("ssl",)
CALIPTRA_KEYS = ("vnd-fw", "vnd-man", "own-fw", "own-man")
CALIPTRA_ALGOS = ("ecc", "lms", "mldsa")
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


_ESCAPE = re.compile(r"[^\x20-\x5b\x5d-\x7e]")  # not printable ASCII, or a backslash


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" if c < 0x10000 else f"\\U{c:08x}"


def log_safe(value: str, limit: int = 200) -> str:
    """``value`` fit for one log line, injectively: control and non-ASCII characters and the
    backslash itself are escaped (``\\xHH``, ``\\uHHHH``, ``\\UHHHHHHHH``), so two different
    values never give the same text. A longer result is cut and marked with ``\\...`` (which
    no escaped text contains) and a hash of the whole value."""
    out = _ESCAPE.sub(_escape, value)
    if len(out) <= limit:
        return out
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    tail = f"\\...[{len(value)} chars, sha256 {digest}]"
    return out[: max(0, limit - len(tail))] + tail
