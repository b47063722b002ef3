"""`manifest_config.padding_align_size`: zero-padded copies of the images (newest reference tool).

With ``padding_align_size = N`` (> 0) every image with a file name, ``caliptra_file`` and
``mcu_file`` is replaced by a copy zero-padded to a multiple of N (pad = (N - len % N) % N),
named ``<stem>_align_<N>.<ext>`` (the reference tool's name, from Rust's file_stem/extension
rules) in ``padding_out_folder``. The padded bytes are what is hashed into the manifest (then, as
for any image, zero-padded to 4) and packed into the flash image.

Without a folder nothing needs to be written: :func:`image_digest` and the flash writer pad while
they stream (the reference uses a temporary folder removed at exit; the bytes are the same). The
doit tasks keep their copies in ``out/<prj>/padded/`` (``doit clean`` removes them).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..fileio import atomic_writer

CHUNK = 1 << 20


def padded_len(n: int, align: int) -> int:
    """Length after zero-padding n bytes to a multiple of align (align <= 1: unchanged)."""
    return n if align <= 1 else n + (-n % align)


def _stem_ext(name: str) -> tuple[str, str | None]:
    """Rust's Path::file_stem / Path::extension split (what the reference tool uses)."""
    if name == "..":
        return name, None
    before, dot, after = name.rpartition(".")
    if not dot or before == "":
        return name, None
    return before, after


def padded_name(path: Path, align: int) -> str:
    """``<stem>_align_<N>.<ext>`` (``<stem>_align_<N>`` without an extension)."""
    stem, ext = _stem_ext(path.name)
    return f"{stem}_align_{align}" + (f".{ext}" if ext is not None else "")


def image_digest(path: Path | None, align: int = 0, chunk: int = CHUNK) -> bytes:
    """SHA-384 of a file zero-padded to a multiple of ``align``, then to a multiple of 4 (the
    manifest's image digest of its padded copy); None is the empty image."""
    h = hashlib.sha384()
    if path is None:
        return h.digest()
    n = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
            n += len(block)
    total = padded_len(n, align)
    _update_zeros(h, total - n + (-total % 4))
    return h.digest()


def _update_zeros(h: hashlib._Hash, count: int) -> None:
    zeros = bytes(min(count, CHUNK))
    while count > 0:
        step = min(count, len(zeros))
        h.update(zeros[:step])
        count -= step


def write_copy(src: Path, dst: Path, align: int) -> int:
    """Write ``src`` zero-padded to a multiple of ``align`` to ``dst`` atomically; returns the
    padded length. An existing ``dst`` with exactly those bytes is left alone (its mtime too)."""
    size = src.stat().st_size
    total = padded_len(size, align)
    if _same_padded(src, dst, size, total):
        return total
    with atomic_writer(dst) as out, open(src, "rb") as fh:
        n = 0
        while block := fh.read(CHUNK):
            out.write(block)
            n += len(block)
        if n != size:
            raise ConfigError(f"{src}: changed size while it was being padded; retry")
        rest = total - n
        zeros = bytes(min(rest, CHUNK))
        while rest > 0:
            step = min(rest, len(zeros))
            out.write(zeros[:step])
            rest -= step
    return total


def _same_padded(src: Path, dst: Path, size: int, total: int) -> bool:
    try:
        if dst.stat().st_size != total or os.path.samefile(src, dst):
            return False
    except OSError:
        return False
    with open(src, "rb") as a, open(dst, "rb") as b:
        while block := a.read(CHUNK):
            if b.read(len(block)) != block:
                return False
        rest = b.read()
    return rest == bytes(total - size)


@dataclass(frozen=True)
class Copy:
    """One padded copy: which config field asked for it, the original, the copy."""

    field: str
    original: Path
    copy: Path


def plan_copies(
    inputs: list[tuple[str, Path]], folder: Path, align: int, protected: list[Path], cfg: Path
) -> list[Copy]:
    """The copies to write into ``folder`` for ``inputs`` (config field, original path), one per
    distinct original. Refuses two originals that would share a copy name, a copy that would
    overwrite an input (``protected``: originals, config, keys), and a folder that is a file."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{cfg}: manifest_config.padding_out_folder: {folder} is not a directory")
    keep = {_key(p): p for p in protected}
    by_copy: dict[str, Copy] = {}
    seen: dict[str, Copy] = {}
    out: list[Copy] = []
    for fld, original in inputs:
        okey = _key(original)
        if okey in seen:
            continue
        copy = folder / padded_name(original, align)
        ckey = _key(copy)
        other = by_copy.get(ckey)
        if other is not None:
            raise ConfigError(
                f"{cfg}: {fld}: padded copy {copy} would also be the copy of {other.original} "
                f"({other.field}); rename one of them"
            )
        if ckey in keep:
            raise ConfigError(
                f"{cfg}: manifest_config.padding_out_folder: the padded copy of {original} "
                f"({fld}) would overwrite the input {keep[ckey]}; choose another folder"
            )
        c = Copy(fld, original, copy)
        seen[okey] = by_copy[ckey] = c
        out.append(c)
    return out


def _key(p: Path) -> str:
    return os.path.realpath(p)
