"""LMS full-tree key generation: ours against hsslms with the same number of cores, interleaved.

Each run is a fresh child process (`--child KIND`) that generates one key and reports its own
keygen time and peak RSS (VmHWM of its own address space, read from /proc: the parent's pages at
fork time are not in it) and the peak RSS of each worker process it started. The parent runs
ours, hsslms, ours, hsslms, ... (--pairs, at least 5) and prints min / median / max of each and
of the per-pair ratios. It also measures `openssl speed -evp sha256` (64-byte and 16 KiB blocks,
one process) between pairs and prints our SHA-256 rate per core against it, and, with
--options, the per-core rate of every way of hashing the LM-OTS chains that was considered.

Prints numbers only. Usage:
  .venv/bin/python bench/lms_keygen.py [--height 15] [--pairs 5] [--workers N] [--portable]
                                       [--fallback] [--options] [--no-sign]
(--portable adds our AVX2 and portable-C paths to the interleaving, --fallback our pure-Python
one; numpy is not a dependency: --options measures it only where it is importable.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
W4 = 7  # LMOTS_SHA256_N24_W4
P4 = 51
CHAIN = 15  # 2^4 - 1 steps after the first hash of each chain


# ---------------------------------------------------------------------------- child side
def _vmhwm_kib(pid: int | str = "self") -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^VmHWM:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else None


class _WorkerWatch:
    """Peak RSS of every child process of this process, sampled every 50 ms (a peak is
    monotonic, so the last sample before a worker exits is its peak to within 50 ms)."""

    def __init__(self) -> None:
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _children(self) -> list[int]:
        pids: list[int] = []
        for task in Path("/proc/self/task").iterdir():
            try:
                pids += [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                pass
        return pids

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self._children():
                hwm = _vmhwm_kib(pid)
                if hwm is not None:
                    self.peak[pid] = max(self.peak.get(pid, 0), hwm)
            self._stop.wait(0.05)

    def __enter__(self) -> _WorkerWatch:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def child(kind: str, height: int, workers: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        os.environ["CPTRA_IMGTOOL_STATE"] = str(Path(d) / "lms-state.sqlite3")  # not the user's
        if kind == "hsslms":
            from hsslms import LMOTS_ALGORITHM_TYPE, LMS_ALGORITHM_TYPE, LMS_Priv

            lt = getattr(LMS_ALGORITHM_TYPE, f"LMS_SHA256_M24_H{height}")
            ot = LMOTS_ALGORITHM_TYPE.LMOTS_SHA256_N24_W4
            with _WorkerWatch() as watch:
                t = time.perf_counter()
                LMS_Priv(lt, ot, num_cores=workers)
                secs = time.perf_counter() - t
            backend = "hsslms"
        else:
            from imgtool.keys import lms, lms_tree

            lt = {5: lms.LMS_SHA256_M24_H5, 10: lms.LMS_SHA256_M24_H10}.get(
                height, lms.LMS_SHA256_M24_H15
            )
            backend = {"ours-python": "python", "ours-c": "c", "ours-avx2": "avx2"}.get(
                kind, lms_tree.backends()[0]
            )
            with _WorkerWatch() as watch:
                t = time.perf_counter()
                lms_tree.generate(Path(d) / "k", lt, W4, workers=workers, backend=backend)
                secs = time.perf_counter() - t
    doc = {
        "seconds": secs,
        "backend": backend,
        "rss_kib": _vmhwm_kib(),
        "worker_rss_kib": sorted(watch.peak.values()),
    }
    sys.stdout.write(json.dumps(doc) + "\n")


# ---------------------------------------------------------------------------- parent side
def run_child(kind: str, height: int, workers: int) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE), "--child", kind, "--height", str(height)]
    cmd += ["--workers", str(workers)]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    doc: dict[str, Any] = json.loads(r.stdout.splitlines()[-1])
    doc["wall"] = time.perf_counter() - t
    return doc


def openssl_rate(size: int, seconds: int = 1) -> float | None:
    """SHA-256 hashes per second of `openssl speed -evp sha256` at one block size, 1 process."""
    cmd = ["openssl", "speed", "-seconds", str(seconds), "-bytes", str(size), "-evp", "sha256"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    m = re.search(r"^sha256\s+([\d.]+)k\s*$", out, re.M)
    return float(m.group(1)) * 1000 / size if m else None


def hashes_per_leaf(p: int = P4, chain: int = CHAIN) -> int:
    return p * (1 + chain) + 2  # chains, K, the leaf node


def spread(xs: list[float]) -> str:
    return f"min {min(xs):.3f} / median {statistics.median(xs):.3f} / max {max(xs):.3f}"


def mib(kib: list[int]) -> str:
    if not kib:
        return "-"
    return f"{min(kib) / 1024:.0f}-{max(kib) / 1024:.0f} MiB"


# ---------------------------------------------------------------------------- options
def _per_core(fn: Callable[[], int], reps: int = 5) -> float:
    """Best of ``reps`` of hashes per CPU-second of this thread (thread_time, so that other
    load on the shared machine does not count)."""
    best = 0.0
    for _ in range(reps):
        t = time.thread_time()
        n = fn()
        best = max(best, n / max(time.thread_time() - t, 1e-9))
    return best


def _python_chains(sha: Callable[[bytes], Any], leaves: int) -> Callable[[], int]:
    ident, seed = os.urandom(16), os.urandom(24)
    js = [bytes((j,)) for j in range(CHAIN)]

    def run() -> int:
        for q in range(leaves):
            prefix = ident + q.to_bytes(4, "big")
            for i in range(P4):
                pi = prefix + i.to_bytes(2, "big")
                tmp = sha(pi + b"\xff" + seed).digest()[:24]
                for j in js:
                    tmp = sha(pi + j + tmp).digest()[:24]
        return leaves * P4 * (1 + CHAIN)

    return run


def _numpy_chains(leaves: int) -> Callable[[], int] | None:
    """All chains of ``leaves`` leaves at once, one uint32 lane per chain (SHA-256 written
    with numpy array operations)."""
    try:
        import numpy as np
    except ImportError:
        return None
    k = np.array(
        [
            0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5, 0x3956C25B, 0x59F111F1, 0x923F82A4,
            0xAB1C5ED5, 0xD807AA98, 0x12835B01, 0x243185BE, 0x550C7DC3, 0x72BE5D74, 0x80DEB1FE,
            0x9BDC06A7, 0xC19BF174, 0xE49B69C1, 0xEFBE4786, 0x0FC19DC6, 0x240CA1CC, 0x2DE92C6F,
            0x4A7484AA, 0x5CB0A9DC, 0x76F988DA, 0x983E5152, 0xA831C66D, 0xB00327C8, 0xBF597FC7,
            0xC6E00BF3, 0xD5A79147, 0x06CA6351, 0x14292967, 0x27B70A85, 0x2E1B2138, 0x4D2C6DFC,
            0x53380D13, 0x650A7354, 0x766A0ABB, 0x81C2C92E, 0x92722C85, 0xA2BFE8A1, 0xA81A664B,
            0xC24B8B70, 0xC76C51A3, 0xD192E819, 0xD6990624, 0xF40E3585, 0x106AA070, 0x19A4C116,
            0x1E376C08, 0x2748774C, 0x34B0BCB5, 0x391C0CB3, 0x4ED8AA4A, 0x5B9CCA4F, 0x682E6FF3,
            0x748F82EE, 0x78A5636F, 0x84C87814, 0x8CC70208, 0x90BEFFFA, 0xA4506CEB, 0xBEF9A3F7,
            0xC67178F2,
        ],
        dtype=np.uint32,
    )  # fmt: skip
    iv = np.array(
        [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB,
         0x5BE0CD19],
        dtype=np.uint32,
    )  # fmt: skip
    ident, seed = os.urandom(16), os.urandom(24)
    lanes = leaves * P4
    q = np.repeat(np.arange(leaves, dtype=np.uint32), P4)
    i = np.tile(np.arange(P4, dtype=np.uint32), leaves)
    iw = [
        np.full(lanes, int.from_bytes(ident[4 * n : 4 * n + 4], "big"), np.uint32) for n in range(4)
    ]

    def ror(x: Any, n: int) -> Any:
        return (x >> np.uint32(n)) | (x << np.uint32(32 - n))

    def block(w: list[Any]) -> list[Any]:
        w = list(w)
        for t in range(16, 64):
            s0 = ror(w[t - 15], 7) ^ ror(w[t - 15], 18) ^ (w[t - 15] >> np.uint32(3))
            s1 = ror(w[t - 2], 17) ^ ror(w[t - 2], 19) ^ (w[t - 2] >> np.uint32(10))
            w.append(w[t - 16] + s0 + w[t - 7] + s1)
        a, b, c, d, e, f, g, h = (np.full(lanes, v, np.uint32) for v in iv)
        for t in range(64):
            t1 = h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + k[t] + w[t]
            t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))
            h, g, f, e, d, c, b, a = g, f, e, d + t1, c, b, a, t1 + t2
        return [x + v for x, v in zip((a, b, c, d, e, f, g, h), iv, strict=True)]

    def words(j: int, dw: list[Any]) -> list[Any]:
        e8, e24 = np.uint32(8), np.uint32(24)
        w5 = (i << np.uint32(16)) | np.uint32(j << 8) | (dw[0] >> e24)
        mid = [(dw[n] << e8) | (dw[n + 1] >> e24) for n in range(5)]
        zero = np.zeros(lanes, np.uint32)
        tail = [(dw[5] << e8) | np.uint32(0x80), zero, zero, zero, np.full(lanes, 376, np.uint32)]
        return [*iw, q, w5, *mid, *tail]

    sd = [
        np.full(lanes, int.from_bytes(seed[4 * n : 4 * n + 4], "big"), np.uint32) for n in range(6)
    ]

    def chains() -> list[Any]:
        d = block(words(0xFF, sd))[:6]
        for j in range(CHAIN):
            d = block(words(j, d))[:6]
        return d

    # the figure is only worth printing if the lanes hold the real chain ends
    d = chains()
    for lane in (0, lanes - 1):
        pi = ident + int(q[lane]).to_bytes(4, "big") + int(i[lane]).to_bytes(2, "big")
        tmp = hashlib.sha256(pi + b"\xff" + seed).digest()[:24]
        for j in range(CHAIN):
            tmp = hashlib.sha256(pi + bytes((j,)) + tmp).digest()[:24]
        assert b"".join(int(x[lane]).to_bytes(4, "big") for x in d) == tmp, "numpy SHA-256 wrong"

    def run() -> int:
        chains()
        return lanes * (1 + CHAIN)

    return run


def options() -> None:
    print("ways to hash the LM-OTS chains (H15/W4 chain steps, one core, CPU time, best of 5):")
    rows: list[tuple[str, float | None]] = []
    rows.append(
        ("hashlib.sha256 (OpenSSL), pure Python", _per_core(_python_chains(hashlib.sha256, 8)))
    )
    try:
        import _sha256  # type: ignore[import-not-found]

        rows.append(
            ("_sha256 (CPython's own), pure Python", _per_core(_python_chains(_sha256.sha256, 8)))
        )
    except ImportError:
        rows.append(("_sha256 (CPython's own), pure Python", None))
    try:
        from cryptography.hazmat.primitives import hashes

        class CryptoSha:
            def __init__(self, data: bytes) -> None:
                self.h = hashes.Hash(hashes.SHA256())
                self.h.update(data)

            def digest(self) -> bytes:
                return self.h.finalize()

        crypto_sha = CryptoSha

        rows.append(
            ("cryptography hashes.SHA256, pure Python", _per_core(_python_chains(crypto_sha, 4)))
        )
    except ImportError:
        rows.append(("cryptography hashes.SHA256, pure Python", None))
    np_run = _numpy_chains(256)
    rows.append(
        ("numpy, 1 lane per chain (256 leaves at once)", _per_core(np_run, 3) if np_run else None)
    )
    from imgtool.keys import lms_tree

    fast = lms_tree._FAST
    have = fast.impls() if fast is not None else []
    for name, impl, n in (
        ("compiled, portable C", "c", 128),
        ("compiled, AVX2 (8 chains per instruction)", "avx2", 512),
        ("compiled, SHA-NI (3 chains interleaved)", "sha-ni", 1024),
    ):
        if fast is None or impl not in have:
            rows.append((name, None))
            continue

        def run(impl: str = impl, n: int = n) -> int:
            fast.leaves(os.urandom(16), os.urandom(24), 4, P4, 15, 0, n, impl=impl)
            return n * hashes_per_leaf()

        rows.append((name, _per_core(run)))
    base = rows[0][1] or 1.0
    for name, rate in rows:
        if rate is None:
            print(f"  {name:48s} not available here")
        else:
            print(f"  {name:48s} {rate / 1e6:7.2f} M hashes/s  ({rate / base:5.1f}x hashlib)")


# ---------------------------------------------------------------------------- main
def sign_figures(height: int) -> None:
    from imgtool.keys import lms, lms_tree
    from imgtool.keys.lms_signer import LmsSigner

    lt = {5: lms.LMS_SHA256_M24_H5, 10: lms.LMS_SHA256_M24_H10}.get(height, lms.LMS_SHA256_M24_H15)
    with tempfile.TemporaryDirectory() as d:
        os.environ["CPTRA_IMGTOOL_STATE"] = str(Path(d) / "lms-state.sqlite3")
        priv, _ = lms_tree.generate(Path(d) / "k", lt, W4)
        cache_size = lms_tree.cache_path(priv).stat().st_size
        lms_tree._TREES.clear()
        t = time.perf_counter()
        signer = LmsSigner.load(priv)
        signer.sign_digest(bytes(48))
        first = time.perf_counter() - t
        times = []
        for i in range(min(200, (1 << height) - 1)):
            msg = hashlib.sha384(b"%d" % i).digest()
            t = time.perf_counter()
            signer.sign_digest(msg)
            times.append(time.perf_counter() - t)
    print(f"tree cache file: {cache_size} bytes")
    print(f"first signature (loads the cache): {first * 1000:.1f} ms")
    print(
        f"signature with cache (incl. durable leaf reservation): median "
        f"{statistics.median(times) * 1000:.2f} ms, "
        f"p99 {sorted(times)[len(times) * 99 // 100] * 1000:.2f} ms ({len(times)} signatures)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--height", type=int, default=15, choices=[5, 10, 15])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--fallback", action="store_true", help="also run our pure-Python path")
    ap.add_argument("--portable", action="store_true", help="also run our AVX2 and C paths")
    ap.add_argument("--options", action="store_true", help="per-core rate of each hashing way")
    ap.add_argument("--no-sign", action="store_true", help="skip the signing figures")
    ap.add_argument(
        "--child",
        choices=["ours", "ours-avx2", "ours-c", "ours-python", "hsslms"],
        help=argparse.SUPPRESS,
    )
    a = ap.parse_args()
    if a.child:
        child(a.child, a.height, a.workers)
        return
    if a.pairs < 5:
        ap.error("--pairs: at least 5")
    if a.options:
        options()
    kinds = ["ours", "hsslms"] + (["ours-avx2", "ours-c"] if a.portable else [])
    kinds += ["ours-python"] if a.fallback else []
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    ossl64: list[float] = []
    ossl16k: list[float] = []
    for _ in range(a.pairs):
        for k in kinds:
            runs[k].append(run_child(k, a.height, a.workers))
        r64, r16k = openssl_rate(64), openssl_rate(16384)
        if r64 is not None and r16k is not None:
            ossl64.append(r64)
            ossl16k.append(r16k)
    leaves = 1 << a.height
    calls = leaves * hashes_per_leaf() + leaves - 1
    print(f"cores: {os.cpu_count()}  workers: {a.workers}  H{a.height}/W4 ({leaves} leaves)")
    print(f"runs interleaved {' '.join(kinds)} x {a.pairs}; keygen seconds measured in each child")
    for k in kinds:
        secs = [r["seconds"] for r in runs[k]]
        rss = [r["rss_kib"] for r in runs[k] if r["rss_kib"]]
        wrss = [x for r in runs[k] for x in r["worker_rss_kib"]]
        nw = max(len(r["worker_rss_kib"]) for r in runs[k])
        print(
            f"{k:12s} [{runs[k][0]['backend']}] s: {spread(secs)}  "
            f"RSS main {mib(rss)}, {nw} worker process(es) {mib(wrss)}"
        )
    ours = [r["seconds"] for r in runs["ours"]]
    theirs = [r["seconds"] for r in runs["hsslms"]]
    ratios = [t / o for o, t in zip(ours, theirs, strict=True)]
    print(
        f"speed-up vs hsslms (same {a.workers} cores): per pair {spread(ratios)}; "
        f"median/median {statistics.median(theirs) / statistics.median(ours):.2f}x, "
        f"min/min {min(theirs) / min(ours):.2f}x"
    )
    for k in kinds[2:]:
        other = [r["seconds"] for r in runs[k]]
        print(
            f"{k} vs hsslms: per pair "
            f"{spread([t / o for o, t in zip(other, theirs, strict=True)])}; "
            f"ours vs {k}: median/median {statistics.median(other) / statistics.median(ours):.1f}x"
        )
    best = min(ours)
    per_core = calls / best / a.workers
    print(
        f"ours: {calls} SHA-256 calls; fastest run {per_core / 1e6:.2f} M hashes/s per core "
        "(whole keygen, files and store included)"
    )
    if ossl64:
        b64, b16k = max(ossl64), max(ossl16k)
        print(
            f"openssl speed -evp sha256, 1 process, best of {len(ossl64)}: 64-byte blocks "
            f"{b64 / 1e6:.2f} M hashes/s (median {statistics.median(ossl64) / 1e6:.2f}); 16 KiB "
            f"{b16k * 256 / 1e6:.2f} M compressions/s"
        )
        print(
            f"ours per core / OpenSSL 64-byte rate: {per_core / b64:.2f}x; "
            f"/ OpenSSL 16 KiB compression rate: {per_core / (b16k * 256):.2f}x "
            f"(a chain step is 1 compression, a 64-byte message 2)"
        )
    else:
        print("openssl not found: no OpenSSL bound")
    if not a.no_sign:
        sign_figures(a.height)


if __name__ == "__main__":
    main()
