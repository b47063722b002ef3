"""`new-project NAME --from CONFIG`: an OEM project from a vendor's reference project.

The new project is the reference config with ``prj_name = NAME`` (image list and every setting
kept), a copy of the reference prebuilt folder, the reference VENDOR setup (vendor public keys,
prebuilt vendor signatures), and fresh OWNER keys only (ECC P-384, and LMS H15/W4 when the
config signs with LMS). The copied Caliptra bundle is owner-signed with the new owner FW keys
(:mod:`imgtool.owner_sign`), so that the project builds and verifies with the fuse values of
``cptra-imgtool fuses`` for that bundle.

``--vendor-keys`` (and a project without ``--from``) is the lab variant for parts with no vendor
fuses: fresh vendor keys as well, the vendor signature generated with them, and the copied
bundle vendor-signed with them (a test bundle no part with ASPEED's vendor fuses boots).

Nothing that exists is ever overwritten: every target is checked first, keys and prebuilt files
are made in staging folders beside their final place and renamed there at the end, the config
is created exclusively; a failure (or Ctrl-C) leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import (
    _PRJ_RE,
    KEY_FIELDS,
    Config,
    HsmKey,
    VendorSignature,
    choose_vendor_sig_dir,
    load_config,
)
from .errors import ConfigError, OutputError
from .keys import key_match

OWNER_SECTIONS = ("owner_fw_key_config", "owner_man_key_config")
VENDOR_SECTIONS = ("vendor_fw_key_config", "vendor_man_key_config")
DEFAULT_BUNDLE = "caliptra-fw.bin"

Status = Callable[[str], None]
KeyMaker = Callable[[Path, str, str], None]  # (prefix, "ecc" | "lms", counter label)


@dataclass
class Reference:
    """A reference project: its config (absolute), the tree its relative paths start from, and
    where its keys, binaries and prebuilt vendor signatures are."""

    config: Path
    tree: Path
    text: str
    raw: dict[str, Any]
    cfg: Config  # loaded without checking files; paths below are absolute
    key_dir: Path
    prebuilt_dir: Path
    vnd_sig_dir: Path

    @property
    def prj_name(self) -> str:
        return self.cfg.prj_name


@dataclass
class Result:
    config: Path
    keys: Path
    prebuilt: Path
    reference: Reference | None
    made_keys: list[str] = field(default_factory=list)
    bundle: Path | None = None
    bundle_in_config: bool = True
    owner_pk_hash: bytes | None = None
    lms: bool = True
    lms_verify: bool = True  # the fuses of its bundle: LMS verified (False: ECC only)
    vendor_keys: bool = False
    copied_sigs: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dodo: Path | None = None


# ---------------------------------------------------------------------------- the reference
def find_reference(root: Path, ref: str, ecc_only: bool) -> Path:
    """--from: a config file, or a reference project name in ROOT/config/ (its
    ``NAME-ecc-lms-manifest.toml``, or with ``--ecc-only`` its ``NAME-ecc-manifest.toml``)."""
    p = Path(ref)
    if p.is_file():
        return p.resolve()
    if p.is_dir():
        raise ConfigError(f"--from {ref}: a directory; give a reference config file or name")
    if "/" in ref or ref.endswith(".toml") or not _PRJ_RE.fullmatch(ref):
        raise ConfigError(f"--from {ref}: no such config file")
    suffix = "-ecc-manifest.toml" if ecc_only else "-ecc-lms-manifest.toml"
    cand = root / "config" / f"{ref}{suffix}"
    if cand.is_file():
        return cand.resolve()
    have = sorted(x.name for x in (root / "config").glob("*.toml")) if root.is_dir() else []
    listing = f"config/ holds {', '.join(have)}" if have else "there is no config/*.toml"
    raise ConfigError(
        f"--from {ref}: no reference config {cand} ({listing}); give a reference config file, "
        "or the name of a project that has one"
        + ("" if ecc_only else " (--ecc-only picks NAME-ecc-manifest.toml)")
    )


def _abs(tree: Path, p: Path) -> Path:
    return p if p.is_absolute() else tree / p


def load_reference(root: Path, config: Path) -> Reference:
    tree = config.parent.parent if config.parent.name == "config" else root
    try:
        text = config.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{config}: cannot read the reference config: {exc}") from None
    with contextlib.chdir(tree):  # the reference's relative paths start at its tree
        cfg = load_config(config, check_files=False)
    return Reference(
        config,
        tree,
        text,
        raw,
        cfg,
        _abs(tree, cfg.key_dir),
        _abs(tree, cfg.prebuilt_dir),
        _abs(tree, cfg.vendor_sig_dir),
    )


def _plain(cfg: Path, where: str, name: str) -> str:
    """A file name new-project creates: a plain name inside its folder, nothing else."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise ConfigError(f"{cfg}: {where}: {name!r} is not a plain file name")
    return name


