"""doit's file_dep checker for cptra-imgtool: content fingerprints, each file read once.

doit's default MD5 checker hashes a file again for every task that depends on it, and again on
every run while a file has a new mtime but the same bytes (a touched file stays "suspect"
forever, because doit only records a state when a task runs). On a 500 MiB project that is a
second full pass over the images on a cold build, and a full pass on every no-op run after a
`git checkout`.

This checker stores (mtime, size, fingerprint) like the MD5 checker, but the fingerprint is the
padded SHA-384 the manifest needs anyway (that of
:func:`imgtool.formats.manifest1.image_digest_file`).
The same single read also yields the file's CRC-32, which the flash writer combines into the
FLSH payload checksum instead of reading the image again (:mod:`imgtool.formats.flash1`). Both are
cached by the file's full stat identity (path, size, mtime_ns, ctime_ns, inode, device): in
memory for the process, and in ``out/<prj>/fingerprints.json`` across runs. ctime cannot be set
from user space, so a file whose bytes changed cannot keep its cache entry (not even with a
restored mtime). Like git's "racy" index entries, a fingerprint is kept across runs only if the
file had been left alone for RACY_NS before it was hashed: a later write then always gets a new
timestamp, even on coarse-clock filesystems.

With ``doit -P process`` the digest tasks run in worker processes: each new fingerprint is
appended as one line to ``fingerprints.json.new`` (one ``write``, O_APPEND), which every process
of the run reads on a cache miss; so the main process (doit's ``get_state``) and the flash task
(another worker) find what a worker hashed instead of reading the image again. An unsettled
fingerprint in that journal carries the run's id and is ignored by later runs. The main process
folds the journal into the JSON file at exit.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from doit.dependency import FileChangedChecker

MAX_ENTRIES = 8192
RACY_NS = 2_000_000_000
CHUNK = 1 << 20
# abspath -> [size, mtime_ns, ctime_ns, ino, dev, digest hex, crc32, keep across runs]
_cache: dict[str, list[Any]] = {}
_store: Path | None = None
_loaded = False
_dirty = False
_journal_pos = 0
_lock = threading.RLock()  # `doit -P thread` runs actions in threads of one process
_run = f"{os.getpid()}-{time.time_ns()}"  # set again by configure(); workers inherit it
_pool: tuple[int, ThreadPoolExecutor] | None = None


def _crc_pool() -> ThreadPoolExecutor:
    """This process's CRC thread (a forked doit worker has none of its parent's threads)."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        _pool = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="fingerprint-crc"))
    return _pool[1]


@dataclass(frozen=True)
class Fingerprint:
    """What one read of a file yields: its padded SHA-384 (the manifest digest of an image
    without padding_align_size), the CRC-32 of its bytes (no padding), and the stat they
    belong to (size, mtime_ns, ctime_ns, inode, device)."""

    digest: bytes
    crc: int
    ident: tuple[int, ...]


def configure(store: Path) -> None:
    """Where the cache of this doit run lives (called from the doit config, main process)."""
    global _store, _loaded, _run, _journal_pos
    store = Path(os.path.abspath(store))  # the cwd may change before save() runs
    if store == _store:
        return
    save()
    _store, _loaded, _journal_pos = store, False, 0
    _run = f"{os.getpid()}-{time.time_ns()}"
    _cache.clear()


