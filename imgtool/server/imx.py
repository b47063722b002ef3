"""i.MX HAB4 signing with NXP's Code Signing Tool, as digsigserver's /sign/imx does it, minus
its weaknesses: safe key-archive unpacking, CSF paths confined to the work dir, a minimal
environment, a timeout, and no secrets on the command line."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import tarfile
from pathlib import Path, PurePosixPath

CSF_INPUT = "csf-input.txt"
CSF_OUTPUT = "csf-output.bin"
MIN_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C"}
_QUOTED = re.compile(r'"([^"]*)"')
_FILE_LINE = re.compile(r"^\s*File\s*=\s*(.+?)\s*$", re.IGNORECASE)


class ImxError(Exception):
    """Signing failed; ``status`` is the HTTP status to answer with, ``public`` what to say."""

    def __init__(self, status: int, public: str, detail: str = "") -> None:
        super().__init__(detail or public)
        self.status = status
        self.public = public
        self.detail = detail


def unpack_keys(archive: Path, dest: Path, max_bytes: int, max_files: int) -> None:
    """Unpack the key tarball: regular files and directories only, relative paths inside
    ``dest``, within a size and file-count quota. Never follows or creates links."""
    total = 0
    count = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for m in tar:
                count += 1
                if count > max_files:
                    raise ImxError(
                        500, "Signing error", f"{archive}: more than {max_files} members"
                    )
                name = PurePosixPath(m.name)
                if name.is_absolute() or ".." in name.parts or not name.parts:
                    raise ImxError(500, "Signing error", f"{archive}: unsafe member {m.name!r}")
                target = dest.joinpath(*[p for p in name.parts if p != "."])
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True, mode=0o700)
                    continue
                if not m.isfile():
                    raise ImxError(
                        500, "Signing error", f"{archive}: member {m.name!r} is a link or device"
                    )
                total += m.size
                if total > max_bytes:
                    raise ImxError(500, "Signing error", f"{archive}: more than {max_bytes} bytes")
                src = tar.extractfile(m)
                if src is None:
                    raise ImxError(500, "Signing error", f"{archive}: unreadable {m.name!r}")
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out, src:
                    while chunk := src.read(1 << 16):
                        out.write(chunk)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ImxError(500, "Signing error", f"{archive}: {type(exc).__name__}") from None


def csf_paths(csf: str) -> list[str]:
    """Every file name a CSF refers to: File = values and quoted names (Blocks lines)."""
    names = []
    for line in csf.splitlines():
        line = line.split("#", 1)[0]
        m = _FILE_LINE.match(line)
        if m:
            names.append(m.group(1).strip().strip('"'))
            continue
        names += _QUOTED.findall(line)
    return names


def check_csf(csf: str, workdir: Path) -> None:
    """Every path in the CSF must be relative, stay inside the work dir and not name a
    private key."""
    root = workdir.resolve()
    for name in csf_paths(csf):
        p = PurePosixPath(name)
        if not name or p.is_absolute() or ".." in p.parts:
            raise ImxError(400, f"CSF path not allowed: {name!r}")
        if p.parts[0] == "keys":
            raise ImxError(400, f"CSF may not name files under keys/: {name!r}")
        resolved = (workdir / p).resolve()
        if root not in resolved.parents and resolved != root:
            raise ImxError(400, f"CSF path leaves the work dir: {name!r}")


async def run_cst(cst: Path, workdir: Path, timeout: float) -> bytes:
    """Run ``cst -i csf-input.txt -o csf-output.bin`` in workdir; returns the binary CSF."""
    proc = await asyncio.create_subprocess_exec(
        str(cst),
        "-i",
        CSF_INPUT,
        "-o",
        CSF_OUTPUT,
        cwd=workdir,
        env=dict(MIN_ENV),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()
        raise ImxError(500, "Signing error", f"cst timed out after {timeout:g} s") from None
    result = workdir / CSF_OUTPUT
    if proc.returncode != 0 or not result.is_file():
        tail = (out + err).decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise ImxError(500, "Signing error", f"cst exited with {proc.returncode}: {tail[0][:200]}")
    return result.read_bytes()
