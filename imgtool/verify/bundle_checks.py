"""Caliptra 1.x firmware bundle (caliptra-fw.bin): what the Caliptra ROM checks, from the fuses,
plus the bytes no signature covers (reserved fields, trailing bytes)."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from ..config import VendorSignature
from ..errors import FormatError
from ..formats import bundle1 as bundle_mod
from ..fuses import owner_pk_hash, vendor_pk_hash
from .anchors import Key
from .context import Ctx, is_zero
from .report import Report


@dataclass
class BundleKeys:
    vendor_ecc: Key
    vendor_lms: Key
    owner_ecc: Key
    owner_lms: Key
    block_anchors: list[str] = field(default_factory=list)  # vouch for all 36 vendor key slots

    def all(self) -> list[Key]:
        return [self.vendor_ecc, self.vendor_lms, self.owner_ecc, self.owner_lms]

    def vendor(self) -> list[Key]:
        return [self.vendor_ecc, self.vendor_lms]

    def owner(self) -> list[Key]:
        return [self.owner_ecc, self.owner_lms]


def check_bundle(
    ctx: Ctx,
    data: bytes,
    origin: str,
    *,
    trailing: str = "exact",
    in_image: bool = True,
    prefix: str = "bundle",
) -> BundleKeys | None:
    """Check a bundle; returns its keys (with their anchors), or None when it cannot be parsed.

    ``trailing``: what may follow the last image: "exact" (nothing), "pad4" (up to 3 zero
    bytes: the FLSH padding), "zero" (zero bytes: the A1 slot up to the MCU at 0x20000).
    ``in_image``: the bundle is the one in the file (so --caliptra-fw and the config's
    caliptra_file must equal it). ``prefix``: of the check ids ("bundle", or "caliptra_fw" for
    the bundle given with --caliptra-fw)."""
    r = _Prefixed(ctx.r, prefix)
    try:
        b = bundle_mod.parse_bundle(data, origin)
    except FormatError as exc:
        r.add("bundle.layout", False, "Caliptra 1.x bundle layout", str(exc))
        return None
    r.add(
        "bundle.layout",
        True,
        "Caliptra 1.x bundle layout",
        f"CMAN, vendor key index ECC {b.vendor_ecc_idx} / LMS {b.vendor_lms_idx}",
    )
    keys = BundleKeys(
        Key("ecc", b.vendor_ecc_pubkey, f"{origin}: vendor ECC key {b.vendor_ecc_idx}"),
        Key("lms", b.vendor_lms_pubkey, f"{origin}: vendor LMS key {b.vendor_lms_idx}"),
        Key("ecc", b.owner_ecc_pubkey, f"{origin}: owner ECC key"),
        Key("lms", b.owner_lms_pubkey, f"{origin}: owner LMS key"),
    )
    _structure(r, b, data, trailing)
    _anchors(ctx, r, b, data, keys, in_image)
    if in_image and ctx.check_signatures:
        # the ROM hashes all 36 vendor key slots against the fuse: a key dir vouches for the
        # selected ones only, so the others would be bytes nothing accounts for
        r.add(
            "bundle.vendor_keys",
            bool(keys.block_anchors),
            "all 4 ECC + 32 LMS vendor key slots are vouched for",
            f"by {', '.join(keys.block_anchors)}"
            if keys.block_anchors
            else "only the selected vendor keys are anchored: give --fuses (vendor_pk_hash), "
            "--caliptra-fw, or --cfg with its caliptra_file",
        )
    _rom_fuses(ctx, r, b)
    _signatures(ctx, prefix, b, keys)
    return keys


def _rom_fuses(ctx: Ctx, r: _Prefixed, b: bundle_mod.Bundle) -> None:
    """Key revocation and firmware SVN, as the ROM checks them (caliptra-sw image verifier:
    the last key of each kind is never revoked; FMC SVN <= 32, runtime SVN <= 64, neither
    below the TOC's min_svn nor below its fuse)."""
    f = ctx.anchors.fuses
    if f is None:
        return
    for algo, idx, last, mask in (
        ("ecc", b.vendor_ecc_idx, bundle_mod.VENDOR_ECC_KEYS - 1, f.vendor_ecc_revocation),
        ("lms", b.vendor_lms_idx, bundle_mod.VENDOR_LMS_KEYS - 1, f.vendor_lms_revocation),
    ):
        if mask is None or (algo == "lms" and f.lms_verify is False):
            continue
        revoked = idx != last and bool(mask >> idx & 1)
        r.add(
            f"bundle.revocation.{algo}",
            not revoked,
            f"vendor {algo.upper()} key {idx} is not revoked",
            f"revocation mask 0x{mask:x}",
            f.source,
        )
    for toc, top, fuse in ((b.fmc, 32, f.fmc_svn), (b.runtime, 64, f.runtime_svn)):
        min_svn = struct.unpack_from("<I", toc.raw, 36)[0]
        problems = []
        if toc.svn > top:
            problems.append(f"above the maximum {top}")
        if toc.svn < min_svn:
            problems.append(f"below the TOC's min_svn {min_svn}")
        if fuse is not None and toc.svn < fuse:
            problems.append(f"below the fuse {fuse}")
        r.add(
            f"bundle.svn.{toc.name}",
            not problems,
            f"{toc.name} SVN is acceptable to the ROM",
            f"svn {toc.svn}" + (": " + ", ".join(problems) if problems else ""),
            f.source,
        )
    absent = [
        n
        for n in ("vendor_ecc_revocation", "vendor_lms_revocation", "fmc_svn", "runtime_svn")
        if getattr(f, n) is None
    ]
    if absent:
        r.note("bundle.fuse.unchecked", "fuses not given, not checked", ", ".join(absent))


class _Prefixed:
    """The report, with check ids "bundle.x" renamed to "<prefix>.x"."""

    def __init__(self, r: Report, prefix: str) -> None:
        self.r, self.prefix = r, prefix

    def _id(self, cid: str) -> str:
        return self.prefix + cid[len("bundle") :] if cid.startswith("bundle.") else cid

    def add(self, cid: str, ok: bool, what: str, detail: str = "", key: str = "") -> bool:
        return self.r.add(self._id(cid), ok, what, detail, key)

    def skip(self, cid: str, what: str, why: str, key: str = "") -> None:
        self.r.skip(self._id(cid), what, why, key)

    def note(self, cid: str, what: str, detail: str = "") -> None:
        self.r.note(self._id(cid), what, detail)


def _structure(r: _Prefixed, b: bundle_mod.Bundle, data: bytes, trailing: str) -> None:
    r.add(
        "bundle.header.key_idx",
        (b.header_vendor_ecc_idx, b.header_vendor_lms_idx) == (b.vendor_ecc_idx, b.vendor_lms_idx),
        "header selects the preamble's vendor keys",
        f"header ECC {b.header_vendor_ecc_idx} / LMS {b.header_vendor_lms_idx}",
    )
    r.add(
        "bundle.toc.count",
        b.toc_len == bundle_mod.MAX_TOC_ENTRIES,
        "TOC has 2 entries (FMC, runtime)",
        f"toc_len {b.toc_len}",
    )
    for what, ok in bundle_mod.digest_checks(b):
        r.add(f"bundle.{what.split()[0]}.digest", ok, f"{what} matches")
    fmc, rt = b.fmc, b.runtime
    r.add(
        "bundle.images.layout",
        fmc.offset == bundle_mod.MANIFEST_SIZE and rt.offset == fmc.offset + fmc.size,
        "FMC right after the manifest, runtime right after the FMC",
        f"FMC at {fmc.offset} ({fmc.size} bytes), runtime at {rt.offset} ({rt.size} bytes)",
    )
    tail = data[b.end :]
    if trailing == "exact":
        ok, rule = not tail, "nothing after the runtime"
    elif trailing == "pad4":
        ok, rule = (
            len(tail) < 4 and is_zero(tail),
            "only the FLSH padding (< 4 zero bytes) after it",
        )
    else:
        ok, rule = is_zero(tail), "zero padding after the runtime"
    r.add("bundle.trailing", ok, rule, f"runtime ends at {b.end}, {len(tail)} bytes follow")
    r.add(
        "bundle.reserved",
        not any(b.reserved()),
        "the preamble's 8 reserved bytes are zero",
        b.reserved().hex(),
    )


def _anchors(
    ctx: Ctx, r: _Prefixed, b: bundle_mod.Bundle, data: bytes, keys: BundleKeys, in_image: bool
) -> None:
    a = ctx.anchors
    f = a.fuses
    if f is not None:
        if f.vendor_pk_hash is None:
            r.note(
                "bundle.fuse.vendor_pk_hash",
                "no vendor PK hash fuse (an unprovisioned part, secure boot off)",
                "Caliptra's ROM skips the vendor key check: any vendor keys boot",
            )
            for k in keys.vendor():
                k.anchors.append("an unprovisioned part (no vendor PK hash fuse)")
            keys.block_anchors.append("an unprovisioned part")
        else:
            got = vendor_pk_hash(b)
            if r.add(
                "bundle.fuse.vendor_pk_hash",
                got == f.vendor_pk_hash,
                "all 4 ECC + 32 LMS vendor keys match the vendor PK hash fuse",
                f"SHA-384 {got.hex()[:16]}..., fuse {f.vendor_pk_hash.hex()[:16]}...",
                f.source,
            ):
                for k in keys.vendor():
                    k.anchors.append("the vendor_pk_hash fuse")
                keys.block_anchors.append("the vendor_pk_hash fuse")
        if f.owner_pk_hash is None:
            r.note(
                "bundle.fuse.owner_pk_hash",
                "owner PK hash fuse not provisioned",
                "the device accepts any owner keys in the bundle",
            )
            for k in keys.owner():
                k.anchors.append("an unprovisioned owner hash fuse (any owner key)")
        else:
            got = owner_pk_hash(b)
            if r.add(
                "bundle.fuse.owner_pk_hash",
                got == f.owner_pk_hash,
                "owner ECC + LMS keys match the owner PK hash fuse",
                f"SHA-384 {got.hex()[:16]}..., fuse {f.owner_pk_hash.hex()[:16]}...",
                f.source,
            ):
                for k in keys.owner():
                    k.anchors.append("the owner_pk_hash fuse")
    if in_image and a.caliptra_fw is not None:
        if r.add(
            "bundle.equals.caliptra_fw",
            data[: b.end] == a.caliptra_fw,
            f"the bundle is --caliptra-fw {a.caliptra_fw_name}",
            "" if data[: b.end] == a.caliptra_fw else "it differs",
        ):
            for k in keys.all():
                k.anchors.append(f"--caliptra-fw {a.caliptra_fw_name}")
            keys.block_anchors.append(f"--caliptra-fw {a.caliptra_fw_name}")
    cfg = a.cfg
    if in_image and cfg is not None and cfg.caliptra_file is not None:
        try:
            want = cfg.caliptra_file.read_bytes()
        except OSError as exc:
            r.add("bundle.equals.cfg", False, "the bundle is the config's caliptra_file", str(exc))
        else:
            if r.add(
                "bundle.equals.cfg",
                data[: b.end] == want,
                f"the bundle is the config's caliptra_file {cfg.caliptra_file}",
                "" if data[: b.end] == want else "it differs",
            ):
                for k in keys.all():
                    k.anchors.append(f"config caliptra_file {cfg.caliptra_file}")
                keys.block_anchors.append(f"config caliptra_file {cfg.caliptra_file}")
    prebuilt = cfg is not None and cfg.vendor_signature is VendorSignature.PREBUILT
    for role, pair in (("vendor_fw", keys.vendor()), ("owner_fw", keys.owner())):
        for k in pair:
            for value, where in a.expected(role, k.algo):
                if role == "vendor_fw" and prebuilt and where.startswith("config"):
                    r.skip(
                        f"bundle.key.{role}.{k.algo}",
                        f"config's vendor FW {k.algo.upper()} key is the bundle's",
                        "prebuilt vendor signature: the config's vendor FW keys sign nothing",
                    )
                    continue
                if r.add(
                    f"bundle.key.{role}.{k.algo}",
                    value == k.value,
                    f"the bundle's {role.replace('_', ' ')} {k.algo.upper()} key is {where}",
                    "" if value == k.value else "it differs",
                    where,
                ):
                    k.anchors.append(where)


def _signatures(ctx: Ctx, prefix: str, b: bundle_mod.Bundle, keys: BundleKeys) -> None:
    """The ROM checks the bundle whatever the secure-boot policy of the SoC says."""
    sha = hashlib.sha384
    v, o = sha(b.vendor_tbs()).digest(), sha(b.owner_tbs()).digest()
    for cid, what, algo, key, digest, sig in (
        ("vendor.ecc", "vendor ECC signature", "ecc", keys.vendor_ecc, v, b.vendor_ecc_sig),
        ("vendor.lms", "vendor LMS signature", "lms", keys.vendor_lms, v, b.vendor_lms_sig),
        ("owner.ecc", "owner ECC signature", "ecc", keys.owner_ecc, o, b.owner_ecc_sig),
        ("owner.lms", "owner LMS signature", "lms", keys.owner_lms, o, b.owner_lms_sig),
    ):
        ctx.signature(f"{prefix}.sig.{cid}", what, algo, key, digest, sig, rom=True)
