"""The LMS state store itself (SQLite here; tests/test_store_postgres.py runs the same checks on a
real PostgreSQL): locations, schema migration, reservation rules, hostile input."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import sys
from pathlib import Path

import pytest

from imgtool.cli.main import main
from imgtool.errors import LmsStateError
from imgtool.keys import lms_store as store

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))
from storecases import IDENT, OTHER, run_store_contract  # noqa: E402


@pytest.fixture
def st(tmp_path: Path) -> store.StateStore:
    return store.open_store(str(tmp_path / "s.sqlite3"))


def test_store_contract_sqlite(st: store.StateStore) -> None:
    run_store_contract(st)


# ---------------------------------------------------------------------------- locations
def test_location_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(store.ENV)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert store.resolve_location() == str(tmp_path / "xdg" / "cptra-imgtool" / store.DB_NAME)
    monkeypatch.setenv("XDG_STATE_HOME", "relative/not/allowed")  # XDG: ignore relative paths
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store.resolve_location() == str(
        tmp_path / "home" / ".local" / "state" / "cptra-imgtool" / store.DB_NAME
    )
    monkeypatch.delenv("XDG_STATE_HOME")
    assert store.default_location() == tmp_path / "home/.local/state/cptra-imgtool" / store.DB_NAME
    monkeypatch.setenv(store.ENV, str(tmp_path / "env.sqlite3"))
    assert store.resolve_location() == str(tmp_path / "env.sqlite3")
    assert store.resolve_location(str(tmp_path / "arg.sqlite3")) == str(tmp_path / "arg.sqlite3")


def test_default_store_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(store.ENV)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    s = store.open_store()
    assert isinstance(s, store.SqliteStore)
    assert s.path == tmp_path / "xdg" / "cptra-imgtool" / store.DB_NAME
    assert stat.S_IMODE(s.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(s.path.parent.stat().st_mode) == 0o700


def test_location_forms(tmp_path: Path) -> None:
    d = tmp_path / "dir"
    d.mkdir()
    assert store.open_store(str(d)).path == d / store.DB_NAME  # type: ignore[attr-defined]
    url = f"sqlite://{tmp_path}/u.sqlite3"
    assert store.open_store(url).path == tmp_path / "u.sqlite3"  # type: ignore[attr-defined]
    with pytest.raises(LmsStateError, match="unsupported LMS state store scheme 'mysql'"):
        store.open_store("mysql://host/db")
    with pytest.raises(LmsStateError, match="sqlite:///ABSOLUTE/PATH"):
        store.open_store("sqlite:relative.db")


def test_postgres_url_is_redacted() -> None:
    url = "postgresql://signer:s3cr3t-pw@db.example:5433/lms?sslmode=require&password=x"
    red = store.redact(url)
    assert "s3cr3t" not in red and "password" not in red
    assert red == "postgresql://signer@db.example:5433/lms"
    assert store.redact("/plain/path.sqlite3") == "/plain/path.sqlite3"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://signer:s3cr3t-pw@127.0.0.1:1/lms?connect_timeout=2",
        "postgresql://signer:s3cr3t%zz@127.0.0.1:1/lms",  # libpq echoes the bad token
        "postgresql://signer:s3cr3t pw@[::1/lms",  # not even a parseable URL
        "postgresql://signer@127.0.0.1:1/lms?password=s3cr3t&sslmode=bogus",
        "postgres://signer:s3cr3t@127.0.0.1:1/lms?password=s3cr3t2&connect_timeout=2",
    ],
)
def test_postgres_errors_never_show_the_password(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(LmsStateError) as ei:
        store.open_store(url)
    msg = str(ei.value)
    assert "s3cr3t" not in msg and "cannot connect" in msg and "\n" not in msg
    from imgtool.keys import lms, lms_tree

    priv, _ = lms_tree.generate(tmp_path / "k", lms.LMS_SHA256_M24_H5, 7)
    capsys.readouterr()
    assert main(["lms-status", str(priv), "--state", url]) == 2
    err = capsys.readouterr().err
    assert "s3cr3t" not in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (b"this is not a database, it is a hostile text file" * 100, "not a database"),
        (b"SQLite format 3\x00" + b"\xff" * 200, "cannot open the LMS state store"),
    ],
)
def test_garbage_store_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, expect: str
) -> None:
    from imgtool.keys import lms, lms_tree

    bad = tmp_path / "bad.sqlite3"
    bad.write_bytes(content)
    with pytest.raises(LmsStateError, match=expect):
        store.open_store(str(bad))
    priv, _ = lms_tree.generate(tmp_path / "k", lms.LMS_SHA256_M24_H5, 7)
    capsys.readouterr()
    assert main(["lms-status", str(priv), "--state", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "Traceback" not in err
    assert bad.read_bytes() == content  # never "repaired" by overwriting


# ---------------------------------------------------------------------------- schema
def _v1_database(path: Path) -> None:
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE cptra_meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        for stmt in store._MIGRATIONS[0]:
            c.execute(stmt)
        c.execute("INSERT INTO cptra_meta VALUES ('schema_version', '1')")
        c.execute(
            "INSERT INTO lms_keys VALUES (?, ?, ?, ?, ?, ?, 5, 1.0, 1.0)",
            (
                IDENT.key_id,
                IDENT.lms_type,
                IDENT.ots_type,
                IDENT.ident.hex(),
                IDENT.root.hex(),
                IDENT.leaves,
            ),
        )
        for q in range(5):
            c.execute(
                "INSERT INTO lms_signatures VALUES (?, ?, ?, 1.0, 'old-host', 'build')",
                (IDENT.key_id, q, f"{q:064x}"),
            )


def test_schema_is_migrated_forward(tmp_path: Path) -> None:
    db = tmp_path / "v1.sqlite3"
    _v1_database(db)
    s = store.open_store(str(db))
    assert s.schema_version() == store.SCHEMA_VERSION == 3
    assert s.get(IDENT) == store.KeyRow(5, IDENT.leaves, 5, 4, store.LIVE)  # v3: status
    assert [r.actor for r in s.signatures(IDENT)] == [None] * 5  # the column v2 added
    r = s.reserve(IDENT, 0, "ab" * 32, signer="server", actor="token:a")
    assert r == store.Reservation(5, 5, 6)
    assert s.count_signatures("token:a", 0) == 1
    sid = s.store_id
    store.close_all()
    assert store.open_store(str(db)).store_id == sid  # made once, kept


def test_newer_schema_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "future.sqlite3"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE cptra_meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        c.execute("INSERT INTO cptra_meta VALUES ('schema_version', '99')")
    with pytest.raises(LmsStateError, match="schema version 99 is newer"):
        store.open_store(str(db))
    with sqlite3.connect(db) as c:
        c.execute("UPDATE cptra_meta SET v = 'x'")
    with pytest.raises(LmsStateError, match="schema_version 'x' is not a number"):
        store.open_store(str(db))


def test_tampered_row_is_refused(st: store.StateStore, tmp_path: Path) -> None:
    st.register(IDENT)
    st.reserve(IDENT, 0, "00" * 32, signer="build")
    store.close_all()
    db = tmp_path / "s.sqlite3"
    with sqlite3.connect(db) as c:
        c.execute("PRAGMA ignore_check_constraints = ON")
        c.execute("UPDATE lms_keys SET next_q = 'many'")
    with pytest.raises(LmsStateError, match="next_q is not an integer"):
        store.open_store(str(db)).get(IDENT)
    store.close_all()
    with sqlite3.connect(db) as c:
        c.execute("PRAGMA ignore_check_constraints = ON")
        c.execute("UPDATE lms_keys SET next_q = 1, root = ?", (OTHER.root.hex(),))
    with pytest.raises(LmsStateError, match="does not match the key's identity"):
        store.open_store(str(db)).reserve(IDENT, 0, "11" * 32, signer="build")


def test_busy_store_waits_for_the_lock(tmp_path: Path) -> None:
    """A reservation waits for another process's transaction instead of failing."""
    import subprocess
    import time

    db = tmp_path / "s.sqlite3"
    st = store.open_store(str(db))
    st.register(IDENT)
    st.reserve(IDENT, 0, "00" * 32, signer="build")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
            "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(1.5)\n"
            "c.execute('COMMIT')\n",
        ],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
    t = time.monotonic()
    r = st.reserve(IDENT, 0, "01" * 32, signer="build")
    assert r.q == 1 and time.monotonic() - t > 1.0
    assert holder.wait(timeout=10) == 0