def key_names(
    ref: Reference, sections: tuple[str, ...], vendor_keys: bool = False
) -> dict[tuple[str, str], str]:
    """(section, field) -> file name, for the key fields the reference config names. A vendor
    key on a PKCS#11 token (a ``pkcs11:`` URI) is kept in the config as it is, not copied;
    owner keys (and vendor keys with --vendor-keys) are generated as files, so a URI there is
    refused."""
    out = {}
    for section in sections:
        table = ref.raw.get(section, {})
        for fld in KEY_FIELDS:
            name = table.get(fld, "") if isinstance(table, dict) else ""
            if _uri(ref, section, fld):
                if section in VENDOR_SECTIONS and not vendor_keys:
                    continue
                raise ConfigError(
                    f"{ref.config}: {section}.{fld}: a key on a PKCS#11 token; new-project "
                    "generates these keys as files: start from a config that names key files, "
                    "then put the URI into the new config"
                )
            if name:
                out[(section, fld)] = _plain(ref.config, f"{section}.{fld}", name)
    return out


def _uri(ref: Reference, section: str, fld: str) -> bool:
    """The reference's key field holds a PKCS#11 URI (a key on a token, not a file)."""
    table = ref.raw.get(section, {})
    name = table.get(fld, "") if isinstance(table, dict) else ""
    return isinstance(name, str) and name[:7].lower() == "pkcs11:"


def key_prefixes(
    ref: Reference, names: dict[tuple[str, str], str], section: str, algo: str, need: bool
) -> str | None:
    """The PREFIX of a generated pair PREFIX-prvk.pem / PREFIX-pubk.pem (None: not named)."""
    priv, pub = names.get((section, f"{algo}_priv_key")), names.get((section, f"{algo}_pub_key"))
    if priv is None and pub is None:
        if need:
            raise ConfigError(
                f"{ref.config}: {section}.{algo}_pub_key / {algo}_priv_key: not named; "
                "new-project generates the owner keys the config names (ECC at least)"
            )
        return None
    if priv is None or pub is None:
        raise ConfigError(
            f"{ref.config}: {section}: names only one of {algo}_pub_key / {algo}_priv_key"
        )
    if not priv.endswith("-prvk.pem") or pub != priv[: -len("-prvk.pem")] + "-pubk.pem":
        raise ConfigError(
            f"{ref.config}: {section}.{algo}_priv_key: new-project writes key pairs as "
            f"PREFIX-prvk.pem / PREFIX-pubk.pem, got {priv!r} / {pub!r}"
        )
    return priv[: -len("-prvk.pem")]


# ---------------------------------------------------------------------------- config text
_SECTION = re.compile(r"^\s*\[([A-Za-z0-9_.\- ]+)\]\s*(#.*)?$")


