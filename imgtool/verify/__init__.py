"""Verify flash images, SoC manifests and Caliptra firmware bundles the way the AST2700 boot
chain does, from explicit trust anchors (spec/trust.md).

Exit 0 (:attr:`Report.ok`) means: nothing failed, and every signature the device checks
verifies with a key that an anchor vouches for (the fuses, the config, a key directory, a
trusted bundle), so the device would boot it and it is what the anchors say. Without an anchor
only integrity is checked, and that is not a pass unless ``integrity_only`` is asked for.
"""

from __future__ import annotations

import struct

from ..config import Config, Format
from ..errors import FormatError
from ..formats import bundle1 as bundle_mod
from ..formats import bundle2 as bundle2_mod
from ..formats import flash1 as flash
from ..formats import manifest1 as manifest
from .anchors import AnchorError, Anchors, Key, Policy
from .bundle2_checks import BundleKeys2, check_bundle2
from .bundle_checks import BundleKeys, check_bundle
from .config2_checks import check_flash2_vs_config, check_manifest2_vs_config, flash2_names
from .config_checks import check_flash_vs_config, check_manifest_vs_config, planned_slots
from .context import Ctx, is_zero
from .flash2_checks import (
    ID_CALIPTRA as ID2_CALIPTRA,
)
from .flash2_checks import (
    ID_MANIFEST as ID2_MANIFEST,
)
from .flash2_checks import (
    TOC_MAGIC,
    check_flash2_structure,
    check_fw_toc,
    check_fw_toc_vs_flash,
    check_images2,
    is_flash2,
)
from .flash_checks import check_images, check_structure, data_end, find_mcu, plausible_flsh
from .manifest2_checks import MARKER as ATM2_MARKER
from .manifest2_checks import check_manifest2, parse_atm2
from .manifest_checks import FwKeys, check_manifest
from .report import Check, Report, Status

__all__ = [
    "AnchorError",
    "Anchors",
    "Check",
    "Report",
    "Status",
    "detect",
    "verify_bytes",
    "KIND_A1",
    "KIND_BUNDLE",
    "KIND_BUNDLE2",
    "KIND_FLASH2",
    "KIND_MAN2",
    "KIND_TOC",
    "RUNTIME_2X",
    "KIND_FLASH",
    "KIND_MAN_1X",
    "KIND_MAN_ASPEED",
]

KIND_FLASH = "flash image (FLSH v1)"
KIND_A1 = "AST2700 A1 out-bundle (Caliptra at 0x0, MCU at 0x20000, FLSH at 0x100000)"
KIND_MAN_ASPEED = "SoC manifest (ASPEED AST2700 layout)"
KIND_MAN_1X = "SoC manifest (Caliptra 1.x layout)"
KIND_BUNDLE = "Caliptra 1.x firmware bundle"
KIND_BUNDLE2 = "Caliptra 2.x firmware bundle (CMN2)"
KIND_MAN2 = "Caliptra 2.x SoC manifest (ATM2)"
KIND_FLASH2 = "Caliptra 2.x flash image (FLSH v1, 20-byte entries)"
KIND_TOC = "Caliptra 2.x fw_toc.bin (ATOC)"
# which Caliptra generation the 2.x checks model (said in inspect and verify output)
RUNTIME_2X = (
    "Caliptra 2.x ROM/runtime as at caliptra-sw 879608b9 (ASPEED's pin: IMC of 127 entries; "
    "fw-2.1.2 and later runtimes hash 80)"
)