def ident(st: os.stat_result) -> tuple[int, ...]:
    """The stat fields a cache entry is keyed by."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


def _journal() -> Path | None:
    return None if _store is None else _store.with_name(_store.name + ".new")


def _valid(v: Any) -> bool:
    return (
        isinstance(v, list)
        and len(v) == 7
        and all(isinstance(x, int) for x in v[:5])
        and isinstance(v[5], str)
        and len(v[5]) == 96
        and isinstance(v[6], int)
    )


def _load() -> None:
    global _loaded
    _loaded = True
    if _store is None:
        return
    try:
        data = json.loads(_store.read_text())
    except (OSError, ValueError):
        data = None  # no cache yet, or a damaged one: start over
    if isinstance(data, dict):
        for k, v in data.items():
            if isinstance(k, str) and _valid(v) and k not in _cache:
                _cache[k] = [*v, True]
    _read_journal()


def _read_journal() -> bool:
    """Take the journal lines appended since the last read; True if there were any."""
    with _lock:
        return _read_journal_locked()


def _read_journal_locked() -> bool:
    global _journal_pos, _dirty
    j = _journal()
    if j is None:
        return False
    try:
        with open(j, "rb") as fh:
            fh.seek(_journal_pos)
            data = fh.read()
    except OSError:
        return False
    end = data.rfind(b"\n") + 1  # a line still being written is read next time
    _journal_pos += end
    got = False
    for line in data[:end].splitlines():
        try:
            key, v, run = json.loads(line)
        except (ValueError, TypeError):
            continue
        if not isinstance(key, str) or not _valid(v):
            continue
        keep = run is None
        if not keep and run != _run:
            continue  # an unsettled fingerprint of another run
        _cache.pop(key, None)
        _cache[key] = [*v, keep]
        got = True
        _dirty = _dirty or keep
    return got


def save() -> None:
    """Fold the journal into the JSON file (tmp + rename; it is only a cache) and remove the
    journal. Runs at exit of the process that configured the store."""
    global _dirty, _journal_pos
    if _store is None:
        return
    j = _journal()
    if not (_dirty or (j is not None and j.exists())):
        return
    if _loaded:
        _read_journal()
    else:
        _load()
    try:
        if _dirty:
            items = [(k, v[:7]) for k, v in _cache.items() if v[7]][-MAX_ENTRIES:]
            tmp = _store.with_name(f".{_store.name}.{os.getpid()}.tmp")
            try:
                _store.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_text(json.dumps(dict(items), separators=(",", ":")))
                os.replace(tmp, _store)
            finally:
                tmp.unlink(missing_ok=True)
            _dirty = False
        if j is not None:
            j.unlink(missing_ok=True)
            _journal_pos = 0
    except OSError:
        pass


_MAIN_PID = os.getpid()


def _save_at_exit() -> None:
    if os.getpid() == _MAIN_PID:  # not in a forked worker that happens to run atexit hooks
        save()


atexit.register(_save_at_exit)


def fingerprint_of(
    path: str | os.PathLike[str], st: os.stat_result, settled: bool = False
) -> Fingerprint | None:
    """The cached fingerprint of a file with exactly this stat, or None; with ``settled`` only
    one taken when the file had been left alone for RACY_NS (see the module doc)."""
    if not _loaded:
        _load()
    key = os.path.abspath(path)
    want = ident(st)
    for attempt in (0, 1):
        hit = _cache.get(key)
        if hit is not None and tuple(hit[:5]) == want and (hit[7] or not settled):
            return Fingerprint(bytes.fromhex(hit[5]), hit[6], want)
        if attempt == 0 and not _read_journal():
            break  # nothing new from the other processes of this run
    return None


def lookup(path: str | os.PathLike[str], st: os.stat_result, settled: bool = False) -> bytes | None:
    """The cached padded SHA-384 of a file with exactly this stat, or None (see
    :func:`fingerprint_of`)."""
    fp = fingerprint_of(path, st, settled)
    return None if fp is None else fp.digest


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """Same size, mtime, ctime, inode and device: for this cache, the same bytes."""
    return ident(a) == ident(b)


def record(
    path: str | os.PathLike[str], st: os.stat_result, digest: bytes, crc: int, keep: bool
) -> None:
    """Cache a fingerprint for this stat (``keep``: also for later runs), and append it to the
    journal for the other processes of this run."""
    global _dirty
    if not _loaded:
        _load()
    key = os.path.abspath(path)
    v = [*ident(st), digest.hex(), crc]
    with _lock:
        _cache.pop(key, None)  # re-insert: most recently used last
        _cache[key] = [*v, keep]
        _dirty = _dirty or keep
    j = _journal()
    if j is None:
        return
    line = json.dumps([key, v, None if keep else _run], separators=(",", ":")).encode() + b"\n"
    try:
        fd = os.open(j, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError:
        return  # only a cache
    try:
        os.write(fd, line)  # one write of well under a page: not interleaved with others'
    except OSError:
        pass
    finally:
        os.close(fd)


def hash_file(path: str | os.PathLike[str]) -> tuple[bytes, int]:
    """(SHA-384 of the file zero-padded to a multiple of 4, CRC-32 of its bytes) in one read;
    the CRC runs in a thread beside the SHA (both release the GIL)."""
    h = hashlib.sha384()
    crc = 0
    pending: Future[int] | None = None
    n = i = 0
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < CHUNK:  # one read, no thread (most files of a project, and the digest files)
            data = fh.read(CHUNK)
            if len(data) < CHUNK:
                h.update(data)
                h.update(bytes(-len(data) % 4))
                return h.digest(), zlib.crc32(data) & 0xFFFFFFFF
            h.update(data)  # it grew meanwhile: go on in chunks
            crc = zlib.crc32(data)
            n = len(data)
        pool = _crc_pool()
        bufs = (bytearray(CHUNK), bytearray(CHUNK))
        while True:
            buf = bufs[i]
            got = fh.readinto(buf)
            if not got:
                break
            view = memoryview(buf)[:got]
            if pending is not None:
                crc = pending.result()  # the CRC so far; the other buffer is free again
            pending = pool.submit(zlib.crc32, view, crc)
            h.update(view)
            n += got
            i ^= 1
    if pending is not None:
        crc = pending.result()
    h.update(bytes(-n % 4))
    return h.digest(), crc & 0xFFFFFFFF


def fingerprint(path: str | os.PathLike[str]) -> tuple[Fingerprint, os.stat_result]:
    """A file's fingerprint (from the cache when its stat is unchanged) and the stat it
    belongs to: the one taken before reading, so that a change during the read shows up as a
    changed mtime next time. A result is cached only if the stat did not change while reading.
    """
    now = time.time_ns()
    before = os.stat(path)
    hit = fingerprint_of(path, before)
    if hit is not None:
        return hit, before
    digest, crc = hash_file(path)
    if ident(os.stat(path)) == ident(before):
        settled = now - max(before.st_mtime_ns, before.st_ctime_ns) >= RACY_NS
        record(path, before, digest, crc, keep=settled)
    return Fingerprint(digest, crc, ident(before)), before


def digest_file(path: str | os.PathLike[str]) -> tuple[bytes, os.stat_result]:
    """Padded SHA-384 of a file and the stat it belongs to (see :func:`fingerprint`)."""
    fp, st = fingerprint(path)
    return fp.digest, st


class ContentChecker(FileChangedChecker):  # type: ignore[misc]
    """State (mtime, size, padded SHA-384 hex, ctime_ns, inode, device); the file is hashed
    (or its fingerprint looked up) only when one of mtime, ctime, inode or device moved. The
    ctime catches a write whose mtime was put back, which doit's mtime check alone misses."""

    @staticmethod
    def _same_stat(st: os.stat_result, state: Any) -> bool:
        if st.st_mtime != state[0]:
            return False
        if len(state) < 6:
            return True  # a state from before ctimes were recorded
        return [st.st_ctime_ns, st.st_ino, st.st_dev] == list(state[3:6])

    def check_modified(self, file_path: str, file_stat: os.stat_result, state: Any) -> bool:
        if self._same_stat(file_stat, state):
            return False
        if file_stat.st_size != state[1]:
            return True
        return bool(state[2] != digest_file(file_path)[0].hex())

    def get_state(self, dep: str, current_state: Any) -> Any:
        if current_state and self._same_stat(os.stat(dep), current_state):
            return None
        digest, st = digest_file(dep)
        return st.st_mtime, st.st_size, digest.hex(), st.st_ctime_ns, st.st_ino, st.st_dev
