"""LMS (RFC 8554) over SHA-256/192 (n = m = 24, NIST SP 800-208) in Caliptra's key formats.

* Key files are 48 raw bytes: u32be lms_type, u32be ots_type, I (16), then SEED (private) or the
  root T[1] (public): exactly the RFC 8554 public key string.
* Signatures are produced in Caliptra's fixed 1620-byte slot (q, ots_type, C, y[51], lms_type at
  offset 1256, path[15]); for H5/H10 or W8 the unused tail of y and path is zero.
* Two kinds of private key:
  - *sparse* demo keys (the reference keys): only leaf q = 5 has a real LM-OTS key, every other
    leaf's OTS public key is 24 zero bytes. They always sign at q = 5 and a warning says so.
  - *full-tree* keys (``keygen``): every leaf is real. Signing reserves the next leaf in the leaf
    state (:mod:`imgtool.keys.lms_state`: the state file beside the key and the state store,
    :mod:`imgtool.keys.lms_store`) and reads the authentication path from the tree cache
    (:mod:`imgtool.keys.lms_tree`); :mod:`imgtool.keys.lms_signer` composes them. This module is
    the math
    only and imports neither.
* The nonce C is derived deterministically:
  ``C = SHA-256("cptra-imgtool lms nonce" || SEED || I || u32(q) || message)[:24]``,
  so identical inputs give identical bytes and (q, C) never repeats for different messages.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import FormatError, KeyFileError

log = logging.getLogger("imgtool")

N = 24
SLOT_LEN = 1620
PUB_LEN = 48
SLOT_Y = 51
SLOT_PATH = 15
SLOT_LMS_TYPE_OFF = 4 + 4 + N + SLOT_Y * N  # 1256

LMS_SHA256_M24_H5, LMS_SHA256_M24_H10, LMS_SHA256_M24_H15, LMS_SHA256_M24_H20 = 10, 11, 12, 13
LMOTS_SHA256_N24_W1, LMOTS_SHA256_N24_W2, LMOTS_SHA256_N24_W4, LMOTS_SHA256_N24_W8 = 5, 6, 7, 8
LMS_HEIGHTS = {10: 5, 11: 10, 12: 15, 13: 20}
# ots type -> (w, p, ls) for n = 24 (SP 800-208 table 4)
LMOTS_PARAMS = {5: (1, 200, 8), 6: (2, 101, 6), 7: (4, 51, 4), 8: (8, 26, 0)}
SPARSE_Q = 5
D_PBLC, D_MESG, D_LEAF, D_INTR = b"\x80\x80", b"\x81\x81", b"\x82\x82", b"\x83\x83"
NONCE_LABEL = b"cptra-imgtool lms nonce"


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:N]


def _u32(x: int) -> bytes:
    return struct.pack(">I", x)


def height(lms_type: int) -> int:
    return LMS_HEIGHTS[lms_type]


def sig_len(lms_type: int, ots_type: int) -> int:
    _, p, _ = LMOTS_PARAMS[ots_type]
    return 4 + 4 + N + p * N + 4 + height(lms_type) * N


def _coefs(q_hash: bytes, w: int, p: int, ls: int) -> list[int]:
    """Base-2^w digits of Q || Cksm(Q) (RFC 8554 4.4 / 4.5)."""
    u = 8 * N // w
    mask = (1 << w) - 1

    def coef(data: bytes, i: int) -> int:
        byte = data[(i * w) // 8]
        shift = 8 - (w * (i % (8 // w)) + w)
        return (byte >> shift) & mask

    total = sum(mask - coef(q_hash, i) for i in range(u))
    data = q_hash + struct.pack(">H", (total << ls) & 0xFFFF)
    return [coef(data, i) for i in range(p)]


@dataclass(frozen=True)
class LmsPublicKey:
    lms_type: int
    ots_type: int
    I: bytes  # noqa: E741 - RFC 8554's name
    root: bytes

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> LmsPublicKey:
        lms_type, ots_type = _check_types(data, source, "public")
        return cls(lms_type, ots_type, bytes(data[8:24]), bytes(data[24:48]))

    def to_bytes(self) -> bytes:
        return _u32(self.lms_type) + _u32(self.ots_type) + self.I + self.root

    @property
    def height(self) -> int:
        return height(self.lms_type)

    def verify(self, message: bytes, sig: bytes) -> bool:
        """RFC 8554 verification; ``sig`` may be the exact signature or the 1620-byte slot."""
        try:
            if len(sig) == SLOT_LEN and len(sig) != sig_len(self.lms_type, self.ots_type):
                sig = slot_to_sig(sig)
            return self._verify(message, sig)
        except (FormatError, KeyError, struct.error, IndexError):
            return False

    def _verify(self, message: bytes, sig: bytes) -> bool:
        if len(sig) != sig_len(self.lms_type, self.ots_type):
            return False
        q, ots_type = struct.unpack_from(">II", sig)
        if ots_type != self.ots_type:
            return False
        h = self.height
        if q >= (1 << h):
            return False
        w, p, ls = LMOTS_PARAMS[ots_type]
        c = sig[8 : 8 + N]
        ys = [sig[8 + N + i * N : 8 + N + (i + 1) * N] for i in range(p)]
        off = 8 + N + p * N
        (lms_type,) = struct.unpack_from(">I", sig, off)
        if lms_type != self.lms_type:
            return False
        path = [sig[off + 4 + i * N : off + 4 + (i + 1) * N] for i in range(h)]
        prefix = self.I + _u32(q)
        a = _coefs(_h(prefix + D_MESG + c + message), w, p, ls)
        top = (1 << w) - 1
        zs = []
        for i, (tmp, ai) in enumerate(zip(ys, a, strict=True)):
            pi = prefix + struct.pack(">H", i)
            for j in range(ai, top):
                tmp = _h(pi + bytes((j,)) + tmp)
            zs.append(tmp)
        kc = _h(prefix + D_PBLC + b"".join(zs))
        node = (1 << h) + q
        tmp = _h(self.I + _u32(node) + D_LEAF + kc)
        for sib in path:
            parent = node // 2
            pair = sib + tmp if node & 1 else tmp + sib
            tmp = _h(self.I + _u32(parent) + D_INTR + pair)
            node = parent
        return tmp == self.root


@dataclass(frozen=True)
class LmsPrivateKey:
    lms_type: int
    ots_type: int
    I: bytes  # noqa: E741
    seed: bytes

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> LmsPrivateKey:
        lms_type, ots_type = _check_types(data, source, "private")
        return cls(lms_type, ots_type, bytes(data[8:24]), bytes(data[24:48]))

    def to_bytes(self) -> bytes:
        return _u32(self.lms_type) + _u32(self.ots_type) + self.I + self.seed

    def __repr__(self) -> str:  # never show the seed
        return (
            f"LmsPrivateKey(lms_type={self.lms_type}, ots_type={self.ots_type}, I={self.I.hex()})"
        )

    @property
    def height(self) -> int:
        return height(self.lms_type)

    def ots_public(self, q: int) -> bytes:
        """K, the LM-OTS public key of leaf q."""
        return ots_public(self.I, self.seed, self.ots_type, q)

    def sign_at(self, q: int, message: bytes, path: list[bytes]) -> bytes:
        """The exact RFC 8554 signature at leaf q, given its authentication path."""
        w, p, ls = LMOTS_PARAMS[self.ots_type]
        prefix = self.I + _u32(q)
        c = _h(NONCE_LABEL + self.seed + self.I + _u32(q) + message)
        a = _coefs(_h(prefix + D_MESG + c + message), w, p, ls)
        ys = []
        for i, ai in enumerate(a):
            pi = prefix + struct.pack(">H", i)
            tmp = _h(pi + b"\xff" + self.seed)
            for j in range(ai):
                tmp = _h(pi + bytes((j,)) + tmp)
            ys.append(tmp)
        return (
            _u32(q) + _u32(self.ots_type) + c + b"".join(ys) + _u32(self.lms_type) + b"".join(path)
        )


def ots_public(ident: bytes, seed: bytes, ots_type: int, q: int) -> bytes:
    w, p, _ = LMOTS_PARAMS[ots_type]
    prefix = ident + _u32(q)
    top = (1 << w) - 1
    ys = []
    for i in range(p):
        pi = prefix + struct.pack(">H", i)
        tmp = hashlib.sha256(pi + b"\xff" + seed).digest()[:N]
        for j in range(top):
            tmp = hashlib.sha256(pi + bytes((j,)) + tmp).digest()[:N]
        ys.append(tmp)
    return _h(prefix + D_PBLC + b"".join(ys))


def leaf_node(ident: bytes, h: int, q: int, k: bytes) -> bytes:
    return _h(ident + _u32((1 << h) + q) + D_LEAF + k)


def build_levels(ident: bytes, h: int, leaves: list[bytes]) -> list[bytes]:
    """All tree nodes T[1..2^(h+1)-1] as a list indexed by node number (index 0 unused)."""
    nodes = [b""] * (1 << (h + 1))
    base = 1 << h
    nodes[base : base + len(leaves)] = leaves
    for r in range(base - 1, 0, -1):
        nodes[r] = _h(ident + _u32(r) + D_INTR + nodes[2 * r] + nodes[2 * r + 1])
    return nodes


def auth_path(nodes: list[bytes], h: int, q: int) -> list[bytes]:
    node = (1 << h) + q
    path = []
    while node > 1:
        path.append(nodes[node ^ 1])
        node //= 2
    return path


def _check_types(data: bytes, source: str, what: str) -> tuple[int, int]:
    if len(data) != PUB_LEN:
        raise KeyFileError(f"{source}: LMS {what} key must be {PUB_LEN} bytes, got {len(data)}")
    lms_type, ots_type = struct.unpack_from(">II", data)
    if lms_type not in LMS_HEIGHTS:
        raise KeyFileError(
            f"{source}: LMS type {lms_type} is not LMS_SHA256_M24_H5/H10/H15/H20 (10..13)"
        )
    if ots_type not in LMOTS_PARAMS:
        raise KeyFileError(
            f"{source}: LM-OTS type {ots_type} is not LMOTS_SHA256_N24_W1..W8 (5..8)"
        )
    return lms_type, ots_type


def _read(path: str | Path, what: str) -> bytes:
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{p}: LMS {what} key not found") from None
    except OSError as exc:
        raise KeyFileError(f"{p}: cannot read LMS {what} key: {exc.strerror}") from None


def load_public(path: str | Path) -> LmsPublicKey:
    return LmsPublicKey.from_bytes(_read(path, "public"), str(path))


def load_private(path: str | Path) -> LmsPrivateKey:
    return LmsPrivateKey.from_bytes(_read(path, "private"), str(path))


def sig_to_slot(sig: bytes) -> bytes:
    """Exact RFC 8554 signature -> Caliptra's 1620-byte slot."""
    if len(sig) < 8:
        raise FormatError("LMS signature too short")
    q, ots_type = struct.unpack_from(">II", sig)
    if ots_type not in LMOTS_PARAMS:
        raise FormatError(f"LMS signature has unknown LM-OTS type {ots_type}")
    _, p, _ = LMOTS_PARAMS[ots_type]
    if p > SLOT_Y:
        raise FormatError(f"LM-OTS type {ots_type} (p = {p}) does not fit Caliptra's slot")
    off = 8 + N + p * N
    if len(sig) < off + 4:
        raise FormatError("LMS signature truncated")
    (lms_type,) = struct.unpack_from(">I", sig, off)
    if lms_type not in LMS_HEIGHTS or LMS_HEIGHTS[lms_type] > SLOT_PATH:
        raise FormatError(f"LMS type {lms_type} does not fit Caliptra's slot")
    if len(sig) != sig_len(lms_type, ots_type):
        raise FormatError("LMS signature has the wrong length for its types")
    y = sig[8 + N : off]
    path = sig[off + 4 :]
    slot = sig[:8] + sig[8 : 8 + N] + y + bytes(SLOT_Y * N - len(y))
    slot += sig[off : off + 4] + path + bytes(SLOT_PATH * N - len(path))
    assert len(slot) == SLOT_LEN
    return slot


