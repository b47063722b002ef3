"""Build-time consistency of a config with its Caliptra firmware bundle (``caliptra_file``).

The device verifies the SoC manifest's pubkey and SVN signatures with the keys of the bundle it
runs (spec/trust.md): the owner FW keys the config signs with must be the bundle's owner keys,
and the vendor side must match the bundle's selected vendor keys (the configured vendor FW keys
when the vendor signature is generated; ASPEED's prebuilt vendor signatures when it is
prebuilt). Otherwise the build makes an image the device rejects. A mismatch is an error naming
both keys by fingerprint and the fix; ``--allow-key-mismatch`` turns it into a warning.

Fingerprint: ``ecc:`` / ``lms:`` and the first 16 hex digits of the SHA-256 of the public key as
the bundle and the manifest store it (ECC hardware-format x||y, 96 bytes; LMS the 48-byte
public key, whose SHA-256 is also the key id ``lms-status`` shows).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, VendorSignature
from ..errors import ConfigError, FormatError, ImgtoolError
from ..formats import bundle1 as bundle_mod

log = logging.getLogger("imgtool")

ALLOW_OPTION = "--allow-key-mismatch"


def fingerprint(algo: str, stored: bytes) -> str:
    """``ecc:0123456789abcdef``; ``ecc:empty`` for an all-zero key slot."""
    if not any(stored):
        return f"{algo}:empty"
    return f"{algo}:{hashlib.sha256(stored).hexdigest()[:16]}"


def stored_public(path: Path, algo: str) -> bytes:
    """A public key file in its stored form (ECC hardware format, LMS 48 bytes)."""
    from . import ecc, lms

    if algo == "ecc":
        return ecc.public_to_hw(ecc.load_public(path))
    return bytes(lms.load_public(path).to_bytes())


class KeyMismatchError(ConfigError):
    """The config's keys and the bundle's keys disagree: the device would reject the image."""


@dataclass(frozen=True)
class Mismatch:
    party: str  # "owner" | "vendor"
    algo: str
    text: str  # one clause naming both keys


def _bundle(cfg: Config) -> tuple[bundle_mod.Bundle, Path] | None:
    if cfg.caliptra_file is None:
        return None
    try:
        data = cfg.caliptra_file.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{cfg.path}: image_runtime_list.caliptra_file: {cfg.caliptra_file}: {exc.strerror}"
        ) from None
    try:
        return bundle_mod.parse_bundle(data, str(cfg.caliptra_file)), cfg.caliptra_file
    except FormatError as exc:
        raise ConfigError(f"{cfg.path}: image_runtime_list.caliptra_file: {exc}") from None


def _vendor_keys(b: bundle_mod.Bundle, algo: str) -> list[bytes]:
    return b.vendor_ecc_pubkeys if algo == "ecc" else b.vendor_lms_pubkeys


def _prebuilt_signer(b: bundle_mod.Bundle, algo: str, raw: bytes) -> int | None:
    """Which of the bundle's vendor keys of ``algo`` made the prebuilt signature (None: none)."""
    from ..formats import manifest1 as manifest
    from . import ecc, lms

    digest = manifest.PREBUILT_VENDOR_TBS_DIGEST
    for i, k in enumerate(_vendor_keys(b, algo)):
        if not any(k):
            continue
        try:
            if algo == "ecc":
                if ecc.verify_digest(ecc.hw_to_public(k), digest, raw):
                    return i
            elif lms.LmsPublicKey.from_bytes(k).verify(digest, raw):
                return i
        except (ValueError, ImgtoolError):
            continue
    return None


def _prebuilt_mismatch(
    cfg: Config, b: bundle_mod.Bundle, where: Path, algo: str
) -> Mismatch | None:
    from ..build import PREBUILT_ECC_FILE, PREBUILT_LMS_FILE
    from . import ecc

    path = cfg.vendor_sig_dir / (PREBUILT_ECC_FILE if algo == "ecc" else PREBUILT_LMS_FILE)
    try:
        raw = path.read_bytes()
    except OSError:
        return None  # the build names the missing or unreadable file
    if algo == "ecc":
        try:
            ecc.der_to_hw(raw)
        except ValueError:
            return None  # the build reports a signature that is not DER
    idx = b.vendor_ecc_idx if algo == "ecc" else b.vendor_lms_idx
    key = b.vendor_ecc_pubkey if algo == "ecc" else b.vendor_lms_pubkey
    signer = _prebuilt_signer(b, algo, raw)
    if signer == idx:
        return None
    if signer is not None:
        made_by = (
            f"it was made by vendor {algo.upper()} key {signer} "
            f"({fingerprint(algo, _vendor_keys(b, algo)[signer])})"
        )
    else:
        made_by = f"it was made by none of the bundle's vendor {algo.upper()} keys"
    return Mismatch(
        "vendor",
        algo,
        f"the prebuilt vendor {algo.upper()} signature {path} does not verify with vendor "
        f"{algo.upper()} key {idx} ({fingerprint(algo, key)}) that {where} selects; {made_by}",
    )


