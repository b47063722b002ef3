"""Caliptra 2.x builds: ATM2 manifest, FLSH v1 flash image, fw_toc.bin.

plan -> digests -> IMC -> signatures -> manifest -> flash (imgtool.formats.manifest2 / flash2 /
fw_toc hold the bytes).  PQC type 1 = ML-DSA-87 (signs the RAW covered bytes, deterministic),
3 = LMS (signs SHA-384 of the covered bytes with real leaf state, as in 1.x)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .build import _ecc_pub_hw, _lms_pub
from .formats import padding
from .signing2 import sign2  # the one 2.x signer (local keys, PKCS#11, helpers, server)

__all__ = ["sign2"]  # sign_pair2 calls it as a module attribute (tests substitute it)

PQC_TYPES = {1: "mldsa", 3: "lms"}


def pqc_algo(value: str | int) -> str:
    """--pqc-key-type / pqc=: 1|mldsa -> "mldsa", 3|lms -> "lms"; anything else a ConfigError."""
    from .errors import ConfigError

    s = str(value).strip().lower()
    if s in ("1", "mldsa"):
        return "mldsa"
    if s in ("3", "lms"):
        return "lms"
    raise ConfigError(f"--pqc-key-type: must be 1 (ML-DSA-87) or 3 (LMS), got {value!r}")


def padded_name2(path: Path, align: int) -> str:
    """<stem>_align_<N>.<ext> when padding is on (the name fw_toc records), else the base name."""
    return padding.padded_name(path, align) if align > 0 else path.name


def read_padded(path: Path | None, align: int) -> bytes:
    if path is None:
        return b""
    data = path.read_bytes()
    return data + bytes(padding.padded_len(len(data), align) - len(data))


def image_digest2(img: Any, align: int) -> bytes:
    """SHA-384 of the image as the flash image holds it (padded to align, then to 4)."""
    return padding.image_digest(img.file, align)


def build_imc2(cfg2: Any, digests: list[bytes] | None = None) -> bytes:
    from .formats import manifest2 as m2

    if digests is None:
        digests = [image_digest2(i, cfg2.padding_align_size) for i in cfg2.images]
    entries = [
        m2.ImcEntry2(
            fw_id=i.fw_id,
            component_id=i.component_id,
            classification=i.classification,
            flags=m2.entry_flags(i.source, i.ignore_auth_check, i.exec_bit, i.load_stage),
            load_address=i.load_address,
            staging_address=i.staging_address,
            digest=d,
        )
        for i, d in zip(cfg2.images, digests, strict=True)
    ]
    return m2.Imc2(entries).pack()


def _pqc_pub2(ks: Any, pqc: str) -> bytes:
    from .keys import mldsa

    if pqc == "mldsa":
        return mldsa.MldsaPublicKey.load(ks.mldsa_pub).raw
    return _lms_pub(ks.lms_pub)


# which key section signs each signature pair (ECC + PQC) of the ATM2 manifest
SIGNERS2 = {
    "vnd_pub_sig": "vendor_fw_key_config",
    "own_pub_sig": "owner_fw_key_config",
    "vnd_imc_sig": "vendor_man_key_config",
    "own_imc_sig": "owner_man_key_config",
}


def sig_names2(cfg2: Any) -> list[str]:
    """The signature pairs this config makes, in signing order (the vendor IMC pair only with
    flags bit 0)."""
    from .formats import manifest2 as m2

    vendor_imc = bool(cfg2.flags & m2.FLAG_VENDOR_IMC_SIG_REQUIRED)
    return [n for n in SIGNERS2 if n != "vnd_imc_sig" or vendor_imc]


def skeleton2(cfg2: Any, pqc: str, imc: bytes) -> Any:
    """The ATM2 manifest without signatures: header, manifest public keys and the IMC (``imc``
    may be an empty IMC when only the public-key signatures are wanted: they do not cover it)."""
    from .formats import manifest2 as m2

    k = cfg2.keys
    vm, om = k["vendor_man_key_config"], k["owner_man_key_config"]
    return m2.Manifest2(
        version=cfg2.version,
        svn=cfg2.svn,
        flags=cfg2.flags & m2.FLAG_VENDOR_IMC_SIG_REQUIRED,
        vnd_man_ecc_pub=_ecc_pub_hw(vm.ecc_pub),
        vnd_man_pqc_pub=_pqc_pub2(vm, pqc),
        own_man_ecc_pub=_ecc_pub_hw(om.ecc_pub),
        own_man_pqc_pub=_pqc_pub2(om, pqc),
        imc=m2.Imc2.parse(imc),
    )


def sign_slot2(ks: Any, pqc: str, msg: bytes, helper: Any, slot: str) -> tuple[bytes, bytes]:
    """:func:`sign2` for signature pair ``slot``: its errors start with the slot's name.  The
    helper is passed only when there is one (a substitute ``sign2(ks, pqc, msg)`` still fits)."""
    from .errors import ImgtoolError

    try:
        return sign2(ks, pqc, msg) if helper is None else sign2(ks, pqc, msg, helper)
    except ImgtoolError as exc:
        exc.args = (f"{slot}: {exc}",)  # keeps the type (an LmsStateError stays one)
        raise


def sign_pair2(cfg2: Any, pqc: str, name: str, skel_bytes: bytes) -> tuple[bytes, bytes]:
    """Signature pair ``name`` (a SIGNERS2 key) over what it covers in the packed skeleton:
    each part from its key section's sign helper, else its private key (file or PKCS#11)."""
    from .formats import manifest2 as m2

    section = SIGNERS2[name]
    msg = m2.covered(skel_bytes, name)
    return sign_slot2(cfg2.keys[section], pqc, msg, cfg2.helpers(section), name)


