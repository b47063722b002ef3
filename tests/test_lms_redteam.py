"""The red-team findings on the LMS leaf state (notes/rt-lms.md, F1-F13), each as the attack
that used to work: now refused with one line, or harmless. The store's own findings (locations,
URL typos, masking, schema tampering) are in tests/test_store.py; the PostgreSQL restart (F13)
in tests/test_store_postgres.py."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgtool.cli.main import main
from imgtool.errors import KeyFileError, LmsStateError, SigningError
from imgtool.keys import lms, lms_scan, lms_signer, lms_state, lms_tree
from imgtool.keys import lms_store as store
from imgtool.keys.lms_signer import LmsSigner

REPO = Path(__file__).resolve().parent.parent
H5, W4 = lms.LMS_SHA256_M24_H5, lms.LMOTS_SHA256_N24_W4


def _pub_path(priv: Path) -> Path:
    return priv.with_name(priv.name.replace("prvk", "pubk"))


def _ident(priv: Path) -> store.KeyIdentity:
    return store.KeyIdentity.of(lms.load_public(_pub_path(priv)))


def _sign(priv: Path, text: bytes, st: str | None = None) -> int:
    return lms.sig_q(LmsSigner.load(priv, store=st).sign_digest(hashlib.sha384(text).digest()))


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("cptra-imgtool: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def key(tmp_path: Path) -> Path:
    priv, _ = lms_tree.generate(tmp_path / "k" / "own-fw-lms", H5, W4)
    return priv


# ---------------------------------------------------------------------------- F1
def test_copied_key_folder_on_another_store_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """a01: keygen with store A, sign, `cp -rf` the folder, sign again in A; the copy with
    store B used to sign at A's leaf 1 again."""
    a, b = str(tmp_path / "storeA.sqlite3"), str(tmp_path / "storeB.sqlite3")
    priv, _ = lms_tree.generate(tmp_path / "prjA" / "own-fw-lms", H5, W4, store=a)
    assert _sign(priv, b"release 1", a) == 0
    shutil.copytree(tmp_path / "prjA", tmp_path / "prjB")
    assert _sign(priv, b"release 2 (A)", a) == 1
    copy = tmp_path / "prjB" / priv.name
    store.open_store(b)  # B exists (another user's default store, say)
    with pytest.raises(LmsStateError, match="last used with another LMS state store") as ei:
        _sign(copy, b"release 2 (B)", b)
    assert "--import" in str(ei.value) and "--init" in str(ei.value)
    assert store.open_store(b).get(_ident(copy)) is None
    capsys.readouterr()
    assert main(["lms-status", str(copy), "--state", b]) == 0
    assert "WARNING: the state file was last used with another store" in capsys.readouterr().out
    # moving it on purpose: A hands it off (from the original folder), B takes it over
    exp = tmp_path / "k.json"
    assert main(["lms-status", str(priv), "--state", a, "--export", str(exp)]) == 0
    assert "handed the key off" in capsys.readouterr().out
    assert main(["lms-status", str(copy), "--state", b, "--import", str(exp)]) == 0
    out = capsys.readouterr()
    assert "handoff" in out.out and "first use of this key" in out.err
    assert _sign(copy, b"release 3 (B)", b) == 2
    with pytest.raises(LmsStateError, match="handed LMS key .* off"):
        _sign(priv, b"release 3 (A)", a)


def test_fresh_ci_store_with_a_committed_state_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """a02: keys with KEY.state committed to git; each CI job starts with an empty default
    store and used to sign at the committed next_q: the same leaf in every job."""
    monkeypatch.delenv(store.ENV)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "dev"))
    priv, _ = lms_tree.generate(tmp_path / "repo" / "keys" / "own-fw-lms", H5, W4)
    seen = set()
    for job in range(3):
        ci = tmp_path / f"ci{job}"
        shutil.copytree(tmp_path / "repo", ci)
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / f"container{job}"))
        store.close_all()
        k = ci / "keys" / priv.name
        with pytest.raises(LmsStateError, match="no LMS state store there"):
            seen.add(_sign(k, b"nightly %d" % job))
        assert not (tmp_path / f"container{job}").exists()  # signing made no store
        capsys.readouterr()
        assert main(["lms-status", str(k)]) == 2
        assert "signing never creates one" in _one_line(capsys.readouterr().err)
    assert seen == set()


