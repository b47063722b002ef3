"""Owner re-signing of a vendor-signed Caliptra 1.x firmware bundle (``owner-sign-bundle``).

spec/trust.md: the vendor signatures of a 1.x bundle cover its header up to ``owner_data``; the
owner public keys live in the preamble, where no vendor signature covers them; the owner
signatures cover the whole header. So an owner replaces the owner ECC and LMS public keys, sets
``owner_data`` (not_before, not_after, epoch) and signs the header with its owner FW keys, and
the vendor signatures stay valid.

What is refused: anything :func:`imgtool.formats.bundle1.parse_bundle` refuses, and a bundle whose
vendor part would not boot as it is (checked by :mod:`imgtool.verify` against the bundle's own
vendor key block, with the LMS verify fuse on: the structure, the digests, both vendor
signatures; only the old owner signatures may fail). After signing, the vendor part must be
byte for byte what it was, and the result must pass ``verify`` with the fuse values of
``cptra-imgtool fuses`` for it; otherwise nothing is written.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import re
import struct
from dataclasses import dataclass, replace
from pathlib import Path

from .config import MAX_BUNDLE_LEN, Config, HsmKey
from .errors import ConfigError, FormatError, KeyFileError, OutputError, SigningError
from .formats import bundle1 as bundle_mod
from .keys import ecc, lms
from .keys.key_match import fingerprint
from .signing import HelperSigner, LocalLmsSigner, Signer, ecc_key_signer
from .verify import Anchors, Report, verify_bytes

log = logging.getLogger("imgtool")

CALIPTRA_LMS = (lms.LMS_SHA256_M24_H15, lms.LMOTS_SHA256_N24_W4)
# checks that may fail on the input: the old owner signatures (replaced anyway)
_OWNER_CHECKS = ("bundle.sig.owner.ecc", "bundle.sig.owner.lms")
_TIME_RE = re.compile(r"[0-9]{14}Z")
EPOCH_MAX = 0xFFFF


# ---------------------------------------------------------------------------- owner_data
def parse_time(text: str, option: str) -> bytes:
    """An ASN.1 GeneralizedTime ``YYYYMMDDHHMMSSZ`` (the 15 bytes Caliptra stores)."""
    if not _TIME_RE.fullmatch(text):
        raise ConfigError(
            f"{option} {text!r}: expected YYYYMMDDHHMMSSZ (15 characters, UTC), e.g. "
            "20250101000000Z"
        )
    try:
        datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ")
    except ValueError:
        raise ConfigError(f"{option} {text!r}: not a valid date and time") from None
    return text.encode("ascii")


@dataclass(frozen=True)
class OwnerData:
    """What to set in owner_data; None keeps the bundle's value."""

    not_before: bytes | None = None
    not_after: bytes | None = None
    epoch: int | None = None

    def apply(self, current: bytes) -> bytes:
        if len(current) != bundle_mod.OWNER_DATA_LEN:
            raise ValueError("owner_data is 40 bytes")
        out = bytearray(current)
        t = bundle_mod.TIME_LEN
        if self.not_before is not None:
            out[0:t] = self.not_before
        if self.not_after is not None:
            out[t : 2 * t] = self.not_after
        if self.epoch is not None:
            if not 0 <= self.epoch <= EPOCH_MAX:
                raise ConfigError(f"--epoch {self.epoch}: must be 0..{EPOCH_MAX}")
            struct.pack_into("<H", out, bundle_mod.OWNER_EPOCH_OFF, self.epoch)
        before, after = bytes(out[0:t]), bytes(out[t : 2 * t])
        if any(before) and any(after) and before > after:
            raise ConfigError(
                f"owner_data: not_before {before.decode('ascii', 'replace')} is after "
                f"not_after {after.decode('ascii', 'replace')}"
            )
        return bytes(out)


