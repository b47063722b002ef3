"""Incremental builds with doit, each figure against a baseline measured in the same run.

Projects (generated in a temporary directory: ECC keys, random image bytes, a Caliptra bundle
holding the project's keys):
  * "14 images": the images of the AST2700 reference config, with the reference sizes;
  * "127 images": 124 SoC images + Caliptra bundle, manifest and MCU runtime (the most a FLSH
    image holds), 513 MiB of images;
  * "127 images, N GiB" (--gib N, default 2; 0 skips it): the same with larger images.

Every figure comes from interleaved runs, ours and its baseline one after the other (A B A B
..., --pairs, at least 5), and is printed as min / median of each side and min / median / max of
the per-pair ratio:
  cold        `doit flash` with no out/           vs `sha384sum` + `cat` of all the files
  -n 2        `doit -n 2 -P process flash`, cold  vs the serial cold build (ratio = speed-up)
  one image   one byte of one image flipped       vs `cat` of all the files + `sha384sum` of it
  no-op       nothing changed                     vs doit with an empty dodo.py (doit's floor)
  touched     every image a new mtime, same bytes vs `sha384sum` of all the files
Before every timed run (either side) the page cache is flushed to disk (`sync`, not timed), so
that no run pays for the writeback of another's output; the images stay cached, as they are
right after a build. Inputs are older than the checker's 2 s "racy" window except the image
just changed in "one image" (as after a real rebuild of one image). doit runs as
`python -m doit -f dodo.py` with bytecode caching on.

Peak RSS: VmHWM of each process of the run (doit and its -P workers, each on its own address
space, never ru_maxrss), sampled from /proc every 10 ms; the largest is printed.
After the cold runs the flash image is compared with `create-auth-flash`'s (must be identical).

Usage: .venv/bin/python bench/incremental.py [--pairs N] [--gib N] [--skip-large] [--keep DIR]
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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
SAMPLE_S = 0.010


# ---------------------------------------------------------------------------- measuring
def _vmhwm_kib(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^VmHWM:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else None


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for t in tasks:
            try:
                todo += [int(x) for x in (t / "children").read_text().split()]
            except OSError:
                pass
    return out


class TreeWatch:
    """Peak VmHWM per process of a process tree, sampled every SAMPLE_S (a high-water mark
    only grows, so the last sample before a process exits is its peak to within SAMPLE_S)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _sample(self) -> None:
        for p in _tree(self.pid):
            hwm = _vmhwm_kib(p)
            if hwm is not None:
                self.peak[p] = max(self.peak.get(p, 0), hwm)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(SAMPLE_S)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return max(self.peak.values(), default=0)


@dataclass
class Run:
    wall: float
    tasks: int = 0
    rss_kib: int = 0


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def timed(cmd: list[str], stdout: Path | None = None, cwd: Path | None = None) -> Run:
    """Run one command (output to ``stdout`` or captured); wall time and peak RSS of its tree."""
    with tempfile.TemporaryFile() as cap:
        out = open(stdout, "wb") if stdout else cap  # noqa: SIM115 - closed below
        try:
            t = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=out, stderr=cap, env=_env(), cwd=cwd)
            watch = TreeWatch(proc.pid)
            rc = proc.wait()
            wall = time.perf_counter() - t
            rss = watch.stop()
        finally:
            if stdout:
                out.close()
        cap.seek(0)
        text = cap.read().decode(errors="replace")
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {rc}\n{text}")
    return Run(wall, len(re.findall(r"^\.  ", text, re.M)), rss)


def doit_run(prj: Project, *args: str) -> Run:
    # doit prints the task lines on stdout: capture both streams into one file
    with tempfile.TemporaryFile() as cap:
        t = time.perf_counter()
        proc = subprocess.Popen(
            prj.doit_cmd(*args, "flash"), stdout=cap, stderr=subprocess.STDOUT, env=_env()
        )
        watch = TreeWatch(proc.pid)
        rc = proc.wait()
        wall = time.perf_counter() - t
        rss = watch.stop()
        cap.seek(0)
        text = cap.read().decode(errors="replace")
    if rc != 0:
        raise SystemExit(f"doit {' '.join(args)}: exit {rc}\n{text}")
    return Run(wall, len(re.findall(r"^\.  ", text, re.M)), rss)