def detect(data: bytes | memoryview, cfg: Config | None = None) -> str:
    """The file kind; FormatError when nothing identifies it. A damaged FLSH magic does not
    hide a flash image that a config or a valid table after the magic identifies."""
    head = bytes(data[:4])
    a1 = data[flash.A1_FLSH_OFFSET :] if len(data) > flash.A1_FLSH_OFFSET else b""
    if is_flash2(data):
        return KIND_FLASH2
    if len(data) >= 4 and struct.unpack_from("<I", data)[0] == TOC_MAGIC:
        return KIND_TOC
    if head == flash.MAGIC:
        return KIND_FLASH
    if a1 and (bytes(a1[:4]) == flash.MAGIC or plausible_flsh(a1)):
        return KIND_A1
    if head == bundle_mod.MARKER:
        return KIND_BUNDLE
    if head == bundle2_mod.MARKER:
        return KIND_BUNDLE2
    if len(data) >= 4:
        marker = struct.unpack_from("<I", data)[0]
        if marker == ATM2_MARKER:
            return KIND_MAN2
        if marker == manifest.MARKER:
            if len(data) == manifest.ASPEED_LEN:
                return KIND_MAN_ASPEED
            if len(data) == manifest.CALIPTRA1_LEN:
                return KIND_MAN_1X
            raise FormatError(f"SoC manifest marker, but {len(data)} bytes is no known layout")
    if plausible_flsh(data):
        return KIND_FLASH
    if cfg is not None:
        return KIND_A1 if cfg.cptra_out_bundle and a1 else KIND_FLASH
    raise FormatError(
        "not a flash image, SoC manifest or Caliptra firmware bundle "
        f"(first bytes {bytes(data[:8]).hex() or 'none: empty file'})"
    )


def verify_bytes(
    data: bytes | memoryview,
    anchors: Anchors | None = None,
    *,
    integrity_only: bool = False,
) -> Report:
    """Verify a file's bytes. Raises FormatError when the file is of no known kind."""
    anchors = anchors or Anchors()
    view = memoryview(data)
    kind = detect(view, anchors.cfg)
    r = Report(kind, anchors=anchors.names(), integrity_only=integrity_only)
    gen2 = kind in (KIND_BUNDLE2, KIND_MAN2, KIND_FLASH2, KIND_TOC)
    if gen2 and anchors.cfg is not None:
        raise AnchorError(f"--cfg {anchors.cfg.path}: a Caliptra 1.x config, but the file is 2.x")
    if not gen2 and anchors.cfg2 is not None:
        raise AnchorError(
            f"--cfg {anchors.cfg2.path}: a Caliptra 2.x config, but the file is not 2.x"
        )
    if anchors.fw_toc is not None and kind != KIND_FLASH2:
        raise AnchorError("--fw-toc: only with a Caliptra 2.x flash image")
    ctx = Ctx(r, Policy.from_fuses(anchors.fuses), anchors, gen2=gen2)
    if gen2:
        _policy2(ctx)
    if kind == KIND_BUNDLE2:
        bundle2_mod.parse_bundle2(view, "CMN2 bundle")  # unusable input: FormatError, exit 2
        r.note("target", "modelled boot chain", RUNTIME_2X)
        _trusted_bundle2(ctx)
        check_bundle2(ctx, bytes(view), "the bundle", in_image=True)
        _conclude(ctx)
        return r
    if kind in (KIND_MAN2, KIND_FLASH2, KIND_TOC):
        r.note("target", "modelled boot chain", RUNTIME_2X)
        _gen2(ctx, view, kind)
        _conclude(ctx)
        return r
    trusted = _trusted_bundle(ctx)
    if kind in (KIND_FLASH, KIND_A1):
        _flash(ctx, view, kind == KIND_A1, trusted)
    elif kind == KIND_BUNDLE:
        check_bundle(ctx, bytes(view), "the bundle", in_image=True)
    else:
        keys = trusted if trusted is not None else _config_bundle(ctx)
        if keys is None:
            _no_bundle(ctx, in_flash=False)
        m = check_manifest(
            ctx, bytes(view), "the manifest", _fw_keys(ctx, keys), cfg_slots=_cfg_slots(ctx)
        )
        if m is not None and anchors.cfg is not None:
            check_manifest_vs_config(ctx, m, anchors.cfg)
    _conclude(ctx)
    return r


def _trusted_bundle(ctx: Ctx) -> BundleKeys | None:
    """--caliptra-fw F: checked as a bundle on its own (against the fuses); its keys are
    anchored by F itself."""
    a = ctx.anchors
    if a.caliptra_fw is None:
        return None
    keys = check_bundle(
        ctx,
        a.caliptra_fw,
        f"--caliptra-fw {a.caliptra_fw_name}",
        in_image=False,
        prefix="caliptra_fw",
    )
    if keys is not None:
        for k in keys.all():
            k.anchors.append(f"--caliptra-fw {a.caliptra_fw_name}")
    return keys