def set_value(text: str, section: str, key: str, value: str) -> str:
    """``key = value`` in [section]: the line replaced, or added after the section header (the
    section is added in front when missing). Comments and everything else are kept."""
    lines = text.splitlines(keepends=True)
    start = end = None
    for i, line in enumerate(lines):
        m = _SECTION.match(line)
        if m:
            if start is not None:
                end = i
                break
            if m.group(1).strip() == section:
                start = i
    if start is None:
        return f"[{section}]\n{key} = {value}\n\n" + text
    end = len(lines) if end is None else end
    key_re = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for i in range(start + 1, end):
        if key_re.match(lines[i]):
            lines[i] = f"{key} = {value}\n"
            return "".join(lines)
    lines.insert(start + 1, f"{key} = {value}\n")
    return "".join(lines)


def project_text(ref: Reference, name: str, vendor_keys: bool) -> str:
    text = set_value(ref.text, "manifest_config", "prj_name", f'"{name}"')
    want = dict(ref.raw)
    want["manifest_config"] = {**ref.raw.get("manifest_config", {}), "prj_name": name}
    if vendor_keys:
        text = set_value(text, "manifest_config", "vendor_signature", '"generate"')
        want["manifest_config"]["vendor_signature"] = "generate"
        if "manifest_overrides_presigned_key_and_signature" in want["manifest_config"]:
            text = set_value(
                text, "manifest_config", "manifest_overrides_presigned_key_and_signature", "false"
            )
            want["manifest_config"]["manifest_overrides_presigned_key_and_signature"] = False
    text = (
        f"# cptra-imgtool new-project {name}: {ref.config.name} with prj_name = {name!r}"
        + (" and a generated vendor signature (--vendor-keys)" if vendor_keys else "")
        + "\n"
        + text
    )
    if tomllib.loads(text) != want:  # the edit changed nothing but what it says
        raise ConfigError(f"{ref.config}: cannot set prj_name in this config's text safely")
    return text


# ---------------------------------------------------------------------------- helpers
def layout(root: Path, name: str) -> Path:
    """The key folder of a new project: ``key/NAME`` when the tree has the reference tool's
    ``key/`` folder, else ``keys/NAME`` (what config.default_key_dir then finds)."""
    return root / ("key" if (root / "key").is_dir() else "keys") / name


def check_free(root: Path, name: str) -> None:
    if not _PRJ_RE.fullmatch(name):
        raise ConfigError(f"new-project: {name!r} is not a plain project name")
    for p in (
        root / "config" / f"{name}.toml",
        root / "keys" / name,
        root / "key" / name,
        root / "prebuilt" / name,
    ):
        if p.exists() or p.is_symlink():
            raise OutputError(f"{p}: already exists, refusing to overwrite")


@contextlib.contextmanager
def staging(final: Path) -> Iterator[Path]:
    """A fresh folder beside ``final``, removed unless the caller renamed it into place."""
    made = not final.parent.exists()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.new-", dir=final.parent))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if made and not final.exists():
            with contextlib.suppress(OSError):
                final.parent.rmdir()  # the folder this made, if still empty


def place(tmp: Path, final: Path) -> None:
    if final.exists() or final.is_symlink():
        raise OutputError(f"{final}: appeared meanwhile, refusing to overwrite")
    os.rename(tmp, final)


def _writable_copy(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(dst):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | 0o200)


def bundle_of(ref: Reference) -> tuple[Path | None, str, bool]:
    """(the reference's bundle, its name, whether the config names it). A config with
    ``caliptra_file = ""`` (A1: the bundle is not in the flash) uses prebuilt's caliptra-fw.bin."""
    cal = ref.raw.get("image_runtime_list", {}).get("caliptra_file", "")
    if cal:
        name = _plain(ref.config, "image_runtime_list.caliptra_file", cal)
        p = ref.prebuilt_dir / name
        if not p.is_file():
            raise ConfigError(f"{ref.config}: image_runtime_list.caliptra_file: {p} not found")
        return p, name, True
    p = ref.prebuilt_dir / DEFAULT_BUNDLE
    return (p if p.is_file() else None), DEFAULT_BUNDLE, False


