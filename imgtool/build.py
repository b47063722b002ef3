"""Turn a Config into a signed SoC manifest and a flash image.

The build is split into small steps so that the doit tasks (:mod:`imgtool.doit_tasks`) and the
CLI run the same code: image digests -> IMC, a manifest skeleton (header + public keys), one
signature per slot in :func:`plan`, then :func:`assemble`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .config import MCU_FW_ID, Config, Format, HsmKey, ImageEntry, KeySet, VendorSignature
from .errors import ConfigError, FormatError, ImgtoolError, OutputError, SigningError
from .fileio import atomic_write
from .formats import manifest1 as manifest
from .formats import padding
from .formats.flash1 import (
    ENTRY_LEN,
    HEADER_LEN,
    ID_CALIPTRA,
    ID_MANIFEST,
    ID_MCU,
    MAX_IMAGES,
    SOC_ID_BASE,
    DigestMismatch,
    FlashItem,
    write_flash_file,
)
from .formats.manifest1 import ImcEntry, Manifest

if TYPE_CHECKING:  # the crypto modules load only when something is signed or checked
    from .formats import bundle1 as bundle
    from .signing import Signer

log = logging.getLogger("imgtool")

PREBUILT_ECC_FILE = "vnd_ecc_sig.der"
PREBUILT_LMS_FILE = "vnd_lms_sig.der"
TBS_KINDS = ("vendor_pubkey", "owner_pubkey", "svn", "imc")


# ---------------------------------------------------------------------------- key selection
@dataclass(frozen=True)
class PartyAlgo:
    """Whether one party (vendor/owner) signs with one algorithm, and with what.

    ``imc_only``: the owner ECC fallback of the newest reference tool (the owner FW ECC pair is
    absent but owner_man_key_config has an ECC pair): only the owner IMC signature is made, with
    the manifest pair, and the manifest's owner ECC key slot stays zero, as the reference does."""

    party: str  # "vendor" | "owner"
    algo: str  # "ecc" | "lms"
    enabled: bool
    fw_priv: Path | HsmKey | None = None  # HsmKey: an ECC key on a PKCS#11 token
    fw_pub: Path | None = None
    man_priv: Path | HsmKey | None = None
    man_pub: Path | None = None
    fw_helper: str | None = None
    man_helper: str | None = None
    imc_only: bool = False


def _party_algo(cfg: Config, party: str, algo: str, warn: bool) -> PartyAlgo:
    fw: KeySet = cfg.vendor_fw if party == "vendor" else cfg.owner_fw
    man: KeySet = cfg.vendor_man if party == "vendor" else cfg.owner_man
    fw_helper = cfg.helpers.get(algo, "fw") if party == "owner" else None
    man_helper = cfg.helpers.get(algo, "man") if party == "owner" else None
    fw_priv, fw_pub = getattr(fw, f"{algo}_priv"), getattr(fw, f"{algo}_pub")
    man_priv, man_pub = getattr(man, f"{algo}_priv"), getattr(man, f"{algo}_pub")
    sect = f"{party}_{{}}_key_config.{algo}_{{}}_key"
    needs = {
        sect.format("fw", "priv"): fw_priv is not None or fw_helper is not None,
        sect.format("fw", "pub"): fw_pub is not None or fw_helper is not None,
        sect.format("man", "priv"): man_priv is not None or man_helper is not None,
        sect.format("man", "pub"): man_pub is not None,
    }
    enabled = all(needs.values())
    imc_only = (
        not enabled
        and party == "owner"
        and algo == "ecc"
        and fw_helper is None
        and man_priv is not None
        and man_pub is not None
    )
    if warn and imc_only:
        log.warning(
            "%s: owner_fw_key_config has no ECC key pair: as the reference tool does, only the "
            "owner IMC ECC signature is made, with owner_man_key_config's ECC pair; the "
            "manifest's owner ECC key, endorsement and SVN signature stay empty",
            cfg.path,
        )
    elif warn and not enabled and any(needs.values()):
        missing = ", ".join(k for k, v in needs.items() if not v)
        log.warning(
            "%s: %s %s keys incomplete (missing %s): its %s signatures stay empty",
            cfg.path,
            party,
            algo.upper(),
            missing,
            algo.upper(),
        )
    return PartyAlgo(
        party, algo, enabled, fw_priv, fw_pub, man_priv, man_pub, fw_helper, man_helper, imc_only
    )


