"""FLSH v1 flash images and the AST2700 A1 out-bundle layout: structure, checksums, and that
every byte is accounted for (header, table, an image the manifest authorizes, the manifest, the
bundle, or defined padding)."""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass, field

from ..formats import flash1 as flash
from ..formats import manifest1 as manifest
from ..formats.manifest1 import ImcEntry
from .context import Ctx, is_zero

KNOWN_IDS = {
    flash.ID_CALIPTRA: "Caliptra bundle",
    flash.ID_MANIFEST: "SoC manifest",
    flash.ID_MCU: "MCU runtime",
}
MAX_MCU_TRAILING_ZEROS = 64 * 1024  # A1: how far past the last non-zero byte the MCU may end


def plausible_flsh(f: bytes | memoryview) -> bool:
    """A pinned v1 header and table that tile the rest of the file exactly (whatever the magic
    says): enough to call a file a flash image whose magic was damaged."""
    if len(f) < flash.HEADER_LEN + flash.ENTRY_LEN:
        return False
    version, count = struct.unpack_from("<HH", f, 4)
    if version != flash.VERSION or not 1 <= count <= flash.MAX_IMAGES:
        return False
    off: int = flash.HEADER_LEN + flash.ENTRY_LEN * int(count)
    if len(f) < off:
        return False
    for i in range(count):
        _, o, size = struct.unpack_from("<III", f, flash.HEADER_LEN + flash.ENTRY_LEN * i)
        if o != off:
            return False
        off += int(size)
    return off == len(f)


def _newer_flsh(f: bytes | memoryview) -> bool:
    """The later upstream layouts keep version 1 but put the first image elsewhere."""
    if len(f) < 28:
        return False
    count = int(struct.unpack_from("<H", f, 6)[0])
    first_off = int(struct.unpack_from("<I", f, 20)[0])
    return bool(first_off != 16 + 12 * count)


@dataclass
class FlashView:
    entries: list[flash.FlashEntry]
    regions: dict[int, memoryview] = field(default_factory=dict)  # identifier -> its bytes


def check_structure(ctx: Ctx, f: memoryview) -> FlashView | None:
    """Header, checksums, table and layout of the FLSH image ``f`` (starting at its header)."""
    r = ctx.r
    r.add("flash.magic", bytes(f[:4]) == flash.MAGIC, "FLSH magic", f"found {bytes(f[:4]).hex()}")
    if not r.add("flash.header", len(f) >= flash.HEADER_LEN, "complete header", f"{len(f)} bytes"):
        return None
    version, count = struct.unpack_from("<HH", f, 4)
    if not r.add(
        "flash.version",
        version == flash.VERSION,
        "version 1",
        f"version {version}: newer FLSH layouts are not supported yet" if version != 1 else "",
    ):
        return None
    if not r.add(
        "flash.count", 1 <= count <= flash.MAX_IMAGES, "image_count in 1..127", str(count)
    ):
        return None
    hcrc, pcrc = struct.unpack_from("<II", f, 8)
    want = flash.crc32(bytes(f[:8]))
    if not r.add(
        "flash.crc.header",
        hcrc == want,
        "header CRC-32 of bytes 0..7",
        f"stored 0x{hcrc:08x}, computed 0x{want:08x}",
    ) and _newer_flsh(f):
        r.add(
            "flash.layout.version",
            False,
            "pinned v1 layout (first image at 16 + 12 * count)",
            "looks like a later upstream layout (20-byte entries): not supported yet",
        )
        return None
    table_end = flash.HEADER_LEN + flash.ENTRY_LEN * count
    if not r.add("flash.table", len(f) >= table_end, "image table complete", f"{count} entries"):
        return None
    want = zlib.crc32(f[16:]) & 0xFFFFFFFF
    r.add(
        "flash.crc.payload",
        pcrc == want,
        "payload CRC-32 of bytes 16..end of file",
        f"stored 0x{pcrc:08x}, computed 0x{want:08x}",
    )
    entries = [
        flash.FlashEntry(*struct.unpack_from("<III", f, flash.HEADER_LEN + flash.ENTRY_LEN * i))
        for i in range(count)
    ]
    view = FlashView(entries)
    outside = [
        i for i, e in enumerate(entries) if e.offset + e.size > len(f) or e.offset < table_end
    ]
    bounds_ok = r.add(
        "flash.entries.bounds",
        not outside,
        "every image lies after the table, within the file",
        f"entries {outside[:5]} do not" if outside else "",
    )
    odd = [i for i, e in enumerate(entries) if e.size % 4]
    r.add(
        "flash.entries.align",
        not odd,
        "every image size is a multiple of 4",
        f"entries {odd[:5]} are not" if odd else "",
    )
    off, gaps = table_end, []
    for i, e in enumerate(entries):
        if e.offset != off:
            gaps.append(i)
        off = e.offset + e.size
    r.add(
        "flash.layout",
        not gaps and off == len(f),
        "images follow the table and each other with no gap or overlap, up to the end of file",
        (f"entries {gaps[:5]} do not start where the previous ends; " if gaps else "")
        + f"last image ends at 0x{off:x}, file is 0x{len(f):x}",
    )
    ids = [e.identifier for e in entries]
    soc = [i for i in ids if i >= flash.SOC_ID_BASE]
    unknown = [i for i in ids if i not in KNOWN_IDS and i < flash.SOC_ID_BASE]
    r.add(
        "flash.ids.known",
        not unknown,
        "only known identifiers (1, 2, 3, 0x1000 + i)",
        ", ".join(f"0x{i:x}" for i in unknown),
    )
    for ident, name in KNOWN_IDS.items():
        r.add(
            f"flash.ids.{name.split()[-1].lower()}",
            ids.count(ident) == 1,
            f"exactly one {name} entry (id {ident})",
            f"{ids.count(ident)} found",
        )
    r.add(
        "flash.ids.soc",
        soc == list(range(flash.SOC_ID_BASE, flash.SOC_ID_BASE + len(soc))),
        "SoC identifiers are 0x1000, 0x1001, ... in order",
        ", ".join(f"0x{i:x}" for i in soc[:20]),
    )
    if not bounds_ok:
        return None
    for e in entries:
        view.regions.setdefault(e.identifier, f[e.offset : e.offset + e.size])
    return view


