"""Running NXP's ``cst`` so that it sees nothing but its own job: a bubblewrap (``bwrap``)
sandbox with fresh mount, pid, network, IPC, UTS and user namespaces, no capabilities, an empty
environment, and read-only binds of exactly the files ``cst`` needs (the program, its ELF
libraries and loader, and for a wrapper script its interpreter and the files it names). The job
dir's inputs (the CSF and the artifact) and the machine's unpacked key archive are bound read-only
into a private ``/job`` (the cwd); the job dir itself, at ``/out``, is the only writable place
(``cst -o /out/csf-output.bin``). No /proc, no /dev, no /etc, no /tmp, no key store, no other
job.

Where namespaces are not available the runner can still run ``cst`` directly in the job dir
(only when the operator says ``--allow-unsandboxed-cst``); the CSF checks in :mod:`.csf` are then
the only barrier.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from .imx import CSF_INPUT, CSF_OUTPUT, MIN_ENV, ImxError

JOB = "/job"
OUT = "/out"
SANDBOX_UID = 65534
_ABS_PATH = re.compile(r"(?<![A-Za-z0-9._-])(/[A-Za-z0-9._+/-]+)")
_LDD_LINE = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")


class SandboxUnavailable(Exception):
    """bwrap is missing or cannot create namespaces here; ``str()`` says why."""


def _ldd(path: Path) -> list[Path]:
    """The shared objects (and loader) an ELF file loads. ``ldd`` runs only on the operator's
    own ``cst`` installation, never on anything a client sent."""
    try:
        r = subprocess.run(
            ["ldd", str(path)], capture_output=True, text=True, timeout=10, env=dict(MIN_ENV)
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if r.returncode != 0:  # "not a dynamic executable": static, nothing to add
        return []
    return [Path(m.group(1)) for m in map(_LDD_LINE.search, r.stdout.splitlines()) if m]


def dependencies(program: Path, protected: Sequence[Path] = ()) -> list[Path]:
    """Every file ``program`` needs to run: itself, its ELF dependencies, and for a ``#!`` script
    its interpreter plus the programs and libraries (ELF files or scripts) its text names by
    absolute path (the usual wrapper that sets LD_PRELOAD and execs the real binary),
    recursively; data files a script names are not included. Files under ``protected``
    (the key store, the job root, the server's own files) are never included."""
    seen: dict[Path, None] = {}
    todo: list[Path] = [program]
    named: set[Path] = set()  # named in a script: bound only if a program or library
    prot = [p.resolve() for p in protected]
    while todo:
        p = todo.pop()
        if p in seen or not p.is_absolute():
            continue
        try:
            real = p.resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if not real.is_file() or any(real == q or q in real.parents for q in prot):
            continue
        try:
            with open(real, "rb") as fh:
                head = fh.read(4)
                if head[:2] == b"#!":
                    text = (head + fh.read(64 * 1024)).decode("utf-8", "replace")
                    found = [Path(m) for m in _ABS_PATH.findall(text)]
                    named.update(found)
                    todo += found
                elif head == b"\x7fELF":
                    todo += _ldd(real)
                elif p in named:
                    continue  # a data file a wrapper mentions (/etc/...): never bound
        except OSError:
            continue
        seen[p] = None
    return list(seen)


def bwrap_args(
    bwrap: str,
    deps: Sequence[Path],
    job: Path,
    ro_in_job: Mapping[str, Path],
    inputs: Sequence[str] = (),
) -> list[str]:
    """The bwrap command line (without the program to run). Inside: ``/job`` (the cwd) is a
    private tmpfs holding read-only binds of the job's ``inputs`` (files of ``job``) and of
    ``ro_in_job``; ``/out`` is the job dir itself, the one writable place."""
    args = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--as-pid-1",  # cst is the namespace's init: one process fewer to start
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--clearenv",
    ]
    for k, v in MIN_ENV.items():
        args += ["--setenv", k, v]
    for d in deps:
        args += ["--ro-bind", str(d), str(d)]
    args += ["--tmpfs", JOB]  # no /dev at all: cst needs none (OpenSSL uses getrandom())
    for name in inputs:
        args += ["--ro-bind", str(job / name), f"{JOB}/{name}"]
    for name, src in ro_in_job.items():
        args += ["--ro-bind", str(src), f"{JOB}/{name}"]
    args += ["--bind", str(job), OUT, "--chdir", JOB, "--"]
    return args


class CstRunner:
    """Runs ``cst -i csf-input.txt -o csf-output.bin`` for one job, sandboxed or (if allowed and
    needed) not."""

    def __init__(
        self,
        *,
        sandbox: bool,
        protected: Sequence[Path] = (),
        bwrap: str | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.protected = list(protected)
        self.bwrap = bwrap or shutil.which("bwrap") or "/usr/bin/bwrap"
        self._deps: dict[Path, tuple[int, list[Path]]] = {}

    @staticmethod
    def probe(bwrap: str | None = None) -> str | None:
        """None if bwrap can build a sandbox here, else why not (one line)."""
        exe = bwrap or shutil.which("bwrap")
        if exe is None:
            return "bwrap is not installed (Debian package bubblewrap)"
        true = shutil.which("true") or "/bin/true"
        deps = dependencies(Path(true))
        try:
            with tempfile.TemporaryDirectory(prefix="cptra-bwrap-probe-") as d:
                r = subprocess.run(
                    [*bwrap_args(exe, deps, Path(d), {}), true],
                    capture_output=True,
                    text=True,
                    timeout=10,
                )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bwrap cannot run: {type(exc).__name__}"
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["exit " + str(r.returncode)])[-1]
            return f"bwrap cannot create namespaces here: {last[:200]}"
        return None

    def deps(self, cst: Path) -> list[Path]:
        mtime = cst.stat().st_mtime_ns
        cached = self._deps.get(cst)
        if cached is None or cached[0] != mtime:
            cached = (mtime, dependencies(cst, self.protected))
            self._deps[cst] = cached
        return cached[1]

    def command(self, cst: Path, job: Path, ro_in_job: Mapping[str, Path]) -> list[str]:
        if not self.sandbox:
            return [str(cst), "-i", CSF_INPUT, "-o", CSF_OUTPUT]
        inputs = sorted(p.name for p in job.iterdir() if p.is_file() and not p.is_symlink())
        return bwrap_args(self.bwrap, self.deps(cst), job, ro_in_job, inputs) + [
            str(cst),
            "-i",
            CSF_INPUT,
            "-o",
            f"{OUT}/{CSF_OUTPUT}",
        ]

    async def run(
        self, cst: Path, job: Path, ro_in_job: Mapping[str, Path], timeout: float
    ) -> bytes:
        """Run cst for the job in ``job`` (its files are the inputs); returns the binary CSF.
        ``ro_in_job`` maps names beside the inputs to read-only sources (the unpacked key
        archive's top-level entries); unsandboxed, those must already be copies inside ``job``."""
        argv = self.command(cst, job, ro_in_job)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=job,
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
        result = job / CSF_OUTPUT
        if proc.returncode != 0 or not result.is_file() or result.is_symlink():
            tail = (out + err).decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise ImxError(
                500, "Signing error", f"cst exited with {proc.returncode}: {tail[0][:200]}"
            )
        fd = os.open(result, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fh:
            return fh.read(16 * 1024 * 1024)
