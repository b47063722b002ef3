"""Caliptra 2.x flash image (FLSH v1 with 20-byte entries and byte-sum checksums, the layout of
caliptra-mcu-sw main-2.1 as ASPEED's xtask-2x writes it; spec/caliptra2.md) and fw_toc.bin
(ATOC): structure, checksums, layout without gaps, identifiers, and the images against the
manifest's IMC digests (MCU runtime fw_id 2 = identifier 2; SoC images fw_id 0x1000 + i =
identifier 0x1000 + i).

Image digests: an IMC digest must equal SHA-384 of the image as stored in the flash (zero-padded
to 4) or of the image without that padding (the unpadded file; which one a loader hashes is the
SoC's, so either is accepted and the report says which matched).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from .context import Ctx

MAGIC = b"FLSH"
TOC_MAGIC = 0x434F5441
HEADER_LEN = 16
ENTRY_LEN = 20
ID_CALIPTRA, ID_MANIFEST, ID_MCU = 0, 1, 2
SOC_BASE = 0x1000
TOC_SLOTS = 32
TOC_NAMES_OFF = HEADER_LEN + ENTRY_LEN * TOC_SLOTS  # 656
TOC_LEN = TOC_NAMES_OFF + 64 * TOC_SLOTS  # 2704


def neg_sum(b: bytes | memoryview) -> int:
    return -sum(bytes(b)) & 0xFFFFFFFF


def is_flash2(data: bytes | memoryview) -> bool:
    """FLSH v1 whose header checksum is the 2.x byte sum (1.x uses CRC-32) and whose table
    starts at 16."""
    if len(data) < HEADER_LEN or bytes(data[:4]) != MAGIC:
        return False
    version, _, table, csum = struct.unpack_from("<HHII", data, 4)
    return bool(version == 1 and table == HEADER_LEN and csum == neg_sum(data[:12]))


@dataclass
class Flash2:
    entries: list[tuple[int, int, int, int, int]]  # identifier, offset, size, image sum, entry sum
    regions: dict[int, memoryview]


def check_flash2_structure(ctx: Ctx, data: memoryview) -> Flash2 | None:
    r = ctx.r
    if not r.add("flash.magic", bytes(data[:4]) == MAGIC, "FLSH magic"):
        return None
    version, count, table, csum = struct.unpack_from("<HHII", data, 4)
    r.add("flash.version", version == 1, "version 1", str(version))
    r.add("flash.table_offset", table == HEADER_LEN, "image headers at offset 16", str(table))
    r.add(
        "flash.checksum.header",
        csum == neg_sum(data[:12]),
        "header checksum (0 - byte sum of bytes 0..12)",
    )
    end_table = HEADER_LEN + ENTRY_LEN * count
    if not r.add(
        "flash.table", end_table <= len(data), f"{count} entries fit the file", f"{len(data)} bytes"
    ):
        return None
    entries = []
    regions: dict[int, memoryview] = {}
    expect = end_table
    bad_entry, bad_image, gaps = [], [], []
    for i in range(count):
        o = HEADER_LEN + ENTRY_LEN * i
        ident, off, size, isum, esum = struct.unpack_from("<5I", data, o)
        entries.append((ident, off, size, isum, esum))
        if esum != neg_sum(data[o : o + 16]):
            bad_entry.append(i)
        if off != expect or size % 4 or off + size > len(data):
            gaps.append(f"{ident:#x} at {off} ({size} bytes), expected at {expect}")
        elif isum != neg_sum(data[off : off + size]):
            bad_image.append(f"{ident:#x}")
        regions[ident] = data[off : off + size]
        expect = off + size
    r.add("flash.checksum.entries", not bad_entry, "entry checksums", f"entries {bad_entry}")
    r.add("flash.checksum.images", not bad_image, "image checksums", ", ".join(bad_image))
    r.add(
        "flash.layout",
        not gaps and expect == len(data),
        "images follow the table without gaps, each a multiple of 4, to the end of the file",
        "; ".join(gaps) or f"ends at {expect} of {len(data)}",
    )
    ids = [e[0] for e in entries]
    want = [ID_CALIPTRA, ID_MANIFEST, ID_MCU] + [SOC_BASE + i for i in range(max(0, count - 3))]
    r.add(
        "flash.identifiers",
        ids == want,
        "identifiers 0 (Caliptra), 1 (manifest), 2 (MCU), then 0x1000, 0x1001, ... in order",
        ", ".join(f"{i:#x}" for i in ids),
    )
    return Flash2(entries, regions)


def check_images2(ctx: Ctx, view: Flash2, entries: list[object]) -> None:
    """Each IMC entry's digest against the flash image of its fw_id; the IMC's fw_ids are
    exactly the flash's image identifiers (2 for the MCU runtime, 0x1000 + i for the SoC
    images, in the flash's order): no IMC entry without its image, no image without its entry,
    and never fw_id 0 or 1 (the Caliptra bundle and the manifest are no IMC images)."""
    r = ctx.r
    by_id = {e.fw_id: e for e in entries}  # type: ignore[attr-defined]
    imc_ids = [e.fw_id for e in entries]  # type: ignore[attr-defined]
    flash_ids = [e[0] for e in view.entries if e[0] not in (ID_CALIPTRA, ID_MANIFEST)]
    reserved = [f"{i:#x}" for i in imc_ids if i in (ID_CALIPTRA, ID_MANIFEST)]
    r.add(
        "flash.imc.fw_ids",
        not reserved and imc_ids == flash_ids,
        "the IMC's fw_ids are the flash's image identifiers in order (2 = MCU runtime, "
        "0x1000 + i = SoC image i; never 0 or 1)",
        "IMC "
        + (", ".join(f"{i:#x}" for i in imc_ids) or "empty")
        + ", flash "
        + (", ".join(f"{i:#x}" for i in flash_ids) or "none")
        + (f"; fw_id {', '.join(reserved)} is not an image" if reserved else ""),
    )
    for ident, region in view.regions.items():
        if ident in (ID_CALIPTRA, ID_MANIFEST):
            continue
        e = by_id.get(ident)
        name = "MCU runtime" if ident == ID_MCU else f"SoC image {ident - SOC_BASE}"
        if e is None:
            r.add(
                f"flash.image.{ident:#x}.imc",
                False,
                f"{name} (identifier {ident:#x}) has an IMC entry",
                f"{len(region)} bytes, no IMC entry with fw_id {ident:#x}",
            )
            continue
        padded = hashlib.sha384(region).digest()
        stripped = bytes(region).rstrip(b"\0")
        cut = bytes(region)[: max(len(stripped), len(region) - 3)]
        unpadded = hashlib.sha384(cut).digest()
        digest = e.digest  # type: ignore[attr-defined]
        how = "padded to 4" if digest == padded else "unpadded" if digest == unpadded else ""
        r.add(
            f"flash.image.{ident:#x}.digest",
            bool(how),
            f"{name} matches its IMC digest (fw_id {ident:#x})",
            f"{len(region)} bytes" + (f", SHA-384 {how}" if how else ": differs"),
        )
    present = set(view.regions) - {ID_CALIPTRA, ID_MANIFEST}
    missing = [f"{i:#x}" for i in by_id if i not in present]
    r.add(
        "flash.imc.images_present",
        not missing,
        "every IMC entry's image is in the flash",
        "missing " + ", ".join(missing) if missing else "",
    )


@dataclass
class TocEntry:
    identifier: int
    size: int
    image_checksum: int
    name: str


def check_fw_toc(ctx: Ctx, toc: memoryview, prefix: str = "toc") -> list[TocEntry] | None:
    """fw_toc.bin on its own: header, at most 32 entries with their name-slot offsets and
    checksums, NUL-padded base names, unused slots zero. Returns the entries (None when the
    file cannot be read as a fw_toc)."""
    r = ctx.r
    if not r.add(f"{prefix}.length", len(toc) == TOC_LEN, f"{TOC_LEN} bytes", f"{len(toc)} bytes"):
        return None
    magic, version, count, table, csum = struct.unpack_from("<IHHII", toc, 0)
    r.add(f"{prefix}.magic", magic == TOC_MAGIC, "ATOC magic")
    r.add(f"{prefix}.header", (version, table) == (1, HEADER_LEN), "version 1, entries at 16")
    r.add(f"{prefix}.checksum.header", csum == neg_sum(toc[:12]), "header checksum")
    r.add(
        f"{prefix}.count",
        count <= TOC_SLOTS,
        f"image count fits the {TOC_SLOTS} entry slots",
        f"{count} images",
    )
    bad, names = [], []
    out: list[TocEntry] = []
    for i in range(TOC_SLOTS):
        o = HEADER_LEN + ENTRY_LEN * i
        name = bytes(toc[TOC_NAMES_OFF + 64 * i : TOC_NAMES_OFF + 64 * (i + 1)])
        if i >= count:
            if any(toc[o : o + 20]) or any(name):
                bad.append(f"slot {i} not empty")
            continue
        ident, off, size, isum, esum = struct.unpack_from("<5I", toc, o)
        text = name.rstrip(b"\0")
        if off != TOC_NAMES_OFF + 64 * i:
            bad.append(f"slot {i} offset {off}")
        if esum != neg_sum(toc[o : o + 16]):
            bad.append(f"slot {i} checksum")
        if (
            not text
            or text in (b".", b"..")
            or b"\0" in text
            or b"/" in text
            or b"\\" in text
            or len(text) >= 64
        ):  # a base name a reader can open beside the flash image, nothing else
            bad.append(f"slot {i} name")
        label = text.decode(errors="replace")
        names.append(f"{ident:#x}={label}")
        out.append(TocEntry(ident, size, isum, label))
    r.add(
        f"{prefix}.entries",
        not bad,
        "entries, name offsets and names",
        "; ".join(bad) or ", ".join(names),
    )
    return out


def check_fw_toc_vs_flash(
    ctx: Ctx, toc: list[TocEntry], fl: Flash2, names: list[str] | None = None
) -> None:
    """A fw_toc written beside this flash image: one entry per flash entry, in order, with the
    flash entry's identifier, size and image checksum; with ``names`` (what the config's build
    records), the names too."""
    r = ctx.r
    diff = []
    if len(toc) != len(fl.entries):
        diff.append(f"{len(toc)} entries, the flash has {len(fl.entries)}")
    for i, (t, (ident, _off, size, isum, _esum)) in enumerate(zip(toc, fl.entries, strict=False)):
        for what, got, want in (
            ("identifier", t.identifier, ident),
            ("size", t.size, size),
            ("image checksum", t.image_checksum, isum),
        ):
            if got != want:
                diff.append(f"entry {i} {what} {got:#x}, flash {want:#x}")
    r.add(
        "fw_toc.flash",
        not diff,
        "the fw_toc's entries are the flash image's (identifier, size, image checksum)",
        "; ".join(diff[:6]) or f"{len(toc)} entries",
    )
    if names is not None:  # "": a name the config does not fix (the manifest's output file)
        toc_names = [t.name for t in toc]
        bad = [
            f"entry {i} {g!r}, the config's {w!r}"
            for i, (g, w) in enumerate(zip(toc_names, names, strict=False))
            if w and g != w
        ]
        if len(toc_names) != len(names):
            bad.append(f"{len(toc_names)} names, the config has {len(names)}")
        r.add(
            "fw_toc.names",
            not bad,
            "the fw_toc's names are the config's files",
            "; ".join(bad) or ", ".join(toc_names),
        )
