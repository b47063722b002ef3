"""SoC manifest (Caliptra 1.x and the ASPEED layout): what Caliptra's runtime SET_AUTH_MANIFEST
and ASPEED's BootMCU check, with keys from the firmware bundle (FW keys) and from the manifest
itself (manifest keys, vouched for by the pubkey signatures)."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from ..config import Format
from ..errors import FormatError
from ..formats import manifest1 as manifest
from ..formats.manifest1 import Manifest
from .anchors import Key
from .context import Ctx


@dataclass
class FwKeys:
    """The FW keys a manifest's pubkey and SVN signatures verify with (None: not known)."""

    vendor_ecc: Key | None = None
    vendor_lms: Key | None = None
    owner_ecc: Key | None = None
    owner_lms: Key | None = None

    def get(self, party: str, algo: str) -> Key | None:
        k: Key | None = getattr(self, f"{party}_{algo}")
        return k


def check_manifest(
    ctx: Ctx,
    data: bytes,
    origin: str,
    fw: FwKeys,
    *,
    in_flash: bool = False,
    cfg_slots: set[str] | None = None,
) -> Manifest | None:
    """``in_flash``: read by ASPEED's BootMCU (the AST2700 layout is required unless the config
    targets generic Caliptra 1.x). ``cfg_slots``: the signature slots the config fills (they
    must verify whatever the device's policy)."""
    r = ctx.r
    try:
        m = Manifest.parse(data, origin)
    except FormatError as exc:
        r.add("manifest.layout", False, "SoC manifest layout", str(exc))
        return None
    r.add("manifest.layout", True, "SoC manifest layout", f"{m.format}, {len(data)} bytes")
    cfg = ctx.anchors.cfg
    if in_flash and m.format is not Format.ASPEED:
        generic = cfg is not None and cfg.format is Format.CALIPTRA1
        r.add(
            "manifest.layout.target",
            generic,
            "the layout the flash's reader expects",
            "generic Caliptra 1.x (the config's format)"
            if generic
            else "the AST2700 BootMCU reads the 16004-byte ASPEED layout, not Caliptra 1.x "
            "(give --cfg of a caliptra-1 config for another SoC)",
        )
    r.add(
        "manifest.size",
        m.size == manifest.PREAMBLE_SIZE,
        "size field is 7168 (the runtime rejects anything else)",
        f"found {m.size}",
    )
    r.add("manifest.flags", m.flags & ~1 == 0, "flags use only bit 0", f"0x{m.flags:x}")
    _imc(ctx, m)
    if m.format is not Format.ASPEED and ctx.policy.min_svn is not None:
        r.add(
            "manifest.svn.min",
            False,
            "security_version is not below the anti-rollback floor",
            f"the {m.format} layout has no security_version, min_svn {ctx.policy.min_svn}",
        )
    elif ctx.policy.min_svn is not None:
        r.add(
            "manifest.svn.min",
            m.sec_ver >= ctx.policy.min_svn,
            "security_version is not below the anti-rollback floor",
            f"security_version {m.sec_ver}, min_svn {ctx.policy.min_svn}",
            ctx.anchors.fuses.source if ctx.anchors.fuses else "",
        )
        r.note(
            "manifest.svn.splice",
            "known weakness of the ASPEED layout",
            "the IMC signature does not bind security_version: an SVN signature from one "
            "release can be spliced onto another release's IMC",
        )
    man_keys = _manifest_keys(ctx, m)
    _signatures(ctx, m, fw, man_keys, cfg_slots)
    return m


