"""The LMS leaf-state store: one row per key identity and a log of every signature.

A key's identity is its RFC 8554 public key string (LMS type, LM-OTS type, I, root); its
``key_id`` is the SHA-256 of those 48 bytes. Where the key file lies never matters, so a copied
key folder, a moved project or a second signing server all meet the same row.

Locations (:func:`resolve_location`): an explicit ``--state`` value, else ``CPTRA_IMGTOOL_STATE``,
else ``$XDG_STATE_HOME/cptra-imgtool/lms-state.sqlite3`` (``~/.local/state`` when XDG_STATE_HOME
is unset or not absolute). A value is a SQLite file path (an existing directory means
``DIR/lms-state.sqlite3``), ``sqlite:///PATH``, or ``postgresql://...`` (psycopg 3) for
signing-server fleets that share one counter.

Tables (schema version :data:`SCHEMA_VERSION`, migrated forward on open, never backward):

* ``lms_keys``: key_id, the identity fields, ``leaves`` (2^h) and ``next_q``, the first leaf never
  reserved (the highest reserved q is ``next_q - 1``). ``next_q`` only grows.
* ``lms_signatures``: (key_id, q) unique, SHA-256 of the signed message, time, host, signer
  (build, server, helper) and actor (free text, e.g. ``token:<id>``).

:meth:`StateStore.reserve` is one transaction (SQLite ``BEGIN IMMEDIATE``; PostgreSQL
``SELECT ... FOR UPDATE`` on the key's row) that picks the leaf, logs it and advances the
counter; it is committed (SQLite: WAL with ``synchronous=FULL``, i.e. fsynced) before it returns,
so before any signature for that leaf exists.

This module knows nothing about LMS arithmetic and imports nothing from :mod:`imgtool.lms`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import sqlite3
import struct
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import LmsStateError

ENV = "CPTRA_IMGTOOL_STATE"
_HOST = socket.gethostname()
DB_NAME = "lms-state.sqlite3"
SCHEMA_VERSION = 2
SIGNERS = ("build", "server", "helper")
EXPORT_FORMAT = "cptra-imgtool-lms-export-1"
MAX_ACTOR = 200


class PublicKeyLike(Protocol):
    """What an identity is made from (an :class:`imgtool.lms.LmsPublicKey` fits)."""

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
    """The store has no row for a key and was told not to create one."""


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


@dataclass(frozen=True)
class Reservation:
    q: int
    store_before: int | None  # the row's next_q before this reservation (None: no row)


# ------------------------------------------------------------------------------- locations
def default_location() -> Path:
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "cptra-imgtool" / DB_NAME


def resolve_location(explicit: str | os.PathLike[str] | None = None) -> str:
    """The store location to use: explicit value, else $CPTRA_IMGTOOL_STATE, else the default."""
    if explicit is not None and str(explicit) != "":
        return str(explicit)
    env = os.environ.get(ENV, "")
    if env:
        return env
    return str(default_location())


def redact(location: str) -> str:
    """A location fit for messages: a PostgreSQL URL loses its password and query string."""
    if not _is_postgres(location):
        return location
    try:
        u = urllib.parse.urlsplit(location)
        netloc = u.hostname or ""
        if u.port:
            netloc += f":{u.port}"
        if u.username:
            netloc = f"{u.username}@{netloc}"
    except ValueError:
        return "postgresql://<unparseable>"
    return urllib.parse.urlunsplit((u.scheme, netloc, u.path, "", ""))


def _is_postgres(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


def _sqlite_path(location: str) -> Path:
    if location.startswith("sqlite:///"):
        p = Path(location[len("sqlite://") :])
    elif location.startswith("sqlite:"):
        raise LmsStateError(f"{location}: write a SQLite store as sqlite:///ABSOLUTE/PATH")
    elif "://" in location:
        scheme = location.split("://", 1)[0]
        raise LmsStateError(
            f"{ENV}: unsupported LMS state store scheme {scheme!r} "
            "(a file path, sqlite:///PATH or postgresql://...)"
        )
    else:
        p = Path(location).expanduser()
    if p.is_dir():
        p = p / DB_NAME
    return p


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

    def __init__(self, location: str) -> None:
        self.location = location
        self._lock = threading.RLock()

    # -- dialect hooks
    @contextlib.contextmanager
    def _tx(self) -> Iterator[_Cursor]:  # pragma: no cover - overridden
        raise NotImplementedError
        yield

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
                f"{self.description}: schema_version {row[0]!r} is not a number"
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
                cur.execute(self._sql(stmt))
        if version != SCHEMA_VERSION:
            cur.execute(self._sql("DELETE FROM cptra_meta WHERE k = 'schema_version'"))
            cur.execute(
                self._sql("INSERT INTO cptra_meta (k, v) VALUES ('schema_version', ?)"),
                (str(SCHEMA_VERSION),),
            )

    def schema_version(self) -> int:
        with self._tx() as cur:
            cur.execute(self._sql("SELECT v FROM cptra_meta WHERE k = 'schema_version'"))
            return int(cur.fetchone()[0])

    # -- reads
    def _row(self, cur: _Cursor, ident: KeyIdentity, lock: bool = False) -> int | None:
        cur.execute(
            self._sql(
                "SELECT next_q, lms_type, ots_type, ident, root, leaves FROM lms_keys "
                "WHERE key_id = ?" + (self._for_update if lock else "")
            ),
            (ident.key_id,),
        )
        row = cur.fetchone()
        if row is None:
            return None
        next_q, lt, ot, i_hex, root_hex, leaves = row
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
        return int(next_q)

    def _log_stats(self, cur: _Cursor, ident: KeyIdentity) -> tuple[int, int | None]:
        cur.execute(
            self._sql("SELECT COUNT(*), MAX(q) FROM lms_signatures WHERE key_id = ?"),
            (ident.key_id,),
        )
        n, mx = cur.fetchone()
        return int(n), (None if mx is None else int(mx))

    def get(self, ident: KeyIdentity) -> KeyRow | None:
        """The key's row (None if the store has never seen this identity)."""
        with self._tx() as cur:
            next_q = self._row(cur, ident)
            n, mx = self._log_stats(cur, ident)
        if next_q is None:
            return None
        return KeyRow(next_q, ident.leaves, n, mx)

    def log_stats(self, ident: KeyIdentity) -> tuple[int, int | None]:
        """(entries in the signature log, highest logged q) even when the row is missing."""
        with self._tx() as cur:
            return self._log_stats(cur, ident)

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
        with self._tx() as cur:
            cur.execute(self._sql(sql), params)
            rows = cur.fetchall()
        return [SignatureRecord(int(r[0]), r[1], float(r[2]), r[3], r[4], r[5]) for r in rows]

    def count_signatures(self, actor: str, since: float) -> int:
        """Signatures (any key) logged for ``actor`` at or after ``since`` (epoch seconds)."""
        with self._tx() as cur:
            cur.execute(
                self._sql("SELECT COUNT(*) FROM lms_signatures WHERE actor = ? AND time >= ?"),
                (actor, float(since)),
            )
            return int(cur.fetchone()[0])

    # -- writes
    def _insert_row(self, cur: _Cursor, ident: KeyIdentity, next_q: int, now: float) -> bool:
        """Insert the key's row unless one exists; True if this call inserted it."""
        cur.execute(
            self._sql(
                "INSERT INTO lms_keys (key_id, lms_type, ots_type, ident, root, leaves, next_q,"
                " created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
            ),
        )
        return bool(cur.rowcount == 1)

    def _ensure_row(self, cur: _Cursor, ident: KeyIdentity, now: float) -> int | None:
        """Lock the key's row, creating it at next_q 0 if missing; returns the previous next_q
        (None when it was just created)."""
        before = self._row(cur, ident, lock=True)
        if before is not None:
            return before
        if self._insert_row(cur, ident, 0, now):
            return None
        # another server instance created it between our SELECT and INSERT: lock that row
        before = self._row(cur, ident, lock=True)
        if before is None:  # pragma: no cover - the row cannot vanish inside a transaction
            raise LmsStateError(f"{self.description}: key {ident.short}: row vanished")
        return before

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
        create: bool = True,
    ) -> Reservation:
        """In one committed transaction: q = max(row's next_q, floor); refuse if q is exhausted
        or the log shows q used for a different message; log (q, message); next_q = q + 1.
        Without ``create`` a key the store has no row for raises UnknownKeyError."""
        _check_signer(signer, actor)
        if isinstance(floor, bool) or not 0 <= floor:
            raise LmsStateError(f"invalid leaf floor {floor!r}")
        now = time.time() if now is None else now
        host = host or _HOST
        with self._tx() as cur:
            if not create and self._row(cur, ident, lock=True) is None:
                raise UnknownKeyError(f"{self.description}: no row for key {ident.short}")
            before = self._ensure_row(cur, ident, now)
            q = max(before or 0, floor)
            if q >= ident.leaves:
                raise LmsStateError(
                    f"LMS key {ident.short} exhausted ({q} of {ident.leaves} one-time leaves "
                    "used); generate a new key"
                )
            cur.execute(
                self._sql(
                    "SELECT msg_sha256, host, signer FROM lms_signatures WHERE key_id = ? AND q = ?"
                ),
                (ident.key_id, q),
            )
            seen = cur.fetchone()
            if seen is not None and seen[0] != msg_sha256:
                _, mx = self._log_stats(cur, ident)
                raise LmsStateError(
                    f"{self.description}: leaf q={q} of key {ident.short} was already used for "
                    f"a different message (signed by {seen[2]} on {seen[1]}); the counters are "
                    f"behind the signature log: refusing (recover with `lms-status KEY --init "
                    f"--next-q {(mx or q) + 1}`)"
                )
            if seen is None:
                cur.execute(
                    self._sql(
                        "INSERT INTO lms_signatures (key_id, q, msg_sha256, time, host, signer,"
                        " actor) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    ),
                    (ident.key_id, q, msg_sha256, now, host, signer, actor),
                )
            cur.execute(
                self._sql("UPDATE lms_keys SET next_q = ?, updated = ? WHERE key_id = ?"),
                (q + 1, now, ident.key_id),
            )
        return Reservation(q, before)

    def advance(self, ident: KeyIdentity, next_q: int, *, now: float | None = None) -> int | None:
        """Move the key's next_q forward to ``next_q`` (never back; creates the row). Returns the
        previous value (None: no row)."""
        _check_next_q(next_q, ident)
        now = time.time() if now is None else now
        with self._tx() as cur:
            before = self._ensure_row(cur, ident, now)
            if (before or 0) < next_q:
                cur.execute(
                    self._sql("UPDATE lms_keys SET next_q = ?, updated = ? WHERE key_id = ?"),
                    (next_q, now, ident.key_id),
                )
        return before

    def init(self, ident: KeyIdentity, next_q: int, *, now: float | None = None) -> int | None:
        """Explicit adoption: set next_q, refusing any value below what the row or the log
        knows. Returns the previous next_q (None: no row)."""
        _check_next_q(next_q, ident)
        now = time.time() if now is None else now
        with self._tx() as cur:
            before = self._ensure_row(cur, ident, now)
            _, mx = self._log_stats(cur, ident)
            known = max(before or 0, 0 if mx is None else mx + 1)
            if next_q < known:
                raise LmsStateError(
                    f"--next-q {next_q}: {self.description} knows leaves up to "
                    f"{known - 1} of key {ident.short} were used; refusing to go back "
                    f"(use --next-q {known} or higher)"
                )
            cur.execute(
                self._sql("UPDATE lms_keys SET next_q = ?, updated = ? WHERE key_id = ?"),
                (next_q, now, ident.key_id),
            )
        return before

    # -- moving a key between stores
    def import_key(
        self, ident: KeyIdentity, next_q: int, records: list[SignatureRecord]
    ) -> int | None:
        """Merge an export into this store in one transaction. Refuses to go backwards (this
        store's next_q above the import's) and any q logged here for a different message.
        Returns this store's previous next_q (None: no row)."""
        _check_next_q(next_q, ident)
        now = time.time()
        with self._tx() as cur:
            before = self._ensure_row(cur, ident, now)
            _, mx = self._log_stats(cur, ident)
            known = max(before or 0, 0 if mx is None else mx + 1)
            if next_q < known:
                raise LmsStateError(
                    f"import: {self.description} already knows key {ident.short} up to "
                    f"next_q {known}, the import only {next_q}; refusing to go backwards"
                )
            for r in records:
                if not 0 <= r.q < next_q:
                    raise LmsStateError(f"import: logged q={r.q} is not below next_q {next_q}")
                cur.execute(
                    self._sql("SELECT msg_sha256 FROM lms_signatures WHERE key_id = ? AND q = ?"),
                    (ident.key_id, r.q),
                )
                seen = cur.fetchone()
                if seen is not None:
                    if seen[0] != r.msg_sha256:
                        raise LmsStateError(
                            f"import: leaf q={r.q} of key {ident.short} is logged here for a "
                            "different message; refusing"
                        )
                    continue
                cur.execute(
                    self._sql(
                        "INSERT INTO lms_signatures (key_id, q, msg_sha256, time, host, signer,"
                        " actor) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    ),
                    (ident.key_id, r.q, r.msg_sha256, r.time, r.host, r.signer, r.actor),
                )
            cur.execute(
                self._sql("UPDATE lms_keys SET next_q = ?, updated = ? WHERE key_id = ?"),
                (next_q, now, ident.key_id),
            )
        return before


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

    def __init__(self, path: Path, busy_timeout: float = 60.0) -> None:
        super().__init__(str(path))
        self.path = path
        try:
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
        self._timeout = max(1, int(connect_timeout))
        self._connect()
        with self._tx() as cur:
            # one migrator at a time across the fleet; released at commit
            cur.execute("SELECT pg_advisory_xact_lock(7411520811)")
            self._migrate(cur)

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

    def _alive(self) -> None:
        """Reconnect when the server dropped us (restart, failover, idle timeout): checked
        before a transaction starts, so no reservation is ever retried blindly."""
        psycopg = self._psycopg
        if self._conn.closed or self._conn.broken:
            self._connect()
        elif time.monotonic() - self._used > 1.0:
            try:
                self._conn.execute("SELECT 1")
            except psycopg.OperationalError:
                with contextlib.suppress(psycopg.Error):
                    self._conn.close()
                self._connect()

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

    def close(self) -> None:
        self._conn.close()


def _pg_reason(exc: BaseException, url: str) -> str:
    """First line of a psycopg error, with the URL's password (as written and decoded) and the
    URL itself masked: libpq echoes parts of a malformed connection string."""
    text = str(exc).strip().splitlines()
    line = text[0][:300] if text else type(exc).__name__
    secrets = [url]
    m = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)@", url)
    if m:
        raw = m.group(1).partition(":")[2]
        secrets += [raw, urllib.parse.unquote(raw)]
    for m in re.finditer(r"[?&]password=([^&#]*)", url):
        secrets += [m.group(1), urllib.parse.unquote_plus(m.group(1))]
    for sec in sorted({x for x in secrets if x}, key=len, reverse=True):
        line = line.replace(sec, "***")
    return line[:200]


# ------------------------------------------------------------------------------- opening
_OPEN: dict[tuple[int, str], StateStore] = {}
_OPEN_LOCK = threading.Lock()


def open_store(location: str | os.PathLike[str] | None = None) -> StateStore:
    """The store at ``location`` (resolved as :func:`resolve_location`), one connection per
    process and location."""
    loc = resolve_location(location)
    key = (os.getpid(), loc)
    with _OPEN_LOCK:
        store = _OPEN.get(key)
        if store is None:
            store = PostgresStore(loc) if _is_postgres(loc) else SqliteStore(_sqlite_path(loc))
            _OPEN[key] = store
        return store


def close_all() -> None:
    with _OPEN_LOCK:
        for (pid, _), store in list(_OPEN.items()):
            if pid == os.getpid():
                with contextlib.suppress(Exception):
                    store.close()
        _OPEN.clear()
