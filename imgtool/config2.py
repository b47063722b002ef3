"""Caliptra 2.x project configs (``<soc>-<board>-ecc-lms-mldsa-manifest.toml``): the schema as
data, one table per section, and one loader.  1.x configs load with :mod:`imgtool.config`.

Rules (spec/caliptra2.md): every key section names ecc/lms/mldsa keys and all three PUBLIC keys
are required; ``security_version`` is the native 2.x svn (0..128); per image ``exec_bit``,
``component_id``, ``image_load_address``, ``image_staging_address``, ``classification`` are
required; the MCU runtime has fw_id 2 and the SoC images fw_id 0x1000, 0x1001, ... in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import (
    _PRJ_RE,
    FIRST_SOC_FW_ID_2X,
    KEY_SECTIONS,
    MAX_HELPER_TIMEOUT,
    HsmKey,
    _check_table,
    _err,
    _hsm_key,
    _looks_like_uri,
    _u32,
    default_key_dir,
    is_2x,
    padding_align,
    read_toml,
    refuse_private_keys_as_inputs,
)
from .errors import ConfigError
from .signing2 import HELPER_FIELDS2, KeyHelpers, helpers_for

SVN_MAX = 128
MCU_FW_ID = 2
FIRST_SOC_FW_ID = FIRST_SOC_FW_ID_2X
U64_MAX = (1 << 64) - 1

KEY_FIELDS2 = (
    "ecc_pub_key",
    "ecc_priv_key",
    "lms_pub_key",
    "lms_priv_key",
    "mldsa_pub_key",
    "mldsa_priv_key",
)
PUBLIC_FIELDS2 = ("ecc_pub_key", "lms_pub_key", "mldsa_pub_key")

# section -> {field: type}; the 2.x generation's schema
MANIFEST_FIELDS2: dict[str, type | tuple[type, ...]] = {
    "version": int,
    "flags": int,
    "security_version": int,
    "prj_name": str,
    "padding_align_size": int,
    "padding_out_folder": str,
}
RUNTIME_FIELDS2: dict[str, type | tuple[type, ...]] = {
    "caliptra_file": str,
    "mcu_file": str,
}
IMAGE_FIELDS2: dict[str, type | tuple[type, ...]] = {
    "file": str,
    "source": int,
    "fw_id": int,
    "ignore_auth_check": bool,
    "load_stage": int,
    "exec_bit": int,
    "component_id": int,
    "image_load_address": int,
    "image_staging_address": int,
    "classification": int,
}
IMAGE_REQUIRED2 = (
    "fw_id",
    "exec_bit",
    "component_id",
    "image_load_address",
    "image_staging_address",
    "classification",
)
# (field, min, max)
IMAGE_RANGES2 = {
    "source": (0, 3),
    "fw_id": (0, 0xFFFFFFFE),
    "load_stage": (0, 3),
    "exec_bit": (0, 127),
    "component_id": (0, 0xFFFFFFFF),
    "classification": (0, 0xFFFFFFFF),
    "image_load_address": (0, U64_MAX),
    "image_staging_address": (0, U64_MAX),
}
KEY_SECTION_FIELDS2: dict[str, type | tuple[type, ...]] = dict.fromkeys(KEY_FIELDS2, str)
SECTIONS2 = (
    "manifest_config",
    *KEY_SECTIONS,
    "sign_helper",
    "image_runtime_list",
    "image_metadata_list",
)
# [sign_helper]: a command per key section and algorithm (HELPER_FIELDS2: the reference's
# owner_{ecc,lms}_*, plus owner_mldsa_* and, 2.x having no prebuilt vendor signatures,
# vendor_*), by_file and timeout for all of them (as 1.x config._helpers)
HELPER_SECTION_FIELDS2: dict[str, type | tuple[type, ...]] = {
    **dict.fromkeys(HELPER_FIELDS2, str),
    "by_file": bool,
    "timeout": (int, float),
}
_ONE_X_ONLY = {"format", "vendor_signature", "vendor_sig_dir", "strict_fw_ids", "svn"}


@dataclass(frozen=True)
class KeySet2:
    """One key section's files (joined with the key dir); None for an unset private key. The
    ECC private key may be a key on a PKCS#11 token (:class:`imgtool.config.HsmKey`)."""

    ecc_pub: Path
    ecc_priv: Path | HsmKey | None
    lms_pub: Path
    lms_priv: Path | None
    mldsa_pub: Path
    mldsa_priv: Path | None


