"""A real, throw-away PostgreSQL server for tests and benchmarks (the distribution's binaries).

initdb and pg_ctl refuse to run as root: as root they run as the `postgres` system user (via
runuser) on a data directory that user owns. Password authentication (SCRAM) on 127.0.0.1, so
the tests also see that the password never leaks. ``available()`` says why not when it cannot
run (no binaries, no postgres user)."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PG_BIN_DIRS = [Path(p) for p in ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin")]
PG_USER = "postgres"


def _bin_dir() -> Path | None:
    env = os.environ.get("CPTRA_TEST_PG_BIN")
    for d in ([Path(env)] if env else []) + PG_BIN_DIRS:
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def available() -> str | None:
    """None when a server can be started here, else the reason it cannot."""
    if _bin_dir() is None:
        return "PostgreSQL binaries (initdb, pg_ctl) not found (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            return "running as root and there is no 'postgres' system user to run initdb as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


@dataclass
class PgServer:
    base: Path
    port: int
    password: str
    bin_dir: Path

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{PG_USER}:{self.password}@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def restart(self) -> None:
        """A fast restart (what an upgrade or a failover does to every open connection)."""
        _run(
            self.bin_dir / "pg_ctl", "-D", str(self.base / "data"), "-m", "fast", "-w",
            "-l", str(self.base / "sock" / "server.log"), "restart",
        )  # fmt: skip

    def stop(self) -> None:
        _run(self.bin_dir / "pg_ctl", "-D", str(self.base / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.base, ignore_errors=True)


def _as_pg(argv: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *argv] if os.geteuid() == 0 else argv


def _run(*argv: str | Path) -> None:
    proc = subprocess.run(
        _as_pg([str(a) for a in argv]), capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {proc.stdout[-1500:]} {proc.stderr[-1500:]}")


def start() -> PgServer:
    reason = available()
    if reason:
        raise RuntimeError(reason)
    bin_dir = _bin_dir()
    assert bin_dir is not None
    base = Path(tempfile.mkdtemp(prefix="cptra-pg-"))
    base.chmod(0o755)  # the server user must reach its data directory
    data, sock = base / "data", base / "sock"
    password = secrets.token_urlsafe(18)
    pwfile = base / "pw"
    pwfile.write_text(password + "\n")
    for d in (data, sock):
        d.mkdir()
    if os.geteuid() == 0:
        pw = pwd.getpwnam(PG_USER)
        for p in (data, sock, pwfile):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    data.chmod(0o700)
    _run(
        bin_dir / "initdb",
        "-D", str(data), "-U", PG_USER, "--auth-host=scram-sha-256", "--auth-local=trust",
        f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync",
    )  # fmt: skip
    pwfile.unlink()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c max_connections=200"
    _run(
        bin_dir / "pg_ctl",
        "-D",
        str(data),
        "-o",
        opts,
        "-l",
        str(sock / "server.log"),
        "-w",
        "start",
    )
    server = PgServer(base, port, password, bin_dir)
    deadline = time.monotonic() + 30
    import psycopg

    while True:
        try:
            psycopg.connect(server.url(), connect_timeout=2).close()
            return server
        except psycopg.Error:
            if time.monotonic() > deadline:
                server.stop()
                raise
            time.sleep(0.2)
