"""doit tasks of a Caliptra 2.x build (:mod:`imgtool.build2`), with the 1.x task names.

pad:<copy>          one per padded input, only with padding_align_size and padding_out_folder
digest:<n>-<file>   one per IMC image (MCU runtime, SoC images) -> out/<prj>/digest/<n>.sha384
imc                 the 10164-byte IMC                       -> out/<prj>/imc.bin
sign:<pair>_<alg>   one per signature in use (alg ecc|pqc)   -> out/<prj>/sig/<pair>_<alg>.bin
manifest            the ATM2 manifest (padded)               -> out/<prj>-auth-manifest.bin
flash               FLSH v1 flash image and fw_toc.bin beside it
verify              `cptra-imgtool verify` on the flash image and fw_toc.bin (always runs)

The pairs are vnd_pub_sig, own_pub_sig (they cover the header and manifest public keys, not the
IMC: an image change does not re-sign them), vnd_imc_sig (flags bit 0 only) and own_imc_sig.
A signature is made only when its key section has that private key (a file or a PKCS#11 URI) or
a [sign_helper] command for it (else its slot stays zero, as in create-auth-man-2x); a changed
helper command, by_file, timeout or URI re-signs that signature only. ``pqc=mldsa|lms`` (or 1|3)
is required: it selects the PQC public keys in the manifest and the PQC signatures. Every
signature goes through :func:`build2.sign_slot2` (signing2.sign2); the bytes are those of
create-auth-man-2x / create-auth-flash-2x.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator
from dataclasses import astuple
from pathlib import Path
from typing import TYPE_CHECKING, Any

from doit.task import clean_targets
from doit.tools import config_changed

from imgtool import build2
from imgtool.errors import ConfigError
from imgtool.fileio import atomic_write

from . import checker
from .graph import (
    Settings,
    TaskDict,
    Vars,
    _clean_errors,
    _replace_if_changed,
    _uptodate,
    act_pad,
    doit_settings,
    refuse_internal_outputs,
    rmdir_empty,
    run_verify,
    targets_intact,
)

if TYPE_CHECKING:
    from doit.exceptions import TaskFailed

    from imgtool.config2 import Config2, KeySet2
    from imgtool.signing2 import KeyHelpers

PQC_NAMES = {"1": "mldsa", "mldsa": "mldsa", "3": "lms", "lms": "lms"}
ALGOS = ("ecc", "pqc")


def pqc_of(s: Settings) -> str:
    """The PQC type of the build: pqc= (doit) / --pqc-key-type (build), required for 2.x."""
    if s.pqc is None or not str(s.pqc).strip():
        raise ConfigError(
            f"{s.cfg}: a Caliptra 2.x config needs the PQC type: pqc=mldsa or pqc=lms "
            "(cptra-imgtool build: --pqc-key-type 1|3)"
        )
    v = PQC_NAMES.get(str(s.pqc).strip().lower())
    if v is None:
        raise ConfigError(
            f"pqc={s.pqc}: must be mldsa (or 1, ML-DSA-87) or lms (or 3, LMS) "
            "(cptra-imgtool build: --pqc-key-type 1|3)"
        )
    return v


@functools.lru_cache(maxsize=8)
def _load(s: Settings) -> Config2:
    from imgtool.config2 import load_config2

    if s.vnd_sig_dir:
        raise ConfigError(f"{s.cfg}: vnd_sig_dir: a Caliptra 1.x option (2.x has no prebuilt "
                          "vendor signatures)")  # fmt: skip
    return load_config2(s.cfg, key_dir=s.key_dir, prebuilt_dir=s.prebuilt_dir)


def load(settings: Vars) -> Config2:
    return _load(Settings(*settings))  # type: ignore[arg-type]


def clear_caches() -> None:
    _load.cache_clear()


def out_dir(cfg2: Config2) -> Path:
    return Path("out") / cfg2.prj_name


def man_path(cfg2: Config2, s: Settings) -> Path:
    return Path(s.man) if s.man else cfg2.default_manifest_path()


def flash_path(cfg2: Config2, s: Settings) -> Path:
    return Path(s.flash) if s.flash else cfg2.default_flash_path()


def toc_path(cfg2: Config2, s: Settings) -> Path:
    return flash_path(cfg2, s).parent / "fw_toc.bin"


def check_outputs(cfg2: Config2, outputs: dict[str, Path]) -> None:
    """Refuse outputs that name one file twice, a directory, an input, a key or the config."""
    build2.check_outputs2(cfg2, outputs)


def doit_config(s: Settings, command: str = "run") -> dict[str, Any]:
    """DOIT_CONFIG of a 2.x build, after the checks that come before any task runs."""
    clear_caches()
    pqc = pqc_of(s)
    cfg2 = _load(s)
    from .graph import NO_BUILD_COMMANDS

    if command not in NO_BUILD_COMMANDS:
        from imgtool.keys import key_match2

        key_match2.check_cached(cfg2, pqc, out_dir(cfg2) / "keycheck.json", s.allow_mismatch)
    outputs = {"man=": man_path(cfg2, s), "flash=": flash_path(cfg2, s)}
    outputs["fw_toc.bin (beside flash=)"] = toc_path(cfg2, s)
    refuse_internal_outputs(outputs, out_dir(cfg2))
    outputs.update({f"padded copy of {c.field}": c.copy for c in build2.padded_copies2(cfg2)})
    check_outputs(cfg2, outputs)
    return doit_settings(out_dir(cfg2))


# ---------------------------------------------------------------------------- signatures
def _pqc_files(ks: KeySet2, pqc: str) -> tuple[Path | None, Path]:
    """(private, public) PQC key of a key section for this PQC type."""
    return (ks.mldsa_priv, ks.mldsa_pub) if pqc == "mldsa" else (ks.lms_priv, ks.lms_pub)


def _algo(alg: str, pqc: str) -> str:
    """The signing algorithm of slot part ``alg`` (ecc|pqc): ecc, lms or mldsa."""
    return "ecc" if alg == "ecc" else pqc


def _slot_helper(cfg2: Config2, pair: str, alg: str, pqc: str) -> KeyHelpers | None:
    """The sign helper of this signature only (None without a command for its algorithm)."""
    h = cfg2.helpers(build2.SIGNERS2[pair])
    if h is None or h.command(_algo(alg, pqc)) is None:
        return None
    a = _algo(alg, pqc)
    return dataclasses.replace(
        h,
        ecc=h.ecc if a == "ecc" else None,
        lms=h.lms if a == "lms" else None,
        mldsa=h.mldsa if a == "mldsa" else None,
    )


def _slot_keys(cfg2: Config2, pair: str, alg: str, pqc: str) -> KeySet2:
    """The key section with only the private key that signs ``alg`` (none when a helper stands
    in for it): sign2 then fills that slot only."""
    ks = cfg2.keys[build2.SIGNERS2[pair]]
    if alg == "ecc":
        ks = dataclasses.replace(ks, lms_priv=None, mldsa_priv=None)
    else:
        ks = dataclasses.replace(ks, ecc_priv=None)
    if _slot_helper(cfg2, pair, alg, pqc) is not None:
        ks = dataclasses.replace(ks, ecc_priv=None, lms_priv=None, mldsa_priv=None)
    return ks


def slots(cfg2: Config2, pqc: str) -> list[tuple[str, str]]:
    """(pair, alg) of every signature this build makes (a private key or a sign helper for it),
    in signing order."""
    out = []
    for pair in build2.sig_names2(cfg2):
        ks = cfg2.keys[build2.SIGNERS2[pair]]
        for alg in ALGOS:
            priv = ks.ecc_priv if alg == "ecc" else _pqc_files(ks, pqc)[0]
            if priv is not None or _slot_helper(cfg2, pair, alg, pqc) is not None:
                out.append((pair, alg))
    return out


def _signer_inputs(
    cfg2: Config2, pair: str, alg: str, pqc: str
) -> tuple[list[Path], tuple[Any, ...] | None]:
    """(key files, how it signs) of a signature: its file_dep keys, and for a helper or a
    PKCS#11 key the up-to-date value that re-signs when the command, by_file/timeout or the
    URI changes (None for a key file: its content is in file_dep)."""
    ks = _slot_keys(cfg2, pair, alg, pqc)
    priv, pub = (ks.ecc_priv, ks.ecc_pub) if alg == "ecc" else _pqc_files(ks, pqc)
    files = [pub] + ([priv] if isinstance(priv, Path) else [])
    h = _slot_helper(cfg2, pair, alg, pqc)
    if h is not None:
        return files, ("helper", h.command(_algo(alg, pqc)), h.by_file, h.timeout)
    if priv is not None and not isinstance(priv, Path):
        return files, ("pkcs11", str(priv))  # a token key: no file to depend on
    return files, None


def _man_pub_files(cfg2: Config2, pqc: str, party: str) -> list[str]:
    ks = cfg2.keys[f"{party}_man_key_config"]
    return [str(ks.ecc_pub), str(_pqc_files(ks, pqc)[1])]


def _skeleton_bytes(cfg2: Config2, pqc: str, imc_file: str | None) -> bytes:
    from imgtool.formats import manifest2 as m2

    imc = Path(imc_file).read_bytes() if imc_file else m2.Imc2([]).pack()
    return bytes(build2.skeleton2(cfg2, pqc, imc).pack())


# ---------------------------------------------------------------------------- actions
@_clean_errors
def act_digest(settings: Vars, index: int, target: str) -> None:
    cfg2 = load(settings)
    img = cfg2.images[index]
    align = cfg2.padding_align_size
    if img.file is not None and (align <= 1 or img.file.stat().st_size % align == 0):
        digest = checker.digest_file(img.file)[0]  # the checker's cached padded-to-4 SHA-384
    else:
        digest = build2.image_digest2(img, align)
    _replace_if_changed(Path(target), digest.hex().encode() + b"\n")


@_clean_errors
def act_imc(settings: Vars, digest_files: list[str], target: str) -> None:
    digests = [bytes.fromhex(Path(f).read_text().strip()) for f in digest_files]
    atomic_write(target, build2.build_imc2(load(settings), digests))


@_clean_errors
def act_sign(settings: Vars, pair: str, alg: str, imc_file: str | None, target: str) -> None:
    from imgtool.formats import manifest2 as m2

    s = Settings(*settings)  # type: ignore[arg-type]
    cfg2, pqc = _load(s), pqc_of(s)
    ks = _slot_keys(cfg2, pair, alg, pqc)
    if alg == "pqc" and pqc == "lms" and ks.lms_priv is not None:
        # before the first leaf of this key is spent: enough leaves for every signature of this
        # key that this build still has to make (those whose target does not exist yet)
        key = os.path.realpath(ks.lms_priv)
        sig_dir = out_dir(cfg2) / "sig"
        group = [
            n
            for n in build2.sig_names2(cfg2)
            if (k := cfg2.keys[build2.SIGNERS2[n]].lms_priv) is not None
            and not build2.has_helper2(cfg2, build2.SIGNERS2[n], "lms")
            and os.path.realpath(k) == key
            and (n == pair or not (sig_dir / f"{n}_pqc.bin").exists())
        ]
        build2.lms_budget2(cfg2, pqc, group)
    msg = m2.covered(_skeleton_bytes(cfg2, pqc, imc_file), pair)
    ecc_sig, pqc_sig = build2.sign_slot2(ks, pqc, msg, _slot_helper(cfg2, pair, alg, pqc), pair)
    atomic_write(target, ecc_sig if alg == "ecc" else pqc_sig)


@_clean_errors
def act_manifest(
    settings: Vars, imc_file: str, sig_files: dict[str, list[str | None]], target: str
) -> None:
    from imgtool.formats import manifest2 as m2

    s = Settings(*settings)  # type: ignore[arg-type]
    cfg2, pqc = _load(s), pqc_of(s)
    skel = build2.skeleton2(cfg2, pqc, Path(imc_file).read_bytes())

    def read(f: str | None) -> bytes:
        return Path(f).read_bytes() if f else b""

    sigs = {pair: (read(e), read(p)) for pair, (e, p) in sig_files.items()}
    data = m2.pad_to(build2.assemble2(skel, sigs), cfg2.padding_align_size)
    atomic_write(target, data)


@_clean_errors
def act_flash(settings: Vars, man_file: str, target: str) -> None:
    man = Path(man_file)
    build2.create_auth_flash2(load(settings), Path(target), man.read_bytes(), man.name)


def act_verify(settings: Vars, flash_file: str, toc_file: str) -> bool | TaskFailed:
    return run_verify(Settings(*settings), flash_file, "--fw-toc", toc_file)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- tasks
def generate(s: Settings) -> Iterator[TaskDict]:
    pqc = pqc_of(s)
    cfg2 = _load(s)
    st = astuple(s)
    od = out_dir(cfg2)
    align = cfg2.padding_align_size
    copies = build2.padded_copies2(cfg2)
    pad_dep = ["pad"] if copies else []
    if copies:
        yield {"basename": "pad", "name": None, "doc": "zero-padded copies (padding_out_folder)"}
    for c in copies:
        folder = str(c.copy.parent)
        yield {
            "basename": "pad",
            "name": c.copy.name,
            "doc": f"{c.original} padded to a multiple of {align}",
            "actions": [(act_pad, [str(c.original), str(c.copy), align])],
            "file_dep": [str(c.original)],
            "targets": [str(c.copy)],
            "uptodate": _uptodate(align),
            "clean": [clean_targets, (rmdir_empty, [folder])],
        }
    digest_files = []
    yield {"basename": "digest", "name": None, "doc": "SHA-384 of every image"}
    for i, img in enumerate(cfg2.images):
        target = str(od / "digest" / f"{i:03d}.sha384")
        digest_files.append(target)
        yield {
            "basename": "digest",
            "name": f"{i:03d}-{img.file.name if img.file else 'empty'}",
            "doc": f"SHA-384 of {img.file or 'an empty image'}",
            "actions": [(act_digest, [st, i, target])],
            "file_dep": [str(img.file)] if img.file else [],
            "targets": [target],
            "uptodate": [config_changed(f"{img.file}:{align}"), targets_intact()],
            "clean": [clean_targets, (rmdir_empty, [str(od / "digest")])],
        }
    imc_file = str(od / "imc.bin")
    entries = [
        dataclasses.astuple(dataclasses.replace(i, file=None)) for i in cfg2.images
    ]  # every IMC field but the digest
    yield {
        "basename": "imc",
        "doc": "image metadata collection (IMC)",
        "actions": [(act_imc, [st, digest_files, imc_file])],
        "file_dep": digest_files,
        "targets": [imc_file],
        "uptodate": _uptodate(entries),
        "clean": True,
    }
    yield {"basename": "sign", "name": None, "doc": "every signature in use"}
    sig_files: dict[str, list[str | None]] = {p: [None, None] for p in build2.sig_names2(cfg2)}
    for pair, alg in slots(cfg2, pqc):
        slot = f"{pair}_{alg}"
        target = str(od / "sig" / f"{slot}.bin")
        sig_files[pair][ALGOS.index(alg)] = target
        keys, signer = _signer_inputs(cfg2, pair, alg, pqc)
        values: dict[str, Any] = {"pair": pair, "alg": alg, "pqc": pqc}
        if signer is not None:
            values["signer"] = signer
        if pair.endswith("_imc_sig"):
            tbs = [imc_file]
            if alg == "ecc":
                del values["pqc"]  # the IMC is the same for both PQC types
        else:
            tbs = _man_pub_files(cfg2, pqc, "vendor" if pair == "vnd_pub_sig" else "owner")
            if pair == "vnd_pub_sig":
                values.update(version=cfg2.version, svn=cfg2.svn, flags=cfg2.flags & 1)
        yield {
            "basename": "sign",
            "name": slot,
            "doc": f"{slot} ({build2.SIGNERS2[pair]}, {pqc if alg == 'pqc' else 'ECC'})",
            "actions": [
                (act_sign, [st, pair, alg, imc_file if pair.endswith("_imc_sig") else None, target])
            ],
            "file_dep": sorted({*tbs, *(str(k) for k in keys)}),
            "targets": [target],
            "uptodate": _uptodate(values),
            "clean": [clean_targets, (rmdir_empty, [str(od / "sig")])],
        }
    man = man_path(cfg2, s)
    skeleton_inputs = {
        "version": cfg2.version,
        "svn": cfg2.svn,
        "flags": cfg2.flags & 1,
        "pqc": pqc,
        "align": align,
        "sigs": sorted((k, v is not None) for k, vs in sig_files.items() for v in vs),
    }
    pubs = _man_pub_files(cfg2, pqc, "vendor") + _man_pub_files(cfg2, pqc, "owner")
    yield {
        "basename": "manifest",
        "doc": "the signed SoC manifest (ATM2)",
        "actions": [(act_manifest, [st, imc_file, sig_files, str(man)])],
        "file_dep": sorted(
            {imc_file, *pubs, *(f for fs in sig_files.values() for f in fs if f is not None)}
        ),
        "targets": [str(man)],
        "task_dep": pad_dep,
        "uptodate": _uptodate(skeleton_inputs),
        "clean": True,
    }
    flash = flash_path(cfg2, s)
    runtime = [cfg2.caliptra_file, cfg2.mcu_file, *(i.file for i in cfg2.soc_images)]
    layout = {
        "files": [str(p) for p in runtime],
        "align": align,
        "man_name": man.name,
    }
    yield {
        "basename": "flash",
        "doc": "the flash image (FLSH v1) and fw_toc.bin beside it",
        "actions": [(act_flash, [st, str(man), str(flash)])],
        "file_dep": sorted({str(man), *(str(p) for p in runtime if p is not None)}),
        "targets": [str(flash), str(toc_path(cfg2, s))],
        "task_dep": pad_dep,
        "uptodate": _uptodate(layout),
        "clean": True,
    }
    yield {
        "basename": "verify",
        "doc": "verify the flash image (every check)",
        "actions": [(act_verify, [st, str(flash), str(toc_path(cfg2, s))])],
        "task_dep": ["flash"],
        "uptodate": [False],
        "verbosity": 2,
    }