def _policy2(ctx: Ctx) -> None:
    """What the 1.x fuses of a fuses file do not mean on a 2.x part."""
    f = ctx.anchors.fuses
    if f is not None and not f.secure_boot:
        ctx.r.note(
            "policy.secure_boot",
            "secure_boot = false does not switch off Caliptra 2.x checks",
            "the 2.x ROM checks the bundle and the runtime (SET_AUTH_MANIFEST) the SoC "
            "manifest whatever the SoC's secure-boot strap says: every signature is checked",
        )


def _trusted_bundle2(ctx: Ctx) -> BundleKeys2 | None:
    """--caliptra-fw F for a 2.x file: F is checked as a 2.x bundle on its own, and its keys are
    the reference, as for 1.x (issue 9: "the image's bundle must equal F"). F is an explicit
    anchor the user names; without --fuses nothing else vouches for its vendor keys, and the
    report says so (a bundle is self-describing: one signed by anyone checks out against
    itself, so F must come from a source the user trusts)."""
    a = ctx.anchors
    if a.caliptra_fw is None:
        return None
    keys = check_bundle2(
        ctx,
        a.caliptra_fw,
        f"--caliptra-fw {a.caliptra_fw_name}",
        in_image=False,
        prefix="caliptra_fw",
    )
    if keys is not None:
        for k in keys.all():
            k.anchors.append(f"--caliptra-fw {a.caliptra_fw_name}")
    if a.fuses is None:
        ctx.r.note(
            "caliptra_fw.anchor",
            f"--caliptra-fw {a.caliptra_fw_name} is the only anchor of its vendor keys",
            "no fuse anchors the vendor keys: the bundle is trusted as given (a foreign-signed "
            "bundle checks out against itself); add --fuses to check it as the ROM does",
        )
    return keys


def _gen2(ctx: Ctx, view: memoryview, kind: str) -> None:
    """ATM2 manifests, 2.x flash images and fw_toc.bin."""
    r, a = ctx.r, ctx.anchors
    if kind == KIND_TOC:
        check_fw_toc(ctx, view)
        what = "fw_toc.bin carries no signature: its authenticity cannot be established"
        why = "it is an index; verify the flash image it describes with --fw-toc"
        if r.integrity_only:
            r.note("toc.authenticity", what, why)
        else:
            r.add("toc.authenticity", False, what, why)
        return
    if kind == KIND_MAN2:
        parse_atm2(bytes(view), "ATM2 manifest")  # unusable input: FormatError, exit 2
    trusted = _trusted_bundle2(ctx)
    if kind == KIND_MAN2:
        if trusted is None:
            _no_bundle(ctx, in_flash=False)
        m = check_manifest2(ctx, bytes(view), "the manifest", trusted)
        if m is not None and a.cfg2 is not None:
            check_manifest2_vs_config(ctx, m, a.cfg2)
        return
    fl = check_flash2_structure(ctx, view)
    if fl is None:
        return
    keys = trusted
    cal = fl.regions.get(ID2_CALIPTRA)
    present = cal is not None and len(cal) > 0 and not is_zero(cal)
    r.add(
        "flash.caliptra.present",
        present,
        "the flash holds the Caliptra firmware bundle (identifier 0): the device boots none "
        "without it",
        "no entry" if cal is None else f"{len(cal)} bytes" + ("" if present else ", all zero"),
    )
    if present:
        assert cal is not None
        keys = check_bundle2(ctx, bytes(cal), "the bundle in the flash", trailing="pad4") or keys
    if keys is None:
        _no_bundle(ctx, in_flash=True)
    if a.fw_toc is not None:
        toc = check_fw_toc(ctx, memoryview(a.fw_toc), prefix="fw_toc")
        if toc is not None:
            names = flash2_names(a.cfg2) if a.cfg2 is not None else None
            check_fw_toc_vs_flash(ctx, toc, fl, names)
    man = fl.regions.get(ID2_MANIFEST)
    if man is None:
        r.add("flash.manifest", False, "the flash holds a SoC manifest (identifier 1)")
        return
    m = check_manifest2(ctx, bytes(man), "the manifest", keys, in_flash=True)
    if m is not None:
        check_images2(ctx, fl, list(m.entries))
        if a.cfg2 is not None:
            check_manifest2_vs_config(ctx, m, a.cfg2)
            check_flash2_vs_config(ctx, fl, a.cfg2)


