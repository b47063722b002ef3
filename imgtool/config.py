"""Project config: the reference cptra_imgtool TOML schema, validated with one-line errors."""

from __future__ import annotations

import logging
import re
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from .errors import ConfigError

log = logging.getLogger("imgtool")

MAX_ENTRIES = 127
U32_MAX = 0xFFFFFFFF
MCU_FW_ID = 1
FIRST_SOC_FW_ID = 2


class Format(StrEnum):
    ASPEED = "aspeed"
    CALIPTRA1 = "caliptra-1"


class VendorSignature(StrEnum):
    PREBUILT = "prebuilt"
    GENERATE = "generate"


KEY_SECTIONS = (
    "vendor_fw_key_config",
    "vendor_man_key_config",
    "owner_fw_key_config",
    "owner_man_key_config",
)
KEY_FIELDS = ("ecc_pub_key", "ecc_priv_key", "lms_pub_key", "lms_priv_key")
HELPER_FIELDS = (
    "owner_ecc_fw_key_sign_helper",
    "owner_ecc_man_key_sign_helper",
    "owner_lms_fw_key_sign_helper",
    "owner_lms_man_key_sign_helper",
)
_MANIFEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "version": int,
    "flags": int,
    "security_version": int,
    "prj_name": str,
    "format": str,
    "vendor_signature": str,
    "vendor_sig_dir": str,
    "strict_fw_ids": bool,
    # newer reference tool: false means "do not override with the prebuilt vendor signature"
    "manifest_overrides_presigned_key_and_signature": bool,
}
_RUNTIME_FIELDS: dict[str, type | tuple[type, ...]] = {
    "caliptra_file": str,
    "mcu_file": str,
    "cptra_out_bundle": bool,
    "zero_caliptra_file_end": int,
}
_IMAGE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "file": str,
    "source": int,
    "fw_id": int,
    "ignore_auth_check": bool,
    "load_stage": int,
    # newer reference tool (Caliptra 2.x per-image SVN): accepted, not part of these layouts
    "svn": int,
}
_HELPER_SECTION_FIELDS: dict[str, type | tuple[type, ...]] = {
    **dict.fromkeys(HELPER_FIELDS, str),
    "by_file": bool,
    "timeout": (int, float),
}
_PRJ_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class KeySet:
    """One key section: file paths (already joined with the key dir), or None when unset."""

    ecc_pub: Path | None = None
    ecc_priv: Path | None = None
    lms_pub: Path | None = None
    lms_priv: Path | None = None


@dataclass(frozen=True)
class SignHelpers:
    owner_ecc_fw: str | None = None
    owner_ecc_man: str | None = None
    owner_lms_fw: str | None = None
    owner_lms_man: str | None = None
    by_file: bool = False
    timeout: float = 60.0

    def get(self, algo: str, role: str) -> str | None:
        value: str | None = getattr(self, f"owner_{algo}_{role}")
        return value


@dataclass(frozen=True)
class ImageEntry:
    index: int  # position in image_metadata_list
    file: str  # as written in the config ("" = empty image)
    path: Path | None  # resolved path, None for ""
    source: int
    fw_id: int
    ignore_auth_check: bool
    load_stage: int

    @property
    def flags(self) -> int:
        return (self.source & 3) | (int(self.ignore_auth_check) << 2) | (self.load_stage << 30)


@dataclass(frozen=True)
class Config:
    path: Path
    prj_name: str
    format: Format
    version: int
    flags: int
    security_version: int
    vendor_signature: VendorSignature
    vendor_sig_dir: Path
    key_dir: Path
    prebuilt_dir: Path
    vendor_fw: KeySet
    vendor_man: KeySet
    owner_fw: KeySet
    owner_man: KeySet
    helpers: SignHelpers
    caliptra_file: Path | None
    mcu_file: Path | None
    cptra_out_bundle: bool
    zero_caliptra_file_end: int | None
    images: tuple[ImageEntry, ...]
    strict_fw_ids: bool = True
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def stored_flags(self) -> int:
        """The manifest keeps only bit 0 (VENDOR_SIGNATURE_REQUIRED)."""
        return self.flags & 1

    @property
    def soc_images(self) -> tuple[ImageEntry, ...]:
        """Images that go into the flash as SoC images (fw_id 1 is the MCU runtime)."""
        return tuple(img for img in self.images if img.fw_id != MCU_FW_ID)

    def default_manifest_path(self) -> Path:
        return Path("out") / f"{self.prj_name}-auth-manifest.bin"

    def default_flash_path(self) -> Path:
        return Path("out") / f"{self.prj_name}-flash-image.bin"


