"""Caliptra 2.x incremental builds with doit, next to the 1.x figures, measured in the same run.

Projects (generated in a temporary directory, random image bytes):
  * "1.x, 14 images": the 1.x project of bench/incremental.py (AST2700 reference sizes, ECC);
  * "2.x mldsa, 14 images": an ast2755-style 2.x config (padding_align_size 256): the MCU
    runtime (fw_id 2) and 13 SoC images (0x1000..) with the same sizes, ECC + ML-DSA-87 keys;
  * "2.x lms, 14 images": the same config built with pqc=lms, full-tree H5 LMS keys with real
    leaf state (every LMS signature spends a leaf and writes the state store).
--scale S multiplies every image size (e.g. 0.1 for a quick run).

Figures (interleaved with their baseline, A B A B ..., --pairs of them, as in incremental.py):
  cold       `doit flash` with no out/         vs `sha384sum` + `cat` of all the files
  no-op      nothing changed                   vs doit with an empty dodo.py (doit's floor)
  one image  one byte of one SoC image flipped vs `cat` of all the files + `sha384sum` of it
After the cold runs the 1.x and 2.x ML-DSA outputs are compared with create-auth-flash /
create-auth-flash-2x (must be identical; the LMS build spends other leaves than the CLI would).

Usage: .venv/bin/python bench/incremental2.py [--pairs N] [--scale S] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "tests"))

import incremental as inc  # noqa: E402
from helpers.projects import lms_keys  # noqa: E402
from helpers.projects2 import make_project2  # noqa: E402


@dataclass
class Doit2:
    """A 2.x project as incremental.doit_run wants it (doit_cmd, root)."""

    root: Path
    cfg: Path
    keys: Path
    prebuilt: Path
    pqc: str

    def doit_cmd(self, *args: str) -> list[str]:
        return [
            sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), "-d", str(self.root),
            *args, f"cfg={self.cfg}", f"key_dir={self.keys}", f"prebuilt_dir={self.prebuilt}",
            f"pqc={self.pqc}",
        ]  # fmt: skip

    def cli(self, out: Path) -> list[str]:
        return [
            sys.executable, "-m", "imgtool", "create-auth-flash-2x", "--cfg", str(self.cfg),
            "--key-dir", str(self.keys), "--prebuilt-dir", str(self.prebuilt),
            "--pqc-key-type", {"mldsa": "1", "lms": "3"}[self.pqc],
            "--man", str(out / "ast2755-test-auth-manifest.bin"), "--flash", str(out / "f.bin"),
        ]  # fmt: skip


def make2(root: Path, pqc: str, scale: float) -> Doit2:
    if pqc == "lms":
        lms_keys(root / "keys", "h5")  # real leaf state (make_project2 keeps these keys)
    p = make_project2(root, "ast2755", n_soc=len(inc.REFERENCE_SIZES))
    inc.random_file(p.prebuilt / "caliptra-fw.bin", max(1, int(inc.CALIPTRA_SIZE * scale)))
    inc.random_file(p.prebuilt / "mcu-runtime.bin", max(1, int(inc.MCU_SIZE * scale)))
    for i, size in enumerate(inc.REFERENCE_SIZES):
        inc.random_file(p.prebuilt / f"soc-image-{i}.bin", max(1, int(size * scale)))
    os.sync()
    return Doit2(p.root, p.cfg, p.keys, p.prebuilt, pqc)


def identical2(p: Doit2) -> str:
    ref = p.root / "ref"
    ref.mkdir(exist_ok=True)
    subprocess.run(p.cli(ref), check=True, env=inc._env(), capture_output=True, cwd=p.root)
    out = p.root / "out"
    pairs = [
        (out / "ast2755-test-auth-manifest.bin", ref / "ast2755-test-auth-manifest.bin"),
        (out / "ast2755-test-flash-image.bin", ref / "f.bin"),
        (out / "fw_toc.bin", ref / "fw_toc.bin"),
    ]
    for a, b in pairs:
        if a.read_bytes() != b.read_bytes():
            raise SystemExit(f"{a}: differs from create-auth-flash-2x's {b.name}")
    shutil.rmtree(ref)
    return "identical"


def bench(
    label: str, prj: inc.Project | Doit2, img: Path, pairs: int, empty: Path
) -> list[inc.Figure]:
    files = sorted(str(p) for p in prj.prebuilt.iterdir())
    cat_out = prj.root / "cat.bin"
    out = prj.root / "out"

    def rm_out() -> None:
        shutil.rmtree(out, ignore_errors=True)

    def rm_cat() -> None:
        cat_out.unlink(missing_ok=True)

    def baseline_cold() -> inc.Run:
        return inc.shell_seq((["sha384sum", *files], None), (["cat", *files], cat_out))

    run = lambda: inc.doit_run(prj)  # type: ignore[arg-type]  # noqa: E731
    run()  # warm-up
    rm_out()
    cold = inc.Figure(f"{label} | cold", "`sha384sum` + `cat` of all files")
    inc.interleave(pairs, rm_out, run, rm_cat, baseline_cold, cold)
    if isinstance(prj, Doit2):
        if prj.pqc == "mldsa":
            identical2(prj)
    else:
        inc.check_identical(prj)
    run()
    emptycmd = [sys.executable, "-m", "doit", "-f", str(empty), "-d", str(empty.parent)]
    noop = inc.Figure(f"{label} | no-op", "doit, empty dodo.py")
    inc.interleave(pairs, lambda: None, run, lambda: None, lambda: inc.timed(emptycmd), noop)
    one = inc.Figure(f"{label} | one image", "`cat` of all files + `sha384sum` of it")
    if not cat_out.exists():
        baseline_cold()
    inc.interleave(
        pairs, lambda: inc.flip_byte(img), run, lambda: None,
        lambda: inc.shell_seq((["cat", *files], cat_out), (["sha384sum", str(img)], None)), one,
    )  # fmt: skip
    cat_out.unlink(missing_ok=True)
    return [cold, noop, one]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=5, help="interleaved pairs per figure")
    ap.add_argument("--scale", type=float, default=1.0, help="image size factor (reference = 1)")
    ap.add_argument("--keep", type=Path, help="generate the projects here instead of a temp dir")
    a = ap.parse_args()
    if a.pairs < 1 or a.scale <= 0:
        ap.error("--pairs must be >= 1 and --scale > 0")
    tmp = a.keep or Path(tempfile.mkdtemp(prefix="cptra-bench2-"))
    tmp.mkdir(parents=True, exist_ok=True)
    empty = tmp / "empty" / "dodo.py"
    empty.parent.mkdir(exist_ok=True)
    empty.write_text("def task_nothing():\n    return {'actions': None, 'uptodate': [True]}\n")
    figs: list[inc.Figure] = []
    try:
        sizes = tuple(max(1, int(s * a.scale)) for s in inc.REFERENCE_SIZES)
        one = inc.make(tmp / "one", sizes, max(4096, int(inc.CALIPTRA_SIZE * a.scale)),
                       max(1, int(inc.MCU_SIZE * a.scale)))  # fmt: skip
        figs += bench("1.x, 14 images", one, one.prebuilt / "img5.bin", a.pairs, empty)
        for pqc in ("mldsa", "lms"):
            p = make2(tmp / f"two-{pqc}", pqc, a.scale)
            img = p.prebuilt / "soc-image-5.bin"
            figs += bench(f"2.x {pqc}, 14 images", p, img, a.pairs, empty)
        head = "| project | run | ours min / median s | baseline min / median s | per pair "
        print(head + "min / median / max | tasks run | peak RSS MiB, largest process | target |")
        print("|---|---|---|---|---|---|---|---|")
        for f in figs:
            print(inc.row(f))
        print()
        print("| run | 1.x median s | 2.x mldsa median s (x 1.x) | 2.x lms median s (x 1.x) |")
        print("|---|---|---|---|")
        by = {f.label: statistics.median(r.wall for r in f.ours) for f in figs}
        for run in ("cold", "no-op", "one image"):
            base = by[f"1.x, 14 images | {run}"]
            cells = [f"{base:.2f}"]
            for pqc in ("mldsa", "lms"):
                v = by[f"2.x {pqc}, 14 images | {run}"]
                cells.append(f"{v:.2f} ({v / base:.2f}x)")
            print(f"| {run} | {' | '.join(cells)} |")
        total = sum(sizes) + int(inc.MCU_SIZE * a.scale)
        print(
            f"({a.pairs} interleaved pairs per figure; images {total / 2**20:.2f} MiB, scale "
            f"{a.scale:g}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at the "
            "end; 1.x and 2.x ML-DSA outputs identical to the CLI's)"
        )
    finally:
        if a.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
