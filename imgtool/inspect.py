"""Describe a flash image, SoC manifest or Caliptra bundle as plain data (JSON) or a table.

The JSON layout is documented in docs/inspect-json.md and kept stable.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

from . import fuses
from .config import SVN_MAX, SVN_SHIFT, Config, Format, VendorSignature
from .errors import FormatError
from .formats import bundle1 as bundle_mod
from .formats import bundle2 as bundle2_mod
from .formats import flash1 as flash
from .formats import manifest1 as manifest
from .formats.manifest1 import Manifest
from .keys import lms
from .keys.key_match import fingerprint
from .verify import (
    KIND_A1,
    KIND_BUNDLE,
    KIND_BUNDLE2,
    KIND_FLASH,
    KIND_FLASH2,
    KIND_MAN2,
    KIND_MAN_1X,
    KIND_MAN_ASPEED,
    KIND_TOC,
    RUNTIME_2X,
    detect,
)

SCHEMA = 1
FLASH_NAMES = {
    flash.ID_CALIPTRA: "caliptra bundle",
    flash.ID_MANIFEST: "soc manifest",
    flash.ID_MCU: "mcu runtime",
}


def _ecc_key(hw: bytes) -> dict[str, Any] | None:
    if not any(hw):
        return None
    return {
        "x_prefix": bytes(b for i in range(0, 8, 4) for b in hw[i : i + 4][::-1]).hex(),
        "fingerprint": fingerprint("ecc", hw),
    }


def _lms_key(b48: bytes) -> dict[str, Any] | None:
    if not any(b48):
        return None
    lms_type, ots_type = struct.unpack_from(">II", b48)
    return {
        "lms_type": lms_type,
        "ots_type": ots_type,
        "I": b48[8:24].hex(),
        "root": b48[24:].hex(),
        "fingerprint": fingerprint("lms", b48),
    }


def _hash(digest: bytes) -> dict[str, Any]:
    """A fuse hash: hex, and the 12 fuse register words (cptra-imgtool fuses)."""
    return {"hex": digest.hex(), "words": [f"0x{w:08x}" for w in fuses.fuse_words(digest)]}


def _slots(keys: list[bytes], algo: str, selected: int) -> list[dict[str, Any]]:
    return [
        {
            "index": i,
            "selected": i == selected,
            "fingerprint": fingerprint(algo, k) if any(k) else None,
        }
        for i, k in enumerate(keys)
    ]


def _sig(sig: bytes, algo: str, le_q: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"filled": any(sig)}
    if algo == "lms" and any(sig):
        out["q"] = struct.unpack_from("<I" if le_q else ">I", sig)[0]
    return out


def describe_manifest(m: Manifest) -> dict[str, Any]:
    sigs = {}
    for slot in manifest.SIG_SLOTS:
        if slot.startswith("own_svn") and m.format is not Format.ASPEED:
            continue
        algo = slot.rsplit("_", 1)[1]
        sigs[slot] = _sig(getattr(m, slot), algo, le_q=slot == "own_svn_sig_lms")
    count, entries = manifest.imc_entries(m.imc)
    return {
        "format": str(m.format),
        "marker": f"0x{m.marker:08x}",
        "size": m.size,
        "version": m.version,
        "security_version": m.sec_ver if m.format is Format.ASPEED else None,
        "flags": m.flags,
        "keys": {
            "vendor_manifest_ecc": _ecc_key(m.vnd_man_ecc_pub),
            "vendor_manifest_lms": _lms_key(m.vnd_man_lms_pub),
            "owner_manifest_ecc": _ecc_key(m.own_man_ecc_pub),
            "owner_manifest_lms": _lms_key(m.own_man_lms_pub),
        },
        "signatures": sigs,
        "entry_count": count,
        "entries": [
            {
                "fw_id": e.fw_id,
                "flags": e.flags,
                "source": e.source,
                "ignore_auth_check": e.ignore_auth_check,
                "load_stage": e.load_stage,
                "svn": _svn(e.flags),
                "digest": e.digest.hex(),
            }
            for e in entries
        ],
    }


def _svn(flags: int) -> int:
    """The per-image SVN of the newest reference tool: IMC entry flags bits 23:16."""
    return (flags >> SVN_SHIFT) & SVN_MAX


def describe_bundle(b: bundle_mod.Bundle) -> dict[str, Any]:
    return {
        "marker": "CMAN",
        "manifest_size": b.size,
        "vendor_ecc_key_index": b.vendor_ecc_idx,
        "vendor_lms_key_index": b.vendor_lms_idx,
        "vendor_ecc_key": _ecc_key(b.vendor_ecc_pubkey),
        "vendor_lms_key": _lms_key(b.vendor_lms_pubkey),
        "owner_ecc_key": _ecc_key(b.owner_ecc_pubkey),
        "owner_lms_key": _lms_key(b.owner_lms_pubkey),
        "vendor_ecc_keys": _slots(b.vendor_ecc_pubkeys, "ecc", b.vendor_ecc_idx),
        "vendor_lms_keys": _slots(b.vendor_lms_pubkeys, "lms", b.vendor_lms_idx),
        "vendor_pk_hash": _hash(fuses.vendor_pk_hash(b)),
        "owner_pk_hash": _hash(fuses.owner_pk_hash(b)),
        "owner_data": bundle_mod.owner_data_fields(b.header[-bundle_mod.OWNER_DATA_LEN :]),
        "vendor_lms_signature_q": lms.sig_q(b.vendor_lms_sig),
        "owner_lms_signature_q": lms.sig_q(b.owner_lms_sig),
        "flags": b.flags,
        "toc": [
            {
                "name": t.name,
                "id": t.id,
                "type": t.type,
                "version": t.version,
                "svn": t.svn,
                "load_addr": t.load_addr,
                "entry_point": t.entry_point,
                "offset": t.offset,
                "size": t.size,
                "digest": t.digest_be.hex(),
            }
            for t in (b.fmc, b.runtime)
        ],
    }


def _mldsa_key(raw: bytes) -> dict[str, Any] | None:
    if not any(raw):
        return None
    return {"algo": "ML-DSA-87", "sha384_prefix": hashlib.sha384(raw).hexdigest()[:16]}


def _pqc_key(b: bundle2_mod.Bundle2, raw: bytes) -> dict[str, Any] | None:
    return _mldsa_key(raw) if b.pqc_key_type == bundle2_mod.PQC_MLDSA else _lms_key(raw[:48])


def describe_bundle2(b: bundle2_mod.Bundle2) -> dict[str, Any]:
    """A Caliptra 2.x bundle (CMN2): PQC type, key descriptors, active vendor keys, owner keys,
    the fuse hashes, the header and the TOC. Key hashes are SHA-384 in normal byte order."""

    def desc(d: bundle2_mod.KeyDescriptor, n: int, selected: int) -> dict[str, Any]:
        return {
            "version": d.version,
            "type_or_reserved": d.type_or_reserved,
            "key_hash_count": d.count,
            "key_hashes": [
                {"index": i, "selected": i == selected, "sha384": d.hash_be(i).hex()}
                for i in range(min(max(d.count, 0), n))
            ],
        }

    pqc_slots = (
        bundle2_mod.VENDOR_MLDSA_MAX
        if b.pqc_key_type == bundle2_mod.PQC_MLDSA
        else bundle2_mod.VENDOR_LMS_MAX
    )
    return {
        "marker": "CMN2",
        "target": RUNTIME_2X,
        "manifest_size": b.size,
        "pqc_key_type": b.pqc_key_type,
        "pqc": b.pqc_name,
        "vendor_ecc_key_index": b.vendor_ecc_idx,
        "vendor_pqc_key_index": b.vendor_pqc_idx,
        "vendor_ecc_key": _ecc_key(b.vendor_ecc_pub),
        "vendor_pqc_key": _pqc_key(b, b.vendor_pqc_slot),
        "owner_ecc_key": _ecc_key(b.owner_ecc_pub),
        "owner_pqc_key": _pqc_key(b, b.owner_pqc_slot),
        "ecc_key_descriptor": desc(b.ecc_desc, bundle2_mod.VENDOR_ECC_MAX, b.vendor_ecc_idx),
        "pqc_key_descriptor": desc(b.pqc_desc, pqc_slots, b.vendor_pqc_idx),
        "vendor_pk_hash": _hash(fuses.vendor_pk_hash2(b)),
        "owner_pk_hash": _hash(fuses.owner_pk_hash2(b)),
        "svn": b.svn,
        "flags": b.flags,
        "toc": [
            {
                "name": t.name,
                "id": t.id,
                "type": t.type,
                "version": t.version,
                "load_addr": t.load_addr,
                "entry_point": t.entry_point,
                "offset": t.offset,
                "size": t.size,
                "digest": t.digest_be.hex(),
            }
            for t in (b.fmc, b.runtime)
        ],
    }


def render_bundle2(d: dict[str, Any], lines: list[str]) -> None:
    def key(k: dict[str, Any] | None) -> str:
        if k is not None and k.get("algo") == "ML-DSA-87":
            return f"ML-DSA-87 sha384={k['sha384_prefix']}..."
        return _key_text(k)

    _kv(
        lines,
        "Caliptra 2.x firmware bundle",
        {
            "target": d["target"],
            "PQC type": f"{d['pqc_key_type']} ({d['pqc']})",
            "vendor key index": f"ECC {d['vendor_ecc_key_index']}, PQC {d['vendor_pqc_key_index']}",
            "active vendor ECC key": key(d["vendor_ecc_key"]),
            f"active vendor {d['pqc']} key": key(d["vendor_pqc_key"]),
            "owner ECC key": key(d["owner_ecc_key"]),
            f"owner {d['pqc']} key": key(d["owner_pqc_key"]),
            "ECC key hashes": d["ecc_key_descriptor"]["key_hash_count"],
            "PQC key hashes": d["pqc_key_descriptor"]["key_hash_count"],
            "vendor PK hash": d["vendor_pk_hash"]["hex"],
            "owner PK hash": d["owner_pk_hash"]["hex"],
            "svn": d["svn"],
        },
    )
    lines.append("  (fuse words of each hash: cptra-imgtool fuses --caliptra-fw FILE)")
    for t in d["toc"]:
        lines.append(
            f"  TOC {t['name']:<8} id {t['id']} version {t['version']} "
            f"load 0x{t['load_addr']:08x} entry 0x{t['entry_point']:08x} "
            f"offset {t['offset']} size {t['size']}"
        )


def describe_gen2(data: bytes, kind: str) -> dict[str, Any]:
    """ATM2 manifest, 2.x flash image or fw_toc.bin: the fields, and the runtime generation."""
    from .verify import flash2_checks as f2
    from .verify import manifest2_checks as m2

    out: dict[str, Any] = {"target": RUNTIME_2X}
    if kind == KIND_MAN2:
        m = m2.parse_atm2(data, "the manifest")
        out.update(
            size=m.size,
            version=m.version,
            svn=m.svn,
            flags=m.flags,
            pqc_guess="ML-DSA-87" if m2.guess_pqc(m) == "mldsa" else "LMS",
            entry_count=m.count,
            imc_slots=m2.IMC_SLOTS,
            entries=[
                {
                    "fw_id": e.fw_id,
                    "component_id": e.component_id,
                    "classification": e.classification,
                    "flags": e.flags,
                    "exec_bit": e.flags >> 8 & 0x7F,
                    "load_stage": e.load_stage,
                    "ignore_auth_check": e.ignore_auth_check,
                    "image_load_address": e.load_address,
                    "image_staging_address": e.staging_address,
                    "digest": e.digest.hex(),
                }
                for e in m.entries
            ],
        )
        return out
    if kind == KIND_TOC:
        count = struct.unpack_from("<H", data, 6)[0]
        out["entries"] = [
            {
                "identifier": struct.unpack_from("<I", data, 16 + 20 * i)[0],
                "size": struct.unpack_from("<I", data, 24 + 20 * i)[0],
                "name": data[656 + 64 * i : 720 + 64 * i].rstrip(b"\0").decode("utf-8", "replace"),
            }
            for i in range(min(count, f2.TOC_SLOTS))
            if len(data) >= 720 + 64 * i
        ]
        return out
    count = struct.unpack_from("<H", data, 6)[0]
    out["images"] = [
        dict(
            zip(
                ("identifier", "offset", "size", "image_checksum", "entry_checksum"), e, strict=True
            )
        )
        for e in (
            struct.unpack_from("<5I", data, 16 + 20 * i)
            for i in range(count)
            if len(data) >= 36 + 20 * i
        )
    ]
    return out


def _try_bundle(data: bytes) -> dict[str, Any] | None:
    try:
        return describe_bundle(bundle_mod.parse_bundle(data))
    except FormatError as exc:
        return {"error": str(exc)}


def describe_flash(data: bytes, base: int) -> dict[str, Any]:
    f = data[base:]
    h = flash.parse_header(f)
    out: dict[str, Any] = {
        "flsh_offset": base,
        "header": {
            "magic": "FLSH",
            "version": h.version,
            "image_count": h.image_count,
            "header_checksum": f"0x{h.header_checksum:08x}",
            "payload_checksum": f"0x{h.payload_checksum:08x}",
        },
        "images": [],
        "manifest": None,
        "bundle": None,
    }
    m = None
    for e in h.entries:
        body = f[e.offset : e.offset + e.size]
        if e.identifier == flash.ID_MANIFEST and len(body) == e.size:
            try:
                m = Manifest.parse(body)
                out["manifest"] = describe_manifest(m)
            except FormatError as exc:
                out["manifest"] = {"error": str(exc)}
        if e.identifier == flash.ID_CALIPTRA and any(body):
            out["bundle"] = _try_bundle(body)
    if base and any(data[: flash.A1_MCU_OFFSET]):
        out["bundle"] = _try_bundle(data[: flash.A1_MCU_OFFSET])
    by_fw = {x.fw_id: x for x in m.entries} if m else {}
    for e in h.entries:
        item: dict[str, Any] = {
            "identifier": e.identifier,
            "name": FLASH_NAMES.get(e.identifier, "soc image"),
            "offset": e.offset,
            "size": e.size,
        }
        if e.identifier >= flash.SOC_ID_BASE:
            fw_id = flash.soc_fw_id(e.identifier)
            item["fw_id"] = fw_id
            me = by_fw.get(fw_id)
            if me is not None:
                item.update(
                    flags=me.flags,
                    source=me.source,
                    ignore_auth_check=me.ignore_auth_check,
                    load_stage=me.load_stage,
                    svn=_svn(me.flags),
                    digest=me.digest.hex(),
                )
        out["images"].append(item)
    return out


def describe_inputs(cfg: Config) -> dict[str, Any]:
    """Where a config's inputs resolve (and why): the key directory, the prebuilt folder, the
    prebuilt vendor signatures chosen among vnd_sig/ and src/vnd_sig/, the padding."""
    prebuilt = cfg.vendor_signature is VendorSignature.PREBUILT
    return {
        "config": str(cfg.path),
        "key_dir": str(cfg.key_dir),
        "key_dir_reason": cfg.key_dir_reason,
        "prebuilt_dir": str(cfg.prebuilt_dir),
        "vendor_signature": str(cfg.vendor_signature),
        "vendor_sig_dir": str(cfg.vendor_sig_dir) if prebuilt else None,
        "vendor_sig_reason": cfg.vendor_sig_reason if prebuilt else None,
        "padding_align_size": cfg.padding_align_size,
        "padding_out_folder": (
            str(cfg.padding_out_folder) if cfg.padding_out_folder is not None else None
        ),
    }


def describe(data: bytes, cfg: Config | None = None) -> dict[str, Any]:
    kind = detect(data)
    doc: dict[str, Any] = {"schema": SCHEMA, "kind": kind, "length": len(data)}
    if kind in (KIND_FLASH, KIND_A1):
        doc["flash"] = describe_flash(data, flash.A1_FLSH_OFFSET if kind == KIND_A1 else 0)
    elif kind in (KIND_MAN_ASPEED, KIND_MAN_1X):
        doc["manifest"] = describe_manifest(Manifest.parse(data))
    elif kind == KIND_BUNDLE:
        doc["bundle"] = describe_bundle(bundle_mod.parse_bundle(data))
    elif kind == KIND_BUNDLE2:
        doc["bundle2"] = describe_bundle2(bundle2_mod.parse_bundle2(data))
    elif kind in (KIND_MAN2, KIND_FLASH2, KIND_TOC):
        doc["gen2"] = describe_gen2(data, kind)
    else:
        raise FormatError(kind)
    if cfg is not None:
        doc["inputs"] = describe_inputs(cfg)
    return doc


# ---------------------------------------------------------------------------- text
def _kv(lines: list[str], title: str, items: dict[str, Any]) -> None:
    lines.append(title)
    for k, v in items.items():
        lines.append(f"  {k:<22} {v}")


def _key_text(k: dict[str, Any] | None) -> str:
    if k is None:
        return "-"
    if "x_prefix" in k:
        return f"ECC P-384 x={k['x_prefix']}... {k['fingerprint']}"
    return (
        f"LMS type {k['lms_type']}/{k['ots_type']} I={k['I']} root={k['root'][:16]}... "
        f"{k['fingerprint']}"
    )


def _slots_text(slots: list[dict[str, Any]]) -> str:
    """The selected slot, and how many of all slots are filled (the JSON lists every one)."""
    sel = next(s for s in slots if s["selected"])
    filled = sum(1 for s in slots if s["fingerprint"] is not None)
    return (
        f"selected {sel['index']} ({sel['fingerprint'] or 'empty'}); "
        f"{filled} of {len(slots)} slots filled"
    )


def render_manifest(d: dict[str, Any], lines: list[str]) -> None:
    head = {k: d[k] for k in ("format", "marker", "size", "version", "security_version", "flags")}
    _kv(lines, "SoC manifest", head)
    _kv(lines, "Manifest keys", {k: _key_text(v) for k, v in d["keys"].items()})
    sig_text = {}
    for slot, s in d["signatures"].items():
        sig_text[slot] = ("filled" if s["filled"] else "empty") + (
            f" (q = {s['q']})" if "q" in s else ""
        )
    _kv(lines, "Signature slots", sig_text)
    lines.append(f"Image metadata ({d['entry_count']} entries)")
    lines.append(
        f"  {'fw_id':>5} {'flags':>10} {'src':>3} {'skip':>4} {'stage':>5} {'svn':>3}  digest"
    )
    for e in d["entries"]:
        lines.append(
            f"  {e['fw_id']:>5} 0x{e['flags']:08x} {e['source']:>3} "
            f"{'yes' if e['ignore_auth_check'] else 'no':>4} {e['load_stage']:>5} "
            f"{e['svn']:>3}  {e['digest'][:32]}..."
        )


def render_bundle(d: dict[str, Any], lines: list[str]) -> None:
    if "error" in d:
        lines.append(f"Caliptra bundle: {d['error']}")
        return
    _kv(
        lines,
        "Caliptra firmware bundle",
        {
            "vendor key index": f"ECC {d['vendor_ecc_key_index']}, LMS {d['vendor_lms_key_index']}",
            "vendor ECC key": _key_text(d["vendor_ecc_key"]),
            "vendor LMS key": _key_text(d["vendor_lms_key"]),
            "owner ECC key": _key_text(d["owner_ecc_key"]),
            "owner LMS key": _key_text(d["owner_lms_key"]),
            "vendor ECC key slots": _slots_text(d["vendor_ecc_keys"]),
            "vendor LMS key slots": _slots_text(d["vendor_lms_keys"]),
            "vendor PK hash": d["vendor_pk_hash"]["hex"],
            "owner PK hash": d["owner_pk_hash"]["hex"],
            "owner data": (
                f"not_before {d['owner_data']['not_before'] or '-'}, not_after "
                f"{d['owner_data']['not_after'] or '-'}, epoch {d['owner_data']['epoch']}"
            ),
            "LMS sig q": (
                f"vendor {d['vendor_lms_signature_q']}, owner {d['owner_lms_signature_q']}"
            ),
        },
    )
    lines.append("  (fuse words of each hash: cptra-imgtool fuses --caliptra-fw FILE)")
    for t in d["toc"]:
        lines.append(
            f"  TOC {t['name']:<8} id {t['id']} version {t['version']} svn {t['svn']} "
            f"load 0x{t['load_addr']:08x} entry 0x{t['entry_point']:08x} "
            f"offset {t['offset']} size {t['size']}"
        )


def render(doc: dict[str, Any]) -> str:
    lines = [f"{doc['kind']}, {doc['length']} bytes"]
    if "flash" in doc:
        fl = doc["flash"]
        _kv(lines, f"FLSH header (at 0x{fl['flsh_offset']:x})", fl["header"])
        lines.append(
            f"  {'id':>7} {'offset':>10} {'size':>9}  {'name':<16} fw_id flags      "
            "src skip stage svn digest"
        )
        for im in fl["images"]:
            extra = ""
            if "flags" in im:
                extra = (
                    f" {im['fw_id']:>5} 0x{im['flags']:08x} {im['source']:>3} "
                    f"{'yes' if im['ignore_auth_check'] else 'no':>4} {im['load_stage']:>5} "
                    f"{im['svn']:>3} {im['digest'][:16]}..."
                )
            lines.append(
                f"  0x{im['identifier']:05x} 0x{im['offset']:08x} {im['size']:>9}  "
                f"{im['name']:<16}{extra}"
            )
        if fl["bundle"]:
            render_bundle(fl["bundle"], lines)
        if fl["manifest"]:
            if "error" in fl["manifest"]:
                lines.append(f"SoC manifest: {fl['manifest']['error']}")
            else:
                render_manifest(fl["manifest"], lines)
    if "manifest" in doc:
        render_manifest(doc["manifest"], lines)
    if "bundle" in doc:
        render_bundle(doc["bundle"], lines)
    if "bundle2" in doc:
        render_bundle2(doc["bundle2"], lines)
    if "gen2" in doc:
        g = doc["gen2"]
        lines.append(f"  target: {g['target']}")
        for k, v in g.items():
            if k in ("target", "entries", "images"):
                continue
            lines.append(f"  {k:<22} {v}")
        for row in g.get("entries", []) + g.get("images", []):
            lines.append(
                "  "
                + " ".join(
                    f"{k}={v:#x}" if isinstance(v, int) else f"{k}={v}" for k, v in row.items()
                )
            )
    if "inputs" in doc:
        i = doc["inputs"]
        items = {"key directory": i["key_dir_reason"], "prebuilt directory": i["prebuilt_dir"]}
        items["vendor signature"] = i["vendor_signature"] + (
            f" from {i['vendor_sig_reason']}" if i["vendor_sig_reason"] else ""
        )
        if i["padding_align_size"]:
            items["padding"] = f"to a multiple of {i['padding_align_size']}" + (
                f", copies in {i['padding_out_folder']}/" if i["padding_out_folder"] else ""
            )
        _kv(lines, f"Inputs of {i['config']}", items)
    return "\n".join(lines)