def shell_seq(*cmds: tuple[list[str], Path | None]) -> Run:
    """Commands one after the other (each output to its file or discarded), as one figure."""
    total, rss = 0.0, 0
    for cmd, out in cmds:
        r = timed(cmd, out)
        total += r.wall
        rss = max(rss, r.rss_kib)
    return Run(total, 0, rss)


@dataclass
class Figure:
    label: str
    base_label: str
    ours: list[Run] = field(default_factory=list)
    base: list[Run] = field(default_factory=list)
    speedup: bool = False  # ratio = base / ours (for -n 2 against serial)
    target: str = ""  # issue 15's target, checked on the median

    def verdict(self) -> str:
        if not self.target:
            return "-"
        kind, _, value = self.target.partition(" ")
        limit = float(value.rstrip("xs"))
        if value.endswith("s"):
            got = statistics.median(r.wall for r in self.ours)
        else:
            got = statistics.median(self.ratios())
        ok = got <= limit if kind == "<=" else got >= limit
        return f"{self.target}: {'met' if ok else 'NOT met'}"

    def ratios(self) -> list[float]:
        pairs = zip(self.ours, self.base, strict=True)
        if self.speedup:
            return [b.wall / o.wall for o, b in pairs]
        return [o.wall / b.wall for o, b in pairs]


def interleave(
    pairs: int,
    prepare_a: Callable[[], None],
    a: Callable[[], Run],
    prepare_b: Callable[[], None],
    b: Callable[[], Run],
    fig: Figure,
) -> Figure:
    for _ in range(pairs):
        prepare_a()
        os.sync()
        fig.ours.append(a())
        prepare_b()
        os.sync()
        fig.base.append(b())
    return fig


# ---------------------------------------------------------------------------- projects
def bundle_of(keys: Path, size: int) -> bytes:
    """A structurally valid (unsigned) Caliptra bundle of ``size`` bytes holding the project's
    keys: caliptra_file must parse as one, and the key check must pass."""
    head = stand_in_bundle(keys)
    return head + os.urandom(size - len(head))


def random_file(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        while size:
            n = min(size, 1 << 24)
            fh.write(os.urandom(n))
            size -= n


def make(root: Path, sizes: tuple[int, ...], caliptra: int, mcu: int) -> Project:
    prj = make_project(root, sizes=sizes, mcu=os.urandom(mcu))
    (prj.prebuilt / "caliptra-fw.bin").write_bytes(bundle_of(prj.keys, caliptra))
    for p in prj.prebuilt.glob("img*.bin"):
        random_file(p, p.stat().st_size)
    os.sync()
    return prj


def flip_byte(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.seek(os.path.getsize(path) // 2)
        b = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([b[0] ^ 0xFF]))


def touch_all(prebuilt: Path) -> None:
    """New mtimes, same bytes (a checkout, a rebuild that reproduces the same binary), older
    than the checker's 2 s "racy" window; then wait out the window for the new ctimes."""
    for p in prebuilt.iterdir():
        st = p.stat()
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns - 10_000_000_000))
    time.sleep(2.1)


def check_identical(prj: Project) -> str:
    """The doit flash image against create-auth-flash's (not timed)."""
    flash = prj.root / "out" / "test-flash-image.bin"
    ref_dir = prj.root / "ref"
    ref_dir.mkdir(exist_ok=True)
    ref = ref_dir / "flash.bin"
    cmd = [sys.executable, "-m", "imgtool", "create-auth-flash", *prj.args()]
    cmd += ["--man", str(prj.root / "out" / "test-auth-manifest.bin"), "--flash", str(ref)]
    subprocess.run(cmd, check=True, env=_env(), capture_output=True)
    same = subprocess.run(["cmp", "-s", str(flash), str(ref)]).returncode == 0
    shutil.rmtree(ref_dir)
    if not same:
        raise SystemExit(f"{flash}: differs from create-auth-flash's image")
    return "identical"