def _sig_files(ref: Reference, root: Path) -> list[tuple[Path, Path]]:
    """(reference file, where the new project's build reads it) of the prebuilt vendor
    signatures the new project uses; an existing different one is refused."""
    from .config import VND_SIG_FILES

    configured = ref.raw.get("manifest_config", {}).get("vendor_sig_dir")
    with contextlib.chdir(root):
        d, _, _ = choose_vendor_sig_dir(configured)
    target = _abs(root, d)
    if not target.resolve().is_relative_to(root.resolve()):
        return []  # a configured folder outside the tree: new-project writes nothing there
    out = []
    for n in VND_SIG_FILES:
        src = ref.vnd_sig_dir / n
        if not src.is_file():
            continue
        dst = target / n
        if dst.exists():
            if dst.read_bytes() != src.read_bytes():
                raise OutputError(
                    f"{dst}: differs from the reference's {src}; the new project would use it "
                    "(remove it, or start from that reference)"
                )
            continue
        out.append((src, dst))
    return out


# ---------------------------------------------------------------------------- the project
def create(
    name: str,
    root: Path,
    ref_arg: str,
    *,
    lms_height: int,
    force: bool,
    ecc_only: bool,
    vendor_keys: bool,
    allow_key_mismatch: bool,
    make_key: KeyMaker,
    status: Status,
) -> Result:
    """Create the project (see the module doc). ``make_key(prefix, algo, counter)`` writes one
    key pair (showing its progress); ``status`` reports a line of progress."""
    from . import owner_sign
    from .doit_tasks import DODO_PY
    from .fuses import owner_pk_hash

    root = root.resolve()
    check_free(root, name)
    ref = load_reference(root, find_reference(root, ref_arg, ecc_only))
    if any(ref.cfg.helpers.get(a, r) for a in ("ecc", "lms") for r in ("fw", "man")):
        raise ConfigError(
            f"{ref.config}: [sign_helper]: signs owner keys with helper commands; new-project "
            "makes owner key files: start from a config that names key files, then point "
            "[sign_helper] at your signer"
        )
    names = key_names(ref, OWNER_SECTIONS + VENDOR_SECTIONS, vendor_keys)
    lms_on = any(k[1].startswith("lms_") for k in names if k[0] in OWNER_SECTIONS)
    if ecc_only and lms_on:
        raise ConfigError(
            f"--ecc-only: {ref.config} names owner LMS keys; give an ECC-only config "
            "(NAME-ecc-manifest.toml)"
        )
    owner = [
        (s, a, key_prefixes(ref, names, s, a, need=a == "ecc"))
        for s in OWNER_SECTIONS
        for a in ("ecc", "lms")
    ]
    if lms_on and any(p is None for _, _, p in owner):
        raise ConfigError(
            f"{ref.config}: owner LMS keys named in one of owner_fw_key_config / "
            "owner_man_key_config only"
        )
    vendor = [
        (s, a, None if _uri(ref, s, f"{a}_priv_key") else key_prefixes(ref, names, s, a, False))
        for s in VENDOR_SECTIONS
        for a in ("ecc", "lms")
    ]  # a vendor key on a token (kept without --vendor-keys, else refused by key_names)
    if lms_on:
        from .cli.keys import lms_types

        lms_types(lms_height, 4, force)
    prebuilt_vendor = not vendor_keys and ref.cfg.vendor_signature is VendorSignature.PREBUILT
    if not vendor_keys:
        for (section, fld), n in names.items():
            if section in VENDOR_SECTIONS and not (ref.key_dir / n).is_file():
                raise ConfigError(
                    f"{ref.config}: {section}.{fld}: {ref.key_dir / n} not found (the vendor "
                    "setup new-project keeps)"
                )
    elif not any(p for _, _, p in vendor):
        raise ConfigError(f"--vendor-keys: {ref.config} names no vendor keys")
    if not ref.prebuilt_dir.is_dir():
        raise ConfigError(
            f"{ref.config}: the reference prebuilt folder {ref.prebuilt_dir} is missing"
        )
    sigs = _sig_files(ref, root) if prebuilt_vendor else []
    ref_bundle, bundle_name, in_config = bundle_of(ref)
    warnings: list[str] = []
    if ref_bundle is not None and not vendor_keys:
        data = owner_sign.read_bundle(ref_bundle)
        owner_sign.check_vendor_signed(data, str(ref_bundle))
        _vendor_consistency(ref, ref_bundle, allow_key_mismatch, warnings, status)
    elif ref_bundle is None:
        warnings.append(
            f"{ref.prebuilt_dir} holds no {DEFAULT_BUNDLE}: nothing was owner-signed; put the "
            "vendor's bundle there and run owner-sign-bundle"
        )

    keys_final = layout(root, name)
    pre_final = root / "prebuilt" / name
    cfg_final = root / "config" / f"{name}.toml"
    text = project_text(ref, name, vendor_keys)
    res = Result(cfg_final, keys_final, pre_final, ref, lms=lms_on, vendor_keys=vendor_keys)
    with staging(keys_final) as keys_tmp, staging(pre_final) as pre_tmp:
        gen = [(s, a, p) for s, a, p in owner + (vendor if vendor_keys else []) if p is not None]
        order = sorted(gen, key=lambda g: (not g[0].startswith("owner"), g[0], g[1]))
        for i, (_section, algo, prefix) in enumerate(order, 1):
            make_key(keys_tmp / prefix, algo, f"{i}/{len(order)} ")
            res.made_keys.append(f"{prefix} {'ECC P-384' if algo == 'ecc' else 'LMS'}")
        if not vendor_keys:
            for (section, _fld), fname in names.items():
                if section in VENDOR_SECTIONS:
                    shutil.copyfile(ref.key_dir / fname, keys_tmp / fname)
                    (keys_tmp / fname).chmod(0o600 if "prvk" in fname else 0o644)
        _writable_copy(ref.prebuilt_dir, pre_tmp)
        with contextlib.chdir(root):
            fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".toml", dir=keys_tmp)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            try:
                new = load_config(
                    tmp_name, key_dir=keys_tmp, prebuilt_dir=pre_tmp, check_files=False
                )
            finally:
                os.unlink(tmp_name)
            new = replace(new, path=cfg_final.relative_to(root))
            if ref_bundle is not None:
                t0 = time.monotonic()
                data = owner_sign.read_bundle(pre_tmp / bundle_name)
                if vendor_keys:
                    data = _lab_vendor_sign(new, data, str(ref_bundle))
                signed = owner_sign.owner_sign(
                    data, str(ref_bundle), owner_sign.owner_keys(new, force=force)
                )
                (pre_tmp / bundle_name).write_bytes(signed.data)
                res.bundle = pre_final / bundle_name
                res.bundle_in_config = in_config
                res.owner_pk_hash = owner_pk_hash(signed.after)
                res.lms_verify = signed.lms_verify
                status(
                    f"{bundle_name}: owner-signed with the new owner FW keys in "
                    f"{time.monotonic() - t0:.1f} s"
                    + (" (vendor-signed with the new vendor FW keys first)" if vendor_keys else "")
                )
            if in_config:  # the project's own keys agree with its bundle
                key_match.check(new, allow=allow_key_mismatch)
            missing: dict[str, list[str]] = {}
            for fld, p in new.input_files():
                if not p.is_file():
                    missing.setdefault(p.name, []).append(fld)
            res.missing = [f"{n} ({', '.join(f)})" for n, f in missing.items()]
        for _src, dst in sigs:
            if dst.exists():
                raise OutputError(f"{dst}: appeared meanwhile, refusing to overwrite")
        place(keys_tmp, keys_final)
        place(pre_tmp, pre_final)
    try:
        for src, dst in sigs:
            dst.parent.mkdir(parents=True, exist_ok=True)
            with open(dst, "xb") as fh:
                fh.write(src.read_bytes())
            res.copied_sigs.append(dst)
        cfg_final.parent.mkdir(parents=True, exist_ok=True)
        with open(cfg_final, "x", encoding="utf-8") as fh:
            fh.write(text)
    except BaseException:
        shutil.rmtree(keys_final, ignore_errors=True)
        shutil.rmtree(pre_final, ignore_errors=True)
        for dst in res.copied_sigs:
            dst.unlink(missing_ok=True)
        raise
    dodo = root / "dodo.py"
    if not dodo.exists():
        dodo.write_text(DODO_PY)
        res.dodo = dodo
    res.warnings = warnings
    return res


