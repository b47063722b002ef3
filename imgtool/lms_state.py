"""LMS leaf state: two witnesses that only move forward.

1. **The state file** ``K.state`` beside a private key ``K`` (it travels with the key). JSON with
   exactly the fields ``format`` (:data:`STATE_FORMAT`), ``key`` (the key's identity, the hex
   SHA-256 of its 48-byte public key), ``leaves`` (2^h) and ``next_q`` (the first leaf never
   handed out, 0..leaves). Parsed strictly: a missing, unknown, mistyped (``true`` is not an
   integer) or out-of-range field is an error naming the file and the field.
2. **The state store** (:mod:`imgtool.store`): one row per key identity with its ``next_q`` and
   a log of every signature.

Reserving a leaf, under ``flock`` on ``K.lock`` (serialises the file witness across processes):
read the file; in ONE store transaction take q = max(store next_q, file next_q), refuse if the
key is exhausted or the log shows q used for a different message, log q and the message's
SHA-256, advance the store to q + 1, commit; then write ``q + 1`` to the file (temporary file,
fsync, rename, fsync the directory). Only then is the signature computed and released, so a
crash at any point can skip a leaf but never reuse one. A witness found behind the other is a
loud warning naming both values, and it is moved forward, never back. A key that neither
witness knows is refused until ``lms-status KEY --init`` adopts it explicitly.

This module never imports :mod:`imgtool.lms`; the signer composes the two.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LmsStateError
from .fileio import atomic_write
from .store import (
    EXPORT_FORMAT,
    SIGNERS,
    KeyIdentity,
    PublicKeyLike,
    SignatureRecord,
    StateStore,
    UnknownKeyError,
)

log = logging.getLogger("imgtool")

STATE_FORMAT = "cptra-imgtool-lms-state-1"
STATE_FIELDS = ("format", "key", "leaves", "next_q")
MAX_STATE_BYTES = 4096
MAX_EXPORT_BYTES = 256 << 20


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


# ---------------------------------------------------------------------------- the state file
@contextlib.contextmanager
def locked(priv: str | Path) -> Iterator[None]:
    try:
        fd = os.open(lock_path(priv), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise LmsStateError(
            f"{lock_path(priv)}: cannot open the lock file ({exc.strerror})"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


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


def parse_state(data: bytes, source: Path | str, ident: KeyIdentity) -> int:
    """next_q of a state file's bytes; every field checked. Raises LmsStateError."""
    doc = _load_json(data, source, MAX_STATE_BYTES)
    if not isinstance(doc, dict):
        raise LmsStateError(f"{source}: not a JSON object (an LMS state file is one)")
    for name in STATE_FIELDS:
        if name not in doc:
            raise LmsStateError(f"{source}: missing field {name}")
    for name in doc:
        if name not in STATE_FIELDS:
            raise LmsStateError(f"{source}: unknown field {_show(name)}")
    fmt, key, leaves, next_q = (doc[n] for n in STATE_FIELDS)
    if fmt != STATE_FORMAT:
        raise LmsStateError(f"{source}: field format: {_show(fmt)} is not {STATE_FORMAT!r}")
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
    return int(next_q)


def read_state_opt(priv: str | Path, key: KeyIdentity | PublicKeyLike) -> int | None:
    """next_q of the state file, or None when there is none. Raises LmsStateError if it is
    unreadable or malformed."""
    sp = state_path(priv)
    try:
        with open(sp, "rb") as fh:
            data = fh.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LmsStateError(f"{sp}: unreadable LMS state file ({exc.strerror})") from None
    return parse_state(data, sp, _identity(key))


def read_state(priv: str | Path, key: KeyIdentity | PublicKeyLike) -> int:
    """next_q of the state file. Raises LmsStateError if missing or malformed."""
    q = read_state_opt(priv, key)
    if q is None:
        raise LmsStateError(f"{state_path(priv)}: LMS state file not found")
    return q


def write_state(priv: str | Path, key: KeyIdentity | PublicKeyLike, next_q: int) -> None:
    ident = _identity(key)
    doc = {"format": STATE_FORMAT, "key": ident.key_id, "leaves": ident.leaves, "next_q": next_q}
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

    @property
    def known(self) -> bool:
        return self.file is not None or self.store is not None

    @property
    def next_q(self) -> int:
        """The first leaf neither witness nor the log has seen used."""
        logged = 0 if self.max_logged_q is None else self.max_logged_q + 1
        return max(self.file or 0, self.store or 0, logged)


def witnesses(priv: str | Path, key: KeyIdentity | PublicKeyLike, store: StateStore) -> Witnesses:
    ident = _identity(key)
    f = read_state_opt(priv, ident)
    row = store.get(ident)
    n, mx = (row.log_size, row.max_logged_q) if row else store.log_stats(ident)
    return Witnesses(f, row.next_q if row else None, n, mx)


