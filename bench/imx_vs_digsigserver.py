"""/sign/imx side by side with digsigserver: the same NXP cst (Debian's, through the test shim),
the same HAB4 test PKI and key archive, the same CSF and 32 KiB artifact, the same box, run
interleaved (rounds alternate which server goes first). Both servers run with their default
settings (ours: 4 jobs per CPU, queueing; digsigserver: one Sanic worker). Clients do not retry.

Measured per server: latency of sequential requests (min/median/p90/max), throughput with 8 and
32 concurrent clients (successful responses per second, per round; 429s and errors counted),
CPU per request over each server's process tree (the server processes' own, and their reaped
children's), files left behind in the work/temp dirs; plus a bare `cst` run on a prepared dir
(no server) and a run through our sandbox runner (no server); the load average at start and end.

digsigserver is not on PyPI: install it from a checkout into a scratch venv outside this
repository and pass its executable, e.g.
  python3 -m venv /work/scratch/dss && /work/scratch/dss/bin/pip install /path/to/digsigserver
  .venv/bin/python bench/imx_vs_digsigserver.py --digsigserver /work/scratch/dss/bin/digsigserver
Prints numbers only.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "server"))
import imx_pki  # noqa: E402
from srvfixtures import _add_token, free_port  # noqa: E402

MACHINE = "imx8mm-evk"


def wait_up(url: str, proc: subprocess.Popen[bytes], log: Path, path: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-2000:])
        try:
            httpx.get(url + path, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not start: {log.read_text()[-2000:]}")


class Target:
    def __init__(self, name: str, url: str, headers: dict[str, str], pid: int) -> None:
        self.name, self.url, self.headers, self.pid = name, url, headers, pid

    def cpu_s(self) -> float:
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        """CPU seconds of the server's process tree (Sanic runs its app in a worker process):
        the server processes' own, and their reaped children's (tar, gzip, bwrap, sh, cst)."""
        stats = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    f = (d / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                own, reaped = int(f[11]) + int(f[12]), int(f[13]) + int(f[14])
                stats[int(d.name)] = (int(f[1]), own, reaped)
        tree, todo = set(), [self.pid]
        while todo:
            p = todo.pop()
            tree.add(p)
            todo += [c for c, (pp, _, _) in stats.items() if pp == p and c not in tree]
        hz = os.sysconf("SC_CLK_TCK")
        own = sum(stats[p][1] for p in tree if p in stats) / hz
        return own, sum(stats[p][2] for p in tree if p in stats) / hz

    def request(self, c: httpx.Client, csf: bytes, artifact: bytes) -> int:
        r = c.post(
            self.url + "/sign/imx",
            headers=self.headers,
            data={"machine": MACHINE, "soctype": "mx8m", "cstversion": imx_pki.CST_VERSION},
            files={
                "csf": ("csf.txt", csf, "text/plain"),
                "artifact": ("flash.bin", artifact, "application/octet-stream"),
            },
        )
        if r.status_code == 200 and r.content[:1] != b"\xd4":
            return -1
        return r.status_code


def sequential(t: Target, csf: bytes, art: bytes, n: int) -> list[float]:
    lat = []
    with httpx.Client(timeout=120) as c:
        for _ in range(n):
            s = time.perf_counter()
            code = t.request(c, csf, art)
            lat.append(time.perf_counter() - s)
            if code != 200:
                raise RuntimeError(f"{t.name}: HTTP {code}")
    return lat


def concurrent(t: Target, csf: bytes, art: bytes, clients: int, per: int) -> dict[str, float]:
    codes: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = []
        with httpx.Client(timeout=300) as c:
            for _ in range(per):
                try:
                    mine.append(t.request(c, csf, art))
                except httpx.HTTPError:
                    mine.append(0)
        with lock:
            codes.extend(mine)

    th = [threading.Thread(target=worker) for _ in range(clients)]
    cpu0 = t.cpu_split()
    s = time.perf_counter()
    mine0 = time.process_time()  # the client threads' CPU: they share the 2 cores too
    for x in th:
        x.start()
    for x in th:
        x.join()
    wall = time.perf_counter() - s
    mine1 = time.process_time()
    cpu1 = t.cpu_split()
    ok = codes.count(200)
    n = max(1, len(codes))
    return {
        "cpu_ms": (sum(cpu1) - sum(cpu0)) * 1000 / n,
        "own_ms": (cpu1[0] - cpu0[0]) * 1000 / n,
        "children_ms": (cpu1[1] - cpu0[1]) * 1000 / n,
        "client_ms": (mine1 - mine0) * 1000 / n,
        "rps": ok / wall,
        "ok": ok,
        "429": codes.count(429),
        "other": len(codes) - ok - codes.count(429),
    }


def bare_cst(cst: Path, pki: Path, csf: bytes, art: bytes, tmp: Path, n: int) -> list[float]:
    d = tmp / "bare"
    shutil.copytree(pki, d)
    (d / "csf-input.txt").write_bytes(csf)
    (d / "flash.bin").write_bytes(art)
    lat = []
    for _ in range(n):
        s = time.perf_counter()
        subprocess.run(
            [str(cst), "-i", "csf-input.txt", "-o", "out.bin"],
            cwd=d,
            check=True,
            capture_output=True,
            env={"PATH": "/usr/bin:/bin", "LANG": "C"},
        )
        lat.append(time.perf_counter() - s)
    return lat


_RUNNERS: list[object] = []


def _runner() -> Any:
    """One runner for the whole benchmark (it finds cst's libraries once, as the server does)."""
    from imgtool.server.sandbox import CstRunner

    if not _RUNNERS:
        _RUNNERS.append(CstRunner(sandbox=True, workers=1))
    return _RUNNERS[0]


def sandboxed_cst(cst: Path, pki: Path, csf: bytes, art: bytes, tmp: Path, n: int) -> list[float]:
    """cst through our runner, as the server runs it (the artifact staged in memory)."""
    from imgtool.server.sandbox import Artifact

    runner = _runner()
    binds = {"crts": pki / "crts", "keys": pki / "keys"}
    lat = []
    for _ in range(n):
        s = time.perf_counter()
        staged = Artifact.from_bytes("flash.bin", art, tmp)
        try:
            runner.run_sync(cst, csf, staged, binds, 60)
        finally:
            staged.close()
        lat.append(time.perf_counter() - s)
    return lat


def _children_cpu() -> float:
    """CPU seconds of this process's reaped children (the servers are reaped only at the end)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _spread(xs: list[float]) -> str:
    """min / median / p90 / max of latencies in seconds, printed in ms."""
    v = sorted(x * 1000 for x in xs)
    p90 = v[min(len(v) - 1, int(len(v) * 0.9))]
    return (
        f"min {v[0]:.1f} / median {statistics.median(v):.1f} / p90 {p90:.1f} / max {v[-1]:.1f} ms"
    )


def count_files(d: Path) -> int:
    return sum(len(files) + len(dirs) for _, dirs, files in os.walk(d))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--digsigserver", required=True, help="digsigserver executable (its venv)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seq", type=int, default=20)
    ap.add_argument("--per-client", type=int, default=0, help="requests per client (0: auto)")
    ap.add_argument("--ours-jobs", type=int, default=0, help="--max-jobs (0: server default)")
    a = ap.parse_args()
    if imx_pki.cst_available() is not None:
        print(f"skipped: {imx_pki.cst_available()}")
        return
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        pki = imx_pki.make_pki(tmp / "imx")
        base = tmp / "nxp"
        cst = imx_pki.install_cst(base)
        root = tmp / "keystore"
        (root / MACHINE / "imxsign").mkdir(parents=True)
        shutil.copy(pki.tarball, root / MACHINE / "imxsign" / "imx-cst-keys.tar.gz")
        with tarfile.open(pki.tarball) as tar:
            assert {"crts", "keys"} <= {m.name.split("/")[0] for m in tar}
        csf = imx_pki.csf_text("flash.bin").encode()
        art = os.urandom(0x8000)
        tokens = tmp / "tokens.json"
        token = _add_token(tokens, "bench", MACHINE, "imx")
        ours_work, dss_tmp = tmp / "ours-work", tmp / "dss-tmp"
        ours_work.mkdir()
        dss_tmp.mkdir()
        p1, p2 = free_port(), free_port()
        env_common = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "DIGSIGSERVER_KEYFILE_URI": f"file://{root}",
            "DIGSIGSERVER_IMX_CST_BASE": str(base),
            "HOME": str(tmp),
        }
        logs = tmp / "ours.log", tmp / "dss.log"
        ours = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "imgtool",
                "serve",
                "--port",
                str(p1),
                "--tokens",
                str(tokens),
                "--audit-log",
                str(tmp / "audit.jsonl"),
                *(["--max-jobs", str(a.ours_jobs)] if a.ours_jobs else []),
            ],
            env={
                **env_common,
                "CPTRA_IMGTOOL_WORK_DIR": str(ours_work),
                "CPTRA_IMGTOOL_STATE": str(tmp / "lms.sqlite3"),
                "TMPDIR": str(tmp / "ours-tmp"),
            },
            stdout=open(logs[0], "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        (tmp / "ours-tmp").mkdir()
        dss = subprocess.Popen(
            [a.digsigserver, "-a", "127.0.0.1", "-p", str(p2)],
            env={**env_common, "TMPDIR": str(dss_tmp)},
            stdout=open(logs[1], "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
        try:
            wait_up(f"http://127.0.0.1:{p1}", ours, logs[0], "/healthz")
            wait_up(f"http://127.0.0.1:{p2}", dss, logs[1], "/")
            targets = [
                Target(
                    "cptra-imgtool serve",
                    f"http://127.0.0.1:{p1}",
                    {"Authorization": f"Bearer {token}"},
                    ours.pid,
                ),
                Target("digsigserver", f"http://127.0.0.1:{p2}", {}, dss.pid),
            ]
            run(targets, csf, art, a, cst, pki.root, tmp)
        finally:
            for p in (ours, dss):
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
        print(
            f"files left behind: cptra-imgtool work dir {count_files(ours_work)}, temp dir "
            f"{count_files(tmp / 'ours-tmp')}; digsigserver temp dir {count_files(dss_tmp)}"
        )


def run(
    targets: list[Target],
    csf: bytes,
    art: bytes,
    a: argparse.Namespace,
    cst: Path,
    pki: Path,
    tmp: Path,
) -> None:
    for t in targets:  # warm-up (ours: unpacks the archive once)
        sequential(t, csf, art, 3)
    load0 = os.getloadavg()
    seq: dict[str, list[float]] = {t.name: [] for t in targets}
    par: dict[tuple[str, int], list[dict[str, float]]] = {}
    bare: list[float] = []
    sandboxed: list[float] = []
    bare_cpu: list[float] = []  # CPU seconds of the reaped children of each run
    sandboxed_cpu: list[float] = []
    can_sandbox = True
    with httpx.Client(timeout=120) as c:
        for rnd in range(a.rounds):
            order = targets if rnd % 2 == 0 else targets[::-1]
            # latency: one of each in turn (bare cst, cst in our sandbox, each server), so that
            # the load of a shared machine hits all of them alike
            for i in range(a.seq):
                c0 = _children_cpu()
                bare += bare_cst(cst, pki, csf, art, tmp / f"r{rnd}-{i}", 1)
                bare_cpu.append(_children_cpu() - c0)
                if can_sandbox:
                    try:
                        c0 = _children_cpu()
                        sandboxed += sandboxed_cst(cst, pki, csf, art, tmp / f"s{rnd}-{i}", 1)
                        sandboxed_cpu.append(_children_cpu() - c0)
                    except Exception as exc:  # noqa: BLE001 - no sandbox here: say so, go on
                        print(f"(sandboxed bare cst not measured: {exc})")
                        can_sandbox = False
                for t in order:
                    s = time.perf_counter()
                    code = t.request(c, csf, art)
                    seq[t.name].append(time.perf_counter() - s)
                    if code != 200:
                        raise RuntimeError(f"{t.name}: HTTP {code}")
            for clients in (8, 32):
                per = a.per_client or max(4, 320 // clients)
                for t in order:
                    par.setdefault((t.name, clients), []).append(
                        concurrent(t, csf, art, clients, per)
                    )
    load1 = os.getloadavg()
    print(
        f"load average (1/5/15 min) at start {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, "
        f"at end {load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f}"
    )
    b = statistics.median(bare) * 1000
    print(f"bare cst (prepared dir, no server): {_spread(bare)} over {len(bare)} runs")
    if sandboxed:
        sb = statistics.median(sandboxed) * 1000
        print(
            f"cst through our runner (sandbox, no server): {_spread(sandboxed)} (+{sb - b:.1f} ms)"
        )
    print(
        f"child CPU per run, median: bare cst {statistics.median(bare_cpu) * 1000:.1f} ms"
        + (
            f", through our sandbox runner {statistics.median(sandboxed_cpu) * 1000:.1f} ms"
            if sandboxed_cpu
            else ""
        )
    )
    for t in targets:
        m = statistics.median(seq[t.name]) * 1000
        print(
            f"{t.name} latency: {_spread(seq[t.name])}; median overhead over bare cst "
            f"{m - b:.1f} ms"
        )
    print()
    print(
        "| server | median latency ms | overhead over bare cst ms | 8 clients req/s | "
        "8: 429 / errors | 32 clients req/s | 32: 429 / errors |"
    )
    print("|---|---|---|---|---|---|---|")
    for t in targets:
        m = statistics.median(seq[t.name]) * 1000
        cells = []
        for clients in (8, 32):
            runs = par[(t.name, clients)]
            rps = statistics.median(r["rps"] for r in runs)
            n429 = sum(r["429"] for r in runs)
            nerr = sum(r["other"] for r in runs)
            cells.append(f"{rps:.1f} | {n429:.0f} / {nerr:.0f}")
        print(f"| {t.name} | {m:.1f} | {m - b:.1f} | {cells[0]} | {cells[1]} |")
    ours, theirs = targets[0].name, targets[1].name
    for clients in (8, 32):
        r = [x["rps"] for x in par[(ours, clients)]]
        d = [x["rps"] for x in par[(theirs, clients)]]
        ratios = [x / y for x, y in zip(r, d, strict=True) if y]
        print(
            f"throughput ratio at {clients} clients, per round: "
            + ", ".join(f"{x:.2f}x" for x in ratios)
            + f" (min {min(ratios):.2f}x, median {statistics.median(ratios):.2f}x, "
            f"max {max(ratios):.2f}x)"
        )
    total: dict[str, float] = {}
    for t in targets:
        runs = [r for k, v in par.items() if k[0] == t.name for r in v]
        cpu, own, kids, client = (
            statistics.median(r[f] for r in runs)
            for f in ("cpu_ms", "own_ms", "children_ms", "client_ms")
        )
        total[t.name] = cpu + client
        print(
            f"{t.name}: server CPU {cpu:.1f} ms per request (median over the concurrent phases: "
            f"server processes {own:.1f}, reaped children -- bwrap/sh/cst or tar/gzip/sh/cst -- "
            f"{kids:.1f}); the benchmark's client threads {client:.1f}"
        )
    # with every core busy, throughput is cores / (CPU per request, server and client)
    print(
        "CPU-bound throughput ratio (digsigserver's server+client CPU per request / ours): "
        f"{total[theirs] / total[ours]:.2f}x"
    )
    ratio = statistics.median(seq[theirs]) / statistics.median(seq[ours])
    print(f"median latency: digsigserver / ours = {ratio:.2f}")


if __name__ == "__main__":
    main()
