"""Incremental builds with doit: cold, no-op and one-image rebuilds; tasks executed; peak RSS.

Prints a markdown table. Two projects are generated in a temporary directory (ECC keys, random
image bytes):
  * "14 images": the images of the AST2700 reference config, with the reference sizes;
  * "127 images": 124 SoC images + Caliptra bundle, manifest and MCU runtime (the most a FLSH
    image holds), >= 512 MiB, compared with `sha384sum` + `cat` of the same files.

Each figure is the median of --repeat runs of `python -m doit -f dodo.py flash cfg=...` (a
subprocess; peak RSS is that process's own, from wait4). Python bytecode caching is on for the
doit process even if PYTHONDONTWRITEBYTECODE is set here, as on a developer machine.

Usage: .venv/bin/python bench/incremental.py [--skip-large] [--repeat N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "helpers"))

from projects import Project, make_project, stand_in_bundle  # noqa: E402

# SoC images of the reference ast2700-default config (fw_id 2..14), reference sizes
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
MCU_SIZE = 61_432
CALIPTRA_SIZE = 108_148
LARGE_SOC = 124
Run = tuple[float, int, int]  # wall s, tasks executed, peak RSS KiB


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_doit(prj: Project) -> Run:
    """(wall seconds, tasks executed, peak RSS KiB) of one `doit flash` run."""
    cmd = prj.doit_cmd("flash")
    with tempfile.TemporaryFile() as out:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env())
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    if proc.returncode != 0:
        raise SystemExit(text)
    return wall, len(re.findall(r"^\.  ", text, re.M)), usage.ru_maxrss


def median_run(prj: Project, prepare: Callable[[], None], repeat: int) -> Run:
    runs = []
    for _ in range(repeat):
        prepare()
        runs.append(run_doit(prj))
    tasks = {n for _, n, _ in runs}
    assert len(tasks) == 1, f"task counts differ between repeats: {tasks}"
    return statistics.median(w for w, _, _ in runs), runs[0][1], max(r for _, _, r in runs)


def bundle_of(size: int) -> bytes:
    """A structurally valid (unsigned) Caliptra bundle of ``size`` bytes: caliptra_file must
    parse as one."""
    head = stand_in_bundle()
    return head + os.urandom(size - len(head))


def flip_byte(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.seek(os.path.getsize(path) // 2)
        b = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([b[0] ^ 0xFF]))


def touch_all(prebuilt: Path) -> None:
    """New mtimes, same bytes (a checkout, a rebuild that reproduces the same binary); then
    wait out the checker's 2 s "racy" window, as a real checkout would be older than that."""
    for p in prebuilt.iterdir():
        st = p.stat()
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns - 10_000_000_000))
    time.sleep(2.1)


def cold_runs(prj: Project, repeat: int, between: Callable[[], None] | None = None) -> Run:
    def prepare() -> None:
        if between is not None:
            between()
        shutil.rmtree(prj.root / "out", ignore_errors=True)

    return median_run(prj, prepare, repeat)


def bench_project(
    label: str, prj: Project, rows: list[str], repeat: int, cold: Run | None = None
) -> dict[str, Run]:
    img = prj.prebuilt / "img5.bin"
    res = {
        "cold": cold or cold_runs(prj, repeat),
        "no-op": median_run(prj, lambda: None, repeat),
        "one image": median_run(prj, lambda: flip_byte(img), repeat),
        "all touched": median_run(prj, lambda: touch_all(prj.prebuilt), repeat),
    }
    res["no-op after touch"] = median_run(prj, lambda: None, repeat)
    for what, (wall, n, rss) in res.items():
        rows.append(f"| {label} | {what} | {wall:.2f} | {n} | {rss / 1024:.0f} |")
    return res


def random_images(prj: Project) -> None:
    for p in prj.prebuilt.glob("img*.bin"):
        size = p.stat().st_size
        with open(p, "wb") as fh:
            while size:
                n = min(size, 1 << 24)
                fh.write(os.urandom(n))
                size -= n


def baseline(prj: Project, times: list[float]) -> None:
    """`sha384sum` over the image files, then `cat` of them into one file; appends the time."""
    files = sorted(str(p) for p in prj.prebuilt.iterdir())
    t = time.perf_counter()
    subprocess.run(["sha384sum", *files], check=True, capture_output=True)
    with open(prj.root / "cat.bin", "wb") as out:
        subprocess.run(["cat", *files], check=True, stdout=out)
    times.append(time.perf_counter() - t)
    (prj.root / "cat.bin").unlink()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    ap.add_argument("--keep", type=Path, help="generate the projects here instead of a temp dir")
    a = ap.parse_args()
    tmp = a.keep or Path(tempfile.mkdtemp(prefix="cptra-bench-"))
    rows = ["| project | run | wall s | tasks executed | peak RSS MiB |", "|---|---|---|---|---|"]
    notes = []
    try:
        small = make_project(
            tmp / "ref",
            sizes=REFERENCE_SIZES,
            caliptra=bundle_of(CALIPTRA_SIZE),
            mcu=os.urandom(MCU_SIZE),
        )
        random_images(small)
        bench_project("14 images", small, rows, a.repeat)
        if not a.skip_large:
            size = (512 * 1024 * 1024) // LARGE_SOC + 4096
            big = make_project(
                tmp / "large",
                sizes=(size,) * LARGE_SOC,
                caliptra=bundle_of(100_000),
                mcu=os.urandom(60_000),
            )
            random_images(big)
            total = sum(p.stat().st_size for p in big.prebuilt.iterdir())
            time.sleep(2.1)  # images older than the checker's "racy" window, as in real use
            # the baseline right before each cold build, so that both see the same machine load
            base_times: list[float] = []
            cold = cold_runs(big, a.repeat, lambda: baseline(big, base_times))
            base = statistics.median(base_times)
            res = bench_project("127 images", big, rows, a.repeat, cold)
            notes.append(
                f"127 images: {total / 2**20:.0f} MiB; `sha384sum` + `cat` of the same files "
                f"{base:.2f} s; cold build / that = {res['cold'][0] / base:.2f}"
            )
        print("\n".join(rows))
        print(
            '"all touched": every image given a new mtime with the same bytes; "no-op after '
            'touch": the runs after that (the content fingerprints are cached)'
        )
        for n in notes:
            print(n)
        print(f"(median of {a.repeat} runs each; {os.cpu_count()} CPUs)")
    finally:
        if a.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
