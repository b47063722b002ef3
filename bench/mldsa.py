"""ML-DSA-87 sign and verify per operation: the library cptra-imgtool signs with against the
alternatives, interleaved (A, B, A, B, ... for --pairs rounds, at least 5), min / median printed.

Candidates (whatever is importable):
  - imgtool   : imgtool.keys.mldsa (the tool's route: dilithium-py deterministic signing with
                the expanded key, then a check with OpenSSL before the signature is returned)
  - dilithium : dilithium-py, pure Python, signs with the EXPANDED 4896-byte private key (the
                reference's key file), deterministic mode (zero randomness)
  - openssl   : `cryptography` (OpenSSL 3.5 ML-DSA), loads a private key from a 32-byte seed only
                (so it cannot sign with the reference's expanded key files); hedged signing
Each round signs and verifies the raw covered bytes of a 2.x manifest part (2700 bytes: the
vendor pubkey signature's message) and an IMC (10164 bytes). Prints numbers only.

Usage: .venv/bin/python bench/mldsa.py [--pairs 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

MSGS = {"vendor_pub (2700 B)": os.urandom(2700), "IMC (10164 B)": os.urandom(10164)}


def _openssl() -> tuple[Callable[[bytes], bytes], Callable[[bytes, bytes], bool]]:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import mldsa

    sk = mldsa.MLDSA87PrivateKey.from_seed_bytes(os.urandom(32))
    pk = sk.public_key()

    def verify(m: bytes, s: bytes) -> bool:
        try:
            pk.verify(s, m)
        except InvalidSignature:
            return False
        return True

    return sk.sign, verify


def _dilithium() -> tuple[Callable[[bytes], bytes], Callable[[bytes, bytes], bool]]:
    from dilithium_py.ml_dsa import ML_DSA_87

    pk, sk = ML_DSA_87.keygen()
    assert len(sk) == 4896 and len(pk) == 2592

    def sign(m: bytes) -> bytes:
        return bytes(ML_DSA_87.sign(sk, m, deterministic=True))

    return sign, lambda m, s: bool(ML_DSA_87.verify(pk, m, s))


def _imgtool() -> tuple[Callable[[bytes], bytes], Callable[[bytes, bytes], bool]] | None:
    """imgtool.keys.mldsa: its sign() includes the verification it does before returning."""
    import tempfile

    try:
        from imgtool.keys import mldsa
    except ImportError:
        return None
    d = tempfile.mkdtemp()
    priv, pub = mldsa.generate_keypair(os.path.join(d, "k"))
    sk = mldsa.MldsaPrivateKey.load(priv)
    pk = mldsa.MldsaPublicKey.load(pub).raw
    return (lambda m: sk.sign(m, pk)), (lambda m, s: mldsa.verify(pk, m, s))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="operations per timing")
    a = ap.parse_args()
    pairs = max(5, a.pairs)
    impls: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes, bytes], bool]]] = {}
    for name, make in (("imgtool", _imgtool), ("dilithium", _dilithium), ("openssl", _openssl)):
        try:
            got = make()
        except ImportError as exc:
            print(f"{name}: not importable ({exc})")
            continue
        if got is not None:
            impls[name] = got
    times: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(pairs):
        for name, (sign, verify) in impls.items():  # interleaved: every library each pair
            for label, msg in MSGS.items():
                t0 = time.perf_counter()
                for _ in range(a.rounds):
                    sig = sign(msg)
                t1 = time.perf_counter()
                for _ in range(a.rounds):
                    assert verify(msg, sig)
                t2 = time.perf_counter()
                assert not verify(msg + b"x", sig)
                times.setdefault((name, label, "sign"), []).append((t1 - t0) / a.rounds)
                times.setdefault((name, label, "verify"), []).append((t2 - t1) / a.rounds)
    print(f"ML-DSA-87, {pairs} interleaved pairs, {a.rounds} operations per timing (ms/op)")
    print(f"{'library':<10} {'message':<20} {'op':<7} {'min':>9} {'median':>9}")
    for (name, label, op), v in times.items():
        lo, mid = min(v) * 1e3, statistics.median(v) * 1e3
        print(f"{name:<10} {label:<20} {op:<7} {lo:>9.3f} {mid:>9.3f}")


if __name__ == "__main__":
    main()
