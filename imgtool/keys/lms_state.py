"""LMS leaf state: two witnesses that only move forward.

1. **The state file** ``K.state`` beside a private key ``K`` (it travels with the key). JSON with
   exactly the fields ``format`` (:data:`STATE_FORMAT`), ``key`` (the key's identity, the hex
   SHA-256 of its 48-byte public key), ``leaves`` (2^h), ``next_q`` (the first leaf never
   handed out, 0..leaves) and ``store`` (the ``store_id`` of the state store it was last used
   with). Parsed strictly: a missing, unknown, mistyped (``true`` is not an integer) or
   out-of-range field is an error naming the file and the field. A file of the first format
   (:data:`STATE_FORMAT_1`, no ``store``) is accepted where the store knows the key and is
   rewritten in the current format at the next reservation; never the other way round.
2. **The state store** (:mod:`imgtool.keys.lms_store`): one row per key identity with its
``next_q`` and
   a log of every signature.

Reserving a leaf, under ``flock`` on ``K.lock`` (serialises the file witness across processes;
a holder that does not let go within :data:`LOCK_TIMEOUT` seconds is an error naming the lock):
read the file; refuse if it names another store; in ONE store transaction take q = max(store
next_q, file next_q) (or the leaf this store already logged for the same message), refuse if the
store has no live row for the key, if it is exhausted or if the log shows q used for a different
message, log q and the message's SHA-256, advance the store to q + 1, commit; then write
``q + 1`` and the store's id to the file (temporary file, fsync, rename, fsync the directory).
Only then is the signature computed and released, so a crash at any point can skip a leaf but
never reuse one. A witness found behind the other is a loud warning naming both values, and it
is moved forward, never back.

A first use of a key on a store is always an explicit act: keygen (:func:`imgtool.keys.lms_tree.
generate`), :func:`init` (``lms-status KEY --init``) or :func:`import_state` (``--import``).
Signing never adopts a key from the state file alone: a key folder copied to another machine,
a fresh CI container or a store path with a typo would otherwise hand out the same leaves again.

This module never imports :mod:`imgtool.keys.lms`; the signer composes the two.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LmsStateError
from ..fileio import atomic_write
from .lms_store import (
    EXPORT_FORMAT,
    EXPORT_FORMATS,
    HELPER,
    LIVE,
    MOVED,
    SIGNERS,
    KeyIdentity,
    KeyMovedError,
    PublicKeyLike,
    SignatureRecord,
    StateStore,
    UnknownKeyError,
)

log = logging.getLogger("imgtool")

STATE_FORMAT_1 = "cptra-imgtool-lms-state-1"
STATE_FORMAT = "cptra-imgtool-lms-state-2"
STATE_FIELDS_1 = ("format", "key", "leaves", "next_q")
STATE_FIELDS = ("format", "key", "leaves", "next_q", "store")
MAX_STATE_BYTES = 4096
MAX_EXPORT_BYTES = 256 << 20
MAX_TIME = 253402300799.0  # 9999-12-31T23:59:59Z: any later "time" is not one
LOCK_TIMEOUT = 30.0  # seconds a signer waits for another holder of K.lock
_STORE_ID = re.compile(r"[0-9a-f]{32}")


def state_path(priv: str | Path) -> Path:
    p = Path(priv)
    return p.with_name(p.name + ".state")


def lock_path(priv: str | Path) -> Path:
    p = Path(priv)
    return p.with_name(p.name + ".lock")


def _identity(key: KeyIdentity | PublicKeyLike) -> KeyIdentity:
    return key if isinstance(key, KeyIdentity) else KeyIdentity.of(key)


def _show(value: object) -> str:
    r = repr(value)
    return r if len(r) <= 40 else r[:37] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_time(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= MAX_TIME
    )


# ---------------------------------------------------------------------------- the lock
@contextlib.contextmanager
def locked(priv: str | Path) -> Iterator[None]:
    """``flock`` on K.lock (a regular file, never followed through a symlink), waiting at most
    :data:`LOCK_TIMEOUT` seconds for another holder."""
    lp = lock_path(priv)
    flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(lp, flags, 0o600)
    except OSError as exc:
        why = "a symlink" if exc.errno == errno.ELOOP else exc.strerror
        raise LmsStateError(f"{lp}: cannot open the lock file ({why})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LmsStateError(f"{lp}: the lock file is not a regular file")
        deadline = time.monotonic() + LOCK_TIMEOUT
        pause = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LmsStateError(
                        f"{lp}: another process has held this LMS key's lock for more than "
                        f"{LOCK_TIMEOUT:g} s (a stopped or hung signer?); refusing to wait longer"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 0.005)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _clean_tmp(priv: Path) -> None:
    """Remove temporary state files a killed writer left (``.K.state.*.tmp``). Only under the
    lock: every state file write but keygen's happens under it."""
    prefix = f".{state_path(priv).name}."
    try:
        with os.scandir(priv.parent) as it:
            stale = [e.path for e in it if e.name.startswith(prefix) and e.name.endswith(".tmp")]
    except OSError:
        return
    for p in stale:
        with contextlib.suppress(OSError):
            os.unlink(p)