@dataclass(frozen=True)
class ImageEntry2:
    file: Path | None
    source: int
    fw_id: int
    ignore_auth_check: bool
    load_stage: int
    exec_bit: int
    component_id: int
    classification: int
    load_address: int
    staging_address: int


@dataclass(frozen=True)
class Config2:
    path: Path
    prj_name: str
    version: int
    flags: int
    svn: int
    padding_align_size: int
    padding_out_folder: Path | None
    keys: dict[str, KeySet2]
    caliptra_file: Path | None
    mcu_file: Path | None
    images: tuple[ImageEntry2, ...]  # IMC order: the MCU runtime (fw_id 2), then SoC images
    # the validated [sign_helper] table (signing2.helpers_for takes it), {} without one
    sign_helper: dict[str, Any] = field(default_factory=dict)

    @property
    def soc_images(self) -> tuple[ImageEntry2, ...]:
        return tuple(i for i in self.images if i.fw_id != MCU_FW_ID)

    def default_manifest_path(self) -> Path:
        return Path("out") / f"{self.prj_name}-auth-manifest.bin"

    def default_flash_path(self) -> Path:
        return Path("out") / f"{self.prj_name}-flash-image.bin"

    def key_files(self) -> list[Path]:
        """Every configured key file (keys on a PKCS#11 token are not files: see hsm_keys)."""
        out: list[Path] = []
        for ks in self.keys.values():
            for p in (
                ks.ecc_pub,
                ks.ecc_priv,
                ks.lms_pub,
                ks.lms_priv,
                ks.mldsa_pub,
                ks.mldsa_priv,
            ):
                if isinstance(p, Path):
                    out.append(p)
        return out

    def hsm_keys(self) -> list[HsmKey]:
        """The ECC private keys that live on a PKCS#11 token."""
        return [ks.ecc_priv for ks in self.keys.values() if isinstance(ks.ecc_priv, HsmKey)]

    def helpers(self, section: str) -> KeyHelpers | None:
        """The sign helpers standing in for key section ``section``'s private keys, or None."""
        return helpers_for(self.sign_helper, section)

    def input_fields(self) -> list[tuple[str, Path]]:
        """(config field, path) of every binary input: caliptra_file, mcu_file, the images."""
        out: list[tuple[str, Path]] = []
        if self.caliptra_file is not None:
            out.append(("image_runtime_list.caliptra_file", self.caliptra_file))
        if self.mcu_file is not None:
            out.append(("image_runtime_list.mcu_file", self.mcu_file))
        out += [
            (f"image_metadata_list[{i}].file", img.file)
            for i, img in enumerate(self.images)
            if img.file is not None
        ]
        return out

    def input_files(self) -> list[Path]:
        return [p for _, p in self.input_fields()]


