"""Each machine's i.MX key archive, validated and unpacked once.

The cache is keyed by the archive's SHA-256: a request stats the archive (device, inode, size,
mtime, ctime); when that is unchanged the unpacked tree is reused, otherwise the archive is read
once, hashed, and unpacked (with the checks of :func:`.imx.unpack_keys`) into
``<cache root>/<sha256>/`` unless that tree exists already. Trees are read-only (files 0400, dirs
0500 after unpacking), live under a 0700 directory of the server, and reach a ``cst`` run only
as read-only binds inside that run's sandbox. Trees no longer current for any archive are removed
once no job holds them.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .csfpolicy import FileInfo, index_tree
from .imx import JOB_FILES, ImxError, unpack_keys


@dataclass(frozen=True)
class KeyTree:
    digest: str
    root: Path
    files: frozenset[str]  # relative names of the regular files
    tops: tuple[str, ...]  # top-level entries (bound into each job)
    index: Mapping[str, FileInfo] = field(default_factory=dict)  # roles (csfpolicy)


def _sig(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _rmtree(path: Path) -> None:
    """Remove a (read-only) tree."""
    if not path.exists():
        return
    os.chmod(path, 0o700)
    for d, dirs, _ in os.walk(path):
        for x in dirs:
            try:
                os.chmod(os.path.join(d, x), 0o700)
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)


class KeyCache:
    def __init__(self, root: Path, max_bytes: int, max_files: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.max_files = max_files
        self._lock = threading.Lock()
        self._by_archive: dict[Path, tuple[tuple[int, ...], KeyTree]] = {}
        self._trees: dict[str, KeyTree] = {}
        self._refs: dict[str, int] = {}
        self.unpacks = 0  # how many archives were unpacked (for tests and the benchmark)
        if root.exists():
            _rmtree(root)  # never trust a tree left by an earlier process
        root.mkdir(parents=True, mode=0o700)
        os.chmod(root, 0o700)

    def close(self) -> None:
        with self._lock:
            self._by_archive.clear()
            self._trees.clear()
            _rmtree(self.root)

    def acquire_cached(self, archive: Path) -> KeyTree | None:
        """The tree if the archive is unchanged since it was unpacked (one stat, no I/O
        beyond it: fine on the event loop); None when :meth:`acquire` has work to do."""
        try:
            st = os.stat(archive)
        except OSError:
            return None
        with self._lock:
            hit = self._by_archive.get(archive)
            if hit is None or hit[0] != _sig(st):
                return None
            self._refs[hit[1].digest] = self._refs.get(hit[1].digest, 0) + 1
            return hit[1]

    def acquire(self, archive: Path) -> KeyTree:
        """The unpacked tree for ``archive``; call :meth:`release` when the job is done.
        Blocking (run it in a thread). Raises ImxError."""
        try:
            st = os.stat(archive)
        except FileNotFoundError:
            raise ImxError(404, "no i.MX keys for this machine") from None
        except OSError as exc:
            raise ImxError(500, "Signing error", f"{archive}: {exc.strerror}") from None
        with self._lock:
            hit = self._by_archive.get(archive)
            if hit is not None and hit[0] == _sig(st) and hit[1].root.is_dir():
                self._refs[hit[1].digest] = self._refs.get(hit[1].digest, 0) + 1
                return hit[1]
            tree = self._load(archive)
            old = self._by_archive.get(archive)
            self._by_archive[archive] = (tree[0], tree[1])
            self._refs[tree[1].digest] = self._refs.get(tree[1].digest, 0) + 1
            if old is not None and old[1].digest != tree[1].digest:
                self._maybe_drop(old[1].digest)
            return tree[1]

    def release(self, tree: KeyTree) -> None:
        with self._lock:
            self._refs[tree.digest] = self._refs.get(tree.digest, 1) - 1
            self._maybe_drop(tree.digest)

    def _maybe_drop(self, digest: str) -> None:
        if self._refs.get(digest, 0) > 0:
            return
        if any(t.digest == digest for _, t in self._by_archive.values()):
            return
        tree = self._trees.pop(digest, None)
        self._refs.pop(digest, None)
        if tree is not None:
            _rmtree(tree.root)

    def _load(self, archive: Path) -> tuple[tuple[int, ...], KeyTree]:
        try:
            fd = os.open(archive, os.O_RDONLY)
        except OSError as exc:
            raise ImxError(500, "Signing error", f"{archive}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ImxError(500, "Signing error", f"{archive}: not a regular file")
            if st.st_size > self.max_bytes:
                raise ImxError(500, "Signing error", f"{archive}: more than {self.max_bytes} B")
            data = fh.read(self.max_bytes + 1)
        digest = hashlib.sha256(data).hexdigest()
        tree = self._trees.get(digest)
        if tree is not None and tree.root.is_dir():
            return _sig(st), tree
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=self.root))
        try:
            files = unpack_keys(
                io.BytesIO(data), tmp, self.max_bytes, self.max_files, name=str(archive)
            )
            tops = tuple(sorted(p.name for p in tmp.iterdir()))
            bad = sorted(set(tops) & set(JOB_FILES))
            if bad:  # bound into /job, it would replace the checked CSF or the output
                raise ImxError(
                    500, "Signing error", f"{archive}: reserved top-level name {bad[0]!r}"
                )
            index = index_tree(tmp, frozenset(files))  # each file's role, once per tree
            for d, dirs, names in os.walk(tmp, topdown=False):
                for x in names:
                    os.chmod(os.path.join(d, x), 0o400)
                for x in dirs:
                    os.chmod(os.path.join(d, x), 0o500)
            dest = self.root / digest
            if dest.exists():
                _rmtree(dest)
            os.rename(tmp, dest)
            os.chmod(dest, 0o500)
        except BaseException:
            _rmtree(tmp)
            raise
        self.unpacks += 1
        tree = KeyTree(digest, dest, frozenset(files), tops, index)
        self._trees[digest] = tree
        return _sig(st), tree