# ---------------------------------------------------------------------------- the state file
def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate field {k}")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _load_json(data: bytes, source: Path | str, limit: int) -> Any:
    if len(data) > limit:
        raise LmsStateError(f"{source}: {len(data)} bytes, larger than any valid file ({limit})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise LmsStateError(f"{source}: not UTF-8 text") from None
    try:
        return json.loads(text, object_pairs_hook=_strict_object, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise LmsStateError(
            f"{source}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise LmsStateError(f"{source}: not a valid state file ({exc})") from None


@dataclass(frozen=True)
class StateFile:
    next_q: int
    store_id: str | None  # the store it was last used with (None: a first-format file)
    format: str


def parse_state_file(data: bytes, source: Path | str, ident: KeyIdentity) -> StateFile:
    """A state file's contents; every field checked. Raises LmsStateError."""
    doc = _load_json(data, source, MAX_STATE_BYTES)
    if not isinstance(doc, dict):
        raise LmsStateError(f"{source}: not a JSON object (an LMS state file is one)")
    if "format" not in doc:
        raise LmsStateError(f"{source}: missing field format")
    fmt = doc["format"]
    if fmt not in (STATE_FORMAT, STATE_FORMAT_1):
        raise LmsStateError(f"{source}: field format: {_show(fmt)} is not {STATE_FORMAT!r}")
    fields = STATE_FIELDS if fmt == STATE_FORMAT else STATE_FIELDS_1
    for name in fields:
        if name not in doc:
            raise LmsStateError(f"{source}: missing field {name}")
    for name in doc:
        if name not in fields:
            raise LmsStateError(f"{source}: unknown field {_show(name)}")
    key, leaves, next_q = doc["key"], doc["leaves"], doc["next_q"]
    if not isinstance(key, str):
        raise LmsStateError(f"{source}: field key: {_show(key)} is not a hex string")
    if key != ident.key_id:
        raise LmsStateError(
            f"{source}: field key: state file belongs to another LMS key "
            f"({key[:16]}, this key is {ident.short})"
        )
    if not _is_int(leaves):
        raise LmsStateError(f"{source}: field leaves: {_show(leaves)} is not an integer")
    if leaves != ident.leaves:
        raise LmsStateError(
            f"{source}: field leaves: {leaves}, but the key has {ident.leaves} leaves"
        )
    if not _is_int(next_q):
        raise LmsStateError(f"{source}: field next_q: {_show(next_q)} is not an integer")
    if not 0 <= next_q <= leaves:
        raise LmsStateError(f"{source}: field next_q: {next_q} outside 0..{leaves}")
    store_id = doc.get("store")
    if fmt == STATE_FORMAT and not (isinstance(store_id, str) and _STORE_ID.fullmatch(store_id)):
        raise LmsStateError(f"{source}: field store: {_show(store_id)} is not a store id")
    return StateFile(int(next_q), store_id, fmt)


def parse_state(data: bytes, source: Path | str, ident: KeyIdentity) -> int:
    """next_q of a state file's bytes; every field checked. Raises LmsStateError."""
    return parse_state_file(data, source, ident).next_q


def read_state_file(priv: str | Path, key: KeyIdentity | PublicKeyLike) -> StateFile | None:
    """The state file, or None when there is none. Raises LmsStateError if it is unreadable,
    not a regular file (a FIFO never blocks us) or malformed."""
    sp = state_path(priv)
    try:
        fd = os.open(sp, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LmsStateError(f"{sp}: unreadable LMS state file ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LmsStateError(f"{sp}: not a regular file (an LMS state file is one)")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(MAX_STATE_BYTES + 1)
    except OSError as exc:
        raise LmsStateError(f"{sp}: unreadable LMS state file ({exc.strerror})") from None
    finally:
        os.close(fd)
    return parse_state_file(data, sp, _identity(key))


def read_state_opt(priv: str | Path, key: KeyIdentity | PublicKeyLike) -> int | None:
    """next_q of the state file, or None when there is none. Raises LmsStateError if it is
    unreadable or malformed."""
    sf = read_state_file(priv, key)
    return None if sf is None else sf.next_q


def read_state(priv: str | Path, key: KeyIdentity | PublicKeyLike) -> int:
    """next_q of the state file. Raises LmsStateError if missing or malformed."""
    q = read_state_opt(priv, key)
    if q is None:
        raise LmsStateError(f"{state_path(priv)}: LMS state file not found")
    return q


def write_state(
    priv: str | Path, key: KeyIdentity | PublicKeyLike, next_q: int, store_id: str
) -> None:
    """Write the state file (current format) atomically: next_q and the store it is used with."""
    ident = _identity(key)
    if not _STORE_ID.fullmatch(store_id):
        raise LmsStateError(f"store id {_show(store_id)}: not 32 hex digits")
    doc = {
        "format": STATE_FORMAT,
        "key": ident.key_id,
        "leaves": ident.leaves,
        "next_q": next_q,
        "store": store_id,
    }
    try:
        atomic_write(state_path(priv), (json.dumps(doc, indent=1) + "\n").encode(), mode=0o600)
    except OSError as exc:
        raise LmsStateError(f"{state_path(priv)}: cannot write ({exc.strerror})") from None


# ---------------------------------------------------------------------------- both witnesses
@dataclass(frozen=True)
class Witnesses:
    file: int | None  # the state file's next_q (None: no file)
    store: int | None  # the store row's next_q (None: no row)
    log_size: int
    max_logged_q: int | None
    file_store: str | None = None  # the store id the file names (None: no file or format 1)
    status: str | None = None  # the row's status (live, moved, helper; None: no row)

    @property
    def known(self) -> bool:
        """A witness knows the key: its state file, or a row this store signs with or
        handed off (a helper-only row is not one)."""
        return self.file is not None or (self.store is not None and self.status != HELPER)

    @property
    def next_q(self) -> int:
        """The first leaf neither witness nor the log has seen used."""
        logged = 0 if self.max_logged_q is None else self.max_logged_q + 1
        return max(self.file or 0, self.store or 0, logged)


def witnesses(priv: str | Path, key: KeyIdentity | PublicKeyLike, store: StateStore) -> Witnesses:
    ident = _identity(key)
    sf = read_state_file(priv, ident)
    row = store.get(ident)
    n, mx = (row.log_size, row.max_logged_q) if row else store.log_stats(ident)
    return Witnesses(
        None if sf is None else sf.next_q,
        row.next_q if row else None,
        n,
        mx,
        None if sf is None else sf.store_id,
        row.status if row else None,
    )


def _adopt_hint() -> str:
    return (
        "to move the key here on purpose: `lms-status KEY --state OLD --export F` on the store "
        "it signed with (that store then refuses it) and `lms-status KEY --import F` here; or "
        "adopt it here with `lms-status KEY --init --next-q N` (N above every leaf used anywhere)"
    )


def _other_store(priv: Path, sf: StateFile, store: StateStore) -> LmsStateError:
    return LmsStateError(
        f"{priv}: {state_path(priv).name} was last used with another LMS state store (id "
        f"{str(sf.store_id)[:8]}), not the {store.description} (id {store.store_id[:8]}): a "
        "copied key folder signing through a second store would hand out the same leaves "
        f"again; refusing ({_adopt_hint()})"
    )


def _unknown(priv: Path, sf: StateFile | None, store: StateStore, exc: Exception) -> LmsStateError:
    sp = state_path(priv)
    if sf is None:
        if "sign-helper" in str(exc):
            return LmsStateError(
                f"{priv}: {exc}; refusing to guess a leaf (adopt it with `lms-status KEY --init "
                "--next-q N` or `--init --scan out/*.bin`)"
            )
        return LmsStateError(
            f"{priv}: no leaf state for this full-tree LMS key: neither {sp.name} nor the "
            f"{store.description} knows it; refusing to guess a leaf (run `cptra-imgtool "
            "lms-status KEY --init --next-q N` or `--init --scan out/*.bin`)"
        )
    if sf.store_id == store.store_id:
        why = f"{sp.name} says this store signed with it, but the store has no row for it"
    else:
        why = (
            f"the {store.description} has no record of this key ({sp.name} says next_q "
            f"{sf.next_q}, from a store it does not name)"
        )
    return LmsStateError(
        f"{priv}: {why}: signing never adopts a key from its state file (a copied key folder, "
        f"another machine or a fresh store would fork the leaf counter); refusing ({_adopt_hint()})"
    )


def _report(
    priv: Path, ident: KeyIdentity, store: StateStore, f: int | None, s: int | None, q: int
) -> None:
    sp = state_path(priv)
    where = f"{store.description} (key {ident.short})"
    if f is None and s is not None:
        log.warning("%s: missing; %s says next_q %d; recreated it", sp, where, s)
    elif f is not None and s is not None and s < f:
        log.warning(
            "%s is BEHIND the state file: store next_q %d, %s next_q %d (store restored from "
            "an older copy?); signed at q %d and moved the store forward",
            where, s, sp, f, q,
        )  # fmt: skip
    elif f is not None and s is not None and f < s:
        level = logging.INFO if store.shared else logging.WARNING
        log.log(
            level,
            "%s is BEHIND the store: file next_q %d, %s next_q %d (restored from a backup, "
            "a copied key folder, or another server instance signed); signed at q %d and moved "
            "the file forward",
            sp, f, where, s, q,
        )  # fmt: skip


def reserve(
    priv: str | Path,
    key: KeyIdentity | PublicKeyLike,
    store: StateStore,
    message: bytes,
    *,
    signer: str = "build",
    actor: str | None = None,
) -> int:
    """Durably reserve one leaf for ``message`` in both witnesses; returns q."""
    priv = Path(priv)
    ident = _identity(key)
    msg = hashlib.sha256(message).hexdigest()
    with locked(priv):
        _clean_tmp(priv)
        sf = read_state_file(priv, ident)
        if sf is not None and sf.store_id is not None and sf.store_id != store.store_id:
            raise _other_store(priv, sf, store)
        f = None if sf is None else sf.next_q
        try:
            res = store.reserve(ident, f or 0, msg, signer=signer, actor=actor)
        except KeyMovedError as exc:
            raise LmsStateError(f"{priv}: {exc}") from None
        except UnknownKeyError as exc:
            raise _unknown(priv, sf, store, exc) from None
        _report(priv, ident, store, f, res.store_before, res.q)
        new = max(f or 0, res.next_q)
        if sf is None or sf.next_q != new or sf.store_id != store.store_id:
            write_state(priv, ident, new, store.store_id)
    return res.q


def init(
    priv: str | Path,
    key: KeyIdentity | PublicKeyLike,
    store: StateStore,
    next_q: int,
    *,
    confirm: bool = False,
) -> Witnesses:
    """Explicit adoption/recovery: both witnesses set to ``next_q`` (the file then names this
    store), refusing any value below what the file, the store or its log knows. A key neither
    witness knows, or one this store handed off, needs ``confirm``. Returns the witnesses as
    they were."""
    priv = Path(priv)
    ident = _identity(key)
    if not _is_int(next_q) or not 0 <= next_q <= ident.leaves:
        raise LmsStateError(f"--next-q {_show(next_q)}: outside 0..{ident.leaves}")
    with locked(priv):
        _clean_tmp(priv)
        before = witnesses(priv, ident, store)
        if before.file is not None and next_q < before.file:
            raise LmsStateError(
                f"--next-q {next_q}: {state_path(priv)} says leaves below {before.file} were "
                f"handed out; refusing to go back (use --next-q {before.next_q} or higher)"
            )
        if not confirm and before.status == MOVED:
            raise LmsStateError(
                f"{priv}: the {store.description} handed this key off with --export; signing "
                "with it here again while the store it moved to signs reuses leaves: pass "
                "--confirm-adopt if that store is retired"
            )
        if not confirm and not before.known:
            raise LmsStateError(
                f"{priv}: neither {state_path(priv).name} nor the {store.description} knows "
                f"this key: adopting it at leaf {next_q} promises that no signature by it (in "
                "any image, on any machine) used leaf "
                f"{next_q} or above; a wrong promise reuses leaves: pass --confirm-adopt to make it"
            )
        store.init(ident, next_q)
        write_state(priv, ident, next_q, store.store_id)
    return before


# ---------------------------------------------------------------------------- export / import
@dataclass(frozen=True)
class Export:
    data: bytes
    next_q: int
    handoff: bool  # the source store no longer signs with the key


def export_state(
    priv: str | Path,
    key: KeyIdentity | PublicKeyLike,
    store: StateStore,
    *,
    keep_live: bool = False,
) -> Export:
    """The key's state: next_q (the maximum both witnesses and the log know) and the log.
    A handoff unless ``keep_live``: in the same store transaction that reads the log, the row
    is marked moved, so this store never signs with the key again (a signature it made before
    is in the export; none can come after)."""
    priv = Path(priv)
    ident = _identity(key)
    with locked(priv):
        sf = read_state_file(priv, ident)
        try:
            row, records = store.export_key(ident, retire=not keep_live)
        except UnknownKeyError as exc:
            raise LmsStateError(f"{priv}: {exc}") from None
    logged = 0 if row.max_logged_q is None else row.max_logged_q + 1
    next_q = max(row.next_q, logged, 0 if sf is None else sf.next_q)
    handoff = row.status == MOVED
    doc = {
        "format": EXPORT_FORMAT,
        "key_id": ident.key_id,
        "public_key": ident.public_bytes().hex(),
        "leaves": ident.leaves,
        "next_q": next_q,
        "exported": time.time(),
        "source_store": store.store_id,
        "handoff": handoff,
        "signatures": [r.as_dict() for r in records],
    }
    return Export((json.dumps(doc, indent=1) + "\n").encode(), next_q, handoff)


_EXPORT_FIELDS_1 = ("format", "key_id", "public_key", "leaves", "next_q", "exported", "signatures")
_EXPORT_FIELDS = (*_EXPORT_FIELDS_1, "source_store", "handoff")
_RECORD_FIELDS = ("q", "msg_sha256", "time", "host", "signer", "actor")


@dataclass(frozen=True)
class ExportDoc:
    next_q: int
    records: list[SignatureRecord]
    source_store: str | None  # None: a first-format export (the source store is unknown)
    handoff: bool | None  # None: a first-format export (the source was never retired)


def parse_export_doc(data: bytes, source: str, ident: KeyIdentity) -> ExportDoc:
    """An export file for this key; every field checked."""
    doc = _load_json(data, source, MAX_EXPORT_BYTES)
    if not isinstance(doc, dict):
        raise LmsStateError(f"{source}: not a JSON object")
    if "format" not in doc:
        raise LmsStateError(f"{source}: missing field format")
    if doc["format"] not in EXPORT_FORMATS:
        raise LmsStateError(
            f"{source}: field format: {_show(doc['format'])} is not {EXPORT_FORMAT!r}"
        )
    fields = _EXPORT_FIELDS if doc["format"] == EXPORT_FORMAT else _EXPORT_FIELDS_1
    for name in fields:
        if name not in doc:
            raise LmsStateError(f"{source}: missing field {name}")
    for name in doc:
        if name not in fields:
            raise LmsStateError(f"{source}: unknown field {_show(name)}")
    if doc["key_id"] != ident.key_id or doc["public_key"] != ident.public_bytes().hex():
        raise LmsStateError(
            f"{source}: field key_id: the export is for another LMS key "
            f"({str(doc['key_id'])[:16]}, this key is {ident.short})"
        )
    if not _is_int(doc["leaves"]) or doc["leaves"] != ident.leaves:
        raise LmsStateError(f"{source}: field leaves: {_show(doc['leaves'])} is not {ident.leaves}")
    next_q = doc["next_q"]
    if not _is_int(next_q) or not 0 <= next_q <= ident.leaves:
        raise LmsStateError(f"{source}: field next_q: {_show(next_q)} outside 0..{ident.leaves}")
    if not _is_time(doc["exported"]):
        raise LmsStateError(f"{source}: field exported: {_show(doc['exported'])} is not a time")
    src_store, handoff = doc.get("source_store"), doc.get("handoff")
    if "source_store" in fields:
        if not (isinstance(src_store, str) and _STORE_ID.fullmatch(src_store)):
            raise LmsStateError(
                f"{source}: field source_store: {_show(src_store)} is not a store id"
            )
        if not isinstance(handoff, bool):
            raise LmsStateError(f"{source}: field handoff: {_show(handoff)} is not true or false")
    sigs = doc["signatures"]
    if not isinstance(sigs, list):
        raise LmsStateError(f"{source}: field signatures: not a list")
    records: list[SignatureRecord] = []
    seen: set[int] = set()
    for i, r in enumerate(sigs):
        where = f"{source}: signatures[{i}]"
        if not isinstance(r, dict):
            raise LmsStateError(f"{where}: not an object")
        for name in _RECORD_FIELDS:
            if name not in r:
                raise LmsStateError(f"{where}: missing field {name}")
        for name in r:
            if name not in _RECORD_FIELDS:
                raise LmsStateError(f"{where}: unknown field {_show(name)}")
        q, msg, t, host, signer, actor = (r[n] for n in _RECORD_FIELDS)
        if not _is_int(q) or not 0 <= q < next_q:
            raise LmsStateError(f"{where}: field q: {_show(q)} outside 0..{next_q - 1}")
        if q in seen:
            raise LmsStateError(f"{where}: field q: {q} appears twice")
        seen.add(q)
        if (
            not isinstance(msg, str)
            or len(msg) != 64
            or any(c not in "0123456789abcdef" for c in msg)
        ):
            raise LmsStateError(f"{where}: field msg_sha256: {_show(msg)} is not a SHA-256 in hex")
        if not _is_time(t):
            raise LmsStateError(
                f"{where}: field time: {_show(t)} is not a time (0..{MAX_TIME:.0f})"
            )
        if not isinstance(host, str) or len(host) > 255 or not host.isprintable():
            raise LmsStateError(f"{where}: field host: {_show(host)} is not a host name")
        if signer not in SIGNERS:
            raise LmsStateError(
                f"{where}: field signer: {_show(signer)} is not one of {', '.join(SIGNERS)}"
            )
        if actor is not None and (
            not isinstance(actor, str) or len(actor) > 200 or not actor.isprintable()
        ):
            raise LmsStateError(f"{where}: field actor: {_show(actor)} is not short printable text")
        records.append(SignatureRecord(q, msg, float(t), host, signer, actor))
    return ExportDoc(int(next_q), records, src_store, handoff)


def parse_export(data: bytes, source: str, ident: KeyIdentity) -> tuple[int, list[SignatureRecord]]:
    """(next_q, signature log) of an export file for this key; every field checked."""
    d = parse_export_doc(data, source, ident)
    return d.next_q, d.records


@dataclass(frozen=True)
class Import:
    before: Witnesses
    next_q: int
    source_store: str | None
    handoff: bool | None


def import_state(
    priv: str | Path,
    key: KeyIdentity | PublicKeyLike,
    store: StateStore,
    data: bytes,
    source: str,
    *,
    confirm: bool = False,
) -> Import:
    """Merge an export into the store and the file (which then names this store), refusing to
    go backwards. An export that did not retire its source store (``--keep-live``, or the first
    export format) into a store that does not know the key needs ``confirm``: two live stores
    would hand out the same leaves."""
    priv = Path(priv)
    ident = _identity(key)
    doc = parse_export_doc(data, source, ident)
    with locked(priv):
        _clean_tmp(priv)
        before = witnesses(priv, ident, store)
        if before.file is not None and doc.next_q < before.file:
            raise LmsStateError(
                f"import: {source} says next_q {doc.next_q}, but {state_path(priv)} already "
                f"says {before.file}; refusing to go backwards"
            )
        live_here = before.store is not None and before.status == LIVE
        if not confirm and not doc.handoff and not live_here:
            kind = "made with --keep-live" if doc.handoff is False else "of the first format"
            raise LmsStateError(
                f"import: {source} is an export {kind}: the store it came from was not retired "
                "and may still sign with this key, so two stores would hand out the same "
                "leaves; retire it first (`lms-status KEY --state OLD --export F` without "
                "--keep-live) or pass --confirm-adopt if it no longer signs"
            )
        store.import_key(ident, doc.next_q, doc.records)
        write_state(priv, ident, doc.next_q, store.store_id)
    return Import(before, doc.next_q, doc.source_store, doc.handoff)
