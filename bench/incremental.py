"""Incremental builds with doit: cold, no-op and one-image rebuilds; tasks executed; peak RSS.

Prints a markdown table. Two projects are generated in a temporary directory (ECC keys):
  * "reference-like": 14 images with the sizes of the AST2700 reference prebuilt binaries;
  * "large": 127 flash images (124 SoC images), >= 512 MiB, against `sha384sum` + `cat`.

Usage: .venv/bin/python bench/incremental.py [--skip-large] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "helpers"))

from projects import Project, make_project  # noqa: E402

REFERENCE_SIZES = (
    30_680,
    65_536,
    29_880,
    65_536,
    53_076,
    65_536,
    16_384,
    40_960,
    31_035,
    441_488,
    793_904,
    72_876,
    70_840,
)


def run_doit(prj: Project, *extra: str) -> tuple[float, int, int]:
    """(wall seconds, tasks executed, peak RSS KiB) of one `doit flash` run."""
    cmd = prj.doit_cmd(*extra, "flash")
    out = tempfile.TemporaryFile()
    t = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    text = out.read().decode()
    if proc.returncode != 0:
        raise SystemExit(text)
    executed = len(re.findall(r"^\.  ", text, re.M))
    return wall, executed, usage.ru_maxrss


def bench_project(name: str, prj: Project, rows: list[str], extra: tuple[str, ...] = ()) -> None:
    cold = run_doit(prj, *extra)
    noop = run_doit(prj, *extra)
    img = prj.prebuilt / "img5.bin"
    data = bytearray(img.read_bytes())
    data[len(data) // 2] ^= 0xFF
    img.write_bytes(bytes(data))
    one = run_doit(prj, *extra)
    label = name + (f" ({' '.join(extra)})" if extra else "")
    for what, (wall, n, rss) in (("cold", cold), ("no-op", noop), ("one image", one)):
        rows.append(f"| {label} | {what} | {wall:.2f} | {n} | {rss / 1024:.0f} |")


def baseline(prj: Project) -> float:
    files = sorted(str(p) for p in prj.prebuilt.iterdir())
    t = time.perf_counter()
    subprocess.run(["sha384sum", *files], check=True, capture_output=True)
    with open(prj.root / "cat.bin", "wb") as out:
        subprocess.run(["cat", *files], check=True, stdout=out)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--keep", type=Path, help="generate the projects here instead of a temp dir")
    a = ap.parse_args()
    tmp = a.keep or Path(tempfile.mkdtemp(prefix="cptra-bench-"))
    rows = ["| project | run | wall s | tasks executed | peak RSS MiB |", "|---|---|---|---|---|"]
    try:
        small = make_project(tmp / "ref", sizes=REFERENCE_SIZES)
        bench_project("14 images (reference sizes)", small, rows)
        notes = []
        if not a.skip_large:
            # 124 SoC images + Caliptra bundle, manifest and MCU runtime = 127 flash images,
            # the most the FLSH readers accept
            size = (512 * 1024 * 1024) // 124 + 4096
            big = make_project(
                tmp / "large",
                sizes=(size,) * 124,
                caliptra=os.urandom(100_000),
                mcu=os.urandom(60_000),
            )
            for p in big.prebuilt.glob("img*.bin"):  # random bytes, not a repeated pattern
                with open(p, "wb") as fh:
                    fh.write(os.urandom(size))
            total = sum(p.stat().st_size for p in big.prebuilt.iterdir())
            base = baseline(big)
            bench_project("127 images", big, rows)
            shutil.rmtree(big.root / "out")
            bench_project("127 images", big, rows, ("-n", "2", "-P", "process"))
            notes.append(
                f"large project: {total / 2**20:.0f} MiB in 127 images; "
                f"sha384sum + cat of the same files: {base:.2f} s"
            )
        print("\n".join(rows))
        for n in notes:
            print(n)
        usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"(bench driver itself: {usage / 1024:.0f} MiB peak RSS)")
    finally:
        if a.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