def has_helper2(cfg2: Any, section: str, algo: str) -> bool:
    """Whether a [sign_helper] command signs ``algo`` (ecc|lms|mldsa) for key ``section``."""
    h = cfg2.helpers(section)
    return h is not None and h.command(algo) is not None


def assemble2(skel: Any, sigs: dict[str, tuple[bytes, bytes]]) -> bytes:
    """The packed manifest: the skeleton with these signature pairs in their slots."""
    for name, (ecc_sig, pqc_sig) in sigs.items():
        if name not in SIGNERS2:
            raise ValueError(name)
        setattr(skel, f"{name}_ecc", ecc_sig)
        setattr(skel, f"{name}_pqc", pqc_sig)
    return bytes(skel.pack())


def lms_budget2(cfg2: Any, pqc: str, names: list[str]) -> None:
    """Refuse, before the first leaf is spent, LMS keys with fewer one-time signatures left than
    the signature pairs ``names`` need of them (a key file may sign for several key sections;
    sparse demo keys reuse one leaf and are not counted). As :func:`imgtool.build.lms_budget`."""
    from .build import SlotPlan, lms_budget

    if pqc != "lms":
        return
    slots = []
    for n in names:
        ks = cfg2.keys[SIGNERS2[n]]
        if ks.lms_priv is not None and not has_helper2(cfg2, SIGNERS2[n], "lms"):
            slots.append(SlotPlan(f"{n}_pqc", "lms", "imc", "key", key=ks.lms_priv, pub=ks.lms_pub))
    lms_budget(slots)


def build_manifest2(cfg2: Any, pqc: str, imc: bytes | None = None) -> bytes:
    """The 34456-byte ATM2 manifest (unpadded)."""
    lms_budget2(cfg2, pqc, sig_names2(cfg2))
    skel = skeleton2(cfg2, pqc, imc if imc is not None else build_imc2(cfg2))
    data = skel.pack()
    return assemble2(skel, {n: sign_pair2(cfg2, pqc, n, data) for n in sig_names2(cfg2)})


def check_outputs2(cfg2: Any, outputs: dict[str, Path], flash: bool | None = None) -> None:
    """Refuse output paths that name one file twice, a directory, or an input (an image, a key
    file, the config): :func:`imgtool.build.check_outputs` on the 2.x config's inputs.  When a
    flash image is among the outputs (``flash``; None: an output named like "--flash" or
    "flash="), also :func:`check_flash_plan2`: all of this before anything is read or signed."""
    from types import SimpleNamespace

    from .build import check_outputs

    inputs = SimpleNamespace(
        input_files=lambda: padding_inputs2(cfg2), key_files=cfg2.key_files, path=cfg2.path
    )
    check_outputs(inputs, outputs)  # type: ignore[arg-type]  # the three members it reads
    if flash is None:
        flash = any("flash" in name for name in outputs)
    if flash:
        check_flash_plan2(cfg2)