def key_selection(cfg: Config, warn: bool = False) -> dict[tuple[str, str], PartyAlgo]:
    """Which party signs with which algorithm; ``warn`` reports incomplete key sets (plan())."""
    return {
        (p, a): _party_algo(cfg, p, a, warn) for p in ("vendor", "owner") for a in ("ecc", "lms")
    }


# ---------------------------------------------------------------------------- public keys
def _ecc_pub_hw(path: Path) -> bytes:
    from .keys import ecc

    return ecc.public_to_hw(ecc.load_public(path))


def _lms_pub(path: Path) -> bytes:
    from .keys import lms

    return bytes(lms.load_public(path).to_bytes())


def _bundle(cfg: Config, strict: bool) -> bundle.Bundle | None:
    """The configured Caliptra firmware bundle, parsed; None when there is none (or, unless
    ``strict``, when it cannot be parsed)."""
    from .formats import bundle1 as bundle

    if cfg.caliptra_file is None:
        return None
    try:
        return bundle.parse_bundle(cfg.caliptra_file.read_bytes(), str(cfg.caliptra_file))
    except (FormatError, OSError) as exc:
        if strict:
            raise ConfigError(f"image_runtime_list.caliptra_file: {exc}") from None
        return None


def owner_fw_public(cfg: Config, sel: PartyAlgo) -> object:
    """The owner FW public key a helper's signature must verify with."""
    from .keys import ecc, lms

    if sel.fw_pub is not None:
        return ecc.load_public(sel.fw_pub) if sel.algo == "ecc" else lms.load_public(sel.fw_pub)
    b = _bundle(cfg, strict=True)
    if b is None:
        raise ConfigError(
            f"{cfg.path}: owner_fw_key_config.{sel.algo}_pub_key: needed to verify what "
            f"owner_{sel.algo}_fw_key_sign_helper returns (or set image_runtime_list.caliptra_file "
            "to a bundle holding the owner keys)"
        )
    if sel.algo == "ecc":
        return ecc.hw_to_public(b.owner_ecc_pubkey)
    return lms.LmsPublicKey.from_bytes(b.owner_lms_pubkey, f"{cfg.caliptra_file} owner LMS key")


# ---------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class SlotPlan:
    """One signature slot: what it covers and who signs it."""

    slot: str  # Manifest field name
    algo: str
    tbs: str  # one of TBS_KINDS
    kind: str  # "key" | "helper" | "prebuilt"
    key: Path | None = None  # private key file (kind "key")
    pub: Path | None = None  # configured public key of the signer, if any
    helper: str | None = None
    helper_field: str | None = None
    prebuilt: Path | None = None
    uri: str | None = None  # kind "key": the ECC key on a PKCS#11 token (key is None then)

    @property
    def inputs(self) -> list[Path]:
        """Files (besides the covered bytes) whose change invalidates this signature (a token
        key is no file: its URI is part of the plan, its public key file is ``pub``)."""
        return [p for p in (self.key, self.pub, self.prebuilt) if p is not None]

    @property
    def signing_key(self) -> Path | str | None:
        """The private key of a kind "key" slot: its file, or its PKCS#11 URI."""
        return self.uri if self.uri is not None else self.key


@dataclass(frozen=True)
class Plan:
    cfg: Config
    slots: tuple[SlotPlan, ...]
    pub_files: tuple[Path, ...]  # manifest public keys that enter the skeleton


