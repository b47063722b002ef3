"""doit task creators: the build of :mod:`imgtool.build` as a graph of file targets.

pad:<n>     one per padded input     -> padding_out_folder or out/<prj>/padded/ (padding only)
digest:<n>  one per image file      -> out/<prj>/digest/<n>.sha384 (rewritten only on change)
imc         the metadata collection -> out/<prj>/imc.bin
sign:<slot> one per signature slot  -> out/<prj>/sig/<slot>.bin
manifest    assembled from the above -> out/<prj>-auth-manifest.bin
flash       manifest + images       -> out/<prj>-flash-image.bin
verify      runs `cptra-imgtool verify` on the flash image (always)

Every action is a module-level function taking plain strings, so ``doit -n 2 -P process`` works.
Non-file inputs enter through ``config_changed`` (exactly the values that reach a task's
output); file_deps are compared by content (:mod:`.checker`: padded SHA-384, cached by stat,
each image hashed once per change). Every task with targets also checks, through
:class:`targets_intact`, that its targets are still the files it wrote (same size, mtime,
ctime, inode, device): a target edited, replaced or removed since makes the task run again.
State: out/<prj>/.doit.sqlite3 and fingerprints.json.

A Caliptra 2.x config (SoC image fw_ids from 0x1000) gets the graph of :mod:`.graph2` under the
same task names; it needs ``pqc=mldsa|lms`` (``build --pqc-key-type 1|3``), a 1.x config refuses it.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import astuple, dataclass, replace
from pathlib import Path
from typing import Any

from doit.exceptions import TaskFailed
from doit.task import clean_targets
from doit.tools import config_changed

from imgtool import build
from imgtool.config import Config, load_config, read_toml
from imgtool.errors import ConfigError, ImgtoolError, OutputError
from imgtool.fileio import atomic_write
from imgtool.formats import manifest1 as manifest
from imgtool.formats import padding

from . import checker

TaskDict = dict[str, Any]
Vars = tuple[str | None, ...]


@dataclass(frozen=True)
class Settings:
    """What selects a build: the doit variables cfg=, key_dir=, prebuilt_dir=, vnd_sig_dir=,
    man=, flash=; for the verify task the trust anchors fuses= and caliptra_fw= (the config is
    always one); allow_key_mismatch=1: key mismatches with caliptra_file are warnings; pqc=:
    the PQC type of a Caliptra 2.x build (required for 2.x, refused for 1.x)."""

    cfg: str
    key_dir: str | None = None
    prebuilt_dir: str | None = None
    vnd_sig_dir: str | None = None
    man: str | None = None
    flash: str | None = None
    fuses: str | None = None
    caliptra_fw: str | None = None
    allow_key_mismatch: str | None = None
    pqc: str | None = None  # Caliptra 2.x only (required there): mldsa|lms, or 1|3

    @property
    def allow_mismatch(self) -> bool:
        return flag_value("allow_key_mismatch", self.allow_key_mismatch)

    @classmethod
    def from_vars(
        cls, get_var: Callable[[str, Any], Any], given: Iterable[str] | None = None
    ) -> Settings:
        """The settings from doit's ``name=value`` variables; ``given`` (the names on the command
        line) must all be known: a mistyped ``keydir=`` silently built with the default keys."""
        unknown = sorted(set(given or ()) - set(VAR_NAMES))
        if unknown:
            parts = []
            for n in unknown:
                near = difflib.get_close_matches(n, VAR_NAMES, 1)
                parts.append(f"{n}= (did you mean {near[0]}=?)" if near else f"{n}=")
            hint = "; ".join(parts)
            raise ConfigError(
                f"unknown doit variable {hint}; known: {', '.join(n + '=' for n in VAR_NAMES)}"
            )
        cfg = get_var("cfg", None)
        if not cfg:
            raise ConfigError("no config: pass cfg=config/<project>.toml to doit")
        return cls(cfg, *(get_var(k, None) for k in VAR_NAMES[1:]))


# The doit variables, in Settings' field order (cfg first).
VAR_NAMES = (
    "cfg",
    "key_dir",
    "prebuilt_dir",
    "vnd_sig_dir",
    "man",
    "flash",
    "fuses",
    "caliptra_fw",
    "allow_key_mismatch",
    "pqc",
)


def flag_value(name: str, value: str | None) -> bool:
    """A doit boolean variable: 1/true/yes/on or 0/false/no/off (unset: false)."""
    if value is None:
        return False
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={value}: expected 1 (or true) or 0 (or false)")


class ImgtoolFailed(TaskFailed):  # type: ignore[misc]
    """A task failure with the exit code `cptra-imgtool build` reports for it (2: bad input,
    1: verify found a failing check, 3: internal error). Pickles across ``-P process``."""

    def __init__(self, msg: str, exit_code: int = 2):
        super().__init__(msg)
        self.exit_code = exit_code


def out_dir(cfg: Config) -> Path:
    return Path("out") / cfg.prj_name


def pad_dir(cfg: Config) -> Path:
    """Where the doit tasks keep padded copies: padding_out_folder, else a private folder."""
    return cfg.padding_out_folder or out_dir(cfg) / "padded"


@functools.lru_cache(maxsize=8)
def is_2x(s: Settings) -> bool:
    """Whether the config is a Caliptra 2.x one (:func:`imgtool.config2.is_2x`); a 1.x config
    given pqc= is refused here."""
    from imgtool.config import is_2x as raw_is_2x

    two = raw_is_2x(_toml(s))
    if not two and s.pqc is not None:
        raise ConfigError(
            f"pqc={s.pqc}: only for Caliptra 2.x configs; {s.cfg} is a 1.x config "
            "(SoC image fw_ids below 0x1000)"
        )
    return two


@functools.lru_cache(maxsize=8)
def _toml(s: Settings) -> dict[str, Any]:
    """The config's TOML, parsed once per run (is_2x and the loader both need it)."""
    return read_toml(Path(s.cfg))