def flash2_files2(cfg2: Any) -> list[tuple[int, str, Path | None]]:
    """(identifier, config field, file) of the flash image's images in order: caliptra 0,
    manifest 1 (field "manifest", no file: it is the build's output), MCU runtime 2, SoC images
    0x1000 + i."""
    from .config2 import MCU_FW_ID
    from .formats import flash2 as f2

    out: list[tuple[int, str, Path | None]] = [
        (f2.ID_CALIPTRA_FW, "image_runtime_list.caliptra_file", cfg2.caliptra_file),
        (f2.ID_SOC_MANIFEST, "manifest", None),
        (f2.ID_MCU_RUNTIME, "image_runtime_list.mcu_file", cfg2.mcu_file),
    ]
    soc = [(i, img) for i, img in enumerate(cfg2.images) if img.fw_id != MCU_FW_ID]
    for n, (i, img) in enumerate(soc):
        out.append((f2.ID_SOC_IMAGE_BASE + n, f"image_metadata_list[{i}].file", img.file))
    return out


def flash2_planned_size2(cfg2: Any, man_len: int | None = None) -> int:
    """The flash image's size from stat() of its files (nothing is read): every image padded to
    padding_align_size and to 4; the manifest ``man_len`` bytes (default: the ATM2 manifest
    padded to padding_align_size, as create_auth_man2 writes it)."""
    from .errors import ConfigError
    from .formats import flash2 as f2
    from .formats import manifest2 as m2

    a = cfg2.padding_align_size
    if man_len is None:
        man_len = padding.padded_len(m2.TOTAL_LEN, a) if a > 0 else m2.TOTAL_LEN
    sizes = []
    for ident, fld, path in flash2_files2(cfg2):
        if ident == f2.ID_SOC_MANIFEST:
            sizes.append(f2.padded_size(man_len))
            continue
        try:
            n = f2.source_len(path)
        except OSError as exc:
            raise ConfigError(f"{path}: {fld}: cannot read: {exc.strerror or exc}") from None
        sizes.append(f2.padded_size(n, a))
    return f2.flash_size2(sizes)


def check_flash_plan2(cfg2: Any, man_len: int | None = None) -> None:
    """Refuse, before anything is read or signed, a flash image whose size (from stat() of the
    files, :func:`flash2_planned_size2`) is above 2^32 - 1 bytes (FLSH offsets are u32), or with
    more images than fw_toc.bin holds."""
    from .errors import ConfigError
    from .formats import flash2 as f2
    from .formats import fw_toc

    count = len(flash2_files2(cfg2))
    if count > fw_toc.MAX_ENTRIES:
        raise ConfigError(
            f"{cfg2.path}: the flash image would hold {count} images (caliptra, manifest, MCU "
            f"runtime and {count - 3} SoC images); fw_toc.bin holds at most {fw_toc.MAX_ENTRIES}"
        )
    size = flash2_planned_size2(cfg2, man_len)
    if size > f2.MAX_FLASH_SIZE:
        a = cfg2.padding_align_size
        raise ConfigError(
            f"{cfg2.path}: the flash image would be {size} bytes ({size / (1 << 30):.2f} GiB"
            + (f", padding_align_size {a}" if a > 0 else "")
            + f"); at most {f2.MAX_FLASH_SIZE} bytes fit its u32 offsets"
        )


def padding_inputs2(cfg2: Any) -> list[tuple[str, Path]]:
    """(config field, path) of every input that padding_align_size replaces by a padded copy."""
    return list(cfg2.input_fields())


def padded_copies2(cfg2: Any, folder: Path | None = None) -> list[padding.Copy]:
    """The padded copies the reference writes (padding_out_folder, or ``folder``): none without
    padding_align_size or without a folder (the digests and the flash image pad in memory; the
    reference's temporary folder is removed at exit)."""
    folder = folder or cfg2.padding_out_folder
    if not cfg2.padding_align_size or folder is None:
        return []
    inputs = padding_inputs2(cfg2)
    protected = [p for _, p in inputs] + cfg2.key_files() + [cfg2.path]
    return padding.plan_copies(inputs, folder, cfg2.padding_align_size, protected, cfg2.path)


def write_padded_copies2(cfg2: Any, folder: Path | None = None) -> list[padding.Copy]:
    """Write the copies of :func:`padded_copies2` (an existing copy with the right bytes is
    left alone); the build itself reads the originals and pads them the same way."""
    from .errors import OutputError

    copies = padded_copies2(cfg2, folder)
    for c in copies:
        try:
            padding.write_copy(c.original, c.copy, cfg2.padding_align_size)
        except OSError as exc:
            raise OutputError(
                f"{exc.filename or c.copy}: {c.field}: cannot write padded copy: {exc.strerror}"
            ) from None
    return copies