def padded_sha384(data: bytes | memoryview) -> bytes:
    h = hashlib.sha384(data)
    h.update(bytes(-len(data) % 4))
    return h.digest()


_ZERO_BLOCK = bytes(4096)


def data_end(raw: bytes) -> int:
    """One past the last non-zero byte (block compares: mostly-zero regions are large)."""
    end = len(raw)
    while end >= len(_ZERO_BLOCK) and raw[end - len(_ZERO_BLOCK) : end] == _ZERO_BLOCK:
        end -= len(_ZERO_BLOCK)
    return len(raw[:end].rstrip(b"\0"))


def find_mcu(region: memoryview, digest: bytes, known: int | None = None) -> int | None:
    """A1: the raw MCU runtime at 0x20000 has no length field; find the padded length whose
    SHA-384 is the manifest's fw_id 1 digest (the image ends in the region's zero padding).
    ``known``: the length the config gives (mcu_file), tried first."""
    if known is not None:
        n = known + (-known % 4)
        if n <= len(region) and padded_sha384(region[:known]) == digest:
            return n
    raw = bytes(region)
    end = data_end(raw)
    length = end + (-end % 4)
    h = hashlib.sha384(raw[:length])
    zero4 = bytes(4)
    stop = min(len(raw), length + MAX_MCU_TRAILING_ZEROS)
    while length <= stop:
        if h.copy().digest() == digest:
            return length
        h.update(zero4)
        length += 4
    return None


BOOTMCU_LAST_ID = 0x100C  # the BootMCU's fixed identifier table ends at fw_id 14
IROT_LAST_ID = 0x100D  # the iRoT app adds fw_id 15


def check_images(
    ctx: Ctx,
    view: FlashView,
    entries: list[ImcEntry],
    mcu: memoryview | None,
    mcu_where: str,
    *,
    ast2700: bool = True,
) -> None:
    """Every SoC image maps to an IMC entry with its digest; every IMC entry that authorizes
    a non-empty image has it in the flash; the MCU runtime matches fw_id 1."""
    r = ctx.r
    by_fw = {e.fw_id: e for e in entries}
    in_flash: set[int] = set()
    for e in view.entries:
        if e.identifier < flash.SOC_ID_BASE:
            continue
        fw_id = flash.soc_fw_id(e.identifier)
        in_flash.add(fw_id)
        cid = f"image.{fw_id}"
        imc = by_fw.get(fw_id)
        if imc is None:
            r.add(
                f"{cid}.authorized",
                False,
                f"flash image 0x{e.identifier:x} has a manifest entry (fw_id {fw_id})",
                "the manifest does not authorize it",
            )
            continue
        if ast2700 and e.size and e.identifier > BOOTMCU_LAST_ID:
            ok = e.identifier == IROT_LAST_ID and imc.load_stage == 2
            r.add(
                f"{cid}.loadable",
                ok,
                f"flash image 0x{e.identifier:x} is in an AST2700 reader's identifier table",
                "loaded by the iRoT app (load_stage 2)"
                if ok
                else "the BootMCU's table ends at 0x100c (fw_id 14) and the iRoT app's at "
                f"0x100d (fw_id 15, load_stage 2); load_stage {imc.load_stage}",
            )
        got = (
            hashlib.sha384(view.regions[e.identifier]).digest() if e.size else manifest.EMPTY_DIGEST
        )
        r.add(
            f"{cid}.digest",
            got == imc.digest,
            f"flash image 0x{e.identifier:x} has the manifest digest of fw_id {fw_id}",
            f"{e.size} bytes" + ("" if got == imc.digest else f", SHA-384 {got.hex()[:16]}..."),
        )
    for imc in entries:
        if imc.fw_id == 1 or imc.fw_id in in_flash:
            continue
        empty = imc.digest == manifest.EMPTY_DIGEST
        if empty or imc.ignore_auth_check:
            r.skip(
                f"image.{imc.fw_id}.present",
                f"fw_id {imc.fw_id} is in the flash",
                "empty image" if empty else "ignore_auth_check set: not loaded from this flash",
            )
            continue
        r.add(
            f"image.{imc.fw_id}.present",
            False,
            f"fw_id {imc.fw_id} is in the flash",
            f"no flash image 0x{flash.SOC_ID_BASE + imc.fw_id - 2:x} for it",
        )
    mcu_entry = by_fw.get(1)
    if mcu is None:
        return
    if mcu_entry is None:
        r.add(
            "image.1.digest",
            is_zero(mcu),
            f"MCU runtime ({mcu_where}) is empty: the manifest has no fw_id 1",
            "" if is_zero(mcu) else f"{len(mcu)} bytes",
        )
        return
    got = hashlib.sha384(mcu).digest() if len(mcu) else manifest.EMPTY_DIGEST
    r.add(
        "image.1.digest",
        got == mcu_entry.digest,
        f"MCU runtime ({mcu_where}) has the manifest digest of fw_id 1",
        f"{len(mcu)} bytes",
    )
