"""LMS SHA-256/192: sign/verify per RFC 8554, checked with the independent `hsslms` package."""

from __future__ import annotations

import hashlib
import logging
import struct
from pathlib import Path

import pytest
from hsslms import LMS_Pub
from hsslms.utils import INVALID

from imgtool import lms, lms_signer, lms_state, lms_tree
from imgtool.errors import FormatError, KeyFileError
from imgtool.lms_signer import LmsSigner

N = 24


def H(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:N]


def straightforward_root(priv: bytes) -> bytes:
    """RFC 8554 Appendix A key derivation and the tree, written out plainly."""
    lms_type, ots_type = struct.unpack(">II", priv[:8])
    ident, seed = priv[8:24], priv[24:48]
    h = {10: 5, 11: 10}[lms_type]
    w, p = {7: (4, 51), 8: (8, 26)}[ots_type]
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


def hss_verify(pub: bytes, msg: bytes, slot: bytes) -> bool:
    try:
        LMS_Pub(pub).verify(msg, lms.slot_to_sig(slot))
    except INVALID:
        return False
    return True


@pytest.mark.parametrize(
    ("lms_type", "ots_type"),
    [
        (lms.LMS_SHA256_M24_H5, 7),
        (lms.LMS_SHA256_M24_H5, 8),
        (lms.LMS_SHA256_M24_H10, 7),
        (lms.LMS_SHA256_M24_H10, 8),
    ],
)
def test_keygen_round_trip(tmp_path: Path, lms_type: int, ots_type: int) -> None:
    priv, pub = lms_tree.generate(tmp_path / "k", lms_type, ots_type)
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
    with pytest.raises(KeyFileError, match="without a state file.*unknown to the sqlite store"):
        LmsSigner.load(priv, store=str(tmp_path / "other.sqlite3"))


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