def create_auth_man2(cfg2: Any, pqc: str, out: Path) -> bytes:
    """Write the manifest, zero-padded to padding_align_size; return the written bytes."""
    from .fileio import atomic_write
    from .formats import manifest2 as m2

    data = m2.pad_to(build_manifest2(cfg2, pqc), cfg2.padding_align_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, data)
    return data


def flash2_parts(cfg2: Any, man: bytes, man_name: str) -> tuple[list[tuple[int, bytes]], list[str]]:
    """(identifier, bytes) and fw_toc names: caliptra 0, manifest 1, MCU runtime 2, SoC images
    0x1000 + i in order (the padded copies when padding_align_size is set).  Every image in
    memory (verify compares them); the build streams them (:func:`flash2_items2`)."""
    from .formats import flash2 as f2

    a = cfg2.padding_align_size
    parts: list[tuple[int, bytes]] = []
    names: list[str] = []
    for ident, _fld, path in flash2_files2(cfg2):
        if ident == f2.ID_SOC_MANIFEST:
            parts.append((ident, man))
            names.append(man_name)
        else:
            parts.append((ident, read_padded(path, a)))
            names.append(padded_name2(path, a) if path is not None else "")
    return parts, names


def flash2_items2(cfg2: Any, man: bytes, man_name: str) -> tuple[list[Any], list[str]]:
    """The :class:`imgtool.formats.flash2.FlashItem2` items (files read once, streamed, for
    their checksums) and fw_toc names of :func:`flash2_parts`, without holding any image."""
    from .formats import flash2 as f2

    a = cfg2.padding_align_size
    items: list[f2.FlashItem2] = []
    names: list[str] = []
    for ident, _fld, path in flash2_files2(cfg2):
        if ident == f2.ID_SOC_MANIFEST:
            items.append(f2.flash_item2(ident, man))
            names.append(man_name)
        else:
            items.append(f2.flash_item2(ident, path, a))
            names.append(padded_name2(path, a) if path is not None else "")
    return items, names


def check_manifest_current2(cfg2: Any, man: bytes, man_name: str) -> None:
    """Refuse a manifest whose IMC digests are not those of the images going into the flash
    image (a manifest older than an image, or another config's): the device would reject it.
    The MCU runtime is checked when the IMC's fw_id 2 image is mcu_file itself.  The digests
    are streamed from the files (padded to padding_align_size, then to 4)."""
    import os

    from .errors import FormatError, ImgtoolError
    from .formats import manifest2 as m2

    try:
        imc = m2.Manifest2.parse(man).imc
    except FormatError as exc:
        raise FormatError(f"{man_name}: {exc}") from None
    want = {e.fw_id: e.digest for e in imc.entries}
    checks: list[tuple[int, Any]] = [(img.fw_id, img) for img in cfg2.soc_images]
    mcu = next((i for i in cfg2.images if i.fw_id == 2), None)
    if mcu is not None and mcu.file is not None and cfg2.mcu_file is not None:
        if os.path.realpath(mcu.file) == os.path.realpath(cfg2.mcu_file):
            checks.append((2, mcu))
    for fw_id, img in checks:
        if want.get(fw_id) != padding.image_digest(img.file, cfg2.padding_align_size):
            raise ImgtoolError(
                f"{man_name}: the manifest is older than image {img.file or '(empty)'} (the "
                f"digest of fw_id {fw_id:#x} differs); rebuild the manifest (create-auth-man-2x, "
                "or create-auth-flash-2x without --man)"
            )


def create_auth_flash2(cfg2: Any, out: Path, man: bytes, man_name: str) -> tuple[int, Path]:
    """Write the 2.x flash image and fw_toc.bin beside it; return (flash size, fw_toc path).
    The images are streamed (:func:`imgtool.formats.flash2.write_flash2`): memory does not grow
    with their size."""
    from .fileio import atomic_write, atomic_writer
    from .formats import flash2 as f2
    from .formats import fw_toc

    check_flash_plan2(cfg2, len(man))
    check_manifest_current2(cfg2, man, man_name)
    items, names = flash2_items2(cfg2, man, man_name)
    toc = fw_toc.FwToc.from_flash(f2.flash_entries2(items), names).pack()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(out) as fh:
        n = f2.write_flash2(fh, items)
    toc_path = out.parent / "fw_toc.bin"
    atomic_write(toc_path, toc)
    return n, toc_path