def _vendor_consistency(
    ref: Reference, bundle: Path, allow: bool, warnings: list[str], status: Status
) -> None:
    """The kept vendor setup must match the bundle (the owner keys will be new)."""
    cfg = replace(
        ref.cfg,
        caliptra_file=bundle,
        key_dir=ref.key_dir,
        vendor_sig_dir=ref.vnd_sig_dir,
        vendor_fw=_abs_keys(ref, ref.cfg.vendor_fw),
        vendor_man=_abs_keys(ref, ref.cfg.vendor_man),
        owner_fw=_abs_keys(ref, ref.cfg.owner_fw),
        owner_man=_abs_keys(ref, ref.cfg.owner_man),
    )
    found = [m for m in key_match.mismatches(cfg) if m.party == "vendor"]
    if not found:
        return
    hint = ""
    if any(m.algo == "lms" for m in found):
        hint = (
            "; --ecc-only makes an ECC-only project (a part whose LMS verify fuse is off boots it)"
        )
    text = "; ".join(m.text for m in found)
    if not allow:
        raise key_match.KeyMismatchError(
            f"{ref.config}: the reference vendor setup does not match its bundle, so a device "
            f"would reject every image of this project: {text}{hint} "
            f"({key_match.ALLOW_OPTION} creates it anyway)"
        )
    warnings.append(f"{text}: the device rejects images of this project where it checks that")
    status(f"warning: {text}")