def _config_bundle(ctx: Ctx) -> BundleKeys | None:
    """A manifest checked on its own with --cfg: the keys of the config's caliptra_file."""
    cfg = ctx.anchors.cfg
    if cfg is None or cfg.caliptra_file is None:
        return None
    try:
        data = cfg.caliptra_file.read_bytes()
    except OSError as exc:
        ctx.r.add("cfg.caliptra_file", False, "the config's caliptra_file", str(exc))
        return None
    keys = check_bundle(
        ctx, data, f"config caliptra_file {cfg.caliptra_file}", in_image=False, prefix="cfg_bundle"
    )
    if keys is not None:
        for k in keys.all():
            k.anchors.append(f"config caliptra_file {cfg.caliptra_file}")
    return keys


def _no_bundle(ctx: Ctx, in_flash: bool) -> None:
    """No Caliptra bundle anywhere (not in the file, not --caliptra-fw, not the config's): the
    fuses cannot be checked, and a flash image without one boots only where the config says
    the Caliptra firmware lives elsewhere."""
    a = ctx.anchors
    if a.fuses is not None:
        ctx.r.add(
            "bundle.fuse.vendor_pk_hash",
            False,
            "the running Caliptra bundle matches the fuses",
            "no Caliptra bundle to check the fuses against: give --caliptra-fw (the bundle "
            "the device runs)",
            a.fuses.source,
        )
    elif in_flash and ctx.check_signatures and a.cfg is None:
        ctx.r.add(
            "bundle.present",
            False,
            "the Caliptra firmware the device boots is known",
            "no bundle in the image: give --caliptra-fw (the bundle the device runs), or "
            '--cfg of a config with caliptra_file = ""',
        )


def _cfg_slots(ctx: Ctx) -> set[str] | None:
    cfg = ctx.anchors.cfg
    return None if cfg is None else planned_slots(ctx, cfg)


def _fw_keys(ctx: Ctx, keys: BundleKeys | None) -> FwKeys:
    """The FW keys the manifest verifies with: the running bundle's, or, where no bundle is
    known, the FW public keys of the config / key directory (anchored by those)."""
    if keys is not None:
        return FwKeys(keys.vendor_ecc, keys.vendor_lms, keys.owner_ecc, keys.owner_lms)
    fw = FwKeys()
    for party in ("vendor", "owner"):
        for algo in ("ecc", "lms"):
            for value, where in ctx.anchors.expected(f"{party}_fw", algo):
                setattr(fw, f"{party}_{algo}", Key(algo, value, where, [where]))
                break
    if not any((fw.vendor_ecc, fw.vendor_lms, fw.owner_ecc, fw.owner_lms)):
        ctx.r.note(
            "manifest.fw_keys",
            "no Caliptra bundle known",
            "the pubkey and SVN signatures need the running bundle's keys: give --caliptra-fw "
            "(or --cfg with caliptra_file, or --key-dir with the FW public keys)",
        )
    return fw