def slot_to_sig(slot: bytes) -> bytes:
    """Caliptra's 1620-byte slot -> the exact RFC 8554 signature."""
    if len(slot) != SLOT_LEN:
        raise FormatError(f"LMS slot must be {SLOT_LEN} bytes, got {len(slot)}")
    (ots_type,) = struct.unpack_from(">I", slot, 4)
    (lms_type,) = struct.unpack_from(">I", slot, SLOT_LMS_TYPE_OFF)
    if ots_type not in LMOTS_PARAMS or LMOTS_PARAMS[ots_type][1] > SLOT_Y:
        raise FormatError(f"LMS slot has unusable LM-OTS type {ots_type}")
    if lms_type not in LMS_HEIGHTS or LMS_HEIGHTS[lms_type] > SLOT_PATH:
        raise FormatError(f"LMS slot has unusable LMS type {lms_type}")
    _, p, _ = LMOTS_PARAMS[ots_type]
    h = LMS_HEIGHTS[lms_type]
    off = SLOT_LMS_TYPE_OFF
    return slot[: 8 + N + p * N] + slot[off : off + 4 + h * N]


def sig_q(sig: bytes) -> int:
    if len(sig) < 4:
        raise FormatError("LMS signature too short")
    return int(struct.unpack_from(">I", sig)[0])


