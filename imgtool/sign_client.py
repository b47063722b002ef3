"""The sign-helper side of the signing server: speaks the [sign_helper] protocol to
cptra-imgtool and HTTP to `cptra-imgtool serve`, and verifies every signature it relays.

ECC and LMS sign a 48-byte SHA-384 digest (form field ``digest``); ML-DSA-87 signs the RAW
message (form field ``message``, hex, at most :data:`imgtool.signing2.MAX_MESSAGE` bytes)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from .errors import ServerError
from .keys import ecc, lms
from .signing2 import MAX_MESSAGE, MLDSA_PUB_LEN, MLDSA_SIG_LEN

DIGEST_LEN = 48
ALGOS = ("ecc", "lms", "mldsa")


def _token(token_file: Path | None) -> str | None:
    if token_file is not None:
        try:
            return token_file.read_text().strip()
        except OSError as exc:
            raise ServerError(f"{token_file}: cannot read token: {exc.strerror}") from None
    return os.environ.get("CPTRA_IMGTOOL_TOKEN") or None


def _parse_pub(algo: str, data: bytes, source: str) -> object:
    if algo == "mldsa":
        if len(data) != MLDSA_PUB_LEN:
            raise ServerError(
                f"{source}: not an ML-DSA-87 public key ({MLDSA_PUB_LEN} raw bytes), got "
                f"{len(data)} bytes"
            )
        return bytes(data)
    if algo == "ecc":
        try:
            return ecc.load_public_bytes(data)
        except ValueError:
            raise ServerError(f"{source}: not a P-384 public key") from None
    return lms.LmsPublicKey.from_bytes(data, source)


def _same(algo: str, a: object, b: object) -> bool:
    if algo == "ecc":
        return bool(ecc.public_to_hw(a) == ecc.public_to_hw(b))  # type: ignore[arg-type]
    return bool(a == b)


def sign_remote(
    server: str,
    machine: str,
    key: str,
    algo: str,
    digest: bytes,
    token_file: Path | None = None,
    timeout: float = 60.0,
    verify_tls: bool | str = True,
    expect_pub: Path | None = None,
) -> bytes:
    """Fetch and check the server's public key, then ask it to sign; returns DER (ECC), the
    1620-byte slot (LMS) or the 4627-byte ML-DSA-87 signature, verified against that key.
    ``digest`` is the 48-byte SHA-384 digest for ECC and LMS, the RAW message for ML-DSA. With
    ``expect_pub`` the server's key must be that one (for ML-DSA the raw 2592-byte -pubk.bin),
    or no signature is requested (no LMS leaf is spent on a wrong key)."""
    if algo not in ALGOS:
        raise ServerError(f"algo must be one of {', '.join(ALGOS)}, got {algo!r}")
    if algo == "mldsa":
        if len(digest) > MAX_MESSAGE:
            raise ServerError(
                f"a {len(digest)}-byte message is larger than the {MAX_MESSAGE} bytes the "
                "server signs with ML-DSA"
            )
        fields = {"message": digest.hex()}
    elif len(digest) != DIGEST_LEN:
        raise ServerError(f"digest must be {DIGEST_LEN} bytes, got {len(digest)}")
    else:
        fields = {"digest": digest.hex()}
    expected = None
    if expect_pub is not None:
        try:
            expected = _parse_pub(algo, expect_pub.read_bytes(), str(expect_pub))
        except OSError as exc:
            raise ServerError(f"{expect_pub}: cannot read: {exc.strerror}") from None
    tok = _token(token_file)
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    base = server.rstrip("/")
    try:
        with httpx.Client(timeout=timeout, headers=headers, verify=verify_tls) as c:
            p = c.get(f"{base}/pubkey", params={"machine": machine, "key": key, "algo": algo})
            if p.status_code != 200:
                raise ServerError(
                    f"{base}: public key: HTTP {p.status_code} {p.text.strip()[:200]}"
                )
            pub = _parse_pub(algo, p.content, f"{base}/pubkey")
            if expected is not None and not _same(algo, pub, expected):
                raise ServerError(
                    f"{base}: the server's {key} {algo} public key for {machine} is not "
                    f"{expect_pub}; no signature requested"
                )
            r = c.post(
                f"{base}/sign/caliptra",
                data={"machine": machine, "key": key, "algo": algo, **fields},
            )
            if r.status_code != 200:
                raise ServerError(
                    f"{base}: signing failed: HTTP {r.status_code} {r.text.strip()[:200]}"
                )
            sig = r.content
    except httpx.HTTPError as exc:
        raise ServerError(f"{base}: {type(exc).__name__}: {exc}") from None
    if algo == "mldsa":
        from .keys import mldsa

        assert isinstance(pub, bytes)
        if len(sig) != MLDSA_SIG_LEN or not mldsa.verify(pub, digest, sig):
            raise ServerError(f"{base}: the server's ML-DSA-87 signature does not verify")
        return sig
    if algo == "ecc":
        if not ecc.verify_digest(pub, digest, sig):  # type: ignore[arg-type]
            raise ServerError(f"{base}: the server's ECC signature does not verify")
        return sig
    assert isinstance(pub, lms.LmsPublicKey)
    if len(sig) != lms.SLOT_LEN or not pub.verify(digest, sig):
        raise ServerError(f"{base}: the server's LMS signature does not verify")
    return sig