def mismatches(cfg: Config) -> list[Mismatch]:
    """Every disagreement between the keys the config signs with and the bundle's keys (an
    empty list without a caliptra_file: then nothing can be compared)."""
    from ..build import key_selection

    found = _bundle(cfg)
    if found is None:
        return []
    b, where = found
    sel = key_selection(cfg)
    out: list[Mismatch] = []
    for algo in ("ecc", "lms"):
        o = sel[("owner", algo)]
        if o.enabled and o.fw_pub is not None:
            have = stored_public(o.fw_pub, algo)
            want = b.owner_ecc_pubkey if algo == "ecc" else b.owner_lms_pubkey
            if have != want:
                out.append(
                    Mismatch(
                        "owner",
                        algo,
                        f"owner_fw_key_config.{algo}_pub_key {o.fw_pub} "
                        f"({fingerprint(algo, have)}) is not the owner {algo.upper()} key of "
                        f"{where} ({fingerprint(algo, want)})",
                    )
                )
    for algo in ("ecc", "lms"):
        v = sel[("vendor", algo)]
        if not v.enabled:
            continue
        if cfg.vendor_signature is VendorSignature.PREBUILT:
            m = _prebuilt_mismatch(cfg, b, where, algo)
            if m is not None:
                out.append(m)
            continue
        assert v.fw_pub is not None
        have = stored_public(v.fw_pub, algo)
        idx = b.vendor_ecc_idx if algo == "ecc" else b.vendor_lms_idx
        want = b.vendor_ecc_pubkey if algo == "ecc" else b.vendor_lms_pubkey
        if have != want:
            out.append(
                Mismatch(
                    "vendor",
                    algo,
                    f"vendor_fw_key_config.{algo}_pub_key {v.fw_pub} ({fingerprint(algo, have)}) "
                    f"is not vendor {algo.upper()} key {idx} that {where} selects "
                    f"({fingerprint(algo, want)})",
                )
            )
    return out


def fix_text(cfg: Config, found: list[Mismatch]) -> str:
    fixes = []
    if any(m.party == "owner" for m in found):
        fixes.append(
            f"put your owner keys into the bundle: cptra-imgtool owner-sign-bundle --cfg "
            f"{cfg.path} --out NEW.bin, then caliptra_file = NEW.bin"
        )
    if any(m.party == "vendor" for m in found):
        fixes.append(
            "use the bundle made for these vendor keys and signatures (only the vendor can sign "
            "its part of a bundle)"
        )
    return "; ".join(fixes)


def check(cfg: Config, allow: bool = False) -> list[Mismatch]:
    """Raise KeyMismatchError (exit 2) on any mismatch, one line naming both keys and the fix;
    with ``allow``, log each as a warning instead and return them."""
    found = mismatches(cfg)
    return report(cfg.path, found, fix_text(cfg, found) if found else "", allow)


def report(path: Path, found: list[Mismatch], fix: str, allow: bool) -> list[Mismatch]:
    """Mismatches found in config ``path``: none, []; with ``allow``, a warning each and
    returned; else KeyMismatchError, one line naming both keys of each and ``fix``."""
    if not found:
        return []
    if allow:
        for m in found:
            log.warning(
                "%s: %s: the device rejects this image (%s given)", path, m.text, ALLOW_OPTION
            )
        return found
    raise KeyMismatchError(
        f"{path}: the device would reject this image: "
        + "; ".join(m.text for m in found)
        + f". Fix: {fix} ({ALLOW_OPTION} builds it anyway)"
    )


def paths_ident(paths: list[Path | None], *extra: object) -> list[object]:
    """``extra`` then each path by absolute path and stat (size, mtime, ctime, inode, device;
    None when missing): what identifies the inputs of a key check without reading them."""
    out: list[object] = list(extra)
    for p in paths:
        if p is None:
            out.append(None)
            continue
        try:
            st = os.stat(p)
            ident: object = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
        except OSError:
            ident = None
        out.append([os.path.abspath(p), ident])
    return out


def cached(ident: list[object], cache: Path, run: Callable[[], list[Mismatch]]) -> list[Mismatch]:
    """``run()`` (a key check), skipped when ``cache`` records a clean pass for ``ident``. Only
    a clean pass is recorded; a cache that cannot be read or written is ignored."""
    try:
        if json.loads(cache.read_text()) == ident:
            return []
    except (OSError, ValueError):
        pass
    found = run()
    if not found:
        from ..fileio import atomic_write

        try:
            atomic_write(cache, json.dumps(ident).encode())
        except ImgtoolError:
            pass
    return found


def check_cached(cfg: Config, cache: Path, allow: bool = False) -> list[Mismatch]:
    """:func:`check`, skipped when ``cache`` records that it passed for exactly these inputs:
    the config, caliptra_file, every key file and the prebuilt vendor signatures (by path and
    stat), and ``allow``: a no-op build need not load the keys."""
    from ..build import PREBUILT_ECC_FILE, PREBUILT_LMS_FILE

    paths = [cfg.path, cfg.caliptra_file, *cfg.key_files()]
    paths += [cfg.vendor_sig_dir / PREBUILT_ECC_FILE, cfg.vendor_sig_dir / PREBUILT_LMS_FILE]
    return cached(paths_ident(paths, bool(allow)), cache, lambda: check(cfg, allow))