def test_copied_project_built_with_another_default_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """a01e2e: newprj.sh-style `cp -rf` of a project, then create-auth-man in both copies,
    each on its own machine (own default store): the copy is refused, writes nothing."""
    from projects import make_project

    monkeypatch.delenv(store.ENV)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "hostA"))
    a = make_project(tmp_path / "prjA", lms=True, lms_kind="h5")
    assert main(["create-auth-man", *a.args("--man", str(a.out / "r1.bin"))]) == 0
    shutil.copytree(a.root, tmp_path / "prjB")
    b = make_project(tmp_path / "prjB", lms=True, lms_kind="h5")
    (b.prebuilt / "img0.bin").write_bytes(b"B change")
    store.open_store(str(tmp_path / "hostB" / "cptra-imgtool" / store.DB_NAME))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "hostB"))
    store.close_all()
    capsys.readouterr()
    assert main(["create-auth-man", *b.args("--man", str(b.out / "r2.bin"))]) == 2
    assert "last used with another LMS state store" in _one_line(capsys.readouterr().err)
    assert not (b.out / "r2.bin").exists()


def test_first_format_state_file_keeps_working_and_is_rewritten(key: Path) -> None:
    """Existing users' state files (no store id) are accepted where the store knows the key,
    and rewritten in the current format; where it does not, signing refuses (no adoption from
    the file alone) until --init."""
    assert _sign(key, b"0") == 0
    sp = lms_state.state_path(key)
    old = {"format": lms_state.STATE_FORMAT_1, "key": _ident(key).key_id, "leaves": 32}
    sp.write_text(json.dumps({**old, "next_q": 3}))
    assert _sign(key, b"1") == 3  # the file was ahead: it wins
    doc = json.loads(sp.read_text())
    assert doc["format"] == lms_state.STATE_FORMAT and doc["next_q"] == 4
    assert doc["store"] == store.open_store().store_id
    other, _ = lms_tree.generate(key.parent / "o", H5, W4, store=str(key.parent / "x.sqlite3"))
    lms_state.state_path(other).write_text(
        json.dumps({**old, "key": _ident(other).key_id, "next_q": 5})
    )
    with pytest.raises(LmsStateError, match="signing never adopts a key from its state file"):
        _sign(other, b"2")
    assert main(["lms-status", str(other), "--init", "--next-q", "5"]) == 0
    assert _sign(other, b"2") == 5


def test_keygen_then_sign_needs_no_extra_step(tmp_path: Path) -> None:
    st = str(tmp_path / "s" / "fresh.sqlite3")  # does not exist yet: keygen makes it
    assert main(["keygen", "--algo", "lms", "--height", "5", "--force", "--state", st,
                 "--out", str(tmp_path / "k")]) == 0  # fmt: skip
    assert _sign(tmp_path / "k-prvk.pem", b"a", st) == 0