@functools.lru_cache(maxsize=8)
def _load_raw(s: Settings) -> Config:
    return load_config(
        s.cfg,
        key_dir=s.key_dir,
        prebuilt_dir=s.prebuilt_dir,
        vnd_sig_dir=s.vnd_sig_dir,
        parsed=_toml(s),
    )


@functools.lru_cache(maxsize=8)
def _copies(s: Settings) -> tuple[padding.Copy, ...]:
    cfg = _load_raw(s)
    if not cfg.padding_align_size:
        return ()
    protected = [p for _, p in cfg.input_files()] + cfg.key_files() + [cfg.path]
    return tuple(
        padding.plan_copies(
            cfg.input_files(), pad_dir(cfg), cfg.padding_align_size, protected, cfg.path
        )
    )


@functools.lru_cache(maxsize=8)
def _load(s: Settings) -> Config:
    """The config as the tasks see it: padded inputs replaced by their copies (pad tasks)."""
    cfg = _load_raw(s)
    subs = {os.path.realpath(c.original): c.copy for c in _copies(s)}
    if not subs:
        return cfg

    def sub(p: Path | None) -> Path | None:
        return None if p is None else subs.get(os.path.realpath(p), p)

    return replace(
        cfg,
        images=tuple(replace(i, path=sub(i.path)) for i in cfg.images),
        caliptra_file=sub(cfg.caliptra_file),
        mcu_file=sub(cfg.mcu_file),
    )


@functools.lru_cache(maxsize=8)
def _plan(s: Settings) -> build.Plan:
    return build.plan(_load(s))  # once per process: plan() also warns about incomplete keys


def load(settings: Vars) -> Config:
    return _load(Settings(*settings))  # type: ignore[arg-type]


def man_path(cfg: Config, s: Settings) -> Path:
    return Path(s.man) if s.man else cfg.default_manifest_path()


def flash_path(cfg: Config, s: Settings) -> Path:
    return Path(s.flash) if s.flash else cfg.default_flash_path()


def setup_logging() -> None:
    """Library warnings as `cptra-imgtool: warning: ...` (unless the CLI already set that up)."""
    log = logging.getLogger("imgtool")
    if log.handlers:
        return

    class Fmt(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            level = "warning" if record.levelno >= logging.WARNING else "info"
            return f"cptra-imgtool: {level}: {record.getMessage()}"

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Fmt())
    log.addHandler(handler)
    log.setLevel(logging.WARNING)
    log.propagate = False