# ---------------------------------------------------------------------------- sparse demo keys
_SPARSE_NODES: dict[bytes, list[bytes]] = {}


def sparse_nodes(key: LmsPrivateKey) -> list[bytes]:
    """The sparse tree of a demo key (only leaf 5 real), cached per process."""
    tag = hashlib.sha256(key.to_bytes()).digest()
    if tag not in _SPARSE_NODES:
        h = key.height
        zero = bytes(N)
        leaves = [
            leaf_node(key.I, h, q, key.ots_public(q) if q == SPARSE_Q else zero)
            for q in range(1 << h)
        ]
        _SPARSE_NODES[tag] = build_levels(key.I, h, leaves)
    return _SPARSE_NODES[tag]


def sparse_root(key: LmsPrivateKey) -> bytes:
    return sparse_nodes(key)[1]


def is_sparse_signature(pub: LmsPublicKey, sig: bytes) -> bool:
    """Whether a signature (exact or the 1620-byte slot) was made by a sparse demo key: at leaf
    q = 5, with the first node of its authentication path (leaf 4) the leaf of an all-zero
    LM-OTS public key, as only a sparse tree has. Public data only: no private key needed."""
    try:
        if len(sig) == SLOT_LEN and len(sig) != sig_len(pub.lms_type, pub.ots_type):
            sig = slot_to_sig(sig)
        if len(sig) != sig_len(pub.lms_type, pub.ots_type) or sig_q(sig) != SPARSE_Q:
            return False
    except (FormatError, KeyError):
        return False
    h = pub.height
    first = sig[len(sig) - h * N : len(sig) - (h - 1) * N]
    return first == leaf_node(pub.I, h, SPARSE_Q ^ 1, bytes(N))
