"""Start a real uvicorn signing server on a loopback port, with a key store made at test time."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from imgtool.cli.main import main
from imgtool.keys import ecc, lms, lms_tree

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import imx_pki  # noqa: E402

MACHINE = "bmc-a"
IMX_MACHINE = "imx8mm-evk"
FAKE_CST_OK = "8.8.8"  # records argv and environment, writes a tiny CSF
FAKE_CST_HANG = "9.9.9"  # sleeps past the timeout


@dataclass
class Server:
    url: str
    token: str
    other_token: str  # allowed only for machine "bmc-b" and the caliptra endpoint
    root: Path
    audit: Path
    work: Path
    keys: Path
    proc: subprocess.Popen[bytes]
    cst_log: Path
    pki: imx_pki.Pki | None

    def client(self, token: str | None = None) -> httpx.Client:
        tok = self.token if token is None else token
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_keystore(root: Path) -> Path:
    keys = root / MACHINE / "caliptra"
    keys.mkdir(parents=True)
    for name in ("own-fw", "own-man", "vnd-fw", "vnd-man"):
        ecc.generate_keypair(keys / f"{name}-ecc")
        lms_tree.generate(keys / f"{name}-lms", lms.LMS_SHA256_M24_H5, lms.LMOTS_SHA256_N24_W4)
    (root / "bmc-b" / "caliptra").mkdir(parents=True)
    return keys


def fake_cst(base: Path, version: str, body: str) -> None:
    d = base / f"cst-{version}" / "linux64" / "bin"
    d.mkdir(parents=True)
    (d / "cst").write_text("#!/bin/sh\n" + body)
    (d / "cst").chmod(0o755)


def start_server(
    tmp: Path,
    *,
    max_jobs: int = 2,
    timeout: int = 3,
    max_size: int = 2_000_000,
    with_cst: bool = True,
    extra_args: tuple[str, ...] = (),
    env_extra: dict[str, str] | None = None,
) -> Server:
    root = tmp / "keystore"
    keys = make_keystore(root)
    pki = None
    base = tmp / "nxp"
    base.mkdir()
    cst_log = tmp / "cst-calls.log"
    if with_cst and imx_pki.cst_available() is None:
        imx_pki.install_cst(base)
        pki = imx_pki.make_pki(tmp / "imx")
    imx_dir = root / IMX_MACHINE / "imxsign"
    imx_dir.mkdir(parents=True)
    if pki is not None:
        (imx_dir / "imx-cst-keys.tar.gz").write_bytes(pki.tarball.read_bytes())
    else:
        # no real CST here: the same PKI (its SRK table written in Python), for the checks
        (imx_dir / "imx-cst-keys.tar.gz").write_bytes(
            imx_pki.make_pki(tmp / "imx").tarball.read_bytes()
        )
    # The fakes run in the same sandbox as the real cst: they can write only into their job
    # dir, so the OK fake returns what it saw (argv, environment, visible files) in its output.
    fake_cst(
        base,
        FAKE_CST_OK,
        'printf "\\324\\000\\010\\103\\300\\000\\004\\000fake\\n" > "$4"\n'
        'echo "argv: $0 $*" >> "$4"\n/usr/bin/env >> "$4"\n',
    )
    fake_cst(base, FAKE_CST_HANG, "exec /bin/sleep 30\n")
    tokens = tmp / "tokens.json"
    token = _add_token(tokens, "ci-builder", f"{MACHINE},{IMX_MACHINE}")
    other = _add_token(tokens, "other", "bmc-b", "caliptra")
    audit = tmp / "audit.jsonl"
    work = tmp / "work"
    work.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "DIGSIGSERVER_KEYFILE_URI": f"file://{root}",
        "DIGSIGSERVER_IMX_CST_BASE": str(base),
        "DIGSIGSERVER_REQUEST_MAX_SIZE": str(max_size),
        "CPTRA_IMGTOOL_SUBPROCESS_TIMEOUT": str(timeout),
        "CPTRA_IMGTOOL_MAX_JOBS": str(max_jobs),
        "CPTRA_IMGTOOL_WORK_DIR": str(work),
        **(env_extra or {}),
    }
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 - kept open for the server's life
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "imgtool",
            "serve",
            "--port",
            str(port),
            "--tokens",
            str(tokens),
            "--audit-log",
            str(audit),
            *extra_args,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError((tmp / "server.log").read_text())
        time.sleep(0.1)
    return Server(url, token, other, root, audit, work, keys, proc, cst_log, pki)


def _add_token(tokens: Path, token_id: str, machines: str, endpoints: str = "imx,caliptra") -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert (
            main(
                [
                    "token",
                    "add",
                    "--tokens",
                    str(tokens),
                    "--id",
                    token_id,
                    "--machines",
                    machines,
                    "--endpoints",
                    endpoints,
                ]
            )
            == 0
        )
    return buf.getvalue().strip()
