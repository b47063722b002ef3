"""LMS H15/W4 full-tree key generation: ours vs hsslms with the same cores; signing with cache.

Prints numbers only. Usage: .venv/bin/python bench/lms_keygen.py [--height 15] [--skip-hsslms]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from imgtool import lms, lms_tree
from imgtool.lms_signer import LmsSigner


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--height", type=int, default=15, choices=[5, 10, 15])
    ap.add_argument("--skip-hsslms", action="store_true")
    a = ap.parse_args()
    lms_type = {5: lms.LMS_SHA256_M24_H5, 10: lms.LMS_SHA256_M24_H10, 15: lms.LMS_SHA256_M24_H15}[
        a.height
    ]
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as d:
        os.environ["CPTRA_IMGTOOL_STATE"] = str(Path(d) / "lms-state.sqlite3")  # not the user's
        t = time.perf_counter()
        priv, _ = lms_tree.generate(Path(d) / "k", lms_type, lms.LMOTS_SHA256_N24_W4, workers=cores)
        ours = time.perf_counter() - t
        cache_size = lms_tree.cache_path(priv).stat().st_size
        lms_tree._TREES.clear()
        t = time.perf_counter()
        signer = LmsSigner.load(priv)
        signer.sign_digest(bytes(48))
        first = time.perf_counter() - t
        times = []
        for i in range(200):
            msg = hashlib.sha384(b"%d" % i).digest()
            t = time.perf_counter()
            signer.sign_digest(msg)
            times.append(time.perf_counter() - t)
    print(f"cores: {cores}")
    print(f"ours    H{a.height}/W4 keygen: {ours:.2f} s")
    theirs = None
    if not a.skip_hsslms:
        from hsslms import LMOTS_ALGORITHM_TYPE, LMS_ALGORITHM_TYPE, LMS_Priv

        t = time.perf_counter()
        LMS_Priv(
            getattr(LMS_ALGORITHM_TYPE, f"LMS_SHA256_M24_H{a.height}"),
            LMOTS_ALGORITHM_TYPE.LMOTS_SHA256_N24_W4,
            num_cores=cores,
        )
        theirs = time.perf_counter() - t
        print(f"hsslms  H{a.height}/W4 keygen: {theirs:.2f} s")
        print(f"speed-up: {theirs / ours:.2f}x")
    print(f"tree cache file: {cache_size} bytes")
    print(f"first signature (loads the cache): {first * 1000:.1f} ms")
    print(
        f"signature with cache (incl. durable leaf reservation): median "
        f"{statistics.median(times) * 1000:.2f} ms, p99 {sorted(times)[197] * 1000:.2f} ms"
    )


if __name__ == "__main__":
    main()
