"""Verify flash images, SoC manifests and Caliptra firmware bundles: every check the boot chain
runs, and more. Returns a :class:`Report`; the CLI maps it to text and exit codes.

Signatures are checked with `cryptography` (ECC) and :class:`imgtool.lms.LmsPublicKey` (LMS),
never by re-signing and comparing.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import bundle as bundle_mod
from . import ecc, flash, lms, manifest
from .config import Config, Format
from .errors import FormatError
from .manifest import Manifest

KIND_FLASH = "flash image (FLSH v1)"
KIND_A1 = "AST2700 A1 out-bundle (Caliptra at 0x0, MCU at 0x20000, FLSH at 0x100000)"
KIND_MAN_ASPEED = "SoC manifest (ASPEED AST2700 layout)"
KIND_MAN_1X = "SoC manifest (Caliptra 1.x layout)"
KIND_BUNDLE = "Caliptra 1.x firmware bundle"


@dataclass
class Check:
    region: str
    what: str
    ok: bool
    detail: str = ""

    def line(self) -> str:
        head = "ok  " if self.ok else "FAIL"
        tail = f": {self.detail}" if self.detail else ""
        return f"{head} {self.region}: {self.what}{tail}"


@dataclass
class Report:
    kind: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, region: str, what: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(region, what, ok, detail))
        return ok


@dataclass
class FwKeys:
    """Keys a manifest's pubkey / SVN signatures verify with (hardware / 48-byte forms)."""

    vendor_ecc: bytes | None = None
    vendor_lms: bytes | None = None
    owner_ecc: bytes | None = None
    owner_lms: bytes | None = None
    source: str = ""

    def merged(self, other: FwKeys) -> FwKeys:
        """Fill what is missing here from ``other``."""
        return FwKeys(
            self.vendor_ecc or other.vendor_ecc,
            self.vendor_lms or other.vendor_lms,
            self.owner_ecc or other.owner_ecc,
            self.owner_lms or other.owner_lms,
            self.source or other.source,
        )


def fw_keys_from_bundle(b: bundle_mod.Bundle, source: str) -> FwKeys:
    return FwKeys(
        b.vendor_ecc_pubkey, b.vendor_lms_pubkey, b.owner_ecc_pubkey, b.owner_lms_pubkey, source
    )


def fw_keys_from_dir(key_dir: Path) -> FwKeys:
    """The reference file names: vnd-fw-ecc-pubk.pem, own-fw-lms-pubk.pem, ..."""

    def ecc_key(name: str) -> bytes | None:
        p = key_dir / name
        return ecc.public_to_hw(ecc.load_public(p)) if p.is_file() else None

    def lms_key(name: str) -> bytes | None:
        p = key_dir / name
        return lms.load_public(p).to_bytes() if p.is_file() else None

    return FwKeys(
        ecc_key("vnd-fw-ecc-pubk.pem"),
        lms_key("vnd-fw-lms-pubk.pem"),
        ecc_key("own-fw-ecc-pubk.pem"),
        lms_key("own-fw-lms-pubk.pem"),
        str(key_dir),
    )


def fw_keys_from_config(cfg: Config) -> FwKeys:
    def get(p: Path | None, algo: str) -> bytes | None:
        if p is None:
            return None
        return (
            ecc.public_to_hw(ecc.load_public(p)) if algo == "ecc" else lms.load_public(p).to_bytes()
        )

    return FwKeys(
        get(cfg.vendor_fw.ecc_pub, "ecc"),
        get(cfg.vendor_fw.lms_pub, "lms"),
        get(cfg.owner_fw.ecc_pub, "ecc"),
        get(cfg.owner_fw.lms_pub, "lms"),
        str(cfg.path),
    )


# ---------------------------------------------------------------------------- primitives
def _ecc_ok(pub_hw: bytes, covered_digest: bytes, sig_hw: bytes) -> bool:
    try:
        key = ecc.hw_to_public(pub_hw)
    except ValueError:
        return False
    return ecc.verify_digest_hw(key, covered_digest, sig_hw)


