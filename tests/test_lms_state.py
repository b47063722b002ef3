"""LMS leaf state: two witnesses (the file beside the key, the store), never reused, never rolled
back: across processes, after SIGKILL, after copying a key folder, restoring an older file or an
older store, or deleting both. Malformed state files are one-line errors. Tree cache integrity."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hsslms import INVALID, LMS_Pub

from imgtool.cli.main import main
from imgtool.errors import LmsStateError
from imgtool.formats import manifest1 as manifest
from imgtool.keys import lms, lms_state, lms_tree
from imgtool.keys import lms_store as store
from imgtool.keys.lms_signer import LmsSigner

REPO = Path(__file__).resolve().parent.parent
SIGNER = """
import sys, hashlib, time
from pathlib import Path
from imgtool.keys import lms
from imgtool.keys.lms_signer import LmsSigner
priv, out, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
pace = float(sys.argv[4])
signer = LmsSigner.load(priv)
with open(out, "a") as fh:
    for i in range(count):
        msg = hashlib.sha384(f"{out}:{time.time_ns()}:{i}".encode()).digest()
        slot = signer.sign_digest(msg)
        # the signature is released: record its q and what it signed
        fh.write(f"{lms.sig_q(slot)} {msg.hex()}\\n")
        fh.flush()
        if pace:
            time.sleep(pace)
