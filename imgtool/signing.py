"""Signers behind one small protocol: local ECC/LMS keys and external sign helpers.

Every signer returns the signature in the form the manifest stores: ECC r||s in hardware
format (96 bytes), LMS the 1620-byte Caliptra slot. Helper output is always verified against
the expected public key before it is returned; an LMS helper signature's leaf is also logged in
the LMS state store (signer "helper"), and refused when the log shows it for another message.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ec

from .errors import LmsStateError, SigningError
from .keys import ecc, lms
from .keys import lms_store as store
from .keys.lms_signer import LmsSigner

log = logging.getLogger("imgtool")
DIGEST_LEN = 48


class Signer(Protocol):
    """What the manifest builder needs from any signer."""

    @property
    def sig_len(self) -> int: ...

    @property
    def description(self) -> str: ...

    def sign_digest(self, digest: bytes) -> bytes: ...


@dataclass
class LocalEccSigner:
    key_path: Path
    expect_pub: ec.EllipticCurvePublicKey | None = None
    sig_len: int = ecc.SIG_LEN

    @property
    def description(self) -> str:
        return str(self.key_path)

    def sign_digest(self, digest: bytes) -> bytes:
        key = ecc.load_private(self.key_path)
        if self.expect_pub is not None and ecc.public_to_hw(key.public_key()) != ecc.public_to_hw(
            self.expect_pub
        ):
            raise SigningError(
                f"{self.key_path}: private key does not match the configured public key"
            )
        return ecc.der_to_hw(ecc.sign_digest_der(key, digest))


def ecc_key_signer(key: Path | str, expect_pub: ec.EllipticCurvePublicKey | None) -> Signer:
    """The ECC signer for a configured private key: a PEM file, or a key on a PKCS#11 token
    when the value is an RFC 7512 URI (``pkcs11:...``)."""
    from .keys import pkcs11

    if pkcs11.is_uri(key):
        return pkcs11.Pkcs11EccSigner.from_uri(str(key), expect_pub)
    return LocalEccSigner(Path(key), expect_pub)


@dataclass
class LocalLmsSigner:
    key_path: Path
    pub_path: Path | None = None
    sig_len: int = 1620

    @property
    def description(self) -> str:
        return str(self.key_path)

    def sign_digest(self, digest: bytes) -> bytes:
        signer = LmsSigner.load(self.key_path, self.pub_path, signer="build")
        sig = signer.sign_digest(digest)
        if not signer.public_key().verify(digest, sig):
            raise SigningError(f"{self.key_path}: LMS signature does not verify (internal error)")
        return bytes(sig)


@dataclass
class HelperSigner:
    """Runs an external sign helper (spec/signing.md): stdin/stdout hex, or by file."""

    command: str
    algo: str  # "ecc" | "lms"
    field: str  # the config field, for messages
    by_file: bool
    timeout: float
    expect_pub: object  # ec.EllipticCurvePublicKey or lms.LmsPublicKey
    cwd: Path | None = None
    env: dict[str, str] | None = None  # added to the helper's environment (2.x: the algorithm)

    @property
    def sig_len(self) -> int:
        return ecc.SIG_LEN if self.algo == "ecc" else 1620

    @property
    def description(self) -> str:
        return f"sign helper {self.field}"

    def _argv(self) -> list[str]:
        try:
            argv = shlex.split(self.command)
        except ValueError as exc:
            raise SigningError(f"{self.field}: cannot split command line: {exc}") from None
        if not argv:
            raise SigningError(f"{self.field}: empty command")
        return argv

    def _run(self, argv: list[str], stdin: bytes | None) -> bytes:
        try:
            proc = subprocess.run(
                argv,
                # by file: an empty stdin (a helper that reads it must not wait on the build's)
                input=stdin if stdin is not None else b"",
                capture_output=True,
                timeout=self.timeout,
                cwd=self.cwd,
                env={**os.environ, **self.env} if self.env else None,
                check=False,
            )
        except FileNotFoundError:
            raise SigningError(f"{self.field}: command not found: {argv[0]}") from None
        except PermissionError:
            raise SigningError(f"{self.field}: command not executable: {argv[0]}") from None
        except subprocess.TimeoutExpired:
            raise SigningError(
                f"{self.field}: sign helper timed out after {self.timeout:g} s"
            ) from None
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            tail = f": {err[-1][:200]}" if err else ""
            raise SigningError(f"{self.field}: sign helper exited with {proc.returncode}{tail}")
        return proc.stdout

    def raw_signature(self, digest: bytes) -> bytes:
        """Run the helper; returns DER (ECC) or the raw slot (LMS), unverified."""
        argv = self._argv()
        if self.by_file:
            fd, tmp = tempfile.mkstemp(prefix="cptra-sign-", suffix=".bin")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(digest)
                self._run([*argv, "--input", tmp], None)
                try:
                    return Path(tmp).read_bytes()
                except OSError:
                    raise SigningError(
                        f"{self.field}: by-file sign helper removed or replaced its --input "
                        "file instead of writing the signature into it"
                    ) from None
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        out = self._run(argv, digest.hex().encode() + b"\n")
        lines = out.decode("ascii", "replace").strip().splitlines()
        if len(lines) != 1:
            raise SigningError(
                f"{self.field}: sign helper must print exactly one line of hex, got {len(lines)}"
            )
        try:
            return bytes.fromhex(lines[0].strip())
        except ValueError:
            raise SigningError(f"{self.field}: sign helper output is not hex") from None

    def sign_digest(self, digest: bytes) -> bytes:
        raw = self.raw_signature(digest)
        if self.algo == "ecc":
            try:
                hw = ecc.der_to_hw(raw)
            except ValueError:
                raise SigningError(
                    f"{self.field}: sign helper returned {len(raw)} bytes that are not a DER "
                    "ECDSA signature"
                ) from None
            assert isinstance(self.expect_pub, ec.EllipticCurvePublicKey)
            if not ecc.verify_digest(self.expect_pub, digest, raw):
                raise SigningError(
                    f"{self.field}: sign helper's ECC signature does not verify with the "
                    "expected public key (wrong key or wrong digest)"
                )
            return hw
        if len(raw) != lms.SLOT_LEN:
            raise SigningError(
                f"{self.field}: sign helper returned {len(raw)} bytes, expected a "
                f"{lms.SLOT_LEN}-byte LMS signature"
            )
        assert isinstance(self.expect_pub, lms.LmsPublicKey)
        if not self.expect_pub.verify(digest, raw):
            raise SigningError(
                f"{self.field}: sign helper's LMS signature does not verify with the expected "
                "public key (wrong key or wrong digest)"
            )
        self._log_lms(digest, raw, self.expect_pub)
        return raw

    def _log_lms(self, digest: bytes, slot: bytes, pub: lms.LmsPublicKey) -> None:
        """Log the helper's leaf in the state store under the helper key's identity (signer
        "helper"); a leaf the log shows for another message is refused, so a helper that
        reuses leaves never gets its signature into an image. Sparse demo keys (every
        signature at q = 5 by design) are not logged."""
        q = lms.sig_q(slot)
        if lms.is_sparse_signature(pub, slot):
            log.warning(
                "%s: the sign helper signs with a sparse demo LMS key (every signature reuses "
                "leaf %d; anyone can forge with it); never use it for a product",
                self.field,
                q,
            )
            return
        try:
            store.open_store().record_helper(
                store.KeyIdentity.of(pub), q, hashlib.sha256(digest).hexdigest()
            )
        except LmsStateError as exc:
            raise SigningError(f"{self.field}: {exc}") from None
