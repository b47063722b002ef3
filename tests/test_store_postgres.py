"""The LMS state store on a real PostgreSQL server started for these tests: the store contract,
migration, SIGKILLed processes, and two `serve` instances (each with its own copy of the key
folder, as on two machines) sharing one counter: 500 signatures from 16 clients, all q distinct.
Skipped, with the reason, where no PostgreSQL binaries are installed."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hsslms import LMS_Pub

from imgtool.cli.main import main
from imgtool.keys import lms, lms_state
from imgtool.keys import lms_store as store
from imgtool.keys.lms_signer import LmsSigner

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))
import pgserver  # noqa: E402
from lmsserve import MACHINE, Serve, copy_key_root, key_root, sign_lms  # noqa: E402
from storecases import IDENT, run_store_contract  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
_DB = itertools.count()


@pytest.fixture(scope="module")
def pg() -> Iterator[pgserver.PgServer]:
    reason = pgserver.available()
    if reason:
        pytest.skip(reason)
    server = pgserver.start()
    yield server
    store.close_all()
    server.stop()


@pytest.fixture
def pg_url(pg: pgserver.PgServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database, made the default store for this test and its subprocesses."""
    url = pg.create_database(f"lms{os.getpid()}_{next(_DB)}")
    monkeypatch.setenv(store.ENV, url)
    return url


def test_store_contract_postgres(pg_url: str) -> None:
    st = store.open_store(pg_url)
    assert isinstance(st, store.PostgresStore) and st.shared
    run_store_contract(st)


def test_schema_is_migrated_forward_postgres(pg_url: str) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE cptra_meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        for stmt in store._MIGRATIONS[0]:
            c.execute(stmt)
        c.execute("INSERT INTO cptra_meta VALUES ('schema_version', '1')")
        c.execute(
            "INSERT INTO lms_keys VALUES (%s, %s, %s, %s, %s, %s, 3, 1.0, 1.0)",
            (IDENT.key_id, 10, 7, IDENT.ident.hex(), IDENT.root.hex(), 32),
        )
    st = store.open_store(pg_url)
    assert st.schema_version() == store.SCHEMA_VERSION
    assert st.reserve(IDENT, 0, "00" * 32, signer="server", actor="token:t").q == 3
    assert st.count_signatures("token:t", 0) == 1


def test_status_never_shows_the_password(
    pg: pgserver.PgServer, pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = key_root(tmp_path / "keys", lms.LMS_SHA256_M24_H5, lms.LMOTS_SHA256_N24_W4)
    priv = root / MACHINE / "caliptra" / "own-man-lms-prvk.pem"
    LmsSigner.load(priv).sign_digest(bytes(48))
    capsys.readouterr()
    assert main(["lms-status", str(priv)]) == 0
    assert main(["lms-status", str(priv), "--json"]) == 0
    bad = pg_url.replace(pg.password, pg.password + "x")
    assert main(["lms-status", str(priv), "--state", bad]) == 2
    out = capsys.readouterr()
    assert "postgresql store postgresql://postgres@127.0.0.1" in out.out
    assert "cannot connect" in out.err and out.err.count("\n") == 1
    assert pg.password not in out.out + out.err


def test_reconnects_after_the_server_drops_the_connection(pg_url: str) -> None:
    import psycopg

    st = store.open_store(pg_url)
    st.register(IDENT)
    assert st.reserve(IDENT, 0, "00" * 32, signer="server").q == 0
    db = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url, autocommit=True) as c:  # a restart / failover / idle kill
        c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (db,),
        )
    time.sleep(1.2)  # idle long enough that the next transaction checks the connection
    assert st.reserve(IDENT, 0, "01" * 32, signer="server").q == 1
    assert st.get(IDENT).next_q == 2  # type: ignore[union-attr]


def test_first_reservation_after_a_server_restart(pg: pgserver.PgServer, pg_url: str) -> None:
    """F13: the first reservation after a restart used to fail (the dead connection was only
    noticed by the idle ping after 1 s): now it is run once more on a new connection, as it
    failed before COMMIT was sent (nothing committed)."""
    st = store.open_store(pg_url)
    st.register(IDENT)
    assert st.reserve(IDENT, 0, "00" * 32, signer="server").q == 0
    pg.restart()
    assert st.reserve(IDENT, 0, "01" * 32, signer="server").q == 1  # at once, no idle ping
    assert st.reserve(IDENT, 0, "02" * 32, signer="server").q == 2
    assert st.get(IDENT) == store.KeyRow(3, 32, 3, 2)


def test_pg_store_id_is_shared_by_every_connection(pg_url: str) -> None:
    a = store.open_store(pg_url).store_id
    store.close_all()
    assert store.PostgresStore(pg_url).store_id == a


SIGNER = """
import sys, os, time
from pathlib import Path
from imgtool.keys import lms
from imgtool.keys.lms_signer import LmsSigner
priv, out = Path(sys.argv[1]), sys.argv[2]
s = LmsSigner.load(priv)
with open(out, "a") as fh:
    while True:
        msg = os.urandom(48)
        slot = s.sign_digest(msg)
        fh.write(f"{lms.sig_q(slot)} {msg.hex()}\\n")
        fh.flush()
        time.sleep(0.01)
"""


