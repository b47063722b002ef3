"""Caliptra 2.x signing: each slot's ECC and PQC (LMS or ML-DSA-87) signature from a local key,
an external sign helper, or the signing server (``cptra-imgtool serve``).

ECDSA P-384 and LMS sign the SHA-384 digest of the covered bytes (as in 1.x); ML-DSA-87 signs
the RAW covered bytes (pure ML-DSA, empty context), so its signers take the message, not a
digest: :meth:`MldsaSigner.sign_message`.  Where a signature comes from, in this order: the
sign-helper command for that algorithm, else the server, else the local private key; without any
of them the slot stays zero (``b""``).  Whatever the source, :func:`sign2` verifies every
signature against the key set's configured public key before returning it; a helper or server
that returns a wrong or foreign signature is a :class:`SigningError` naming the slot.  LMS keeps
real leaf state: a local key through the state store (signer ``build``), a helper's or the
server's signature logged in the store under the key's identity (signer ``helper``), a leaf the
log shows for another message refused.

The ML-DSA sign-helper protocol (README "ML-DSA-87 sign helpers"): stdin mode writes the raw
message as one line of hex and expects the 4627-byte signature as one line of hex; file mode
appends ``--input PATH``, PATH holding the raw message, overwritten by the helper with the raw
4627-byte signature.  The helper is told the algorithm by its command line (the config field
names it) and by ``CPTRA_IMGTOOL_SIGN_ALGO`` / ``CPTRA_IMGTOOL_SIGN_INPUT`` in its environment.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ImgtoolError, SigningError
from .keys import mldsa

if TYPE_CHECKING:
    from .signing import HelperSigner

log = logging.getLogger("imgtool")

# dilithium-py is not thread-safe (module-level SHAKE state): keys.mldsa.LOCK guards every call
# into it; callers that make several calls in a row may hold it around them (re-entrant).
DILITHIUM_LOCK = mldsa.LOCK

MLDSA_SIG_LEN = 4627
MLDSA_PUB_LEN = 2592
# the largest message an ML-DSA helper or the server is given: a 2.x manifest's covered ranges
# are at most 10164 bytes (the IMC); 64 KiB leaves room and still bounds every reader
MAX_MESSAGE = 64 * 1024
ALGOS2 = ("ecc", "lms", "mldsa")
SECTIONS2 = {
    "vendor_fw_key_config": "vnd-fw",
    "vendor_man_key_config": "vnd-man",
    "owner_fw_key_config": "own-fw",
    "owner_man_key_config": "own-man",
}


class MldsaSigner(Protocol):
    """What a 2.x ML-DSA slot needs: a signature over the raw message."""

    @property
    def description(self) -> str: ...

    def sign_message(self, msg: bytes) -> bytes: ...


@dataclass(frozen=True)
class ServerRef:
    """One key of the signing server: ``POST {url}/sign/caliptra`` (machine, key, algo)."""

    url: str
    machine: str
    key: str  # vnd-fw | vnd-man | own-fw | own-man
    token_file: Path | None = None  # else CPTRA_IMGTOOL_TOKEN
    timeout: float = 60.0
    verify_tls: bool | str = True


@dataclass(frozen=True)
class KeyHelpers:
    """Stand-ins for one 2.x key set's private keys: a sign-helper command per algorithm and/or
    the signing server (for every algorithm without a command).  ``section`` names the key
    section in messages (``owner_fw_key_config``)."""

    ecc: str | None = None
    lms: str | None = None
    mldsa: str | None = None
    by_file: bool = False
    timeout: float = 60.0
    server: ServerRef | None = None
    section: str = ""

    def command(self, algo: str) -> str | None:
        value: str | None = getattr(self, algo)
        return value

    def field(self, algo: str) -> str:
        """The config field a helper command comes from (for messages)."""
        role = self.section.removesuffix("_key_config")
        if "_" in role:
            party, kind = role.split("_", 1)
            return f"sign_helper.{party}_{algo}_{kind}_key_sign_helper"
        return f"sign_helper.{algo}"


HELPER_FIELDS2 = tuple(
    f"{party}_{algo}_{role}_key_sign_helper"
    for party in ("owner", "vendor")
    for algo in ALGOS2
    for role in ("fw", "man")
)


def helpers_for(
    sign_helper: Mapping[str, object], section: str, server: ServerRef | None = None
) -> KeyHelpers | None:
    """The stand-ins of key section ``section`` (``owner_man_key_config``) from a validated
    ``[sign_helper]`` table: ``<party>_<algo>_<role>_key_sign_helper`` command lines (the
    reference's owner ECC/LMS fields, plus ``owner_mldsa_*`` and, for 2.x, ``vendor_*``),
    ``by_file`` and ``timeout``; None when there is no command for the section and no server."""
    role = section.removesuffix("_key_config")
    party, kind = role.split("_", 1)
    cmds: dict[str, str] = {}
    for algo in ALGOS2:
        value = sign_helper.get(f"{party}_{algo}_{kind}_key_sign_helper")
        if isinstance(value, str) and value.strip():
            cmds[algo] = value
    if not cmds and server is None:
        return None
    timeout = sign_helper.get("timeout", 60.0)
    return KeyHelpers(
        ecc=cmds.get("ecc"),
        lms=cmds.get("lms"),
        mldsa=cmds.get("mldsa"),
        by_file=bool(sign_helper.get("by_file", False)),
        timeout=float(timeout) if isinstance(timeout, int | float) else 60.0,
        server=server,
        section=section,
    )


# ----------------------------------------------------------------------------- ML-DSA signers
@dataclass
class LocalMldsaSigner:
    """A local expanded ML-DSA-87 private key file (deterministic signatures)."""

    key_path: Path
    pub: bytes | None = None  # the configured public key (verified against before returning)

    @property
    def description(self) -> str:
        return str(self.key_path)

    def sign_message(self, msg: bytes) -> bytes:
        from .keys import mldsa

        key = mldsa.MldsaPrivateKey.load(self.key_path)
        with DILITHIUM_LOCK:
            return key.sign(msg, self.pub)


@dataclass
class HelperMldsaSigner:
    """An external ML-DSA sign helper (raw message in, 4627-byte signature out)."""

    command: str
    field: str
    by_file: bool
    timeout: float
    pub: bytes
    cwd: Path | None = None

    @property
    def description(self) -> str:
        return f"sign helper {self.field}"

    def sign_message(self, msg: bytes) -> bytes:
        from .keys import mldsa
        from .signing import HelperSigner

        if len(msg) > MAX_MESSAGE:
            raise SigningError(
                f"{self.field}: a {len(msg)}-byte message is larger than the {MAX_MESSAGE} bytes "
                "an ML-DSA sign helper is given"
            )
        raw = HelperSigner(
            self.command,
            "mldsa",
            self.field,
            self.by_file,
            self.timeout,
            None,
            self.cwd,
            env=helper_env("mldsa"),
        ).raw_signature(msg)
        if len(raw) != MLDSA_SIG_LEN:
            raise SigningError(
                f"{self.field}: sign helper returned {len(raw)} bytes, expected a "
                f"{MLDSA_SIG_LEN}-byte ML-DSA-87 signature"
            )
        if not mldsa.verify(self.pub, msg, raw):
            raise SigningError(
                f"{self.field}: sign helper's ML-DSA-87 signature does not verify with the "
                "expected public key (wrong key or wrong message)"
            )
        return raw


def helper_env(algo: str) -> dict[str, str]:
    """What a 2.x sign helper is told in its environment: the algorithm and whether its input
    is a digest (ECC, LMS: 48-byte SHA-384) or the raw message (ML-DSA)."""
    return {
        "CPTRA_IMGTOOL_SIGN_ALGO": algo,
        "CPTRA_IMGTOOL_SIGN_INPUT": "message" if algo == "mldsa" else "digest",
    }


# ----------------------------------------------------------------------------- the server
def _remote(ref: ServerRef, algo: str, data: bytes, expect_pub: Path) -> bytes:
    """One signature from the server (DER for ECC, slot for LMS, 4627 bytes for ML-DSA),
    verified there by sign_remote; the server's key must be ``expect_pub``'s."""
    from .errors import ServerError
    from .sign_client import sign_remote

    try:
        return sign_remote(
            ref.url,
            ref.machine,
            ref.key,
            algo,
            data,
            token_file=ref.token_file,
            timeout=ref.timeout,
            verify_tls=ref.verify_tls,
            expect_pub=expect_pub,
        )
    except ServerError as exc:
        raise SigningError(f"signing server: {exc}") from None


def _log_lms(field: str, digest: bytes, slot: bytes, pub: Any) -> None:
    """An LMS signature made elsewhere (helper, server) goes into the state store's log under
    the key's identity (signer "helper"); a leaf logged for another message is refused."""
    from .signing import HelperSigner

    HelperSigner("", "lms", field, False, 1.0, pub)._log_lms(digest, slot, pub)


# ----------------------------------------------------------------------------- sign2
def sign2(
    ks: Any,
    pqc: str,
    msg: bytes,
    helper: KeyHelpers | None = None,
    *,
    slot: str = "",
) -> tuple[bytes, bytes]:
    """(ECC hw signature, PQC signature) over ``msg`` with key set ``ks`` (config2.KeySet2);
    ``b""`` for a part that has no private key, helper or server (the slot stays zero).
    ``pqc`` is "lms" or "mldsa"; ``slot`` (e.g. "own_imc_sig") prefixes every error.  Every
    signature is verified against ``ks``'s public keys before it is returned."""
    if pqc not in ("lms", "mldsa"):
        raise SigningError(f"PQC algorithm must be lms or mldsa, got {pqc!r}")
    try:
        ecc_sig = _sign_ecc(ks, msg, helper)
        pqc_sig = _sign_mldsa(ks, msg, helper) if pqc == "mldsa" else _sign_lms(ks, msg, helper)
    except ImgtoolError as exc:
        if slot:
            exc.args = (f"{slot}: {exc}",)  # keeps the type (LmsStateError stays one)
        raise
    return ecc_sig, pqc_sig


def _digest_helper(helper: KeyHelpers, cmd: str, algo: str, pub: object) -> HelperSigner:
    """The signing.HelperSigner for an ECC or LMS slot (it gets the SHA-384 digest)."""
    from .signing import HelperSigner

    return HelperSigner(
        cmd, algo, helper.field(algo), helper.by_file, helper.timeout, pub, env=helper_env(algo)
    )


def _sign_ecc(ks: Any, msg: bytes, helper: KeyHelpers | None) -> bytes:
    from .keys import ecc
    from .signing import ecc_key_signer

    pub = ecc.load_public(ks.ecc_pub)
    digest = hashlib.sha384(msg).digest()
    cmd = helper.command("ecc") if helper is not None else None
    if cmd is not None and helper is not None:
        hw = _digest_helper(helper, cmd, "ecc", pub).sign_digest(digest)
        source = helper.field("ecc")
    elif helper is not None and helper.server is not None:
        der = _remote(helper.server, "ecc", digest, ks.ecc_pub)
        hw = ecc.der_to_hw(der)
        source = f"signing server {helper.server.url}"
    elif ks.ecc_priv is not None:  # a PEM file, or a key on a PKCS#11 token (config.HsmKey)
        key = ks.ecc_priv if isinstance(ks.ecc_priv, Path) else str(ks.ecc_priv)
        hw = ecc_key_signer(key, pub).sign_digest(digest)
        source = str(ks.ecc_priv)
    else:
        return b""
    if not ecc.verify_digest_hw(pub, digest, hw):
        raise SigningError(
            f"{source}: ECC signature does not verify with {ks.ecc_pub} (wrong key or wrong "
            "message)"
        )
    return bytes(hw)


def _sign_lms(ks: Any, msg: bytes, helper: KeyHelpers | None) -> bytes:
    from .keys import lms
    from .signing import LocalLmsSigner

    digest = hashlib.sha384(msg).digest()
    cmd = helper.command("lms") if helper is not None else None
    pub = lms.load_public(ks.lms_pub)
    if cmd is not None and helper is not None:
        # verified there, and its leaf logged in the state store
        sig = _digest_helper(helper, cmd, "lms", pub).sign_digest(digest)
        source = helper.field("lms")
    elif helper is not None and helper.server is not None:
        sig = _remote(helper.server, "lms", digest, ks.lms_pub)
        source = f"signing server {helper.server.url}"
        if len(sig) == lms.SLOT_LEN and pub.verify(digest, sig):
            _log_lms(source, digest, sig, pub)
    elif ks.lms_priv is not None:
        sig = LocalLmsSigner(ks.lms_priv, ks.lms_pub).sign_digest(digest)
        source = str(ks.lms_priv)
    else:
        return b""
    if len(sig) != lms.SLOT_LEN or not pub.verify(digest, sig):
        raise SigningError(
            f"{source}: LMS signature does not verify with {ks.lms_pub} (wrong key or wrong "
            "message)"
        )
    return bytes(sig)


def _sign_mldsa(ks: Any, msg: bytes, helper: KeyHelpers | None) -> bytes:
    from .keys import mldsa

    pub = mldsa.MldsaPublicKey.load(ks.mldsa_pub).raw
    cmd = helper.command("mldsa") if helper is not None else None
    signer: MldsaSigner
    if cmd is not None and helper is not None:
        signer = HelperMldsaSigner(cmd, helper.field("mldsa"), helper.by_file, helper.timeout, pub)
        sig = signer.sign_message(msg)
        source = signer.description
    elif helper is not None and helper.server is not None:
        sig = _remote(helper.server, "mldsa", msg, ks.mldsa_pub)
        source = f"signing server {helper.server.url}"
    elif ks.mldsa_priv is not None:
        signer = LocalMldsaSigner(ks.mldsa_priv, pub)
        sig = signer.sign_message(msg)
        source = signer.description
    else:
        return b""
    if len(sig) != MLDSA_SIG_LEN or not mldsa.verify(pub, msg, sig):
        raise SigningError(
            f"{source}: ML-DSA-87 signature does not verify with {ks.mldsa_pub} (wrong key or "
            "wrong message)"
        )
    return bytes(sig)


# ----------------------------------------------------------------------------- helper side
def read_message_file(path: Path) -> bytes:
    """The raw message of the by-file ML-DSA protocol (at most MAX_MESSAGE bytes)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_MESSAGE + 1)
    except OSError as exc:
        raise SigningError(f"{path}: --input: {exc.strerror}") from None
    if len(data) > MAX_MESSAGE:
        raise SigningError(
            f"{path}: --input holds more than {MAX_MESSAGE} bytes, the largest message an "
            "ML-DSA sign helper is given"
        )
    return data


def parse_message_line(line: str) -> bytes:
    """The hex message line of the stdin ML-DSA protocol (at most MAX_MESSAGE bytes)."""
    text = line.strip()
    if len(text) > 2 * MAX_MESSAGE:
        raise SigningError(
            f"stdin: a message of more than {MAX_MESSAGE} bytes, the largest an ML-DSA sign "
            "helper is given"
        )
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise SigningError("stdin: expected the message as one line of hex") from None