# ---------------------------------------------------------------------------- keys
@dataclass
class OwnerKeys:
    """The owner FW public keys to put into the bundle and the signers of the header."""

    ecc_pub: bytes  # hardware format
    ecc: Signer
    lms_pub: bytes  # 48 bytes, or 48 zero bytes for an ECC-only owner
    lms: Signer | None
    ecc_from: str
    lms_from: str
    lms_caliptra: bool = True  # the LMS key is of the one type Caliptra 1.x verifies

    @property
    def lms_verifiable(self) -> bool:
        """A part with the LMS verify fuse set can boot the result."""
        return self.lms is not None and self.lms_caliptra


def _need(cfg: Config, field: str, path: Path | None) -> Path:
    if path is None:
        raise ConfigError(
            f"{cfg.path}: owner_fw_key_config.{field}: needed (the public key that goes into "
            "the bundle)"
        )
    if not path.is_file():
        raise ConfigError(f"{cfg.path}: owner_fw_key_config.{field}: key file not found: {path}")
    return path


def owner_keys(cfg: Config, force: bool = False) -> OwnerKeys:
    """The config's owner FW keys: each public key from owner_fw_key_config, each signer its
    private key file or the [sign_helper] command standing in for it (a helper that signs
    through the signing server is `cptra-imgtool sign-helper --server ...`). Without any owner
    FW LMS key the bundle is ECC-only: its owner LMS slots stay empty. An LMS key of another type
    than H15/W4 is refused unless ``force`` (then only a part whose LMS verify fuse is off boots
    the result, and it is verified that way)."""
    fw = cfg.owner_fw
    ecc_pub_path = _need(cfg, "ecc_pub_key", fw.ecc_pub)
    ecc_pub = ecc.load_public(ecc_pub_path)
    ecc_signer: Signer
    helper = cfg.helpers.get("ecc", "fw")
    if isinstance(fw.ecc_priv, HsmKey):  # on a PKCS#11 token; each signature verified
        ecc_signer = ecc_key_signer(fw.ecc_priv.uri, ecc_pub)
        ecc_from = fw.ecc_priv.uri
    elif fw.ecc_priv is not None:
        if not fw.ecc_priv.is_file():
            raise ConfigError(
                f"{cfg.path}: owner_fw_key_config.ecc_priv_key: key file not found: {fw.ecc_priv}"
            )
        ecc_signer = ecc_key_signer(fw.ecc_priv, ecc_pub)
        ecc_from = str(fw.ecc_priv)
    elif helper is not None:
        field = "sign_helper.owner_ecc_fw_key_sign_helper"
        ecc_signer = HelperSigner(
            helper, "ecc", field, cfg.helpers.by_file, cfg.helpers.timeout, ecc_pub
        )
        ecc_from = field
    else:
        raise ConfigError(
            f"{cfg.path}: owner_fw_key_config.ecc_priv_key: needed to sign the bundle (or "
            "sign_helper.owner_ecc_fw_key_sign_helper)"
        )
    lms_helper = cfg.helpers.get("lms", "fw")
    if fw.lms_pub is None and fw.lms_priv is None and lms_helper is None:
        return OwnerKeys(
            ecc.public_to_hw(ecc_pub), ecc_signer, bytes(48), None, ecc_from, "none (ECC only)"
        )
    lms_pub_path = _need(cfg, "lms_pub_key", fw.lms_pub)
    pub = lms.load_public(lms_pub_path)
    caliptra = (pub.lms_type, pub.ots_type) == CALIPTRA_LMS
    if not caliptra:
        what = (
            f"{cfg.path}: owner_fw_key_config.lms_pub_key: {lms_pub_path} is LMS type "
            f"{pub.lms_type}/{pub.ots_type}: Caliptra 1.x verifies only LMS_SHA256_M24_H15 / "
            "LMOTS_SHA256_N24_W4 owner keys"
        )
        if not force:
            raise KeyFileError(f"{what} (cptra-imgtool keygen --algo lms makes one)")
        log.warning("%s; only a part whose LMS verify fuse is off boots this bundle", what)
    lms_signer: Signer
    if fw.lms_priv is not None:
        if not fw.lms_priv.is_file():
            raise ConfigError(
                f"{cfg.path}: owner_fw_key_config.lms_priv_key: key file not found: {fw.lms_priv}"
            )
        lms_signer = LocalLmsSigner(fw.lms_priv, lms_pub_path)
        lms_from = str(fw.lms_priv)
    elif lms_helper is not None:
        field = "sign_helper.owner_lms_fw_key_sign_helper"
        lms_signer = HelperSigner(
            lms_helper, "lms", field, cfg.helpers.by_file, cfg.helpers.timeout, pub
        )
        lms_from = field
    else:
        raise ConfigError(
            f"{cfg.path}: owner_fw_key_config.lms_priv_key: needed to sign the bundle (or "
            "sign_helper.owner_lms_fw_key_sign_helper)"
        )
    return OwnerKeys(
        ecc.public_to_hw(ecc_pub),
        ecc_signer,
        pub.to_bytes(),
        lms_signer,
        ecc_from,
        lms_from,
        caliptra,
    )


