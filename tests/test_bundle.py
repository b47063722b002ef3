"""Caliptra 1.x firmware bundles: the reference ones and our sample bundle."""

from __future__ import annotations

from pathlib import Path

import pytest
from independent import ecc_verify, lms_verify

from imgtool import fuses
from imgtool.errors import FormatError
from imgtool.formats import bundle1 as bundle
from imgtool.verify import Anchors, verify_bytes


@pytest.mark.parametrize("prj", ["ast2700-default", "ast2700a1-default"])
def test_reference_bundles(ref: Path, prj: str) -> None:
    data = (ref / "prebuilt" / prj / "caliptra-fw.bin").read_bytes()
    b = bundle.parse_bundle(data)
    assert (b.vendor_ecc_idx, b.vendor_lms_idx) == (3, 3)
    assert all(ok for _, ok in bundle.digest_checks(b))
    # the four signatures, checked independently (cryptography / hsslms)
    assert ecc_verify(b.vendor_ecc_pubkey, b.vendor_tbs(), b.vendor_ecc_sig)
    assert lms_verify(b.vendor_lms_pubkey, b.vendor_tbs(), b.vendor_lms_sig)
    assert ecc_verify(b.owner_ecc_pubkey, b.owner_tbs(), b.owner_ecc_sig)
    assert lms_verify(b.owner_lms_pubkey, b.owner_tbs(), b.owner_lms_sig)
    f = fuses.from_bundle(b, lms_verify=True)
    r = verify_bytes(data, Anchors(fuses=f))
    assert r.ok, [c.line() for c in r.failures]
    assert b.owner_lms_pubkey == (ref / "key" / prj / "own-fw-lms-pubk.pem").read_bytes()


def test_sample_bundle_verifies(tmp_path: Path) -> None:
    from projects import ecc_keys, lms_keys

    from imgtool.demo import sample_bundle

    ecc_keys(tmp_path)
    lms_keys(tmp_path, "h15-sparse")  # the LMS type Caliptra verifies
    data = sample_bundle(tmp_path)
    b = bundle.parse_bundle(data)
    r = verify_bytes(data, Anchors(fuses=fuses.from_bundle(b, lms_verify=True)))
    assert r.ok, [c.line() for c in r.failures]
    assert b.owner_lms_pubkey == (tmp_path / "own-fw-lms-pubk.pem").read_bytes()
    # a foreign fuse value: the bundle is refused
    other = fuses.Fuses(bytes(range(48)), None, True)
    r = verify_bytes(data, Anchors(fuses=other))
    want = {"bundle.fuse.vendor_pk_hash", "bundle.vendor_keys", "trust.chain"}
    assert not r.ok and {c.id for c in r.failures} == want


def test_garbage_and_truncation() -> None:
    with pytest.raises(FormatError, match="CMAN"):
        bundle.parse_bundle(b"XXXX" + bytes(10000))
    with pytest.raises(FormatError, match="truncated"):
        bundle.parse_bundle(b"CMAN" + bytes(100))
    with pytest.raises(FormatError, match="2.x"):
        bundle.parse_bundle(b"CMN2" + bytes(100))