def load_config2(
    path: str | Path,
    *,
    key_dir: str | Path | None = None,
    prebuilt_dir: str | Path | None = None,
    check_files: bool = True,
    private_keys: bool = True,
) -> Config2:
    """Parse and validate a 2.x config; a ConfigError with one line naming file and field."""
    cfg_path = Path(path)
    raw = read_toml(cfg_path)
    if not is_2x(raw):
        raise ConfigError(
            f"{cfg_path}: a Caliptra 1.x config (SoC image fw_ids below 0x1000); "
            "use create-auth-man / create-auth-flash"
        )

    def warn(msg: str) -> None:  # 2.x: unknown keys are errors, nothing only warns
        raise ConfigError(msg)

    for key in raw:
        if key not in SECTIONS2:
            raise _err(cfg_path, key, "unknown section")
    mc_raw = raw.get("manifest_config", {})
    if isinstance(mc_raw, dict):
        for k in mc_raw:
            if k in _ONE_X_ONLY:
                raise _err(cfg_path, f"manifest_config.{k}", "a Caliptra 1.x field")
    mc = _check_table(cfg_path, "manifest_config", mc_raw, MANIFEST_FIELDS2, warn)
    version = _u32(cfg_path, "manifest_config.version", mc.get("version", 0))
    flags = _u32(cfg_path, "manifest_config.flags", mc.get("flags", 0))
    svn = mc.get("security_version", 0)
    if not 0 <= svn <= SVN_MAX:
        raise _err(cfg_path, "manifest_config.security_version", f"must be 0..128, got {svn}")
    prj = mc.get("prj_name", "default_project")
    if not _PRJ_RE.fullmatch(prj):  # it names out/<prj>/ and the output files: no path, no ".."
        raise _err(cfg_path, "manifest_config.prj_name", f"not a plain name: {prj!r}")
    align = padding_align(cfg_path, mc.get("padding_align_size", 0))
    pf = mc.get("padding_out_folder", "")

    names: dict[str, dict[str, str]] = {}
    for section in KEY_SECTIONS:
        t = _check_table(cfg_path, section, raw.get(section, {}), KEY_SECTION_FIELDS2, warn)
        names[section] = {k: v for k, v in t.items() if v != ""}
        for fld in PUBLIC_FIELDS2:
            if fld not in names[section]:
                raise _err(cfg_path, f"{section}.{fld}", "required in a Caliptra 2.x config")
    hsm = {
        (section, fld): _hsm_key2(cfg_path, section, fld, n)
        for section, t in names.items()
        for fld, n in t.items()
        if _looks_like_uri(n)
    }
    if key_dir is not None:
        kdir = Path(key_dir)
    else:
        files = [n for s, t in names.items() for f, n in t.items() if (s, f) not in hsm]
        kdir, _ = default_key_dir(prj, files)
    keys: dict[str, KeySet2] = {}
    for section in KEY_SECTIONS:
        vals: dict[str, Path | None] = {}
        for fld in KEY_FIELDS2:
            n = names[section].get(fld)
            if n is None or (section, fld) in hsm:  # a URI is never joined onto the key dir
                vals[fld] = None
                continue
            p = kdir / n
            needed = private_keys or not fld.endswith("_priv_key")
            if check_files and needed and not p.is_file():
                raise _err(cfg_path, f"{section}.{fld}", f"key file not found: {p}")
            vals[fld] = p
        ecc_pub, lms_pub, mldsa_pub = (vals[f] for f in PUBLIC_FIELDS2)
        assert ecc_pub is not None and lms_pub is not None and mldsa_pub is not None
        keys[section] = KeySet2(
            ecc_pub,
            hsm.get((section, "ecc_priv_key"), vals["ecc_priv_key"]),
            lms_pub,
            vals["lms_priv_key"],
            mldsa_pub,
            vals["mldsa_priv_key"],
        )

    sign_helper = _helpers2(cfg_path, raw.get("sign_helper", {}), warn)

    pdir = Path(prebuilt_dir) if prebuilt_dir is not None else Path("prebuilt") / prj

    def resolve(where: str, name: str) -> Path | None:
        if name == "":
            return None
        p = pdir / name
        if check_files and not p.is_file():
            raise _err(cfg_path, where, f"file not found: {p}")
        return p

    rt = _check_table(
        cfg_path, "image_runtime_list", raw.get("image_runtime_list", {}), RUNTIME_FIELDS2, warn
    )
    caliptra = resolve("image_runtime_list.caliptra_file", rt.get("caliptra_file", ""))
    mcu = resolve("image_runtime_list.mcu_file", rt.get("mcu_file", ""))

    items = raw.get("image_metadata_list", [])
    if not isinstance(items, list):
        raise _err(cfg_path, "image_metadata_list", "must be an array of tables")
    images: list[ImageEntry2] = []
    next_soc = FIRST_SOC_FW_ID
    for idx, item in enumerate(items):
        where = f"image_metadata_list[{idx}]"
        t = _check_table(cfg_path, where, item, IMAGE_FIELDS2, warn)
        for fld in IMAGE_REQUIRED2:
            if fld not in t:
                raise _err(cfg_path, f"{where}.{fld}", "required in a Caliptra 2.x config")
        for fld, (lo, hi) in IMAGE_RANGES2.items():
            v = t.get(fld, 0)
            if not lo <= v <= hi:
                raise _err(cfg_path, f"{where}.{fld}", f"must be {lo}..{hi:#x}, got {v}")
        fw_id = t["fw_id"]
        if idx == 0 and fw_id == MCU_FW_ID:
            pass
        elif fw_id != next_soc:
            want = f"{next_soc:#x}" + (" (or 2 for the MCU runtime, first)" if idx == 0 else "")
            raise _err(cfg_path, f"{where}.fw_id", f"must be {want}, got {fw_id:#x}")
        else:
            next_soc += 1
        images.append(
            ImageEntry2(
                file=resolve(f"{where}.file", t.get("file", "")),
                source=t.get("source", 0),
                fw_id=fw_id,
                ignore_auth_check=t.get("ignore_auth_check", False),
                load_stage=t.get("load_stage", 0),
                exec_bit=t["exec_bit"],
                component_id=t["component_id"],
                classification=t["classification"],
                load_address=t["image_load_address"],
                staging_address=t["image_staging_address"],
            )
        )
    if len(images) > 127:
        raise _err(cfg_path, "image_metadata_list", f"at most 127 images, got {len(images)}")
    cfg2 = Config2(
        path=cfg_path,
        prj_name=prj,
        version=version,
        flags=flags,
        svn=svn,
        padding_align_size=align,
        padding_out_folder=Path(pf) if pf else None,
        keys=keys,
        caliptra_file=caliptra,
        mcu_file=mcu,
        images=tuple(images),
        sign_helper=sign_helper,
    )
    privs = [
        p
        for ks in keys.values()
        for p in (ks.ecc_priv, ks.lms_priv, ks.mldsa_priv)
        if isinstance(p, Path)
    ]
    refuse_private_keys_as_inputs(cfg_path, cfg2.input_fields(), privs, kdir, pdir)
    return cfg2