def test_sigkilled_processes_on_postgres(pg_url: str, tmp_path: Path) -> None:
    """Four machines (own key folder copies) signing through one PostgreSQL counter, each
    SIGKILLed at random points: no leaf released twice, log and counter agree."""
    seed = time.time_ns() % 100_000
    rng = random.Random(seed)
    first = key_root(tmp_path / "m0", lms.LMS_SHA256_M24_H10, lms.LMOTS_SHA256_N24_W4)
    roots = [first] + [copy_key_root(first, tmp_path / f"m{i}") for i in range(1, 4)]
    privs = [r / MACHINE / "caliptra" / "own-man-lms-prvk.pem" for r in roots]
    outs = [tmp_path / f"out{i}.txt" for i in range(4)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def spawn(i: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-c", SIGNER, str(privs[i]), str(outs[i])],
            env=env,
            stderr=subprocess.DEVNULL,
        )

    def released() -> int:
        return sum(len(o.read_bytes().splitlines()) for o in outs if o.exists())

    procs = [spawn(i) for i in range(4)]
    try:
        # at least 16 kills, and on until 40 signatures were released (a loaded machine starts
        # the signers slowly), at most 120 s
        deadline = time.monotonic() + 120
        kills = 0
        while kills < 16 or (released() < 40 and time.monotonic() < deadline):
            time.sleep(rng.uniform(0.1, 0.4))
            i = rng.randrange(4)
            procs[i].kill()
            procs[i].wait()
            procs[i] = spawn(i)
            kills += 1
    finally:
        for p in procs:
            p.kill()
            p.wait()
    rel = []
    for o in outs:
        for line in o.read_text().splitlines() if o.exists() else []:
            parts = line.split()
            if len(parts) == 2 and len(parts[1]) == 96:
                rel.append((int(parts[0]), parts[1]))
    qs = [q for q, _ in rel]
    assert len(qs) > 30, seed
    assert len(qs) == len(set(qs)), f"seed {seed}: a leaf was released twice"
    pub = lms.load_public(privs[0].with_name("own-man-lms-pubk.pem"))
    ident = store.KeyIdentity.of(pub)
    st = store.open_store(pg_url)
    log = {r.q: r.msg_sha256 for r in st.signatures(ident)}
    for q, msg in rel:
        assert log[q] == hashlib.sha256(bytes.fromhex(msg)).hexdigest()
    row = st.get(ident)
    assert row is not None and sorted(log) == list(range(row.next_q)), seed
    for p in privs:  # each machine's file witness trails (or equals) the shared counter
        assert lms_state.read_state(p, ident) <= row.next_q


def test_two_servers_share_one_counter(pg: pgserver.PgServer, pg_url: str, tmp_path: Path) -> None:
    first = key_root(tmp_path / "a", lms.LMS_SHA256_M24_H10, lms.LMOTS_SHA256_N24_W4)
    second = copy_key_root(first, tmp_path / "b")  # another machine's copy of the key folder
    servers = [Serve(r, tmp_path / f"{r.name}.log", {store.ENV: pg_url}) for r in (first, second)]
    for s in servers:
        s.start()
    total, clients = 500, 16
    tickets = iter(range(total))
    lock = threading.Lock()
    got: list[tuple[int, int, bytes, bytes]] = []
    errors: list[str] = []

    def client(n: int) -> None:
        with httpx.Client(timeout=60) as c:
            while True:
                with lock:
                    t = next(tickets, None)
                if t is None:
                    return
                digest = hashlib.sha384(b"%d" % t).digest()
                which = (n + t) % 2
                for _ in range(100):
                    r = sign_lms(c, servers[which].url, digest)
                    if r.status_code != 429:
                        break
                    time.sleep(0.02)
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:100]}")
                    return
                with lock:
                    got.append((which, lms.sig_q(r.content), digest, r.content))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
    finally:
        for s in servers:
            s.stop()
    assert not errors, errors[:3]
    assert len(got) == total
    qs = [q for _, q, _, _ in got]
    assert len(set(qs)) == total, "a leaf was used twice across the two instances"
    assert {w for w, _, _, _ in got} == {0, 1}
    pub_bytes = (first / MACHINE / "caliptra" / "own-man-lms-pubk.pem").read_bytes()
    pub = lms.LmsPublicKey.from_bytes(pub_bytes)
    for _, _, digest, slot in got:
        assert pub.verify(digest, slot)
    for _, _, digest, slot in random.sample(got, 25):
        LMS_Pub(pub_bytes).verify(digest, lms.slot_to_sig(slot))
    ident = store.KeyIdentity.of(pub)
    row = store.open_store(pg_url).get(ident)
    assert row is not None and row.next_q == total and row.log_size == total
    assert sorted(qs) == list(range(total))
    for s in servers:
        text = s.log.read_text()
        assert "Traceback" not in text and pg.password not in text
