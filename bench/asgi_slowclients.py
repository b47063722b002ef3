"""ASGI servers under a slow-client (slowloris) load: uvicorn, hypercorn, granian, each with its
timeout/limit settings, serving the same small Starlette app (GET /healthz, POST /sign/imx that
reads its body). 1000 connections from 127.0.0.2 trickle headers (or bodies) one byte every 2 s
while /healthz is probed from 127.0.0.1 every 0.2 s with a 1 s timeout.

Prints numbers only. The candidates that are not installed in --python are skipped.
Usage: .venv/bin/python bench/asgi_slowclients.py [--python /path/to/venv/bin/python]
         [--connections 1000] [--duration 15]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "server"))
from slowload import slow_load  # noqa: E402

APP = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

async def healthz(request):
    return PlainTextResponse("ok\\n")

async def sign(request):
    n = 0
    async for chunk in request.stream():
        n += len(chunk)
    return PlainTextResponse(f"{n}\\n")

app = Starlette(routes=[Route("/healthz", healthz), Route("/sign/imx", sign, methods=["POST"])])
"""

UVICORN = """
import sys, uvicorn
sys.path.insert(0, sys.argv[1])
from benchapp import app
limit = int(sys.argv[4]) if sys.argv[4] != "0" else None
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), http=sys.argv[3],
            log_level="info", timeout_keep_alive=5, limit_concurrency=limit)
"""

HYPERCORN = """
import sys, asyncio
sys.path.insert(0, sys.argv[1])
from benchapp import app
from hypercorn.config import Config
from hypercorn.asyncio import serve
c = Config()
c.bind = [f"127.0.0.1:{sys.argv[2]}"]
c.read_timeout = 10
c.keep_alive_timeout = 5
c.errorlog = "-"
asyncio.run(serve(app, c))
"""

GUARDED = """
import sys
sys.path.insert(0, sys.argv[1])
from benchapp import app
from imgtool.server.asgi import ServeOptions, run
run(app, ServeOptions(host="127.0.0.1", port=int(sys.argv[2])))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def candidates(py: str, d: Path) -> list[tuple[str, list[str]]]:
    (d / "benchapp.py").write_text(APP)
    for name, text in (("uv.py", UVICORN), ("hc.py", HYPERCORN), ("guard.py", GUARDED)):
        (d / name).write_text(text)
    out = []
    out.append(
        (
            "uvicorn h11 (limit_concurrency=none)",
            [py, str(d / "uv.py"), str(d), "{port}", "h11", "0"],
        )
    )
    out.append(
        (
            "uvicorn h11 (limit_concurrency=900)",
            [py, str(d / "uv.py"), str(d), "{port}", "h11", "900"],
        )
    )
    out.append(("uvicorn httptools", [py, str(d / "uv.py"), str(d), "{port}", "httptools", "0"]))
    out.append(("hypercorn (read_timeout=10)", [py, str(d / "hc.py"), str(d)]))
    out.append(
        (
            "granian (header timeout 5 s, backpressure 64)",
            [
                str(Path(py).parent / "granian"),
                "--interface",
                "asgi",
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
                "--http",
                "1",
                "--http1-header-read-timeout",
                "5000",
                "--backpressure",
                "64",
                "--working-dir",
                str(d),
                "benchapp:app",
            ],
        )
    )
    out.append(
        (
            "cptra-imgtool serve front end (imgtool.server.asgi)",
            [py, str(d / "guard.py"), str(d), "{port}"],
        )
    )
    return out


def one(name: str, argv: list[str], conns: int, duration: float, mode: str, d: Path) -> str:
    port = free_port()
    log = d / f"log-{port}.txt"
    argv = [a.replace("{port}", str(port)) for a in argv]
    if argv[1].endswith(".py") and "hc.py" in argv[1]:
        argv.append(str(port))
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=d)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None:
                    return f"| {name} | {mode} | did not start: {log.read_text()[-200:]!r} |"
                time.sleep(0.1)
        time.sleep(0.5)
        r = slow_load(port, connections=conns, duration=duration, mode=mode, body_length=1_000_000)
        fds = len(os.listdir(f"/proc/{proc.pid}/fd")) if proc.poll() is None else -1
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    lat = sorted(r.probe_latencies) or [float("nan")]
    size = log.stat().st_size
    return (
        f"| {name} | {mode} | {r.opened} | {r.closed_by_server} | {r.probes} | "
        f"{r.probe_failures} | {lat[len(lat) // 2] * 1000:.1f} | {r.probe_max_s * 1000:.0f} | "
        f"{fds} | {size / 1024:.1f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--only", default="", help="substring of the candidate names to run")
    a = ap.parse_args()
    print(
        "| server | mode | opened | closed by server | probes | probe failures | "
        "probe p50 ms | probe max ms | server fds at end | log KiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        for name, argv in candidates(a.python, d):
            if a.only and a.only not in name:
                continue
            for mode in ("headers", "body"):
                print(one(name, argv, a.connections, a.duration, mode, d), flush=True)


if __name__ == "__main__":
    main()