# ---------------------------------------------------------------------------- scenarios
def bench_project(label: str, prj: Project, pairs: int, empty_dodo: Path) -> list[Figure]:
    files = sorted(str(p) for p in prj.prebuilt.iterdir())
    cat_out = prj.root / "cat.bin"
    img = prj.prebuilt / "img5.bin"
    out = prj.root / "out"
    figs: list[Figure] = []

    def rm_out() -> None:
        shutil.rmtree(out, ignore_errors=True)

    def rm_cat() -> None:
        cat_out.unlink(missing_ok=True)

    def baseline_cold() -> Run:
        return shell_seq((["sha384sum", *files], None), (["cat", *files], cat_out))

    doit_run(prj)  # warm-up: bytecode caches, page cache
    rm_out()
    large = len(files) > 100
    cold = Figure(
        f"{label} | cold", "`sha384sum` + `cat` of all files", target="<= 1.3x" if large else ""
    )
    interleave(pairs, rm_out, lambda: doit_run(prj), rm_cat, baseline_cold, cold)
    figs.append(cold)
    par = Figure(
        f"{label} | cold `-n 2 -P process`",
        "serial cold",
        speedup=True,
        target=">= 1.5x" if large else "",
    )
    interleave(
        pairs, rm_out, lambda: doit_run(prj, "-n", "2", "-P", "process"), rm_out,
        lambda: doit_run(prj), par,
    )  # fmt: skip
    figs.append(par)
    check_identical(prj)
    empty = [sys.executable, "-m", "doit", "-f", str(empty_dodo), "-d", str(empty_dodo.parent)]
    doit_run(prj)
    noop = Figure(f"{label} | no-op", "doit, empty dodo.py", target="<= 0.2s")
    interleave(pairs, lambda: None, lambda: doit_run(prj), lambda: None, lambda: timed(empty), noop)
    figs.append(noop)
    one = Figure(
        f"{label} | one image",
        "`cat` of all files + `sha384sum` of it",
        target="<= 1.15x" if large else "",
    )
    if not cat_out.exists():
        baseline_cold()
    interleave(
        pairs, lambda: flip_byte(img), lambda: doit_run(prj), lambda: None,
        lambda: shell_seq((["cat", *files], cat_out), (["sha384sum", str(img)], None)), one,
    )  # fmt: skip
    figs.append(one)
    time.sleep(2.1)  # the flipped image settles: the touched runs below re-read, not rebuild
    doit_run(prj)
    touched = Figure(f"{label} | all touched (same bytes)", "`sha384sum` of all files")
    interleave(
        pairs, lambda: touch_all(prj.prebuilt), lambda: doit_run(prj), lambda: None,
        lambda: timed(["sha384sum", *files]), touched,
    )  # fmt: skip
    figs.append(touched)
    after = Figure(f"{label} | no-op after touch", "doit, empty dodo.py")
    interleave(
        pairs, lambda: None, lambda: doit_run(prj), lambda: None, lambda: timed(empty), after
    )
    figs.append(after)
    cat_out.unlink(missing_ok=True)
    return figs


def row(f: Figure) -> str:
    o = [r.wall for r in f.ours]
    b = [r.wall for r in f.base]
    rs = f.ratios()
    tasks = sorted({r.tasks for r in f.ours})
    rss = max(r.rss_kib for r in f.ours) / 1024
    brss = max(r.rss_kib for r in f.base) / 1024
    what = "speed-up" if f.speedup else "ours / baseline"
    return (
        f"| {f.label} | {min(o):.2f} / {statistics.median(o):.2f} | {f.base_label}: "
        f"{min(b):.2f} / {statistics.median(b):.2f} | {what}: {min(rs):.2f} / "
        f"{statistics.median(rs):.2f} / {max(rs):.2f} | {','.join(map(str, tasks))} | "
        f"{rss:.0f} (baseline {brss:.0f}) | {f.verdict()} |"
    )