def _flash(ctx: Ctx, data: memoryview, a1: bool, trusted: BundleKeys | None) -> None:
    r, cfg = ctx.r, ctx.anchors.cfg
    base = flash.A1_FLSH_OFFSET if a1 else 0
    view = check_structure(ctx, data[base:])
    if view is None:
        return
    image_keys: BundleKeys | None = None
    out_bundle = None
    if a1:
        for ident in (flash.ID_CALIPTRA, flash.ID_MCU):
            reg = view.regions.get(ident)
            r.add(
                f"a1.flsh.{'caliptra' if ident == flash.ID_CALIPTRA else 'mcu'}_empty",
                reg is None or len(reg) == 0,
                f"the FLSH {'Caliptra' if ident == 1 else 'MCU'} entry is empty (the image is "
                "outside the FLSH)",
                f"{len(reg)} bytes" if reg is not None and len(reg) else "",
            )
        cal = data[: flash.A1_MCU_OFFSET]
        mcu = data[flash.A1_MCU_OFFSET : flash.A1_FLSH_OFFSET]
        out_bundle = (cal, mcu)
        if not is_zero(cal):
            image_keys = check_bundle(ctx, bytes(cal), "the bundle at 0x0", trailing="zero")
        else:
            r.skip("bundle.layout", "Caliptra bundle at 0x0", "the slot is all zero (no bundle)")
    else:
        cal = view.regions.get(flash.ID_CALIPTRA, memoryview(b""))
        if len(cal) and not is_zero(cal):
            image_keys = check_bundle(ctx, bytes(cal), "the bundle in the flash", trailing="pad4")
        else:
            r.skip(
                "bundle.layout",
                "Caliptra bundle in the flash",
                "the Caliptra entry is empty" if not len(cal) else "zero-filled Caliptra entry",
            )
    keys = image_keys or trusted or _config_bundle(ctx)
    if keys is None:
        _no_bundle(ctx, in_flash=True)
    man = view.regions.get(flash.ID_MANIFEST)
    if man is None:
        return
    m = check_manifest(
        ctx,
        bytes(man),
        "the manifest",
        _fw_keys(ctx, keys),
        in_flash=True,
        cfg_slots=_cfg_slots(ctx),
    )
    if m is None:
        return
    entries = m.entries
    mcu_region: memoryview | None
    if a1:
        mcu_all = data[flash.A1_MCU_OFFSET : flash.A1_FLSH_OFFSET]
        fw1 = next((e for e in entries if e.fw_id == 1), None)
        length = 0
        if fw1 is not None and fw1.digest != manifest.EMPTY_DIGEST:
            known = None
            if cfg is not None and cfg.mcu_file is not None and cfg.mcu_file.is_file():
                known = cfg.mcu_file.stat().st_size
            found = find_mcu(mcu_all, fw1.digest, known)
            length = found if found is not None else data_end(bytes(mcu_all))
        mcu_region = mcu_all[:length]
        r.add(
            "a1.mcu.padding",
            is_zero(mcu_all[length:]),
            "zero padding after the MCU runtime, up to the FLSH image at 0x100000",
        )
    else:
        mcu_region = view.regions.get(flash.ID_MCU)
    check_images(
        ctx,
        view,
        entries,
        mcu_region,
        "at 0x20000" if a1 else "flash id 3",
        ast2700=m.format is Format.ASPEED,
    )
    if cfg is not None:
        check_manifest_vs_config(ctx, m, cfg)
        check_flash_vs_config(ctx, m, cfg, view, out_bundle)


def _conclude(ctx: Ctx) -> None:
    r, a = ctx.r, ctx.anchors
    if not a.any:
        text = "no trust anchor given (--fuses, --cfg, --key-dir or --caliptra-fw)"
        if r.integrity_only:
            r.note("trust.anchor", "authenticity not checked (--integrity-only)", text)
        else:
            r.add("trust.anchor", False, "authenticity established", text)
        r.authentic = False
    else:
        loose = [(cid, k) for cid, k in ctx.used if not k.anchored]
        if loose:
            r.add(
                "trust.chain",
                False,
                "every signature verifies with a key an anchor vouches for",
                "; ".join(
                    f"{cid} used {k.origin}, which no anchor vouches for" for cid, k in loose
                ),
            )
        else:
            r.add(
                "trust.chain",
                True,
                "every signature verifies with a key an anchor vouches for",
                f"{len(ctx.used)} signatures" if ctx.used else "no signature is required here",
                ", ".join(a.names()),
            )
        r.authentic = not r.failures
    n = len(r.failures)
    if n:
        r.verdict = f"FAILED ({n} failed check{'s' if n != 1 else ''})"
    elif r.authentic:
        r.verdict = "PASS: the device would boot it, and it is what the anchors say"
    else:
        r.verdict = "integrity holds (structure, checksums, digests); authenticity not checked"
