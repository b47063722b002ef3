"""One contract every LMS state store must meet (run on SQLite and on a real PostgreSQL)."""

from __future__ import annotations

import time

import pytest

from imgtool import store
from imgtool.errors import LmsStateError

IDENT = store.KeyIdentity(10, 7, bytes(range(16)), bytes(range(100, 124)), 32)
OTHER = store.KeyIdentity(10, 7, bytes(range(1, 17)), bytes(range(50, 74)), 32)


def _h(i: int) -> str:
    return f"{i:064x}"


def run_store_contract(st: store.StateStore) -> None:
    assert st.get(IDENT) is None and st.log_stats(IDENT) == (0, None)
    # a key the store has never seen is refused unless the caller vouches (create)
    with pytest.raises(store.UnknownKeyError):
        st.reserve(IDENT, 0, _h(0), signer="build", create=False)
    assert st.get(IDENT) is None
    r = st.reserve(IDENT, 0, _h(0), signer="build")
    assert r == store.Reservation(0, None)
    assert st.reserve(IDENT, 0, _h(1), signer="server", actor="token:a").q == 1
    # the floor (the state file) wins when it is ahead; leaves between are skipped, never used
    assert st.reserve(IDENT, 5, _h(5), signer="helper").q == 5
    assert st.get(IDENT) == store.KeyRow(6, 32, 3, 5)
    # a floor behind the store changes nothing
    assert st.reserve(IDENT, 2, _h(6), signer="build") == store.Reservation(6, 6)
    # identities are separate rows
    assert st.reserve(OTHER, 0, _h(0), signer="build").q == 0
    assert st.get(OTHER) == store.KeyRow(1, 32, 1, 0)
    # advance and init only go forward
    assert st.advance(IDENT, 3) == 7 and st.get(IDENT).next_q == 7  # type: ignore[union-attr]
    with pytest.raises(LmsStateError, match="refusing to go back"):
        st.init(IDENT, 6)
    assert st.init(IDENT, 9) == 7
    for bad in (-1, 33, True):
        with pytest.raises(LmsStateError):
            st.init(IDENT, bad)  # type: ignore[arg-type]
    with pytest.raises(LmsStateError, match="signer"):
        st.reserve(IDENT, 0, _h(9), signer="root")
    with pytest.raises(LmsStateError, match="actor"):
        st.reserve(IDENT, 0, _h(9), signer="build", actor="x" * 201)
    assert st.get(IDENT).next_q == 9  # type: ignore[union-attr]
    # the log, newest first, and per-actor counts
    log = st.signatures(IDENT)
    assert [x.q for x in log] == [6, 5, 1, 0]
    assert [x.signer for x in log] == ["build", "helper", "server", "build"]
    assert log[2].actor == "token:a" and log[2].msg_sha256 == _h(1)
    assert st.signatures(IDENT, 2) == log[:2]
    assert st.count_signatures("token:a", 0) == 1
    assert st.count_signatures("token:a", time.time() + 60) == 0
    # exhaustion: the last leaf is 31
    assert st.reserve(IDENT, 31, _h(31), signer="build").q == 31
    with pytest.raises(LmsStateError, match="exhausted"):
        st.reserve(IDENT, 0, _h(32), signer="build")
    assert st.get(IDENT).next_q == 32  # type: ignore[union-attr]
    # import: forward only, merged log, conflicting entries refused, all in one transaction
    rec = [store.SignatureRecord(q, _h(q), 1.0, "h", "build", None) for q in (0, 1, 2)]
    with pytest.raises(LmsStateError, match="refusing to go backwards"):
        st.import_key(OTHER, 0, [])
    assert st.import_key(OTHER, 3, rec) == 1
    assert [x.q for x in st.signatures(OTHER)] == [2, 1, 0]
    clash = [store.SignatureRecord(3, _h(99), 1.0, "h", "build", None)]
    st.reserve(OTHER, 0, _h(3), signer="build")  # q 3 with message _h(3)
    with pytest.raises(LmsStateError, match="different message"):
        st.import_key(OTHER, 10, clash)
    assert st.get(OTHER).next_q == 4  # type: ignore[union-attr]  # rolled back as a whole
    # the log refuses a leaf it has seen for a different message, even if a counter forgot it
    _wind_back(st, OTHER, 2)
    with pytest.raises(LmsStateError, match="q=2 .* already used for a different message"):
        st.reserve(OTHER, 0, _h(77), signer="build")
    assert st.get(OTHER).next_q == 2  # type: ignore[union-attr]
    # ...but the same message at the same leaf is the same signature: allowed, not re-logged
    assert st.reserve(OTHER, 0, _h(2), signer="build").q == 2
    assert st.log_stats(OTHER) == (4, 3)


def _wind_back(st: store.StateStore, ident: store.KeyIdentity, next_q: int) -> None:
    """What a careless restore or a hand edit does to the counter (the log survives)."""
    with st._tx() as cur:
        cur.execute(
            st._sql("UPDATE lms_keys SET next_q = ? WHERE key_id = ?"), (next_q, ident.key_id)
        )
