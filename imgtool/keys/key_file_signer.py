"""`cptra-imgtool sign-helper --key-file K`: the [sign_helper] protocol (spec/signing.md) backed
by a local private key file, so that the reference sign-helper configs work without the signing
server. Returns what a helper returns: DER ECDSA (ECC) or the raw 1620-byte slot (LMS), each
verified against the key's public key before it leaves; LMS keys keep their leaf state as in
every other signer (the state store logs the signature as ``helper``)."""

from __future__ import annotations

from pathlib import Path

from ..errors import KeyFileError, SigningError
from . import ecc

DIGEST_LEN = 48
MAX_INPUT = 4096  # a by-file digest is 48 bytes; never read a large file whole


def read_digest_file(path: Path) -> bytes:
    """The raw digest of the by-file protocol (exactly 48 bytes)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_INPUT + 1)
    except OSError as exc:
        raise SigningError(f"{path}: --input: {exc.strerror}") from None
    if len(data) != DIGEST_LEN:
        more = "more than " if len(data) > MAX_INPUT else ""
        raise SigningError(
            f"{path}: --input holds {more}{min(len(data), MAX_INPUT)} bytes, expected the "
            f"{DIGEST_LEN}-byte SHA-384 digest"
        )
    return data


def parse_digest_line(line: str) -> bytes:
    """The hex digest line of the stdin protocol (exactly 48 bytes)."""
    text = line.strip()
    try:
        digest = bytes.fromhex(text)
    except ValueError:
        raise SigningError("stdin: expected the digest as one line of hex") from None
    if len(digest) != DIGEST_LEN:
        raise SigningError(
            f"stdin: a {len(digest)}-byte digest, expected the {DIGEST_LEN}-byte SHA-384 digest"
        )
    return digest


def sign(key_file: Path, algo: str, digest: bytes, pub: Path | None = None) -> bytes:
    """Sign with a local key file. With ``pub`` the key must be that public key's (checked
    before anything is signed, so no LMS leaf goes to a wrong key)."""
    if len(digest) != DIGEST_LEN:
        raise SigningError(f"digest must be {DIGEST_LEN} bytes, got {len(digest)}")
    if algo == "ecc":
        key = ecc.load_private(key_file)
        if pub is not None and ecc.public_to_hw(ecc.load_public(pub)) != ecc.public_to_hw(
            key.public_key()
        ):
            raise KeyFileError(f"{key_file}: private key does not match --pubkey {pub}")
        der = ecc.sign_digest_der(key, digest)
        if not ecc.verify_digest(key.public_key(), digest, der):
            raise SigningError(f"{key_file}: ECC signature does not verify (internal error)")
        return der
    if algo != "lms":
        raise SigningError(f"--algo {algo}: must be ecc or lms")
    from .lms_signer import LmsSigner

    signer = LmsSigner.load(key_file, pub, signer="helper")
    slot = signer.sign_digest(digest)  # verified against the public key inside
    return bytes(slot)
