"""A small launcher for `cptra-imgtool serve` instances that share one LMS key (or one key
store): loopback only, no tokens, the LMS state store taken from the environment. Used by the
issue-11 state tests and bench/lms_state.py; the server's own tests use srvfixtures.py."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
MACHINE = "bmc-a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def key_root(
    base: Path, lms_type: int, ots_type: int, name: str = "own-man", store: str | None = None
) -> Path:
    """DIGSIGSERVER_KEYFILE_URI layout with one full-tree LMS key: ROOT/bmc-a/caliptra/, made
    (and registered) in the store the servers will use (``store``: None for the configured
    one): a key is never adopted by a store implicitly."""
    from imgtool.keys import lms_tree

    d = base / MACHINE / "caliptra"
    d.mkdir(parents=True)
    lms_tree.generate(d / f"{name}-lms", lms_type, ots_type, store=store)
    return base


def copy_key_root(src: Path, dst: Path) -> Path:
    """Another machine's copy of the same key folder (its own state file and tree cache): it
    signs through the same (shared) store; with any other store it is refused."""
    shutil.copytree(src, dst)
    return dst


@dataclass
class Serve:
    root: Path
    log: Path
    env: dict[str, str]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> None:
        self.port = free_port()
        self.starts += 1
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "DIGSIGSERVER_KEYFILE_URI": f"file://{self.root}",
            "CPTRA_IMGTOOL_MAX_JOBS": "64",
            "DIGSIGSERVER_LOG_LEVEL": "WARNING",
            **self.env,
        }
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "imgtool",
                    "serve",
                    "--insecure-no-auth",
                    "--port",
                    str(self.port),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"serve did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def sign_lms(client: httpx.Client, url: str, digest: bytes, key: str = "own-man") -> httpx.Response:
    return client.post(
        f"{url}/sign/caliptra",
        data={"machine": MACHINE, "key": key, "algo": "lms", "digest": digest.hex()},
    )