def test_tests_never_see_the_real_store(tmp_path: Path) -> None:
    """The autouse fixture points every test, and every child process, at a private store."""
    import subprocess

    real = Path.home() / ".local" / "state" / "cptra-imgtool" / store.DB_NAME
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from imgtool.keys import lms_store as store; print(store.resolve_location())",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == os.environ[store.ENV] != str(real)
    assert not Path(out).is_relative_to(Path.home() / ".local")


# ---------------------------------------------------------------------------- red-team fixes
SECRET = "Hunter2Secret"


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        (f"postgresql:/postgres:{SECRET}@127.0.0.1:5432/a", "mistyped PostgreSQL URL"),
        (f"postgres:{SECRET}@127.0.0.1:5432/a", "mistyped PostgreSQL URL"),
        (f"postgresql:postgres:{SECRET}@host/a", "mistyped PostgreSQL URL"),
        (f"PostgreSQL//postgres:{SECRET}@host/a", "mistyped PostgreSQL URL"),
        (f"host=127.0.0.1 user=postgres password={SECRET} dbname=a", "key=value"),
        (f"db.example:{SECRET}@host/a", "a ':' before the first '/'"),
        (f"user:{SECRET}", "a ':' before the first '/'"),
        (f"mysql://root:{SECRET}@host/db", "unsupported LMS state store scheme 'mysql'"),
        (f"sqlite:{SECRET}.db", "sqlite:///ABSOLUTE/PATH"),
        ("lms.sqlite3", "'lms.sqlite3' is a relative path"),
        ("state/lms.sqlite3", "is a relative path"),
        ("~nosuchuser-x/lms.sqlite3", "is a relative path"),
    ],
)
def test_store_location_must_be_absolute_or_a_url(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    value: str,
    expect: str,
) -> None:
    """F2/F1: a mistyped PostgreSQL URL or a relative path is refused, never taken for a new
    SQLite store in the current directory (splitting a fleet, and writing the password into
    file names); the message names where the value came from and never shows a secret."""
    from imgtool.keys import lms, lms_tree

    priv, _ = lms_tree.generate(tmp_path / "k", lms.LMS_SHA256_M24_H5, 7)
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)
    with pytest.raises(LmsStateError, match=re.escape(expect)) as ei:
        store.open_store(value)
    assert SECRET not in str(ei.value) and "--state" in str(ei.value)
    monkeypatch.setenv(store.ENV, value)
    with pytest.raises(LmsStateError, match=store.ENV):
        store.open_store()
    capsys.readouterr()
    for args in (["lms-status", str(priv)], ["lms-status", str(priv), "--init", "--next-q", "1"]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and SECRET not in err and expect in err, err
    with pytest.raises(LmsStateError, match=re.escape(expect)):
        from imgtool.keys.lms_signer import LmsSigner

        LmsSigner.load(priv).sign_digest(bytes(48))
    assert list(run.iterdir()) == []  # nothing created where the command ran


def test_accepted_location_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert store.check_location(str(tmp_path / "a.db")) == str(tmp_path / "a.db")
    assert store.check_location(f"sqlite://{tmp_path}/b.db") == str(tmp_path / "b.db")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert store.check_location("~/c.db") == str(tmp_path / "c.db")
    for url in ("postgresql://u:p@h/db", "postgres://h/db", "postgresql:///db?host=/sock"):
        assert store.check_location(url) == url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"postgresql://postgres:12/{SECRET}@host:5/a", "postgresql://postgres@host:5/a"),
        (f"postgresql://postgres:{SECRET}@host/a?sslmode=require", "postgresql://postgres@host/a"),
        (f"postgresql://u:pa@ss{SECRET}@host/a", "postgresql://u@host/a"),
        (f"postgresql://u:x?y{SECRET}@host/a", "postgresql://u@<rest of the URL not shown>"),
        (f"postgresql://u@host/a?password=x@{SECRET}", "postgresql://u@<rest of the URL not"),
        (f"postgresql://host/a?password={SECRET}", "postgresql://host/a"),
        (f"postgres://:{SECRET}@host/a", "postgres://host/a"),
    ],
)
def test_redact_masks_everything_between_scheme_and_last_at(url: str, shown: str) -> None:
    """F10: a password with an unencoded '/', '@' or '?' never shows, even in part."""
    red = store.redact(url)
    assert SECRET not in red and red.startswith(shown), red
    for piece in ("12/", "pa@ss", "x?y"):
        assert piece not in red