# ---------------------------------------------------------------------------- F3
def test_keep_live_and_old_exports_need_confirmation(
    key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """a03: an export used to leave the source store live: after a "move" both stores signed
    the same leaves. A --keep-live export (or one of the first format) imported into a store
    that does not know the key needs --confirm-adopt, and says what it risks."""
    for i in range(2):
        _sign(key, b"m%d" % i)
    exp = tmp_path / "copy.json"
    assert main(["lms-status", str(key), "--export", str(exp), "--keep-live"]) == 0
    assert "still signs with this key" in capsys.readouterr().err
    new = str(tmp_path / "new.sqlite3")
    copy = tmp_path / "k-new"
    shutil.copytree(key.parent, copy)
    ck = copy / key.name
    assert _sign(key, b"m2") == 2  # the source still signs: a copy only
    assert main(["lms-status", str(ck), "--state", new, "--import", str(exp)]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "--keep-live" in err and "--confirm-adopt" in err
    v1 = json.loads(exp.read_text())
    v1["format"] = "cptra-imgtool-lms-export-1"
    del v1["source_store"], v1["handoff"]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(v1))
    assert main(["lms-status", str(ck), "--state", new, "--import", str(old)]) == 2
    assert "of the first format" in _one_line(capsys.readouterr().err)
    # a real handoff: the export retires the source in the same transaction
    hand = tmp_path / "hand.json"
    assert main(["lms-status", str(key), "--export", str(hand)]) == 0
    with pytest.raises(LmsStateError, match="handed LMS key .* off"):
        _sign(key, b"late")
    assert main(["lms-status", str(ck), "--state", new, "--import", str(hand)]) == 0
    assert _sign(ck, b"m3", new) == 3
    # the store it was exported from can take it back the same way, never without
    back = tmp_path / "back.json"
    assert main(["lms-status", str(ck), "--state", new, "--export", str(back)]) == 0
    assert main(["lms-status", str(key), "--import", str(back)]) == 0
    assert _sign(key, b"m4") == 4
    assert main(["lms-status", str(key), "--init", "--next-q", "9"]) == 0  # live here: fine
    assert main(["lms-status", str(ck), "--state", new, "--init", "--next-q", "9"]) == 2
    assert "handed this key off" in _one_line(capsys.readouterr().err)


# ---------------------------------------------------------------------------- F4
def test_real_key_with_a_sparse_public_key_is_refused(key: Path, tmp_path: Path) -> None:
    """a14: state file lost, -pubk.pem re-derived as the sparse root (the server's
    _lms_public_from_private did this): taken for a demo key, every message was signed at q=5
    with the real seed, a forgery under the real public key."""
    real = lms.load_public(_pub_path(key))
    for i in range(6):
        _sign(key, b"release %d" % i)
    k = lms.load_private(key)
    sparse_pub = lms.LmsPublicKey(k.lms_type, k.ots_type, k.I, lms.sparse_root(k)).to_bytes()
    lms_state.state_path(key).unlink()
    _pub_path(key).write_bytes(sparse_pub)
    with pytest.raises(KeyFileError, match="another root than"):
        LmsSigner.load(key)
    # the store unknown here (another machine), the tree cache beside the key still tells
    with pytest.raises(KeyFileError, match="holds the sparse demo root"):
        LmsSigner.load(key, store=str(tmp_path / "none.sqlite3"))
    # the library answers for the server's /pubkey
    assert lms_signer.is_full_tree_key(key)
    assert lms_signer.stored_public_key(key) == real
    lms_tree.cache_path(key).unlink()
    assert lms_signer.is_full_tree_key(key)  # the store's row, by (types, I)
    assert not lms_signer.is_full_tree_key(key, store=str(tmp_path / "none.sqlite3"))
    assert lms_signer.stored_public_key(key, store=str(tmp_path / "none.sqlite3")) is None
    assert not (tmp_path / "none.sqlite3").exists()
    demo = tmp_path / "demo-prvk.pem"
    dk = lms.LmsPrivateKey(H5, W4, os.urandom(16), os.urandom(24))
    demo.write_bytes(dk.to_bytes())
    _pub_path(demo).write_bytes(lms.LmsPublicKey(H5, W4, dk.I, lms.sparse_root(dk)).to_bytes())
    assert not lms_signer.is_full_tree_key(demo) and lms_signer.stored_public_key(demo) is None
    assert LmsSigner.load(demo).is_sparse


# ---------------------------------------------------------------------------- F5
def _lie(priv: Path, node: int) -> None:
    """Node ``node`` of the cache replaced by garbage, header, root and checksum kept valid."""
    cp = lms_tree.cache_path(priv)
    data = bytearray(cp.read_bytes())
    off = len(lms_tree.CACHE_MAGIC) + 32 + 4 + (node - 1) * 24
    data[off : off + 24] = hashlib.sha256(b"garbage").digest()[:24]
    data[-32:] = hashlib.sha256(bytes(data[:-32])).digest()
    cp.write_bytes(bytes(data))


def test_lying_tree_cache_is_repaired(
    tmp_path: Path, key: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """a05: a cache with one inner node wrong (checksum recomputed) used to hide the leaves
    under it from --scan, and made every signing attempt burn a leaf and fail."""
    from projects import make_project

    p = make_project(tmp_path / "p", lms=True, lms_kind="h5")
    for i in range(9):
        (p.prebuilt / "img0.bin").write_bytes(b"%d" % i)
        assert main(["create-auth-man", *p.args("--man", str(p.out / f"r{i}.bin"))]) == 0
    priv = p.keys / "own-fw-lms-prvk.pem"
    used = lms_state.read_state(priv, _ident(priv))
    assert used >= 9
    _lie(priv, 2)  # in the authentication path of leaves 16..31
    _lie(priv, 3)  # ... and of leaves 0..15
    lms_tree._TREES.clear()
    k, pub = lms_tree.load_pair(priv)
    with caplog.at_level("WARNING", logger="imgtool"):
        nodes = lms_tree.get_tree(priv, k, pub)
    assert "inner nodes do not match its leaves" in caplog.text
    assert str(lms_tree.cache_path(priv)) in caplog.text
    files = sorted(p.out.glob("r*.bin"))
    assert {u.q for u in lms_scan.used_leaves(files, pub, nodes)} == set(range(used))
    lms_tree._TREES.clear()  # the rewritten cache is right
    assert lms_tree.get_tree(priv, k, pub) == nodes
    assert _sign(priv, b"after") == used  # one leaf per signature, and it verifies


def test_signature_that_does_not_verify_is_retried_at_the_same_leaf(
    key: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A tree that gives a wrong authentication path (in memory, here): the cache is dropped,
    the tree rebuilt from the private key, and the same leaf signed again (the same message:
    the same one-time signature); one leaf is spent, the signature verifies."""
    k, pub = lms_tree.load_pair(key)
    good = lms_tree.get_tree(key, k, pub)
    bad = list(good)
    bad[(1 << 5) + 1] = bytes(24)  # leaf 1: in leaf 0's authentication path
    lms_tree._TREES[lms_tree.key_tag(pub)] = bad
    msg = hashlib.sha384(b"x").digest()
    with caplog.at_level("WARNING", logger="imgtool"):
        slot = LmsSigner.load(key).sign_digest(msg)
    assert lms.sig_q(slot) == 0 and pub.verify(msg, slot)
    assert "does not verify with the tree from" in caplog.text and ".tree" in caplog.text
    assert lms_state.read_state(key, pub) == 1
    # a private key that does not match its public key: one line naming the problem
    lms_tree._TREES[lms_tree.key_tag(pub)] = bad
    kb = bytearray(key.read_bytes())
    kb[-1] ^= 1
    key.write_bytes(bytes(kb))
    with pytest.raises((SigningError, KeyFileError), match="does not"):
        LmsSigner.load(key).sign_digest(hashlib.sha384(b"y").digest())


# ---------------------------------------------------------------------------- F6
def test_init_says_what_it_risks(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """a04/a16: --init and --import with no prior state printed no warning; --scan with zero
    hits adopted at 0."""
    from projects import make_project

    p = make_project(tmp_path / "p", lms=True, lms_kind="h5")
    assert main(["create-auth-man", *p.args("--man", str(p.out / "r1.bin"))]) == 0
    k = p.keys / "own-man-lms-prvk.pem"
    lms_state.state_path(k).unlink()
    new = str(tmp_path / "new-laptop.sqlite3")
    capsys.readouterr()
    wrong = str(p.prebuilt / "caliptra-fw.bin")
    assert main(["lms-status", str(k), "--state", new, "--init", "--scan", wrong]) == 2
    assert "refusing to adopt it at leaf 0 on no evidence" in _one_line(capsys.readouterr().err)
    args = ["lms-status", str(k), "--state", new, "--init", "--scan", str(p.out / "r1.bin")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--scan sees only the files given" in err and "--confirm-adopt" in _one_line(err)
    assert main([*args, "--confirm-adopt"]) == 0
    err = capsys.readouterr().err
    assert "--scan sees only the files given" in err and "first use of this key" in err
    assert _sign(k, b"release 2", new) == 1
    # --confirm-adopt goes with the adoption commands only
    assert main(["lms-status", str(k), "--state", new, "--confirm-adopt"]) == 2
    assert main(["lms-status", str(k), "--state", new, "--keep-live"]) == 2


# ---------------------------------------------------------------------------- F7
HELPER = """
import os, sys
from pathlib import Path
from imgtool.keys import lms, lms_tree
priv = Path(os.environ["BROKEN_HELPER_KEY"])
key, pub = lms_tree.load_pair(priv)
nodes = lms_tree.compute_tree(key, workers=1)
d = bytes.fromhex(sys.stdin.readline().strip())
print(lms.sig_to_slot(key.sign_at(0, d, lms.auth_path(nodes, key.height, 0))).hex())
"""


def test_sign_helper_that_reuses_a_leaf_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """a20: an LMS sign helper that always signs at leaf 0 of a real key: two builds carried
    two messages at one leaf, exit 0, no warning."""
    from projects import make_project

    helper = tmp_path / "broken_helper.py"
    helper.write_text(HELPER)
    extra = (
        f'\n[sign_helper]\nowner_lms_man_key_sign_helper = "{sys.executable} {helper}"\n'
        "by_file = false\n"
    )
    p = make_project(tmp_path / "p", lms=True, lms_kind="h5", extra_runtime=extra)
    k = p.keys / "own-man-lms-prvk.pem"
    monkeypatch.setenv("BROKEN_HELPER_KEY", str(k))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    assert main(["create-auth-man", *p.args("--man", str(p.out / "r1.bin"))]) == 0
    log = store.open_store().signatures(_ident(k))
    assert [(r.q, r.signer) for r in log] == [(0, "helper")]
    (p.prebuilt / "img0.bin").write_bytes(b"change")
    capsys.readouterr()
    assert main(["create-auth-man", *p.args("--man", str(p.out / "r2.bin"))]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "owner_lms_man_key_sign_helper" in line and "reused a one-time leaf" in line
    assert not (p.out / "r2.bin").exists()
    # the local key now knows leaf 0 is gone
    assert _sign(k, b"local") == 1


def test_sparse_signatures_are_recognised_from_public_data(key: Path) -> None:
    dk = lms.LmsPrivateKey(H5, W4, os.urandom(16), os.urandom(24))
    nodes = lms.sparse_nodes(dk)
    dpub = lms.LmsPublicKey(H5, W4, dk.I, nodes[1])
    sig = dk.sign_at(5, bytes(48), lms.auth_path(nodes, 5, 5))
    assert lms.is_sparse_signature(dpub, sig) and lms.is_sparse_signature(
        dpub, lms.sig_to_slot(sig)
    )
    k, pub = lms_tree.load_pair(key)
    full = lms_tree.get_tree(key, k, pub)
    assert not lms.is_sparse_signature(pub, k.sign_at(5, bytes(48), lms.auth_path(full, 5, 5)))
    assert not lms.is_sparse_signature(pub, k.sign_at(4, bytes(48), lms.auth_path(full, 5, 4)))
    assert not lms.is_sparse_signature(dpub, b"junk")


# ---------------------------------------------------------------------------- F8
def test_fifo_state_file_is_refused_at_once(key: Path) -> None:
    """a06: a FIFO as KEY.state blocked forever under the lock."""
    sp = lms_state.state_path(key)
    sp.unlink()
    os.mkfifo(sp)
    t = time.monotonic()
    with pytest.raises(LmsStateError, match="not a regular file"):
        _sign(key, b"x")
    assert time.monotonic() - t < 5
    sp.unlink()
    sp.symlink_to("/dev/zero")
    with pytest.raises(LmsStateError, match="not a regular file"):
        _sign(key, b"x")


def test_stuck_lock_holder_is_an_error_naming_the_lock(
    key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """a08: a SIGSTOPped lock holder blocked every signer forever."""
    code = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(lms_state.lock_path(key))], stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
        monkeypatch.setattr(lms_state, "LOCK_TIMEOUT", 0.5)
        t = time.monotonic()
        with pytest.raises(LmsStateError, match="held this LMS key's lock for more than") as ei:
            _sign(key, b"waiter")
        assert str(lms_state.lock_path(key)) in str(ei.value) and time.monotonic() - t < 5
    finally:
        holder.kill()
        holder.wait()
    assert _sign(key, b"after") == 0  # nothing was spent by the refused attempt
    lp = lms_state.lock_path(key)
    lp.unlink()
    lp.symlink_to(key.parent / "elsewhere")
    with pytest.raises(LmsStateError, match="a symlink"):
        _sign(key, b"x")
    assert not (key.parent / "elsewhere").exists()


def test_lock_waits_for_a_short_holder(key: Path) -> None:
    fd = os.open(lms_state.lock_path(key), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    import threading

    threading.Timer(0.3, os.close, (fd,)).start()
    t = time.monotonic()
    assert _sign(key, b"x") == 0 and time.monotonic() - t >= 0.25


# ---------------------------------------------------------------------------- F9
def test_import_bounds_times_and_keeps_imported_actors_out_of_quotas(
    key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """a16: an imported record with "time": 1e308 made lms-status fail with an internal error
    (exit 3) and counted against the actor's quota forever."""
    for i in range(3):
        LmsSigner.load(key, signer="server", actor="token:victim").sign_digest(b"%d" % i * 48)
    exp = tmp_path / "e.json"
    assert main(["lms-status", str(key), "--export", str(exp)]) == 0
    doc = json.loads(exp.read_text())
    new = str(tmp_path / "new.sqlite3")
    for t, shown in ((1e308, "1e+308"), (-1, "-1"), (True, "True")):
        d = json.loads(json.dumps(doc))
        d["signatures"][0]["time"] = t
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(d))
        capsys.readouterr()
        assert main(["lms-status", str(key), "--state", new, "--import", str(bad)]) == 2
        assert f"field time: {shown} is not a time" in _one_line(capsys.readouterr().err)
    bad.write_text(exp.read_text().replace('"exported": ', '"exported": 1e400, "x": ', 1))
    assert main(["lms-status", str(key), "--state", new, "--import", str(bad)]) == 2
    assert main(["lms-status", str(key), "--state", new, "--import", str(exp)]) == 0
    assert store.open_store(new).count_signatures("token:victim", 0) == 0  # imported
    # a store that already holds such a time (imported by an older release): shown, not a crash
    with store.open_store(new)._tx() as cur:
        cur.execute("UPDATE lms_signatures SET time = 1e308 WHERE q = 0")
    capsys.readouterr()
    assert main(["lms-status", str(key), "--state", new, "--last", "5"]) == 0
    assert "time 1e+308" in capsys.readouterr().out


# ---------------------------------------------------------------------------- F11
def test_sparse_key_refuses_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dk = lms.LmsPrivateKey(H5, W4, os.urandom(16), os.urandom(24))
    priv = tmp_path / "d-prvk.pem"
    priv.write_bytes(dk.to_bytes())
    pub = lms.LmsPublicKey(H5, W4, dk.I, lms.sparse_root(dk))
    _pub_path(priv).write_bytes(pub.to_bytes())
    ident = store.KeyIdentity.of(pub)
    exp = tmp_path / "exp.json"
    exp.write_text(
        json.dumps(
            {
                "format": "cptra-imgtool-lms-export-1",
                "key_id": ident.key_id,
                "public_key": ident.public_bytes().hex(),
                "leaves": 32,
                "next_q": 0,
                "exported": time.time(),
                "signatures": [],
            }
        )
    )
    capsys.readouterr()
    assert main(["lms-status", str(priv), "--import", str(exp)]) == 2
    assert "sparse demo key" in _one_line(capsys.readouterr().err)
    assert store.open_store().get(ident) is None
    assert main(["lms-status", str(priv)]) == 0
    assert "sparse demo key" in capsys.readouterr().out


# ---------------------------------------------------------------------------- F12
def test_failed_attempt_does_not_burn_a_leaf_per_retry(
    key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build that fails after the reservation (here: the signature computation) and is
    retried with the same input gets the same leaf (the same signature); anything else in
    between, and the leaf is never handed out again."""
    real = lms.LmsPrivateKey.sign_at
    calls = []

    def boom(self: lms.LmsPrivateKey, q: int, m: bytes, path: list[bytes]) -> bytes:
        calls.append(q)
        raise RuntimeError("power cut")

    monkeypatch.setattr(lms.LmsPrivateKey, "sign_at", boom)
    for _ in range(3):
        with pytest.raises(RuntimeError):
            _sign(key, b"release 1")
    monkeypatch.setattr(lms.LmsPrivateKey, "sign_at", real)
    assert calls == [0, 0, 0]
    assert _sign(key, b"release 1") == 0
    assert _sign(key, b"release 2") == 1
    assert _sign(key, b"release 1") == 2  # not the last leaf any more: a new one
    st = store.open_store()
    assert [r.q for r in st.signatures(_ident(key))] == [2, 1, 0]


def test_stale_temporary_state_files_are_removed(key: Path) -> None:
    """a08: a writer killed between creating and renaming its temporary file left
    .KEY.state.*.tmp behind for good."""
    stale = key.parent / f".{lms_state.state_path(key).name}.abc123.tmp"
    stale.write_text("{}")
    other = key.parent / ".unrelated.tmp"
    other.write_text("x")
    _sign(key, b"x")
    assert not stale.exists() and other.exists()
