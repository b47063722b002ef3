"""Caliptra 2.x firmware bundle (CMN2): the parser against the spec offsets, verify modelling the
2.x ROM (PQC type from the fuse, key descriptors and the vendor PK hash, active key hashes,
owner keys, signatures over the right bytes), byte flips in every region, and bundles signed
over the wrong bytes. Bundles are built by tests/helpers/indep2.py (no imgtool code) and
signed with `cryptography` (ECDSA, ML-DSA-87) and sparse H15 LMS test keys; signatures are
checked independently (dilithium-py and OpenSSL for ML-DSA, hsslms for LMS)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import indep2
import pytest
from indep2 import CMN2, BundleKeys2, EccSigner, MldsaSigner, build_cmn2

from imgtool.cli.main import main
from imgtool.formats import bundle2 as b2
from imgtool.fuses import owner_pk_hash2, vendor_pk_hash2
from imgtool.keys import lms


class LmsSigner:
    """A sparse H15/W4 test key (leaf 5 only: test use), as the 1.x tests use."""

    def __init__(self) -> None:
        self.key = lms.LmsPrivateKey(
            lms.LMS_SHA256_M24_H15, lms.LMOTS_SHA256_N24_W4, os.urandom(16), os.urandom(24)
        )
        self.nodes = lms.sparse_nodes(self.key)
        self.pub = lms.LmsPublicKey(
            self.key.lms_type, self.key.ots_type, self.key.I, self.nodes[1]
        ).to_bytes()

    def __call__(self, covered: bytes) -> bytes:
        path = lms.auth_path(self.nodes, 15, lms.SPARSE_Q)
        return lms.sig_to_slot(
            self.key.sign_at(lms.SPARSE_Q, hashlib.sha384(covered).digest(), path)
        )


def _signers(pqc: str) -> tuple[list[EccSigner], list[object], EccSigner, object]:
    vendor_ecc = [EccSigner(1000 + i) for i in range(4)]
    if pqc == "mldsa":
        vendor_pqc: list[object] = [MldsaSigner(2000 + i) for i in range(4)]
        owner_pqc: object = MldsaSigner(3000)
    else:
        vendor_pqc = [LmsSigner() for _ in range(2)]
        owner_pqc = LmsSigner()
    return vendor_ecc, vendor_pqc, EccSigner(4000), owner_pqc


_CACHE: dict[str, tuple[bytes, BundleKeys2]] = {}
_SIGNERS: dict[str, tuple[list[EccSigner], list[object], EccSigner, object]] = {}


def bundle(pqc: str) -> tuple[bytes, BundleKeys2]:
    if pqc not in _CACHE:
        ve, vp, oe, op = _SIGNERS[pqc] = _signers(pqc)
        keys = BundleKeys2(
            pqc,
            [s.pub_hw for s in ve],
            [s.pub for s in vp],  # type: ignore[attr-defined]
            ecc_idx=2,
            pqc_idx=1,
            owner_ecc=oe.pub_hw,
            owner_pqc=op.pub,  # type: ignore[attr-defined]
        )
        data = build_cmn2(keys, ve[2], vp[1], oe, op)
        _CACHE[pqc] = (data, keys)
    return _CACHE[pqc]


def fuses_file(tmp_path: Path, data: bytes, **edit: object) -> Path:
    pqc = data[8]
    fields: dict[str, object] = {
        "vendor_pk_hash": f'"{indep2.cmn2_vendor_pk_hash(data).hex()}"',
        "owner_pk_hash": f'"{indep2.cmn2_owner_pk_hash(data).hex()}"',
        "pqc_key_type": pqc,
        "secure_boot": "true",
    }
    fields.update(edit)
    p = tmp_path / "fuses.toml"
    p.write_text("[fuses]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items()))
    return p


def verify(capsys: pytest.CaptureFixture[str], path: Path, *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    rc = main(["verify", str(path), "--json", *args])
    return rc, json.loads(capsys.readouterr().out)


def failed(doc: dict) -> list[str]:
    return [c["id"] for c in doc["checks"] if c["status"] == "FAIL"]


PQCS = ["mldsa", "lms"]


@pytest.mark.parametrize("pqc", PQCS)
def test_signatures_independent(pqc: str) -> None:
    """The test bundle's four signatures verify independently over the spec's bytes."""
    data, keys = bundle(pqc)
    h = CMN2["header"]
    vendor_tbs, owner_tbs = data[h : h + 120], data[h : h + 160]
    assert indep2.ecc_verify_hw(data[1752:1848], vendor_tbs, data[4444:4540])
    assert indep2.ecc_verify_hw(data[9168:9264], owner_tbs, data[11856:11952])
    assert indep2.pqc_verify(pqc, data[1852:4444], vendor_tbs, data[4540:9168])
    assert indep2.pqc_verify(pqc, data[9264:11856], owner_tbs, data[11952:16580])
    # and not over the neighbouring bytes
    assert not indep2.pqc_verify(pqc, data[1852:4444], owner_tbs, data[4540:9168])
    assert not indep2.ecc_verify_hw(data[1752:1848], owner_tbs, data[4444:4540])


@pytest.mark.parametrize("pqc", PQCS)
def test_parse_offsets(pqc: str) -> None:
    data, keys = bundle(pqc)
    b = b2.parse_bundle2(data)
    assert b.size == 16956 == b2.MANIFEST_SIZE == CMN2["len"]
    assert b.pqc_key_type == (1 if pqc == "mldsa" else 3)
    assert (b.vendor_ecc_idx, b.vendor_pqc_idx) == (2, 1)
    assert (b.header_vendor_ecc_idx, b.header_vendor_pqc_idx) == (2, 1)
    assert b.vendor_ecc_pub == keys.vendor_ecc[2]
    assert b.vendor_pqc_pub == keys.vendor_pqc[1]
    assert b.owner_ecc_pub == keys.owner_ecc and b.owner_pqc_pub == keys.owner_pqc
    assert b.ecc_desc.count == 4 and b.pqc_desc.count == len(keys.vendor_pqc)
    for i, k in enumerate(keys.vendor_ecc):
        assert b.ecc_desc.hash_be(i) == hashlib.sha384(k).digest()
    for i, k in enumerate(keys.vendor_pqc):
        assert b.pqc_desc.hash_be(i) == hashlib.sha384(k).digest()
    assert b.vendor_tbs() == data[16588:16708] and b.owner_tbs() == data[16588:16748]
    assert b.svn == 3 and b.toc_len == 2
    assert (b.fmc.offset, b.runtime.offset) == (16956, 16956 + b.fmc.size)
    assert vendor_pk_hash2(b) == indep2.cmn2_vendor_pk_hash(data)
    assert owner_pk_hash2(b) == indep2.cmn2_owner_pk_hash(data)


@pytest.mark.parametrize("pqc", PQCS)
def test_verify_passes_with_fuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pqc: str
) -> None:
    data, _ = bundle(pqc)
    f = tmp_path / "caliptra-fw.bin"
    f.write_bytes(data)
    rc, doc = verify(capsys, f, "--fuses", str(fuses_file(tmp_path, data)))
    assert rc == 0, failed(doc)
    assert doc["kind"] == "Caliptra 2.x firmware bundle (CMN2)"
    ids = {c["id"]: c["status"] for c in doc["checks"]}
    algo = "mldsa" if pqc == "mldsa" else "lms"
    for cid in ("vendor.ecc", f"vendor.{algo}", "owner.ecc", f"owner.{algo}"):
        assert ids[f"bundle.sig.{cid}"] == "ok"
    assert any("879608b9" in c["detail"] for c in doc["checks"] if c["id"] == "target")


def test_no_anchor_is_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = bundle("mldsa")
    f = tmp_path / "caliptra-fw.bin"
    f.write_bytes(data)
    rc, doc = verify(capsys, f)
    assert rc == 1
    assert "trust.anchor" in failed(doc)
    rc, doc = verify(capsys, f, "--integrity-only")
    assert rc == 0


def test_pqc_fuse_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = bundle("mldsa")
    f = tmp_path / "caliptra-fw.bin"
    f.write_bytes(data)
    rc, doc = verify(capsys, f, "--fuses", str(fuses_file(tmp_path, data, pqc_key_type=3)))
    assert rc == 1 and "bundle.fuse.pqc_key_type" in failed(doc)
    no_type = fuses_file(tmp_path, data, pqc_key_type="false", lms_verify="true")
    text = no_type.read_text().replace("pqc_key_type = false\n", "")
    no_type.write_text(text)
    rc, doc = verify(capsys, f, "--fuses", str(no_type))
    assert rc == 1 and "bundle.fuse.pqc_key_type" in failed(doc)


def test_fuse_hash_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = bundle("mldsa")
    f = tmp_path / "caliptra-fw.bin"
    f.write_bytes(data)
    other = '"' + "ab" * 48 + '"'
    rc, doc = verify(capsys, f, "--fuses", str(fuses_file(tmp_path, data, vendor_pk_hash=other)))
    assert "bundle.fuse.vendor_pk_hash" in failed(doc) and rc == 1
    rc, doc = verify(capsys, f, "--fuses", str(fuses_file(tmp_path, data, owner_pk_hash=other)))
    assert "bundle.fuse.owner_pk_hash" in failed(doc) and rc == 1


REGIONS = {
    "marker": (0, 4),
    "size": (4, 8),
    "pqc_type": (8, 9),
    "type_reserved": (9, 12),
    "ecc_descriptor": (12, 208),
    "pqc_descriptor_head": (208, 212),
    "pqc_descriptor_hashes": (212, 1748),
    "ecc_idx": (1748, 1752),
    "vendor_ecc_key": (1752, 1848),
    "pqc_idx": (1848, 1852),
    "vendor_pqc_key": (1852, 4444),
    "vendor_ecc_sig": (4444, 4540),
    "vendor_pqc_sig": (4540, 9168),
    "owner_ecc_key": (9168, 9264),
    "owner_pqc_key": (9264, 11856),
    "owner_ecc_sig": (11856, 11952),
    "owner_pqc_sig": (11952, 16580),
    "reserved": (16580, 16588),
    "header_vendor_part": (16588, 16708),
    "owner_data": (16708, 16748),
    "toc": (16748, 16956),
    "fmc": (16956, 16956 + 64),
    "runtime": (16956 + 64, 16956 + 64 + 128),
}


@pytest.mark.parametrize("pqc", PQCS)
def test_byte_flips_every_region_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pqc: str
) -> None:
    """A flip anywhere in the bundle (first, middle and last byte of every region) fails."""
    data, _ = bundle(pqc)
    fz = fuses_file(tmp_path, data)
    f = tmp_path / "m.bin"
    assert sum(b - a for a, b in REGIONS.values()) == len(data)
    for name, (lo, hi) in REGIONS.items():
        for off in sorted({lo, (lo + hi) // 2, hi - 1}):
            m = bytearray(data)
            m[off] ^= 0x01
            f.write_bytes(bytes(m))
            capsys.readouterr()
            rc = main(["verify", str(f), "--fuses", str(fz), "-q"])
            out = capsys.readouterr().out
            assert rc != 0, f"{name} byte {off} flipped: verify passed\n{out}"
    f.write_bytes(data + b"\0")
    rc, doc = verify(capsys, f, "--fuses", str(fz))
    assert rc == 1 and "bundle.trailing" in failed(doc)


@pytest.mark.parametrize("pqc", PQCS)
def test_signed_over_wrong_bytes_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pqc: str
) -> None:
    """A bundle whose vendor signatures cover the whole header (not up to owner_data), or whose
    owner PQC signature is a pre-hashed ML-DSA (the digest, not the bytes), fails."""
    ve, vp, oe, op = _signers(pqc)
    keys = BundleKeys2(
        pqc,
        [s.pub_hw for s in ve],
        [s.pub for s in vp],
        0,
        0,
        oe.pub_hw,
        op.pub,  # type: ignore[attr-defined]
    )

    good = build_cmn2(keys, ve[0], vp[0], oe, op)
    h = CMN2["header"]
    owner_tbs = good[h : h + 160]
    wrong = bytearray(good)
    # vendor ECC over SHA-384 of the whole header instead of its first 120 bytes
    wrong[4444:4540] = ve[0](hashlib.sha384(owner_tbs).digest())
    f = tmp_path / "w.bin"
    f.write_bytes(bytes(wrong))
    rc, doc = verify(capsys, f, "--fuses", str(fuses_file(tmp_path, good)))
    assert rc == 1 and "bundle.sig.vendor.ecc" in failed(doc)
    assert not indep2.ecc_verify_hw(good[1752:1848], good[h : h + 120], bytes(wrong[4444:4540]))
    wrong = bytearray(good)
    if pqc == "mldsa":
        s = op(hashlib.sha384(owner_tbs).digest())  # ML-DSA over the digest: wrong
    else:
        s = op(owner_tbs[:120])
    wrong[11952 : 11952 + len(s)] = s
    f.write_bytes(bytes(wrong))
    rc, doc = verify(capsys, f, "--fuses", str(fuses_file(tmp_path, good)))
    algo = "mldsa" if pqc == "mldsa" else "lms"
    assert rc == 1 and f"bundle.sig.owner.{algo}" in failed(doc)
    assert not indep2.pqc_verify(pqc, good[9264:11856], owner_tbs, bytes(wrong[11952:16580]))


def test_inactive_vendor_key_hash_change_breaks_fuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another key's hash in the descriptor is covered by the vendor PK hash fuse."""
    data, _ = bundle("mldsa")
    m = bytearray(data)
    m[12 + 4 + 48 * 3] ^= 0xFF  # ECC key 3's hash (not the active key 2)
    f = tmp_path / "m.bin"
    f.write_bytes(bytes(m))
    rc, doc = verify(capsys, f, "--fuses", str(fuses_file(tmp_path, data)))
    assert failed(doc) == ["bundle.fuse.vendor_pk_hash", "trust.chain"] or (
        rc == 1 and "bundle.fuse.vendor_pk_hash" in failed(doc)
    )