def _check_prebuilt_allowed(cfg: Config) -> None:
    if cfg.version != 1 or cfg.stored_flags != 0:
        raise ConfigError(
            f"{cfg.path}: manifest_config.version/flags: the prebuilt vendor signature covers "
            f"only version = 1 and flags = 0, got version = {cfg.version}, flags = {cfg.flags} "
            '(use manifest_config.vendor_signature = "generate" with your own vendor keys)'
        )


def plan(cfg: Config) -> Plan:
    sel = key_selection(cfg, warn=True)
    slots: list[SlotPlan] = []
    pubs: list[Path] = []
    aspeed = cfg.format is Format.ASPEED
    for algo in ("ecc", "lms"):
        v = sel[("vendor", algo)]
        if v.enabled:
            if cfg.vendor_signature is VendorSignature.PREBUILT:
                _check_prebuilt_allowed(cfg)
                name = PREBUILT_ECC_FILE if algo == "ecc" else PREBUILT_LMS_FILE
                slots.append(
                    SlotPlan(
                        f"vnd_pub_sig_{algo}",
                        algo,
                        "vendor_pubkey",
                        "prebuilt",
                        pub=v.fw_pub,
                        prebuilt=cfg.vendor_sig_dir / name,
                    )
                )
            else:
                assert v.man_pub is not None
                pubs.append(v.man_pub)
                slots.append(
                    _key_slot(f"vnd_pub_sig_{algo}", algo, "vendor_pubkey", v.fw_priv, v.fw_pub)
                )
            if cfg.stored_flags & 1:
                slots.append(_key_slot(f"vnd_imc_sig_{algo}", algo, "imc", v.man_priv, v.man_pub))
        o = sel[("owner", algo)]
        if o.enabled:
            assert o.man_pub is not None
            pubs.append(o.man_pub)
            slots.append(_owner_slot(o, f"own_pub_sig_{algo}", "owner_pubkey", "fw"))
            if aspeed:
                slots.append(_owner_slot(o, f"own_svn_sig_{algo}", "svn", "fw"))
            slots.append(_owner_slot(o, f"own_imc_sig_{algo}", "imc", "man"))
        elif o.imc_only:
            slots.append(_key_slot(f"own_imc_sig_{algo}", algo, "imc", o.man_priv, o.man_pub))
    return Plan(cfg, tuple(slots), tuple(pubs))


def _key_slot(
    slot: str, algo: str, tbs: str, priv: Path | HsmKey | None, pub: Path | None
) -> SlotPlan:
    """A slot signed with a private key: a key file, or (ECC) a key on a PKCS#11 token."""
    if isinstance(priv, HsmKey):
        return SlotPlan(slot, algo, tbs, "key", pub=pub, uri=priv.uri)
    return SlotPlan(slot, algo, tbs, "key", key=priv, pub=pub)


def _owner_slot(sel: PartyAlgo, slot: str, tbs: str, role: str) -> SlotPlan:
    """An owner slot signed by the FW or MAN key, or by the sign helper standing in for it."""
    helper = sel.fw_helper if role == "fw" else sel.man_helper
    pub = sel.fw_pub if role == "fw" else sel.man_pub
    if helper is not None:
        field = f"sign_helper.owner_{sel.algo}_{role}_key_sign_helper"
        return SlotPlan(slot, sel.algo, tbs, "helper", pub=pub, helper=helper, helper_field=field)
    key = sel.fw_priv if role == "fw" else sel.man_priv
    return _key_slot(slot, sel.algo, tbs, key, pub)


def lms_budget(slots: Iterable[SlotPlan]) -> None:
    """Refuse, before the first leaf is spent, LMS keys that have fewer one-time signatures left
    than these slots need (sparse demo keys are not counted: they reuse one leaf)."""
    from .keys.lms_signer import LmsSigner

    by_key: dict[str, list[SlotPlan]] = {}
    for sp in slots:
        if sp.kind == "key" and sp.algo == "lms" and sp.key is not None:
            by_key.setdefault(os.path.realpath(sp.key), []).append(sp)
    for group in by_key.values():
        key = group[0].key
        assert key is not None
        left = LmsSigner.load(key, group[0].pub).leaves_left()
        if left is not None and left < len(group):
            names = ", ".join(sp.slot for sp in group)
            raise SigningError(
                f"{key}: LMS key has {left} one-time signature{'s' if left != 1 else ''} left, "
                f"this build needs {len(group)} ({names}); nothing was signed (use a new key)"
            )


