"""One contract every LMS state store must meet (run on SQLite and on a real PostgreSQL)."""

from __future__ import annotations

import re
import time

import pytest

from imgtool.errors import LmsStateError
from imgtool.keys import lms_store as store

IDENT = store.KeyIdentity(10, 7, bytes(range(16)), bytes(range(100, 124)), 32)
OTHER = store.KeyIdentity(10, 7, bytes(range(1, 17)), bytes(range(50, 74)), 32)
# the same private key as IDENT (types and I) with another root: a wrong public key file
SAME_I = store.KeyIdentity(10, 7, bytes(range(16)), bytes(range(24)), 32)
HELPED = store.KeyIdentity(10, 7, bytes(range(2, 18)), bytes(range(30, 54)), 32)


def _h(i: int) -> str:
    return f"{i:064x}"


def run_store_contract(st: store.StateStore) -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", st.store_id)
    assert st.get(IDENT) is None and st.log_stats(IDENT) == (0, None)
    # signing never adopts a key: only register (keygen), init and import_key create rows
    with pytest.raises(store.UnknownKeyError):
        st.reserve(IDENT, 0, _h(0), signer="build")
    with pytest.raises(store.UnknownKeyError):
        st.reserve(IDENT, 7, _h(0), signer="build")  # not even with a floor (a state file)
    assert st.get(IDENT) is None and st.log_stats(IDENT) == (0, None)
    st.register(IDENT)
    with pytest.raises(LmsStateError, match="already has key"):
        st.register(IDENT)
    assert st.reserve(IDENT, 0, _h(0), signer="build") == store.Reservation(0, 0, 1)
    assert st.reserve(IDENT, 0, _h(1), signer="server", actor="token:a").q == 1
    # the floor (the state file) wins when it is ahead; leaves between are skipped, never used
    assert st.reserve(IDENT, 5, _h(5), signer="helper").q == 5
    assert st.get(IDENT) == store.KeyRow(6, 32, 3, 5)
    # a floor behind the store changes nothing
    assert st.reserve(IDENT, 2, _h(6), signer="build") == store.Reservation(6, 6, 7)
    # a build retrying the last leaf's message (a build's) gets that leaf again, spending
    # nothing: the signature is deterministic, the same signature
    assert st.reserve(IDENT, 0, _h(6), signer="build") == store.Reservation(6, 7, 7, True)
    assert st.log_stats(IDENT) == (4, 6)
    # ...not with a floor ahead (the state file knows of later leaves), not an older leaf (an
    # adoption may have moved the counter past leaves used elsewhere), never for a server
    # request (independent requests, each logged and counted) or another signer's entry
    assert st.reserve(IDENT, 8, _h(6), signer="build") == store.Reservation(8, 7, 9)
    assert st.reserve(IDENT, 0, _h(1), signer="build").q == 9
    assert st.reserve(IDENT, 0, _h(1), signer="server").q == 10
    assert st.reserve(IDENT, 0, _h(1), signer="build").q == 11
    assert st.reserve(IDENT, 0, _h(5), signer="helper").q == 12
    assert st.reserve(IDENT, 0, _h(5), signer="helper").q == 13
    # the same private key with another root (a wrong public key file) is refused
    assert st.roots_for(10, 7, IDENT.ident) == [IDENT.root]
    for bad in (
        lambda: st.register(SAME_I),
        lambda: st.init(SAME_I, 0),
        lambda: st.import_key(SAME_I, 0, []),
        lambda: st.reserve(SAME_I, 0, _h(0), signer="build"),
    ):
        with pytest.raises(LmsStateError, match="another root"):
            bad()
    assert st.get(SAME_I) is None
    # identities are separate rows; init adopts explicitly
    assert st.init(OTHER, 0) is None
    assert st.reserve(OTHER, 0, _h(0), signer="build").q == 0
    assert st.get(OTHER) == store.KeyRow(1, 32, 1, 0)
    # init only goes forward
    assert st.reserve(IDENT, 0, _h(14), signer="build").q == 14
    with pytest.raises(LmsStateError, match="refusing to go back"):
        st.init(IDENT, 14)
    assert st.init(IDENT, 16) == 15
    assert st.reserve(IDENT, 0, _h(14), signer="build").q == 16  # not 14: after an adoption
    for bad_q in (-1, 33, True):
        with pytest.raises(LmsStateError):
            st.init(IDENT, bad_q)  # type: ignore[arg-type]
    with pytest.raises(LmsStateError, match="signer"):
        st.reserve(IDENT, 0, _h(9), signer="root")
    with pytest.raises(LmsStateError, match="actor"):
        st.reserve(IDENT, 0, _h(9), signer="build", actor="x" * 201)
    assert st.get(IDENT).next_q == 17  # type: ignore[union-attr]
    # the log, newest first, and per-actor counts
    log = st.signatures(IDENT)
    assert [x.q for x in log] == [16, 14, 13, 12, 11, 10, 9, 8, 6, 5, 1, 0]
    assert [x.signer for x in log[-4:]] == ["build", "helper", "server", "build"]
    assert log[-2].actor == "token:a" and log[-2].msg_sha256 == _h(1)
    assert st.signatures(IDENT, 2) == log[:2]
    assert st.count_signatures("token:a", 0) == 1
    assert st.count_signatures("token:a", time.time() + 60) == 0
    # exhaustion: the last leaf is 31
    assert st.reserve(IDENT, 31, _h(31), signer="build").q == 31
    with pytest.raises(LmsStateError, match="exhausted"):
        st.reserve(IDENT, 0, _h(32), signer="build")
    assert st.get(IDENT).next_q == 32  # type: ignore[union-attr]
    # import: forward only, merged log, conflicting entries refused, all in one transaction;
    # imported entries never count for quotas
    rec = [store.SignatureRecord(q, _h(q), 1.0, "h", "build", "token:a") for q in (0, 1, 2)]
    with pytest.raises(LmsStateError, match="refusing to go backwards"):
        st.import_key(OTHER, 0, [])
    assert st.import_key(OTHER, 3, rec) == 1
    assert [x.q for x in st.signatures(OTHER)] == [2, 1, 0]
    assert st.count_signatures("token:a", 0) == 1
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
    # (an imported entry is not reused by message: the leaf is taken from the counter)
    assert st.reserve(OTHER, 0, _h(2), signer="build").q == 2
    assert st.log_stats(OTHER) == (4, 3)
    # a handoff (export with retire): the row refuses to sign from the same transaction on
    row, log_o = st.export_key(OTHER, retire=False)
    assert row.status == store.LIVE and [r.q for r in log_o] == [0, 1, 2, 3]
    row, log_o = st.export_key(OTHER, retire=True)
    assert row.status == store.MOVED and st.get(OTHER).status == store.MOVED  # type: ignore[union-attr]
    with pytest.raises(store.KeyMovedError, match="handed LMS key .* off"):
        st.reserve(OTHER, 0, _h(50), signer="build")
    assert st.export_key(OTHER, retire=False)[0].status == store.MOVED  # exportable again
    with pytest.raises(store.UnknownKeyError, match="nothing to export"):
        st.export_key(HELPED, retire=True)
    assert st.import_key(OTHER, 4, []) == 3  # moving it back makes it live again
    assert st.reserve(OTHER, 0, _h(4), signer="build").q == 4
    # sign-helper signatures: logged under the helper key's identity, reuse refused
    st.record_helper(HELPED, 3, _h(3))
    assert st.get(HELPED) == store.KeyRow(4, 32, 1, 3, store.HELPER)
    with pytest.raises(store.UnknownKeyError, match="sign-helper"):
        st.reserve(HELPED, 0, _h(9), signer="build")  # never adopted for local signing
    st.record_helper(HELPED, 3, _h(3))  # the same signature again: fine
    st.record_helper(HELPED, 1, _h(1))  # an older leaf: logged, the counter stays
    assert st.get(HELPED) == store.KeyRow(4, 32, 2, 3, store.HELPER)
    with pytest.raises(LmsStateError, match="reused a one-time leaf"):
        st.record_helper(HELPED, 3, _h(4))
    with pytest.raises(LmsStateError, match="outside"):
        st.record_helper(HELPED, 32, _h(4))
    st.record_helper(OTHER, 9, _h(90))  # a live key's counter moves past a helper's leaf
    assert st.get(OTHER) == store.KeyRow(10, 32, 6, 9, store.LIVE)
    with pytest.raises(LmsStateError, match="reused a one-time leaf"):
        st.record_helper(OTHER, 4, _h(40))  # the leaf a local signature used
    assert st.init(HELPED, 4) == 4 and st.get(HELPED).status == store.LIVE  # type: ignore[union-attr]
    assert st.reserve(HELPED, 0, _h(5), signer="build").q == 4


def _wind_back(st: store.StateStore, ident: store.KeyIdentity, next_q: int) -> None:
    """What a careless restore or a hand edit does to the counter (the log survives)."""
    with st._tx() as cur:
        cur.execute(
            st._sql("UPDATE lms_keys SET next_q = ? WHERE key_id = ?"), (next_q, ident.key_id)
        )