def refuse_internal_outputs(outputs: dict[str, Path], internal: Path) -> None:
    """man= / flash= (and fw_toc.bin beside it) must not land in ``internal`` (out/<prj>/: the
    dependency database, digests, signatures, the IMC): one would overwrite another task's
    target or doit's own database."""
    root = os.path.realpath(internal)
    for opt, out in outputs.items():
        real = os.path.realpath(out)
        if real == root or real.startswith(root + os.sep):
            raise OutputError(
                f"{out}: {opt} is inside {internal}/, where the build keeps its own files "
                "(dependency database, digests, signatures); choose another path"
            )


# doit commands that never sign: the key check of the bundle does not stop them
NO_BUILD_COMMANDS = ("clean", "list", "info", "forget", "ignore", "help", "dumpdb", "reset-dep")


def doit_config(s: Settings, command: str = "run") -> dict[str, Any]:
    """doit's DOIT_CONFIG for these settings, after the checks that come before any task runs:
    outputs that would overwrite inputs, and (unless ``command`` never builds) the config's
    keys against caliptra_file (:mod:`imgtool.keys.key_match`)."""
    from imgtool.keys import key_match

    for cached in (_toml, is_2x, _load_raw, _copies, _load, _plan):
        cached.cache_clear()  # a new doit run (possibly in the same process): re-read the config
    if is_2x(s):
        from . import graph2

        return graph2.doit_config(s, command)
    cfg = _load(s)
    if command not in NO_BUILD_COMMANDS:
        key_match.check_cached(_load_raw(s), out_dir(cfg) / "keycheck.json", s.allow_mismatch)
    outputs = {"man=": man_path(cfg, s), "flash=": flash_path(cfg, s)}
    refuse_internal_outputs(outputs, out_dir(cfg))
    outputs.update({f"padded copy of {c.field}": c.copy for c in _copies(s)})
    build.check_outputs(_load_raw(s), outputs)
    return doit_settings(out_dir(cfg))


def doit_settings(build_dir: Path) -> dict[str, Any]:
    """DOIT_CONFIG for a build whose own files live in ``build_dir`` (out/<prj>/): its sqlite3
    dependency database and the checker's fingerprint cache."""
    dep = build_dir / ".doit.sqlite3"
    dep.parent.mkdir(parents=True, exist_ok=True)
    checker.configure(build_dir / "fingerprints.json")
    return {
        "dep_file": str(dep),
        "backend": "sqlite3",
        "default_tasks": ["flash"],
        "verbosity": 1,
        "action_string_formatting": "new",
        "check_file_uptodate": checker.ContentChecker,
    }


# ---------------------------------------------------------------------------- uptodate
def target_ident(path: str) -> list[int] | None:
    """What identifies the bytes of a target without reading it (None: missing). Any write
    changes mtime and ctime (ctime cannot be set from user space); a replacement changes the
    inode too."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


class targets_intact:  # noqa: N801 - named like doit's own uptodate helpers
    """doit ``uptodate``: False when a target was changed, replaced or removed since this task
    last wrote it (its identity is recorded after every successful run, in the main process).

    doit alone trusts an existing target whose dependencies did not change: a manifest
    overwritten by `create-auth-man` with another config would be packed as it is."""

    KEY = "_targets_"

    def configure_task(self, task: Any) -> None:
        # called while the Task is constructed (before its targets are set): read them later
        task.value_savers.append(lambda: {self.KEY: {t: target_ident(t) for t in task.targets}})

    def __call__(self, task: Any, values: dict[str, Any]) -> bool:
        saved = values.get(self.KEY)
        if not isinstance(saved, dict):
            return False
        return all(saved.get(t) == target_ident(t) for t in task.targets)


# ---------------------------------------------------------------------------- actions
def _clean_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Report library errors as one line (doit's TaskFailed), not as a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        try:
            return fn(*args)
        except ImgtoolError as exc:
            return ImgtoolFailed(f"cptra-imgtool: error: {exc}", exc.exit_code)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            return ImgtoolFailed(f"cptra-imgtool: error: {where}{exc.strerror or exc}", 2)

    return wrapper


@_clean_errors
def act_pad(original: str, copy: str, align: int) -> None:
    padding.write_copy(Path(original), Path(copy), align)


@_clean_errors
def act_digest(settings: Vars, index: int, target: str) -> None:
    img = load(settings).images[index]
    # the padded SHA-384 of build.image_digest, shared with the file_dep checker's cache (a
    # padded copy is a multiple of its alignment: its digest is the plain padded-to-4 one)
    digest = build.image_digest(img) if img.path is None else checker.digest_file(img.path)[0]
    _replace_if_changed(Path(target), digest.hex().encode() + b"\n")


def _replace_if_changed(path: Path, data: bytes) -> None:
    """Write a digest target atomically (temp + rename) unless it already holds ``data``; not
    fsynced, unlike the outputs: one fsync per image was a third of a cold build of 125 images.
    A digest file lost in a crash reads back missing or empty (another size, inode or mtime
    than doit recorded), so targets_intact re-runs its task; the manifest and flash image
    built from it are fsynced."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@_clean_errors
