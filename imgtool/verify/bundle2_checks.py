"""Caliptra 2.x firmware bundle (CMN2): what the 2.x ROM checks (caliptra-sw
``image/verify/src/verifier.rs`` at 879608b9, the commit ASPEED pins), from the fuses, plus the
bytes no signature covers (reserved fields, unused key-hash slots, the unused parts of the PQC
key and signature slots, trailing bytes).

The ROM: PQC type from the manifest must equal the pqc_key_type fuse; both key descriptors
(version 1, 1..4 ECC hashes, 1..32 LMS or 1..4 ML-DSA hashes, the PQC descriptor's type equal to
the PQC type) hash to the vendor PK hash fuse; the active vendor keys hash to the descriptor
slot of their index; the owner keys hash to the owner PK hash fuse when it is set; the vendor
ECC + PQC signatures cover the header up to owner_data, the owner ECC + PQC signatures the whole
header (ECDSA and LMS over SHA-384, ML-DSA-87 over the raw bytes); the TOC digest and the image
digests; the firmware SVN (<= 128, not below the fuse unless anti-rollback is off).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ..errors import FormatError
from ..formats import bundle2 as b2
from ..fuses import owner_pk_hash2, vendor_pk_hash2
from .anchors import UNPROVISIONED_OWNER, UNPROVISIONED_VENDOR, Key
from .bundle_checks import _Prefixed
from .context import Ctx, is_zero

MAX_FW_SVN = 128


@dataclass
class BundleKeys2:
    pqc_key_type: int
    vendor_ecc: Key
    vendor_pqc: Key
    owner_ecc: Key
    owner_pqc: Key
    block_anchors: list[str] = field(default_factory=list)

    @property
    def pqc_algo(self) -> str:
        return "mldsa" if self.pqc_key_type == b2.PQC_MLDSA else "lms"

    def all(self) -> list[Key]:
        return [self.vendor_ecc, self.vendor_pqc, self.owner_ecc, self.owner_pqc]

    def vendor(self) -> list[Key]:
        return [self.vendor_ecc, self.vendor_pqc]

    def owner(self) -> list[Key]:
        return [self.owner_ecc, self.owner_pqc]


def check_bundle2(
    ctx: Ctx,
    data: bytes,
    origin: str,
    *,
    trailing: str = "exact",
    in_image: bool = True,
    prefix: str = "bundle",
) -> BundleKeys2 | None:
    """Check a CMN2 bundle; returns its keys (with their anchors), or None when it cannot be
    parsed. ``trailing``, ``in_image`` and ``prefix`` as for the 1.x bundle."""
    r = _Prefixed(ctx.r, prefix)
    try:
        b = b2.parse_bundle2(data, origin)
    except FormatError as exc:
        r.add("bundle.layout", False, "Caliptra 2.x bundle layout", str(exc))
        return None
    r.add(
        "bundle.layout",
        True,
        "Caliptra 2.x bundle layout",
        f"CMN2, PQC {b.pqc_name}, vendor key index ECC {b.vendor_ecc_idx} / PQC {b.vendor_pqc_idx}",
    )
    algo = "mldsa" if b.pqc_key_type == b2.PQC_MLDSA else "lms"
    keys = BundleKeys2(
        b.pqc_key_type,
        Key("ecc", b.vendor_ecc_pub, f"{origin}: active vendor ECC key {b.vendor_ecc_idx}"),
        Key(algo, b.vendor_pqc_pub, f"{origin}: active vendor {b.pqc_name} key {b.vendor_pqc_idx}"),
        Key("ecc", b.owner_ecc_pub, f"{origin}: owner ECC key"),
        Key(algo, b.owner_pqc_pub, f"{origin}: owner {b.pqc_name} key"),
    )
    if not _structure(r, b, data, trailing):
        return keys
    _pqc_policy(ctx, r, b)
    _descriptors(r, b)
    _anchors(ctx, r, b, data, keys, in_image)
    _rom_fuses(ctx, r, b)
    _signatures(ctx, prefix, b, keys, algo)
    return keys


def _structure(r: _Prefixed, b: b2.Bundle2, data: bytes, trailing: str) -> bool:
    ok = r.add(
        "bundle.size",
        b.size == b2.MANIFEST_SIZE,
        f"size field is {b2.MANIFEST_SIZE} (the ROM rejects anything else)",
        f"found {b.size}",
    )
    ok &= r.add(
        "bundle.pqc_key_type",
        b.pqc_key_type in b2.PQC_NAMES,
        "PQC key type is 1 (ML-DSA-87) or 3 (LMS)",
        f"found {b.pqc_key_type}",
    )
    r.add(
        "bundle.reserved",
        not any(b.type_reserved) and not any(b.reserved),
        "reserved bytes (after the PQC type, the preamble's last 8) are zero",
        (b.type_reserved + b.reserved).hex(),
    )
    if not ok:
        return False
    for what, slot, used in (
        ("active vendor PQC key", b.vendor_pqc_slot, b.pqc_pub_len),
        ("owner PQC key", b.owner_pqc_slot, b.pqc_pub_len),
        ("vendor PQC signature", b.vendor_pqc_sig_slot, b.pqc_sig_len),
        ("owner PQC signature", b.owner_pqc_sig_slot, b.pqc_sig_len),
    ):
        cid = "bundle.slot_padding." + what.replace(" ", "_").replace("PQC_", "pqc_").lower()
        r.add(
            cid,
            is_zero(slot[used:]),
            f"{what}: the {len(slot) - used} bytes past the {b.pqc_name} value are zero",
        )
    r.add(
        "bundle.header.key_idx",
        (b.header_vendor_ecc_idx, b.header_vendor_pqc_idx) == (b.vendor_ecc_idx, b.vendor_pqc_idx),
        "header selects the preamble's vendor keys",
        f"header ECC {b.header_vendor_ecc_idx} / PQC {b.header_vendor_pqc_idx}",
    )
    r.add(
        "bundle.toc.count",
        b.toc_len == b2.MAX_TOC_ENTRIES,
        "TOC has 2 entries (FMC, runtime)",
        f"toc_len {b.toc_len}",
    )
    toc_ok = hashlib.sha384(b.toc_bytes()).digest() == b2.swap_words(b.toc_digest)
    r.add("bundle.toc.digest", toc_ok, "TOC digest in the header matches the TOC")
    for toc in (b.fmc, b.runtime):
        img = b.image_bytes(toc)
        inside = toc.size > 0 and toc.offset + toc.size <= len(data)
        r.add(
            f"bundle.{toc.name}.digest",
            inside and hashlib.sha384(img).digest() == toc.digest_be,
            f"{toc.name} image digest in the TOC matches the image",
            f"offset {toc.offset}, {toc.size} bytes" + ("" if inside else ": outside the file"),
        )
        r.add(
            f"bundle.{toc.name}.reserved",
            not any(toc.reserved),
            f"{toc.name} TOC entry's reserved bytes are zero",
        )
    fmc, rt = b.fmc, b.runtime
    r.add(
        "bundle.images.layout",
        fmc.offset == b2.MANIFEST_SIZE and rt.offset == fmc.offset + fmc.size,
        "FMC right after the manifest, runtime right after the FMC",
        f"FMC at {fmc.offset} ({fmc.size} bytes), runtime at {rt.offset} ({rt.size} bytes)",
    )
    end = rt.offset + rt.size
    tail = data[end:]
    if trailing == "exact":
        tok, rule = not tail, "nothing after the runtime"
    elif trailing == "pad4":
        # the flash pads each image to 4; with padding_align_size N the build packs the
        # zero-padded copy (spec/caliptra2.md): N is the config's, or, without one, the power of
        # two (<= 64 KiB) that the zero tail pads the bundle to
        align = _align_of(len(data), len(tail))
        tok = is_zero(tail) and len(tail) < align
        rule = "only the flash padding (< 4 zero bytes, or zero padding to padding_align_size)"
        if tok and align > 4:
            rule = f"only zero padding to a multiple of {align} (padding_align_size)"
    else:
        tok, rule = is_zero(tail), "zero padding after the runtime"
    r.add("bundle.trailing", tok, rule, f"runtime ends at {end}, {len(tail)} bytes follow")
    return True


def _align_of(total: int, tail: int) -> int:
    """The alignment a zero tail of ``tail`` bytes pads a ``total``-byte region to: 4, else the
    smallest power of two above ``tail`` that divides ``total`` (at most 64 KiB; 0: none)."""
    if tail < 4:
        return 4
    a = 8
    while a <= 0x10000:
        if a > tail and total % a == 0:
            return a
        a *= 2
    return 0


def _pqc_policy(ctx: Ctx, r: _Prefixed, b: b2.Bundle2) -> None:
    f = ctx.anchors.fuses
    if f is None:
        return
    if f.pqc_key_type is None:
        r.add(
            "bundle.fuse.pqc_key_type",
            False,
            "the PQC key type matches the pqc_key_type fuse",
            "the fuses file has no pqc_key_type (a Caliptra 2.x part has one: 1 or 3)",
            f.source,
        )
        return
    r.add(
        "bundle.fuse.pqc_key_type",
        f.pqc_key_type == b.pqc_key_type,
        "the PQC key type matches the pqc_key_type fuse",
        f"bundle {b.pqc_key_type} ({b.pqc_name}), fuse {f.pqc_key_type}",
        f.source,
    )


def _descriptors(r: _Prefixed, b: b2.Bundle2) -> None:
    pqc_max = b2.VENDOR_MLDSA_MAX if b.pqc_key_type == b2.PQC_MLDSA else b2.VENDOR_LMS_MAX
    for name, d, top, idx, pub in (
        ("ecc", b.ecc_desc, b2.VENDOR_ECC_MAX, b.vendor_ecc_idx, b.vendor_ecc_pub),
        ("pqc", b.pqc_desc, pqc_max, b.vendor_pqc_idx, b.vendor_pqc_pub),
    ):
        label = "ECC" if name == "ecc" else b.pqc_name
        problems = []
        if d.version != b2.KEY_DESCRIPTOR_VERSION:
            problems.append(f"version {d.version}, not 1")
        if name == "pqc" and d.type_or_reserved != b.pqc_key_type:
            problems.append(f"key type {d.type_or_reserved}, not {b.pqc_key_type}")
        if name == "ecc" and d.type_or_reserved:
            problems.append(f"reserved byte {d.type_or_reserved}")
        if not 1 <= d.count <= top:
            problems.append(f"key_hash_count {d.count}, not 1..{top}")
        r.add(
            f"bundle.descriptor.{name}",
            not problems,
            f"{label} key descriptor (version 1, 1..{top} hashes"
            + (", its type" if name == "pqc" else "")
            + ")",
            "; ".join(problems) or f"{d.count} key hashes",
        )
        unused = [i for i in range(d.count, len(d.hashes)) if any(d.hashes[i])]
        r.add(
            f"bundle.descriptor.{name}.unused",
            not unused,
            f"{label} descriptor's hash slots past key_hash_count are zero",
            f"slots {unused[:5]} are not" if unused else "",
        )
        count = max(1, min(d.count, top))
        in_range = idx <= count - 1 and idx < len(d.hashes)
        r.add(
            f"bundle.descriptor.{name}.index",
            in_range,
            f"active vendor {label} key index is within the descriptor",
            f"index {idx}, {d.count} hashes",
        )
        if in_range:
            r.add(
                f"bundle.descriptor.{name}.active_hash",
                hashlib.sha384(pub).digest() == d.hash_be(idx),
                f"the active vendor {label} key hashes to descriptor slot {idx}",
            )


def _rom_fuses(ctx: Ctx, r: _Prefixed, b: b2.Bundle2) -> None:
    """Revocation and firmware SVN, as the 2.x ROM checks them (the last key is never
    revoked; svn <= 128 and not below the firmware SVN fuse)."""
    f = ctx.anchors.fuses
    problems = []
    if b.svn > MAX_FW_SVN:
        problems.append(f"above the maximum {MAX_FW_SVN}")
    if f is not None and f.runtime_svn is not None and b.svn < f.runtime_svn:
        problems.append(f"below the firmware SVN fuse {f.runtime_svn}")
    r.add(
        "bundle.svn",
        not problems,
        "firmware SVN is acceptable to the ROM",
        f"svn {b.svn}" + (": " + ", ".join(problems) if problems else ""),
        f.source if f is not None else "",
    )
    if f is None:
        return
    pqc_mask = (
        f.vendor_mldsa_revocation if b.pqc_key_type == b2.PQC_MLDSA else f.vendor_lms_revocation
    )
    for name, idx, count, mask in (
        ("ecc", b.vendor_ecc_idx, b.ecc_desc.count, f.vendor_ecc_revocation),
        ("pqc", b.vendor_pqc_idx, b.pqc_desc.count, pqc_mask),
    ):
        if mask is None:
            continue
        revoked = idx != count - 1 and bool(mask >> idx & 1)
        r.add(
            f"bundle.revocation.{name}",
            not revoked,
            f"vendor {name.upper()} key {idx} is not revoked",
            f"revocation mask 0x{mask:x} (key {count - 1}, the last, is never revoked)",
            f.source,
        )


def _anchors(
    ctx: Ctx, r: _Prefixed, b: b2.Bundle2, data: bytes, keys: BundleKeys2, in_image: bool
) -> None:
    a = ctx.anchors
    f = a.fuses
    if f is not None:
        if f.vendor_pk_hash is None:
            r.note(
                "bundle.fuse.vendor_pk_hash",
                "no vendor PK hash fuse (an unprovisioned part)",
                "Caliptra's ROM skips the vendor key check: any vendor keys boot",
            )
            for k in keys.vendor():
                k.anchors.append(UNPROVISIONED_VENDOR)
            keys.block_anchors.append("an unprovisioned part")
        else:
            got = vendor_pk_hash2(b)
            if r.add(
                "bundle.fuse.vendor_pk_hash",
                got == f.vendor_pk_hash,
                "the ECC and PQC key descriptors match the vendor PK hash fuse",
                f"SHA-384 {got.hex()[:16]}..., fuse {f.vendor_pk_hash.hex()[:16]}...",
                f.source,
            ):
                for k in keys.vendor():
                    k.anchors.append("the vendor_pk_hash fuse (through the key descriptors)")
                keys.block_anchors.append("the vendor_pk_hash fuse")
        if f.owner_pk_hash is None:
            r.note(
                "bundle.fuse.owner_pk_hash",
                "owner PK hash fuse not provisioned",
                "the device accepts any owner keys in the bundle",
            )
            for k in keys.owner():
                k.anchors.append(UNPROVISIONED_OWNER)
        else:
            got = owner_pk_hash2(b)
            if r.add(
                "bundle.fuse.owner_pk_hash",
                got == f.owner_pk_hash,
                "owner ECC + PQC keys match the owner PK hash fuse",
                f"SHA-384 {got.hex()[:16]}..., fuse {f.owner_pk_hash.hex()[:16]}...",
                f.source,
            ):
                for k in keys.owner():
                    k.anchors.append("the owner_pk_hash fuse")
    end = b.runtime.offset + b.runtime.size
    if in_image and a.caliptra_fw is not None:
        same = data[:end] == a.caliptra_fw
        if r.add(
            "bundle.equals.caliptra_fw",
            same,
            f"the bundle is --caliptra-fw {a.caliptra_fw_name}",
            "" if same else "it differs",
        ):
            for k in keys.all():
                k.anchors.append(f"--caliptra-fw {a.caliptra_fw_name}")
            keys.block_anchors.append(f"--caliptra-fw {a.caliptra_fw_name}")
    cfg = a.cfg2 if a.cfg2 is not None else a.cfg
    caliptra_file = getattr(cfg, "caliptra_file", None) if cfg is not None else None
    if in_image and caliptra_file is not None:
        try:
            want = caliptra_file.read_bytes()
        except OSError as exc:
            r.add("bundle.equals.cfg", False, "the bundle is the config's caliptra_file", str(exc))
        else:
            same = data[:end] == want
            if r.add(
                "bundle.equals.cfg",
                same,
                f"the bundle is the config's caliptra_file {caliptra_file}",
                "" if same else "it differs",
            ):
                for k in keys.all():
                    k.anchors.append(f"config caliptra_file {caliptra_file}")
                keys.block_anchors.append(f"config caliptra_file {caliptra_file}")
    # the active vendor and the owner keys against a key directory / config (ECC; the PQC
    # key of the bundle's PQC type)
    for role, k in (
        ("vendor_fw", keys.vendor_ecc),
        ("vendor_fw", keys.vendor_pqc),
        ("owner_fw", keys.owner_ecc),
        ("owner_fw", keys.owner_pqc),
    ):
        for value, where in a.expected(role, k.algo):
            if r.add(
                f"bundle.key.{role}.{k.algo}",
                value == k.value,
                f"the bundle's {role.replace('_', ' ')} {k.algo.upper()} key is {where}",
                "" if value == k.value else "it differs",
                where,
            ):
                k.anchors.append(where)


def _signatures(ctx: Ctx, prefix: str, b: b2.Bundle2, keys: BundleKeys2, algo: str) -> None:
    """The ROM checks the bundle whatever the secure-boot policy of the SoC says. ECDSA and
    LMS over SHA-384 of the covered bytes; ML-DSA-87 over the covered bytes themselves."""
    sha = hashlib.sha384
    vt, ot = b.vendor_tbs(), b.owner_tbs()
    vm = vt if algo == "mldsa" else sha(vt).digest()
    om = ot if algo == "mldsa" else sha(ot).digest()
    pqc = b.pqc_name
    for cid, what, alg, key, msg, sig in (
        (
            "vendor.ecc",
            "vendor ECC signature",
            "ecc",
            keys.vendor_ecc,
            sha(vt).digest(),
            b.vendor_ecc_sig,
        ),
        (
            f"vendor.{algo}",
            f"vendor {pqc} signature",
            algo,
            keys.vendor_pqc,
            vm,
            b.vendor_pqc_sig_slot,
        ),
        (
            "owner.ecc",
            "owner ECC signature",
            "ecc",
            keys.owner_ecc,
            sha(ot).digest(),
            b.owner_ecc_sig,
        ),
        (f"owner.{algo}", f"owner {pqc} signature", algo, keys.owner_pqc, om, b.owner_pqc_sig_slot),
    ):
        if alg == "lms":
            sig = sig[: b2.LMS_SIG_LEN]  # the slot's tail is checked as padding
        ctx.signature(f"{prefix}.sig.{cid}", what, alg, key, msg, sig, rom=True)
