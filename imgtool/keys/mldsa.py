"""ML-DSA-87 key files and signing (FIPS 204), as Caliptra 2.x manifests use them.

Key files are raw FIPS 204 encodings without a header, as the reference tool reads them: public
key 2592 bytes, private key 4896 bytes in the EXPANDED form (rho, K, tr, s1, s2, t0).  A file of
any other size is a :class:`KeyFileError` naming the file.

Signing is pure ML-DSA over the RAW message (empty context, no pre-hash).  Library: dilithium-py
(pure Python, the only maintained PyPI route that signs with the expanded private key; OpenSSL via
``cryptography`` loads private keys from a 32-byte seed only).  Signatures are DETERMINISTIC by
default (FIPS 204 deterministic variant: rnd = 32 zero bytes), so the same key and message give the
same signature and builds are reproducible; ``hedged=True`` uses fresh randomness.  Every signature
is verified before it is returned, with OpenSSL (``cryptography``) when available, an independent
implementation, else with dilithium-py.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import KeyFileError, SigningError

PUB_LEN = 2592
PRIV_LEN = 4896
SIG_LEN = 4627
SEED_LEN = 32

# dilithium-py is not thread-safe (without its optional xoflib it hashes through shared module
# state: two threads signing at once made signatures that did not verify).  Every call into it
# in this process holds this lock; re-entrant, so callers may hold it around several calls.
LOCK = threading.RLock()


def _impl() -> Any:
    try:
        from dilithium_py.ml_dsa import ML_DSA_87
    except ImportError as e:  # pragma: no cover - dependency missing
        raise SigningError(
            "ML-DSA-87 needs the dilithium-py package (pip install dilithium-py)"
        ) from e
    return ML_DSA_87


def verify(pub: bytes, msg: bytes, sig: bytes) -> bool:
    """Pure ML-DSA-87 verification (empty context) of ``sig`` over the raw ``msg``."""
    if len(pub) != PUB_LEN or len(sig) != SIG_LEN:
        return False
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric import mldsa

        key = mldsa.MLDSA87PublicKey.from_public_bytes(pub)
    except (ImportError, AttributeError, ValueError):
        with LOCK:
            return bool(_impl().verify(pub, msg, sig))
    try:
        key.verify(sig, msg)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class MldsaPublicKey:
    raw: bytes
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> MldsaPublicKey:
        p = Path(path)
        data = _read(p)
        if len(data) != PUB_LEN:
            raise KeyFileError(
                f"{p}: ML-DSA-87 public key must be {PUB_LEN} raw bytes, got {len(data)}"
            )
        return cls(data, p)


@dataclass(frozen=True)
class MldsaPrivateKey:
    raw: bytes
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> MldsaPrivateKey:
        p = Path(path)
        data = _read(p)
        if len(data) != PRIV_LEN:
            raise KeyFileError(
                f"{p}: ML-DSA-87 private key must be {PRIV_LEN} raw bytes (expanded FIPS 204 "
                f"form), got {len(data)}"
            )
        return cls(data, p)

    def sign(self, msg: bytes, pub: bytes | None = None, hedged: bool = False) -> bytes:
        """Sign the raw ``msg``; verified against ``pub`` (given, or derived) before returning."""
        with LOCK:
            sig = bytes(_impl().sign(self.raw, msg, deterministic=not hedged))
            check = pub if pub is not None else public_from_private(self.raw)
        if len(sig) != SIG_LEN or not verify(check, msg, sig):
            where = f"{self.path}: " if self.path else ""
            raise SigningError(f"{where}ML-DSA-87 signature did not verify against the public key")
        return sig


def public_from_private(priv: bytes) -> bytes:
    """The public key is not stored in the expanded private key (t1 is missing); recompute it."""
    # sk = rho (32) || K (32) || tr (64) || s1 || s2 || t0.  t = A s1 + s2; pk = rho || t1.
    m = _impl()
    with LOCK:
        rho, _k, _tr, s1, s2, _t0s = m._unpack_sk(priv)
        a_hat = m._expand_matrix_from_seed(rho)
        t = (a_hat @ s1.to_ntt()).from_ntt() + s2
        t1, _t0 = t.power_2_round(m.d)
        pk = bytes(m._pack_pk(rho, t1))
        tr_ok = m._h(pk, 64) == _tr
    if not tr_ok:
        raise KeyFileError("ML-DSA-87 private key is inconsistent (tr does not match)")
    return pk


def _read(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except OSError as e:
        raise KeyFileError(f"{p}: cannot read key file ({e.strerror})") from e


def generate_keypair(prefix: str | Path, seed: bytes | None = None) -> tuple[Path, Path]:
    """Write PREFIX-prvk.bin (4896 bytes, mode 0600) and PREFIX-pubk.bin (2592 bytes), raw.

    Never overwrites.  ``seed`` (32 bytes) makes the key reproducible (FIPS 204 KeyGen(xi))."""
    from ..fileio import atomic_write

    priv_path = Path(f"{prefix}-prvk.bin")
    pub_path = Path(f"{prefix}-pubk.bin")
    for p in (priv_path, pub_path):
        if p.exists():
            raise KeyFileError(f"{p}: already exists, refusing to overwrite")
    xi = seed if seed is not None else os.urandom(SEED_LEN)
    if len(xi) != SEED_LEN:
        raise KeyFileError(f"ML-DSA-87 seed must be {SEED_LEN} bytes")
    with LOCK:
        pub, priv = _impl().key_derive(xi)
    if len(pub) != PUB_LEN or len(priv) != PRIV_LEN:
        raise SigningError("ML-DSA-87 key generation produced wrong sizes")
    atomic_write(priv_path, bytes(priv), mode=0o600)
    atomic_write(pub_path, bytes(pub), mode=0o644)
    return priv_path, pub_path