def test_password_pieces_are_masked_in_server_errors() -> None:
    url = f"postgresql://postgres:12/{SECRET}@127.0.0.1:1/a"
    line = store._pg_reason(ValueError(f'invalid port "12/{SECRET}@127.0.0.1:1"'), url)
    assert SECRET not in line and "12/" not in line


def test_signing_never_creates_a_store(tmp_path: Path) -> None:
    """F1: a missing SQLite store is not created by opening it to sign (a typo or a fresh
    machine would otherwise be a new, empty store); keygen and the adoption commands make it."""
    missing = tmp_path / "nope" / "s.sqlite3"
    with pytest.raises(store.StoreMissingError, match="signing never creates one"):
        store.open_store(str(missing), create=False)
    assert not missing.parent.exists()
    assert store.open_store(str(missing)).path == missing  # type: ignore[attr-defined]
    assert store.open_store(str(missing), create=False).path == missing  # type: ignore[attr-defined]


def test_store_id_is_checked(st: store.StateStore, tmp_path: Path) -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", st.store_id)
    store.close_all()
    with sqlite3.connect(tmp_path / "s.sqlite3") as c:
        c.execute("UPDATE cptra_meta SET v = 'x; DROP TABLE lms_keys' WHERE k = 'store_id'")
    with pytest.raises(LmsStateError, match="store_id .* is not 32 hex digits"):
        store.open_store(str(tmp_path / "s.sqlite3"))
    store.close_all()
    with sqlite3.connect(tmp_path / "s.sqlite3") as c:  # a deleted id: a new store from now on
        c.execute("DELETE FROM cptra_meta WHERE k = 'store_id'")
    assert store.open_store(str(tmp_path / "s.sqlite3")).store_id != st.store_id


