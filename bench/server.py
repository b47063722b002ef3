"""Signing server on loopback: /sign/caliptra ECC and LMS with 1, 8 and 32 concurrent clients
(requests/s, p50, p99), and /sign/imx latency next to a bare `cst` run on the same inputs.

Prints numbers only. Usage: .venv/bin/python bench/server.py [--requests N]
The server is the one the tests start (tests/server/srvfixtures.py): uvicorn, one worker.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "server"))

import imx_pki  # noqa: E402
from srvfixtures import MACHINE, Server, start_server  # noqa: E402

from imgtool.keys import lms, lms_tree  # noqa: E402


def load(
    server: Server, algo: str, key: str, clients: int, total: int
) -> tuple[float, list[float]]:
    per = total // clients
    lat: list[float] = []
    lock = threading.Lock()
    errors: list[int] = []
    # clients (and their connections) exist before the clock starts: creating an httpx.Client
    # costs milliseconds of client CPU (its SSL context), which is not the server's time
    conns = [server.client() for _ in range(clients)]
    for c in conns:
        c.get("/healthz")
    start = threading.Barrier(clients + 1)

    def worker(c: httpx.Client) -> None:
        mine = []
        start.wait()
        for _ in range(per):
            digest = os.urandom(48).hex()
            t = time.perf_counter()
            r = c.post(
                "/sign/caliptra",
                data={"machine": MACHINE, "key": key, "algo": algo, "digest": digest},
            )
            if r.status_code == 200:
                mine.append(time.perf_counter() - t)
            else:
                errors.append(r.status_code)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=worker, args=(c,)) for c in conns]
    for th in threads:
        th.start()
    start.wait()
    t = time.perf_counter()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    for c in conns:
        c.close()
    if errors:
        print(f"  ({len(errors)} errors: {sorted(set(errors))})")
    return len(lat) / wall, sorted(lat)  # successful requests only


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        # the LMS leaf-state store (and the server's state dir) of this run only: the
        # benchmark's keys and thousands of signatures never touch the user's store
        os.environ["CPTRA_IMGTOOL_STATE"] = str(tmp / "state" / "lms-state.sqlite3")
        os.environ["XDG_STATE_HOME"] = str(tmp / "xdg")
        # a benchmark signs far more than a token's default LMS quota allows
        server = start_server(
            tmp,
            max_jobs=32,
            timeout=30,
            max_size=10_000_000,
            env_extra={"CPTRA_IMGTOOL_LMS_QUOTA": "1000000/1d"},
        )
        try:
            # a full-tree H10 key (1024 leaves) for the LMS runs; its tree cache is warm
            keys = server.keys
            for suffix in ("prvk.pem", "pubk.pem", "prvk.pem.state", "prvk.pem.tree"):
                (keys / f"own-man-lms-{suffix}").unlink(missing_ok=True)
            lms_tree.generate(keys / "own-man-lms", lms.LMS_SHA256_M24_H10, lms.LMOTS_SHA256_N24_W4)
            print("| endpoint | clients | requests/s | p50 ms | p99 ms |")
            print("|---|---|---|---|---|")
            for algo, key, total in (("ecc", "own-man", a.requests), ("lms", "own-man", 300)):
                load(server, algo, key, 4, 40)  # warm-up (LMS: loads the tree cache)
                for clients in (1, 8, 32):
                    rps, lat = load(server, algo, key, clients, max(total, clients))
                    print(
                        f"| /sign/caliptra {algo.upper()} | {clients} | {rps:.0f} | "
                        f"{pct(lat, 0.5):.1f} | {pct(lat, 0.99):.1f} |"
                    )
            if imx_pki.cst_available() is None and server.pki is not None:
                imx(server, tmp)
            else:
                print(f"i.MX: skipped ({imx_pki.cst_available()})")
        finally:
            server.proc.terminate()
            server.proc.wait(timeout=10)


def imx(server: Server, tmp: Path) -> None:
    assert server.pki is not None
    artifact = os.urandom(0x8000)
    csf = imx_pki.csf_text("flash.bin")
    cst = next((tmp / "nxp").glob("cst-3.3.1/linux64/bin/cst"))
    bare = []
    for i in range(15):
        t = time.perf_counter()
        imx_pki.run_bare_cst(cst, server.pki.root, csf, artifact, "flash.bin", tmp / f"bare{i}")
        bare.append(time.perf_counter() - t)
    served = []
    with server.client() as c:
        for _ in range(15):
            t = time.perf_counter()
            r = c.post(
                "/sign/imx",
                data={"machine": "imx8mm-evk", "soctype": "mx8m", "cstversion": "3.3.1"},
                files={
                    "csf": ("csf.txt", csf.encode(), "text/plain"),
                    "artifact": ("flash.bin", artifact, "application/octet-stream"),
                },
            )
            served.append(time.perf_counter() - t)
            assert r.status_code == 200 and r.content[0] == 0xD4
    b, s = statistics.median(bare) * 1000, statistics.median(served) * 1000
    print(
        f"/sign/imx median {s:.1f} ms; bare cst (copy PKI + run) median {b:.1f} ms; "
        f"overhead {s - b:.1f} ms"
    )


if __name__ == "__main__":
    main()
