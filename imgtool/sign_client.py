"""The sign-helper side of the signing server: speaks the [sign_helper] protocol to
cptra-imgtool and HTTP to `cptra-imgtool serve`, and verifies every signature it relays."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from . import ecc, lms
from .errors import ServerError

DIGEST_LEN = 48


def _token(token_file: Path | None) -> str | None:
    if token_file is not None:
        try:
            return token_file.read_text().strip()
        except OSError as exc:
            raise ServerError(f"{token_file}: cannot read token: {exc.strerror}") from None
    return os.environ.get("CPTRA_IMGTOOL_TOKEN") or None


def sign_remote(
    server: str,
    machine: str,
    key: str,
    algo: str,
    digest: bytes,
    token_file: Path | None = None,
    timeout: float = 60.0,
    verify_tls: bool | str = True,
) -> bytes:
    """Ask the server to sign; returns DER (ECC) or the 1620-byte slot (LMS), verified."""
    if len(digest) != DIGEST_LEN:
        raise ServerError(f"digest must be {DIGEST_LEN} bytes, got {len(digest)}")
    tok = _token(token_file)
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    base = server.rstrip("/")
    try:
        with httpx.Client(timeout=timeout, headers=headers, verify=verify_tls) as c:
            r = c.post(
                f"{base}/sign/caliptra",
                data={"machine": machine, "key": key, "algo": algo, "digest": digest.hex()},
            )
            if r.status_code != 200:
                raise ServerError(
                    f"{base}: signing failed: HTTP {r.status_code} {r.text.strip()[:200]}"
                )
            sig = r.content
            p = c.get(f"{base}/pubkey", params={"machine": machine, "key": key, "algo": algo})
            if p.status_code != 200:
                raise ServerError(
                    f"{base}: public key: HTTP {p.status_code} {p.text.strip()[:200]}"
                )
            pub = p.content
    except httpx.HTTPError as exc:
        raise ServerError(f"{base}: {type(exc).__name__}: {exc}") from None
    if algo == "ecc":
        try:
            key_obj = ecc.load_public_bytes(pub)
        except ValueError:
            raise ServerError(f"{base}: /pubkey did not return a P-384 public key") from None
        if not ecc.verify_digest(key_obj, digest, sig):
            raise ServerError(f"{base}: the server's ECC signature does not verify")
        return sig
    lpub = lms.LmsPublicKey.from_bytes(pub, f"{base}/pubkey")
    if len(sig) != lms.SLOT_LEN or not lpub.verify(digest, sig):
        raise ServerError(f"{base}: the server's LMS signature does not verify")
    return sig
