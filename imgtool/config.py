"""Project config: the reference cptra_imgtool TOML schema, validated with one-line errors."""

from __future__ import annotations

import contextlib
import copy
import difflib
import logging
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from .errors import ConfigError, ImgtoolError

log = logging.getLogger("imgtool")

MAX_ENTRIES = 127
U32_MAX = 0xFFFFFFFF
MCU_FW_ID = 1
FIRST_SOC_FW_ID = 2
FIRST_SOC_FW_ID_2X = 0x1000  # Caliptra 2.x SoC image fw_ids start here (is_2x)
SVN_MAX = 0xFF  # IMC entry flags bits 23:16
SVN_SHIFT = 16
MAX_HELPER_TIMEOUT = 86400.0
# a FLSH entry's size is a u32 and the padded length: the largest image a flash image holds
FLSH_MAX_IMAGE = U32_MAX - 3
FLSH_HEADER_LEN, FLSH_ENTRY_LEN, FLSH_MAX_IMAGES = 16, 12, 127
A1_CALIPTRA_MAX, A1_MCU_MAX = 0x20000, 0x100000 - 0x20000
MAX_BUNDLE_LEN = 16 << 20  # far above any Caliptra 1.x firmware bundle; read into memory
DEFAULT_VND_SIG_DIRS = (Path("vnd_sig"), Path("src") / "vnd_sig")
VND_SIG_FILES = ("vnd_ecc_sig.der", "vnd_lms_sig.der")


class Format(StrEnum):
    ASPEED = "aspeed"
    CALIPTRA1 = "caliptra-1"


# file length of each manifest layout (imgtool.formats.manifest1.file_length; checked by a test)
MANIFEST_LEN = {Format.ASPEED: 16004, Format.CALIPTRA1: 14284}


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
    # newer reference tool: false keeps the generated vendor keys and signatures
    "manifest_overrides_presigned_key_and_signature": bool,
    "padding_align_size": int,
    "padding_out_folder": str,
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
    "svn": int,
}
_HELPER_SECTION_FIELDS: dict[str, type | tuple[type, ...]] = {
    **dict.fromkeys(HELPER_FIELDS, str),
    "by_file": bool,
    "timeout": (int, float),
}
_KEY_SECTION_FIELDS: dict[str, type | tuple[type, ...]] = dict.fromkeys(KEY_FIELDS, str)
SECTIONS = (
    "manifest_config",
    *KEY_SECTIONS,
    "image_runtime_list",
    "image_metadata_list",
    "sign_helper",
)
# Keys the newest reference tool knows that only its Caliptra 2.x path uses: ignored, with a
# warning, in these 1.x layouts (any other unknown key is an error).
_TWO_X_ONLY = {
    "image_metadata_list": {
        "exec_bit",
        "component_id",
        "image_load_address",
        "image_staging_address",
        "classification",
    },
    "key": {"mldsa_pub_key", "mldsa_priv_key"},
}
_PRJ_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # with fullmatch: no "\n" after it


@dataclass(frozen=True)
class HsmKey:
    """A private key on a PKCS#11 token: the config's RFC 7512 URI as written (syntax checked
    when the config is loaded; it holds no PIN, pin-value is refused). Never a path: it is not
    joined onto the key directory, checked with is_file or listed as a file dependency."""

    uri: str

    def __str__(self) -> str:
        return self.uri


