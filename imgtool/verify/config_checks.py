"""`verify --cfg C`: the image is what config C builds. The header, manifest keys, IMC and the
flash content must be the config's, and every signature slot the config fills must be filled
(and every slot it leaves empty, empty); the signatures themselves are checked by the manifest
checks under the policy."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from .. import build
from ..config import Config, Format
from ..errors import ImgtoolError
from ..formats.flash1 import FlashItem
from ..formats.manifest1 import SIG_SLOTS, Manifest
from .context import Ctx, is_zero
from .flash_checks import FlashView, padded_sha384


class _Quiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


def _plan(cfg: Config) -> build.Plan:
    """build.plan without its build-time warnings (incomplete key sets) on stderr."""
    log = logging.getLogger("imgtool")
    quiet = _Quiet()
    log.addFilter(quiet)
    try:
        return build.plan(cfg)
    finally:
        log.removeFilter(quiet)


def planned_slots(ctx: Ctx, cfg: Config) -> set[str] | None:
    """The signature slots the config fills (None, with a FAIL, when it cannot be planned)."""
    if "planned" not in ctx.memo:
        try:
            ctx.memo["planned"] = {sp.slot for sp in _plan(cfg).slots}
        except ImgtoolError as exc:
            ctx.r.add("cfg.sig", False, "signature slots of the config", str(exc))
            ctx.memo["planned"] = None
    slots: set[str] | None = ctx.memo["planned"]
    return slots


def check_manifest_vs_config(ctx: Ctx, m: Manifest, cfg: Config) -> None:
    r = ctx.r
    src = f"config {cfg.path}"
    r.add(
        "cfg.format", m.format is cfg.format, "manifest format", f"{m.format} vs {cfg.format}", src
    )
    r.add("cfg.version", m.version == cfg.version, "version", f"{m.version} vs {cfg.version}", src)
    r.add(
        "cfg.flags", m.flags == cfg.stored_flags, "flags", f"{m.flags} vs {cfg.stored_flags}", src
    )
    if m.format is Format.ASPEED:
        r.add(
            "cfg.security_version",
            m.sec_ver == cfg.security_version,
            "security_version",
            f"{m.sec_ver} vs {cfg.security_version}",
            src,
        )
    try:
        skel = build.skeleton(cfg)
    except ImgtoolError as exc:
        r.add("cfg.keys", False, "manifest keys are the config's", str(exc), src)
    else:
        diff = [
            f
            for f in ("vnd_man_ecc_pub", "vnd_man_lms_pub", "own_man_ecc_pub", "own_man_lms_pub")
            if getattr(m, f) != getattr(skel, f)
        ]
        r.add(
            "cfg.keys",
            not diff,
            "manifest keys are the config's",
            f"{', '.join(diff)} differ" if diff else "",
            src,
        )
    entries = m.entries
    r.add(
        "cfg.imc.count",
        len(entries) == len(cfg.images),
        "IMC entry count",
        f"{len(entries)} vs {len(cfg.images)}",
        src,
    )
    for img, e in zip(cfg.images, entries, strict=False):
        name = img.file or "(empty)"
        r.add(
            f"cfg.imc.{img.index}.entry",
            (e.fw_id, e.flags) == (img.fw_id, img.flags),
            f"IMC entry {img.index} fw_id and flags ({name})",
            f"fw_id {e.fw_id} flags 0x{e.flags:08x}, config {img.fw_id} 0x{img.flags:08x}",
            src,
        )
        if m.format is Format.ASPEED and img.load_stage == 2 and img.path is not None:
            try:
                size = img.path.stat().st_size
            except OSError as exc:
                size = -1
                detail = f"{img.path}: {exc.strerror}"
            else:
                size += -size % img.align if img.align else 0
                detail = f"{size} bytes"
            r.add(
                f"cfg.imc.{img.index}.irot_length",
                size >= 0 and size % 4 == 0,
                f"{name} (load_stage 2) is a multiple of 4 bytes: the iRoT app hashes it "
                "unpadded, the manifest digest is of the zero-padded file",
                detail,
                src,
            )
        try:
            digest = build.image_digest(img)
        except ImgtoolError as exc:
            r.add(f"cfg.imc.{img.index}.digest", False, f"IMC entry {img.index} digest", str(exc))
            continue
        r.add(
            f"cfg.imc.{img.index}.digest",
            e.digest == digest,
            f"IMC entry {img.index} digest is that of {name}",
            "" if e.digest == digest else "differs from the file",
            src,
        )
    planned = planned_slots(ctx, cfg)
    if planned is None:
        return
    for slot in SIG_SLOTS:
        if slot.startswith("own_svn") and m.format is not Format.ASPEED:
            continue
        filled = any(getattr(m, slot))
        want = slot in planned
        r.add(
            f"cfg.sig.{slot}",
            filled == want,
            f"{slot} is {'filled' if want else 'empty'} as the config makes it",
            "" if filled == want else ("empty" if want else "filled"),
            src,
        )


def _item_digest(item: FlashItem) -> tuple[int, bytes] | str:
    """(padded size, SHA-384 of the padded content) of an expected flash item, or an error."""
    if item.data is not None:
        return len(item.data) + (-len(item.data) % 4), padded_sha384(item.data)
    if item.path is None:
        return 0, hashlib.sha384(b"").digest()
    try:
        data = Path(item.path).read_bytes()
    except OSError as exc:
        return f"{item.path}: {exc.strerror}"
    return len(data) + (-len(data) % 4), padded_sha384(data)


def check_flash_vs_config(
    ctx: Ctx,
    m: Manifest,
    cfg: Config,
    view: FlashView,
    out_bundle: tuple[memoryview, memoryview] | None,
) -> None:
    """The flash holds exactly the images the config lists, in its order."""
    r = ctx.r
    src = f"config {cfg.path}"
    r.add(
        "cfg.layout",
        cfg.cptra_out_bundle == (out_bundle is not None),
        "layout (cptra_out_bundle)",
        f"image is {'an A1 out-bundle' if out_bundle else 'a plain FLSH image'}, config says "
        f"cptra_out_bundle = {str(cfg.cptra_out_bundle).lower()}",
        src,
    )
    try:
        items, expect_out = build.flash_items(cfg, m)
    except ImgtoolError as exc:
        r.add("cfg.flash", False, "flash images are the config's", str(exc), src)
        return
    r.add(
        "cfg.flash.count",
        len(items) == len(view.entries),
        "number of flash images",
        f"{len(view.entries)} vs {len(items)}",
        src,
    )
    for i, (item, e) in enumerate(zip(items, view.entries, strict=False)):
        cid = f"cfg.flash.{i}"
        what = f"flash image {i} (id 0x{item.identifier:x}) is {item.name or 'empty'}"
        if e.identifier != item.identifier:
            r.add(cid, False, what, f"identifier 0x{e.identifier:x}", src)
            continue
        if item.identifier == 2:
            continue  # the manifest itself: checked above
        want = _item_digest(item)
        if isinstance(want, str):
            r.add(cid, False, what, want, src)
            continue
        got = hashlib.sha384(view.regions[e.identifier]).digest() if e.size else want[1]
        r.add(cid, (e.size, got) == want, what, f"{e.size} bytes, config {want[0]}", src)
    if expect_out is not None and out_bundle is not None:
        for name, item, region in (
            ("caliptra", expect_out[0], out_bundle[0]),
            ("mcu", expect_out[1], out_bundle[1]),
        ):
            want = _item_digest(item)
            what = f"A1 {name} region holds {item.path or 'nothing'} and zero padding"
            if isinstance(want, str):
                r.add(f"cfg.a1.{name}", False, what, want, src)
                continue
            size = want[0]
            ok = padded_sha384(region[:size]) == want[1] and is_zero(region[size:])
            r.add(f"cfg.a1.{name}", ok, what, f"{size} bytes", src)
