"""Trust anchors (fuses, config, key directory, a trusted Caliptra bundle), the policy they set,
and the keys a verification uses, each with where it came from and what anchors it.

Policy comes from the anchors, never from the image: without a fuses file, secure boot is
assumed on and the LMS verify fuse unknown (LMS signatures that are present must verify; empty
ones are reported as not checked).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ImgtoolError, KeyFileError
from ..fuses import Fuses
from ..keys import ecc, lms

ALGOS = ("ecc", "lms")
# the reference key file names per role
KEY_FILES = {
    "vendor_fw": "vnd-fw",
    "vendor_man": "vnd-man",
    "owner_fw": "own-fw",
    "owner_man": "own-man",
}


@dataclass(frozen=True)
class Policy:
    secure_boot: bool = True
    lms_verify: bool | None = None  # None: unknown (no fuses file)
    min_svn: int | None = None

    @classmethod
    def from_fuses(cls, f: Fuses | None) -> Policy:
        if f is None:
            return cls()
        return cls(f.secure_boot, f.lms_verify, f.min_svn)


@dataclass
class Key:
    """A public key in its stored form (ECC hardware format x||y, LMS 48 bytes)."""

    algo: str
    value: bytes
    origin: str  # where the bytes were read: "the bundle in the image", "key dir D", ...
    anchors: list[str] = field(default_factory=list)  # what vouches for it

    @property
    def anchored(self) -> bool:
        return bool(self.anchors)

    def describe(self) -> str:
        if self.anchors:
            return f"{self.origin}, anchored by {', '.join(self.anchors)}"
        return f"{self.origin}, not anchored"


# the 2.x config's key sections per role
SECTIONS2 = {
    "vendor_fw": "vendor_fw_key_config",
    "vendor_man": "vendor_man_key_config",
    "owner_fw": "owner_fw_key_config",
    "owner_man": "owner_man_key_config",
}
# the anchor an unprovisioned owner PK hash fuse gives the bundle's owner keys (2.x): not an
# anchor of who signed, only of what the part accepts
UNPROVISIONED_OWNER = "an unprovisioned owner hash fuse (any owner key)"
UNPROVISIONED_VENDOR = "an unprovisioned part (no vendor PK hash fuse)"
UNPROVISIONED = (UNPROVISIONED_OWNER, UNPROVISIONED_VENDOR)


def _load_pub(path: Path, algo: str) -> bytes:
    if algo == "ecc":
        return ecc.public_to_hw(ecc.load_public(path))
    if algo == "mldsa":
        from ..keys import mldsa

        return mldsa.MldsaPublicKey.load(path).raw
    return bytes(lms.load_public(path).to_bytes())


@dataclass
class Anchors:
    fuses: Fuses | None = None
    cfg: Config | None = None
    key_dir: Path | None = None
    caliptra_fw: bytes | None = None
    caliptra_fw_name: str = ""
    cfg2: Any = None  # a Caliptra 2.x config (imgtool.config2.Config2)
    accept_unprovisioned: bool = False  # --accept-unprovisioned (2.x, see verify --help)
    fw_toc: bytes | None = None  # --fw-toc: the fw_toc.bin written beside a 2.x flash image
    fw_toc_name: str = ""

    @property
    def any(self) -> bool:
        return any(
            x is not None for x in (self.fuses, self.cfg, self.cfg2, self.key_dir, self.caliptra_fw)
        )

    @property
    def key_anchors(self) -> bool:
        """An anchor that names keys (a config, a key directory) besides the fuses."""
        return self.cfg is not None or self.cfg2 is not None or self.key_dir is not None

    def names(self) -> list[str]:
        out = []
        if self.fuses is not None:
            out.append(self.fuses.source)
        if self.cfg is not None:
            out.append(f"config {self.cfg.path}")
        if self.cfg2 is not None:
            out.append(f"config {self.cfg2.path}")
        if self.key_dir is not None:
            out.append(f"key dir {self.key_dir}")
        if self.caliptra_fw is not None:
            out.append(f"caliptra-fw {self.caliptra_fw_name}")
        return out

    def dir_key(self, role: str, algo: str) -> tuple[bytes, str] | None:
        """The key of ``role`` in the key directory: ``<prefix>-<algo>-pubk.pem``, or for ECC
        derived from ``-prvk.pem`` when only the private key is there."""
        if self.key_dir is None:
            return None
        return _dir_key(self.key_dir, KEY_FILES[role], algo)

    def cfg_key(self, role: str, algo: str) -> tuple[bytes, str] | None:
        """The configured public key of ``role`` (a KeySet field of the config)."""
        if self.cfg2 is not None:
            ks = self.cfg2.keys.get(SECTIONS2[role])
            p2: Path | None = getattr(ks, f"{algo}_pub", None) if ks is not None else None
            return None if p2 is None else (_read_key(p2, algo), str(p2))
        if self.cfg is None or algo == "mldsa":
            return None
        keyset = getattr(self.cfg, role)
        path: Path | None = getattr(keyset, f"{algo}_pub")
        if path is None:
            return None
        return _read_key(path, algo), str(path)

    def expected(self, role: str, algo: str) -> list[tuple[bytes, str]]:
        """Every anchor's value for a key: (bytes, "config FILE" / "key dir FILE")."""
        out = []
        c = self.cfg_key(role, algo)
        if c is not None:
            out.append((c[0], f"config ({c[1]})"))
        d = self.dir_key(role, algo)
        if d is not None:
            out.append((d[0], f"key dir ({d[1]})"))
        return out


class AnchorError(ImgtoolError):
    """An anchor (key file, config) cannot be read."""


def _read_key(path: Path, algo: str) -> bytes:
    """A public key file, memoised by the file's identity (never by a relative name alone: the
    same name means another file after a chdir, or after the file was replaced)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise AnchorError(f"{path}: cannot read key: {exc.strerror}") from None
    return _read_key_at(str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, algo)


@functools.lru_cache(maxsize=64)
def _read_key_at(path: str, _ino: int, _size: int, _mtime: int, algo: str) -> bytes:
    try:
        return _load_pub(Path(path), algo)
    except KeyFileError as exc:
        raise AnchorError(str(exc)) from None


def _dir_key(key_dir: Path, prefix: str, algo: str) -> tuple[bytes, str] | None:
    pub = key_dir / f"{prefix}-{algo}-pubk.{'bin' if algo == 'mldsa' else 'pem'}"
    if pub.is_file():
        return _read_key(pub, algo), str(pub)
    priv = key_dir / f"{prefix}-{algo}-prvk.pem"
    if algo == "ecc" and priv.is_file():
        try:
            key = ecc.load_private(priv)
        except KeyFileError as exc:
            raise AnchorError(str(exc)) from None
        return ecc.public_to_hw(key.public_key()), str(priv)
    return None