@dataclass(frozen=True)
class KeySet:
    """One key section: file paths (already joined with the key dir), or None when unset. An
    ECC private key may instead be a key on a PKCS#11 token (:class:`HsmKey`)."""

    ecc_pub: Path | None = None
    ecc_priv: Path | HsmKey | None = None
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
    svn: int = 0  # per-image SVN (newest reference tool), IMC flags bits 23:16
    align: int = 0  # padding_align_size applied to this image (0: none)

    @property
    def flags(self) -> int:
        """The IMC entry flags: source 1:0, ignore_auth_check 2, svn 23:16, load_stage 31:30."""
        return (
            (self.source & 3)
            | (int(self.ignore_auth_check) << 2)
            | (self.svn << SVN_SHIFT)
            | (self.load_stage << 30)
        )


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
    padding_align_size: int = 0  # 0: no padded copies
    padding_out_folder: Path | None = None
    vendor_sig_dirs: tuple[Path, ...] = ()  # where the prebuilt vendor signatures were looked for
    key_dir_reason: str = ""  # why this key directory (shown by --debug and inspect --cfg)
    vendor_sig_reason: str = ""
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def stored_flags(self) -> int:
        """The manifest keeps only bit 0 (VENDOR_SIGNATURE_REQUIRED)."""
        return self.flags & 1

    @property
    def soc_images(self) -> tuple[ImageEntry, ...]:
        """Images that go into the flash as SoC images (fw_id 1 is the MCU runtime)."""
        return tuple(img for img in self.images if img.fw_id != MCU_FW_ID)

    @property
    def runtime_align(self) -> int:
        """Padding applied to caliptra_file and mcu_file."""
        return self.padding_align_size

    def key_files(self) -> list[Path]:
        """Every configured key file (keys on a PKCS#11 token are not files: see hsm_keys)."""
        return [
            p
            for ks in (self.vendor_fw, self.vendor_man, self.owner_fw, self.owner_man)
            for p in (ks.ecc_pub, ks.ecc_priv, ks.lms_pub, ks.lms_priv)
            if isinstance(p, Path)
        ]

    def hsm_keys(self) -> list[HsmKey]:
        """The ECC private keys that live on a PKCS#11 token."""
        return [
            ks.ecc_priv
            for ks in (self.vendor_fw, self.vendor_man, self.owner_fw, self.owner_man)
            if isinstance(ks.ecc_priv, HsmKey)
        ]

    def input_files(self) -> list[tuple[str, Path]]:
        """(config field, path) of every binary input: caliptra_file, mcu_file, the images."""
        out: list[tuple[str, Path]] = []
        if self.caliptra_file is not None:
            out.append(("image_runtime_list.caliptra_file", self.caliptra_file))
        if self.mcu_file is not None:
            out.append(("image_runtime_list.mcu_file", self.mcu_file))
        out += [
            (f"image_metadata_list[{img.index}].file", img.path)
            for img in self.images
            if img.path is not None
        ]
        return out

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


def _suggest(name: str, known: list[str] | tuple[str, ...] | set[str]) -> str | None:
    """The known name a misspelling most likely meant, if any is close."""
    hits = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
    return hits[0] if hits else None


def _check_table(
    cfg: Path,
    where: str,
    table: Any,
    fields: dict[str, type | tuple[type, ...]],
    warn: Any,
    ignored: set[str] | None = None,
) -> dict[str, Any]:
    """Check a table's keys and value types. An unknown key is an error (naming the nearest
    known key); keys in ``ignored`` (known to the reference tool, unused here) only warn."""
    if not isinstance(table, dict):
        raise _err(cfg, where, "must be a table")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            if ignored and key in ignored:
                warn(
                    f"{cfg}: {where}.{key}: a Caliptra 2.x field, not part of this layout; ignored"
                )
                continue
            hint = _suggest(key, list(fields))
            raise _err(
                cfg,
                f"{where}.{key}",
                "unknown key" + (f" (did you mean {hint!r}?)" if hint else ""),
            )
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
        out[key] = value
    return out


def _u32(cfg: Path, where: str, value: int) -> int:
    if not 0 <= value <= U32_MAX:
        raise _err(cfg, where, f"must be a 32-bit unsigned integer, got {value}")
    return value


def default_key_dir(prj_name: str, names: list[str] | None = None) -> tuple[Path, str]:
    """The key directory and why: ``keys/<prj>/`` or the reference tool's ``key/<prj>/``. With
    the configured key file ``names``, the folder that holds more of them wins (an empty
    ``keys/<prj>/`` never hides a populated ``key/<prj>/``); on a tie ``keys/``."""
    new, old = Path("keys") / prj_name, Path("key") / prj_name
    if not old.is_dir():
        return new, f"{new}/ (default)"
    if not new.is_dir():
        return old, f"{old}/ (the reference tool's folder; there is no {new}/)"
    names = names or []
    have_new = sum((new / n).is_file() for n in names)
    have_old = sum((old / n).is_file() for n in names)
    if have_old > have_new:
        return old, (
            f"{old}/ (holds {have_old} of the {len(names)} configured key files, {new}/ "
            f"only {have_new})"
        )
    return new, (
        f"{new}/ (holds {have_new} of the {len(names)} configured key files; {old}/ also "
        f"exists and holds {have_old})"
    )


