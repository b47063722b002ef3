"""Running NXP's ``cst`` so that it sees nothing but its own job: a bubblewrap (``bwrap``)
sandbox with fresh mount, pid, network, IPC, UTS and user namespaces, no capabilities and an
empty environment. Its root is a read-only copy of exactly the files ``cst`` needs (the program,
its ELF libraries and loader, and for a wrapper script its interpreter and the programs and
libraries it names), built once per cst installation (one mount instead of one per file: each
bind mount costs about 0.35 ms). The job dir, ``/job`` (the cwd), is a private tmpfs of bounded
size that exists only inside the sandbox: bwrap copies the checked CSF and a small artifact into
it from file descriptors; a large artifact and the machine's unpacked key archive are bound
read-only inside it; the one host file ``cst`` can write is its output, bound on
``/job/csf-output.bin``. No /proc, no /dev, no /etc, no /tmp, no key store, no other job, and no
job files on the host disk to leak.

Where namespaces are not available the runner can still run ``cst`` directly in a job dir on the
host (only when the operator says ``--allow-unsandboxed-cst``); the CSF checks in :mod:`.csf` are
then the only barrier.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import re
import resource
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .imx import CSF_INPUT, CSF_OUTPUT, MIN_ENV, ImxError

JOB = "/job"
SANDBOX_UID = 65534
TMPFS_SPARE = 16 * 1024 * 1024  # room in /job for cst's own files, beyond its inputs
MAX_OUTPUT = 16 * 1024 * 1024  # the most of cst's output that is read back
# Resource limits of every cst run: address space, the largest file it may write, CPU seconds
# (the run's timeout), no core dumps. A crafted CSF that makes cst loop or allocate is stopped
# by these rather than by the machine. In the sandbox they are set with prlimit(2) on bwrap's
# sandbox process while it waits on --block-fd, before it execs cst (one exec fewer than
# prlimit(1): about 0.5 ms of CPU per job); unsandboxed, prlimit(1) sets them on the process that
# execs cst.
MEM_LIMIT = 512 * 1024 * 1024  # plus twice the artifact's size
FSIZE_LIMIT = MAX_OUTPUT + 1024 * 1024  # plus the artifact's size
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


def bwrap_prefix(bwrap: str, root: Path) -> list[str]:
    """The fixed part of every sandbox command line: fresh namespaces, no capabilities, an empty
    environment, ``root`` read-only as /. Built once per root."""
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
    return [*args, "--ro-bind", str(root), "/"]


def job_args(
    tmpfs_size: int,
    files: Mapping[str, int],
    ro_in_job: Mapping[str, Path],
    output: Path | None,
) -> list[str]:
    """The per-job part: a private tmpfs of ``tmpfs_size`` bytes at ``/job`` (the cwd), each of
    ``files`` (name -> readable fd) copied into it, ``ro_in_job`` bound read-only inside it,
    and ``output`` (a host file) bound writable on ``/job/csf-output.bin``."""
    args = ["--size", str(tmpfs_size), "--tmpfs", JOB]
    for name, fd in files.items():
        args += ["--file", str(fd), f"{JOB}/{name}"]
    for name, src in ro_in_job.items():
        args += ["--ro-bind", str(src), f"{JOB}/{name}"]
    if output is not None:
        args += ["--bind", str(output), f"{JOB}/{CSF_OUTPUT}"]
    return [*args, "--chdir", JOB, "--"]


def data_fd(data: bytes, spill: Path) -> int:
    """A file descriptor (offset 0, close-on-exec) holding ``data``: a memfd, or where there is
    none an unlinked temporary file in ``spill``."""
    try:
        fd = os.memfd_create("cptra-cst", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        fd, name = tempfile.mkstemp(prefix="cptra-imx-", dir=spill)
        os.unlink(name)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass
class Artifact:
    """The uploaded artifact, staged for one cst run: small ones as a file descriptor (copied
    into the sandbox's tmpfs), large ones as a host file (bound read-only into the sandbox, so
    memory use stays bounded). :meth:`close` releases either."""

    name: str
    sha256: str
    size: int
    fd: int = -1
    path: Path | None = None

    @classmethod
    def from_bytes(cls, name: str, data: bytes, spill: Path) -> Artifact:
        return cls(name, hashlib.sha256(data).hexdigest(), len(data), fd=data_fd(data, spill))

    @classmethod
    def from_stream(cls, name: str, src: BinaryIO, work: Path) -> Artifact:
        """Stream ``src`` into a new 0600 file in ``work`` (blocking: call it in a thread)."""
        fd, tmp = tempfile.mkstemp(prefix="cptra-imx-", suffix=".in", dir=work)
        h = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
        except BaseException:
            os.unlink(tmp)
            raise
        return cls(name, h.hexdigest(), size, path=Path(tmp))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


class CstRunner:
    """Runs ``cst -i csf-input.txt -o csf-output.bin`` for one job, sandboxed or (if allowed and
    needed) not. A job is one blocking call (:meth:`run_sync`) in a worker thread: write the
    inputs, spawn, wait, read the output, clean up."""

    def __init__(
        self,
        *,
        sandbox: bool,
        protected: Sequence[Path] = (),
        bwrap: str | None = None,
        cache_dir: Path | None = None,
        work_dir: Path | None = None,
        workers: int = 4,
    ) -> None:
        self.sandbox = sandbox
        self.protected = list(protected)
        self.bwrap = bwrap or shutil.which("bwrap") or "/usr/bin/bwrap"
        self.prlimit = shutil.which("prlimit")  # util-linux; None: no resource limits
        self.work_dir = work_dir or Path(tempfile.gettempdir())
        self._cache_dir = cache_dir
        self._own_cache = cache_dir is None
        self._roots: dict[Path, tuple[tuple[object, ...], list[Path], Path, list[str]]] = {}
        self._lock = threading.Lock()
        self._n = 0
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="cst")

    @staticmethod
    def probe(bwrap: str | None = None) -> str | None:
        """None if bwrap can build the job sandbox here (namespaces, a sized tmpfs, a copied
        input, a bound output), else why not (one line)."""
        exe = bwrap or shutil.which("bwrap")
        if exe is None:
            return "bwrap is not installed (Debian package bubblewrap)"
        true = shutil.which("true") or "/bin/true"
        try:
            with tempfile.TemporaryDirectory(prefix="cptra-bwrap-probe-") as d:
                root = Path(d) / "root"
                build_root(dependencies(Path(true)), root)
                out = Path(d) / "out"
                out.touch(mode=0o600)
                fd = data_fd(b"probe", Path(d))
                try:
                    argv = bwrap_prefix(exe, root)
                    argv += job_args(1 << 20, {"in": fd}, {}, out) + [true]
                    r = subprocess.run(
                        argv, capture_output=True, text=True, timeout=10, pass_fds=(fd,)
                    )
                finally:
                    os.close(fd)
                    remove_root(root)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bwrap cannot run: {type(exc).__name__}"
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["exit " + str(r.returncode)])[-1]
            return f"bwrap cannot create namespaces here: {last[:200]}"
        return None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for _, _, root, _ in self._roots.values():
                remove_root(root)
            self._roots.clear()
            if self._own_cache and self._cache_dir is not None:
                shutil.rmtree(self._cache_dir, ignore_errors=True)
                self._cache_dir = None

    def limits(self, artifact_size: int, timeout: float) -> list[str]:
        """The ``prlimit`` command-line prefix for one unsandboxed job (empty without prlimit)."""
        if self.prlimit is None:
            return []
        return [
            self.prlimit,
            *(f"--{name}={v}" for name, _, v in job_limits(artifact_size, timeout)),
            "--",
        ]

    def deps(self, cst: Path) -> list[Path]:
        return self._root(cst)[0]

    def _root(self, cst: Path) -> tuple[list[Path], list[str]]:
        """cst's dependencies and the command-line prefix of the read-only root holding them;
        rebuilt when cst or any of its files changes (a stat of each per job). Blocking."""
        with self._lock:
            cached = self._roots.get(cst)
            if cached is not None:
                sig, deps, root, prefix = cached
                if sig == _signature([cst, *deps]):
                    return deps, prefix
            deps = dependencies(cst, self.protected)
            if self._cache_dir is None:
                self._cache_dir = Path(tempfile.mkdtemp(prefix="cptra-imgtool-cst-"))
            self._n += 1
            root = self._cache_dir / f"root-{self._n}"
            build_root(deps, root)
            if cached is not None:
                remove_root(cached[2])  # a job still using it keeps its mount
            prefix = bwrap_prefix(self.bwrap, root)
            self._roots[cst] = (_signature([cst, *deps]), deps, root, prefix)
            return deps, prefix

    async def run(
        self,
        cst: Path,
        csf: bytes,
        artifact: Artifact,
        ro_in_job: Mapping[str, Path],
        timeout: float,
    ) -> bytes:
        """:meth:`run_sync` in the runner's worker threads. If the caller is cancelled, the job
        still finishes (and cleans up) before the cancellation goes on."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(
            self._pool, functools.partial(self.run_sync, cst, csf, artifact, ro_in_job, timeout)
        )
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            await asyncio.wait([fut])
            raise

    def run_sync(
        self,
        cst: Path,
        csf: bytes,
        artifact: Artifact,
        ro_in_job: Mapping[str, Path],
        timeout: float,
    ) -> bytes:
        """Run cst on ``csf`` (the checked CSF text) and ``artifact``, with ``ro_in_job`` (names
        in the job dir -> the unpacked key archive's top-level entries) visible read-only;
        returns the binary CSF. Raises ImxError."""
        name = artifact.name
        if name in (CSF_INPUT, CSF_OUTPUT, "", ".", "..") or "/" in name or name in ro_in_job:
            raise ImxError(400, "artifact file name not allowed", f"artifact name {name!r}")
        for top in ro_in_job:
            if top in (CSF_INPUT, CSF_OUTPUT, "", ".", "..") or "/" in top:
                raise ImxError(500, "Signing error", f"key tree entry {top!r} shadows a job file")
        if not self.sandbox:
            return self._run_unsandboxed(cst, csf, artifact, ro_in_job, timeout)
        _, prefix = self._root(cst)
        csf_fd = data_fd(csf, self.work_dir)
        out_fd = -1
        out_path: str | None = None
        try:
            out_fd, out_path = tempfile.mkstemp(
                prefix="cptra-imx-", suffix=".out", dir=self.work_dir
            )
            files = {CSF_INPUT: csf_fd}
            ro = dict(ro_in_job)
            size = len(csf) + TMPFS_SPARE
            if artifact.fd >= 0:
                os.lseek(artifact.fd, 0, os.SEEK_SET)
                files[artifact.name] = artifact.fd
                size += artifact.size
            elif artifact.path is not None:
                ro[artifact.name] = artifact.path
                size += artifact.size  # room for cst's copies of the data
            argv = [*prefix, *job_args(size, files, ro, Path(out_path))]
            argv += [str(cst), "-i", CSF_INPUT, "-o", CSF_OUTPUT]
            limits = job_limits(artifact.size, timeout)
            rc, text = self._exec_limited(argv, tuple(files.values()), limits, timeout)
            st = os.fstat(out_fd)
            data = os.pread(out_fd, MAX_OUTPUT + 1, 0) if stat.S_ISREG(st.st_mode) else b""
        finally:
            os.close(csf_fd)
            if out_fd >= 0:
                os.close(out_fd)
            if out_path is not None:
                os.unlink(out_path)
        return _result(rc, text, data)

    def _run_unsandboxed(
        self,
        cst: Path,
        csf: bytes,
        artifact: Artifact,
        ro_in_job: Mapping[str, Path],
        timeout: float,
    ) -> bytes:
        """cst directly in a fresh job dir holding copies of everything (it must not be able to
        change the cached key tree or the staged artifact); the dir is removed afterwards."""
        job = Path(tempfile.mkdtemp(prefix="cptra-imx-", dir=self.work_dir))
        try:
            (job / CSF_INPUT).write_bytes(csf)
            with open(job / artifact.name, "xb") as out:
                if artifact.fd >= 0:
                    os.lseek(artifact.fd, 0, os.SEEK_SET)
                    while chunk := os.read(artifact.fd, 1 << 20):
                        out.write(chunk)
                elif artifact.path is not None:
                    with open(artifact.path, "rb") as fh:
                        shutil.copyfileobj(fh, out)
            for name, src in ro_in_job.items():
                _copy_private(src, job / name)
            argv = self.limits(artifact.size, timeout)
            argv += [str(cst), "-i", CSF_INPUT, "-o", CSF_OUTPUT]
            rc, text = self._exec(argv, job, (), timeout)
            result = job / CSF_OUTPUT
            data = b""
            if rc == 0 and result.is_file() and not result.is_symlink():
                fd = os.open(result, os.O_RDONLY | os.O_NOFOLLOW)
                with os.fdopen(fd, "rb") as fh:
                    data = fh.read(MAX_OUTPUT + 1)
        finally:
            _rmtree(job)
        return _result(rc, text, data)

    @staticmethod
    def _exec_limited(
        argv: list[str],
        pass_fds: tuple[int, ...],
        limits: Sequence[tuple[str, int, int]],
        timeout: float,
    ) -> tuple[int, bytes]:
        """:meth:`_exec` of a bwrap command line (``argv`` = bwrap's options, ``--``, the
        program), with ``limits`` set on bwrap's sandbox process before it execs the program:
        bwrap reports that process's pid on --info-fd and waits on --block-fd until we have set
        them. If they cannot be set, the process is killed before it is released, so the
        program never runs without them."""
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe()
        sep = argv.index("--")
        argv = [
            *argv[:sep],
            "--info-fd",
            str(info_w),
            "--block-fd",
            str(block_r),
            *argv[sep:],
        ]
        released = False
        try:
            proc = subprocess.Popen(
                argv,
                env=dict(MIN_ENV),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(*pass_fds, info_w, block_r),
                start_new_session=True,
            )
        except BaseException:
            for fd in (info_r, info_w, block_r, block_w):
                os.close(fd)
            raise
        os.close(info_w)
        os.close(block_r)
        pid = -1
        try:
            pid = _sandbox_pid(info_r, min(timeout, 10.0))
            if pid < 0:  # bwrap failed before it started the sandbox: its status says why
                return CstRunner._wait(proc, timeout)  # block_w stays open until it is gone
            for _, res, value in limits:
                resource.prlimit(pid, res, (value, value))
            os.write(block_w, b"x")
            released = True
        except (OSError, ValueError) as exc:
            detail = f"the resource limits of cst could not be set: {type(exc).__name__}"
            raise ImxError(500, "Signing error", detail) from None
        finally:
            if not released and proc.returncode is None:
                # kill before block_w is closed: EOF on it would release the sandbox too
                for p in (pid, proc.pid):
                    if p > 0:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(p, signal.SIGKILL)
                proc.communicate()
            os.close(block_w)
            os.close(info_r)
        return CstRunner._wait(proc, timeout)

    @staticmethod
    def _wait(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, bytes]:
        """Collect ``proc``'s output and exit status, killing its process group after
        ``timeout`` s."""
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            raise ImxError(500, "Signing error", f"cst timed out after {timeout:g} s") from None
        return proc.returncode, out

    @staticmethod
    def _exec(
        argv: list[str], cwd: Path | None, pass_fds: tuple[int, ...], timeout: float
    ) -> tuple[int, bytes]:
        """Spawn ``argv`` (its own session, minimal environment, stdin /dev/null, stdout and
        stderr to one pipe), wait up to ``timeout`` s (then kill its process group). Returns
        the exit status and what it printed."""
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(MIN_ENV),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
            start_new_session=True,
        )
        return CstRunner._wait(proc, timeout)