def _err(cfg: Path, where: str, msg: str) -> ConfigError:
    return ConfigError(f"{cfg}: {where}: {msg}")


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {int: "integer", str: "string", bool: "boolean", float: "number"}
    if isinstance(t, tuple):
        return " or ".join(names.get(x, x.__name__) for x in t)
    return names.get(t, t.__name__)


def _check_table(
    cfg: Path, where: str, table: Any, fields: dict[str, type | tuple[type, ...]]
) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise _err(cfg, where, "must be a table")
    for key, value in table.items():
        if key not in fields:
            raise _err(cfg, f"{where}.{key}", "unknown key")
        want = fields[key]
        # bool is a subclass of int: reject it where an integer is expected
        ok = isinstance(value, want) and not (
            isinstance(value, bool) and bool not in (want if isinstance(want, tuple) else (want,))
        )
        if not ok:
            raise _err(
                cfg,
                f"{where}.{key}",
                f"expected {_type_name(want)}, got {type(value).__name__} {value!r}",
            )
    return dict(table)


def _u32(cfg: Path, where: str, value: int) -> int:
    if not 0 <= value <= U32_MAX:
        raise _err(cfg, where, f"must be a 32-bit unsigned integer, got {value}")
    return value


def default_key_dir(prj_name: str) -> Path:
    """keys/<prj>/, falling back to the reference tool's key/<prj>/ when only that exists."""
    new, old = Path("keys") / prj_name, Path("key") / prj_name
    if not new.exists() and old.exists():
        return old
    return new