def choose_vendor_sig_dir(
    configured: str | os.PathLike[str] | None,
) -> tuple[Path, str, tuple[Path, ...]]:
    """Where ASPEED's prebuilt vendor signatures are: the configured folder, else the first of
    ``vnd_sig/`` and ``src/vnd_sig/`` (the reference repository's layout) that holds one."""
    if configured is not None:
        p = Path(configured)
        return p, f"{p}/ (configured)", (p,)
    for d in DEFAULT_VND_SIG_DIRS:
        if any((d / n).is_file() for n in VND_SIG_FILES):
            return (
                d,
                f"{d}/ (first of {', '.join(f'{x}/' for x in DEFAULT_VND_SIG_DIRS)})",
                (DEFAULT_VND_SIG_DIRS),
            )
    d = DEFAULT_VND_SIG_DIRS[0]
    return d, f"{d}/ (default; none of the candidates holds a signature)", DEFAULT_VND_SIG_DIRS


def _sections(cfg: Path, raw: dict[str, Any], warn: Any) -> None:
    for name in list(raw):
        if name in SECTIONS:
            continue
        hint = _suggest(name, SECTIONS)
        if hint is not None:
            raise _err(cfg, f"[{name}]", f"unknown section (did you mean [{hint}]?)")
        # the reference tool ignores unknown sections (its genimg.sh writes [authtool])
        warn(f"{cfg}: [{name}]: unknown section, ignored")
        del raw[name]


def refuse_private_keys_as_inputs(
    cfg_path: Path,
    inputs: list[tuple[str, Path]],
    private_keys: list[Path],
    key_dir: Path,
    prebuilt_dir: Path,
) -> None:
    """An image, caliptra_file or mcu_file would ship its bytes in the flash image: refuse one
    that is a configured private key (path, symlink or hard link), lies in the key directory
    but not in the prebuilt directory (keygen leaves private keys there that a config need not
    name; a project with one folder for both is left to the content check), or is a key by its
    content (PEM, DER, a raw ML-DSA-87 private key). ConfigError naming the field."""
    keys: dict[tuple[int, int], Path] = {}  # by (device, inode): path, symlink or hard link
    for k in private_keys:
        with contextlib.suppress(OSError):
            st = os.stat(k)
            keys[(st.st_dev, st.st_ino)] = k
    kroot = os.path.realpath(key_dir)
    proot = os.path.realpath(prebuilt_dir)  # one folder for keys and binaries: content decides

    def under(path: str, root: str) -> bool:
        return path == root or path.startswith(root + os.sep)

    for fld, p in inputs:
        try:
            st = os.stat(p)
        except OSError:
            continue  # missing files are reported where they are checked
        hit = keys.get((st.st_dev, st.st_ino))
        if hit is not None:
            raise _err(
                cfg_path, fld, f"{p} is the private key {hit}: it would ship in the flash image"
            )
        real = os.path.realpath(p)
        if under(real, kroot) and not under(real, proot):
            raise _err(
                cfg_path,
                fld,
                f"{p} is in the key directory {key_dir}: images never come from there (a "
                "private key would ship in the flash image)",
            )
        what = _private_key_content(p, st.st_size)
        if what:
            raise _err(cfg_path, fld, f"{p} is {what}: it would ship in the flash image")


_KEY_FILE_MAX = 8192  # DER and raw ML-DSA-87 private keys are smaller


