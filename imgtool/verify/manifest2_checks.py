"""Caliptra 2.x SoC manifest (ATM2): what the 2.x runtime's SET_AUTH_MANIFEST checks
(caliptra-sw ``runtime/src/set_auth_manifest.rs`` at 879608b9, ASPEED's pin), with the PQC type
from the fuse (else the firmware bundle's, said so), the vendor pubkey signatures checked with
the bundle's ACTIVE vendor keys, the owner pubkey signatures with the bundle's owner keys, and
the IMC signatures with the manifest's own keys (vouched for by the pubkey signatures).

Target: the pinned runtime hashes min(len, 4 + 127 x 80) = 10164 IMC bytes; fw-2.1.2 and later
runtimes cut the IMC to 80 entries and hash 4 + 80 x 80, so these IMC signatures would not
verify there (reported as a note).

The byte layout and the covered ranges are imgtool/formats/manifest2.py's (the build's).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from ..errors import FormatError
from ..formats import manifest2 as m2
from .anchors import UNPROVISIONED, Key
from .bundle2_checks import BundleKeys2
from .context import Ctx, is_zero

MARKER = m2.MARKER
PREAMBLE_SIZE = m2.PREAMBLE_SIZE
LEN = m2.TOTAL_LEN
IMC_OFF = m2.IMC_OFFSET
IMC_SLOTS = m2.MAX_ENTRIES
IMC_SLOTS_LATER = 80
ENTRY_LEN = m2.ENTRY_LEN
IMC_LEN = m2.IMC_LEN
SVN_MAX = 128
PQC_PUB = m2.PUB_PQC
PQC_SIG = m2.SIG_PQC
MLDSA_SIG = m2.SIG_MLDSA
LMS_SIG = m2.SIG_LMS
LMS_PUB = m2.PUB_LMS
UNUSED_ID = m2.UNUSED_ID
_O = m2.OFFSETS
# (ECC offset, PQC offset) of each key pair and signature pair
SLOTS = {
    "vendor_man_key": (_O["vnd_man_ecc_pub"][0], _O["vnd_man_pqc_pub"][0]),
    "vendor_pub_sig": (_O["vnd_pub_sig_ecc"][0], _O["vnd_pub_sig_pqc"][0]),
    "owner_man_key": (_O["own_man_ecc_pub"][0], _O["own_man_pqc_pub"][0]),
    "owner_pub_sig": (_O["own_pub_sig_ecc"][0], _O["own_pub_sig_pqc"][0]),
    "vendor_imc_sig": (_O["vnd_imc_sig_ecc"][0], _O["vnd_imc_sig_pqc"][0]),
    "owner_imc_sig": (_O["own_imc_sig_ecc"][0], _O["own_imc_sig_pqc"][0]),
}
VENDOR_PUB_TBS = m2.COVER_VENDOR_PUB
OWNER_PUB_TBS = m2.COVER_OWNER_PUB
Entry2 = m2.ImcEntry2


@dataclass
class Atm2:
    raw: bytes
    size: int
    version: int
    svn: int
    flags: int
    count: int
    entries: list[m2.ImcEntry2]

    def pair(self, name: str, pqc_len: int) -> tuple[bytes, bytes]:
        e, p = SLOTS[name]
        full = PQC_PUB if name.endswith("_key") else PQC_SIG
        return self.raw[e : e + 96], self.raw[p : p + full][: pqc_len or full]

    def imc(self) -> bytes:
        return self.raw[IMC_OFF : IMC_OFF + IMC_LEN]


def parse_atm2(data: bytes, origin: str) -> Atm2:
    """The fields verify checks (not Manifest2.parse: a hostile manifest with a bad count or
    trailing bytes must still be reported check by check, not refused whole)."""
    if len(data) < 4 or struct.unpack_from("<I", data)[0] != MARKER:
        raise FormatError(f"{origin}: marker: not an ATM2 manifest")
    if len(data) < LEN:
        raise FormatError(
            f"{origin}: {len(data)} bytes, shorter than the {LEN}-byte Caliptra 2.x SoC "
            "manifest (ATM2)"
        )
    size, version, svn, flags = struct.unpack_from("<4I", data, 4)
    (count,) = struct.unpack_from("<I", data, IMC_OFF)
    entries = [
        m2.ImcEntry2.parse(bytes(data[o : o + ENTRY_LEN]))
        for o in (IMC_OFF + 4 + i * ENTRY_LEN for i in range(min(count, IMC_SLOTS)))
    ]
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


def _fw_keys2(ctx: Ctx, party: str, pqc: str) -> tuple[Key | None, Key | None]:
    """Without a bundle: the FW public keys of the config / key directory (anchored by those)."""
    out: list[Key | None] = []
    for algo in ("ecc", pqc):
        found = ctx.anchors.expected(f"{party}_fw", algo)
        out.append(Key(algo, found[0][0], found[0][1], [found[0][1]]) if found else None)
    return out[0], out[1]


def _signatures(ctx: Ctx, m: Atm2, pqc: str, bundle: BundleKeys2 | None) -> None:
    sha = hashlib.sha384
    r, a = ctx.r, ctx.anchors
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
    direct: dict[str, bool] = {}  # a config / key dir names this party's manifest keys
    for party in ("vendor", "owner"):
        e, p = m.pair(f"{party}_man_key", plen_pub)
        man_keys[party] = (
            Key("ecc", e, f"the manifest's {party} manifest ECC key"),
            Key(pqc, p, f"the manifest's {party} manifest {label} key"),
        )
        direct[party] = False
        for k in man_keys[party]:
            for value, where in a.expected(f"{party}_man", k.algo):
                same = value == k.value
                if r.add(
                    f"manifest.key.{party}_man.{k.algo}",
                    same,
                    f"the manifest's {party} manifest {k.algo.upper()} key is {where}",
                    "" if same else "it differs",
                    where,
                ):
                    k.anchors.append(where)
                    direct[party] = True
    if bundle is None and not a.key_anchors:
        r.note(
            "manifest.fw_keys",
            "no Caliptra 2.x bundle known",
            "the pubkey signatures need the running bundle's keys: give --caliptra-fw (or "
            "--cfg / --key-dir with the FW public keys)",
        )
    fw_real: dict[str, bool] = {}  # the FW keys are anchored by more than an unprovisioned fuse
    for party in ("vendor", "owner"):
        fw: tuple[Key | None, Key | None] = _fw_keys2(ctx, party, pqc)
        if bundle is not None:
            fw = (
                (bundle.vendor_ecc, bundle.vendor_pqc)
                if party == "vendor"
                else (bundle.owner_ecc, bundle.owner_pqc)
            )
        fw_real[party] = all(
            k is not None and any(x not in UNPROVISIONED for x in k.anchors) for k in fw
        )
        es, ps = m.pair(f"{party}_pub_sig", plen_sig)
        who = "the bundle's active vendor" if party == "vendor" else "the bundle's owner"
        if bundle is None:
            who = f"the {party} FW"
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
    vendor_imc = bool(m.flags & 1)
    for party in ("vendor", "owner"):
        es, ps = m.pair(f"{party}_imc_sig", plen_sig)
        if party == "vendor" and not vendor_imc:
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
    _imc_authenticity(
        ctx,
        vendor_imc,
        fw_real["vendor"] or direct["vendor"],
        fw_real["owner"] or direct["owner"],
    )


def _imc_authenticity(
    ctx: Ctx, vendor_imc: bool, vendor_anchored: bool, owner_anchored: bool
) -> None:
    """Who vouches for the IMC (what the device loads): the vendor (flags bit 0, with vendor
    keys a fuse or a config / key dir anchors) or the owner (likewise). With the owner PK hash
    fuse unprovisioned any owner key boots; with the vendor PK hash fuse unprovisioned any
    vendor key: a manifest neither anchored party signs is authenticated by nobody."""
    f = ctx.anchors.fuses
    if (vendor_imc and vendor_anchored) or owner_anchored:
        return
    if f is None or f.owner_pk_hash is not None:
        return  # an owner key no anchor vouches for fails trust.chain
    why = "the owner PK hash fuse is unprovisioned (any owner key boots) and " + (
        "the vendor PK hash fuse is unprovisioned (any vendor key boots)"
        if vendor_imc
        else "flags bit 0 is clear (no vendor IMC signature)"
    )
    why = f"authenticity of the IMC not established: {why}, so anyone can sign this IMC"
    what = "authenticity of the IMC established"
    if ctx.anchors.accept_unprovisioned:
        ctx.r.note("manifest.imc.authenticity", f"{what}: accepted (--accept-unprovisioned)", why)
    else:
        ctx.r.add(
            "manifest.imc.authenticity", False, what, why + "; --accept-unprovisioned accepts it"
        )
