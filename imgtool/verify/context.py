"""What every part of a verification shares: the report, the policy, the anchors, the keys used,
and the signature primitives (ECDSA with `cryptography`, LMS with :mod:`imgtool.keys.lms`; never by
re-signing and comparing). Results of the primitives are memoised: they are pure functions of
(key, digest, signature), and a file is often checked against the same signatures many times.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field
from typing import Any

from ..keys import ecc, lms
from .anchors import Anchors, Key, Policy
from .report import Report, Status


def is_zero(data: bytes | memoryview) -> bool:
    """All zero bytes (at C speed: `any()` walks a large memoryview byte by byte)."""
    b = data if isinstance(data, bytes) else bytes(data)
    return b.count(0) == len(b)


@functools.lru_cache(maxsize=4096)
def ecc_ok(pub_hw: bytes, digest: bytes, sig_hw: bytes) -> bool:
    if not any(sig_hw[:48]) or not any(sig_hw[48:]):
        return False  # r or s zero: never valid (Caliptra refuses it before verifying)
    try:
        key = ecc.hw_to_public(pub_hw)
    except ValueError:
        return False
    return ecc.verify_digest_hw(key, digest, sig_hw)


@functools.lru_cache(maxsize=4096)
def lms_ok(pub48: bytes, digest: bytes, slot: bytes) -> bool:
    try:
        key = lms.LmsPublicKey.from_bytes(pub48)
    except Exception:  # noqa: BLE001 - a malformed key just fails the check
        return False
    try:
        if not key.verify(digest, slot):
            return False
        # the parts of Caliptra's fixed slot that a smaller tree or W8 leaves unused are zero
        return bool(len(slot) != lms.SLOT_LEN or lms.sig_to_slot(lms.slot_to_sig(slot)) == slot)
    except Exception:  # noqa: BLE001 - a malformed signature just fails the check
        return False


@functools.lru_cache(maxsize=256)
def mldsa_ok(pub: bytes, message: bytes, slot: bytes) -> bool:
    """Caliptra 2.x ML-DSA-87: pure ML-DSA, empty context, over the raw covered bytes (not a
    digest). The slot is the 4627-byte FIPS 204 signature plus one reserved zero byte.
    Verified with `cryptography` (OpenSSL), which loads raw public keys."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import mldsa

    if len(pub) != MLDSA_PUB_LEN or len(slot) not in (MLDSA_SIG_LEN, MLDSA_SIG_LEN + 1):
        return False
    if len(slot) > MLDSA_SIG_LEN and any(slot[MLDSA_SIG_LEN:]):
        return False
    try:
        mldsa.MLDSA87PublicKey.from_public_bytes(pub).verify(slot[:MLDSA_SIG_LEN], message)
    except (InvalidSignature, ValueError):
        return False
    return True


MLDSA_PUB_LEN = 2592
MLDSA_SIG_LEN = 4627
CALIPTRA_LMS_TYPES = (lms.LMS_SHA256_M24_H15, lms.LMOTS_SHA256_N24_W4)


def _lms_type_problem(pub48: bytes, slot: bytes) -> str:
    """Caliptra 1.x verifies only LMS_SHA256_M24_H15 with LMOTS_SHA256_N24_W4 (caliptra-sw
    ``ImageLmsSignature = LmsSignature<6, 51, 15>``; the driver rejects other heights and p)."""
    key_types = struct.unpack_from(">II", pub48)
    sig_types = (
        struct.unpack_from(">I", slot, lms.SLOT_LMS_TYPE_OFF)[0],
        struct.unpack_from(">I", slot, 4)[0],
    )
    for what, types in (("key", key_types), ("signature", sig_types)):
        if tuple(types) != CALIPTRA_LMS_TYPES:
            return (
                f"LMS {what} of type {types[0]}/{types[1]}: Caliptra 1.x verifies only "
                f"LMS_SHA256_M24_H15 ({CALIPTRA_LMS_TYPES[0]}) / LMOTS_SHA256_N24_W4 "
                f"({CALIPTRA_LMS_TYPES[1]})"
            )
    return ""


def sig_ok(algo: str, pub: bytes, digest: bytes, sig: bytes) -> bool:
    """``digest``: SHA-384 of the covered bytes for ECC and LMS, the covered bytes themselves
    for ML-DSA."""
    if algo == "mldsa":
        return mldsa_ok(pub, digest, sig)
    return ecc_ok(pub, digest, sig) if algo == "ecc" else lms_ok(pub, digest, sig)


