"""8 signing processes and 2 `serve` instances on one LMS key and one SQLite store, each SIGKILLed
and restarted at random points: no leaf is ever released twice, and the signature log and both
counters agree afterwards."""

from __future__ import annotations

import hashlib
import os
import random
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from hsslms import LMS_Pub

from imgtool.keys import lms, lms_state
from imgtool.keys import lms_store as store
from imgtool.keys.lms_signer import LmsSigner

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))
from lmsserve import MACHINE, Serve, key_root, sign_lms  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LOCAL = """
import sys, hashlib, os, time
from pathlib import Path
from imgtool.keys import lms
from imgtool.keys.lms_signer import LmsSigner
priv, out, pace = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
signer = LmsSigner.load(priv)
with open(out, "a") as fh:
    while True:
        msg = os.urandom(48)
        slot = signer.sign_digest(msg)
        fh.write(f"{lms.sig_q(slot)} {msg.hex()} {slot.hex()}\\n")  # released
        fh.flush()
        time.sleep(pace)
"""


# seconds between two signatures of a local signer (and the clients wait 0.05 s): slow enough
# that the kills come before 800 of the key's 1024 leaves are used, on a quiet machine too (at
# 0.04 and 0.01 s one seed reached 800 leaves after 6 kills, before the second server kill)
PACE = 0.1


def _spawn(priv: Path, out: Path, pace: float) -> object:
    import subprocess

    return subprocess.Popen(
        [sys.executable, "-c", LOCAL, str(priv), str(out), str(pace)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stderr=subprocess.DEVNULL,
    )


def _read_released(path: Path) -> list[tuple[int, bytes, bytes]]:
    rows: list[tuple[int, bytes, bytes]] = []
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and len(parts[1]) == 96 and len(parts[2]) == 3240:  # whole lines only
            rows.append((int(parts[0]), bytes.fromhex(parts[1]), bytes.fromhex(parts[2])))
    return rows


def test_processes_and_servers_under_sigkill(tmp_path: Path) -> None:
    seed = int(os.environ.get("CPTRA_TEST_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    root = key_root(tmp_path / "keys", lms.LMS_SHA256_M24_H10, lms.LMOTS_SHA256_N24_W4)
    priv = root / MACHINE / "caliptra" / "own-man-lms-prvk.pem"
    pub_bytes = priv.with_name("own-man-lms-pubk.pem").read_bytes()
    pub = lms.LmsPublicKey.from_bytes(pub_bytes)
    ident = store.KeyIdentity.of(pub)
    outs = [tmp_path / f"local{i}.txt" for i in range(8)]
    procs = [_spawn(priv, o, PACE) for o in outs]
    servers = [Serve(root, tmp_path / f"serve{i}.log", {}) for i in range(2)]
    for s in servers:
        s.start()
    remote: list[tuple[int, bytes, bytes]] = []
    remote_lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        crng = random.Random(seed * 100 + n)
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                digest = os.urandom(48)
                url = servers[crng.randrange(2)].url
                try:
                    r = sign_lms(c, url, digest)
                except httpx.HTTPError:
                    time.sleep(0.02)  # that instance was just killed
                    continue
                if r.status_code == 200:
                    with remote_lock:
                        remote.append((lms.sig_q(r.content), digest, r.content))
                time.sleep(0.05)

    clients = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in clients:
        t.start()
    kills = {"process": 0, "server": 0}
    try:
        for n in range(40):
            time.sleep(rng.uniform(0.05, 0.35))
            if n % 4 == 1:  # servers at n = 1, 5, ...: 2 of them and 5 processes by n = 6
                s = servers[rng.randrange(2)]
                s.kill()
                kills["server"] += 1
                s.start()
            else:
                i = rng.randrange(8)
                procs[i].kill()  # type: ignore[attr-defined]
                procs[i].wait()  # type: ignore[attr-defined]
                kills["process"] += 1
                procs[i] = _spawn(priv, outs[i], PACE)
            enough = kills["process"] >= 5 and kills["server"] >= 2
            if enough and lms_state.read_state(priv, ident) > 800:
                break  # of the key's 1024 leaves: the checks below need a few
    finally:
        stop.set()
        for t in clients:
            t.join(timeout=30)
        for p in procs:
            p.kill()  # type: ignore[attr-defined]
            p.wait()  # type: ignore[attr-defined]
        for s in servers:
            s.kill()
    assert kills["process"] >= 5 and kills["server"] >= 2, (seed, kills)
    released = [r for o in outs for r in _read_released(o)] + remote
    qs = [q for q, _, _ in released]
    assert len(qs) > 100, (seed, len(qs))
    assert len(qs) == len(set(qs)), f"seed {seed}: a leaf was released twice"
    assert any(q for q, _, _ in remote) and len(remote) > 10, (seed, len(remote))
    # every released signature verifies (hsslms on a sample, ours on all) and is in the log
    st = store.open_store()
    log = {r.q: r.msg_sha256 for r in st.signatures(ident)}
    for q, msg, slot in released:
        assert log.get(q) == hashlib.sha256(msg).hexdigest(), (seed, q)
        assert pub.verify(msg, slot), (seed, q)
    for _q, msg, slot in rng.sample(released, 20):
        LMS_Pub(pub_bytes).verify(msg, lms.slot_to_sig(slot))
    # the counters and the log agree: every reserved leaf is logged, no gaps, file <= store
    row = st.get(ident)
    assert row is not None
    assert sorted(log) == list(range(row.next_q)), seed
    assert row.log_size == row.next_q and row.max_logged_q == row.next_q - 1
    file_q = lms_state.read_state(priv, ident)
    assert file_q <= row.next_q
    q = lms.sig_q(LmsSigner.load(priv).sign_digest(bytes(48)))
    assert q == row.next_q and lms_state.read_state(priv, ident) == q + 1
    print(
        f"seed {seed}: kills {kills}, released {len(released)} ({len(remote)} by the servers), "
        f"reserved {row.next_q}, file was {file_q}"
    )
    assert st.get(ident).next_q == q + 1  # type: ignore[union-attr]


@pytest.mark.parametrize("n", [8])
def test_parallel_reservations_without_kills_are_dense(tmp_path: Path, n: int) -> None:
    """N processes, no faults: exactly the leaves 0..total-1 are used, each once."""
    import subprocess

    root = key_root(tmp_path / "keys", lms.LMS_SHA256_M24_H10, lms.LMOTS_SHA256_N24_W4)
    priv = root / MACHINE / "caliptra" / "own-man-lms-prvk.pem"
    code = (
        "import sys, os\nfrom imgtool.keys.lms_signer import LmsSigner\n"
        "from imgtool.keys import lms\n"
        "s = LmsSigner.load(sys.argv[1])\n"
        "print(' '.join(str(lms.sig_q(s.sign_digest(os.urandom(48)))) for _ in range(40)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ps = [
        subprocess.Popen([sys.executable, "-c", code, str(priv)], env=env, stdout=subprocess.PIPE)
        for _ in range(n)
    ]
    qs = [int(x) for p in ps for x in p.communicate(timeout=300)[0].split()]
    assert sorted(qs) == list(range(40 * n))