def load_config(
    path: str | Path,
    *,
    key_dir: str | Path | None = None,
    prebuilt_dir: str | Path | None = None,
    vnd_sig_dir: str | Path | None = None,
    check_files: bool = True,
) -> Config:
    """Parse and validate a project config. Raises ConfigError with a one-line message."""
    cfg_path = Path(path)
    try:
        raw = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{cfg_path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{cfg_path}: cannot read config: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{cfg_path}: invalid TOML: {exc}") from None

    sections = {
        "manifest_config",
        *KEY_SECTIONS,
        "image_runtime_list",
        "image_metadata_list",
        "sign_helper",
    }
    for section_name in raw:
        if section_name not in sections:
            raise _err(cfg_path, f"[{section_name}]", "unknown section")
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        log.warning("%s", msg)

    mc = _check_table(cfg_path, "manifest_config", raw.get("manifest_config", {}), _MANIFEST_FIELDS)
    version = _u32(cfg_path, "manifest_config.version", mc.get("version", 0))
    flags = _u32(cfg_path, "manifest_config.flags", mc.get("flags", 0))
    sec_ver = _u32(cfg_path, "manifest_config.security_version", mc.get("security_version", 0))
    prj = mc.get("prj_name", "default_project")
    if not _PRJ_RE.match(prj):
        raise _err(cfg_path, "manifest_config.prj_name", f"not a plain name: {prj!r}")
    try:
        fmt = Format(mc.get("format", Format.ASPEED.value))
    except ValueError:
        raise _err(
            cfg_path,
            "manifest_config.format",
            f"must be 'aspeed' or 'caliptra-1', got {mc['format']!r}",
        ) from None
    default_vs = VendorSignature.PREBUILT if fmt is Format.ASPEED else VendorSignature.GENERATE
    if mc.get("manifest_overrides_presigned_key_and_signature") is False:
        default_vs = VendorSignature.GENERATE
    try:
        vs = VendorSignature(mc.get("vendor_signature", default_vs.value))
    except ValueError:
        raise _err(
            cfg_path,
            "manifest_config.vendor_signature",
            f"must be 'prebuilt' or 'generate', got {mc['vendor_signature']!r}",
        ) from None
    if vs is VendorSignature.PREBUILT and fmt is not Format.ASPEED:
        raise _err(
            cfg_path,
            "manifest_config.vendor_signature",
            "'prebuilt' vendor signatures exist only for format 'aspeed'",
        )
    if flags & ~1:
        warn(
            f"{cfg_path}: manifest_config.flags: only bit 0 (VENDOR_SIGNATURE_REQUIRED) is kept "
            f"in the manifest; 0x{flags:x} is stored as 0x{flags & 1:x}"
        )

    kdir = Path(key_dir) if key_dir is not None else default_key_dir(prj)
    pdir = Path(prebuilt_dir) if prebuilt_dir is not None else Path("prebuilt") / prj
    if vnd_sig_dir is not None:
        vdir = Path(vnd_sig_dir)
    else:
        vdir = Path(mc.get("vendor_sig_dir", "vnd_sig"))

    keysets: dict[str, KeySet] = {}
    for section in KEY_SECTIONS:
        table = _check_table(
            cfg_path, section, raw.get(section, {}), dict.fromkeys(KEY_FIELDS, str)
        )
        vals: dict[str, Path | None] = {}
        for fld in KEY_FIELDS:
            name: str | None = table.get(fld)
            if name is None or name == "":
                vals[fld] = None
                continue
            p = kdir / name
            if check_files and not p.is_file():
                raise _err(cfg_path, f"{section}.{fld}", f"key file not found: {p}")
            vals[fld] = p
        keysets[section] = KeySet(
            vals["ecc_pub_key"], vals["ecc_priv_key"], vals["lms_pub_key"], vals["lms_priv_key"]
        )

    sh = _check_table(cfg_path, "sign_helper", raw.get("sign_helper", {}), _HELPER_SECTION_FIELDS)
    timeout = float(sh.get("timeout", 60.0))
    if timeout <= 0:
        raise _err(cfg_path, "sign_helper.timeout", "must be positive")
    for fld in HELPER_FIELDS:
        if fld in sh and not sh[fld].strip():
            raise _err(cfg_path, f"sign_helper.{fld}", "empty command")
    helpers = SignHelpers(
        owner_ecc_fw=sh.get("owner_ecc_fw_key_sign_helper"),
        owner_ecc_man=sh.get("owner_ecc_man_key_sign_helper"),
        owner_lms_fw=sh.get("owner_lms_fw_key_sign_helper"),
        owner_lms_man=sh.get("owner_lms_man_key_sign_helper"),
        by_file=sh.get("by_file", False),
        timeout=timeout,
    )

    rt = _check_table(
        cfg_path, "image_runtime_list", raw.get("image_runtime_list", {}), _RUNTIME_FIELDS
    )

    def resolve(where: str, name: str) -> Path | None:
        if name == "":
            return None
        p = pdir / name
        if check_files and not p.is_file():
            raise _err(cfg_path, where, f"file not found: {p}")
        return p

    cal_name = rt.get("caliptra_file", "")
    caliptra = resolve("image_runtime_list.caliptra_file", cal_name)
    mcu = resolve("image_runtime_list.mcu_file", rt.get("mcu_file", ""))
    zero_end = rt.get("zero_caliptra_file_end")
    if zero_end is not None:
        _u32(cfg_path, "image_runtime_list.zero_caliptra_file_end", zero_end)
        if cal_name != "":
            raise _err(
                cfg_path,
                "image_runtime_list.zero_caliptra_file_end",
                'only allowed with caliptra_file = ""',
            )

    items = raw.get("image_metadata_list", [])
    if not isinstance(items, list):
        raise _err(cfg_path, "image_metadata_list", "must be an array of tables [[...]]")
    if not items:
        raise _err(cfg_path, "image_metadata_list", "needs at least one entry")
    if len(items) > MAX_ENTRIES:
        raise _err(
            cfg_path, "image_metadata_list", f"{len(items)} entries, at most {MAX_ENTRIES} allowed"
        )
    images: list[ImageEntry] = []
    seen: dict[int, int] = {}
    for i, item in enumerate(items):
        where = f"image_metadata_list[{i}]"
        t = _check_table(cfg_path, where, item, _IMAGE_FIELDS)
        for req in ("file", "fw_id"):
            if req not in t:
                raise _err(cfg_path, f"{where}.{req}", "missing")
        fw_id = _u32(cfg_path, f"{where}.fw_id", t["fw_id"])
        if fw_id == U32_MAX:
            raise _err(cfg_path, f"{where}.fw_id", "0xFFFFFFFF marks unused slots")
        if fw_id in seen:
            raise _err(
                cfg_path, f"{where}.fw_id", f"duplicate fw_id {fw_id} (also in entry {seen[fw_id]})"
            )
        seen[fw_id] = i
        source = t.get("source", 1)
        if not 0 <= source <= 3:
            raise _err(cfg_path, f"{where}.source", f"must be 0..3, got {source}")
        load_stage = t.get("load_stage", 0)
        if not 0 <= load_stage <= 3:
            raise _err(cfg_path, f"{where}.load_stage", f"must be 0..3, got {load_stage}")
        if "svn" in t:
            _u32(cfg_path, f"{where}.svn", t["svn"])
            warn(
                f"{cfg_path}: {where}.svn: the {fmt} manifest has no per-image SVN "
                "(a Caliptra 2.x field); ignored"
            )
        img_path = resolve(f"{where}.file", t["file"])
        images.append(
            ImageEntry(
                index=i,
                file=t["file"],
                path=img_path,
                source=source,
                fw_id=fw_id,
                ignore_auth_check=t.get("ignore_auth_check", False),
                load_stage=load_stage,
            )
        )
    if images[0].fw_id != MCU_FW_ID:
        raise _err(
            cfg_path,
            "image_metadata_list[0].fw_id",
            f"the first entry must be fw_id {MCU_FW_ID} (MCU runtime), got {images[0].fw_id}",
        )
    strict = mc.get("strict_fw_ids", True)
    soc = [img for img in images if img.fw_id != MCU_FW_ID]
    for n, img in enumerate(soc):
        want = FIRST_SOC_FW_ID + n
        if img.fw_id != want:
            msg = (
                f"image_metadata_list[{img.index}].fw_id: SoC images must use fw_ids 2, 3, 4, ... "
                f"in config order (the AST2700 BootMCU maps flash identifier 0x{0x1000 + n:x} "
                f"to fw_id {want}), got {img.fw_id}"
            )
            if strict:
                raise ConfigError(
                    f"{cfg_path}: {msg} (set manifest_config.strict_fw_ids = false to override)"
                )
            warn(f"{cfg_path}: {msg}")
    for img in images:
        if img.load_stage == 2 and img.path is not None and check_files:
            size = img.path.stat().st_size
            if size % 4:
                warn(
                    f"{cfg_path}: image_metadata_list[{img.index}].file: {img.path} is {size} "
                    "bytes, not a multiple of 4; the iRoT app (load_stage 2) hashes the unpadded "
                    "bytes and will compute a different digest than the manifest's"
                )

    return Config(
        path=cfg_path,
        prj_name=prj,
        format=fmt,
        version=version,
        flags=flags,
        security_version=sec_ver,
        vendor_signature=vs,
        vendor_sig_dir=vdir,
        key_dir=kdir,
        prebuilt_dir=pdir,
        vendor_fw=keysets["vendor_fw_key_config"],
        vendor_man=keysets["vendor_man_key_config"],
        owner_fw=keysets["owner_fw_key_config"],
        owner_man=keysets["owner_man_key_config"],
        helpers=helpers,
        caliptra_file=caliptra,
        mcu_file=mcu,
        cptra_out_bundle=rt.get("cptra_out_bundle", False),
        zero_caliptra_file_end=zero_end,
        images=tuple(images),
        strict_fw_ids=strict,
        warnings=tuple(warnings),
    )