"""


@pytest.fixture
def h10(tmp_path: Path) -> Path:
    priv, _ = lms_tree.generate(tmp_path / "k", lms.LMS_SHA256_M24_H10, 7)
    return priv


@pytest.fixture
def h5(tmp_path: Path) -> Path:
    priv, _ = lms_tree.generate(tmp_path / "k5", lms.LMS_SHA256_M24_H5, 7)
    return priv


def _file_q(priv: Path) -> int:
    return int(json.loads(lms_state.state_path(priv).read_text())["next_q"])


def _ident(priv: Path) -> store.KeyIdentity:
    return store.KeyIdentity.of(lms.load_public(priv.with_name(priv.name.replace("prvk", "pubk"))))


def _store_row(priv: Path) -> store.KeyRow | None:
    return store.open_store().get(_ident(priv))


def _spawn(priv: Path, out: Path, count: int, pace: float = 0) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", SIGNER, str(priv), str(out), str(count), str(pace)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _released(out: Path) -> list[tuple[int, str]]:
    rows = []
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[1]) == 96:  # a SIGKILL can cut the last line short
            rows.append((int(parts[0]), parts[1]))
    return rows


def _sign(priv: Path, text: bytes) -> int:
    return lms.sig_q(LmsSigner.load(priv).sign_digest(hashlib.sha384(text).digest()))


def _assert_log_agrees(priv: Path, released: list[tuple[int, str]]) -> None:
    """Every released signature is in the log for its message; the store counter is one past
    the highest logged q; the log has no gaps (nothing rolled back in these runs)."""
    st = store.open_store()
    ident = _ident(priv)
    log = {r.q: r.msg_sha256 for r in st.signatures(ident)}
    for q, msg_hex in released:
        assert log.get(q) == hashlib.sha256(bytes.fromhex(msg_hex)).hexdigest(), q
    row = st.get(ident)
    assert row is not None
    assert sorted(log) == list(range(row.next_q))
    assert _file_q(priv) <= row.next_q


# ---------------------------------------------------------------------------- basics
def test_q_sequence_both_witnesses_and_log(h10: Path) -> None:
    signer = LmsSigner.load(h10)
    msgs = [hashlib.sha384(b"%d" % i).digest() for i in range(7)]
    qs = [lms.sig_q(signer.sign_digest(m)) for m in msgs]
    assert qs == list(range(7))
    assert _file_q(h10) == 7
    row = _store_row(h10)
    assert row is not None and row.next_q == 7 and row.log_size == 7
    log = store.open_store().signatures(_ident(h10))
    assert [r.q for r in log] == list(range(6, -1, -1))  # newest first
    assert [r.msg_sha256 for r in reversed(log)] == [hashlib.sha256(m).hexdigest() for m in msgs]
    assert {r.signer for r in log} == {"build"} and {r.actor for r in log} == {None}
    assert signer.leaves_left() == 1024 - 7


def test_signer_and_actor_are_logged_and_counted(h5: Path) -> None:
    t0 = time.time()
    s = LmsSigner.load(h5, signer="server", actor="token:ci")
    for i in range(3):
        s.sign_digest(hashlib.sha384(b"a%d" % i).digest())
    LmsSigner.load(h5, signer="helper", actor="token:other").sign_digest(bytes(48))
    st = s.store()
    assert st.count_signatures("token:ci", t0) == 3
    assert st.count_signatures("token:other", t0) == 1
    assert st.count_signatures("token:ci", time.time() + 1) == 0
    assert st.count_signatures("token:nobody", 0) == 0
    assert [r.signer for r in st.signatures(_ident(h5), 1)] == ["helper"]
    with pytest.raises(Exception, match="signer 'nobody'"):
        LmsSigner.load(h5, signer="nobody")
    with pytest.raises(LmsStateError, match="actor"):
        LmsSigner.load(h5, actor="evil\nline").sign_digest(bytes(48))
    assert _file_q(h5) == 4  # the refused actor spent no leaf


def test_explicit_store_is_used(
    h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """F1: the state file names the store it is used with; another store (a typo, another
    machine's, a fresh CI one) refuses until the key is moved there on purpose."""
    other = str(tmp_path / "elsewhere.sqlite3")
    LmsSigner.load(h5).sign_digest(bytes(48))  # default store: q 0
    assert main(["lms-status", str(h5), "--state", other, "--init", "--next-q", "0"]) == 2
    assert "refusing to go back" in capsys.readouterr().err  # the file still knows leaf 0
    store.close_all()
    Path(other).unlink()
    s = LmsSigner.load(h5, store=other)
    with pytest.raises(LmsStateError, match="no LMS state store there") as ei:
        s.sign_digest(b"x" * 48)
    assert str(h5) in str(ei.value)
    store.open_store(other)  # the store exists now, but knows nothing of the key
    with pytest.raises(LmsStateError, match="last used with another LMS state store") as ei:
        s.sign_digest(b"x" * 48)
    msg = str(ei.value)
    assert "\n" not in msg and "--export" in msg and "--import" in msg and "--init" in msg
    assert store.open_store(other).get(_ident(h5)) is None and _file_q(h5) == 1
    exp = tmp_path / "move.json"
    assert main(["lms-status", str(h5), "--export", str(exp)]) == 0
    assert main(["lms-status", str(h5), "--state", other, "--import", str(exp)]) == 0
    assert lms.sig_q(s.sign_digest(b"x" * 48)) == 1
    assert store.open_store(other).get(_ident(h5)) == store.KeyRow(2, 32, 2, 1)
    assert s.leaves_left() == 30
    with pytest.raises(LmsStateError, match="last used with another LMS state store"):
        LmsSigner.load(h5).sign_digest(b"y" * 48)  # the old store, after the move


def test_leaves_left_is_none_for_sparse_keys(ref: Path) -> None:
    assert (
        LmsSigner.load(ref / "key" / "ast2700-default" / "own-fw-lms-prvk.pem").leaves_left()
        is None
    )


def test_two_processes_never_share_a_leaf(h10: Path, tmp_path: Path) -> None:
    outs = [tmp_path / "a.txt", tmp_path / "b.txt"]
    procs = [_spawn(h10, o, 200) for o in outs]
    for p in procs:
        assert p.wait(timeout=300) == 0
    rel = [r for o in outs for r in _released(o)]
    assert len(rel) == 400 and len({q for q, _ in rel}) == 400
    assert _file_q(h10) == 400
    _assert_log_agrees(h10, rel)


def test_sigkill_never_reuses_a_leaf(h10: Path, tmp_path: Path) -> None:
    out = tmp_path / "released.txt"
    rng = random.Random(1234)
    states = [_file_q(h10)]
    kills = 0
    # at least 20 kills, and on (at most 100) until 25 signatures were released: on a loaded
    # machine a signer may be killed before its interpreter has started
    while kills < 20 or (len(_released(out) if out.exists() else []) < 25 and kills < 100):
        # paced so that 20 kills fit in 1024 leaves; the kill lands anywhere in the loop,
        # including inside a reservation
        p = _spawn(h10, out, 10_000, pace=0.008)
        time.sleep(0.2 + rng.random() * 0.25)
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
        states.append(max(_file_q(h10), _store_row(h10).next_q))  # type: ignore[union-attr]
        if states[-1] > 1000:
            break
    assert kills >= 20
    assert states == sorted(states), "the state went backwards"
    rel = _released(out)
    qs = [q for q, _ in rel]
    assert len(qs) > 20
    assert len(qs) == len(set(qs)), "a leaf was released twice"
    assert max(qs) < states[-1]
    _assert_log_agrees(h10, rel)


def test_exhaustion_is_clear_and_keeps_state(h5: Path) -> None:
    signer = LmsSigner.load(h5)
    for i in range(32):
        signer.sign_digest(hashlib.sha384(b"%d" % i).digest())
    before = lms_state.state_path(h5).read_bytes()
    assert signer.leaves_left() == 0
    with pytest.raises(LmsStateError, match="exhausted"):
        signer.sign_digest(bytes(48))
    assert lms_state.state_path(h5).read_bytes() == before
    assert _file_q(h5) == 32 and _store_row(h5).next_q == 32  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- the three incidents
def test_copied_key_folder_parallel_builds(tmp_path: Path) -> None:
    """ASPEED's newprj.sh does `cp -rf key/ref key/new`: two projects built from the copies,
    several times each, in parallel, never share a leaf, and every signature verifies."""
    from projects import make_project

    p1 = make_project(tmp_path / "p1", lms=True, flags=1, sample_bundle=True, lms_kind="h5")
    shutil.copytree(p1.keys, tmp_path / "p2" / "keys")
    p2 = make_project(tmp_path / "p2", lms=True, flags=1, sample_bundle=True, lms_kind="h5")
    script = (
        "import sys\nfrom pathlib import Path\nfrom imgtool.cli.main import main\n"
        "args, pre, out = sys.argv[1:-2], Path(sys.argv[-2]), Path(sys.argv[-1])\n"
        "for i in range(4):\n"
        "    (pre / 'img0.bin').write_bytes(f'{out}:{i}'.encode())\n"
        "    assert main(['create-auth-man', *args, '--man', str(out / f'm{i}.bin')]) == 0\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, *p.args(), str(p.prebuilt), str(p.out)],
            env=env,
            stderr=subprocess.PIPE,
        )
        for p in (p1, p2)
    ]
    errs = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert any("BEHIND the store" in e for e in errs)  # the fork is noticed, loudly
    sha = hashlib.sha384
    slots = {  # slot -> (key, covered bytes)
        "vnd_pub_sig_lms": ("vnd-fw", manifest.vendor_pubkey_tbs),
        "vnd_imc_sig_lms": ("vnd-man", manifest.imc_tbs),
        "own_pub_sig_lms": ("own-fw", manifest.owner_pubkey_tbs),
        "own_svn_sig_lms": ("own-fw", manifest.svn_tbs),
        "own_imc_sig_lms": ("own-man", manifest.imc_tbs),
    }
    used: dict[str, list[tuple[int, bytes]]] = {
        k: [] for k in ("vnd-fw", "vnd-man", "own-fw", "own-man")
    }
    for p in (p1, p2):
        for i in range(4):
            m = manifest.Manifest.parse((p.out / f"m{i}.bin").read_bytes())
            for name, (key, tbs) in slots.items():
                slot = getattr(m, name)
                if name == "own_svn_sig_lms":
                    slot = manifest.svn_lms_sig_swap_q(slot)
                pub = (p.keys / f"{key}-lms-pubk.pem").read_bytes()
                try:
                    LMS_Pub(pub).verify(sha(tbs(m)).digest(), lms.slot_to_sig(slot))
                except INVALID:
                    pytest.fail(f"{p.root.name} m{i} {name} does not verify with hsslms")
                used[key].append((lms.sig_q(slot), sha(tbs(m)).digest()))
    for key, pairs in used.items():
        # a leaf signs one message, ever (the vendor endorsement is the same message in both
        # projects: the same signature at the same leaf)
        by_q: dict[int, set[bytes]] = {}
        for q, digest in pairs:
            by_q.setdefault(q, set()).add(digest)
        assert all(len(d) == 1 for d in by_q.values()), f"{key}: a leaf signed two messages"
    # 16 owner FW signatures; a leaf may appear twice only for the same message (the two
    # projects sign the same owner public keys: a retry of the last signature gets its leaf)
    assert len(used["own-fw"]) == 16
    assert len({q for q, _ in used["own-fw"]}) == len(set(used["own-fw"]))


