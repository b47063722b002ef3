"""LMS leaf-state benchmark (issue 11). Prints numbers only.

1. Reservation latency (p50/p99): the file-only reservation of before (flock, read, atomic
   write + fsync), the two-witness reservation on SQLite, and on PostgreSQL; then reservation +
   signature (LmsSigner.sign_digest, H15/W4 unless --height) on each store.
2. /sign/caliptra LMS throughput with 1 and 2 `serve` instances sharing the store (SQLite on
   one machine: the same key folder; PostgreSQL: each instance its own copy of the key folder).

Target: the SQLite reservation adds <= 1 ms p50 over the file-only one.
PostgreSQL parts need the PostgreSQL binaries (tests/helpers/pgserver.py); skipped otherwise.

Usage: .venv/bin/python bench/lms_state.py [--n 500] [--height 15] [--requests 400]
       [--clients 8] [--dir DIR (where keys and the SQLite file live; default: a temp dir)]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "helpers"))

import httpx  # noqa: E402
import lmsserve  # noqa: E402
import pgserver  # noqa: E402

from imgtool.keys import lms, lms_state, lms_tree  # noqa: E402
from imgtool.keys import lms_store as store  # noqa: E402
from imgtool.keys.lms_signer import LmsSigner  # noqa: E402

TYPES = {5: lms.LMS_SHA256_M24_H5, 10: lms.LMS_SHA256_M24_H10, 15: lms.LMS_SHA256_M24_H15}


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))] * 1000


def timed(fn: Callable[[int], object], n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def file_only_reserve(priv: Path, ident: store.KeyIdentity, store_id: str) -> int:
    """The reservation as it was before the store: lock, read, write q + 1 durably."""
    with lms_state.locked(priv):
        q = lms_state.read_state(priv, ident)
        lms_state.write_state(priv, ident, q + 1, store_id)
    return q


def copy_for(priv: Path, dst: Path, st: store.StateStore) -> Path:
    """The key folder copied for one store and adopted there (each store its own copy: the
    state file names the store it is used with)."""
    shutil.copytree(priv.parent, dst)
    copy = dst / priv.name
    ident = _ident(priv)
    lms_state.init(copy, ident, st, lms_state.read_state(priv, ident), confirm=True)
    return copy


def _ident(priv: Path) -> store.KeyIdentity:
    return store.KeyIdentity.of(lms.load_public(priv.with_name(priv.name.replace("prvk", "pubk"))))


def row(name: str, xs: list[float]) -> None:
    print(f"| {name} | {len(xs)} | {pct(xs, 0.5):.2f} | {pct(xs, 0.99):.2f} |")


def latency(work: Path, n: int, height: int, pg: pgserver.PgServer | None) -> None:
    priv, pub_path = lms_tree.generate(
        work / "k", TYPES[height], lms.LMOTS_SHA256_N24_W4, store=str(work / "keygen.sqlite3")
    )
    pub = lms.load_public(pub_path)
    ident = store.KeyIdentity.of(pub)
    sqlite = store.open_store(str(work / "lms-state.sqlite3"))
    stores: list[tuple[str, store.StateStore]] = [("SQLite", sqlite)]
    if pg is not None:
        stores.append(("PostgreSQL", store.open_store(pg.create_database("bench_latency"))))
    print(f"reservation latency, H{height}/W4 key, {n} each (ms)")
    print("| what | n | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    copies = {name: copy_for(priv, work / f"k-{name}", st) for name, st in stores}
    sid = store.open_store(str(work / "keygen.sqlite3")).store_id
    base = timed(lambda i: file_only_reserve(priv, ident, sid), n)
    row("file only (before)", base)
    results = {}
    for name, st in stores:
        k = copies[name]
        xs = timed(lambda i, st=st, k=k: lms_state.reserve(k, ident, st, b"%d" % i), n)  # type: ignore[misc]
        results[name] = xs
        row(f"file + {name} store (two witnesses)", xs)
    for name, st in stores:
        loc = st.location
        signer = LmsSigner.load(copies[name], store=loc)
        signer.sign_digest(bytes(48))  # loads the tree cache
        xs = timed(lambda i, s=signer: s.sign_digest(hashlib.sha384(b"%d" % i).digest()), n)  # type: ignore[misc]
        row(f"reservation + signature, {name}", xs)
    added = pct(results["SQLite"], 0.5) - pct(base, 0.5)
    verdict = "meets" if added <= 1.0 else "MISSES"
    print(f"SQLite reservation adds {added:.2f} ms p50 over the file-only one ({verdict} <= 1 ms)")


def throughput(
    root: Path, urls: list[str], requests: int, clients: int
) -> tuple[float, list[float]]:
    lat: list[float] = []
    lock = threading.Lock()
    tickets = iter(range(requests))

    def run(n: int) -> None:
        with httpx.Client(timeout=120) as c:
            while True:
                with lock:
                    t = next(tickets, None)
                if t is None:
                    return
                d = hashlib.sha384(b"%d-%d" % (n, t)).digest()
                t0 = time.perf_counter()
                for _ in range(200):
                    r = lmsserve.sign_lms(c, urls[t % len(urls)], d)
                    if r.status_code != 429:
                        break
                    time.sleep(0.005)
                if r.status_code != 200:
                    raise SystemExit(f"server said {r.status_code}: {r.text[:200]}")
                with lock:
                    lat.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return requests / (time.perf_counter() - t), lat


def servers(work: Path, requests: int, clients: int, pg: pgserver.PgServer | None) -> None:
    print()
    print(f"/sign/caliptra LMS (H10/W4), {requests} requests from {clients} clients")
    print("| store | instances | requests/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    setups: list[tuple[str, str, bool]] = [("SQLite", str(work / "srv.sqlite3"), False)]
    if pg is not None:
        setups.append(("PostgreSQL", pg.create_database("bench_servers"), True))
    for name, loc, copies in setups:
        for count in (1, 2):
            base = work / f"srv-{name}-{count}"
            first = lmsserve.key_root(
                base / "m0", lms.LMS_SHA256_M24_H10, lms.LMOTS_SHA256_N24_W4, store=loc
            )
            roots = [first]
            for i in range(1, count):
                roots.append(lmsserve.copy_key_root(first, base / f"m{i}") if copies else first)
            insts = [
                lmsserve.Serve(r, base / f"serve{i}.log", {store.ENV: loc})
                for i, r in enumerate(roots)
            ]
            try:
                for s in insts:
                    s.start()
                throughput(first, [s.url for s in insts], 4 * clients, clients)  # warm-up
                rps, lat = throughput(first, [s.url for s in insts], requests, clients)
            finally:
                for s in insts:
                    s.stop()
            print(f"| {name} | {count} | {rps:.0f} | {pct(lat, 0.5):.1f} | {pct(lat, 0.99):.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--height", type=int, default=15, choices=sorted(TYPES))
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--dir", type=Path)
    a = ap.parse_args()
    logging.getLogger("imgtool").setLevel(logging.ERROR)  # the witness catch-up notes
    work = Path(tempfile.mkdtemp(prefix="cptra-bench-state-", dir=a.dir))
    os.environ[store.ENV] = str(work / "default.sqlite3")  # never the user's store
    reason = pgserver.available()
    pg = None if reason else pgserver.start()
    print(f"cores: {os.cpu_count()}; work dir: {work}")
    if reason:
        print(f"PostgreSQL: skipped ({reason})")
    try:
        latency(work, a.n, a.height, pg)
        servers(work, a.requests, a.clients, pg)
    finally:
        store.close_all()
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