def growth(points: list[tuple[float, dict[str, float]]]) -> list[str]:
    """Per-GiB cost from the two largest projects (same task count), extrapolated."""
    if len(points) < 2:
        return []
    (g1, m1), (g2, m2) = points[-2], points[-1]
    lines = ["", "Growth (medians; straight line through the two 127-image projects):", ""]
    lines.append("| run | s per GiB | fixed s | 1 GiB | 4 GiB | 16 GiB |")
    lines.append("|---|---|---|---|---|---|")
    for key in m1:
        slope = (m2[key] - m1[key]) / (g2 - g1)
        fixed = m1[key] - slope * g1
        est = [fixed + slope * g for g in (1, 4, 16)]
        lines.append(
            f"| {key} | {slope:.2f} | {fixed:.2f} | {est[0]:.1f} | {est[1]:.1f}* | {est[2]:.1f}* |"
        )
    lines.append(
        "(* extrapolated, never measured: a FLSH image has 32-bit offsets, so one flash image "
        "holds less than 4 GiB; 4 and 16 GiB are throughput only, e.g. several projects)"
    )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=5, help="interleaved pairs per figure (>= 5)")
    ap.add_argument("--gib", type=float, default=2.0, help="size of the third project (0: none)")
    ap.add_argument("--skip-large", action="store_true", help="only the 14-image project")
    ap.add_argument("--keep", type=Path, help="generate the projects here instead of a temp dir")
    a = ap.parse_args()
    if a.pairs < 5:
        ap.error("--pairs must be at least 5")
    tmp = a.keep or Path(tempfile.mkdtemp(prefix="cptra-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    empty = tmp / "empty" / "dodo.py"
    empty.parent.mkdir(exist_ok=True)
    empty.write_text("def task_nothing():\n    return {'actions': None, 'uptodate': [True]}\n")
    figs: list[Figure] = []
    sizes: list[tuple[str, float]] = []
    try:
        small = make(tmp / "ref", REFERENCE_SIZES, CALIPTRA_SIZE, MCU_SIZE)
        figs += bench_project("14 images", small, a.pairs, empty)
        projects = [] if a.skip_large else [("127 images", 512 / 1024)]
        if not a.skip_large and a.gib > 0:
            projects.append((f"127 images, {a.gib:g} GiB", a.gib))
        points: list[tuple[float, dict[str, float]]] = []
        for label, gib in projects:
            each = int(gib * 2**30) // LARGE_SOC + 4096
            prj = make(tmp / label.replace(" ", "_").replace(",", ""), (each,) * LARGE_SOC,
                       100_000, 60_000)  # fmt: skip
            total = sum(p.stat().st_size for p in prj.prebuilt.iterdir())
            sizes.append((label, total / 2**20))
            pf = bench_project(label, prj, a.pairs, empty)
            figs += pf
            meds = {f.label.split(" | ")[1]: statistics.median(r.wall for r in f.ours) for f in pf}
            points.append((total / 2**30, meds))
            shutil.rmtree(prj.root, ignore_errors=True)
        head = "| project | run | ours min / median s | baseline min / median s | per pair "
        print(head + "min / median / max | tasks run | peak RSS MiB, largest process | target |")
        print("|---|---|---|---|---|---|---|---|")
        for f in figs:
            print(row(f))
        for label, m in sizes:
            print(f"{label}: {m:.0f} MiB of images")
        for line in growth(points):
            print(line)
        print(
            f"({a.pairs} interleaved pairs per figure; {os.cpu_count()} CPUs; load average "
            f"{os.getloadavg()[0]:.1f} at the end; flash images identical to create-auth-flash's)"
        )
    finally:
        if a.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