def test_restored_state_file_is_moved_forward(h5: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(3):
        _sign(h5, b"%d" % i)
    old = lms_state.state_path(h5).read_bytes()  # next_q 3
    for i in range(3, 6):
        _sign(h5, b"%d" % i)
    lms_state.state_path(h5).write_bytes(old)  # backup restore / git checkout / VM snapshot
    with caplog.at_level("WARNING", logger="imgtool"):
        assert _sign(h5, b"after restore") == 6
    text = caplog.text
    assert "BEHIND the store" in text and "file next_q 3" in text and "next_q 6" in text
    assert _file_q(h5) == 7  # moved forward


def test_restored_store_is_moved_forward(
    h5: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = Path(os.environ[store.ENV])
    for i in range(3):
        _sign(h5, b"%d" % i)
    snap = tmp_path / "snapshot.sqlite3"
    with sqlite3.connect(db) as src, sqlite3.connect(snap) as dst:
        src.backup(dst)  # a consistent copy of the database at next_q 3
    for i in range(3, 6):
        _sign(h5, b"%d" % i)
    store.close_all()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy(snap, db)  # restore the older database
    assert _store_row(h5).next_q == 3  # type: ignore[union-attr]
    with caplog.at_level("WARNING", logger="imgtool"):
        assert _sign(h5, b"after restore") == 6
    assert "BEHIND the state file" in caplog.text
    assert "store next_q 3" in caplog.text and "next_q 6" in caplog.text
    assert _store_row(h5).next_q == 7  # type: ignore[union-attr]


def _delete_everywhere(priv: Path) -> None:
    lms_state.state_path(priv).unlink()
    store.close_all()
    db = Path(os.environ[store.ENV])
    with sqlite3.connect(db) as c:
        c.execute("DELETE FROM lms_signatures WHERE key_id = ?", (_ident(priv).key_id,))
        c.execute("DELETE FROM lms_keys WHERE key_id = ?", (_ident(priv).key_id,))


def test_deleted_state_refused_until_init_with_scan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Delete the file and the store row: signing is refused; --init needs --next-q or --scan,
    and never goes at or below the highest q the scanned manifests and flash images used."""
    from projects import make_project

    p = make_project(tmp_path / "p", lms=True, flags=1, sample_bundle=True, lms_kind="h5")
    assert main(["create-auth-flash", *p.args(), "--man", str(p.man), "--flash", str(p.flash)]) == 0
    for _ in range(3):  # more manifests: more own-fw leaves (the svn slot: q little-endian)
        p.prebuilt.joinpath("img0.bin").write_bytes(os.urandom(9))
        assert main(["create-auth-man", *p.args(), "--man", str(p.man)]) == 0
    own_fw = p.keys / "own-fw-lms-prvk.pem"
    m = manifest.Manifest.parse(p.man.read_bytes())
    in_last = {
        "own_pub_sig_lms": lms.sig_q(m.own_pub_sig_lms),
        "own_svn_sig_lms": lms.sig_q(manifest.svn_lms_sig_swap_q(m.own_svn_sig_lms)),
    }
    top_slot, top = max(in_last.items(), key=lambda kv: kv[1])
    assert top == _file_q(own_fw) - 1 >= 7
    _delete_everywhere(own_fw)
    capsys.readouterr()
    assert main(["create-auth-man", *p.args(), "--man", str(p.out / "x.bin")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing to guess a leaf" in err and "--init" in err
    assert not (p.out / "x.bin").exists()
    assert main(["lms-status", str(own_fw), "--init"]) == 2
    assert "--init needs --next-q" in capsys.readouterr().err
    # the flash image (its bundle and first manifest: the lowest leaves) and the last manifest
    args = ["lms-status", str(own_fw), "--init", "--scan", str(p.flash), str(p.man)]
    assert main([*args, "--next-q", str(top)]) == 2
    err = capsys.readouterr().err
    assert top_slot in err and f"leaf {top};" in err and f"--next-q {top + 1}" in err
    assert not lms_state.state_path(own_fw).exists()
    assert main(args) == 2  # neither witness knows the key: a promise the operator must make
    err = capsys.readouterr().err
    assert "neither" in err and "--confirm-adopt" in err and err.count("\n") <= 3, err
    assert not lms_state.state_path(own_fw).exists()
    assert main([*args, "--confirm-adopt"]) == 0
    out = capsys.readouterr().out
    assert f"highest leaf {top}" in out and f"next leaf {top + 1} of 32" in out
    assert _sign(own_fw, b"after recovery") == top + 1


def test_scan_finds_leaves_in_flash_and_bundles(tmp_path: Path) -> None:
    from projects import make_project

    from imgtool.keys import lms_scan

    p = make_project(tmp_path / "p", lms=True, sample_bundle=True, lms_kind="h5")
    assert main(["create-auth-flash", *p.args(), "--man", str(p.man), "--flash", str(p.flash)]) == 0
    bundle = p.prebuilt / "caliptra-fw.bin"
    for name in ("vnd-fw", "own-fw", "own-man"):
        priv = p.keys / f"{name}-lms-prvk.pem"
        key, pub = lms_tree.load_pair(priv)
        nodes = lms_tree.get_tree(priv, key, pub)
        found = lms_scan.used_leaves([p.flash, p.man, bundle], pub, nodes)
        # every leaf the key ever handed out appears in one of those files, and nothing else
        assert sorted({u.q for u in found}) == list(range(_file_q(priv))), name
    # the AST2700 A1 layout: the raw bundle at 0, the FLSH image at 0x100000
    a1 = tmp_path / "a1.bin"
    raw = bundle.read_bytes()
    a1.write_bytes(raw + bytes(0x100000 - len(raw)) + p.flash.read_bytes())
    assert {u.q for u in lms_scan.used_leaves([a1], pub, nodes)} == {
        u.q for u in lms_scan.used_leaves([p.flash, bundle], pub, nodes)
    }
    with pytest.raises(Exception, match="not a SoC manifest, flash image"):
        lms_scan.used_leaves([p.cfg], pub, nodes)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(p.flash.read_bytes()[:40])  # a FLSH header whose table is cut short
    with pytest.raises(Exception, match="junk.bin"):
        lms_scan.used_leaves([junk], pub, nodes)


# ---------------------------------------------------------------------------- log and init
def test_q_the_log_shows_used_is_refused(h5: Path) -> None:
    for i in range(4):
        _sign(h5, b"%d" % i)
    store.close_all()
    with sqlite3.connect(os.environ[store.ENV]) as c:  # both counters wound back
        c.execute("UPDATE lms_keys SET next_q = 2")
    lms_state.write_state(h5, _ident(h5), 2, store.open_store().store_id)
    with pytest.raises(LmsStateError, match="q=2 .* already used for a different message"):
        _sign(h5, b"new message")
    assert _file_q(h5) == 2  # nothing advanced, nothing signed


def test_init_refuses_below_file_store_or_log(h5: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(5):
        _sign(h5, b"%d" % i)
    for n in ("0", "4"):
        assert main(["lms-status", str(h5), "--init", "--next-q", n]) == 2
        assert "refusing to go back" in capsys.readouterr().err
    lms_state.state_path(h5).unlink()  # the store alone still knows
    assert main(["lms-status", str(h5), "--init", "--next-q", "4"]) == 2
    assert "refusing to go back" in capsys.readouterr().err
    assert main(["lms-status", str(h5), "--init", "--next-q", "33"]) == 2
    assert "outside 0..32" in capsys.readouterr().err
    assert main(["lms-status", str(h5), "--init", "--next-q", "9"]) == 0
    assert _file_q(h5) == 9 and _store_row(h5).next_q == 9  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- malformed states
GOOD = {"format": lms_state.STATE_FORMAT, "leaves": 32, "next_q": 3}
MALFORMED = [
    ({"next_q": True}, "field next_q: True is not an integer"),
    ({"next_q": False}, "field next_q: False is not an integer"),
    ({"next_q": -1}, "field next_q: -1 outside 0..32"),
    ({"next_q": 33}, "field next_q: 33 outside 0..32"),
    ({"next_q": 2**70}, "field next_q: 1180591620717411303424 outside"),
    ({"next_q": "3"}, "field next_q: '3' is not an integer"),
    ({"next_q": 3.0}, "field next_q: 3.0 is not an integer"),
    ({"next_q": None}, "field next_q: None is not an integer"),
    ({"next_q": [3]}, "field next_q: [3] is not an integer"),
    ({"leaves": True}, "field leaves: True is not an integer"),
    ({"leaves": 1024}, "field leaves: 1024, but the key has 32"),
    ({"format": "other"}, "field format: 'other' is not"),
    ({"key": 5}, "field key: 5 is not a hex string"),
    ({"key": "ab" * 32}, "field key: state file belongs to another LMS key"),
    ({"extra": 1}, "unknown field 'extra'"),
    ({"store": "ab" * 15}, "field store: 'ababababab"),
    ({"store": None}, "field store: None is not a store id"),
    ({"format": lms_state.STATE_FORMAT_1}, "unknown field 'store'"),
]


def _state_doc(priv: Path, change: dict[str, object], drop: str | None = None) -> bytes:
    sid = store.open_store().store_id
    doc: dict[str, object] = {**GOOD, "key": _ident(priv).key_id, "store": sid, **change}
    if drop:
        del doc[drop]
    return json.dumps(doc).encode()


def _check_one_line(priv: Path, capsys: pytest.CaptureFixture[str], expect: str) -> None:
    before_store = _store_row(priv)
    capsys.readouterr()
    assert main(["lms-status", str(priv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert str(lms_state.state_path(priv)) in err and expect in err, err
    # and signing through the library refuses the same way, spending no leaf
    with pytest.raises(LmsStateError, match=expect.replace("(", r"\(").replace("[", r"\[")):
        LmsSigner.load(priv).sign_digest(bytes(48))
    assert _store_row(priv) == before_store


@pytest.mark.parametrize(("change", "expect"), MALFORMED, ids=[e for _, e in MALFORMED])
def test_malformed_state_file(
    h5: Path, capsys: pytest.CaptureFixture[str], change: dict[str, object], expect: str
) -> None:
    lms_state.state_path(h5).write_bytes(_state_doc(h5, change))
    _check_one_line(h5, capsys, expect)


@pytest.mark.parametrize("field", lms_state.STATE_FIELDS)
def test_state_file_missing_field(h5: Path, capsys: pytest.CaptureFixture[str], field: str) -> None:
    lms_state.state_path(h5).write_bytes(_state_doc(h5, {}, drop=field))
    _check_one_line(h5, capsys, f"missing field {field}")


@pytest.mark.parametrize(
    ("raw", "expect"),
    [
        (b"", "not JSON"),
        (b"{", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"next_q"', "not a JSON object"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"next_q": NaN}', "NaN is not a number JSON allows"),
        (b'{"next_q": 1, "next_q": 2}', "duplicate field next_q"),
        (b"[" * 100_000, "bytes, larger than any valid file"),
        (b" " * 5000, "larger than any valid file"),
    ],
)
def test_state_file_not_json(
    h5: Path, capsys: pytest.CaptureFixture[str], raw: bytes, expect: str
) -> None:
    lms_state.state_path(h5).write_bytes(raw)
    _check_one_line(h5, capsys, expect)


def test_state_from_another_key_is_refused(tmp_path: Path) -> None:
    a, _ = lms_tree.generate(tmp_path / "a", lms.LMS_SHA256_M24_H5, 7)
    b, _ = lms_tree.generate(tmp_path / "b", lms.LMS_SHA256_M24_H5, 7)
    lms_state.state_path(a).write_bytes(lms_state.state_path(b).read_bytes())
    with pytest.raises(LmsStateError, match="another LMS key"):
        LmsSigner.load(a).sign_digest(bytes(48))


# ---------------------------------------------------------------------------- lms-status
def test_lms_status_shows_both_witnesses(h5: Path, capsys: pytest.CaptureFixture[str]) -> None:
    LmsSigner.load(h5, signer="server", actor="token:ci").sign_digest(bytes(48))
    _sign(h5, b"x")
    capsys.readouterr()
    assert main(["lms-status", str(h5), "--json", "--last", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["file"]["next_q"] == 2 and doc["store"]["next_q"] == 2
    assert doc["store"]["log_size"] == 2 and doc["store"]["kind"] == "sqlite"
    assert doc["used"] == 2 and doc["left"] == 30 and doc["in_sync"] is True
    assert [r["q"] for r in doc["last_signatures"]] == [1]
    assert (
        doc["last_signatures"][0]["msg_sha256"]
        == hashlib.sha256(hashlib.sha384(b"x").digest()).hexdigest()
    )
    lms_state.write_state(h5, _ident(h5), 1, store.open_store().store_id)  # a witness behind
    assert main(["lms-status", str(h5)]) == 0
    out = capsys.readouterr().out
    assert "state file:" in out and "next_q 1" in out and "2 signature(s) logged" in out
    assert "WARNING: the witnesses disagree (file 1, store 2)" in out
    assert "actor token:ci" in out and "server" in out


def test_lms_status_option_errors(h5: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--next-q", "3"], ["--scan", "x.bin"], ["--last", "-1"]):
        assert main(["lms-status", str(h5), *args]) == 2
        assert capsys.readouterr().err.count("\n") == 1
    assert main(["lms-status", str(h5), "--init", "--scan", str(h5.parent / "missing.bin")]) == 2
    assert "missing.bin: --scan: file not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------- export / import
def test_export_import_between_stores(
    h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(4):
        _sign(h5, b"%d" % i)
    exp = tmp_path / "k.json"
    assert main(["lms-status", str(h5), "--export", str(exp)]) == 0
    new = str(tmp_path / "new.sqlite3")
    assert main(["lms-status", str(h5), "--state", new, "--import", str(exp)]) == 0
    ns = store.open_store(new)
    assert ns.get(_ident(h5)) == store.KeyRow(4, 32, 4, 3)
    assert ns.signatures(_ident(h5)) == store.open_store().signatures(_ident(h5))
    # importing the same again is idempotent; an older export is refused
    assert main(["lms-status", str(h5), "--state", new, "--import", str(exp)]) == 0
    assert lms.sig_q(LmsSigner.load(h5, store=new).sign_digest(bytes(48))) == 4
    capsys.readouterr()
    assert main(["lms-status", str(h5), "--state", new, "--import", str(exp)]) == 2
    assert "refusing to go backwards" in capsys.readouterr().err
    # an export for another key is refused
    other, _ = lms_tree.generate(tmp_path / "o", lms.LMS_SHA256_M24_H5, 7)
    assert main(["lms-status", str(other), "--import", str(exp)]) == 2
    assert "another LMS key" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("edit", "expect"),
    [
        (lambda d: d.update(next_q=True), "field next_q: True"),
        (lambda d: d.update(next_q=2), "field q: 2 outside 0..1"),
        (lambda d: d.pop("signatures"), "missing field signatures"),
        (lambda d: d["signatures"][0].update(q="0"), "signatures[0]: field q: '0'"),
        (lambda d: d["signatures"][0].update(msg_sha256="zz"), "field msg_sha256"),
        (lambda d: d["signatures"][0].update(signer="root"), "field signer: 'root'"),
        (lambda d: d["signatures"][0].update(host="a\nb"), "field host"),
        (lambda d: d["signatures"][1].update(q=0), "field q: 0 appears twice"),
        (lambda d: d["signatures"][0].pop("time"), "signatures[0]: missing field time"),
        (lambda d: d.update(leaves=True), "field leaves: True"),
    ],
)
def test_malformed_export_is_one_line(
    h5: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: object, expect: str
) -> None:
    for i in range(4):
        _sign(h5, b"%d" % i)
    doc = json.loads(lms_state.export_state(h5, _ident(h5), store.open_store()).data)
    edit(doc)  # type: ignore[operator]
    exp = tmp_path / "bad.json"
    exp.write_text(json.dumps(doc))
    capsys.readouterr()
    assert (
        main(["lms-status", str(h5), "--state", str(tmp_path / "n.sqlite3"), "--import", str(exp)])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(exp) in err and expect in err, err


# ---------------------------------------------------------------------------- tree cache
@pytest.mark.parametrize("damage", ["foreign", "corrupt", "truncated", "huge"])
def test_bad_cache_is_rebuilt_not_used(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, pub_a = lms_tree.generate(tmp_path / "a", lms.LMS_SHA256_M24_H5, 7)
    b, _ = lms_tree.generate(tmp_path / "b", lms.LMS_SHA256_M24_H5, 7)
    cache = lms_tree.cache_path(a)
    good = cache.read_bytes()
    if damage == "foreign":
        cache.write_bytes(lms_tree.cache_path(b).read_bytes())
    elif damage == "corrupt":
        cache.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    elif damage == "truncated":
        cache.write_bytes(good[:-10])
    else:
        cache.write_bytes(good + bytes(1 << 20))
    lms_tree._TREES.clear()
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
    lms_tree._TREES.clear()

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("tree recomputed although the cache is valid")

    monkeypatch.setattr(lms_tree, "compute_tree", boom)
    LmsSigner.load(h10).sign_digest(bytes(48))


def test_tree_cache_is_keyed_by_identity(h5: Path, tmp_path: Path) -> None:
    """A copied key folder (other path, same identity) reuses the in-memory tree; the cache file
    carries the identity, so one copied beside another key is refused (test above)."""
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in h5.parent.glob("k5-*"):
        shutil.copy(f, copy / f.name)
    lms_tree._TREES.clear()
    LmsSigner.load(h5).sign_digest(bytes(48))
    lms_tree.cache_path(copy / h5.name).unlink()
    assert lms.sig_q(LmsSigner.load(copy / h5.name).sign_digest(b"\1" * 48)) == 1
    assert not lms_tree.cache_path(copy / h5.name).exists()  # served from memory, by identity


# ---------------------------------------------------------------------------- structure
def test_math_and_state_do_not_import_each_other() -> None:
    import ast

    def imports(mod: str) -> set[str]:
        tree = ast.parse((REPO / "imgtool" / "keys" / f"{mod}.py").read_text())
        out = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                out |= {node.module or ""} | {a.name for a in node.names if not node.module}
            elif isinstance(node, ast.Import):
                out |= {a.name.removeprefix("imgtool.") for a in node.names}
        return out

    assert not imports("lms") & {"lms_store", "lms_state", "lms_tree", "lms_signer"}
    assert not imports("lms_store") & {"lms", "lms_state", "lms_tree", "lms_signer"}
    assert not imports("lms_state") & {"lms", "lms_tree", "lms_signer"}


def test_key_side_files_are_never_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--man / --flash over an LMS key's state, lock or tree file would destroy the leaf record
    (the next build refuses or, worse, reuses leaves): refused before anything is written.
    build.KEY_SIDE_FILES names the same files as lms_state / lms_tree."""
    from projects import make_project

    from imgtool.build import KEY_SIDE_FILES

    k = Path("k-prvk.pem")
    assert {k.name + s for s, _ in KEY_SIDE_FILES} == {
        lms_state.state_path(k).name,
        lms_state.lock_path(k).name,
        lms_tree.cache_path(k).name,
    }
    prj = make_project(tmp_path, lms=True, lms_kind="h5")
    monkeypatch.chdir(tmp_path)
    state = prj.keys / "own-man-lms-prvk.pem.state"
    before = state.read_bytes()
    for opt in ("--man", "--flash"):
        capsys.readouterr()
        assert main(["create-auth-flash", *prj.args(opt, str(state))]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "LMS leaf state" in err[0], err
        assert state.read_bytes() == before


def test_outputs_never_overwrite_the_state_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--man over the SQLite state store (or its -wal / -shm) destroyed the leaf log; and an
    output below a regular file failed only after every signature was made. Both refused
    first, one line, exit 2, no leaf spent."""
    from projects import make_project

    prj = make_project(tmp_path, lms=True, lms_kind="h5")
    monkeypatch.chdir(tmp_path)
    assert main(["create-auth-man", *prj.args("--man", str(tmp_path / "m0.bin"))]) == 0
    db = Path(os.environ[store.ENV])
    assert db.read_bytes().startswith(b"SQLite format 3\0")
    state = prj.keys / "own-man-lms-prvk.pem.state"
    before = (db.read_bytes(), state.read_bytes())
    notes = tmp_path / "notes.txt"
    notes.write_text("not a directory\n")
    for opt, out in (
        ("--man", db),
        ("--man", db.with_name(db.name + "-wal")),
        ("--flash", notes / "f.bin"),
    ):
        capsys.readouterr()
        assert main(["create-auth-flash", *prj.args(opt, str(out))]) == 2, out
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ("SQLite database" in err[0] or "not a directory" in err[0]), err
        assert (db.read_bytes(), state.read_bytes()) == before
