"""LMS SHA-256/192: sign/verify per RFC 8554, checked with the independent `hsslms` package."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import struct
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from hsslms import LMOTS_ALGORITHM_TYPE, LMS_ALGORITHM_TYPE, LMS_Priv, LMS_Pub
from hsslms.utils import INVALID

from imgtool.errors import FormatError, ImgtoolError, KeyFileError, LmsStateError
from imgtool.keys import lms, lms_signer, lms_state, lms_tree
from imgtool.keys import lms_store as store
from imgtool.keys.lms_signer import LmsSigner

N = 24
REPO = Path(__file__).resolve().parent.parent
HAVE_CC = (
    shutil.which("gcc") is not None
    and (Path(sysconfig.get_paths()["include"]) / "Python.h").exists()
)


def need(backend: str) -> None:
    """Skip (with the reason) a test of a backend this machine does not have."""
    if backend in lms_tree.backends():
        return
    if lms_tree._FAST is None:
        pytest.skip(f"LMS backend {backend}: imgtool.keys._lmsfast was not built (no C compiler?)")
    pytest.skip(f"LMS backend {backend}: this CPU cannot run it (no SHA extensions or AVX2)")


def H(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:N]


def straightforward_root(priv: bytes) -> bytes:
    """RFC 8554 Appendix A key derivation and the tree, written out plainly."""
    lms_type, ots_type = struct.unpack(">II", priv[:8])
    ident, seed = priv[8:24], priv[24:48]
    h = {10: 5, 11: 10}[lms_type]
    w, p = {5: (1, 200), 6: (2, 101), 7: (4, 51), 8: (8, 26)}[ots_type]
    nodes = {}
    for q in range(2**h):
        ys = []
        for i in range(p):
            x = H(ident + q.to_bytes(4, "big") + i.to_bytes(2, "big") + b"\xff" + seed)
            for j in range(2**w - 1):
                x = H(ident + q.to_bytes(4, "big") + i.to_bytes(2, "big") + bytes([j]) + x)
            ys.append(x)
        k = H(ident + q.to_bytes(4, "big") + b"\x80\x80" + b"".join(ys))
        r = 2**h + q
        nodes[r] = H(ident + r.to_bytes(4, "big") + b"\x82\x82" + k)
    for r in range(2**h - 1, 0, -1):
        nodes[r] = H(ident + r.to_bytes(4, "big") + b"\x83\x83" + nodes[2 * r] + nodes[2 * r + 1])
    return nodes[1]


def hsslms_root(ident: bytes, seed: bytes, h: int, ots_type: int) -> bytes:
    """The root as hsslms computes it (its own leaf and interior functions, our I and SEED)."""
    lt = getattr(LMS_ALGORITHM_TYPE, f"LMS_SHA256_M24_H{h}")
    ot = getattr(LMOTS_ALGORITHM_TYPE, f"LMOTS_SHA256_N24_W{lms.LMOTS_PARAMS[ots_type][0]}")
    t: dict[int, bytes] = {}
    for r in range(2**h, 2 ** (h + 1)):
        t[r] = LMS_Priv._calc_leafs(lt.H, ident, r, h, ot, seed)
    for r in range(2**h - 1, 0, -1):
        t[r] = LMS_Priv._calc_knots(lt.H, ident, r, t[2 * r], t[2 * r + 1], lt.m)
    return t[1]


def hss_verify(pub: bytes, msg: bytes, slot: bytes) -> bool:
    try:
        LMS_Pub(pub).verify(msg, lms.slot_to_sig(slot))
    except INVALID:
        return False
    return True


# Every backend through keygen, signing and hsslms verification. Pure Python skips H10/W8 (about
# 7 M hashes, several seconds): its per-leaf code is the same for every height and W8 runs at H5.
ROUND_TRIPS = [
    (lt, ot, backend)
    for backend in lms_tree.BACKENDS
    for lt, ot in [
        (lms.LMS_SHA256_M24_H5, 7),
        (lms.LMS_SHA256_M24_H5, 8),
        (lms.LMS_SHA256_M24_H10, 7),
        (lms.LMS_SHA256_M24_H10, 8),
    ]
    if (lt, ot, backend) != (lms.LMS_SHA256_M24_H10, 8, "python")
]


@pytest.mark.parametrize(("lms_type", "ots_type", "backend"), ROUND_TRIPS)
def test_keygen_round_trip(tmp_path: Path, lms_type: int, ots_type: int, backend: str) -> None:
    need(backend)
    priv, pub = lms_tree.generate(tmp_path / "k", lms_type, ots_type, backend=backend)
    pub_bytes = pub.read_bytes()
    assert len(pub_bytes) == 48 and len(priv.read_bytes()) == 48
    assert priv.stat().st_mode & 0o777 == 0o600
    if (lms_type, ots_type) != (lms.LMS_SHA256_M24_H10, 8):  # ~7M hashes: too slow written plainly
        assert pub_bytes[24:] == straightforward_root(priv.read_bytes())
    signer = LmsSigner.load(priv)
    assert not signer.is_sparse
    for i in range(3):
        msg = hashlib.sha384(b"message %d" % i).digest()
        slot = signer.sign_digest(msg)
        assert len(slot) == 1620 and lms.sig_q(slot) == i
        assert hss_verify(pub_bytes, msg, slot)
        assert not hss_verify(pub_bytes, hashlib.sha384(b"other").digest(), slot)
        assert signer.public_key().verify(msg, slot)


def test_slot_layout_for_short_types(tmp_path: Path) -> None:
    priv, _ = lms_tree.generate(tmp_path / "k", lms.LMS_SHA256_M24_H5, 8)
    slot = LmsSigner.load(priv).sign_digest(bytes(48))
    assert struct.unpack_from(">I", slot, 1256)[0] == lms.LMS_SHA256_M24_H5
    assert slot[8 + 24 + 26 * 24 : 1256] == bytes((51 - 26) * 24)  # unused y entries
    assert slot[1260 + 5 * 24 :] == bytes(10 * 24)  # unused path entries
    assert lms.sig_to_slot(lms.slot_to_sig(slot)) == slot


def test_sparse_reference_key(ref: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys = ref / "key" / "ast2700-default"
    lms_signer._WARNED.clear()
    signer = LmsSigner.load(keys / "own-man-lms-prvk.pem")
    assert signer.is_sparse
    msg = hashlib.sha384(b"abc").digest()
    with caplog.at_level(logging.WARNING, logger="imgtool"):
        a = signer.sign_digest(msg)
        b = signer.sign_digest(msg)
    assert a == b and lms.sig_q(a) == 5
    assert hss_verify((keys / "own-man-lms-pubk.pem").read_bytes(), msg, a)
    warnings = [r for r in caplog.records if "demo LMS key" in r.getMessage()]
    assert len(warnings) == 1
    assert signer.sign_digest(hashlib.sha384(b"abd").digest()) != a


def test_prebuilt_vendor_lms_signature_parses(ref: Path) -> None:
    slot = (ref / "vnd_sig" / "vnd_lms_sig.der").read_bytes()
    assert lms.sig_q(slot) == 1
    assert len(lms.slot_to_sig(slot)) == 1620  # H15/W4 fills the slot exactly


def test_full_key_without_state_is_refused(tmp_path: Path) -> None:
    priv, _ = lms_tree.generate(tmp_path / "k", lms.LMS_SHA256_M24_H5, 7)
    lms_state.state_path(priv).unlink()
    LmsSigner.load(priv)  # the store still knows the key: fine
    other = tmp_path / "other.sqlite3"
    # the tree cache says full-tree: loaded as one, but the other store refuses to sign
    s = LmsSigner.load(priv, store=str(other))
    assert not s.is_sparse
    with pytest.raises(LmsStateError, match="no LMS state store there"):
        s.sign_digest(bytes(48))
    assert not other.exists()  # never created by signing
    lms_tree.cache_path(priv).unlink()
    with pytest.raises(KeyFileError, match="without a state file.*unknown to the LMS state store"):
        LmsSigner.load(priv, store=str(other))
    store.open_store(str(other))
    with pytest.raises(KeyFileError, match="without a state file.*unknown to the sqlite store"):
        LmsSigner.load(priv, store=str(other))


def test_bad_key_files(tmp_path: Path) -> None:
    p = tmp_path / "k.pem"
    p.write_bytes(bytes(47))
    with pytest.raises(KeyFileError, match="48 bytes"):
        lms.load_public(p)
    p.write_bytes(struct.pack(">II", 5, 7) + bytes(40))
    with pytest.raises(KeyFileError, match="LMS type 5"):
        lms.load_private(p)
    with pytest.raises(FormatError):
        lms.slot_to_sig(bytes(100))


def test_verify_never_raises_on_garbage() -> None:
    pub = lms.LmsPublicKey(lms.LMS_SHA256_M24_H15, 7, bytes(16), bytes(24))
    for junk in (b"", bytes(1620), b"\xff" * 1620, b"\x00\x00\x00\x05" + b"\xff" * 1616):
        assert pub.verify(bytes(48), junk) is False


@pytest.mark.parametrize("backend", lms_tree.BACKENDS)
@pytest.mark.parametrize("ots_type", [5, 6, 7, 8])
def test_tree_matches_rfc8554_and_hsslms(backend: str, ots_type: int) -> None:
    """Every node of an H5 tree for every W, against the plain RFC 8554 computation (root) and
    hsslms's own leaf and interior functions (root), with fresh random I and SEED."""
    need(backend)
    key = lms.LmsPrivateKey(lms.LMS_SHA256_M24_H5, ots_type, os.urandom(16), os.urandom(N))
    nodes = lms_tree.compute_tree(key, workers=2, backend=backend)
    assert len(nodes) == 64 and nodes[0] == b"" and all(len(x) == N for x in nodes[1:])
    assert nodes[1] == straightforward_root(key.to_bytes())
    if ots_type in (7, 8):  # hsslms has W4 and W8 for n = 24 (W1/W2 only through the plain one)
        assert nodes[1] == hsslms_root(key.I, key.seed, 5, ots_type)
    for r in range(1, 32):
        assert (
            nodes[r]
            == hashlib.sha256(
                key.I + struct.pack(">I", r) + lms.D_INTR + nodes[2 * r] + nodes[2 * r + 1]
            ).digest()[:N]
        )


