"""LMS signing with a private key file: composes the RFC 8554 math (:mod:`imgtool.keys.lms`), the
tree cache (:mod:`imgtool.keys.lms_tree`) and the leaf state (:mod:`imgtool.keys.lms_state` over
:mod:`imgtool.keys.lms_store`). The math and the state never import each other.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import KeyFileError, LmsStateError, SigningError
from . import lms_state, lms_tree
from .lms import (
    SLOT_LEN,
    SPARSE_Q,
    LmsPrivateKey,
    LmsPublicKey,
    auth_path,
    load_private,
    sig_to_slot,
    sparse_nodes,
    sparse_root,
)
from .lms_store import SIGNERS, KeyIdentity, StateStore, StoreMissingError, open_store

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

        A key is full-tree when its state file or tree cache exists or the store knows its
        (LMS type, LM-OTS type, I); a sparse demo key only when none of them does and its root
        is the sparse tree's; anything else is refused (no leaf is guessed)."""
        priv_path = Path(priv_path)
        if pub_path is None:
            pub_path = priv_path.with_name(priv_path.name.replace("prvk", "pubk"))
            if pub_path == priv_path or not pub_path.exists():
                raise KeyFileError(
                    f"{priv_path}: LMS public key not found beside it (tried {pub_path})"
                )
        key, pub = lms_tree.load_pair(priv_path, pub_path)
        sparse = _kind(priv_path, pub_path, key, pub, store)
        return cls(key, pub, priv_path, sparse, store=store, signer=signer, actor=actor)

    def store(self) -> StateStore:
        """The leaf-state store this signer reserves in (opened on first use; never created)."""
        try:
            return open_store(self.store_location, create=False)
        except StoreMissingError as exc:
            raise LmsStateError(f"{self.key_path}: {exc}") from None

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
            h = self.key.height
            sig = self.key.sign_at(q, digest, auth_path(nodes, h, q))
            if not self._pub.verify(digest, sig):
                cache = lms_tree.cache_path(self.key_path)
                log.warning(
                    "%s: the LMS signature at leaf %d does not verify with the tree from %s; "
                    "dropped that cache, rebuilding the tree from the private key and signing "
                    "again at the same leaf (the same message: the same one-time signature)",
                    self.key_path, q, cache,
                )  # fmt: skip
                nodes = lms_tree.rebuild_tree(self.key_path, self.key, self._pub)
                sig = self.key.sign_at(q, digest, auth_path(nodes, h, q))
                if not self._pub.verify(digest, sig):
                    raise SigningError(
                        f"{self.key_path}: LMS signature at leaf {q} does not verify even with "
                        f"the tree rebuilt from the private key ({cache.name} dropped): the "
                        "private key does not match its public key"
                    )
            return sig_to_slot(sig)
        if not self._pub.verify(digest, sig):
            raise SigningError(f"{self.key_path}: LMS signature does not verify (wrong key?)")
        return sig_to_slot(sig)


def _store_roots(key: LmsPrivateKey, store: str | None) -> list[bytes]:
    """The roots the store knows for this private key's (LMS type, LM-OTS type, I); none when
    the store does not exist (it is never created here)."""
    try:
        st = open_store(store, create=False)
    except StoreMissingError:
        return []
    return st.roots_for(key.lms_type, key.ots_type, key.I)


def _kind(
    priv: Path, pub_path: str | Path, key: LmsPrivateKey, pub: LmsPublicKey, store: str | None
) -> bool:
    """True for a sparse demo key, False for a full-tree key; KeyFileError when it is neither
    or when the public key file contradicts what the store, the state file or the tree cache
    say about the private key."""
    roots = _store_roots(key, store)
    if pub.root in roots:
        return False
    if roots:
        raise KeyFileError(
            f"{priv}: the LMS state store knows this private key (I={key.I.hex()}) as a "
            f"full-tree key with another root than {pub_path} holds: the public key file is wrong "
            "(re-derived as the sparse demo root?); restore the public key that keygen wrote"
        )
    full = [p.name for p in (lms_state.state_path(priv), lms_tree.cache_path(priv)) if p.exists()]
    if full:
        if sparse_root(key) == pub.root:
            raise KeyFileError(
                f"{priv}: {pub_path} holds the sparse demo root of this private key, but "
                f"{' and '.join(full)} say it is a full-tree key: signing it as a demo key would "
                f"reuse leaf {SPARSE_Q} of the real key; restore the public key that keygen wrote"
            )
        return False
    if sparse_root(key) == pub.root:
        return True
    try:
        where = open_store(store, create=False).description
    except StoreMissingError:
        where = "LMS state store (there is none)"
    raise KeyFileError(
        f"{priv}: full-tree LMS key without a state file "
        f"({lms_state.state_path(priv).name}) and unknown to the {where}; "
        "refusing to guess a leaf (create keys with `cptra-imgtool keygen --algo lms`, or "
        "adopt this one with `cptra-imgtool lms-status KEY --init --next-q N` or "
        "`--init --scan out/*.bin`)"
    )


def is_full_tree_key(priv: str | Path, store: str | None = None) -> bool:
    """Whether an LMS private key is a full-tree key this machine knows: its state file or
    tree cache exists beside it, or the store (``store``: a location, None for the configured
    one; never created) has a row with its (LMS type, LM-OTS type, I). A key for which this is
    False and whose public key is unknown must not be taken for a sparse demo key unless its
    sparse root is the public key it is known by."""
    priv = Path(priv)
    if lms_state.state_path(priv).exists() or lms_tree.cache_path(priv).exists():
        return True
    return bool(_store_roots(load_private(priv), store))


def stored_public_key(priv: str | Path, store: str | None = None) -> LmsPublicKey | None:
    """The full-tree public key the store recorded for this private key (by its LMS type,
    LM-OTS type and I), or None when the store knows none (or several: then KeyFileError)."""
    key = load_private(Path(priv))
    roots = _store_roots(key, store)
    if not roots:
        return None
    if len(roots) > 1:
        raise KeyFileError(
            f"{priv}: the LMS state store knows {len(roots)} public keys for this private key"
        )
    return LmsPublicKey(key.lms_type, key.ots_type, key.I, roots[0])
