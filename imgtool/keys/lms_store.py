"""The LMS leaf-state store: one row per key identity and a log of every signature.

A key's identity is its RFC 8554 public key string (LMS type, LM-OTS type, I, root); its
``key_id`` is the SHA-256 of those 48 bytes. Where the key file lies never matters, so a copied
key folder, a moved project or a second signing server all meet the same row. Two rows with the
same (LMS type, LM-OTS type, I) but different roots are refused: one of the two public key files
is wrong (a private key's public key re-derived as the sparse demo root, say).

Every store has a random ``store_id`` (``cptra_meta``), written into the state file beside each
key (:mod:`imgtool.keys.lms_state`), so that a key folder carried to another store is noticed.

Locations (:func:`resolve_location`, checked by :func:`check_location`): an explicit ``--state``
value, else ``CPTRA_IMGTOOL_STATE``, else ``$XDG_STATE_HOME/cptra-imgtool/lms-state.sqlite3``
(``~/.local/state`` when XDG_STATE_HOME is unset or not absolute). A value is an ABSOLUTE SQLite
file path (an existing directory means ``DIR/lms-state.sqlite3``), ``sqlite:///ABSOLUTE/PATH``,
or ``postgresql://...`` / ``postgres://...`` (psycopg 3) for signing-server fleets that share one
counter. Anything else is refused, never taken for a relative path: a relative store would be a
new, empty one in whatever directory a command runs from, and a mistyped PostgreSQL URL
(``postgresql:/...``, ``postgres:PW@host``, libpq's ``host=... password=...``) would become a
file named after the password.

Signing never creates a store (:func:`open_store` with ``create=False``); keygen,
``lms-status --init`` and ``--import`` do.

Tables (schema version :data:`SCHEMA_VERSION`, migrated forward on open, never backward):

* ``lms_keys``: key_id, the identity fields, ``leaves`` (2^h), ``next_q`` (the first leaf never
  reserved; only grows) and ``status``: ``live`` (signs), ``moved`` (handed off by
  ``lms-status --export``: refuses to sign) or ``helper`` (only sign-helper signatures of it are
  logged here: refuses to sign until adopted).
* ``lms_signatures``: (key_id, q) unique, SHA-256 of the signed message, time, host, signer
  (build, server, helper), actor (free text, e.g. ``token:<id>``) and ``imported`` (1: merged
  from an export; never counted for quotas).

:meth:`StateStore.reserve` is one transaction (SQLite ``BEGIN IMMEDIATE``; PostgreSQL
``SELECT ... FOR UPDATE`` on the key's row) that picks the leaf, logs it and advances the
counter; it is committed (SQLite: WAL with ``synchronous=FULL``, i.e. fsynced) before it returns,
so before any signature for that leaf exists. When a build asks for a leaf and the last leaf
reserved was a build's for the same message (not imported, and nothing since: no other signature,
no ``--init`` or import moved the counter), that leaf is handed out again: the signature is
deterministic (:mod:`imgtool.keys.lms`: the nonce is derived from the seed, q and the message), so
it
is the same signature, and retrying a failed build does not burn a leaf each time. An older
entry is never reused: after an adoption, a leaf below the counter may have been used elsewhere.

This module knows nothing about LMS arithmetic and imports nothing from :mod:`imgtool.keys.lms`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import socket
import sqlite3
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..errors import LmsStateError

log = logging.getLogger("imgtool")

ENV = "CPTRA_IMGTOOL_STATE"
_HOST = socket.gethostname()
DB_NAME = "lms-state.sqlite3"
SCHEMA_VERSION = 3
SIGNERS = ("build", "server", "helper")
# a build retried after a failure signs the same message again: the last leaf, if it was a
# build's for that message, is handed out again (LmsSigner's signature is deterministic). Server
# requests are independent (each is logged and counted for quotas): never.
_RETRY_SIGNERS = ("build",)
EXPORT_FORMAT = "cptra-imgtool-lms-export-2"
EXPORT_FORMATS = ("cptra-imgtool-lms-export-1", EXPORT_FORMAT)
MAX_ACTOR = 200
LIVE, MOVED, HELPER = "live", "moved", "helper"
STATUSES = (LIVE, MOVED, HELPER)
_STORE_ID = re.compile(r"[0-9a-f]{32}")
T = TypeVar("T")


class PublicKeyLike(Protocol):
    """What an identity is made from (an :class:`imgtool.keys.lms.LmsPublicKey` fits)."""

    @property
    def lms_type(self) -> int: ...
    @property
    def ots_type(self) -> int: ...
    @property
    def I(self) -> bytes: ...  # noqa: E743 - RFC 8554's name
    @property
    def root(self) -> bytes: ...
    @property
    def height(self) -> int: ...


class UnknownKeyError(LmsStateError):
    """The store has no live row for a key (never adopted here, or only helper signatures)."""


class KeyMovedError(LmsStateError):
    """The key was handed off to another store (``lms-status --export``): this one refuses."""


class StoreMissingError(LmsStateError):
    """A SQLite store that does not exist was opened without ``create``."""


@dataclass(frozen=True)
class KeyIdentity:
    lms_type: int
    ots_type: int
    ident: bytes
    root: bytes
    leaves: int

    @classmethod
    def of(cls, pub: PublicKeyLike) -> KeyIdentity:
        return cls(pub.lms_type, pub.ots_type, bytes(pub.I), bytes(pub.root), 1 << pub.height)

    def public_bytes(self) -> bytes:
        return struct.pack(">II", self.lms_type, self.ots_type) + self.ident + self.root

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.public_bytes()).hexdigest()

    @property
    def short(self) -> str:
        return self.key_id[:16]


@dataclass(frozen=True)
class SignatureRecord:
    q: int
    msg_sha256: str
    time: float
    host: str
    signer: str
    actor: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "q": self.q,
            "msg_sha256": self.msg_sha256,
            "time": self.time,
            "host": self.host,
            "signer": self.signer,
            "actor": self.actor,
        }


@dataclass(frozen=True)
class KeyRow:
    next_q: int
    leaves: int
    log_size: int
    max_logged_q: int | None  # highest q in the signature log (None: empty log)
    status: str = LIVE


@dataclass(frozen=True)
class Reservation:
    q: int
    store_before: int | None  # the row's next_q before this reservation
    next_q: int  # the row's next_q after it (q + 1, or more when the leaf was reused)
    reused: bool = False  # the message was already logged at q: the same signature again


# ------------------------------------------------------------------------------- locations
def default_location() -> Path:
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "cptra-imgtool" / DB_NAME


def resolve_location(explicit: str | os.PathLike[str] | None = None) -> str:
    """The store location to use: explicit value, else $CPTRA_IMGTOOL_STATE, else the default."""
    return _resolve(explicit)[0]


def _resolve(explicit: str | os.PathLike[str] | None) -> tuple[str, str]:
    """(location, where it came from: for messages)."""
    if explicit is not None and str(explicit) != "":
        return str(explicit), "--state"
    env = os.environ.get(ENV, "")
    if env:
        return env, ENV
    return str(default_location()), "the default LMS state store location"


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,19}")


def check_location(location: str, source: str = "LMS state store") -> str:
    """The location in canonical form (``postgresql://...`` as given, a SQLite file as an
    absolute path), or LmsStateError. A refused value is shown only when it cannot hold a
    password."""
    hidden = "(the value is not shown: it may hold a password)"
    if _is_postgres(location):
        return location
    low = location.lower()
    if low.startswith("postgres"):
        raise LmsStateError(
            f"{source}: a mistyped PostgreSQL URL: write postgresql://USER:PASSWORD@HOST:PORT/DB "
            f"{hidden}"
        )
    if location.startswith("sqlite:///"):
        p = Path(location[len("sqlite://") :])
    elif low.startswith("sqlite:"):
        shown = location if _safe_to_show(location) else "the value"
        raise LmsStateError(f"{source}: {shown}: write a SQLite store as sqlite:///ABSOLUTE/PATH")
    elif "://" in location:
        scheme = location.split("://", 1)[0]
        named = repr(scheme) if _SCHEME.fullmatch(scheme) else "(not shown)"
        raise LmsStateError(
            f"{source}: unsupported LMS state store scheme {named} "
            "(an absolute file path, sqlite:///ABSOLUTE/PATH or postgresql://...)"
        )
    elif "=" in location:
        raise LmsStateError(
            f"{source}: a key=value connection string is not a store location: write "
            f"postgresql://USER:PASSWORD@HOST:PORT/DB {hidden}"
        )
    elif ":" in location.split("/", 1)[0]:
        raise LmsStateError(
            f"{source}: not an absolute path, sqlite:///ABSOLUTE/PATH or postgresql://... URL "
            f"(a ':' before the first '/': a mistyped URL?) {hidden}"
        )
    else:
        p = Path(os.path.expanduser(location))
    if not p.is_absolute():
        shown = repr(location) if _safe_to_show(location) else "the value"
        raise LmsStateError(
            f"{source}: {shown} is a relative path: the store would be a new, separate one in "
            "whatever directory the command runs from; give an absolute path"
        )
    return str(p)


def _safe_to_show(value: str) -> bool:
    return not any(c in value for c in "@:=") and value.isprintable() and len(value) <= 300


def redact(location: str) -> str:
    """A location fit for messages. A PostgreSQL URL keeps its scheme, user name, host, port
    and database; everything between ``://`` and the last ``@`` but the user name is dropped,
    and so is the query string. A URL that does not split unambiguously shows the user only."""
    if not _is_postgres(location):
        return location
    scheme, rest = location.split("://", 1)
    at = rest.rfind("@")
    cred = rest[:at] if at >= 0 else ""
    user = re.split(r"[:/?#@]", cred, maxsplit=1)[0] if cred else ""
    user = user if user.isprintable() and len(user) <= 64 else "?"
    tail = rest[at + 1 :] if at >= 0 else rest
    who = f"{user}@" if user else ""
    if "?" not in rest and "#" not in rest:  # no query: after the last "@" is the host
        return f"{scheme}://{who}{tail}"
    if rest.count("@") <= 1 and not any(c in cred for c in "/?#"):
        return f"{scheme}://{who}{re.split(r'[?#]', tail, maxsplit=1)[0]}"
    return f"{scheme}://{who}<rest of the URL not shown>"


def _is_postgres(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


def _sqlite_path(location: str) -> Path:
    p = Path(check_location(location))
    if p.is_dir():
        p = p / DB_NAME
    return p


def _now(now: float | None) -> float:
    return time.time() if now is None else now


# ------------------------------------------------------------------------------- migrations
# Each entry moves the schema from version i to i + 1. Never edit a released entry: append.
_MIGRATIONS: list[list[str]] = [
    [  # 0 -> 1: the counter and the signature log
        "CREATE TABLE lms_keys ("
        " key_id TEXT PRIMARY KEY, lms_type INTEGER NOT NULL, ots_type INTEGER NOT NULL,"
        " ident TEXT NOT NULL, root TEXT NOT NULL, leaves INTEGER NOT NULL,"
        " next_q INTEGER NOT NULL CHECK (next_q >= 0 AND next_q <= leaves),"
        " created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL)",
        "CREATE TABLE lms_signatures ("
        " key_id TEXT NOT NULL REFERENCES lms_keys (key_id), q INTEGER NOT NULL,"
        " msg_sha256 TEXT NOT NULL, time DOUBLE PRECISION NOT NULL, host TEXT NOT NULL,"
        " signer TEXT NOT NULL, PRIMARY KEY (key_id, q))",
    ],
    [  # 1 -> 2: who asked (the signing server's per-token quotas)
        "ALTER TABLE lms_signatures ADD COLUMN actor TEXT",
        "CREATE INDEX lms_signatures_actor ON lms_signatures (actor, time)",
    ],
    [  # 2 -> 3: handed-off and helper-only rows, imported log entries, lookups by I
        "ALTER TABLE lms_keys ADD COLUMN status TEXT NOT NULL DEFAULT 'live'",
        "ALTER TABLE lms_signatures ADD COLUMN imported INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX lms_keys_by_i ON lms_keys (lms_type, ots_type, ident)",
    ],
]
assert len(_MIGRATIONS) == SCHEMA_VERSION


class _Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


# ------------------------------------------------------------------------------- the store
class StateStore:
    """Base class: the SQL is shared, the dialects differ in placeholders, locking and setup."""

    kind = "abstract"
    shared = False  # True when other machines may advance the same rows (PostgreSQL)
    _for_update = ""
    _db_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, location: str) -> None:
        self.location = location
        self.store_id = ""
        self._lock = threading.RLock()

    # -- dialect hooks
    @contextlib.contextmanager
    def _tx(self) -> Iterator[_Cursor]:  # pragma: no cover - overridden
        raise NotImplementedError
        yield

    def _transact(self, fn: Callable[[_Cursor], T]) -> T:
        """Run ``fn(cursor)`` in one transaction (the PostgreSQL store retries it once when the
        connection turned out dead before COMMIT was sent)."""
        with self._tx() as cur:
            return fn(cur)

    def _sql(self, sql: str) -> str:
        return sql

    def close(self) -> None:  # pragma: no cover - overridden
        pass

    @property
    def description(self) -> str:
        return f"{self.kind} store {redact(self.location)}"

    # -- schema
    def _migrate(self, cur: _Cursor) -> None:
        cur.execute(
            self._sql("CREATE TABLE IF NOT EXISTS cptra_meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        )
        cur.execute(self._sql("SELECT v FROM cptra_meta WHERE k = 'schema_version'"))
        row = cur.fetchone()
        try:
            version = int(row[0]) if row else 0
        except ValueError:
            raise LmsStateError(
                f"{self.description}: schema_version {str(row[0])[:20]!r} is not a number"
            ) from None
        if version > SCHEMA_VERSION:
            raise LmsStateError(
                f"{self.description}: schema version {version} is newer than this "
                f"cptra-imgtool understands ({SCHEMA_VERSION}); upgrade cptra-imgtool"
            )
        if version < 0:
            raise LmsStateError(f"{self.description}: schema_version {version} is invalid")
        for v in range(version, SCHEMA_VERSION):
            for stmt in _MIGRATIONS[v]:
                try:
                    cur.execute(self._sql(stmt))
                except self._db_errors as exc:
                    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                    raise LmsStateError(
                        f"{self.description}: schema_version says {version}, but the tables "
                        f"are not that version (migrating to {v + 1} failed: {reason}); the "
                        "store was edited or damaged: restore it from a backup"
                    ) from None
        if version != SCHEMA_VERSION:
            cur.execute(self._sql("DELETE FROM cptra_meta WHERE k = 'schema_version'"))
            cur.execute(
                self._sql("INSERT INTO cptra_meta (k, v) VALUES ('schema_version', ?)"),
                (str(SCHEMA_VERSION),),
            )
        cur.execute(
            self._sql(
                "INSERT INTO cptra_meta (k, v) VALUES ('store_id', ?) ON CONFLICT (k) DO NOTHING"
            ),
            (secrets.token_hex(16),),
        )
        cur.execute(self._sql("SELECT v FROM cptra_meta WHERE k = 'store_id'"))
        sid = cur.fetchone()[0]
        if not isinstance(sid, str) or not _STORE_ID.fullmatch(sid):
            raise LmsStateError(
                f"{self.description}: cptra_meta store_id {str(sid)[:40]!r} is not 32 hex digits"
            )
        self.store_id = sid

    def schema_version(self) -> int:
        def q(cur: _Cursor) -> int:
            cur.execute(self._sql("SELECT v FROM cptra_meta WHERE k = 'schema_version'"))
            return int(cur.fetchone()[0])

        return self._transact(q)

    # -- reads
    def _row(self, cur: _Cursor, ident: KeyIdentity, lock: bool = False) -> tuple[int, str] | None:
        """(next_q, status) of the key's row, or None."""
        cur.execute(
            self._sql(
                "SELECT next_q, lms_type, ots_type, ident, root, leaves, status FROM lms_keys "
                "WHERE key_id = ?" + (self._for_update if lock else "")
            ),
            (ident.key_id,),
        )
        row = cur.fetchone()
        if row is None:
            return None
        next_q, lt, ot, i_hex, root_hex, leaves, status = row
        if (lt, ot, i_hex, root_hex, leaves) != (
            ident.lms_type,
            ident.ots_type,
            ident.ident.hex(),
            ident.root.hex(),
            ident.leaves,
        ):
            raise LmsStateError(
                f"{self.description}: row for key {ident.short} does not match the key's identity"
            )
        if isinstance(next_q, bool) or not isinstance(next_q, int):
            raise LmsStateError(f"{self.description}: key {ident.short}: next_q is not an integer")
        if not 0 <= next_q <= ident.leaves:
            raise LmsStateError(
                f"{self.description}: key {ident.short}: next_q {next_q} outside 0..{ident.leaves}"
            )
        if status not in STATUSES:
            raise LmsStateError(
                f"{self.description}: key {ident.short}: status {str(status)[:20]!r} is not one "
                f"of {', '.join(STATUSES)}"
            )
        return int(next_q), str(status)

    def _other_roots(self, cur: _Cursor, ident: KeyIdentity) -> list[str]:
        """key_ids of rows with this key's (LMS type, LM-OTS type, I) but another root."""
        cur.execute(
            self._sql(
                "SELECT key_id FROM lms_keys WHERE lms_type = ? AND ots_type = ? AND ident = ?"
                " AND key_id <> ?"
            ),
            (ident.lms_type, ident.ots_type, ident.ident.hex(), ident.key_id),
        )
        return [str(r[0]) for r in cur.fetchall()]

    def _refuse_other_roots(self, cur: _Cursor, ident: KeyIdentity) -> None:
        others = self._other_roots(cur, ident)
        if others:
            raise LmsStateError(
                f"{self.description} knows this private key (LMS type {ident.lms_type}, LM-OTS "
                f"type {ident.ots_type}, I={ident.ident.hex()}) as key {others[0][:16]} with "
                f"another root, not as key {ident.short}: the public key file is wrong (a "
                "full-tree key's public key re-derived as the sparse demo root?); use the "
                "public key that keygen wrote"
            )

    def _log_stats(self, cur: _Cursor, ident: KeyIdentity) -> tuple[int, int | None]:
        cur.execute(
            self._sql("SELECT COUNT(*), MAX(q) FROM lms_signatures WHERE key_id = ?"),
            (ident.key_id,),
        )
        n, mx = cur.fetchone()
        return int(n), (None if mx is None else int(mx))

    def get(self, ident: KeyIdentity) -> KeyRow | None:
        """The key's row (None if the store has never seen this identity)."""

        def q(cur: _Cursor) -> KeyRow | None:
            row = self._row(cur, ident)
            n, mx = self._log_stats(cur, ident)
            return None if row is None else KeyRow(row[0], ident.leaves, n, mx, row[1])

        return self._transact(q)

    def roots_for(self, lms_type: int, ots_type: int, ident: bytes) -> list[bytes]:
        """The roots of every row with this (LMS type, LM-OTS type, I): the public keys this
        store knows for one private key (normally one, or none)."""

        def q(cur: _Cursor) -> list[bytes]:
            cur.execute(
                self._sql(
                    "SELECT root FROM lms_keys WHERE lms_type = ? AND ots_type = ? AND ident = ?"
                ),
                (lms_type, ots_type, bytes(ident).hex()),
            )
            return [bytes.fromhex(r[0]) for r in cur.fetchall()]

        return self._transact(q)

    def log_stats(self, ident: KeyIdentity) -> tuple[int, int | None]:
        """(entries in the signature log, highest logged q) even when the row is missing."""
        return self._transact(lambda cur: self._log_stats(cur, ident))

    def signatures(self, ident: KeyIdentity, limit: int | None = None) -> list[SignatureRecord]:
        """The key's signature log, newest (highest q) first."""
        sql = (
            "SELECT q, msg_sha256, time, host, signer, actor FROM lms_signatures "
            "WHERE key_id = ? ORDER BY q DESC"
        )
        params: tuple[Any, ...] = (ident.key_id,)
        if limit is not None:
            sql += " LIMIT ?"
            params += (int(limit),)

        def q(cur: _Cursor) -> list[Any]:
            cur.execute(self._sql(sql), params)
            return cur.fetchall()

        rows = self._transact(q)
        return [SignatureRecord(int(r[0]), r[1], float(r[2]), r[3], r[4], r[5]) for r in rows]

    def count_signatures(self, actor: str, since: float) -> int:
        """Signatures (any key) logged here for ``actor`` at or after ``since`` (epoch seconds);
        entries merged from an export never count."""

        def q(cur: _Cursor) -> int:
            cur.execute(
                self._sql(
                    "SELECT COUNT(*) FROM lms_signatures WHERE actor = ? AND time >= ?"
                    " AND imported = 0"
                ),
                (actor, float(since)),
            )
            return int(cur.fetchone()[0])

        return self._transact(q)

    # -- writes
    def _insert_row(
        self, cur: _Cursor, ident: KeyIdentity, next_q: int, now: float, status: str
    ) -> bool:
        """Insert the key's row unless one exists; True if this call inserted it."""
        cur.execute(
            self._sql(
                "INSERT INTO lms_keys (key_id, lms_type, ots_type, ident, root, leaves, next_q,"
                " created, updated, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (key_id) DO NOTHING"
            ),
            (
                ident.key_id,
                ident.lms_type,
                ident.ots_type,
                ident.ident.hex(),
                ident.root.hex(),
                ident.leaves,
                next_q,
                now,
                now,
                status,
            ),
        )
        return bool(cur.rowcount == 1)

    def _ensure_row(
        self, cur: _Cursor, ident: KeyIdentity, now: float, status: str = LIVE
    ) -> tuple[int, str] | None:
        """Lock the key's row, creating it at next_q 0 with ``status`` if missing; returns the
        previous (next_q, status) (None when it was just created). Only explicit acts call it."""
        before = self._row(cur, ident, lock=True)
        if before is not None:
            return before
        self._refuse_other_roots(cur, ident)
        if self._insert_row(cur, ident, 0, now, status):
            return None
        # another server instance created it between our SELECT and INSERT: lock that row
        before = self._row(cur, ident, lock=True)
        if before is None:  # pragma: no cover - the row cannot vanish inside a transaction
            raise LmsStateError(f"{self.description}: key {ident.short}: row vanished")
        return before

    def _set(self, cur: _Cursor, ident: KeyIdentity, next_q: int, now: float, status: str) -> None:
        cur.execute(
            self._sql("UPDATE lms_keys SET next_q = ?, updated = ?, status = ? WHERE key_id = ?"),
            (next_q, now, status, ident.key_id),
        )

    def _logged(self, cur: _Cursor, ident: KeyIdentity, q: int) -> tuple[str, str, str] | None:
        """(msg_sha256, host, signer) the signature log holds for leaf q of this key, or None."""
        cur.execute(
            self._sql(
                "SELECT msg_sha256, host, signer FROM lms_signatures WHERE key_id = ? AND q = ?"
            ),
            (ident.key_id, q),
        )
        row = cur.fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def _log(
        self,
        cur: _Cursor,
        ident: KeyIdentity,
        q: int,
        msg_sha256: str,
        t: float,
        host: str,
        signer: str,
        actor: str | None,
        imported: bool = False,
    ) -> None:
        """Append one leaf use to the signature log."""
        cur.execute(
            self._sql(
                "INSERT INTO lms_signatures (key_id, q, msg_sha256, time, host, signer,"
                " actor, imported) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            (ident.key_id, q, msg_sha256, t, host, signer, actor, 1 if imported else 0),
        )

    def register(self, ident: KeyIdentity, *, now: float | None = None) -> None:
        """A key just generated: its row, live at next_q 0. Refuses a key the store knows."""
        t = _now(now)

        def tx(cur: _Cursor) -> None:
            if self._row(cur, ident, lock=True) is not None:
                raise LmsStateError(f"{self.description} already has key {ident.short}")
            self._refuse_other_roots(cur, ident)
            if not self._insert_row(cur, ident, 0, t, LIVE):
                raise LmsStateError(f"{self.description} already has key {ident.short}")

        self._transact(tx)

    def _live_row(self, cur: _Cursor, ident: KeyIdentity) -> int:
        row = self._row(cur, ident, lock=True)
        if row is None:
            self._refuse_other_roots(cur, ident)
            raise UnknownKeyError(f"{self.description}: no row for key {ident.short}")
        next_q, status = row
        if status == MOVED:
            raise KeyMovedError(
                f"{self.description} handed LMS key {ident.short} off with `lms-status --export` "
                "and no longer signs with it (the store it moved to does); refusing"
            )
        if status == HELPER:
            raise UnknownKeyError(
                f"{self.description}: key {ident.short} is known only from sign-helper "
                "signatures, never adopted for local signing"
            )
        return next_q

    def reserve(
        self,
        ident: KeyIdentity,
        floor: int,
        msg_sha256: str,
        *,
        signer: str,
        actor: str | None = None,
        host: str | None = None,
        now: float | None = None,
    ) -> Reservation:
        """In one committed transaction: for a build, when the last leaf reserved (next_q - 1)
        was a build's for this very message and the floor is not ahead, that leaf
        again (the same deterministic signature; nothing spent); otherwise q = max(row's next_q,
        floor), refused if exhausted or if the log shows q used for a different message; log
        (q, message); next_q = q + 1. A key without a live row raises UnknownKeyError (no
        row, or only helper signatures) or KeyMovedError (handed off): only keygen, init and
        import create rows."""
        _check_signer(signer, actor)
        if isinstance(floor, bool) or not isinstance(floor, int) or not 0 <= floor:
            raise LmsStateError(f"invalid leaf floor {floor!r}")
        t = _now(now)
        h = host or _HOST

        def tx(cur: _Cursor) -> Reservation:
            before = self._live_row(cur, ident)
            if signer in _RETRY_SIGNERS and 0 < before and floor <= before:
                # the last leaf reserved, for this very message, by this store's own signer
                cur.execute(
                    self._sql(
                        "SELECT msg_sha256, signer, imported FROM lms_signatures"
                        " WHERE key_id = ? AND q = ?"
                    ),
                    (ident.key_id, before - 1),
                )
                last = cur.fetchone()
                if (
                    last is not None
                    and last[0] == msg_sha256
                    and last[1] in _RETRY_SIGNERS
                    and not last[2]
                ):
                    return Reservation(before - 1, before, before, True)
            q = max(before, floor)
            if q >= ident.leaves:
                raise LmsStateError(
                    f"LMS key {ident.short} exhausted ({q} of {ident.leaves} one-time leaves "
                    "used); generate a new key"
                )
            seen = self._logged(cur, ident, q)
            if seen is not None and seen[0] != msg_sha256:
                _, mx = self._log_stats(cur, ident)
                raise LmsStateError(
                    f"{self.description}: leaf q={q} of key {ident.short} was already used for "
                    f"a different message (signed by {seen[2]} on {seen[1]}); the counters are "
                    f"behind the signature log: refusing (recover with `lms-status KEY --init "
                    f"--next-q {(mx or q) + 1}`)"
                )
            if seen is None:
                self._log(cur, ident, q, msg_sha256, t, h, signer, actor)
            self._set(cur, ident, q + 1, t, LIVE)
            return Reservation(q, before, q + 1)

        return self._transact(tx)

    def record_helper(
        self,
        ident: KeyIdentity,
        q: int,
        msg_sha256: str,
        *,
        actor: str | None = None,
        host: str | None = None,
        now: float | None = None,
    ) -> None:
        """Log a signature a sign helper made at leaf q (signer "helper"), refusing a q the log
        shows for a different message. A key this store has no row for gets a ``helper`` row
        (it does not sign locally until adopted); next_q is moved past q, never back."""
        _check_signer("helper", actor)
        if isinstance(q, bool) or not isinstance(q, int) or not 0 <= q < ident.leaves:
            raise LmsStateError(f"helper signature: q {q!r} outside 0..{ident.leaves - 1}")
        t = _now(now)
        h = host or _HOST

        def tx(cur: _Cursor) -> None:
            row = self._ensure_row(cur, ident, t, HELPER)
            next_q, status = row if row is not None else (0, HELPER)
            seen = self._logged(cur, ident, q)
            if seen is not None:
                if seen[0] != msg_sha256:
                    raise LmsStateError(
                        f"leaf q={q} of LMS key {ident.short} is logged in the {self.description} "
                        f"for a different message (signed by {seen[2]} on {seen[1]}): the sign "
                        "helper reused a one-time leaf; refusing its signature"
                    )
                return
            self._log(cur, ident, q, msg_sha256, t, h, "helper", actor)
            if next_q < q + 1:
                self._set(cur, ident, q + 1, t, status)

        self._transact(tx)

    def init(self, ident: KeyIdentity, next_q: int, *, now: float | None = None) -> int | None:
        """Explicit adoption: set next_q (the row becomes live), refusing any value below what
        the row or the log knows. Returns the previous next_q (None: no row)."""
        _check_next_q(next_q, ident)
        t = _now(now)

        def tx(cur: _Cursor) -> int | None:
            before = self._ensure_row(cur, ident, t)
            _, mx = self._log_stats(cur, ident)
            known = max(before[0] if before else 0, 0 if mx is None else mx + 1)
            if next_q < known:
                raise LmsStateError(
                    f"--next-q {next_q}: {self.description} knows leaves up to "
                    f"{known - 1} of key {ident.short} were used; refusing to go back "
                    f"(use --next-q {known} or higher)"
                )
            self._set(cur, ident, next_q, t, LIVE)
            return before[0] if before else None

        return self._transact(tx)

    # -- moving a key between stores
    def export_key(
        self, ident: KeyIdentity, *, retire: bool
    ) -> tuple[KeyRow, list[SignatureRecord]]:
        """The key's row and log, read in one transaction; with ``retire`` the row is marked
        moved in the same transaction (this store refuses to sign with it from then on)."""
        t = time.time()

        def tx(cur: _Cursor) -> tuple[KeyRow, list[Any]]:
            row = self._row(cur, ident, lock=True)
            if row is None:
                raise UnknownKeyError(
                    f"{self.description} has no row for key {ident.short}: nothing to export"
                )
            next_q, status = row
            if retire and status != MOVED:
                self._set(cur, ident, next_q, t, MOVED)
                status = MOVED
            n, mx = self._log_stats(cur, ident)
            cur.execute(
                self._sql(
                    "SELECT q, msg_sha256, time, host, signer, actor FROM lms_signatures "
                    "WHERE key_id = ? ORDER BY q"
                ),
                (ident.key_id,),
            )
            return KeyRow(next_q, ident.leaves, n, mx, status), cur.fetchall()

        row, recs = self._transact(tx)
        return row, [SignatureRecord(int(r[0]), r[1], float(r[2]), r[3], r[4], r[5]) for r in recs]

    def import_key(
        self, ident: KeyIdentity, next_q: int, records: list[SignatureRecord]
    ) -> int | None:
        """Merge an export into this store in one transaction (the row becomes live; merged
        entries are marked imported). Refuses to go backwards (this store's next_q or log above
        the import's) and any q logged here for a different message. Returns this store's
        previous next_q (None: no row)."""
        _check_next_q(next_q, ident)
        t = time.time()

        def tx(cur: _Cursor) -> int | None:
            before = self._ensure_row(cur, ident, t)
            _, mx = self._log_stats(cur, ident)
            known = max(before[0] if before else 0, 0 if mx is None else mx + 1)
            if next_q < known:
                raise LmsStateError(
                    f"import: {self.description} already knows key {ident.short} up to "
                    f"next_q {known}, the import only {next_q}; refusing to go backwards"
                )
            for r in records:
                if not 0 <= r.q < next_q:
                    raise LmsStateError(f"import: logged q={r.q} is not below next_q {next_q}")
                seen = self._logged(cur, ident, r.q)
                if seen is not None:
                    if seen[0] != r.msg_sha256:
                        raise LmsStateError(
                            f"import: leaf q={r.q} of key {ident.short} is logged here for a "
                            "different message; refusing"
                        )
                    continue
                self._log(
                    cur, ident, r.q, r.msg_sha256, r.time, r.host, r.signer, r.actor, imported=True
                )
            self._set(cur, ident, next_q, t, LIVE)
            return before[0] if before else None

        return self._transact(tx)


def _check_signer(signer: str, actor: str | None) -> None:
    if signer not in SIGNERS:
        raise LmsStateError(f"signer {signer!r}: must be one of {', '.join(SIGNERS)}")
    if actor is not None and (
        not isinstance(actor, str) or len(actor) > MAX_ACTOR or not actor.isprintable()
    ):
        raise LmsStateError(f"actor: must be printable text of at most {MAX_ACTOR} characters")


def _check_next_q(next_q: int, ident: KeyIdentity) -> None:
    if isinstance(next_q, bool) or not isinstance(next_q, int):
        raise LmsStateError(f"next_q {next_q!r}: not an integer")
    if not 0 <= next_q <= ident.leaves:
        raise LmsStateError(f"next_q {next_q}: outside 0..{ident.leaves}")


# ------------------------------------------------------------------------------- SQLite
class SqliteStore(StateStore):
    kind = "sqlite"
    _db_errors = (sqlite3.DatabaseError,)

    def __init__(self, path: Path, busy_timeout: float = 60.0, *, create: bool = True) -> None:
        super().__init__(str(path))
        self.path = path
        self._opening = True
        if not create and not path.exists():
            raise StoreMissingError(
                f"{self.description}: no LMS state store there (signing never creates one: a "
                "typo in --state or CPTRA_IMGTOOL_STATE, or a new machine?); keygen, "
                "`lms-status KEY --init` or `--import` make one"
            )
        try:
            if create:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                if not path.exists():
                    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                    os.close(fd)
            self._conn = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            with self._tx() as cur:
                self._migrate(cur)
        except sqlite3.DatabaseError as exc:
            raise LmsStateError(f"{path}: cannot open the LMS state store ({exc})") from None
        except OSError as exc:
            raise LmsStateError(
                f"{path}: cannot open the LMS state store ({exc.strerror})"
            ) from None
        finally:
            self._opening = False

    @contextlib.contextmanager
    def _tx(self) -> Iterator[_Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.DatabaseError as exc:
                raise LmsStateError(
                    f"{self.path}: LMS state store busy or broken ({exc})"
                ) from None
            try:
                yield cur
            except sqlite3.DatabaseError as exc:
                self._conn.rollback()
                what = (
                    "cannot open the LMS state store" if self._opening else "LMS state store error"
                )
                raise LmsStateError(f"{self.path}: {what} ({exc})") from None
            except BaseException:
                self._conn.rollback()
                raise
            try:
                cur.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                self._conn.rollback()
                raise LmsStateError(f"{self.path}: LMS state store commit failed ({exc})") from None

    def close(self) -> None:
        self._conn.close()


# ------------------------------------------------------------------------------- PostgreSQL
class PostgresStore(StateStore):
    kind = "postgresql"
    shared = True
    _for_update = " FOR UPDATE"

    def __init__(self, url: str, connect_timeout: float = 10.0) -> None:
        super().__init__(url)
        import psycopg

        self._psycopg = psycopg
        self._db_errors = (psycopg.Error,)
        self._timeout = max(1, int(connect_timeout))
        self._connect()

        def setup(cur: _Cursor) -> None:
            # one migrator at a time across the fleet; released at commit
            cur.execute("SELECT pg_advisory_xact_lock(7411520811)")
            self._migrate(cur)

        self._transact(setup)

    def _connect(self) -> None:
        psycopg = self._psycopg
        try:
            self._conn = psycopg.connect(
                self.location, connect_timeout=self._timeout, autocommit=True
            )
        except psycopg.Error as exc:
            raise LmsStateError(
                f"{self.description}: cannot connect ({_pg_reason(exc, self.location)})"
            ) from None
        self._used = time.monotonic()

    def _reconnect(self) -> None:
        with contextlib.suppress(self._psycopg.Error):
            self._conn.close()
        self._connect()

    def _alive(self) -> None:
        """Reconnect when the server dropped us (restart, failover, idle timeout) and we can
        tell before a transaction starts."""
        psycopg = self._psycopg
        if self._conn.closed or self._conn.broken:
            self._connect()
        elif time.monotonic() - self._used > 1.0:
            try:
                self._conn.execute("SELECT 1")
            except psycopg.OperationalError:
                self._reconnect()

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    @contextlib.contextmanager
    def _tx(self) -> Iterator[_Cursor]:
        psycopg = self._psycopg
        with self._lock:
            try:
                self._alive()
                with self._conn.transaction(), self._conn.cursor() as cur:
                    yield cur
            except psycopg.Error as exc:
                raise LmsStateError(
                    f"{self.description}: {_pg_reason(exc, self.location)}"
                ) from None
            finally:
                self._used = time.monotonic()

    def _transact(self, fn: Callable[[_Cursor], T]) -> T:
        """One transaction; when the connection turns out dead (a server restart: nothing
        tells us until we use it) before COMMIT was sent, the server rolled it back, so it is
        run once more on a new connection. A failure at or after COMMIT is never retried (it
        may have committed)."""
        psycopg = self._psycopg
        with self._lock:
            for attempt in (1, 2):
                committing = False
                try:
                    self._alive()
                    with self._conn.transaction():
                        with self._conn.cursor() as cur:
                            result = fn(cur)
                        committing = True
                    return result
                except psycopg.OperationalError as exc:
                    dead = self._conn.closed or self._conn.broken
                    if attempt == 1 and dead and not committing:
                        log.info(
                            "%s: connection lost before commit (%s); retrying on a new one",
                            self.description,
                            _pg_reason(exc, self.location),
                        )
                        self._reconnect()
                        continue
                    raise LmsStateError(
                        f"{self.description}: {_pg_reason(exc, self.location)}"
                    ) from None
                except psycopg.Error as exc:
                    raise LmsStateError(
                        f"{self.description}: {_pg_reason(exc, self.location)}"
                    ) from None
                finally:
                    self._used = time.monotonic()
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self._conn.close()


def _url_secrets(url: str) -> list[str]:
    """Everything in a PostgreSQL URL that may be a password: between ``://`` and the last
    ``@`` after the user name (as written, decoded, and its pieces), and password= values."""
    out = [url]
    if "://" in url:
        rest = url.split("://", 1)[1]
        at = rest.rfind("@")
        if at >= 0:
            cred = rest[:at]
            user = re.split(r"[:/?#@]", cred, maxsplit=1)[0]
            raw = cred[len(user) :].lstrip(":")
            out += [raw, urllib.parse.unquote(raw)]
            out += [p for p in re.split(r"[/?#@:]", raw) if len(p) >= 4]
    for m in re.finditer(r"password=([^&#\s]*)", url):
        out += [m.group(1), urllib.parse.unquote_plus(m.group(1))]
    return out


def _pg_reason(exc: BaseException, url: str) -> str:
    """First line of a psycopg error, with the URL's password (as written and decoded) and the
    URL itself masked: libpq echoes parts of a malformed connection string."""
    text = str(exc).strip().splitlines()
    line = text[0][:300] if text else type(exc).__name__
    for sec in sorted({x for x in _url_secrets(url) if x}, key=len, reverse=True):
        line = line.replace(sec, "***")
    return line[:200]


# ------------------------------------------------------------------------------- opening
_OPEN: dict[tuple[int, str], StateStore] = {}
_OPEN_LOCK = threading.Lock()


def open_store(
    location: str | os.PathLike[str] | None = None, *, create: bool = True
) -> StateStore:
    """The store at ``location`` (resolved as :func:`resolve_location` and checked by
    :func:`check_location`), one connection per process and location. Without ``create`` a
    SQLite store that does not exist raises StoreMissingError (signing never makes one)."""
    raw, source = _resolve(location)
    loc = check_location(raw, source)
    key = (os.getpid(), loc)
    with _OPEN_LOCK:
        store = _OPEN.get(key)
        if store is None:
            if _is_postgres(loc):
                store = PostgresStore(loc)
            else:
                store = SqliteStore(_sqlite_path(loc), create=create)
            _OPEN[key] = store
        return store


def close_all() -> None:
    with _OPEN_LOCK:
        for (pid, _), store in list(_OPEN.items()):
            if pid == os.getpid():
                with contextlib.suppress(Exception):
                    store.close()
        _OPEN.clear()