def _lms_ok(pub48: bytes, covered_digest: bytes, slot: bytes) -> bool:
    try:
        key = lms.LmsPublicKey.from_bytes(pub48)
    except Exception:  # noqa: BLE001 - a malformed key just fails the check
        return False
    return key.verify(covered_digest, slot)


def _lms_q(slot: bytes, little: bool = False) -> str:
    q = struct.unpack_from("<I" if little else ">I", slot)[0]
    return f"q = {q}"


def _zero(b: bytes) -> bool:
    return not any(b)


# ---------------------------------------------------------------------------- manifest
def check_manifest(
    data: bytes, r: Report, keys: FwKeys, region: str = "manifest", cfg: Config | None = None
) -> Manifest | None:
    try:
        m = Manifest.parse(data, region)
    except FormatError as exc:
        r.add(region, "layout", False, str(exc))
        return None
    r.add(f"{region} preamble", f"marker, {len(data)}-byte {m.format} layout", True)
    r.add(
        f"{region} preamble",
        "size field is 7168",
        m.size == manifest.PREAMBLE_SIZE,
        f"found {m.size}" if m.size != manifest.PREAMBLE_SIZE else "",
    )
    r.add(f"{region} preamble", "flags use only bit 0", m.flags & ~1 == 0, f"0x{m.flags:x}")
    _check_imc(m, r, region)
    _check_signatures(m, r, keys, region)
    if cfg is not None:
        _check_against_config(m, r, cfg, region)
    return m


