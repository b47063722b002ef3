"""LMS signing with a private key file: composes the RFC 8554 math (:mod:`imgtool.lms`), the
tree cache (:mod:`imgtool.lms_tree`) and the leaf state (:mod:`imgtool.lms_state` over
:mod:`imgtool.store`). The math and the state never import each other.
"""

from __future__ import annotations

import logging
from pathlib import Path

from . import lms_state, lms_tree
from .errors import KeyFileError, SigningError
from .lms import (
    SLOT_LEN,
    SPARSE_Q,
    LmsPrivateKey,
    LmsPublicKey,
    auth_path,
    sig_to_slot,
    sparse_nodes,
    sparse_root,
)
from .store import SIGNERS, KeyIdentity, StateStore, open_store

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
        if signer not in SIGNERS:
            raise SigningError(f"signer {signer!r}: must be one of {', '.join(SIGNERS)}")
        self.key = key
        self._pub = pub
        self.key_path = key_path
        self.is_sparse = sparse
        self.identity = KeyIdentity.of(pub)
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
        ``actor`` (free text, e.g. ``token:<id>``) go into the store's signature log.

        A key is full-tree when its state file or the store knows it, a sparse demo key when
        its root is the sparse tree's; anything else is refused (no leaf is guessed)."""
        priv_path = Path(priv_path)
        if pub_path is None:
            pub_path = priv_path.with_name(priv_path.name.replace("prvk", "pubk"))
            if pub_path == priv_path or not pub_path.exists():
                raise KeyFileError(
                    f"{priv_path}: LMS public key not found beside it (tried {pub_path})"
                )
        key, pub = lms_tree.load_pair(priv_path, pub_path)
        sparse: bool | None = None
        if lms_state.state_path(priv_path).exists():
            sparse = False
        elif sparse_root(key) == pub.root:
            sparse = True
        else:
            st = open_store(store)
            if st.get(KeyIdentity.of(pub)) is not None:
                sparse = False
        if sparse is not None:
            return cls(key, pub, priv_path, sparse, store=store, signer=signer, actor=actor)
        raise KeyFileError(
            f"{priv_path}: full-tree LMS key without a state file "
            f"({lms_state.state_path(priv_path).name}) and unknown to the {st.description}; "
            "refusing to guess a leaf (create keys with `cptra-imgtool keygen --algo lms`, or "
            "adopt this one with `cptra-imgtool lms-status KEY --init --next-q N` or "
            "`--init --scan out/*.bin`)"
        )

    def store(self) -> StateStore:
        """The leaf-state store this signer reserves in (opened on first use)."""
        return open_store(self.store_location)

    def leaves_left(self) -> int | None:
        """Leaves that neither witness nor the signature log has seen used (None for sparse
        demo keys)."""
        if self.is_sparse:
            return None
        w = lms_state.witnesses(self.key_path, self.identity, self.store())
        return max(0, self.identity.leaves - w.next_q)

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
            nodes = lms_tree.get_tree(self.key_path, self.key, self._pub)
            q = lms_state.reserve(
                self.key_path,
                self.identity,
                self.store(),
                digest,
                signer=self.signer,
                actor=self.actor,
            )
            sig = self.key.sign_at(q, digest, auth_path(nodes, self.key.height, q))
        if not self._pub.verify(digest, sig):
            raise SigningError(f"{self.key_path}: LMS signature does not verify (wrong key?)")
        return sig_to_slot(sig)
