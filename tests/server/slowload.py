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

    def summary(self) -> str:
        lat = sorted(self.probe_latencies) or [float("nan")]
        return (
            f"opened {self.opened}, refused at connect {self.refused}, closed by the server "
            f"{self.closed_by_server}; /healthz probes {self.probes}, failed "
            f"{self.probe_failures}, p50 {lat[len(lat) // 2] * 1000:.1f} ms, "
            f"max {self.probe_max_s * 1000:.0f} ms"
        )


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
    attackers: tuple[str, ...] = ("127.0.0.2",),
    probe_host: str = "127.0.0.1",
    probe_every: float = 0.2,
    probe_timeout: float = 1.0,
    trickle_every: float = 2.0,
    mode: str = "headers",
    body_length: int = 100_000,
    reconnect: bool = False,
) -> SlowResult:
    """Open ``connections`` sockets (source addresses taken in turn from ``attackers``) that send
    a partial request (``mode``: "headers" = header bytes one at a time; "body" = complete
    headers announcing ``body_length`` bytes, then one body byte at a time; "mixed" = half
    each), one byte per socket every ``trickle_every`` s, for ``duration`` s, while probing
    /healthz from ``probe_host``. With ``reconnect`` a socket the server closed is replaced."""
    res = SlowResult()
    socks: dict[socket.socket, tuple[bytes, int]] = {}
    stop = time.monotonic() + duration
    done = threading.Event()
    head_pad = b"X-Pad: " + b"a" * 60_000
    body_start = (
        b"POST /sign/imx HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
        b"boundary=b\r\nContent-Length: " + str(body_length).encode() + b"\r\n\r\n"
    )
    header_start = b"POST /sign/imx HTTP/1.1\r\nHost: x\r\n"
    n_opened = 0

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

    def open_one() -> None:
        nonlocal n_opened
        kind = mode if mode != "mixed" else ("headers" if n_opened % 2 else "body")
        src = attackers[n_opened % len(attackers)]
        n_opened += 1
        s = socket.socket()
        try:
            s.bind((src, 0))
            s.settimeout(1.0)
            s.connect(("127.0.0.1", port))
            s.sendall(header_start if kind == "headers" else body_start)
            s.setblocking(False)
        except OSError:
            res.refused += 1
            s.close()
            return
        socks[s] = (head_pad if kind == "headers" else b"x" * body_length, 0)
        res.opened += 1

    th = threading.Thread(target=prober, daemon=True)
    th.start()
    try:
        for _ in range(connections):
            if time.monotonic() > stop:
                break
            open_one()
        while time.monotonic() < stop:
            for s in list(socks):
                data, i = socks[s]
                try:
                    try:  # a closed connection shows as EOF/reset on recv/send
                        if s.recv(65536) == b"":
                            raise ConnectionResetError
                    except BlockingIOError:
                        pass
                    s.send(data[i : i + 1])
                    socks[s] = (data, i + 1)
                except OSError:
                    res.closed_by_server += 1
                    del socks[s]
                    s.close()
                    if reconnect and time.monotonic() < stop:
                        open_one()
            done.wait(trickle_every)
    finally:
        done.set()
        th.join(timeout=5)
        for s in socks:
            s.close()
    return res