@pytest.mark.parametrize("version", ["2", "1", "0"])
def test_tampered_schema_version_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], version: str
) -> None:
    """A schema_version lowered by hand makes the forward migration fail: one line naming the
    schema version, not a raw database error."""
    db = tmp_path / "s.sqlite3"
    store.open_store(str(db)).register(IDENT)
    store.close_all()
    with sqlite3.connect(db) as c:
        if version == "0":
            c.execute("DELETE FROM cptra_meta WHERE k = 'schema_version'")
        else:
            c.execute("UPDATE cptra_meta SET v = ? WHERE k = 'schema_version'", (version,))
    with pytest.raises(LmsStateError, match=f"schema_version says {version}, but the tables"):
        store.open_store(str(db))
    from imgtool.keys import lms, lms_tree

    priv, _ = lms_tree.generate(tmp_path / "k", lms.LMS_SHA256_M24_H5, 7)
    capsys.readouterr()
    assert main(["lms-status", str(priv), "--state", str(db)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"schema_version says {version}" in err


def test_version_2_store_is_migrated(tmp_path: Path) -> None:
    """A store of the previous release keeps its rows (live) and its log, gets a store id."""
    db = tmp_path / "v2.sqlite3"
    _v1_database(db)
    with sqlite3.connect(db) as c:
        for stmt in store._MIGRATIONS[1]:
            c.execute(stmt)
        c.execute("UPDATE cptra_meta SET v = '2' WHERE k = 'schema_version'")
        c.execute("UPDATE lms_signatures SET actor = 'token:old'")
    s = store.open_store(str(db))
    assert s.schema_version() == 3 and re.fullmatch(r"[0-9a-f]{32}", s.store_id)
    assert s.get(IDENT) == store.KeyRow(5, IDENT.leaves, 5, 4, store.LIVE)
    assert s.count_signatures("token:old", 0) == 5  # old entries are this store's own
    assert s.reserve(IDENT, 0, f"{4:064x}", signer="build").q == 4  # the last leaf, again
    assert s.reserve(IDENT, 0, f"{3:064x}", signer="build").q == 5  # an older one: never
    assert s.reserve(IDENT, 0, "ab" * 32, signer="build").q == 6