def job_limits(artifact_size: int, timeout: float) -> list[tuple[str, int, int]]:
    """(prlimit(1) option name, RLIMIT_* resource, value) of one cst job."""
    return [
        ("as", resource.RLIMIT_AS, MEM_LIMIT + 2 * artifact_size),
        ("fsize", resource.RLIMIT_FSIZE, FSIZE_LIMIT + artifact_size),
        ("cpu", resource.RLIMIT_CPU, max(1, int(timeout + 0.999))),
        ("core", resource.RLIMIT_CORE, 0),
    ]


def _sandbox_pid(info_fd: int, timeout: float) -> int:
    """The pid of bwrap's sandbox process, from the JSON bwrap writes on --info-fd; -1 if bwrap
    closed it first (it failed). ValueError on anything else."""
    buf = b""
    deadline = time.monotonic() + timeout
    poll = select.poll()  # not select(): a busy server's descriptors go beyond FD_SETSIZE
    poll.register(info_fd, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not poll.poll(max(1, int(left * 1000))):
            raise ValueError("bwrap did not report its sandbox process in time")
        chunk = os.read(info_fd, 4096)
        if not chunk:
            return -1
        buf += chunk
        if len(buf) >= 65536:
            raise ValueError("bwrap's info is too long")
        if buf.rstrip().endswith(b"}"):
            try:
                info = json.loads(buf)
            except ValueError:
                continue  # a "}" inside a value: read on
            pid = info.get("child-pid") if isinstance(info, dict) else None
            if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
                raise ValueError("bwrap's info has no child-pid")
            return pid


def _result(rc: int, text: bytes, data: bytes) -> bytes:
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        raise ImxError(500, "Signing error", f"cst was killed by {name} (a crash or a limit)")
    if rc != 0:
        tail = (text.decode("utf-8", "replace").strip().splitlines()[-1:] or [""])[0][:200]
        raise ImxError(500, "Signing error", f"cst exited with {rc}: {tail}")
    if not data:
        raise ImxError(500, "Signing error", "cst exited with 0 but wrote no output")
    if len(data) > MAX_OUTPUT:
        raise ImxError(500, "Signing error", f"cst wrote more than {MAX_OUTPUT} bytes")
    return data


def _copy_private(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=shutil.copyfile)
        for p in dst.rglob("*"):
            p.chmod(0o700 if p.is_dir() else 0o600)
        dst.chmod(0o700)
    else:
        shutil.copyfile(src, dst)


def _rmtree(path: Path) -> None:
    for dirpath, dirs, _ in os.walk(path):
        for x in dirs:
            try:
                os.chmod(os.path.join(dirpath, x), 0o700)
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)