def test_backends_agree_on_every_node_and_any_worker_count() -> None:
    key = lms.LmsPrivateKey(lms.LMS_SHA256_M24_H10, 7, os.urandom(16), os.urandom(N))
    seen: list[tuple[int, int]] = []
    want = lms_tree.compute_tree(key, workers=1, backend="python")
    for backend in lms_tree.backends():
        for workers in (1, 3):
            seen.clear()
            got = lms_tree.compute_tree(
                key, workers=workers, backend=backend, progress=lambda d, t: seen.append((d, t))
            )
            assert got == want, (backend, workers)
            assert seen[-1] == (1024, 1024) and all(t == 1024 for _, t in seen)
            assert [d for d, _ in seen] == sorted({d for d, _ in seen})  # strictly increasing


def test_unknown_backend_is_a_typed_error() -> None:
    key = lms.LmsPrivateKey(lms.LMS_SHA256_M24_H5, 7, bytes(16), bytes(N))
    with pytest.raises(ImgtoolError, match="LMS backend 'gpu': not available"):
        lms_tree.compute_tree(key, backend="gpu")


def test_compiled_part_is_built_where_a_compiler_exists() -> None:
    """`pip install -e .` builds imgtool/keys/_lmsfast.c when gcc and Python.h are there; a silent
    build failure would otherwise leave every key generation 30x slower."""
    if not HAVE_CC:
        pytest.skip("no gcc or Python headers: the pure-Python fallback is expected here")
    assert lms_tree._FAST is not None, "imgtool.keys._lmsfast missing: run `pip install -e .` again"
    assert "c" in lms_tree.backends()


