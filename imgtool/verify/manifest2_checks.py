"""Caliptra 2.x SoC manifest (ATM2): what the 2.x runtime's SET_AUTH_MANIFEST checks
(caliptra-sw ``runtime/src/set_auth_manifest.rs`` at 879608b9, ASPEED's pin), with the PQC type
from the fuse (else the firmware bundle's, said so), the vendor pubkey signatures checked with
the bundle's ACTIVE vendor keys, the owner pubkey signatures with the bundle's owner keys, and
the IMC signatures with the manifest's own keys (vouched for by the pubkey signatures).

Target: the pinned runtime hashes min(len, 4 + 127 x 80) = 10164 IMC bytes; fw-2.1.2 and later
runtimes cut the IMC to 80 entries and hash 4 + 80 x 80, so these IMC signatures would not
verify there (reported as a note).

The byte layout is read with plain offsets from spec/caliptra2.md (the build side's
imgtool/formats/manifest2.py had not landed when this was written; the offsets are the same
table).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from ..errors import FormatError
from .anchors import Key
from .bundle2_checks import BundleKeys2
from .context import Ctx, is_zero

MARKER = 0x324D5441
PREAMBLE_SIZE = 24292
LEN = 34456
IMC_OFF = 24292
IMC_SLOTS = 127
IMC_SLOTS_LATER = 80
ENTRY_LEN = 80
IMC_LEN = 4 + IMC_SLOTS * ENTRY_LEN
SVN_MAX = 128
PQC_PUB = 2592
PQC_SIG = 4628
MLDSA_SIG = 4627
LMS_SIG = 1620
LMS_PUB = 48
UNUSED_ID = 0xFFFFFFFF
# (ECC offset, PQC offset) of each key pair and signature pair
SLOTS = {
    "vendor_man_key": (20, 116),
    "vendor_pub_sig": (2708, 2804),
    "owner_man_key": (7432, 7528),
    "owner_pub_sig": (10120, 10216),
    "vendor_imc_sig": (14844, 14940),
    "owner_imc_sig": (19568, 19664),
}
VENDOR_PUB_TBS = (8, 2708)
OWNER_PUB_TBS = (7432, 10120)


@dataclass
class Entry2:
    fw_id: int
    component_id: int
    classification: int
    flags: int
    load_address: int
    staging_address: int
    digest: bytes

    @property
    def ignore_auth_check(self) -> bool:
        return bool(self.flags >> 2 & 1)

    @property
    def load_stage(self) -> int:
        return self.flags >> 30 & 3


@dataclass
class Atm2:
    raw: bytes
    size: int
    version: int
    svn: int
    flags: int
    count: int
    entries: list[Entry2]

    def pair(self, name: str, pqc_len: int) -> tuple[bytes, bytes]:
        e, p = SLOTS[name]
        full = PQC_PUB if name.endswith("_key") else PQC_SIG
        return self.raw[e : e + 96], self.raw[p : p + full][: pqc_len or full]

    def imc(self) -> bytes:
        return self.raw[IMC_OFF : IMC_OFF + IMC_LEN]


def parse_atm2(data: bytes, origin: str) -> Atm2:
    if len(data) < 4 or struct.unpack_from("<I", data)[0] != MARKER:
        raise FormatError(f"{origin}: marker: not an ATM2 manifest")
    if len(data) < LEN:
        raise FormatError(
            f"{origin}: {len(data)} bytes, shorter than the {LEN}-byte Caliptra 2.x SoC "
            "manifest (ATM2)"
        )
    size, version, svn, flags = struct.unpack_from("<4I", data, 4)
    (count,) = struct.unpack_from("<I", data, IMC_OFF)
    entries = []
    for i in range(min(count, IMC_SLOTS)):
        o = IMC_OFF + 4 + i * ENTRY_LEN
        fw, comp, cls, fl, llo, lhi, slo, shi = struct.unpack_from("<8I", data, o)
        entries.append(
            Entry2(fw, comp, cls, fl, llo | lhi << 32, slo | shi << 32, data[o + 32 : o + 80])
        )
    return Atm2(bytes(data), size, version, svn, flags, count, entries)


def guess_pqc(m: Atm2) -> str:
    """ML-DSA when the vendor manifest PQC key fills more than the 48 bytes of an LMS key."""
    _, p = SLOTS["vendor_man_key"]
    return "mldsa" if any(m.raw[p + LMS_PUB : p + PQC_PUB]) else "lms"


def check_manifest2(
    ctx: Ctx, data: bytes, origin: str, bundle: BundleKeys2 | None, *, in_flash: bool = False
) -> Atm2 | None:
    r = ctx.r
    try:
        m = parse_atm2(data, origin)
    except FormatError as exc:
        r.add("manifest.layout", False, "ATM2 manifest layout", str(exc))
        return None
    r.add("manifest.layout", True, "ATM2 manifest layout", f"{len(data)} bytes")
    r.add(
        "manifest.size",
        m.size == PREAMBLE_SIZE,
        f"size field is {PREAMBLE_SIZE} (the runtime rejects anything else)",
        f"found {m.size}",
    )
    r.add(
        "manifest.padding",
        is_zero(data[LEN:]),
        f"bytes past {LEN} (padding_align_size) are zero",
        f"{len(data) - LEN} bytes",
    )
    r.add("manifest.flags", m.flags & ~1 == 0, "flags use only bit 0", f"0x{m.flags:x}")
    # PQC type: the runtime reads the fuse
    f = ctx.anchors.fuses
    if f is not None and f.pqc_key_type is not None:
        pqc = "mldsa" if f.pqc_key_type == 1 else "lms"
        src = f"the pqc_key_type fuse ({f.pqc_key_type})"
    elif bundle is not None:
        pqc, src = bundle.pqc_algo, "the firmware bundle's PQC type (no pqc_key_type fuse given)"
    else:
        pqc, src = guess_pqc(m), "the manifest's own key slot (no fuse, no bundle: a guess)"
    r.note("manifest.pqc", f"PQC type {'ML-DSA-87' if pqc == 'mldsa' else 'LMS'}", f"from {src}")
    if bundle is not None and bundle.pqc_algo != pqc:
        r.add(
            "manifest.pqc.bundle",
            False,
            "the bundle's PQC type is the fuse's",
            f"bundle {bundle.pqc_algo}, fuse {pqc}",
        )
    problems = []
    if m.svn > SVN_MAX:
        problems.append(f"above {SVN_MAX}")
    if f is not None and f.min_svn is not None and m.svn < f.min_svn:
        problems.append(f"below the SoC manifest SVN fuse {f.min_svn}")
    r.add(
        "manifest.svn",
        not problems,
        "svn is acceptable to the runtime (<= 128, not below the fuse)",
        f"svn {m.svn}" + (": " + ", ".join(problems) if problems else ""),
    )
    _imc(ctx, m)
    _padding(ctx, m, pqc)
    _signatures(ctx, m, pqc, bundle)
    return m


def _imc(ctx: Ctx, m: Atm2) -> None:
    r = ctx.r
    if not r.add(
        "manifest.imc.count", 1 <= m.count <= IMC_SLOTS, "entry_count in 1..127", str(m.count)
    ):
        return
    ids = [e.fw_id for e in m.entries]
    dups = sorted({i for i in ids if ids.count(i) > 1})
    r.add("manifest.imc.duplicates", not dups, "no duplicate fw_id", f"duplicates {dups}")
    for e in m.entries:
        if e.ignore_auth_check:
            r.note(
                f"manifest.imc.{e.fw_id:#x}.ignore_auth",
                f"fw_id {e.fw_id:#x} has ignore_auth_check set",
                "the runtime authorizes ANY image for this fw_id",
            )
    unused = struct.pack("<II", UNUSED_ID, UNUSED_ID) + bytes(ENTRY_LEN - 8)
    imc = m.imc()
    bad = [
        i
        for i in range(m.count, IMC_SLOTS)
        if imc[4 + i * ENTRY_LEN : 4 + (i + 1) * ENTRY_LEN] != unused
    ]
    r.add(
        "manifest.imc.unused",
        not bad,
        "unused entries are fw_id and component_id 0xFFFFFFFF, the rest zero",
        f"entries {bad[:5]} differ" if bad else "",
    )
    r.note(
        "manifest.imc.generation",
        f"IMC of {IMC_SLOTS} entries: for the pinned runtime (879608b9)",
        f"the IMC signatures cover all {IMC_LEN} bytes; a fw-2.1.2+ runtime hashes "
        f"{4 + IMC_SLOTS_LATER * ENTRY_LEN} and would not verify them"
        + (f" (and holds at most {IMC_SLOTS_LATER} entries)" if m.count > IMC_SLOTS_LATER else ""),
    )


def _padding(ctx: Ctx, m: Atm2, pqc: str) -> None:
    used_pub = PQC_PUB if pqc == "mldsa" else LMS_PUB
    used_sig = MLDSA_SIG if pqc == "mldsa" else LMS_SIG
    for name, (_, p) in SLOTS.items():
        full, used = (PQC_PUB, used_pub) if name.endswith("_key") else (PQC_SIG, used_sig)
        ctx.r.add(
            f"manifest.slot_padding.{name}",
            is_zero(m.raw[p + used : p + full]),
            f"{name.replace('_', ' ')} PQC slot: the {full - used} bytes past the value are zero",
        )


def _signatures(ctx: Ctx, m: Atm2, pqc: str, bundle: BundleKeys2 | None) -> None:
    sha = hashlib.sha384
    plen_pub = PQC_PUB if pqc == "mldsa" else LMS_PUB
    plen_sig = PQC_SIG if pqc == "mldsa" else LMS_SIG
    label = "ML-DSA-87" if pqc == "mldsa" else "LMS"
    covered = {
        "vendor_pub": m.raw[VENDOR_PUB_TBS[0] : VENDOR_PUB_TBS[1]],
        "owner_pub": m.raw[OWNER_PUB_TBS[0] : OWNER_PUB_TBS[1]],
        "imc": m.imc(),
    }

    def check(cid: str, what: str, algo: str, key: Key | None, tbs: bytes, sig: bytes) -> bool:
        msg = tbs if algo == "mldsa" else sha(tbs).digest()
        return bool(ctx.signature(cid, what, algo, key, msg, sig))

    man_keys: dict[str, tuple[Key, Key]] = {}
    for party in ("vendor", "owner"):
        e, p = m.pair(f"{party}_man_key", plen_pub)
        man_keys[party] = (
            Key("ecc", e, f"the manifest's {party} manifest ECC key"),
            Key(pqc, p, f"the manifest's {party} manifest {label} key"),
        )
    if bundle is None:
        ctx.r.note(
            "manifest.fw_keys",
            "no Caliptra 2.x bundle known",
            "the pubkey signatures need the running bundle's keys: give --caliptra-fw",
        )
    for party in ("vendor", "owner"):
        fw: tuple[Key | None, Key | None] = (None, None)
        if bundle is not None:
            fw = (
                (bundle.vendor_ecc, bundle.vendor_pqc)
                if party == "vendor"
                else (bundle.owner_ecc, bundle.owner_pqc)
            )
        es, ps = m.pair(f"{party}_pub_sig", plen_sig)
        who = "the bundle's active vendor" if party == "vendor" else "the bundle's owner"
        ok_e = check(
            f"manifest.sig.{party}_pub.ecc",
            f"{party} pubkey signature (ECC, {who} key)",
            "ecc",
            fw[0],
            covered[f"{party}_pub"],
            es,
        )
        ok_p = check(
            f"manifest.sig.{party}_pub.{pqc}",
            f"{party} pubkey signature ({label}, {who} key)",
            pqc,
            fw[1],
            covered[f"{party}_pub"],
            ps,
        )
        if ok_e and ok_p and fw[0] is not None and fw[0].anchored:
            for k in man_keys[party]:
                k.anchors.append(f"the {party} pubkey signatures")
    for party in ("vendor", "owner"):
        es, ps = m.pair(f"{party}_imc_sig", plen_sig)
        if party == "vendor" and not m.flags & 1:
            for algo, sig in (("ecc", es), (pqc, m.pair("vendor_imc_sig", 0)[1])):
                ctx.unused_slot(
                    f"manifest.sig.vendor_imc.{algo}",
                    f"vendor IMC signature ({algo})",
                    sig,
                    "flags bit 0 clear: no vendor IMC signature",
                )
            continue
        ek, pk = man_keys[party]
        check(
            f"manifest.sig.{party}_imc.ecc",
            f"{party} IMC signature (ECC)",
            "ecc",
            ek,
            covered["imc"],
            es,
        )
        check(
            f"manifest.sig.{party}_imc.{pqc}",
            f"{party} IMC signature ({label})",
            pqc,
            pk,
            covered["imc"],
            ps,
        )
