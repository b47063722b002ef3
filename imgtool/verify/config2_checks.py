"""`verify --cfg C` for Caliptra 2.x: the file is what 2.x config C builds (imgtool.config2,
imgtool.build2). The manifest's version, svn, flags and IMC (every entry, digests of the
config's files included) must be the config's, and every flash image the config's file; the
manifest and bundle keys are compared with the config's key files where they are checked
(manifest2_checks, bundle2_checks), so that the config anchors them."""

from __future__ import annotations

from typing import Any

from ..errors import ImgtoolError
from .context import Ctx
from .flash2_checks import ID_MANIFEST, Flash2


def _src(cfg2: Any) -> str:
    return f"config {cfg2.path}"


def check_manifest2_vs_config(ctx: Ctx, m: Any, cfg2: Any) -> None:
    from ..build2 import build_imc2
    from ..formats import manifest2 as m2

    r, src = ctx.r, _src(cfg2)
    r.add(
        "cfg.version", m.version == cfg2.version, "version", f"{m.version} vs {cfg2.version}", src
    )
    r.add("cfg.svn", m.svn == cfg2.svn, "svn (security_version)", f"{m.svn} vs {cfg2.svn}", src)
    want_flags = cfg2.flags & m2.FLAG_VENDOR_IMC_SIG_REQUIRED
    r.add("cfg.flags", m.flags == want_flags, "flags", f"{m.flags} vs {want_flags}", src)
    try:
        imc = build_imc2(cfg2)
    except (ImgtoolError, OSError) as exc:
        r.add("cfg.imc", False, "the IMC is the config's", str(exc), src)
        return
    got = m.imc()
    if got == imc:
        r.add("cfg.imc", True, "the IMC is the config's", f"{m.count} entries", src)
        return
    want = m2.Imc2.parse(imc).entries
    diff = []
    if m.count != len(want):
        diff.append(f"{m.count} entries, the config has {len(want)}")
    for i, (e, w) in enumerate(zip(m.entries, want, strict=False)):
        for name in ("fw_id", "component_id", "classification", "flags", "digest"):
            if getattr(e, name) != getattr(w, name):
                diff.append(f"entry {i} {name}")
        if (e.load_address, e.staging_address) != (w.load_address, w.staging_address):
            diff.append(f"entry {i} addresses")
    r.add(
        "cfg.imc",
        False,
        "the IMC is the config's",
        "; ".join(diff[:6]) or "unused entries differ",
        src,
    )


def _parts(cfg2: Any) -> list[tuple[int, bytes]] | str:
    from ..build2 import flash2_parts

    try:
        parts, _ = flash2_parts(cfg2, b"", "")
    except (ImgtoolError, OSError) as exc:
        return str(exc)
    return parts


def flash2_names(cfg2: Any) -> list[str] | None:
    """The fw_toc names the config's build records (the manifest's, which is the output file's
    name, as ""): None when the config's files cannot be read."""
    from ..build2 import flash2_parts

    try:
        _, names = flash2_parts(cfg2, b"", "")
    except (ImgtoolError, OSError):
        return None
    return names


def check_flash2_vs_config(ctx: Ctx, fl: Flash2, cfg2: Any) -> None:
    r, src = ctx.r, _src(cfg2)
    parts = _parts(cfg2)
    if isinstance(parts, str):
        r.add("cfg.flash", False, "the flash images are the config's files", parts, src)
        return
    want_ids = [i for i, _ in parts]
    got_ids = [e[0] for e in fl.entries]
    diff = []
    if got_ids != want_ids:
        diff.append(
            "identifiers "
            + ", ".join(f"{i:#x}" for i in got_ids)
            + " vs "
            + ", ".join(f"{i:#x}" for i in want_ids)
        )
    for ident, data in parts:
        if ident == ID_MANIFEST:
            continue
        region = fl.regions.get(ident)
        want = data + bytes(-len(data) % 4)
        if region is not None and bytes(region) != want:
            diff.append(f"{ident:#x} differs")
    r.add(
        "cfg.flash",
        not diff,
        "the flash images are the config's files (Caliptra bundle, MCU runtime, SoC images)",
        "; ".join(diff[:6]) or f"{len(parts) - 1} images",
        src,
    )
