"""Strict patterns and allow-lists for every client-supplied name."""

from __future__ import annotations

import re

MACHINE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
CST_VERSION_RE = re.compile(r"^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$")
UPLOAD_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DIGEST_RE = re.compile(r"^[0-9a-fA-F]{96}$")
SOCTYPES = ("mx8m",)
BACKENDS = ("ssl",)
CALIPTRA_KEYS = ("vnd-fw", "vnd-man", "own-fw", "own-man")
CALIPTRA_ALGOS = ("ecc", "lms")
RESERVED_NAMES = ("csf-input.txt", "csf-output.bin", "crts", "keys")


def machine_ok(value: str) -> bool:
    return bool(MACHINE_RE.match(value)) and ".." not in value


def upload_name_ok(value: str) -> bool:
    return bool(UPLOAD_NAME_RE.match(value)) and ".." not in value and value not in RESERVED_NAMES
