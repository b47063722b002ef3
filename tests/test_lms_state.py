"""LMS leaf state: never reused, across processes and after SIGKILL; tree cache integrity."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgtool import lms, lms_state
from imgtool.errors import LmsStateError
from imgtool.lms_signer import LmsSigner

REPO = Path(__file__).resolve().parent.parent
SIGNER = """
import sys, hashlib, time
from pathlib import Path
from imgtool import lms
from imgtool.lms_signer import LmsSigner
priv, out, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
pace = float(sys.argv[4])
signer = LmsSigner.load(priv)
with open(out, "a") as fh:
    for i in range(count):
        msg = hashlib.sha384(f"{out}:{i}".encode()).digest()
        slot = signer.sign_digest(msg)
        fh.write(f"{lms.sig_q(slot)}\\n")   # the signature is released: record its q
        fh.flush()
        if pace:
            time.sleep(pace)
"""


@pytest.fixture
def h10(tmp_path: Path) -> Path:
    priv, _ = lms_state.generate(tmp_path / "k", lms.LMS_SHA256_M24_H10, 7)
    return priv


def _next_q(priv: Path) -> int:
    return int(json.loads(lms_state.state_path(priv).read_text())["next_q"])


def _spawn(priv: Path, out: Path, count: int, pace: float = 0) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", SIGNER, str(priv), str(out), str(count), str(pace)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_q_sequence_and_state(h10: Path) -> None:
    signer = LmsSigner.load(h10)
    qs = [lms.sig_q(signer.sign_digest(hashlib.sha384(b"%d" % i).digest())) for i in range(7)]
    assert qs == list(range(7))
    assert _next_q(h10) == 7
    assert lms_state.status(h10, signer.public_key()) == (7, 1024)


def test_two_processes_never_share_a_leaf(h10: Path, tmp_path: Path) -> None:
    outs = [tmp_path / "a.txt", tmp_path / "b.txt"]
    procs = [_spawn(h10, o, 200) for o in outs]
    for p in procs:
        assert p.wait(timeout=300) == 0
    qs = [int(x) for o in outs for x in o.read_text().split()]
    assert len(qs) == 400 and len(set(qs)) == 400
    assert _next_q(h10) == 400


def test_sigkill_never_reuses_a_leaf(h10: Path, tmp_path: Path) -> None:
    out = tmp_path / "released.txt"
    rng = random.Random(1234)
    states = [_next_q(h10)]
    kills = 0
    while kills < 20:
        # paced so that 20 kills fit in 1024 leaves; the kill lands anywhere in the loop,
        # including inside a reservation
        p = _spawn(h10, out, 10_000, pace=0.008)
        time.sleep(0.2 + rng.random() * 0.25)
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
        states.append(_next_q(h10))
        if states[-1] > 1000:
            break
    assert kills >= 20
    assert states == sorted(states), "the state went backwards"
    qs = [int(x) for x in out.read_text().split()]
    assert len(qs) > 20
    assert len(qs) == len(set(qs)), "a leaf was released twice"
    assert max(qs) < states[-1]


def test_exhaustion_is_clear_and_keeps_state(tmp_path: Path) -> None:
    priv, _ = lms_state.generate(tmp_path / "k", lms.LMS_SHA256_M24_H5, 7)
    signer = LmsSigner.load(priv)
    for i in range(32):
        signer.sign_digest(hashlib.sha384(b"%d" % i).digest())
    before = lms_state.state_path(priv).read_bytes()
    with pytest.raises(LmsStateError, match="exhausted"):
        signer.sign_digest(bytes(48))
    assert lms_state.state_path(priv).read_bytes() == before
    assert _next_q(priv) == 32


def test_state_from_another_key_is_refused(tmp_path: Path) -> None:
    a, _ = lms_state.generate(tmp_path / "a", lms.LMS_SHA256_M24_H5, 7)
    b, _ = lms_state.generate(tmp_path / "b", lms.LMS_SHA256_M24_H5, 7)
    lms_state.state_path(a).write_bytes(lms_state.state_path(b).read_bytes())
    with pytest.raises(LmsStateError, match="another LMS key"):
        LmsSigner.load(a).sign_digest(bytes(48))


@pytest.mark.parametrize("damage", ["foreign", "corrupt", "truncated"])
def test_bad_cache_is_rebuilt_not_used(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, pub_a = lms_state.generate(tmp_path / "a", lms.LMS_SHA256_M24_H5, 7)
    b, _ = lms_state.generate(tmp_path / "b", lms.LMS_SHA256_M24_H5, 7)
    cache = lms_state.cache_path(a)
    good = cache.read_bytes()
    if damage == "foreign":
        cache.write_bytes(lms_state.cache_path(b).read_bytes())
    elif damage == "corrupt":
        cache.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    else:
        cache.write_bytes(good[:-10])
    lms_state._TREES.clear()
    signer = LmsSigner.load(a)
    msg = hashlib.sha384(b"x").digest()
    with caplog.at_level("WARNING", logger="imgtool"):
        slot = signer.sign_digest(msg)
    assert "tree cache ignored" in caplog.text
    assert lms.load_public(pub_a).verify(msg, slot)
    assert cache.read_bytes() == good  # rebuilt


def test_signing_with_cache_does_not_recompute_tree(
    h10: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lms_state._TREES.clear()

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("tree recomputed although the cache is valid")

    monkeypatch.setattr(lms_state, "compute_tree", boom)
    LmsSigner.load(h10).sign_digest(bytes(48))