def test_revoked_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = bundle("mldsa")  # ECC key 2 of 4, ML-DSA key 1 of 4
    f = tmp_path / "c.bin"
    f.write_bytes(data)
    rc, doc = verify(capsys, f, "--fuses", str(fuses_file(tmp_path, data, vendor_ecc_revocation=4)))
    assert rc == 1 and "bundle.revocation.ecc" in failed(doc)
    rc, doc = verify(
        capsys, f, "--fuses", str(fuses_file(tmp_path, data, vendor_mldsa_revocation=2))
    )
    assert rc == 1 and "bundle.revocation.pqc" in failed(doc)
    rc, doc = verify(capsys, f, "--fuses", str(fuses_file(tmp_path, data, runtime_svn=4)))
    assert rc == 1 and "bundle.svn" in failed(doc)


def test_truncated_and_1x_marker_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = bundle("mldsa")
    f = tmp_path / "t.bin"
    f.write_bytes(data[:1000])
    capsys.readouterr()
    assert main(["inspect", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "16956" in err and "Traceback" not in err
    with pytest.raises(Exception, match="1.x"):
        b2.parse_bundle2(b"CMAN" + data[4:])


def test_header_struct_fields() -> None:
    data, _ = bundle("lms")
    h = CMN2["header"]
    rev, e, p, flags, toc_len, pauser = struct.unpack_from("<QIIIII", data, h)
    assert (e, p, toc_len) == (2, 1, 2)
