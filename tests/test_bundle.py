"""Caliptra 1.x firmware bundles: the reference ones and our sample bundle."""

from __future__ import annotations

from pathlib import Path

import pytest
from independent import ecc_verify, lms_verify

from imgtool import bundle
from imgtool.errors import FormatError
from imgtool.verify import Report, check_bundle


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
    r = Report("bundle")
    check_bundle(data, r)
    assert r.ok, [c.line() for c in r.checks if not c.ok]
    assert b.owner_lms_pubkey == (ref / "key" / prj / "own-fw-lms-pubk.pem").read_bytes()


def test_sample_bundle_verifies(tmp_path: Path) -> None:
    from projects import ecc_keys, lms_keys

    from imgtool.demo import sample_bundle

    ecc_keys(tmp_path)
    lms_keys(tmp_path)
    data = sample_bundle(tmp_path)
    r = Report("bundle")
    b = check_bundle(data, r)
    assert r.ok and b is not None
    assert b.owner_lms_pubkey == (tmp_path / "own-fw-lms-pubk.pem").read_bytes()


def test_garbage_and_truncation() -> None:
    with pytest.raises(FormatError, match="CMAN"):
        bundle.parse_bundle(b"XXXX" + bytes(10000))
    with pytest.raises(FormatError, match="truncated"):
        bundle.parse_bundle(b"CMAN" + bytes(100))
    with pytest.raises(FormatError, match="2.x"):
        bundle.parse_bundle(b"CMN2" + bytes(100))