def lms_q(sig: bytes, little: bool = False) -> int:
    return int(struct.unpack_from("<I" if little else ">I", sig)[0])


@dataclass
class Ctx:
    r: Report
    policy: Policy
    anchors: Anchors
    used: list[tuple[str, Key]] = field(default_factory=list)  # (check id, key) that passed
    memo: dict[str, Any] = field(default_factory=dict)  # per-verification results (the plan)
    # Caliptra 2.x: the Caliptra runtime authorizes the SoC manifest whatever the 1.x secure-boot
    # strap says, and the PQC type (not the 1.x lms_verify fuse) decides which PQC signature is
    # checked, so neither fuse switches a 2.x signature check off
    gen2: bool = False

    @property
    def check_signatures(self) -> bool:
        """Signatures mean something only against an anchor."""
        return self.anchors.any

    def signature(
        self,
        cid: str,
        what: str,
        algo: str,
        key: Key | None,
        digest: bytes,
        sig: bytes,
        *,
        le_q: bool = False,
        rom: bool = False,
        anchor_requires: bool = False,
        lms_in_use: bool = True,
    ) -> bool | None:
        """Check one signature slot the device would check, under the policy. True / False
        when checked, None when not.

        ``rom``: checked by the Caliptra ROM whatever the SoC's secure boot setting (the
        firmware bundle). ``anchor_requires``: an anchor (the config) fills this slot, so it
        must verify whatever the device checks. ``lms_in_use``: the file uses LMS at all (an
        ECC-only manifest under an unknown LMS fuse is not failed for its empty LMS slots).
        A slot the device does not check is reported as skip, with whether it would verify."""
        r = self.r
        if not self.check_signatures:
            r.skip(cid, what, "no trust anchor")
            return None
        empty = not any(sig)
        stored = lms.sig_q(sig) if algo == "lms" and not empty else None
        if algo == "lms" and le_q and not empty:
            sig = sig[:4][::-1] + sig[4:]  # ASPEED stores this slot's q little-endian
            stored = lms_q(sig)
        qtxt = (
            f"q = {stored}" + (" (stored little-endian)" if le_q else "")
            if stored is not None
            else ""
        )
        device = True  # does the device check it?
        why_not = ""
        unknown = algo == "lms" and self.policy.lms_verify is None and not self.gen2
        if self.gen2:
            pass
        elif not self.policy.secure_boot and not rom:
            device, why_not = False, "secure boot off"
        elif algo == "lms" and self.policy.lms_verify is False:
            device, why_not = False, "lms_verify = false: not checked by the device"
        if not device and not anchor_requires:
            if empty:
                r.skip(cid, what, f"empty ({why_not})")
                return None
            if key is None or not any(key.value):
                r.skip(cid, what, f"{why_not}; no key to check it with")
                return None
            good = sig_ok(algo, key.value, digest, sig)
            r.skip(
                cid,
                what,
                f"{why_not}; it {'verifies' if good else 'does NOT verify'}"
                + (f" ({qtxt})" if qtxt else ""),
                key.describe(),
            )
            return None
        if empty:
            if unknown and not lms_in_use and not anchor_requires:
                r.skip(cid, what, "empty: an ECC-only file (the LMS verify fuse is unknown)")
                return None
            why = "empty: the device rejects an unsigned slot"
            if anchor_requires:
                why = "empty, but the config signs this slot"
            elif unknown:
                why = "empty: a part that verifies LMS rejects it (the LMS verify fuse is unknown)"
            r.add(cid, False, what, why)
            return False
        if key is None:
            r.add(cid, False, what, "no key to verify it with", "")
            return False
        if not any(key.value):
            r.add(cid, False, what, "its key slot is empty", key.describe())
            return False
        if algo == "lms" and device:
            bad = _lms_type_problem(key.value, sig)
            if bad:
                r.add(cid, False, what, bad, key.describe())
                return False
        good = sig_ok(algo, key.value, digest, sig)
        r.add(cid, good, what, qtxt if good else f"does not verify {qtxt}".strip(), key.describe())
        if good:
            self.used.append((cid, key))
        return good

    def unused_slot(self, cid: str, what: str, sig: bytes, why: str) -> None:
        """A slot the format leaves empty in this configuration: it must be all zero."""
        self.r.add(
            cid, not any(sig), what, f"empty ({why})" if not any(sig) else f"not empty ({why})"
        )


def status_of(ok: bool) -> Status:
    return Status.OK if ok else Status.FAIL
