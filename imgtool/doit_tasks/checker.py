"""doit's file_dep checker for cptra-imgtool: content fingerprints, each file hashed once.

doit's default MD5 checker hashes a file again for every task that depends on it, and again on
every run while a file has a new mtime but the same bytes (a touched file stays "suspect"
forever, because doit only records a state when a task runs). On a 500 MiB project that is a
second full pass over the images on a cold build, and a full pass on every no-op run after a
`git checkout`.

This checker stores (mtime, size, fingerprint) like the MD5 checker, but the fingerprint is the
padded SHA-384 the manifest needs anyway (:func:`imgtool.manifest.image_digest_file`), and it
is cached by the file's full stat identity (path, size, mtime_ns, ctime_ns, inode, device):
in memory for the process, and in ``out/<prj>/fingerprints.json`` across runs. The digest task
takes its digest from the same cache, so on a cold build each image is read once before the
flash image is written. ctime cannot be set from user space, so a file whose bytes changed
cannot keep its cache entry (not even with a restored mtime). Like git's "racy" index entries,
a fingerprint is kept across runs only if the file had been left alone for RACY_NS before it
was hashed: a later write then always gets a new timestamp, even on coarse-clock filesystems.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from pathlib import Path
from typing import Any

from doit.dependency import FileChangedChecker

MAX_ENTRIES = 8192
RACY_NS = 2_000_000_000
# abspath -> [size, mtime_ns, ctime_ns, ino, dev, digest hex, keep across runs]
_cache: dict[str, list[Any]] = {}
_store: Path | None = None
_loaded = False
_dirty = False


def configure(store: Path) -> None:
    """Where the cache of this doit run lives (called from the doit config)."""
    global _store, _loaded
    store = Path(os.path.abspath(store))  # the cwd may change before save() runs
    if store == _store:
        return
    save()
    _store, _loaded = store, False
    _cache.clear()


def _ident(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _load() -> None:
    global _loaded
    _loaded = True
    if _store is None:
        return
    try:
        data = json.loads(_store.read_text())
    except (OSError, ValueError):
        return  # no cache yet, or a damaged one: start over
    if isinstance(data, dict):
        for k, v in data.items():
            if isinstance(v, list) and len(v) == 6 and k not in _cache:
                _cache[k] = [*v, True]


def save() -> None:
    """Write the cache if this process added to it (tmp + rename; it is only a cache)."""
    global _dirty
    if not _dirty or _store is None:
        return
    _dirty = False
    items = [(k, v[:6]) for k, v in _cache.items() if v[6]][-MAX_ENTRIES:]
    tmp = _store.with_name(f".{_store.name}.{os.getpid()}.tmp")
    try:
        _store.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(dict(items), separators=(",", ":")))
        os.replace(tmp, _store)
    except OSError:
        tmp.unlink(missing_ok=True)


atexit.register(save)


def lookup(path: str | os.PathLike[str], st: os.stat_result, settled: bool = False) -> bytes | None:
    """The cached padded SHA-384 of a file with exactly this stat, or None; with ``settled``
    only a digest taken when the file had been left alone for RACY_NS (see the module doc)."""
    if not _loaded:
        _load()
    hit = _cache.get(os.path.abspath(path))
    if hit is not None and hit[:5] == _ident(st) and (hit[6] or not settled):
        return bytes.fromhex(hit[5])
    return None


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """Same size, mtime, ctime, inode and device: for this cache, the same bytes."""
    return _ident(a) == _ident(b)


def record(path: str | os.PathLike[str], st: os.stat_result, digest: bytes, keep: bool) -> None:
    """Cache a digest for this stat; ``keep``: also in the file, for later runs."""
    global _dirty
    key = os.path.abspath(path)
    _cache.pop(key, None)  # re-insert: most recently used last
    _cache[key] = [*_ident(st), digest.hex(), keep]
    _dirty = _dirty or keep


def digest_file(path: str | os.PathLike[str]) -> tuple[bytes, os.stat_result]:
    """Padded SHA-384 of a file (from the cache when its stat is unchanged) and the stat it
    belongs to: the one taken before reading, so that a change during the read shows up as a
    changed mtime next time. A result is cached only if the stat did not change while reading.
    """
    from imgtool.manifest import image_digest_file

    now = time.time_ns()
    before = os.stat(path)
    hit = lookup(path, before)
    if hit is not None:
        return hit, before
    digest = image_digest_file(Path(path))
    if _ident(os.stat(path)) == _ident(before):
        settled = now - max(before.st_mtime_ns, before.st_ctime_ns) >= RACY_NS
        record(path, before, digest, keep=settled)
    return digest, before


class ContentChecker(FileChangedChecker):  # type: ignore[misc]
    """State (mtime, size, padded SHA-384 hex); the hash only when the mtime moved."""

    def check_modified(self, file_path: str, file_stat: os.stat_result, state: Any) -> bool:
        timestamp, size, fingerprint = state
        if file_stat.st_mtime == timestamp:
            return False
        if file_stat.st_size != size:
            return True
        return bool(fingerprint != digest_file(file_path)[0].hex())

    def get_state(self, dep: str, current_state: Any) -> Any:
        if current_state and current_state[0] == os.path.getmtime(dep):
            return None
        digest, st = digest_file(dep)
        return st.st_mtime, st.st_size, digest.hex()