def _check_imc(m: Manifest, r: Report, region: str) -> None:
    reg = f"{region} IMC"
    count, entries = manifest.imc_entries(m.imc)
    if not r.add(reg, "entry_count in 1..127", 1 <= count <= manifest.MAX_ENTRIES, str(count)):
        return
    ids = [e.fw_id for e in entries]
    dups = sorted({i for i in ids if ids.count(i) > 1})
    r.add(reg, "no duplicate fw_id", not dups, f"duplicates {dups}" if dups else "")
    unused = struct.pack("<II", manifest.UNUSED_FW_ID, 0) + bytes(manifest.DIGEST_LEN)
    tail = m.imc[4 + count * manifest.ENTRY_LEN :]
    bad = [
        count + i
        for i in range(len(tail) // manifest.ENTRY_LEN)
        if tail[i * manifest.ENTRY_LEN : (i + 1) * manifest.ENTRY_LEN] != unused
    ]
    r.add(
        reg,
        "unused entries are fw_id 0xFFFFFFFF, flags 0, digest 0",
        not bad,
        f"entries {bad[:5]} differ" if bad else "",
    )


def _check_pair(
    r: Report,
    region: str,
    name: str,
    algo: str,
    pub: bytes | None,
    digest: bytes,
    sig: bytes,
    *,
    lms_le_q: bool = False,
    required: bool = False,
) -> None:
    """One signature slot: zero slots are fine unless required; otherwise it must verify."""
    reg = f"{region} {name}"
    if _zero(sig):
        r.add(
            reg,
            f"{algo.upper()} signature",
            not required,
            "empty although its key is in use" if required else "unused (zero)",
        )
        return
    if pub is None:
        r.add(
            reg,
            f"{algo.upper()} signature",
            False,
            "no key to verify it with (give --key-dir, --cfg or --caliptra-fw)",
        )
        return
    if algo == "ecc":
        r.add(reg, "ECC signature verifies", _ecc_ok(pub, digest, sig))
    else:
        slot = manifest.svn_lms_sig_swap_q(sig) if lms_le_q else sig
        detail = _lms_q(sig, little=lms_le_q) + (" (stored little-endian)" if lms_le_q else "")
        r.add(reg, "LMS signature verifies", _lms_ok(pub, digest, slot), detail)


def _check_signatures(m: Manifest, r: Report, keys: FwKeys, region: str) -> None:
    sha = hashlib.sha384
    aspeed = m.format is Format.ASPEED
    # vendor pubkey endorsement: generated (keys present) or ASPEED's prebuilt (keys zeroed)
    for algo, key_field, sig_field, fw in (
        ("ecc", "vnd_man_ecc_pub", "vnd_pub_sig_ecc", keys.vendor_ecc),
        ("lms", "vnd_man_lms_pub", "vnd_pub_sig_lms", keys.vendor_lms),
    ):
        man_key, sig = getattr(m, key_field), getattr(m, sig_field)
        if _zero(man_key) and not _zero(sig):
            ok_ver = m.version == 1 and m.flags == 0
            r.add(
                f"{region} vendor pubkey signature",
                f"prebuilt {algo.upper()} signature applies (version 1, flags 0)",
                ok_ver,
                "" if ok_ver else f"version {m.version}, flags {m.flags}",
            )
            digest = manifest.PREBUILT_VENDOR_TBS_DIGEST
        else:
            digest = sha(manifest.vendor_pubkey_tbs(m)).digest()
        _check_pair(
            r, region, "vendor pubkey signature", algo, fw, digest, sig, required=not _zero(man_key)
        )
    imc_digest = sha(manifest.imc_tbs(m)).digest()
    vendor_required = bool(m.flags & 1)
    for algo, key_field, sig_field in (
        ("ecc", "vnd_man_ecc_pub", "vnd_imc_sig_ecc"),
        ("lms", "vnd_man_lms_pub", "vnd_imc_sig_lms"),
    ):
        sig = getattr(m, sig_field)
        if not vendor_required:
            r.add(
                f"{region} vendor IMC signature",
                f"{algo.upper()} slot empty (flags bit 0 clear)",
                _zero(sig),
            )
            continue
        man_key = getattr(m, key_field)
        _check_pair(
            r,
            region,
            "vendor IMC signature",
            algo,
            None if _zero(man_key) else man_key,
            imc_digest,
            sig,
            required=not _zero(man_key),
        )
    own_digest = sha(manifest.owner_pubkey_tbs(m)).digest()
    svn_digest = sha(manifest.svn_tbs(m)).digest()
    for algo, key_field, fw in (
        ("ecc", "own_man_ecc_pub", keys.owner_ecc),
        ("lms", "own_man_lms_pub", keys.owner_lms),
    ):
        man_key = getattr(m, key_field)
        in_use = not _zero(man_key)
        _check_pair(
            r,
            region,
            "owner pubkey signature",
            algo,
            fw,
            own_digest,
            getattr(m, f"own_pub_sig_{algo}"),
            required=in_use,
        )
        if aspeed:
            _check_pair(
                r,
                region,
                "owner SVN signature",
                algo,
                fw,
                svn_digest,
                getattr(m, f"own_svn_sig_{algo}"),
                lms_le_q=algo == "lms",
                required=in_use,
            )
        _check_pair(
            r,
            region,
            "owner IMC signature",
            algo,
            man_key if in_use else None,
            imc_digest,
            getattr(m, f"own_imc_sig_{algo}"),
            required=in_use,
        )


def _check_against_config(m: Manifest, r: Report, cfg: Config, region: str) -> None:
    reg = f"{region} vs {cfg.path}"
    r.add(reg, "format", m.format is cfg.format, f"{m.format} vs {cfg.format}")
    r.add(reg, "version", m.version == cfg.version, f"{m.version} vs {cfg.version}")
    r.add(reg, "flags", m.flags == cfg.stored_flags, f"{m.flags} vs {cfg.stored_flags}")
    if m.format is Format.ASPEED:
        r.add(
            reg,
            "security_version",
            m.sec_ver == cfg.security_version,
            f"{m.sec_ver} vs {cfg.security_version}",
        )
    entries = m.entries
    r.add(
        reg, "entry count", len(entries) == len(cfg.images), f"{len(entries)} vs {len(cfg.images)}"
    )
    for img, e in zip(cfg.images, entries, strict=False):
        name = img.file or "(empty)"
        r.add(
            reg,
            f"entry {img.index} fw_id/flags ({name})",
            (e.fw_id, e.flags) == (img.fw_id, img.flags),
            f"fw_id {e.fw_id} flags 0x{e.flags:08x}, config says {img.fw_id} 0x{img.flags:08x}",
        )
        try:
            digest = manifest.image_digest_file(img.path)
        except OSError as exc:
            r.add(reg, f"entry {img.index} digest ({name})", False, f"cannot read: {exc.strerror}")
            continue
        r.add(reg, f"entry {img.index} digest matches {name}", e.digest == digest)


# ---------------------------------------------------------------------------- bundle
def check_bundle(
    data: bytes, r: Report, region: str = "caliptra bundle"
) -> bundle_mod.Bundle | None:
    try:
        b = bundle_mod.parse_bundle(data, region)
    except FormatError as exc:
        r.add(region, "layout", False, str(exc))
        return None
    r.add(
        region,
        f"CMAN marker, vendor key index ECC {b.vendor_ecc_idx} / LMS {b.vendor_lms_idx}",
        True,
    )
    r.add(
        region,
        "header selects the same vendor keys as the preamble",
        (b.header_vendor_ecc_idx, b.header_vendor_lms_idx) == (b.vendor_ecc_idx, b.vendor_lms_idx),
    )
    for what, ok in bundle_mod.digest_checks(b):
        r.add(region, what, ok)
    end = b.runtime.offset + b.runtime.size
    r.add(
        region,
        "images end at the end of the bundle",
        end == len(data) or not any(data[end:]),
        f"runtime ends at {end}, file is {len(data)} bytes",
    )
    sha = hashlib.sha384
    v, o = sha(b.vendor_tbs()).digest(), sha(b.owner_tbs()).digest()
    r.add(
        region, "vendor ECC signature verifies", _ecc_ok(b.vendor_ecc_pubkey, v, b.vendor_ecc_sig)
    )
    r.add(
        region,
        "vendor LMS signature verifies",
        _lms_ok(b.vendor_lms_pubkey, v, b.vendor_lms_sig),
        _lms_q(b.vendor_lms_sig),
    )
    r.add(region, "owner ECC signature verifies", _ecc_ok(b.owner_ecc_pubkey, o, b.owner_ecc_sig))
    r.add(
        region,
        "owner LMS signature verifies",
        _lms_ok(b.owner_lms_pubkey, o, b.owner_lms_sig),
        _lms_q(b.owner_lms_sig),
    )
    return b


# ---------------------------------------------------------------------------- flash
def _newer_flsh(data: bytes) -> bool:
    """The later upstream layouts keep version 1 but put the first image elsewhere."""
    if len(data) < 28:
        return False
    count = int(struct.unpack_from("<H", data, 6)[0])
    first_off = int(struct.unpack_from("<I", data, 20)[0])
    return first_off != 16 + 12 * count


def check_flash(
    data: bytes,
    r: Report,
    keys: FwKeys,
    base: int = 0,
    cfg: Config | None = None,
    fallback: FwKeys | None = None,
) -> None:
    """``keys`` (from --caliptra-fw) win over the bundle inside the image, which wins over
    ``fallback`` (config / key directory)."""
    f = data[base:]
    reg = "flash header"
    if not r.add(reg, "FLSH magic", f[:4] == flash.MAGIC, f"found {f[:4].hex()}"):
        return
    if len(f) < flash.HEADER_LEN:
        r.add(reg, "complete header", False, f"only {len(f)} bytes")
        return
    version, count = struct.unpack_from("<HH", f, 4)
    if not r.add(
        reg,
        "version 1",
        version == 1,
        f"version {version}: newer FLSH layouts are not supported yet" if version != 1 else "",
    ):
        return
    if not r.add(reg, "image_count in 1..127", 1 <= count <= flash.MAX_IMAGES, str(count)):
        return
    hcrc, pcrc = struct.unpack_from("<II", f, 8)
    hcrc_ok = r.add(
        "flash header CRC",
        "CRC-32 of bytes 0..7",
        hcrc == flash.crc32(f[:8]),
        f"stored 0x{hcrc:08x}, computed 0x{flash.crc32(f[:8]):08x}",
    )
    if not hcrc_ok and _newer_flsh(f):
        r.add(
            reg,
            "pinned v1 layout (first image at 16 + 12 * count)",
            False,
            "looks like a later upstream layout (20-byte entries): not supported yet",
        )
        return
    table_end = flash.HEADER_LEN + flash.ENTRY_LEN * count
    if not r.add("flash entries", "image table complete", len(f) >= table_end):
        return
    r.add(
        "flash payload CRC",
        "CRC-32 of bytes 16..end of file",
        pcrc == flash.crc32(f[16:]),
        f"stored 0x{pcrc:08x}, computed 0x{flash.crc32(f[16:]):08x}",
    )
    h = flash.parse_header(f)
    bounds_ok = True
    for i, e in enumerate(h.entries):
        inside = table_end <= e.offset and e.offset + e.size <= len(f)
        bounds_ok &= r.add(
            "flash entries",
            f"entry {i} (id 0x{e.identifier:x}) within the file",
            inside,
            f"offset 0x{e.offset:x} size 0x{e.size:x}, file 0x{len(f):x}",
        )
        r.add(
            "flash entries", f"entry {i} size is a multiple of 4", e.size % 4 == 0, f"0x{e.size:x}"
        )
    spans = sorted((e.offset, e.offset + e.size, e.identifier) for e in h.entries if e.size)
    overlaps = [(a[2], b[2]) for a, b in zip(spans, spans[1:], strict=False) if b[0] < a[1]]
    r.add(
        "flash entries",
        "no overlapping images",
        not overlaps,
        ", ".join(f"0x{x:x}/0x{y:x}" for x, y in overlaps),
    )
    last = max((e.offset + e.size for e in h.entries), default=table_end)
    r.add(
        "flash entries",
        "nothing after the last image",
        last == len(f),
        f"last image ends at 0x{last:x}, file is 0x{len(f):x}",
    )
    ids = [e.identifier for e in h.entries]
    for ident, name in (
        (flash.ID_CALIPTRA, "Caliptra bundle"),
        (flash.ID_MANIFEST, "SoC manifest"),
        (flash.ID_MCU, "MCU runtime"),
    ):
        r.add("flash entries", f"exactly one {name} (id {ident})", ids.count(ident) == 1)
    soc = [i for i in ids if i >= flash.SOC_ID_BASE]
    r.add(
        "flash entries",
        "SoC identifiers are 0x1000, 0x1001, ... in order",
        soc == list(range(flash.SOC_ID_BASE, flash.SOC_ID_BASE + len(soc))),
    )
    if not bounds_ok:
        return
    by_id = {e.identifier: f[e.offset : e.offset + e.size] for e in h.entries}

    cal = by_id.get(flash.ID_CALIPTRA, b"")
    if base:
        cal = data[: flash.A1_MCU_OFFSET]
    if cal and any(cal):
        b = check_bundle(cal, r)
        if b is not None:
            keys = keys.merged(fw_keys_from_bundle(b, "the Caliptra bundle in the image"))
    if fallback is not None:
        keys = keys.merged(fallback)
    m = None
    if flash.ID_MANIFEST in by_id:
        m = check_manifest(by_id[flash.ID_MANIFEST], r, keys, cfg=cfg)
    if m is None:
        return
    digests = {e.fw_id: e.digest for e in m.entries}
    for e in h.entries:
        if e.identifier < flash.SOC_ID_BASE:
            continue
        fw_id = flash.soc_fw_id(e.identifier)
        reg = f"image 0x{e.identifier:x}"
        want = digests.get(fw_id)
        if want is None:
            r.add(reg, f"manifest has fw_id {fw_id}", False)
            continue
        got = hashlib.sha384(by_id[e.identifier]).digest()
        r.add(reg, f"SHA-384 equals the manifest digest of fw_id {fw_id}", got == want)
    mcu = by_id.get(flash.ID_MCU, b"")
    if mcu and 1 in digests:
        r.add(
            "image mcu",
            "SHA-384 equals the manifest digest of fw_id 1",
            hashlib.sha384(mcu).digest() == digests[1],
        )


# ---------------------------------------------------------------------------- entry points
def detect(data: bytes) -> str:
    """A short name of the file kind; FormatError for what we cannot decode."""
    if data[:4] == flash.MAGIC:
        return KIND_FLASH
    if len(data) > flash.A1_FLSH_OFFSET + 4 and data[flash.A1_FLSH_OFFSET :][:4] == flash.MAGIC:
        return KIND_A1
    if data[:4] == bundle_mod.MARKER:
        return KIND_BUNDLE
    if data[:4] == bundle_mod.MARKER_2X:
        raise FormatError("Caliptra 2.x firmware bundle (CMN2): not supported yet")
    if len(data) >= 4:
        marker = struct.unpack_from("<I", data)[0]
        if marker == manifest.MARKER_2X:
            raise FormatError("Caliptra 2.x SoC manifest (ATM2): not supported yet")
        if marker == manifest.MARKER:
            if len(data) == manifest.ASPEED_LEN:
                return KIND_MAN_ASPEED
            if len(data) == manifest.CALIPTRA1_LEN:
                return KIND_MAN_1X
            return "SoC manifest of unexpected length"
    raise FormatError(
        "not a flash image, SoC manifest or Caliptra firmware bundle "
        f"(first bytes {data[:8].hex() or 'none: empty file'})"
    )


def verify_bytes(
    data: bytes,
    *,
    cfg: Config | None = None,
    key_dir: Path | None = None,
    caliptra_fw: bytes | None = None,
) -> Report:
    kind = detect(data)
    r = Report(kind)
    keys = FwKeys()
    if caliptra_fw is not None:
        b = check_bundle(caliptra_fw, r, "--caliptra-fw bundle")
        if b is not None:
            keys = fw_keys_from_bundle(b, "--caliptra-fw")
    fallback = FwKeys()
    if cfg is not None:
        fallback = fallback.merged(fw_keys_from_config(cfg))
    if key_dir is not None:
        fallback = fallback.merged(fw_keys_from_dir(key_dir))
    if kind in (KIND_FLASH, KIND_A1):
        base = flash.A1_FLSH_OFFSET if kind == KIND_A1 else 0
        check_flash(data, r, keys, base=base, cfg=cfg, fallback=fallback)
        return r
    if kind == KIND_BUNDLE:
        check_bundle(data, r)
    else:
        if cfg is not None and cfg.caliptra_file is not None and caliptra_fw is None:
            try:
                b = bundle_mod.parse_bundle(cfg.caliptra_file.read_bytes())
                keys = keys.merged(fw_keys_from_bundle(b, str(cfg.caliptra_file)))
            except (FormatError, OSError):
                pass
        check_manifest(data, r, keys.merged(fallback), cfg=cfg)
    return r


def report_json(r: Report) -> dict[str, Any]:
    return {
        "kind": r.kind,
        "ok": r.ok,
        "checks": [
            {"region": c.region, "check": c.what, "ok": c.ok, "detail": c.detail} for c in r.checks
        ],
    }
