"""LMS signing with a private key file: composes the RFC 8554 math (:mod:`imgtool.lms`) with the
leaf state (:mod:`imgtool.lms_state`). Neither of those imports this module or each other's
signing logic.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from . import lms_state
from .errors import KeyFileError, SigningError
from .lms import (
    SLOT_LEN,
    SPARSE_Q,
    LmsPrivateKey,
    LmsPublicKey,
    auth_path,
    load_private,
    load_public,
    sig_to_slot,
    sparse_nodes,
    sparse_root,
)
from .store import KeyIdentity, StateStore, open_store

log = logging.getLogger("imgtool")
_WARNED: set[bytes] = set()


class LmsSigner:
    """Signs 48-byte digests with an LMS private key file; returns the 1620-byte slot."""

    sig_len = SLOT_LEN

    def __init__(
        self,
        key: LmsPrivateKey,
        pub: LmsPublicKey,
        key_path: Path,
        sparse: bool,
        *,
        store: str | None = None,
        signer: str = "build",
        actor: str | None = None,
    ):
        self.key = key
        self._pub = pub
        self.key_path = key_path
        self.is_sparse = sparse
        self.store_location = store
        self.signer = signer
        self.actor = actor

    @classmethod
    def load(
        cls,
        priv_path: str | Path,
        pub_path: str | Path | None = None,
        *,
        store: str | None = None,
        signer: str = "build",
        actor: str | None = None,
    ) -> LmsSigner:
        """Load a key pair. ``store``: the leaf-state store location (None: ``--state`` /
        ``CPTRA_IMGTOOL_STATE`` / the per-user default); ``signer`` (build, server, helper) and
        ``actor`` (free text, e.g. ``token:<id>``) go into the store's signature log."""
        priv_path = Path(priv_path)
        if pub_path is None:
            pub_path = priv_path.with_name(priv_path.name.replace("prvk", "pubk"))
            if pub_path == priv_path or not pub_path.exists():
                raise KeyFileError(
                    f"{priv_path}: LMS public key not found beside it (tried {pub_path})"
                )
        key = load_private(priv_path)
        pub = load_public(pub_path)
        if (pub.lms_type, pub.ots_type, pub.I) != (key.lms_type, key.ots_type, key.I):
            raise KeyFileError(f"{priv_path}: LMS private key does not match {pub_path}")
        opts: dict[str, Any] = {"store": store, "signer": signer, "actor": actor}
        if lms_state.state_path(priv_path).exists():
            return cls(key, pub, priv_path, sparse=False, **opts)
        if sparse_root(key) == pub.root:
            return cls(key, pub, priv_path, sparse=True, **opts)
        raise KeyFileError(
            f"{priv_path}: full-tree LMS key without a state file "
            f"({lms_state.state_path(priv_path).name}); refusing to guess a leaf "
            "(create keys with `cptra-imgtool keygen --algo lms`, or adopt this one with "
            "`cptra-imgtool lms-status KEY --init --next-q N`)"
        )

    def store(self) -> StateStore:
        """The leaf-state store this signer reserves in (opened on first use)."""
        return open_store(self.store_location)

    def leaves_left(self) -> int | None:
        """Leaves never reserved by either witness (None for sparse demo keys)."""
        if self.is_sparse:
            return None
        total = 1 << self._pub.height
        used = lms_state.read_state(self.key_path, self._pub)
        row = self.store().get(KeyIdentity.of(self._pub))
        if row is not None:
            used = max(used, row.next_q)
        return total - used

    def public_key(self) -> LmsPublicKey:
        return self._pub

    def public_bytes(self) -> bytes:
        return self._pub.to_bytes()

    @property
    def description(self) -> str:
        return str(self.key_path)

    def sign_digest(self, digest: bytes) -> bytes:
        if self.is_sparse:
            tag = self._pub.to_bytes()
            if tag not in _WARNED:
                _WARNED.add(tag)
                log.warning(
                    "%s: sparse demo LMS key: every signature reuses its one-time leaf q = %d "
                    "(anyone can forge with it); never use it for a product",
                    self.key_path,
                    SPARSE_Q,
                )
            nodes = sparse_nodes(self.key)
            sig = self.key.sign_at(SPARSE_Q, digest, auth_path(nodes, self.key.height, SPARSE_Q))
        else:
            sig = lms_state.sign_full_tree(self.key_path, self.key, self._pub, digest)
        if not self._pub.verify(digest, sig):
            raise SigningError(f"{self.key_path}: LMS signature does not verify (wrong key?)")
        return sig_to_slot(sig)