def _private_key_content(p: Path, size: int) -> str:
    """What kind of private key the file holds ("" if none it can tell). Reads at most 8 KiB
    and parses only what could be a key: a PEM head, a DER SEQUENCE of at most 8 KiB, exactly
    the size of a raw ML-DSA-87 key."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(_KEY_FILE_MAX + 1)
    except OSError:
        return ""
    text = head.lstrip()
    if text.startswith(b"-----BEGIN") and b"PRIVATE KEY-----" in text.split(b"\n", 1)[0]:
        return "a PEM private key"
    if size > _KEY_FILE_MAX:
        return ""
    if head[:1] == b"\x30":
        try:
            from cryptography.hazmat.primitives.serialization import load_der_private_key

            load_der_private_key(head, password=None)
            return "a DER private key"
        except Exception:  # noqa: BLE001 - not a key (or one we cannot read): not refused
            pass
    from .keys import mldsa

    if size == mldsa.PRIV_LEN:
        try:
            mldsa.public_from_private(head)
            return "a raw ML-DSA-87 private key"
        except Exception:  # noqa: BLE001 - tr does not match: not a key
            pass
    return ""


MAX_PADDING_ALIGN = 16 << 20  # 16 MiB: beyond any flash erase block; each image is padded to it


def padding_align(cfg_path: Path, value: int) -> int:
    """manifest_config.padding_align_size: 0 (off) .. 16 MiB. Every image is padded to a
    multiple of it (in the flash image and in the padded copies), so an unbounded value would
    make gigabytes out of kilobytes; a bound is checked before any file is read."""
    align = _u32(cfg_path, "manifest_config.padding_align_size", value)
    if align > MAX_PADDING_ALIGN:
        raise _err(
            cfg_path,
            "manifest_config.padding_align_size",
            f"must be 0 (off) to {MAX_PADDING_ALIGN} (16 MiB), got {align}",
        )
    return align


def read_toml(cfg_path: Path) -> dict[str, Any]:
    """A config file's TOML; ConfigError naming the file when it cannot be read or parsed."""
    try:
        return tomllib.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{cfg_path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{cfg_path}: is a directory, not a config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"{cfg_path}: cannot read config: {reason}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{cfg_path}: invalid TOML: {exc}") from None


def is_2x(raw: dict[str, Any]) -> bool:
    """Whether a parsed TOML document is a Caliptra 2.x config (decided here, so that a 1.x
    build never imports the 2.x modules): an SoC image with fw_id 0x1000 or more
    (1.x SoC images are 2..), or no images and mldsa_* keys.  The newest 1.x (AST2700) configs
    may carry 2.x-only keys too, so those keys alone do not decide."""
    imgs = raw.get("image_metadata_list")
    ids = []
    if isinstance(imgs, list):
        ids = [i.get("fw_id") for i in imgs if isinstance(i, dict)]
    if any(isinstance(x, int) and x >= FIRST_SOC_FW_ID_2X for x in ids):
        return True
    if ids:
        return False
    for s in KEY_SECTIONS:
        t = raw.get(s)
        if isinstance(t, dict) and any(k.startswith("mldsa_") for k in t):
            return True
    return False