# ---------------------------------------------------------------------------- checks
def _own_fuses(b: bundle_mod.Bundle, owner: bool, lms_verify: bool, source: str) -> Anchors:
    from .fuses import Fuses, owner_pk_hash, vendor_pk_hash

    return Anchors(
        fuses=Fuses(
            vendor_pk_hash(b), owner_pk_hash(b) if owner else None, lms_verify, source=source
        )
    )


def _first_failure(r: Report, allowed: tuple[str, ...] = ()) -> str | None:
    bad = [c for c in r.failures if c.id not in allowed]
    if not bad:
        return None
    c = bad[0]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    return f"{c.id}: {c.what}" + (f": {c.detail}" if c.detail else "") + more


def check_vendor_signed(data: bytes, source: str) -> bundle_mod.Bundle:
    """The bundle, parsed, when its vendor part boots as it is; FormatError otherwise."""
    b = bundle_mod.parse_bundle(data, source)
    r = verify_bytes(data, _own_fuses(b, False, True, f"{source}'s own vendor keys"))
    problem = _first_failure(r, _OWNER_CHECKS)
    if problem is not None:
        raise FormatError(
            f"{source}: not a vendor-signed Caliptra 1.x bundle this tool can owner-sign: {problem}"
        )
    return b


@dataclass(frozen=True)
class Signed:
    data: bytes
    before: bundle_mod.Bundle
    after: bundle_mod.Bundle
    lms: bool  # the owner signed with LMS too (else: ECC only)
    report: Report  # verify of the result with its own fuse values
    lms_verify: bool  # the LMS verify fuse those fuse values have (False: ECC only)


def owner_sign(
    data: bytes, source: str, keys: OwnerKeys, owner_data: OwnerData | None = None
) -> Signed:
    """Re-sign ``data`` (a vendor-signed bundle) as the owner. Nothing is signed before the
    input has been checked; nothing is returned that does not verify."""
    before = check_vendor_signed(data, source)
    od = (owner_data or OwnerData()).apply(before.header[-bundle_mod.OWNER_DATA_LEN :])
    unsigned = bundle_mod.with_owner(before, keys.ecc_pub, keys.lms_pub, od)
    header = unsigned[bundle_mod.HEADER_OFF : bundle_mod.HEADER_OFF + bundle_mod.HEADER_LEN]
    digest = hashlib.sha384(header).digest()
    ecc_sig = keys.ecc.sign_digest(digest)
    lms_sig = keys.lms.sign_digest(digest) if keys.lms is not None else bytes(lms.SLOT_LEN)
    out = bundle_mod.with_owner_signatures(unsigned, ecc_sig, lms_sig)
    after = bundle_mod.parse_bundle(out, source)
    # the vendor part is what the vendor signed, byte for byte, and still verifies
    same = (
        after.vendor_key_block() == before.vendor_key_block()
        and after.vendor_tbs() == before.vendor_tbs()
        and (after.vendor_ecc_sig, after.vendor_lms_sig)
        == (before.vendor_ecc_sig, before.vendor_lms_sig)
        and out[bundle_mod.MANIFEST_SIZE :] == data[bundle_mod.MANIFEST_SIZE :]
    )
    if not same:
        raise SigningError(f"{source}: owner re-signing changed the vendor part (internal error)")
    lms_verify = keys.lms_verifiable
    r = verify_bytes(out, _own_fuses(after, True, lms_verify, "the fuse values of the result"))
    problem = _first_failure(r)
    if problem is not None or not r.ok:
        raise SigningError(
            f"{source}: the owner-signed bundle does not verify ({problem or r.verdict}); "
            "nothing written"
        )
    if keys.lms is not None and not lms_verify:  # the LMS signature must verify all the same
        if not lms.LmsPublicKey.from_bytes(keys.lms_pub).verify(digest, lms_sig):
            raise SigningError(f"{source}: the owner LMS signature does not verify")
    return Signed(out, before, after, keys.lms is not None, r, lms_verify)


