"""Slow-client load (slowloris): many connections from one client address that trickle their
request headers or bodies, while /healthz is probed from another address. Used by the slow-client
test and by bench/asgi_slowclients.py. Loopback only; bounded in count and time."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class SlowResult:
    opened: int = 0  # connections the attacker got established
    refused: int = 0  # connect() failures (refused, reset, timed out)
    closed_by_server: int = 0  # established connections the server closed
    probes: int = 0
    probe_failures: int = 0
    probe_max_s: float = 0.0
    probe_latencies: list[float] = field(default_factory=list)


def _probe(host: str, port: int, timeout: float) -> float | None:
    t = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            if not data.startswith(b"HTTP/1.1 200"):
                return None
    except OSError:
        return None
    return time.perf_counter() - t


def slow_load(
    port: int,
    *,
    connections: int = 1000,
    duration: float = 15.0,
    attacker: str = "127.0.0.2",
    probe_host: str = "127.0.0.1",
    probe_every: float = 0.2,
    probe_timeout: float = 1.0,
    trickle_every: float = 2.0,
    mode: str = "headers",
) -> SlowResult:
    """Open ``connections`` sockets from ``attacker`` that send a partial request (``mode``:
    "headers" = header bytes one at a time; "body" = complete headers announcing a 1 MB body,
    then one body byte at a time), one byte per socket every ``trickle_every`` s, for
    ``duration`` s, while probing /healthz. Returns what happened."""
    res = SlowResult()
    socks: list[socket.socket] = []
    stop = time.monotonic() + duration
    done = threading.Event()

    def prober() -> None:
        while not done.is_set():
            lat = _probe(probe_host, port, probe_timeout)
            res.probes += 1
            if lat is None:
                res.probe_failures += 1
            else:
                res.probe_latencies.append(lat)
                res.probe_max_s = max(res.probe_max_s, lat)
            done.wait(probe_every)

    th = threading.Thread(target=prober, daemon=True)
    th.start()
    if mode == "headers":
        head = b"POST /sign/imx HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 10_000
        start = b"P"
    else:
        head = b"x" * 1_000_000
        start = (
            b"POST /sign/imx HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
            b"boundary=b\r\nContent-Length: 1000000\r\n\r\n"
        )
    pos: dict[int, int] = {}
    try:
        for _ in range(connections):
            if time.monotonic() > stop:
                break
            try:
                s = socket.socket()
                s.bind((attacker, 0))
                s.settimeout(1.0)
                s.connect((probe_host if attacker == probe_host else "127.0.0.1", port))
                s.sendall(start)
                s.setblocking(False)
            except OSError:
                res.refused += 1
                s.close()
                continue
            socks.append(s)
            pos[id(s)] = 1 if mode == "headers" else 0
            res.opened += 1
        while time.monotonic() < stop:
            for s in list(socks):
                i = pos[id(s)]
                try:
                    s.send(head[i : i + 1])
                    pos[id(s)] = i + 1
                    # a closed connection shows as EOF/reset on the next recv/send
                    try:
                        if s.recv(65536) == b"":
                            raise ConnectionResetError
                    except BlockingIOError:
                        pass
                except OSError:
                    res.closed_by_server += 1
                    socks.remove(s)
                    s.close()
            done.wait(trickle_every)
    finally:
        done.set()
        th.join(timeout=5)
        for s in socks:
            s.close()
    return res