def _hsm_key2(cfg: Path, section: str, fld: str, name: str) -> HsmKey:
    """A PKCS#11 URI in a 2.x key field: ecc_priv_key only, checked as in 1.x."""
    if fld.startswith("mldsa_"):
        raise _err(
            cfg,
            f"{section}.{fld}",
            "a PKCS#11 URI here is not supported: ML-DSA keys cannot live on a PKCS#11 token; a "
            "URI is accepted in ecc_priv_key only",
        )
    return _hsm_key(cfg, section, fld, name)


def _helpers2(cfg: Path, table: Any, warn: Any) -> dict[str, Any]:
    """The validated [sign_helper] table (the rules of 1.x config._helpers; 2.x adds the
    owner_mldsa_* and vendor_* fields)."""
    import math

    sh = _check_table(cfg, "sign_helper", table, HELPER_SECTION_FIELDS2, warn)
    timeout = float(sh.get("timeout", 60.0))
    if not (math.isfinite(timeout) and 0 < timeout <= MAX_HELPER_TIMEOUT):
        raise _err(
            cfg,
            "sign_helper.timeout",
            f"must be a number of seconds in (0, {MAX_HELPER_TIMEOUT:g}], got {sh['timeout']!r}",
        )
    for fld in HELPER_FIELDS2:
        if fld in sh and not sh[fld].strip():
            raise _err(cfg, f"sign_helper.{fld}", "empty command")
    return {**sh, "timeout": timeout, "by_file": sh.get("by_file", False)}