# ---------------------------------------------------------------------------- files
def read_bundle(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise FormatError(f"{path}: is a directory, not a Caliptra firmware bundle")
        if size > MAX_BUNDLE_LEN:
            raise FormatError(f"{path}: {size} bytes: too large for a Caliptra firmware bundle")
        return path.read_bytes()
    except FileNotFoundError:
        raise FormatError(f"{path}: file not found") from None
    except OSError as exc:
        raise FormatError(f"{path}: cannot read: {exc.strerror}") from None


def _same(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(cfg: Config, src: Path, out: Path) -> None:
    """The output must not be the input (also through a link), a directory, the config, a key
    file or an image; it may be the config's caliptra_file when the input is another file."""
    from .build import check_outputs

    if _same(src, out):
        raise OutputError(f"{out}: --out would overwrite the input bundle {src}")
    check_outputs(replace(cfg, caliptra_file=None), {"--out": out})


def input_path(cfg: Config, given: Path | None) -> Path:
    if given is not None:
        return given
    if cfg.caliptra_file is None:
        raise ConfigError(
            f'{cfg.path}: image_runtime_list.caliptra_file: "" (no bundle): give --in, the '
            "vendor's caliptra-fw.bin"
        )
    return cfg.caliptra_file


def changes(s: Signed) -> list[str]:
    """What changed, for the user: each owner key (old -> new fingerprint), owner_data."""
    out = []
    for algo, old, new in (
        ("ecc", s.before.owner_ecc_pubkey, s.after.owner_ecc_pubkey),
        ("lms", s.before.owner_lms_pubkey, s.after.owner_lms_pubkey),
    ):
        out.append(
            f"owner {algo.upper()} key: {fingerprint(algo, old)} -> {fingerprint(algo, new)}"
        )
    od = bundle_mod.owner_data_fields(s.after.header[-bundle_mod.OWNER_DATA_LEN :])
    out.append(
        f"owner_data: not_before {od['not_before'] or '-'}, not_after {od['not_after'] or '-'}, "
        f"epoch {od['epoch']}"
    )
    return out


def vendor_sign_lab(
    data: bytes, source: str, ecc_signer: Signer, ecc_pub: bytes, lms_signer: Signer, lms_pub: bytes
) -> bytes:
    """A LAB bundle (`new-project --vendor-keys`, parts without vendor fuses): the bundle with
    these vendor FW keys in its selected vendor key slots, vendor-signed with them. No real part
    with ASPEED's vendor PK hash fuse boots it."""
    b = bundle_mod.parse_bundle(data, source)
    digest = hashlib.sha384(b.vendor_tbs()).digest()
    return bundle_mod.with_vendor_keys(
        b, ecc_pub, lms_pub, ecc_signer.sign_digest(digest), lms_signer.sign_digest(digest)
    )