def test_compiled_part_refuses_hostile_arguments() -> None:
    need("c")
    fast = lms_tree._FAST
    assert fast is not None
    good = dict(I=bytes(16), seed=bytes(24), w=4, p=51, h=5, start=0, end=1)
    for bad in (
        {"I": bytes(15)},
        {"I": bytes(17)},
        {"seed": bytes(23)},
        {"w": 3},
        {"w": 16},
        {"p": 0},
        {"p": 201},
        {"p": -1},
        {"h": 0},
        {"h": 26},
        {"start": 2, "end": 1},
        {"end": 33},
        {"start": 33, "end": 33},
    ):
        with pytest.raises(ValueError):
            fast.leaves(**{**good, **bad})
    for kind, value in (("start", -1), ("end", -1), ("end", 2**64 + 1), ("start", 2**64)):
        with pytest.raises((ValueError, OverflowError)):  # never wrapped into range
            fast.leaves(**{**good, kind: value})
    with pytest.raises(TypeError):
        fast.leaves(**{**good, "I": "not bytes"})
    for impl in ("bogus", "", "SHA-NI", 2, b"c"):
        with pytest.raises(ValueError, match="impl"):
            fast.leaves(**good, impl=impl)
        with pytest.raises(ValueError, match="impl"):
            fast.tree(bytes(16), bytes(2 * 24), impl=impl)
    assert fast.leaves(**{**good, "start": 1, "end": 1}) == b""
    leaves = fast.leaves(**{**good, "end": 32})
    for junk in (b"", bytes(24), bytes(3 * 24), bytes(32 * 24 + 1), bytes(17)):
        with pytest.raises(ValueError):
            fast.tree(bytes(16), junk)
    with pytest.raises(ValueError):
        fast.tree(bytes(15), leaves)
    flat = fast.tree(bytes(16), leaves)
    assert len(flat) == 64 * 24 and flat[:24] == bytes(24) and flat[32 * 24 :] == leaves