def _abs_keys(ref: Reference, ks: Any) -> Any:
    def a(p: Path | HsmKey | None) -> Path | HsmKey | None:
        return p if p is None or isinstance(p, HsmKey) else _abs(ref.tree, p)

    return replace(ks, ecc_pub=a(ks.ecc_pub), ecc_priv=a(ks.ecc_priv),
                   lms_pub=a(ks.lms_pub), lms_priv=a(ks.lms_priv))  # fmt: skip


def _lab_vendor_sign(cfg: Config, data: bytes, source: str) -> bytes:
    from . import owner_sign
    from .keys import ecc, lms
    from .signing import LocalLmsSigner, ecc_key_signer

    v = cfg.vendor_fw
    if v.ecc_priv is None or v.ecc_pub is None or v.lms_priv is None or v.lms_pub is None:
        raise ConfigError(
            f"{cfg.path}: vendor_fw_key_config: --vendor-keys needs ECC and LMS vendor FW keys "
            "to vendor-sign a test bundle"
        )
    pub = ecc.load_public(v.ecc_pub)
    return owner_sign.vendor_sign_lab(
        data,
        source,
        ecc_key_signer(v.ecc_priv.uri if isinstance(v.ecc_priv, HsmKey) else v.ecc_priv, pub),
        ecc.public_to_hw(pub),
        LocalLmsSigner(v.lms_priv, v.lms_pub),
        lms.load_public(v.lms_pub).to_bytes(),
    )
