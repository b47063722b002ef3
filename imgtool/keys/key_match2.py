"""Build-time consistency of a Caliptra 2.x config with its caliptra_file bundle (CMN2).

The 2.x counterpart of :mod:`imgtool.keys.key_match`: the device verifies the SoC manifest's
pubkey signatures with the keys of the bundle it runs, so the configured vendor FW keys (ECC and
the build's PQC type, ML-DSA or LMS) must be the bundle's ACTIVE vendor keys and the owner FW
keys its owner keys. A mismatch is :class:`key_match.KeyMismatchError` (exit 2), one line naming
both keys by :func:`key_match.fingerprint` and the fix; ``--allow-key-mismatch`` (doit:
``allow_key_mismatch=1``) turns it into warnings. A caliptra_file that is empty or not a CMN2
bundle (a stand-in blob) is not checked.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, FormatError
from ..formats import bundle2 as b2
from . import key_match
from .key_match import KeyMismatchError, Mismatch, fingerprint, stored_public

if TYPE_CHECKING:
    from ..config2 import Config2

log = logging.getLogger("imgtool")

__all__ = ["KeyMismatchError", "check", "check_cached", "mismatches"]


def _bundle(cfg2: Config2) -> b2.Bundle2 | None:
    p = cfg2.caliptra_file
    if p is None:
        return None
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{cfg2.path}: image_runtime_list.caliptra_file: {p}: {exc.strerror}"
        ) from None
    if data[:4] != b2.MARKER:
        return None  # empty or a stand-in blob: nothing to compare
    try:
        return b2.parse_bundle2(data, str(p))
    except FormatError as exc:
        raise ConfigError(f"{cfg2.path}: image_runtime_list.caliptra_file: {exc}") from None


def _pqc_stored(path: Path, pqc: str) -> bytes:
    if pqc == "mldsa":
        from . import mldsa

        return mldsa.MldsaPublicKey.load(path).raw
    return stored_public(path, "lms")


def mismatches(cfg2: Config2, pqc: str) -> list[Mismatch]:
    """Every disagreement between the config's FW keys and caliptra_file's keys for a build of
    PQC type ``pqc`` (mldsa|lms); empty when caliptra_file is not a CMN2 bundle."""
    b = _bundle(cfg2)
    if b is None:
        return []
    where = cfg2.caliptra_file
    want_pqc = b2.PQC_MLDSA if pqc == "mldsa" else b2.PQC_LMS
    if b.pqc_key_type != want_pqc:
        return [
            Mismatch(
                "vendor",
                pqc,
                f"{where} is a {b.pqc_name} bundle, the build's PQC type is {pqc}",
            )
        ]
    out: list[Mismatch] = []
    vnd = cfg2.keys["vendor_fw_key_config"]
    own = cfg2.keys["owner_fw_key_config"]
    pqc_field = f"{pqc}_pub_key"
    for party, ks, bundle_ecc, bundle_pqc, what in (
        (
            "vendor",
            vnd,
            b.vendor_ecc_pub,
            b.vendor_pqc_pub,
            (
                "active vendor ECC key {0.vendor_ecc_idx}",
                "active vendor {0.pqc_name} key {0.vendor_pqc_idx}",
            ),
        ),
        (
            "owner",
            own,
            b.owner_ecc_pub,
            b.owner_pqc_pub,
            ("owner ECC key", "owner {0.pqc_name} key"),
        ),
    ):
        pqc_pub = ks.mldsa_pub if pqc == "mldsa" else ks.lms_pub
        pairs = (
            (
                "ecc",
                "ecc_pub_key",
                ks.ecc_pub,
                stored_public(ks.ecc_pub, "ecc"),
                bundle_ecc,
                what[0],
            ),
            (pqc, pqc_field, pqc_pub, _pqc_stored(pqc_pub, pqc), bundle_pqc, what[1]),
        )
        for algo, field, path, have, want, label in pairs:
            if have != want:
                sel = " that it selects" if party == "vendor" else ""
                out.append(
                    Mismatch(
                        party,
                        algo,
                        f"{party}_fw_key_config.{field} {path} ({fingerprint(algo, have)}) is "
                        f"not the {label.format(b)} of {where}{sel} "
                        f"({fingerprint(algo, want)})",
                    )
                )
    return out


def _fix_text(found: list[Mismatch]) -> str:
    fixes = []
    if any(m.party == "owner" for m in found):
        fixes.append("put your owner FW public keys into the bundle's owner keys (or configure "
                     "the bundle's owner keys)")  # fmt: skip
    if any(m.party == "vendor" for m in found):
        fixes.append("use the bundle made for these vendor keys and this PQC type")
    return "; ".join(fixes)


def check(cfg2: Config2, pqc: str, allow: bool = False) -> list[Mismatch]:
    """Raise KeyMismatchError (exit 2) on any mismatch, one line; with ``allow``, warn and
    return them."""
    found = mismatches(cfg2, pqc)
    return key_match.report(cfg2.path, found, _fix_text(found) if found else "", allow)


def check_cached(cfg2: Config2, pqc: str, cache: Path, allow: bool = False) -> list[Mismatch]:
    """:func:`check`, skipped when ``cache`` records a clean pass for the same inputs (paths and
    stats of the config, caliptra_file and key files, pqc, allow): key_match.cached."""
    paths: list[Path | None] = [cfg2.path, cfg2.caliptra_file, *cfg2.key_files()]
    ident = key_match.paths_ident(paths, bool(allow), pqc)
    return key_match.cached(ident, cache, lambda: check(cfg2, pqc, allow))
