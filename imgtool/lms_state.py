"""Full-tree LMS keys: key generation, the tree cache and the leaf-state file.

Files beside a private key ``K`` (e.g. ``own-man-lms-prvk.pem``):

* ``K.state`` -- JSON ``{"format", "key", "leaves", "next_q"}``; ``key`` is the SHA-256 of the
  48-byte public key, so a state file copied from another key is refused. ``next_q`` is the
  first leaf never handed out. It only ever grows.
* ``K.lock`` -- an empty file; ``flock(LOCK_EX)`` on it serialises reservations across processes.
* ``K.tree`` -- the tree cache: magic, the key's SHA-256, the height, every node T[1..2^(h+1)-1]
  (24 bytes each) and a SHA-256 over all of it. A cache whose magic, key, length, checksum or
  root does not match is ignored and rebuilt, never used.

Reserving leaf q: lock; read ``next_q``; refuse if the tree is exhausted; write ``q + 1`` to a
temporary file, fsync, rename over the state file, fsync the directory; unlock. Only then is the
signature for q computed and released, so a crash at any point can skip a leaf but never reuse
one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import logging
import os
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from .errors import KeyFileError, LmsStateError
from .fileio import atomic_write
from .lms import (
    D_INTR,
    D_LEAF,
    D_PBLC,
    LMOTS_PARAMS,
    LmsPrivateKey,
    LmsPublicKey,
    N,
    auth_path,
    height,
    load_private,
    load_public,
    sparse_root,
)

log = logging.getLogger("imgtool")

STATE_FORMAT = "cptra-imgtool-lms-state-1"
CACHE_MAGIC = b"CPTRA-LMS-TREE1\n"
Progress = Callable[[int, int], None]


def state_path(priv: str | Path) -> Path:
    p = Path(priv)
    return p.with_name(p.name + ".state")


def cache_path(priv: str | Path) -> Path:
    p = Path(priv)
    return p.with_name(p.name + ".tree")


def lock_path(priv: str | Path) -> Path:
    p = Path(priv)
    return p.with_name(p.name + ".lock")


def key_tag(pub: LmsPublicKey) -> bytes:
    return hashlib.sha256(pub.to_bytes()).digest()


# ---------------------------------------------------------------------------- state
@contextlib.contextmanager
def locked(priv: str | Path) -> Iterator[None]:
    fd = os.open(lock_path(priv), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def read_state(priv: str | Path, pub: LmsPublicKey) -> int:
    """next_q of a key's state file. Raises LmsStateError if missing, corrupt or foreign."""
    sp = state_path(priv)
    try:
        data = json.loads(sp.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LmsStateError(f"{sp}: LMS state file not found") from None
    except (OSError, ValueError) as exc:
        raise LmsStateError(f"{sp}: unreadable LMS state file ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        raise LmsStateError(f"{sp}: not a cptra-imgtool LMS state file")
    if data.get("key") != key_tag(pub).hex():
        raise LmsStateError(f"{sp}: state file belongs to another LMS key")
    next_q = data.get("next_q")
    if not isinstance(next_q, int) or not 0 <= next_q <= (1 << pub.height):
        raise LmsStateError(f"{sp}: invalid next_q {next_q!r}")
    return next_q


def write_state(priv: str | Path, pub: LmsPublicKey, next_q: int) -> None:
    doc = {
        "format": STATE_FORMAT,
        "key": key_tag(pub).hex(),
        "leaves": 1 << pub.height,
        "next_q": next_q,
    }
    atomic_write(state_path(priv), (json.dumps(doc, indent=1) + "\n").encode(), mode=0o600)


def reserve(priv: str | Path, pub: LmsPublicKey, count: int = 1) -> int:
    """Durably reserve ``count`` consecutive leaves; returns the first."""
    with locked(priv):
        q = read_state(priv, pub)
        total = 1 << pub.height
        if q + count > total:
            raise LmsStateError(
                f"{priv}: LMS key exhausted ({q} of {total} one-time leaves used); "
                "generate a new key"
            )
        write_state(priv, pub, q + count)
    return q


def status(priv: str | Path, pub: LmsPublicKey) -> tuple[int, int]:
    """(leaves used, leaves in the tree)."""
    return read_state(priv, pub), 1 << pub.height


# ---------------------------------------------------------------------------- tree
def _fast_sha256() -> Callable[[bytes | bytearray], Any]:
    """CPython's built-in SHA-256: for the 47-byte bytes inputs of the LM-OTS chains it is about
    twice as fast per call as OpenSSL's through hashlib (measured: 0.43 vs 0.92 ms per H15/W4
    leaf). Same function; falls back to hashlib where the module is missing."""
    for name in ("_sha2", "_sha256"):  # Python >= 3.12, 3.11
        try:
            fn: Callable[[bytes | bytearray], Any] = importlib.import_module(name).sha256
        except (ImportError, AttributeError):
            continue
        return fn
    return hashlib.sha256


_J = [bytes((j,)) for j in range(256)]


def _leaf_chunk(args: tuple[bytes, bytes, int, int, int, int]) -> list[bytes]:
    """Leaf nodes T[2^h + q] for q in [start, end). Module-level so process pools can run it."""
    ident, seed, ots_type, h, start, end = args
    sha = _fast_sha256()
    w, p, _ = LMOTS_PARAMS[ots_type]
    js = _J[: (1 << w) - 1]
    out = []
    for q in range(start, end):
        prefix = ident + struct.pack(">I", q)
        ys = []
        for i in range(p):
            pi = prefix + struct.pack(">H", i)
            tmp = sha(pi + b"\xff" + seed).digest()[:N]
            for j in js:
                tmp = sha(pi + j + tmp).digest()[:N]
            ys.append(tmp)
        k = sha(prefix + D_PBLC + b"".join(ys)).digest()[:N]
        out.append(sha(ident + struct.pack(">I", (1 << h) + q) + D_LEAF + k).digest()[:N])
    return out


def compute_tree(
    key: LmsPrivateKey, workers: int | None = None, progress: Progress | None = None
) -> list[bytes]:
    """Every node of the full tree (index = node number, index 0 unused)."""
    h = key.height
    leaves_n = 1 << h
    workers = workers or os.cpu_count() or 1
    chunk = max(1, min(256, leaves_n // (workers * 8) or 1))
    jobs = [
        (key.I, key.seed, key.ots_type, h, s, min(s + chunk, leaves_n))
        for s in range(0, leaves_n, chunk)
    ]
    leaves: list[bytes] = []
    if workers == 1 or len(jobs) == 1:
        for job in jobs:
            leaves += _leaf_chunk(job)
            if progress:
                progress(len(leaves), leaves_n)
    else:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            for part in ex.map(_leaf_chunk, jobs):
                leaves += part
                if progress:
                    progress(len(leaves), leaves_n)
    nodes = [b""] * (2 * leaves_n)
    nodes[leaves_n:] = leaves
    sha = hashlib.sha256
    ident = key.I
    for r in range(leaves_n - 1, 0, -1):
        nodes[r] = sha(
            ident + struct.pack(">I", r) + D_INTR + nodes[2 * r] + nodes[2 * r + 1]
        ).digest()[:N]
    return nodes


def _cache_bytes(pub: LmsPublicKey, nodes: list[bytes]) -> bytes:
    body = CACHE_MAGIC + key_tag(pub) + struct.pack("<I", pub.height) + b"".join(nodes[1:])
    return body + hashlib.sha256(body).digest()


def write_cache(priv: str | Path, pub: LmsPublicKey, nodes: list[bytes]) -> None:
    atomic_write(cache_path(priv), _cache_bytes(pub, nodes), mode=0o600)


def load_cache(priv: str | Path, pub: LmsPublicKey) -> list[bytes] | None:
    """The cached nodes, or None (with a warning) when the cache is absent or not valid."""
    cp = cache_path(priv)
    try:
        data = cp.read_bytes()
    except FileNotFoundError:
        return None
    h = pub.height
    count = (1 << (h + 1)) - 1
    head = len(CACHE_MAGIC) + 32 + 4
    reason = None
    if len(data) != head + count * N + 32:
        reason = "wrong length"
    elif hashlib.sha256(data[:-32]).digest() != data[-32:]:
        reason = "checksum mismatch (corrupted)"
    elif data[: len(CACHE_MAGIC)] != CACHE_MAGIC:
        reason = "not a tree cache"
    elif data[len(CACHE_MAGIC) : len(CACHE_MAGIC) + 32] != key_tag(pub):
        reason = "built for another key"
    if reason is None:
        nodes = [b""] + [data[head + i * N : head + (i + 1) * N] for i in range(count)]
        if nodes[1] == pub.root:
            return nodes
        reason = "root does not match the public key"
    log.warning("%s: LMS tree cache ignored (%s); rebuilding it", cp, reason)
    return None


_TREES: dict[bytes, list[bytes]] = {}


def get_tree(
    priv: str | Path, key: LmsPrivateKey, pub: LmsPublicKey, progress: Progress | None = None
) -> list[bytes]:
    tag = key_tag(pub)
    if tag in _TREES:
        return _TREES[tag]
    nodes = load_cache(priv, pub)
    if nodes is None:
        nodes = compute_tree(key, progress=progress)
        if nodes[1] != pub.root:
            raise KeyFileError(f"{priv}: LMS private key does not produce the public key's root")
        write_cache(priv, pub, nodes)
    _TREES[tag] = nodes
    return nodes


def sign_full_tree(priv: Path, key: LmsPrivateKey, pub: LmsPublicKey, message: bytes) -> bytes:
    """Reserve the next leaf durably, then sign at it (exact RFC 8554 signature)."""
    nodes = get_tree(priv, key, pub)
    q = reserve(priv, pub)
    return key.sign_at(q, message, auth_path(nodes, key.height, q))


# ---------------------------------------------------------------------------- keygen
def generate(
    prefix: str | Path,
    lms_type: int,
    ots_type: int,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> tuple[Path, Path]:
    """Write PREFIX-prvk.pem (0600), PREFIX-pubk.pem, and the state and cache beside the key."""
    priv_path = Path(f"{prefix}-prvk.pem")
    pub_path = Path(f"{prefix}-pubk.pem")
    for p in (priv_path, pub_path, state_path(priv_path), cache_path(priv_path)):
        if p.exists():
            raise KeyFileError(f"{p}: already exists, refusing to overwrite")
    height(lms_type)  # validates
    key = LmsPrivateKey(lms_type, ots_type, os.urandom(16), os.urandom(N))
    nodes = compute_tree(key, workers=workers, progress=progress)
    pub = LmsPublicKey(lms_type, ots_type, key.I, nodes[1])
    priv_path.parent.mkdir(parents=True, exist_ok=True)
    write_cache(priv_path, pub, nodes)
    write_state(priv_path, pub, 0)
    atomic_write(pub_path, pub.to_bytes())
    atomic_write(priv_path, key.to_bytes(), mode=0o600)
    return priv_path, pub_path


def adopt(
    priv: str | Path,
    key: LmsPrivateKey,
    pub: LmsPublicKey,
    next_q: int,
    progress: Progress | None = None,
) -> None:
    """Start leaf state for a full-tree key generated elsewhere. The caller vouches that no leaf
    below ``next_q`` was ever used; refuses if a state file exists or the root does not match."""
    if state_path(priv).exists():
        raise LmsStateError(f"{state_path(priv)}: already exists; the state is never reset")
    if not 0 <= next_q < (1 << pub.height):
        raise LmsStateError(f"--next-q {next_q}: outside 0..{(1 << pub.height) - 1}")
    if sparse_root(key) == pub.root:
        raise KeyFileError(f"{priv}: a sparse demo key (only leaf 5 is real): nothing to adopt")
    nodes = compute_tree(key, progress=progress)
    if nodes[1] != pub.root:
        raise KeyFileError(f"{priv}: not a full-tree key for this public key (root differs)")
    write_cache(priv, pub, nodes)
    with locked(priv):
        if state_path(priv).exists():
            raise LmsStateError(f"{state_path(priv)}: already exists; the state is never reset")
        write_state(priv, pub, next_q)


def load_pair(
    priv: str | Path, pub: str | Path | None = None
) -> tuple[LmsPrivateKey, LmsPublicKey]:
    priv = Path(priv)
    pub = Path(pub) if pub else priv.with_name(priv.name.replace("prvk", "pubk"))
    return load_private(priv), load_public(pub)