def load_config(
    path: str | Path,
    *,
    key_dir: str | Path | None = None,
    prebuilt_dir: str | Path | None = None,
    vnd_sig_dir: str | Path | None = None,
    check_files: bool = True,
    private_keys: bool = True,
    parsed: dict[str, Any] | None = None,
) -> Config:
    """Parse and validate a project config. Raises ConfigError with a one-line message.

    ``check_files``: the files it names must exist; ``private_keys`` False: except private
    keys (a machine that only verifies holds public keys); ``parsed``: the TOML of ``path``
    already read with :func:`read_toml` (copied, not changed)."""
    cfg_path = Path(path)
    raw = copy.deepcopy(parsed) if parsed is not None else read_toml(cfg_path)

    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        log.warning("%s", msg)

    _sections(cfg_path, raw, warn)
    mc = _check_table(
        cfg_path, "manifest_config", raw.get("manifest_config", {}), _MANIFEST_FIELDS, warn
    )
    version = _u32(cfg_path, "manifest_config.version", mc.get("version", 0))
    flags = _u32(cfg_path, "manifest_config.flags", mc.get("flags", 0))
    sec_ver = _u32(cfg_path, "manifest_config.security_version", mc.get("security_version", 0))
    prj = mc.get("prj_name", "default_project")
    if not _PRJ_RE.fullmatch(prj):
        raise _err(cfg_path, "manifest_config.prj_name", f"not a plain name: {prj!r}")
    try:
        fmt = Format(mc.get("format", Format.ASPEED.value))
    except ValueError:
        raise _err(
            cfg_path,
            "manifest_config.format",
            f"must be 'aspeed' or 'caliptra-1', got {mc['format']!r}",
        ) from None
    vs = _vendor_signature(cfg_path, mc, fmt)
    if flags & ~1:
        warn(
            f"{cfg_path}: manifest_config.flags: only bit 0 (VENDOR_SIGNATURE_REQUIRED) is kept "
            f"in the manifest; 0x{flags:x} is stored as 0x{flags & 1:x}"
        )
    align = padding_align(cfg_path, mc.get("padding_align_size", 0))
    pad_folder_name = mc.get("padding_out_folder", "")
    pad_folder = Path(pad_folder_name) if pad_folder_name else None
    if pad_folder is not None and not align:
        warn(
            f"{cfg_path}: manifest_config.padding_out_folder: set without padding_align_size; "
            "no padded copies are written"
        )

    key_names: dict[str, dict[str, str]] = {}
    for section in KEY_SECTIONS:
        table = _check_table(
            cfg_path, section, raw.get(section, {}), _KEY_SECTION_FIELDS, warn, _TWO_X_ONLY["key"]
        )
        key_names[section] = {k: v for k, v in table.items() if v != ""}
    hsm = {
        (section, fld): _hsm_key(cfg_path, section, fld, name)
        for section, table in key_names.items()
        for fld, name in table.items()
        if _looks_like_uri(name)
    }
    if key_dir is not None:
        kdir, kwhy = Path(key_dir), f"{key_dir} (--key-dir)"
    else:
        file_names = [n for s, t in key_names.items() for f, n in t.items() if (s, f) not in hsm]
        kdir, kwhy = default_key_dir(prj, file_names)
    log.debug("key directory: %s", kwhy)
    pdir = Path(prebuilt_dir) if prebuilt_dir is not None else Path("prebuilt") / prj
    configured_vdir = vnd_sig_dir if vnd_sig_dir is not None else mc.get("vendor_sig_dir")
    vdir, vwhy, vtried = choose_vendor_sig_dir(configured_vdir)
    if vs is VendorSignature.PREBUILT:
        log.debug("prebuilt vendor signatures: %s", vwhy)

    keysets: dict[str, KeySet] = {}
    for section in KEY_SECTIONS:
        vals: dict[str, Path | HsmKey | None] = {}
        for fld in KEY_FIELDS:
            name = key_names[section].get(fld)
            if name is None:
                vals[fld] = None
                continue
            if (section, fld) in hsm:
                vals[fld] = hsm[(section, fld)]  # never joined onto the key directory
                continue
            p = kdir / name
            needed = private_keys or not fld.endswith("_priv_key")
            if check_files and needed and not p.is_file():
                raise _err(cfg_path, f"{section}.{fld}", f"key file not found: {p}")
            vals[fld] = p
        keysets[section] = KeySet(
            _file(vals["ecc_pub_key"]),
            vals["ecc_priv_key"],
            _file(vals["lms_pub_key"]),
            _file(vals["lms_priv_key"]),
        )

    helpers = _helpers(cfg_path, raw.get("sign_helper", {}), warn)

    rt = _check_table(
        cfg_path, "image_runtime_list", raw.get("image_runtime_list", {}), _RUNTIME_FIELDS, warn
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
        if zero_end == 0:
            zero_end = None  # the reference tool: 0 means an empty Caliptra slot

    images = _images(cfg_path, raw.get("image_metadata_list", []), resolve, align, warn)
    strict = mc.get("strict_fw_ids", True)
    _check_fw_ids(cfg_path, images, strict, warn)

    cfg = Config(
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
        padding_align_size=align,
        padding_out_folder=pad_folder if align else None,
        vendor_sig_dirs=vtried,
        key_dir_reason=kwhy,
        vendor_sig_reason=vwhy,
        warnings=(),
    )
    privs = [
        p
        for ks in (cfg.vendor_fw, cfg.vendor_man, cfg.owner_fw, cfg.owner_man)
        for p in (ks.ecc_priv, ks.lms_priv)
        if isinstance(p, Path)
    ]
    refuse_private_keys_as_inputs(cfg_path, cfg.input_files(), privs, kdir, pdir)
    if check_files:
        _check_sizes(cfg, warn)
        _check_bundle(cfg)
        if cfg.padding_out_folder is not None:
            from .formats.padding import plan_copies

            plan_copies(
                cfg.input_files(),
                cfg.padding_out_folder,
                align,
                [p for _, p in cfg.input_files()] + cfg.key_files() + [cfg_path],
                cfg_path,
            )
    return _with_warnings(cfg, warnings)


def _looks_like_uri(name: str) -> bool:
    """A key field value meant as a PKCS#11 URI (the scheme in any case: RFC 3986)."""
    return name[:7].lower() == "pkcs11:"


def _hsm_key(cfg: Path, section: str, fld: str, name: str) -> HsmKey:
    """A PKCS#11 URI in a key field: only ECC private keys may live on a token."""
    where = f"{section}.{fld}"
    if fld != "ecc_priv_key":
        if fld == "ecc_pub_key":
            why = (
                "the public key stays a PEM file (the manifest and bundle hold it, and every "
                "HSM signature is verified with it); a PKCS#11 URI is accepted in ecc_priv_key "
                "only (cptra-imgtool keygen --algo ecc --out pkcs11:... --pubkey-out PUB.pem "
                "writes it)"
            )
        else:
            why = "LMS keys cannot live on a PKCS#11 token; a URI is accepted in ecc_priv_key only"
        raise _err(cfg, where, f"a PKCS#11 URI here is not supported: {why}")
    if not name.startswith("pkcs11:"):
        raise _err(cfg, where, "write the URI scheme in lower case (pkcs11:)")
    from .keys.pkcs11 import parse_uri

    try:
        parse_uri(name)
    except ImgtoolError as exc:
        raise _err(cfg, where, str(exc)) from None
    return HsmKey(name)


def _file(value: Path | HsmKey | None) -> Path | None:
    assert not isinstance(value, HsmKey)  # _hsm_key admits URIs in ecc_priv_key only
    return value


def _with_warnings(cfg: Config, warnings: list[str]) -> Config:
    from dataclasses import replace

    return replace(cfg, warnings=tuple(warnings))


def _vendor_signature(cfg: Path, mc: dict[str, Any], fmt: Format) -> VendorSignature:
    override = mc.get("manifest_overrides_presigned_key_and_signature")
    if "vendor_signature" in mc:
        try:
            vs = VendorSignature(mc["vendor_signature"])
        except ValueError:
            raise _err(
                cfg,
                "manifest_config.vendor_signature",
                f"must be 'prebuilt' or 'generate', got {mc['vendor_signature']!r}",
            ) from None
        if override is not None and override != (vs is VendorSignature.PREBUILT):
            raise _err(
                cfg,
                "manifest_config.manifest_overrides_presigned_key_and_signature",
                f"= {str(override).lower()} contradicts vendor_signature = {vs.value!r}",
            )
    elif override is not None:
        vs = VendorSignature.PREBUILT if override else VendorSignature.GENERATE
    else:
        vs = VendorSignature.PREBUILT if fmt is Format.ASPEED else VendorSignature.GENERATE
    if vs is VendorSignature.PREBUILT and fmt is not Format.ASPEED:
        where = (
            "vendor_signature"
            if "vendor_signature" in mc
            else "manifest_overrides_presigned_key_and_signature"
        )
        raise _err(
            cfg,
            f"manifest_config.{where}",
            "'prebuilt' vendor signatures exist only for format 'aspeed'",
        )
    return vs


def _helpers(cfg: Path, table: Any, warn: Any) -> SignHelpers:
    sh = _check_table(cfg, "sign_helper", table, _HELPER_SECTION_FIELDS, warn)
    timeout = float(sh.get("timeout", 60.0))
    if not (math.isfinite(timeout) and 0 < timeout <= MAX_HELPER_TIMEOUT):
        raise _err(
            cfg,
            "sign_helper.timeout",
            f"must be a number of seconds in (0, {MAX_HELPER_TIMEOUT:g}], got {sh['timeout']!r}",
        )
    for fld in HELPER_FIELDS:
        if fld in sh and not sh[fld].strip():
            raise _err(cfg, f"sign_helper.{fld}", "empty command")
    return SignHelpers(
        owner_ecc_fw=sh.get("owner_ecc_fw_key_sign_helper"),
        owner_ecc_man=sh.get("owner_ecc_man_key_sign_helper"),
        owner_lms_fw=sh.get("owner_lms_fw_key_sign_helper"),
        owner_lms_man=sh.get("owner_lms_man_key_sign_helper"),
        by_file=sh.get("by_file", False),
        timeout=timeout,
    )


def _images(cfg: Path, items: Any, resolve: Any, align: int, warn: Any) -> list[ImageEntry]:
    if not isinstance(items, list):
        raise _err(cfg, "image_metadata_list", "must be an array of tables [[...]]")
    if not items:
        raise _err(cfg, "image_metadata_list", "needs at least one entry")
    if len(items) > MAX_ENTRIES:
        raise _err(
            cfg, "image_metadata_list", f"{len(items)} entries, at most {MAX_ENTRIES} allowed"
        )
    images: list[ImageEntry] = []
    seen: dict[int, int] = {}
    for i, item in enumerate(items):
        where = f"image_metadata_list[{i}]"
        t = _check_table(cfg, where, item, _IMAGE_FIELDS, warn, _TWO_X_ONLY["image_metadata_list"])
        for req in ("file", "fw_id"):
            if req not in t:
                raise _err(cfg, f"{where}.{req}", "missing")
        fw_id = _u32(cfg, f"{where}.fw_id", t["fw_id"])
        if fw_id == U32_MAX:
            raise _err(cfg, f"{where}.fw_id", "0xFFFFFFFF marks unused slots")
        if fw_id in seen:
            raise _err(
                cfg, f"{where}.fw_id", f"duplicate fw_id {fw_id} (also in entry {seen[fw_id]})"
            )
        seen[fw_id] = i
        source = t.get("source", 1)
        if not 0 <= source <= 3:
            raise _err(cfg, f"{where}.source", f"must be 0..3, got {source}")
        load_stage = t.get("load_stage", 0)
        if not 0 <= load_stage <= 3:
            raise _err(cfg, f"{where}.load_stage", f"must be 0..3, got {load_stage}")
        svn = t.get("svn", 0)
        if not 0 <= svn <= SVN_MAX:
            raise _err(
                cfg,
                f"{where}.svn",
                f"must be 0..{SVN_MAX} (a u8 in the IMC flags bits 23:16), got {svn}",
            )
        images.append(
            ImageEntry(
                index=i,
                file=t["file"],
                path=resolve(f"{where}.file", t["file"]),
                source=source,
                fw_id=fw_id,
                ignore_auth_check=t.get("ignore_auth_check", False),
                load_stage=load_stage,
                svn=svn,
                align=align if t["file"] != "" else 0,
            )
        )
    return images


def _check_fw_ids(cfg: Path, images: list[ImageEntry], strict: bool, warn: Any) -> None:
    if images[0].fw_id != MCU_FW_ID:
        raise _err(
            cfg,
            "image_metadata_list[0].fw_id",
            f"the first entry must be fw_id {MCU_FW_ID} (MCU runtime), got {images[0].fw_id}",
        )
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
                    f"{cfg}: {msg} (set manifest_config.strict_fw_ids = false to override)"
                )
            warn(f"{cfg}: {msg}")