# ---------------------------------------------------------------------------- steps
def image_digest(img: ImageEntry) -> bytes:
    """The manifest digest of an image: SHA-384 of its padded copy, zero-padded to 4."""
    try:
        return padding.image_digest(img.path, img.align)
    except OSError as exc:
        raise ImgtoolError(f"{img.path}: cannot read image: {exc.strerror}") from None


def build_imc(cfg: Config, digests: list[bytes] | None = None) -> bytes:
    """The 7116-byte image metadata collection (config order)."""
    if digests is None:
        digests = [image_digest(img) for img in cfg.images]
    entries = [
        ImcEntry(img.fw_id, img.flags, d) for img, d in zip(cfg.images, digests, strict=True)
    ]
    return manifest.imc_to_bytes(entries)


def skeleton(cfg: Config, imc: bytes | None = None) -> Manifest:
    """Header and manifest public keys, no signatures (prebuilt vendor keys stay zero)."""
    m = Manifest(format=cfg.format, version=cfg.version, flags=cfg.stored_flags)
    if cfg.format is Format.ASPEED:
        m.sec_ver = cfg.security_version
    sel = key_selection(cfg)
    generate = cfg.vendor_signature is VendorSignature.GENERATE
    if sel[("vendor", "ecc")].enabled and generate:
        m.vnd_man_ecc_pub = _ecc_pub_hw(_p(sel[("vendor", "ecc")].man_pub))
    if sel[("vendor", "lms")].enabled and generate:
        m.vnd_man_lms_pub = _lms_pub(_p(sel[("vendor", "lms")].man_pub))
    if sel[("owner", "ecc")].enabled:
        m.own_man_ecc_pub = _ecc_pub_hw(_p(sel[("owner", "ecc")].man_pub))
    if sel[("owner", "lms")].enabled:
        m.own_man_lms_pub = _lms_pub(_p(sel[("owner", "lms")].man_pub))
    if imc is not None:
        m.imc = imc
    return m


def _p(p: Path | None) -> Path:
    assert p is not None
    return p


def tbs_bytes(m: Manifest, kind: str) -> bytes:
    if kind == "vendor_pubkey":
        return manifest.vendor_pubkey_tbs(m)
    if kind == "owner_pubkey":
        return manifest.owner_pubkey_tbs(m)
    if kind == "svn":
        return manifest.svn_tbs(m)
    if kind == "imc":
        return manifest.imc_tbs(m)
    raise ValueError(kind)


def make_signer(cfg: Config, sp: SlotPlan) -> Signer:
    from .keys import ecc, lms
    from .signing import HelperSigner, LocalLmsSigner, ecc_key_signer

    if sp.kind == "helper":
        assert sp.helper is not None and sp.helper_field is not None
        role = "fw" if "_fw_" in sp.helper_field else "man"
        if role == "fw":
            expect = owner_fw_public(cfg, key_selection(cfg)[("owner", sp.algo)])
        else:
            assert sp.pub is not None
            expect = ecc.load_public(sp.pub) if sp.algo == "ecc" else lms.load_public(sp.pub)
        return HelperSigner(
            sp.helper, sp.algo, sp.helper_field, cfg.helpers.by_file, cfg.helpers.timeout, expect
        )
    key = sp.signing_key
    assert key is not None
    if sp.algo == "ecc":  # a PEM file or a key on a PKCS#11 token
        return ecc_key_signer(key, ecc.load_public(sp.pub) if sp.pub else None)
    assert sp.key is not None
    return LocalLmsSigner(sp.key, sp.pub)


