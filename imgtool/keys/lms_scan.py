"""Find the LMS leaves a key has already used in existing SoC manifests, flash images and
Caliptra firmware bundles (for ``lms-status KEY --init --scan out/*.bin``).

Every non-zero LMS slot is considered: the manifest's vendor/owner pubkey, owner SVN (ASPEED:
q stored little-endian) and IMC signatures, the Caliptra bundle's vendor and owner signatures,
and the manifest and bundle inside a FLSH flash image (also the AST2700 A1 layout with the FLSH
image at 0x100000). A slot counts for the key when its types match and its authentication path
equals the key's own tree nodes for that q: that proves the leaf belongs to this key without
knowing which message it signed (a slot whose covered bytes were edited afterwards still counts).
Both byte orders of q are tried, so a writer that got the SVN slot's byte order wrong is still
caught.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from ..config import Format
from ..errors import FormatError
from ..formats import bundle1 as bundle
from ..formats import flash1 as flash
from ..formats import manifest1 as manifest
from .lms import LMOTS_PARAMS, LMS_HEIGHTS, SLOT_LEN, LmsPublicKey, auth_path, slot_to_sig

MAX_SCAN_BYTES = 1 << 30
A1_FLSH = flash.A1_FLSH_OFFSET


@dataclass(frozen=True)
class UsedLeaf:
    path: str
    where: str
    q: int


def _manifest_slots(data: bytes, where: str) -> list[tuple[str, bytes]]:
    m = manifest.Manifest.parse(data, where)
    return [
        (f"{where} {name}", getattr(m, name))
        for name in manifest.SIG_SLOTS
        if name.endswith("_lms")
        and hasattr(m, name)
        and (m.format is Format.ASPEED or name != "own_svn_sig_lms")
    ]


def _bundle_slots(data: bytes, where: str) -> list[tuple[str, bytes]]:
    b = bundle.parse_bundle(data, where)
    return [
        (f"{where} vendor LMS signature", b.vendor_lms_sig),
        (f"{where} owner LMS signature", b.owner_lms_sig),
    ]


def _flsh_slots(data: bytes, where: str) -> list[tuple[str, bytes]]:
    hdr = flash.parse_header(data, where)
    out: list[tuple[str, bytes]] = []
    for i, e in enumerate(hdr.entries):
        if e.size == 0:
            continue
        if e.offset < hdr.table_end or e.offset + e.size > len(data):
            raise FormatError(
                f"{where}: image {i} (identifier {e.identifier:#x}) lies outside the file"
            )
        part = data[e.offset : e.offset + e.size]
        if e.identifier == flash.ID_MANIFEST:
            # the FLSH entry is padded to 4 bytes: both manifest layouts are multiples of 4
            out += _manifest_slots(part, f"{where} image {i} (SoC manifest)")
        elif e.identifier == flash.ID_CALIPTRA and part[:4] == bundle.MARKER:
            out += _bundle_slots(part, f"{where} image {i} (Caliptra bundle)")
    return out


def lms_slots(data: bytes, source: str) -> list[tuple[str, bytes]]:
    """(description, 1620-byte slot) of every LMS signature slot in a file. Raises FormatError
    when the file is none of the formats above."""
    if data[:4] == flash.MAGIC:
        return _flsh_slots(data, source)
    if len(data) >= A1_FLSH + flash.HEADER_LEN and data[A1_FLSH : A1_FLSH + 4] == flash.MAGIC:
        out = _flsh_slots(data[A1_FLSH:], f"{source} @0x{A1_FLSH:x}")
        if data[:4] == bundle.MARKER:
            out += _bundle_slots(data[:A1_FLSH], f"{source} @0x0 (Caliptra bundle)")
        return out
    if data[:4] in (bundle.MARKER, bundle.MARKER_2X):
        return _bundle_slots(data, source)
    if len(data) in (manifest.ASPEED_LEN, manifest.CALIPTRA1_LEN) or (
        len(data) >= 4
        and struct.unpack_from("<I", data)[0] in (manifest.MARKER, manifest.MARKER_2X)
    ):
        return _manifest_slots(data, source)
    raise FormatError(f"{source}: not a SoC manifest, flash image or Caliptra firmware bundle")


def leaf_of(slot: bytes, pub: LmsPublicKey, nodes: list[bytes]) -> int | None:
    """The q at which ``pub``'s key made this slot's signature, or None when it is not one of
    the key's signatures (wrong types, another key, empty, garbage)."""
    if len(slot) != SLOT_LEN or not any(slot):
        return None
    (ots_type,) = struct.unpack_from(">I", slot, 4)
    (lms_type,) = struct.unpack_from(">I", slot, 1256)
    if (lms_type, ots_type) != (pub.lms_type, pub.ots_type):
        return None
    if lms_type not in LMS_HEIGHTS or ots_type not in LMOTS_PARAMS:
        return None
    try:
        sig = slot_to_sig(slot)
    except FormatError:
        return None
    h = pub.height
    path = sig[len(sig) - h * 24 :]
    be: int = struct.unpack_from(">I", slot)[0]
    le: int = struct.unpack_from("<I", slot)[0]
    for q in dict.fromkeys((be, le)):
        if q < (1 << h) and b"".join(auth_path(nodes, h, q)) == path:
            return q
    return None


def used_leaves(paths: list[str | Path], pub: LmsPublicKey, nodes: list[bytes]) -> list[UsedLeaf]:
    """Every leaf of the key used in these files (raises FormatError naming a bad file)."""
    found: list[UsedLeaf] = []
    for p in paths:
        path = Path(p)
        try:
            size = path.stat().st_size
            if size > MAX_SCAN_BYTES:
                raise FormatError(f"{path}: {size} bytes: larger than any image this tool writes")
            data = path.read_bytes()
        except FileNotFoundError:
            raise FormatError(f"{path}: --scan: file not found") from None
        except IsADirectoryError:
            raise FormatError(f"{path}: --scan: a directory, not an image") from None
        except OSError as exc:
            raise FormatError(f"{path}: --scan: cannot read ({exc.strerror})") from None
        for where, slot in lms_slots(data, str(path)):
            q = leaf_of(slot, pub, nodes)
            if q is not None:
                found.append(UsedLeaf(str(path), where, q))
    return found