def act_imc(settings: Vars, digest_files: list[str], target: str) -> None:
    digests = [bytes.fromhex(Path(f).read_text().strip()) for f in digest_files]
    atomic_write(target, build.build_imc(load(settings), digests))


def _skeleton(cfg: Config, imc_file: str | None) -> manifest.Manifest:
    return build.skeleton(cfg, Path(imc_file).read_bytes() if imc_file else None)


@_clean_errors
def act_sign(settings: Vars, slot: str, imc_file: str | None, target: str) -> None:
    s = Settings(*settings)  # type: ignore[arg-type]
    cfg = load(settings)
    p = _plan(s)
    sp = next(x for x in p.slots if x.slot == slot)
    if sp.kind == "key" and sp.algo == "lms" and sp.key is not None:
        # before the first leaf of this key is spent: enough leaves for every signature of
        # this key that this build still has to make (those whose target does not exist yet)
        key = os.path.realpath(sp.key)
        od = out_dir(cfg) / "sig"
        group = [
            x
            for x in p.slots
            if x.kind == "key"
            and x.algo == "lms"
            and x.key is not None
            and os.path.realpath(x.key) == key
            and (x.slot == slot or not (od / f"{x.slot}.bin").exists())
        ]
        build.lms_budget(group)
    atomic_write(target, build.sign_slot(cfg, sp, _skeleton(cfg, imc_file)))


@_clean_errors
def act_manifest(settings: Vars, imc_file: str, sig_files: dict[str, str], target: str) -> None:
    cfg = load(settings)
    sigs = {slot: Path(f).read_bytes() for slot, f in sig_files.items()}
    atomic_write(target, build.assemble(_skeleton(cfg, imc_file), sigs).to_bytes())


@_clean_errors
def act_flash(settings: Vars, man_file: str, target: str) -> None:
    """build.create_auth_flash, without reading again an image the digest pass already read.

    For every image file whose fingerprint (padded SHA-384 and CRC-32, taken for its current
    stat and settled, see checker.py) is cached, the writer gets it as ``FlashItem.known``: if
    the digest is the manifest's (or the image has no manifest digest), the image is copied in
    the kernel and its CRC combined into the payload checksum, instead of being read, CRC'd and
    hashed again. Such an image must keep that stat during its copy (checked by the writer) and
    until the finished file is about to replace the target (checked here); else the task fails
    and the previous flash image stays. Other images are read, hashed and checked as they are
    copied.
    """
    from imgtool.formats.flash1 import (
        DigestMismatch,
        FlashItem,
        ImageChanged,
        Known,
        write_flash_file,
    )

    cfg = load(settings)
    man = build.read_manifest(Path(man_file))
    if man.format is not cfg.format:
        build.create_auth_flash(cfg, Path(target), man, man_file)  # raises the format error
        return
    items, out_bundle = build.flash_items(cfg, man)

    def with_known(it: FlashItem) -> FlashItem:
        if it.path is None or it.data is not None:
            return it
        fp = checker.fingerprint_of(it.path, os.stat(it.path), settled=True)
        return it if fp is None else replace(it, known=Known(fp.digest, fp.crc, fp.ident))

    items = [with_known(it) for it in items]
    if out_bundle is not None:
        out_bundle = (with_known(out_bundle[0]), with_known(out_bundle[1]))
    trusted = [it for it in [*items, *(out_bundle or ())] if it.trusted()]

    def unchanged_since_hashed() -> None:
        for it in trusted:
            assert it.path is not None and it.known is not None
            if checker.ident(os.stat(it.path)) != it.known.ident:
                raise ImageChanged(it)

    try:
        write_flash_file(
            Path(target), items, out_bundle=out_bundle, before_commit=unchanged_since_hashed
        )
    except ImageChanged as exc:
        raise ImgtoolError(
            f"{exc.item.path}: image changed while the flash image was written (after its "
            f"digest was taken for {man_file}); rebuild"
        ) from None
    except DigestMismatch as exc:
        raise build.mismatch_error(exc, man_file) from None


