"""i.MX HAB4 signing with NXP's Code Signing Tool, as digsigserver's /sign/imx does it, minus
its weaknesses: the key archive is unpacked safely (regular files and directories only, inside
quotas), the CSF is parsed as ``cst`` parses it and held to an allow-list (:mod:`.csf`), and
``cst`` runs in a sandbox with a minimal environment and a timeout (:mod:`.sandbox`)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path, PurePosixPath
from typing import IO

CSF_INPUT = "csf-input.txt"
CSF_OUTPUT = "csf-output.bin"
JOB_FILES = (CSF_INPUT, CSF_OUTPUT)  # names in /job no archive entry or artifact may take
MIN_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C"}


class ImxError(Exception):
    """Signing failed; ``status`` is the HTTP status to answer with, ``public`` what to say."""

    def __init__(self, status: int, public: str, detail: str = "") -> None:
        super().__init__(detail or public)
        self.status = status
        self.public = public
        self.detail = detail


def unpack_keys(
    archive: Path | IO[bytes], dest: Path, max_bytes: int, max_files: int, name: str = ""
) -> set[str]:
    """Unpack the key tarball: regular files and directories only, relative paths inside
    ``dest``, within a size and file-count quota. Never follows or creates links. Returns the
    relative names of the regular files."""
    label = name or str(archive)
    total = 0
    count = 0
    files: set[str] = set()
    try:
        tar = (
            tarfile.open(archive, "r:*")
            if isinstance(archive, Path)
            else tarfile.open(fileobj=archive, mode="r:*")
        )
        with tar:
            for m in tar:
                count += 1
                if count > max_files:
                    raise ImxError(500, "Signing error", f"{label}: more than {max_files} members")
                pname = PurePosixPath(m.name)
                if pname.is_absolute() or ".." in pname.parts or not pname.parts:
                    raise ImxError(500, "Signing error", f"{label}: unsafe member {m.name!r}")
                parts = [p for p in pname.parts if p != "."]
                if not parts:
                    continue
                target = dest.joinpath(*parts)
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True, mode=0o700)
                    continue
                if not m.isfile():
                    raise ImxError(
                        500, "Signing error", f"{label}: member {m.name!r} is a link or device"
                    )
                total += m.size
                if total > max_bytes:
                    raise ImxError(500, "Signing error", f"{label}: more than {max_bytes} bytes")
                src = tar.extractfile(m)
                if src is None:
                    raise ImxError(500, "Signing error", f"{label}: unreadable {m.name!r}")
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out, src:
                    while chunk := src.read(1 << 16):
                        out.write(chunk)
                files.add("/".join(parts))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ImxError(500, "Signing error", f"{label}: {type(exc).__name__}") from None
    return files


HAB_TAG_CSF = 0xD4


def check_csf_binary(data: bytes) -> None:
    """What cst wrote must be a HAB4 CSF before any of it is returned: tag 0xD4, version 4.x,
    a header length within the file, and commands (tag, length, parameter) that fill that
    length exactly (the certificates and signatures the commands point at follow it).
    Raises ImxError (500: this is the server's tool misbehaving, not the client's input)."""
    if len(data) < 8 or data[0] != HAB_TAG_CSF or data[3] >> 4 != 4:
        raise ImxError(500, "Signing error", "cst output is not a HAB4 CSF (tag 0xD4, v4.x)")
    length = int.from_bytes(data[1:3], "big")
    if not 8 <= length <= len(data):
        raise ImxError(
            500, "Signing error", f"cst output: CSF length {length} does not fit {len(data)} B"
        )
    off = 4
    while off < length:
        cmd = int.from_bytes(data[off + 1 : off + 3], "big")
        if cmd < 4 or off + cmd > length:
            raise ImxError(500, "Signing error", f"cst output: bad command at offset {off}")
        off += cmd