def prebuilt_signature(cfg: Config, sp: SlotPlan) -> bytes:
    """Read ASPEED's prebuilt vendor signature, in manifest form. Whether it verifies with the
    vendor key that caliptra_file selects is checked before the build
    (:mod:`imgtool.keys.key_match`:
    an error, or a warning with --allow-key-mismatch); without a bundle, an ECC signature that
    does not verify with the configured vendor FW key is a warning here."""
    from .keys import ecc, lms

    assert sp.prebuilt is not None
    path = sp.prebuilt
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        where = ", ".join(f"{d}/" for d in cfg.vendor_sig_dirs) or f"{cfg.vendor_sig_dir}/"
        raise ConfigError(
            f"{path.name}: prebuilt vendor signature not found (looked in {where}; set "
            "--vnd-sig-dir or manifest_config.vendor_sig_dir, or use vendor_signature = "
            '"generate")'
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read prebuilt vendor signature: {exc.strerror}"
        ) from None
    log.debug("prebuilt vendor %s signature: %s", sp.algo.upper(), path)
    if sp.algo == "ecc":
        try:
            sig = ecc.der_to_hw(raw)
        except ValueError:
            raise FormatError(f"{path}: not a DER ECDSA signature") from None
        if cfg.caliptra_file is None and sp.pub is not None:
            digest = manifest.PREBUILT_VENDOR_TBS_DIGEST
            if not ecc.verify_digest(ecc.load_public(sp.pub), digest, raw):
                log.warning(
                    "%s: prebuilt vendor ECC signature does not verify with %s", path, sp.pub
                )
        return sig
    if len(raw) != lms.SLOT_LEN:
        raise FormatError(f"{path}: {len(raw)} bytes, expected a {lms.SLOT_LEN}-byte LMS signature")
    return raw


def sign_slot(cfg: Config, sp: SlotPlan, skel: Manifest) -> bytes:
    """Produce the bytes stored in one signature slot."""
    if sp.kind == "prebuilt":
        return prebuilt_signature(cfg, sp)
    digest = hashlib.sha384(tbs_bytes(skel, sp.tbs)).digest()
    sig = make_signer(cfg, sp).sign_digest(digest)
    if sp.slot == "own_svn_sig_lms":
        sig = manifest.svn_lms_sig_swap_q(sig)
    return sig


def assemble(skel: Manifest, sigs: dict[str, bytes]) -> Manifest:
    m = skel.copy()
    for slot, sig in sigs.items():
        if slot not in manifest.SIG_SLOTS:
            raise ValueError(slot)
        setattr(m, slot, sig)
    return m


def build_manifest(cfg: Config) -> Manifest:
    p = plan(cfg)
    lms_budget(p.slots)
    skel = skeleton(cfg, build_imc(cfg))
    return assemble(skel, {sp.slot: sign_slot(cfg, sp, skel) for sp in p.slots})


def create_auth_man(cfg: Config, out: Path) -> Manifest:
    m = build_manifest(cfg)
    atomic_write(out, m.to_bytes())
    return m


# ---------------------------------------------------------------------------- padding
def with_padded_copies(cfg: Config, folder: Path | None = None) -> Config:
    """Write the padded copies (manifest_config.padding_out_folder, or ``folder``) and return
    the config with every padded input replaced by its copy. Without padding, or without a
    folder, the config is returned as is (digests and the flash writer pad while streaming)."""
    folder = folder or cfg.padding_out_folder
    align = cfg.padding_align_size
    if not align or folder is None:
        return cfg
    protected = [p for _, p in cfg.input_files()] + cfg.key_files() + [cfg.path]
    copies = padding.plan_copies(cfg.input_files(), folder, align, protected, cfg.path)
    by_original = {os.path.realpath(c.original): c.copy for c in copies}
    for c in copies:
        try:
            padding.write_copy(c.original, c.copy, align)
        except OSError as exc:
            raise OutputError(
                f"{exc.filename or c.copy}: {c.field}: cannot write padded copy: {exc.strerror}"
            ) from None
        log.debug("padded copy of %s: %s", c.original, c.copy)

    def sub(p: Path | None) -> Path | None:
        return None if p is None else by_original.get(os.path.realpath(p), p)

    images = tuple(replace(img, path=sub(img.path)) for img in cfg.images)
    return replace(
        cfg, images=images, caliptra_file=sub(cfg.caliptra_file), mcu_file=sub(cfg.mcu_file)
    )