def act_verify(settings: Vars, flash_file: str) -> bool | TaskFailed:
    import importlib.util

    if importlib.util.find_spec("imgtool.cli.verify") is None:
        return ImgtoolFailed("cptra-imgtool: error: this cptra-imgtool has no verify command", 3)

    return run_verify(Settings(*settings), flash_file)  # type: ignore[arg-type]


def run_verify(s: Settings, flash_file: str, *extra: str) -> bool | TaskFailed:
    """`cptra-imgtool verify FLASH --cfg ... EXTRA` with this build's anchors, as a doit result."""
    from imgtool.cli.main import main

    args = ["verify", flash_file, "--cfg", s.cfg, *extra]
    for opt, val in (
        ("--key-dir", s.key_dir),
        ("--prebuilt-dir", s.prebuilt_dir),
        ("--fuses", s.fuses),
        ("--caliptra-fw", s.caliptra_fw),
    ):
        if val:
            args += [opt, val]
    rc = main(args)
    if rc == 0:
        return True
    what = "failed a check (see above)" if rc == 1 else "could not be verified (see above)"
    return ImgtoolFailed(f"cptra-imgtool: error: verify: {flash_file} {what}", rc)


def rmdir_empty(path: str) -> None:
    """doit clean: remove a target directory once its last target is gone."""
    with contextlib.suppress(OSError):
        os.rmdir(path)


# ---------------------------------------------------------------------------- tasks
def _fingerprint(value: Any) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()


def _tbs_files(cfg: Config, sp: build.SlotPlan, imc_file: str) -> list[str]:
    sel = build.key_selection(cfg)
    if sp.tbs == "imc":
        return [imc_file]
    party = "vendor" if sp.tbs == "vendor_pubkey" else "owner"
    if party == "vendor" and sp.kind == "prebuilt":
        return []
    return [str(sel[(party, a)].man_pub) for a in ("ecc", "lms") if sel[(party, a)].enabled]


def _tbs_values(cfg: Config, sp: build.SlotPlan) -> dict[str, Any]:
    """Config values that enter the bytes a slot covers, and how it is signed."""
    vals: dict[str, Any] = {"format": str(cfg.format), "plan": repr(sp)}
    if sp.kind == "helper":
        vals["helper"] = (cfg.helpers.by_file, cfg.helpers.timeout)
    if sp.tbs in ("vendor_pubkey", "svn"):
        vals.update(version=cfg.version, flags=cfg.stored_flags)
    if sp.tbs == "svn":
        vals["security_version"] = cfg.security_version
    if sp.tbs == "vendor_pubkey":
        vals["vendor_signature"] = str(cfg.vendor_signature)
    return vals


def _uptodate(value: Any) -> list[Any]:
    return [config_changed(_fingerprint(value)), targets_intact()]