def test_fallback_when_the_compiled_part_cannot_be_imported(tmp_path: Path) -> None:
    """A fresh interpreter in which `import imgtool.keys._lmsfast` fails (as when it was never
    built) computes keys in pure Python, with the same roots."""
    code = (
        "import sys, os\n"
        "sys.modules['imgtool.keys._lmsfast'] = None  # import now raises ImportError\n"
        "from imgtool.keys import lms, lms_tree\n"
        "assert lms_tree._FAST is None and lms_tree.backends() == ['python'], lms_tree.backends()\n"
        f"priv, pub = lms_tree.generate({str(tmp_path / 'k')!r}, lms.LMS_SHA256_M24_H5, 7)\n"
        "sys.stdout.write(priv.read_bytes().hex() + ' ' + pub.read_bytes().hex())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    priv_hex, pub_hex = r.stdout.split()
    assert bytes.fromhex(pub_hex)[24:] == straightforward_root(bytes.fromhex(priv_hex))


@pytest.mark.skipif(not HAVE_CC, reason="needs gcc and the Python headers")
@pytest.mark.skipif(
    importlib.util.find_spec("setuptools") is None,
    reason="setuptools is not in this venv (Python >= 3.12 venvs come without it)",
)
def test_setup_py_builds_the_extension_and_survives_a_failed_build(tmp_path: Path) -> None:
    """setup.py's extension is optional: with a compiler that fails the build exits 0 and
    leaves no module (imgtool.keys.lms_tree then uses pure Python); with gcc the module it builds
    computes the same leaves as pure Python. (Run on a copy, never in the checkout.)"""
    (tmp_path / "imgtool" / "keys").mkdir(parents=True)
    shutil.copy(REPO / "setup.py", tmp_path / "setup.py")
    shutil.copy(
        REPO / "imgtool" / "keys" / "_lmsfast.c", tmp_path / "imgtool" / "keys" / "_lmsfast.c"
    )

    def build(cc: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "setup.py", "build_ext", "--build-lib", "lib", "-t", "tmp"]
        env = {**os.environ, "CC": cc}
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)

    r = build("false")
    assert r.returncode == 0, r.stderr
    assert 'building extension "imgtool.keys._lmsfast" failed' in r.stdout + r.stderr
    assert not list(tmp_path.rglob("*.so"))
    r = build("gcc")
    assert r.returncode == 0, r.stderr
    (so,) = (tmp_path / "lib").rglob("_lmsfast*.so")
    ident, seed = os.urandom(16), os.urandom(N)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('_lmsfast', {str(so)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        f"sys.stdout.write(m.leaves({ident!r}, {seed!r}, 4, 51, 5, 3, 9).hex())\n"
    )
    r2 = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r2.returncode == 0, r2.stderr
    assert bytes.fromhex(r2.stdout) == b"".join(lms_tree._leaf_chunk((ident, seed, 7, 5, 3, 9)))
