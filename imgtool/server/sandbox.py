"""Running NXP's ``cst`` so that it sees nothing but its own job: a bubblewrap (``bwrap``)
sandbox with fresh mount, pid, network, IPC, UTS and user namespaces, no capabilities and an
empty environment. Its root is a read-only copy of exactly the files ``cst`` needs (the program,
its ELF libraries and loader, and for a wrapper script its interpreter and the programs and
libraries it names), built once per cst installation (one mount instead of one per file: each
bind mount costs about 0.35 ms). The job dir is the cwd, ``/job``, the one writable place; the
machine's unpacked key archive is bound read-only inside it. No /proc, no /dev, no /etc, no
/tmp, no key store, no other job.

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
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from .imx import CSF_INPUT, CSF_OUTPUT, MIN_ENV, ImxError

JOB = "/job"
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


def _signature(files: Sequence[Path]) -> tuple[object, ...]:
    out: list[object] = []
    for f in files:
        try:
            st = os.stat(f)
        except OSError:
            out.append(None)
            continue
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


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


def build_root(deps: Sequence[Path], dest: Path) -> None:
    """A read-only root holding a copy of each file of ``deps`` at its own path, and ``/job``."""
    dest.mkdir(parents=True, mode=0o700)
    for d in deps:
        target = dest / str(d).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(d, target)  # the file's contents (a symlink is followed)
        os.chmod(target, 0o555)
    (dest / JOB.lstrip("/")).mkdir()
    for dirpath, dirs, _ in os.walk(dest):
        for x in dirs:
            os.chmod(os.path.join(dirpath, x), 0o555)
    os.chmod(dest, 0o555)


def remove_root(path: Path) -> None:
    if not path.exists():
        return
    for dirpath, dirs, _ in os.walk(path):
        os.chmod(dirpath, 0o700)
        for x in dirs:
            os.chmod(os.path.join(dirpath, x), 0o700)
    shutil.rmtree(path, ignore_errors=True)


def bwrap_args(bwrap: str, root: Path, job: Path, ro_in_job: Mapping[str, Path]) -> list[str]:
    """The bwrap command line (without the program to run): ``root`` read-only as /, the job
    dir at ``/job`` (the cwd), ``ro_in_job`` bound read-only inside it."""
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
    args += ["--ro-bind", str(root), "/", "--bind", str(job), JOB]
    for name, src in ro_in_job.items():
        args += ["--ro-bind", str(src), f"{JOB}/{name}"]
    args += ["--chdir", JOB, "--"]
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
        cache_dir: Path | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.protected = list(protected)
        self.bwrap = bwrap or shutil.which("bwrap") or "/usr/bin/bwrap"
        self._cache_dir = cache_dir
        self._own_cache = cache_dir is None
        self._roots: dict[Path, tuple[tuple[object, ...], list[Path], Path]] = {}
        self._lock = threading.Lock()
        self._n = 0

    @staticmethod
    def probe(bwrap: str | None = None) -> str | None:
        """None if bwrap can build a sandbox here, else why not (one line)."""
        exe = bwrap or shutil.which("bwrap")
        if exe is None:
            return "bwrap is not installed (Debian package bubblewrap)"
        true = shutil.which("true") or "/bin/true"
        try:
            with tempfile.TemporaryDirectory(prefix="cptra-bwrap-probe-") as d:
                root = Path(d) / "root"
                build_root(dependencies(Path(true)), root)
                job = Path(d) / "job"
                job.mkdir()
                try:
                    r = subprocess.run(
                        [*bwrap_args(exe, root, job, {}), true],
                        capture_output=True,
                        text=True,
                        timeout=10,
                    )
                finally:
                    remove_root(root)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bwrap cannot run: {type(exc).__name__}"
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["exit " + str(r.returncode)])[-1]
            return f"bwrap cannot create namespaces here: {last[:200]}"
        return None

    def close(self) -> None:
        with self._lock:
            for _, _, root in self._roots.values():
                remove_root(root)
            self._roots.clear()
            if self._own_cache and self._cache_dir is not None:
                shutil.rmtree(self._cache_dir, ignore_errors=True)
                self._cache_dir = None

    def deps(self, cst: Path) -> list[Path]:
        return self._root(cst)[0]

    def _root(self, cst: Path) -> tuple[list[Path], Path]:
        """cst's dependencies and the read-only root holding them; rebuilt when cst or any of
        its files changes (a stat of each per job). Blocking on a (re)build."""
        with self._lock:
            cached = self._roots.get(cst)
            if cached is not None:
                sig, deps, root = cached
                if sig == _signature([cst, *deps]):
                    return deps, root
            deps = dependencies(cst, self.protected)
            if self._cache_dir is None:
                self._cache_dir = Path(tempfile.mkdtemp(prefix="cptra-imgtool-cst-"))
            self._n += 1
            root = self._cache_dir / f"root-{self._n}"
            build_root(deps, root)
            if cached is not None:
                remove_root(cached[2])  # a job still using it keeps its mount
            self._roots[cst] = (_signature([cst, *deps]), deps, root)
            return deps, root

    def command(self, cst: Path, job: Path, ro_in_job: Mapping[str, Path]) -> list[str]:
        tail = [str(cst), "-i", CSF_INPUT, "-o", CSF_OUTPUT]
        if not self.sandbox:
            return tail
        _, root = self._root(cst)
        return bwrap_args(self.bwrap, root, job, ro_in_job) + tail

    async def run(
        self, cst: Path, job: Path, ro_in_job: Mapping[str, Path], timeout: float
    ) -> bytes:
        """Run cst for the job in ``job``; returns the binary CSF. ``ro_in_job`` maps names in
        the job dir to read-only sources (the unpacked key archive's top-level entries);
        unsandboxed, those must already be copies inside ``job``."""
        if self.sandbox:
            with self._lock:
                known = cst in self._roots
            if not known:  # the first job of this cst builds its root: off the event loop
                await asyncio.to_thread(self._root, cst)
            for name, src in ro_in_job.items():  # mount points, in the job's own dir
                dst = job / name
                if src.is_dir():
                    dst.mkdir(mode=0o700, exist_ok=True)
                else:
                    dst.touch(mode=0o600, exist_ok=True)
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