def generate(s: Settings) -> Iterator[TaskDict]:
    if is_2x(s):
        from . import graph2

        yield from graph2.generate(s)
        return
    cfg = _load(s)
    st = astuple(s)
    od = out_dir(cfg)
    copies = _copies(s)
    if copies:
        yield {"basename": "pad", "name": None, "doc": "zero-padded copies (padding_align_size)"}
    for c in copies:
        yield {
            "basename": "pad",
            "name": c.copy.name,
            "doc": f"{c.original} padded to a multiple of {cfg.padding_align_size}",
            "actions": [(act_pad, [str(c.original), str(c.copy), cfg.padding_align_size])],
            "file_dep": [str(c.original)],
            "targets": [str(c.copy)],
            "uptodate": _uptodate(cfg.padding_align_size),
            "clean": [clean_targets, (rmdir_empty, [str(pad_dir(cfg))])],
        }
    digest_files = []
    yield {"basename": "digest", "name": None, "doc": "SHA-384 of every image"}
    for img in cfg.images:
        target = str(od / "digest" / f"{img.index:03d}.sha384")
        digest_files.append(target)
        yield {
            "basename": "digest",
            "name": f"{img.index:03d}-{img.file or 'empty'}",
            "doc": f"SHA-384 of {img.path or 'an empty image'}",
            "actions": [(act_digest, [st, img.index, target])],
            "file_dep": [str(img.path)] if img.path else [],
            "targets": [target],
            "uptodate": [config_changed(f"{img.path}:{img.align}"), targets_intact()],
            "clean": [clean_targets, (rmdir_empty, [str(od / "digest")])],
        }
    imc_file = str(od / "imc.bin")
    entries = [(i.fw_id, i.flags) for i in cfg.images]
    yield {
        "basename": "imc",
        "doc": "image metadata collection",
        "actions": [(act_imc, [st, digest_files, imc_file])],
        "file_dep": digest_files,
        "targets": [imc_file],
        "uptodate": _uptodate(entries),
        "clean": True,
    }
    p = _plan(s)
    yield {"basename": "sign", "name": None, "doc": "every signature slot in use"}
    sig_files = {}
    for sp in p.slots:
        target = str(od / "sig" / f"{sp.slot}.bin")
        sig_files[sp.slot] = target
        yield {
            "basename": "sign",
            "name": sp.slot,
            "doc": f"{sp.slot} ({sp.kind})",
            "actions": [(act_sign, [st, sp.slot, imc_file if sp.tbs == "imc" else None, target])],
            "file_dep": sorted({*_tbs_files(cfg, sp, imc_file), *map(str, sp.inputs)}),
            "targets": [target],
            "uptodate": _uptodate(_tbs_values(cfg, sp)),
            "clean": [clean_targets, (rmdir_empty, [str(od / "sig")])],
        }
    man = str(man_path(cfg, s))
    skeleton_inputs = {
        "format": str(cfg.format),
        "version": cfg.version,
        "flags": cfg.stored_flags,
        "sec_ver": cfg.security_version,
        "vendor_signature": str(cfg.vendor_signature),
        "slots": sorted(sig_files),
    }
    yield {
        "basename": "manifest",
        "doc": "the signed SoC manifest",
        "actions": [(act_manifest, [st, imc_file, sig_files, man])],
        "file_dep": sorted({imc_file, *sig_files.values(), *map(str, p.pub_files)}),
        "targets": [man],
        "uptodate": _uptodate(skeleton_inputs),
        "clean": True,
    }
    flash = str(flash_path(cfg, s))
    images = [str(i.path) for i in cfg.soc_images if i.path]
    runtime = [str(x) for x in (cfg.caliptra_file, cfg.mcu_file) if x is not None]
    layout = {
        "soc": [(i.fw_id, str(i.path), i.align) for i in cfg.soc_images],
        "caliptra": str(cfg.caliptra_file),
        "mcu": str(cfg.mcu_file),
        "align": cfg.padding_align_size,
        "out_bundle": cfg.cptra_out_bundle,
        "zero_end": cfg.zero_caliptra_file_end,
    }
    yield {
        "basename": "flash",
        "doc": "the flash image",
        "actions": [(act_flash, [st, man, flash])],
        "file_dep": sorted({man, *images, *runtime}),
        "targets": [flash],
        "uptodate": _uptodate(layout),
        "clean": True,
    }
    yield {
        "basename": "verify",
        "doc": "verify the flash image (every check)",
        "actions": [(act_verify, [st, flash])],
        "task_dep": ["flash"],
        "uptodate": [False],
        "verbosity": 2,
    }


def doit_tasks(s: Settings) -> list[Any]:
    """The graph as doit Task objects (for a TaskLoader2; dodo.py uses task_* creators)."""
    from doit.loader import generate_tasks

    by_base: dict[str, list[TaskDict]] = {}
    for t in generate(s):
        by_base.setdefault(t.pop("basename"), []).append(t)
    tasks: list[Any] = []
    for base, items in by_base.items():
        if len(items) == 1 and "name" not in items[0]:
            tasks += generate_tasks(base, items[0])
        else:
            tasks += generate_tasks(base, (t for t in items))
    return tasks


def task_names(s: Settings) -> list[str]:
    """The task groups, in build order (for messages)."""
    return list(dict.fromkeys(t["basename"] for t in generate(s)))
