"""Full-tree LMS keys: key generation and the tree cache.

The tree cache ``K.tree`` beside a private key ``K`` holds every node T[1..2^(h+1)-1] (24 bytes
each) after a header (magic, the key's identity ``key_id`` = SHA-256 of the 48-byte public key,
the height) and ends with a SHA-256 over all of it. It is only a cache: a file whose magic,
identity, length, checksum or root does not match is ignored (with a warning) and rebuilt from
the private key, never used. In memory, trees are kept per identity too.

Only the leaf level of a cache file is trusted (after the checks above): the inner nodes are
recomputed from it on load, so a cache that lies about them is noticed and repaired.

Key generation writes the key pair, the cache, the state file beside the key (next_q 0, naming
the store) and the key's row in the state store (:mod:`imgtool.keys.lms_state`,
:mod:`imgtool.keys.lms_store`): the one implicit first use of a key on a store, as nobody else can
hold
it yet.

The leaves are computed by the optional compiled module ``imgtool.keys._lmsfast`` (SHA-NI, AVX2 or
portable C, chosen at run time; threads, as it releases the GIL) or, where it was not built, in
pure Python with worker processes: the same values (tests/test_lms.py compares every backend with
an independent RFC 8554 computation and with hsslms).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import struct
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import ImgtoolError, KeyFileError
from ..fileio import atomic_write
from . import lms_state
from .lms import (
    D_INTR,
    D_LEAF,
    D_PBLC,
    LMOTS_PARAMS,
    LmsPrivateKey,
    LmsPublicKey,
    N,
    build_levels,
    height,
    load_private,
    load_public,
)
from .lms_store import KeyIdentity, StateStore, open_store

log = logging.getLogger("imgtool")

CACHE_MAGIC = b"CPTRA-LMS-TREE1\n"
Progress = Callable[[int, int], None]


def cache_path(priv: str | Path) -> Path:
    p = Path(priv)
    return p.with_name(p.name + ".tree")


def key_tag(pub: LmsPublicKey) -> bytes:
    """The identity as bytes: SHA-256 of the 48-byte public key (= bytes.fromhex(key_id))."""
    return hashlib.sha256(pub.to_bytes()).digest()


# ---------------------------------------------------------------------------- tree
def _load_fast() -> ModuleType | None:
    """The compiled part (imgtool/keys/_lmsfast.c, built by ``pip install``), or None: then every
    node is computed in pure Python (same values, about 30x slower)."""
    try:
        return importlib.import_module("imgtool.keys._lmsfast")
    except ImportError as exc:
        log.debug("LMS: compiled tree computation unavailable (%s); using pure Python", exc)
        return None


_FAST = _load_fast()
# How leaves are computed: compiled with the CPU's SHA extensions ("sha-ni"), with AVX2 vectors
# ("avx2") or in portable C ("c"), or in pure Python. The default is the fastest this machine has.
BACKENDS = ("sha-ni", "avx2", "c", "python")


def backends() -> list[str]:
    """The backends available here, fastest first."""
    if _FAST is None:
        return ["python"]
    return [str(x) for x in _FAST.impls()] + ["python"]


def _fast_sha256() -> Callable[[bytes | bytearray], Any]:
    """CPython's built-in SHA-256 for the pure-Python path (no OpenSSL context per call; on some
    builds faster than hashlib's, on this one about equal: `bench/lms_keygen.py --options`).
    Same function; falls back to hashlib where the module is missing."""
    for name in ("_sha2", "_sha256"):  # Python >= 3.12, 3.11
        try:
            fn: Callable[[bytes | bytearray], Any] = importlib.import_module(name).sha256
        except (ImportError, AttributeError):
            continue
        return fn
    return hashlib.sha256


_J = [bytes((j,)) for j in range(256)]
LeafJob = tuple[bytes, bytes, int, int, int, int]


def _leaf_chunk(args: LeafJob) -> list[bytes]:
    """Leaf nodes T[2^h + q] for q in [start, end), pure Python. Module-level so process pools
    can run it."""
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


def _compiled_leaves(fast: ModuleType, impl: str) -> Callable[[LeafJob], bytes]:
    def run(job: LeafJob) -> bytes:
        ident, seed, ots_type, h, start, end = job
        w, p, _ = LMOTS_PARAMS[ots_type]
        out: bytes = fast.leaves(ident, seed, w, p, h, start, end, impl=impl)
        return out

    return run


def compute_tree(
    key: LmsPrivateKey,
    workers: int | None = None,
    progress: Progress | None = None,
    backend: str | None = None,
) -> list[bytes]:
    """Every node of the full tree (index = node number, index 0 unused).

    ``workers`` leaf computations run at once (default: one per CPU): threads for the compiled
    backends (they release the GIL), processes for pure Python. ``progress(done, total)`` is
    called with the leaves done, from this thread."""
    have = backends()
    backend = backend or have[0]
    if backend not in have:
        raise ImgtoolError(f"LMS backend {backend!r}: not available here ({', '.join(have)} are)")
    h = key.height
    leaves_n = 1 << h
    workers = workers or os.cpu_count() or 1
    chunk = max(1, min(256, leaves_n // (workers * 8) or 1))
    jobs = [
        (key.I, key.seed, key.ots_type, h, s, min(s + chunk, leaves_n))
        for s in range(0, leaves_n, chunk)
    ]
    done = 0
    parts: list[bytes] = []
    leaves: list[bytes] = []

    def note(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, leaves_n)

    if backend != "python":
        assert _FAST is not None
        run = _compiled_leaves(_FAST, backend)
        if workers == 1 or len(jobs) == 1:
            for job in jobs:
                parts.append(run(job))
                note(job[5] - job[4])
        else:
            # an exception here (Ctrl-C) closes map's iterator, which cancels the queued chunks
            with ThreadPoolExecutor(max_workers=workers) as tx:
                for job, part in zip(jobs, tx.map(run, jobs), strict=True):
                    parts.append(part)
                    note(job[5] - job[4])
        flat = _FAST.tree(key.I, b"".join(parts), impl=backend)
        return [b""] + [flat[i : i + N] for i in range(N, len(flat), N)]
    if workers == 1 or len(jobs) == 1:
        for job in jobs:
            leaves += _leaf_chunk(job)
            note(job[5] - job[4])
    else:
        with ProcessPoolExecutor(max_workers=workers) as px:
            for job, chunk_leaves in zip(jobs, px.map(_leaf_chunk, jobs), strict=True):
                leaves += chunk_leaves
                note(job[5] - job[4])
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


def _tree_from_leaves(ident: bytes, h: int, leaves: bytes) -> bytes:
    """Every node T[1..2^(h+1)-1] recomputed from the leaf level (node r at offset 24 r; the
    first 24 bytes unused)."""
    if _FAST is not None:
        flat: bytes = _FAST.tree(ident, leaves)
        return flat
    nodes = build_levels(ident, h, [leaves[i : i + N] for i in range(0, len(leaves), N)])
    return bytes(N) + b"".join(nodes[1:])


def load_cache(priv: str | Path, pub: LmsPublicKey) -> list[bytes] | None:
    """The cached nodes, or None (with a warning) when the cache is absent or not valid. Only
    the leaf level is taken from the file: every inner node is recomputed from it, so a cache
    whose inner nodes lie (checksum recomputed) can neither hide used leaves from ``--scan`` nor
    make signatures that do not verify; one whose leaves lie does not give the root."""
    cp = cache_path(priv)
    h = pub.height
    count = (1 << (h + 1)) - 1
    head = len(CACHE_MAGIC) + 32 + 4
    want = head + count * N + 32
    try:
        with open(cp, "rb") as fh:
            data = fh.read(want + 1)  # never read more than a valid cache holds
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("%s: LMS tree cache unreadable (%s); rebuilding it", cp, exc.strerror)
        return None
    reason = None
    if len(data) != want:
        reason = "wrong length"
    elif hashlib.sha256(data[:-32]).digest() != data[-32:]:
        reason = "checksum mismatch (corrupted)"
    elif data[: len(CACHE_MAGIC)] != CACHE_MAGIC:
        reason = "not a tree cache"
    elif data[len(CACHE_MAGIC) : len(CACHE_MAGIC) + 32] != key_tag(pub):
        reason = "built for another key"
    elif struct.unpack_from("<I", data, len(CACHE_MAGIC) + 32)[0] != h:
        reason = "wrong height"
    if reason is None:
        body = data[head : head + count * N]
        flat = _tree_from_leaves(pub.I, h, body[((1 << h) - 1) * N :])
        if flat[N : 2 * N] == pub.root:
            nodes = [b""] + [flat[i : i + N] for i in range(N, len(flat), N)]
            if flat[N:] != body:
                log.warning(
                    "%s: LMS tree cache: inner nodes do not match its leaves (tampered?); "
                    "recomputed them from the leaves and rewrote the cache",
                    cp,
                )
                write_cache(priv, pub, nodes)
            return nodes
        reason = "its leaves do not give the public key's root"
    log.warning("%s: LMS tree cache ignored (%s); rebuilding it", cp, reason)
    return None


_TREES: dict[bytes, list[bytes]] = {}


def get_tree(
    priv: str | Path, key: LmsPrivateKey, pub: LmsPublicKey, progress: Progress | None = None
) -> list[bytes]:
    """The key's full tree: from memory (per identity), the verified cache, or recomputed (and
    the cache rewritten)."""
    tag = key_tag(pub)
    if tag in _TREES:
        return _TREES[tag]
    nodes = load_cache(priv, pub)
    if nodes is None:
        nodes = _compute_checked(priv, key, pub, progress)
    _TREES[tag] = nodes
    return nodes


def _compute_checked(
    priv: str | Path, key: LmsPrivateKey, pub: LmsPublicKey, progress: Progress | None
) -> list[bytes]:
    nodes = compute_tree(key, progress=progress)
    if nodes[1] != pub.root:
        raise KeyFileError(f"{priv}: LMS private key does not produce the public key's root")
    write_cache(priv, pub, nodes)
    return nodes


def rebuild_tree(
    priv: str | Path, key: LmsPrivateKey, pub: LmsPublicKey, progress: Progress | None = None
) -> list[bytes]:
    """Drop the tree from memory and the cache file, and compute it from the private key."""
    _TREES.pop(key_tag(pub), None)
    try:
        cache_path(priv).unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise KeyFileError(f"{cache_path(priv)}: cannot remove ({exc.strerror})") from None
    nodes = _compute_checked(priv, key, pub, progress)
    _TREES[key_tag(pub)] = nodes
    return nodes


# ---------------------------------------------------------------------------- keygen
def generate(
    prefix: str | Path,
    lms_type: int,
    ots_type: int,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
    store: StateStore | str | None = None,
    backend: str | None = None,
) -> tuple[Path, Path]:
    """Write PREFIX-prvk.pem (0600), PREFIX-pubk.pem, the tree cache and the state file beside
    the key, and register the key (next_q 0) in the state store."""
    priv_path = Path(f"{prefix}-prvk.pem")
    pub_path = Path(f"{prefix}-pubk.pem")
    for p in (priv_path, pub_path, lms_state.state_path(priv_path), cache_path(priv_path)):
        if p.exists():
            raise KeyFileError(f"{p}: already exists, refusing to overwrite")
    height(lms_type)  # validates
    st = store if isinstance(store, StateStore) else open_store(store)
    key = LmsPrivateKey(lms_type, ots_type, os.urandom(16), os.urandom(N))
    nodes = compute_tree(key, workers=workers, progress=progress, backend=backend)
    pub = LmsPublicKey(lms_type, ots_type, key.I, nodes[1])
    priv_path.parent.mkdir(parents=True, exist_ok=True)
    write_cache(priv_path, pub, nodes)
    ident = KeyIdentity.of(pub)
    st.register(ident)
    lms_state.write_state(priv_path, ident, 0, st.store_id)
    atomic_write(pub_path, pub.to_bytes())
    atomic_write(priv_path, key.to_bytes(), mode=0o600)
    return priv_path, pub_path


def load_pair(
    priv: str | Path, pub: str | Path | None = None
) -> tuple[LmsPrivateKey, LmsPublicKey]:
    priv = Path(priv)
    pub = Path(pub) if pub else priv.with_name(priv.name.replace("prvk", "pubk"))
    key, pk = load_private(priv), load_public(pub)
    if (pk.lms_type, pk.ots_type, pk.I) != (key.lms_type, key.ots_type, key.I):
        raise KeyFileError(f"{priv}: LMS private key does not match {pub}")
    return key, pk