# ---------------------------------------------------------------------------- outputs
# Files the LMS code keeps beside a private key K (lms_state.state_path / lock_path,
# lms_tree.cache_path; tests/test_lms_state.py checks they agree): never an output.
KEY_SIDE_FILES = ((".state", "LMS leaf state"), (".lock", "LMS state lock"), (".tree", "LMS tree"))


def check_outputs(cfg: Config, outputs: dict[str, Path]) -> None:
    """Refuse output paths that name the same file twice, an input, or a directory."""
    inputs = [(f, p) for f, p in cfg.input_files()]
    inputs += [("a key file", p) for p in cfg.key_files()]
    inputs += [
        (f"the {what} of key {p}", p.with_name(p.name + suffix))
        for p in cfg.key_files()
        for suffix, what in KEY_SIDE_FILES
    ]
    inputs.append(("the config", cfg.path))
    # an existing input by (device, inode): the same file by any path, symlink or hard link; a
    # missing one (an LMS side file not made yet) by its real path. One stat per input.
    by_inode: dict[tuple[int, int], tuple[str, Path]] = {}
    by_path: dict[str, tuple[str, Path]] = {}
    for fld, p in inputs:
        try:
            st = os.stat(p)
        except OSError:
            by_path.setdefault(os.path.realpath(p), (fld, p))
            continue
        by_inode.setdefault((st.st_dev, st.st_ino), (fld, p))
    seen: dict[str, str] = {}
    for opt, out in outputs.items():
        if out.is_dir():
            raise OutputError(f"{out}: {opt} names a directory, not an output file")
        for parent in out.absolute().parents:  # found now, not after every signature is made
            if parent.exists():
                if not parent.is_dir():
                    raise OutputError(f"{out}: {opt}: {parent} is a file, not a directory")
                break
        if _is_database(out):
            raise OutputError(
                f"{out}: {opt} would overwrite a SQLite database (the LMS state store?)"
            )
        key = os.path.realpath(out)
        if key in seen:
            raise OutputError(f"{out}: {opt} and {seen[key]} name the same file")
        seen[key] = opt
        try:
            ost = os.stat(out)
            hit = by_inode.get((ost.st_dev, ost.st_ino))
        except OSError:  # not there yet: only a missing input can have its path
            hit = by_path.get(key)
        if hit is not None:
            raise OutputError(f"{out}: {opt} would overwrite the input {hit[1]} ({hit[0]})")