def _report(
    priv: Path, ident: KeyIdentity, store: StateStore, f: int | None, s: int | None, q: int
) -> None:
    sp = state_path(priv)
    where = f"{store.description} (key {ident.short})"
    if s is None and f is not None:
        log.warning("%s had no record of LMS key %s; adopted next_q %d from %s", where, priv, f, sp)
    elif f is None and s is not None:
        log.warning("%s: missing; %s says next_q %d; recreated it at %d", sp, where, s, q + 1)
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
        f = read_state_opt(priv, ident)
        try:
            res = store.reserve(
                ident, f or 0, msg, signer=signer, actor=actor, create=f is not None
            )
        except UnknownKeyError:
            raise LmsStateError(
                f"{priv}: no leaf state for this full-tree LMS key: neither "
                f"{state_path(priv).name} nor the {store.description} knows it; refusing to "
                "guess a leaf (run `cptra-imgtool lms-status KEY --init --next-q N` or "
                "`--init --scan out/*.bin`)"
            ) from None
        _report(priv, ident, store, f, res.store_before, res.q)
        write_state(priv, ident, res.q + 1)
    return res.q


def init(
    priv: str | Path, key: KeyIdentity | PublicKeyLike, store: StateStore, next_q: int
) -> Witnesses:
    """Explicit adoption/recovery: both witnesses set to ``next_q``, refusing any value below
    what the file, the store or its log knows. Returns the witnesses as they were."""
    priv = Path(priv)
    ident = _identity(key)
    if not _is_int(next_q) or not 0 <= next_q <= ident.leaves:
        raise LmsStateError(f"--next-q {_show(next_q)}: outside 0..{ident.leaves}")
    with locked(priv):
        before = witnesses(priv, ident, store)
        if before.file is not None and next_q < before.file:
            raise LmsStateError(
                f"--next-q {next_q}: {state_path(priv)} says leaves below {before.file} were "
                f"handed out; refusing to go back (use --next-q {before.next_q} or higher)"
            )
        store.init(ident, next_q)
        write_state(priv, ident, next_q)
    return before


# ---------------------------------------------------------------------------- export / import
def export_state(priv: str | Path, key: KeyIdentity | PublicKeyLike, store: StateStore) -> bytes:
    """The key's state (next_q = the maximum both witnesses and the log know, and the log)."""
    ident = _identity(key)
    with locked(priv):
        w = witnesses(priv, ident, store)
        if not w.known:
            raise LmsStateError(f"{priv}: no leaf state to export (neither file nor store)")
        records = store.signatures(ident) if w.store is not None else []
    doc = {
        "format": EXPORT_FORMAT,
        "key_id": ident.key_id,
        "public_key": ident.public_bytes().hex(),
        "leaves": ident.leaves,
        "next_q": w.next_q,
        "exported": time.time(),
        "signatures": [r.as_dict() for r in reversed(records)],
    }
    return (json.dumps(doc, indent=1) + "\n").encode()


_EXPORT_FIELDS = ("format", "key_id", "public_key", "leaves", "next_q", "exported", "signatures")
_RECORD_FIELDS = ("q", "msg_sha256", "time", "host", "signer", "actor")


def parse_export(data: bytes, source: str, ident: KeyIdentity) -> tuple[int, list[SignatureRecord]]:
    """(next_q, signature log) of an export file for this key; every field checked."""
    doc = _load_json(data, source, MAX_EXPORT_BYTES)
    if not isinstance(doc, dict):
        raise LmsStateError(f"{source}: not a JSON object")
    for name in _EXPORT_FIELDS:
        if name not in doc:
            raise LmsStateError(f"{source}: missing field {name}")
    for name in doc:
        if name not in _EXPORT_FIELDS:
            raise LmsStateError(f"{source}: unknown field {_show(name)}")
    if doc["format"] != EXPORT_FORMAT:
        raise LmsStateError(
            f"{source}: field format: {_show(doc['format'])} is not {EXPORT_FORMAT!r}"
        )
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
    if not isinstance(doc["exported"], int | float) or isinstance(doc["exported"], bool):
        raise LmsStateError(f"{source}: field exported: {_show(doc['exported'])} is not a time")
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
        if not isinstance(t, int | float) or isinstance(t, bool) or t < 0:
            raise LmsStateError(f"{where}: field time: {_show(t)} is not a time")
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
    return int(next_q), records


def import_state(
    priv: str | Path, key: KeyIdentity | PublicKeyLike, store: StateStore, data: bytes, source: str
) -> tuple[Witnesses, int]:
    """Merge an export into the store and the file, refusing to go backwards. Returns the
    witnesses as they were and the imported next_q."""
    priv = Path(priv)
    ident = _identity(key)
    next_q, records = parse_export(data, source, ident)
    with locked(priv):
        before = witnesses(priv, ident, store)
        if before.file is not None and next_q < before.file:
            raise LmsStateError(
                f"import: {source} says next_q {next_q}, but {state_path(priv)} already says "
                f"{before.file}; refusing to go backwards"
            )
        store.import_key(ident, next_q, records)
        write_state(priv, ident, next_q)
    return before, next_q