def _padded4(n: int) -> int:
    return n + (-n % 4)


def _check_sizes(cfg: Config, warn: Any) -> None:
    """Refuse, before anything is hashed, inputs that cannot fit a FLSH image (32-bit sizes and
    offsets) or the A1 out-bundle slots; warn about images the iRoT app hashes unpadded."""
    from .formats.padding import padded_len

    sizes: dict[str, int] = {}
    for fld, p in cfg.input_files():
        n = padded_len(p.stat().st_size, cfg.padding_align_size)
        sizes[fld] = n
        if _padded4(n) > FLSH_MAX_IMAGE:
            what = f"{p} is {n} bytes" + (
                f" (padded to {cfg.padding_align_size})" if cfg.padding_align_size > 1 else ""
            )
            raise _err(
                cfg.path,
                fld,
                f"{what}; a FLSH image entry holds at most {FLSH_MAX_IMAGE} bytes (32-bit size)",
            )
    for img in cfg.images:
        fld = f"image_metadata_list[{img.index}].file"
        if img.load_stage == 2 and img.path is not None and sizes[fld] % 4:
            warn(
                f"{cfg.path}: {fld}: {img.path} is {sizes[fld]} bytes, not a multiple of 4; the "
                "iRoT app (load_stage 2) hashes the unpadded bytes and will compute a different "
                "digest than the manifest's (padding_align_size = 4 pads it)"
            )
    cal = sizes.get("image_runtime_list.caliptra_file", 0)
    mcu = sizes.get("image_runtime_list.mcu_file", 0)
    count = 3 + len(cfg.soc_images)
    if count > FLSH_MAX_IMAGES:
        raise _err(
            cfg.path,
            "image_metadata_list",
            f"{len(cfg.soc_images)} SoC images + Caliptra, manifest and MCU = {count} flash "
            f"images; the FLSH readers accept at most {FLSH_MAX_IMAGES} "
            f"(at most {FLSH_MAX_IMAGES - 3} SoC images)",
        )
    header = FLSH_HEADER_LEN + FLSH_ENTRY_LEN * count
    if cfg.cptra_out_bundle:
        for fld, n, limit in (
            ("image_runtime_list.caliptra_file", cal, A1_CALIPTRA_MAX),
            ("image_runtime_list.mcu_file", mcu, A1_MCU_MAX),
        ):
            if _padded4(n) > limit:
                raise _err(
                    cfg.path,
                    fld,
                    f"{n} bytes; the AST2700 A1 out-bundle slot holds at most 0x{limit:x}",
                )
        cal = mcu = 0
    if cfg.zero_caliptra_file_end is not None:
        cal = cfg.zero_caliptra_file_end - header
        if cal < 0 or cal % 4:
            raise _err(
                cfg.path,
                "image_runtime_list.zero_caliptra_file_end",
                f"0x{cfg.zero_caliptra_file_end:x} minus the {header}-byte FLSH header must be "
                ">= 0 and a multiple of 4",
            )
    soc = sum(
        _padded4(sizes[f"image_metadata_list[{img.index}].file"])
        for img in cfg.soc_images
        if img.path is not None
    )
    total = header + _padded4(cal) + MANIFEST_LEN[cfg.format] + _padded4(mcu) + soc
    if total > U32_MAX:
        raise _err(
            cfg.path,
            "image_metadata_list",
            f"the flash image would be {total} bytes; FLSH offsets and sizes are 32-bit "
            f"(at most {U32_MAX})",
        )


def _check_bundle(cfg: Config) -> None:
    """caliptra_file must be a Caliptra 1.x firmware bundle (a 0-byte or random file is not)."""
    if cfg.caliptra_file is None:
        return
    from .formats import bundle1 as bundle

    fld = "image_runtime_list.caliptra_file"
    size = cfg.caliptra_file.stat().st_size
    if size > MAX_BUNDLE_LEN:
        raise _err(
            cfg.path,
            fld,
            f"{cfg.caliptra_file} is {size} bytes: too large for a Caliptra firmware bundle",
        )
    if size == 0:
        raise _err(cfg.path, fld, f"{cfg.caliptra_file} is empty, not a Caliptra firmware bundle")
    from .errors import FormatError

    try:
        bundle.parse_bundle(cfg.caliptra_file.read_bytes(), str(cfg.caliptra_file))
    except FormatError as exc:
        raise _err(cfg.path, fld, str(exc)) from None