_SQLITE_MAGICS = (b"SQLite format 3\0", b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")  # db, WAL


def _is_database(out: Path) -> bool:
    """An existing SQLite database, its write-ahead log, or the -shm / -journal file beside
    one: the LMS state store's leaf log is in such files (found by content, wherever
    --state / CPTRA_IMGTOOL_STATE put it)."""

    def magic(p: Path) -> bool:
        try:
            with open(p, "rb") as fh:
                return fh.read(16).startswith(_SQLITE_MAGICS)
        except OSError:
            return False

    if magic(out):
        return True
    for suffix in ("-wal", "-shm", "-journal"):
        if out.name.endswith(suffix) and magic(out.with_name(out.name[: -len(suffix)])):
            return True
    return False


def _same_inode(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# ---------------------------------------------------------------------------- flash
def flash_items(
    cfg: Config, man: Manifest
) -> tuple[list[FlashItem], tuple[FlashItem, FlashItem] | None]:
    """The FLSH entries (and for cptra_out_bundle the raw Caliptra/MCU images)."""
    by_fw_id = {e.fw_id: e.digest for e in man.entries}
    align = cfg.padding_align_size
    cal = FlashItem(ID_CALIPTRA, cfg.caliptra_file, align=align, name="caliptra_file")
    mcu_want = None
    mcu_img = next((i for i in cfg.images if i.fw_id == MCU_FW_ID), None)
    if mcu_img is not None and mcu_img.path is not None and cfg.mcu_file is not None:
        if _same_inode(mcu_img.path, cfg.mcu_file):
            mcu_want = by_fw_id.get(MCU_FW_ID)  # the MCU runtime is fw_id 1's image
    mcu = FlashItem(
        ID_MCU, cfg.mcu_file, align=align, expect_digest=mcu_want, name="mcu_file", fw_id=1
    )
    soc: list[FlashItem] = []
    for i, img in enumerate(cfg.soc_images):
        want = by_fw_id.get(img.fw_id)
        if want is None:
            raise ImgtoolError(f"manifest has no entry for fw_id {img.fw_id} ({img.file})")
        soc.append(
            FlashItem(
                SOC_ID_BASE + i,
                img.path,
                align=img.align,
                expect_digest=want,
                name=img.file,
                fw_id=img.fw_id,
            )
        )
    count = 3 + len(soc)
    if count > MAX_IMAGES:
        raise ConfigError(
            f"{cfg.path}: image_metadata_list: {len(soc)} SoC images + Caliptra, manifest and MCU "
            f"= {count} flash images; the FLSH readers accept at most {MAX_IMAGES} "
            f"(at most {MAX_IMAGES - 3} SoC images)"
        )
    if cfg.zero_caliptra_file_end is not None:
        fill = cfg.zero_caliptra_file_end - (HEADER_LEN + ENTRY_LEN * count)
        if fill < 0 or fill % 4:
            raise ConfigError(
                f"{cfg.path}: image_runtime_list.zero_caliptra_file_end: "
                f"0x{cfg.zero_caliptra_file_end:x} minus the {HEADER_LEN + ENTRY_LEN * count}-byte "
                "FLSH header must be >= 0 and a multiple of 4"
            )
        cal = FlashItem(ID_CALIPTRA, data=bytes(fill), name="zero_caliptra_file_end")
    man_item = FlashItem(ID_MANIFEST, data=man.to_bytes(), name="manifest")
    out_bundle = None
    if cfg.cptra_out_bundle:
        out_bundle = (cal, mcu)
        cal = FlashItem(ID_CALIPTRA, name="caliptra (out of bundle)")
        mcu = FlashItem(ID_MCU, name="mcu (out of bundle)")
    return [cal, man_item, mcu, *soc], out_bundle


def read_manifest(path: Path) -> Manifest:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImgtoolError(f"{path}: manifest not found") from None
    except IsADirectoryError:
        raise ImgtoolError(f"{path}: --man names a directory, not a manifest file") from None
    except OSError as exc:
        raise ImgtoolError(f"{path}: cannot read manifest: {exc.strerror}") from None
    return Manifest.parse(data, str(path))


def mismatch_error(err: DigestMismatch, man_name: str) -> ImgtoolError:
    """The one-line message for an image whose digest is not the manifest's."""
    item = err.item
    what = f"fw_id {item.fw_id}" if item.fw_id is not None else item.name
    if err.changed_while_writing:
        return ImgtoolError(
            f"{item.path}: image changed while the flash image was written (its digest no "
            f"longer matches {man_name}, {what}); rebuild"
        )
    return ImgtoolError(
        f"{man_name}: the manifest is older than image {item.path} (the digest of {what} "
        "differs); rebuild the manifest (create-auth-man, or create-auth-flash without --man)"
    )


def create_auth_flash(cfg: Config, out: Path, man: Manifest, man_name: str = "the manifest") -> int:
    if man.format is not cfg.format:
        raise ImgtoolError(f"{man_name}: manifest is format {man.format}, config says {cfg.format}")
    items, out_bundle = flash_items(cfg, man)
    try:
        return write_flash_file(out, items, out_bundle=out_bundle)
    except DigestMismatch as exc:
        raise mismatch_error(exc, man_name) from None
    except OSError as exc:
        raise ImgtoolError(f"{exc.filename or out}: {exc.strerror}") from None