def _imc(ctx: Ctx, m: Manifest) -> None:
    r = ctx.r
    count, entries = manifest.imc_entries(m.imc)
    if not r.add(
        "manifest.imc.count",
        1 <= count <= manifest.MAX_ENTRIES,
        "entry_count in 1..127",
        str(count),
    ):
        return
    ids = [e.fw_id for e in entries]
    dups = sorted({i for i in ids if ids.count(i) > 1})
    r.add("manifest.imc.duplicates", not dups, "no duplicate fw_id", f"duplicates {dups}")
    for e in entries:
        if e.ignore_auth_check:
            r.note(
                f"manifest.imc.{e.fw_id}.ignore_auth",
                f"fw_id {e.fw_id} has ignore_auth_check set",
                "the runtime authorizes ANY image for this fw_id",
            )
    unused = struct.pack("<II", manifest.UNUSED_FW_ID, 0) + bytes(manifest.DIGEST_LEN)
    n = manifest.ENTRY_LEN
    tail = m.imc[4 + count * n :]
    bad = [count + i for i in range(len(tail) // n) if tail[i * n : (i + 1) * n] != unused]
    r.add(
        "manifest.imc.unused",
        not bad,
        "unused entries are fw_id 0xFFFFFFFF, flags 0, digest 0",
        f"entries {bad[:5]} differ" if bad else "",
    )


ROLES = (("vendor_man", "vnd_man"), ("owner_man", "own_man"))


def _manifest_keys(ctx: Ctx, m: Manifest) -> dict[tuple[str, str], Key]:
    """The manifest keys; compared with the config / key dir where those name them."""
    r, a = ctx.r, ctx.anchors
    out: dict[tuple[str, str], Key] = {}
    for role, field in ROLES:
        party = role.split("_")[0]
        for algo in ("ecc", "lms"):
            value = getattr(m, f"{field}_{algo}_pub")
            key = Key(algo, value, f"the manifest's {party} manifest {algo.upper()} key")
            out[(party, algo)] = key
            for want, where in a.expected(role, algo):
                if not any(value):
                    # the image does not use this key; what needs it fails on its own
                    r.skip(
                        f"manifest.key.{role}.{algo}",
                        f"manifest's {party} manifest {algo.upper()} key is {where}",
                        "the manifest has none"
                        + (" (prebuilt vendor signature)" if party == "vendor" else ""),
                    )
                    continue
                if r.add(
                    f"manifest.key.{role}.{algo}",
                    want == value,
                    f"manifest's {party} manifest {algo.upper()} key is {where}",
                    "" if want == value else "it differs",
                    where,
                ):
                    key.anchors.append(where)
    return out


def _uses_lms(m: Manifest) -> bool:
    """Any LMS manifest key or LMS signature slot that is not all zero."""
    fields = ["vnd_man_lms_pub", "own_man_lms_pub"]
    fields += [slot for slot in manifest.SIG_SLOTS if slot.endswith("_lms")]
    return any(any(getattr(m, f)) for f in fields)


def _signatures(
    ctx: Ctx,
    m: Manifest,
    fw: FwKeys,
    man_keys: dict[tuple[str, str], Key],
    cfg_slots: set[str] | None,
) -> None:
    sha = hashlib.sha384
    lms_in_use = _uses_lms(m)
    if ctx.policy.lms_verify is None and not lms_in_use and ctx.check_signatures:
        ctx.r.note(
            "manifest.lms.policy",
            "an ECC-only manifest",
            "it boots only on parts that do not verify LMS; the LMS verify fuse is unknown "
            "(give --fuses)",
        )
    digests = {
        "vendor_pub": sha(manifest.vendor_pubkey_tbs(m)).digest(),
        "owner_pub": sha(manifest.owner_pubkey_tbs(m)).digest(),
        "owner_svn": sha(manifest.svn_tbs(m)).digest(),
        "imc": sha(manifest.imc_tbs(m)).digest(),
    }

    def check(
        name: str, field: str, algo: str, key: Key | None, digest: bytes, what: str
    ) -> bool | None:
        slot = f"{field}_{algo}"
        return ctx.signature(
            f"manifest.sig.{name}.{algo}",
            what,
            algo,
            key,
            digest,
            getattr(m, slot),
            le_q=slot == "own_svn_sig_lms",
            anchor_requires=cfg_slots is not None and slot in cfg_slots,
            lms_in_use=lms_in_use,
        )

    # pubkey endorsements: the FW keys (from the bundle) vouch for the manifest keys
    for party, field in (("vendor", "vnd_pub_sig"), ("owner", "own_pub_sig")):
        results = [
            check(
                f"{party}_pub",
                field,
                algo,
                fw.get(party, algo),
                digests[f"{party}_pub"],
                f"{party} pubkey signature ({algo.upper()}) over the {party} manifest keys",
            )
            for algo in ("ecc", "lms")
        ]
        fw_ecc = fw.get(party, "ecc")
        if results[0] and fw_ecc is not None and fw_ecc.anchored:
            # the ECC endorsement covers both manifest keys of the party
            for algo in ("ecc", "lms"):
                man_keys[(party, algo)].anchors.append(f"the {party} pubkey signature")
    if m.format is Format.ASPEED:
        for algo in ("ecc", "lms"):
            check(
                "owner_svn",
                "own_svn_sig",
                algo,
                fw.get("owner", algo),
                digests["owner_svn"],
                f"owner SVN signature ({algo.upper()}) over version, security_version, flags "
                "and the owner manifest keys",
            )
    for algo in ("ecc", "lms"):
        what = f"vendor IMC signature ({algo.upper()})"
        if m.flags & 1:
            check(
                "vendor_imc", "vnd_imc_sig", algo, man_keys[("vendor", algo)], digests["imc"], what
            )
        else:
            ctx.unused_slot(
                f"manifest.sig.vendor_imc.{algo}",
                what,
                getattr(m, f"vnd_imc_sig_{algo}"),
                "flags bit 0 clear: no vendor IMC signature",
            )
    for algo in ("ecc", "lms"):
        check(
            "owner_imc",
            "own_imc_sig",
            algo,
            man_keys[("owner", algo)],
            digests["imc"],
            f"owner IMC signature ({algo.upper()})",
        )
