"""verify for Caliptra 2.x: ATM2 manifests and 2.x flash images built from the spec table by
tests/helpers/indep2.py, every signature checked independently (cryptography, hsslms,
dilithium-py + OpenSSL), flash checksums recomputed, byte flips over every region rejected,
signatures over the wrong bytes rejected, and the runtime generation named.

These files are built by the independent helper; our own create-auth-man-2x /
create-auth-flash-2x outputs, and the red-team holes of issue 14, are in
tests/test_verify2_redteam.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import indep2
import pytest
from indep2 import ATM2, EccSigner, MldsaSigner, build_atm2, build_flash2, imc_entry
from test_bundle2 import LmsSigner, bundle, fuses_file

from imgtool.cli.main import main

PQCS = ["mldsa", "lms"]
MCU = b"MCU-RUNTIME-2x" * 7  # 98 bytes: padded to 100 in the flash
SOC = [b"SOC-IMAGE-0" * 5, b"SOC-IMAGE-1!" * 4]


def _pair(pqc: str, seed: int) -> tuple[EccSigner, object]:
    return EccSigner(seed), (MldsaSigner(seed) if pqc == "mldsa" else LmsSigner())


_CACHE: dict[str, tuple[bytes, bytes, bytes]] = {}


def build(pqc: str, **kw: object) -> tuple[bytes, bytes, bytes]:
    """(bundle, manifest, flash) where the manifest's FW keys are the bundle's keys."""
    key = pqc + repr(sorted(kw.items()))
    if key in _CACHE:
        return _CACHE[key]
    cal, _ = bundle(pqc)
    # the bundle's signers: rebuild them from the bundle cache is not possible; sign the
    # manifest's pubkey signatures with the same signer objects the bundle used
    import test_bundle2

    ve, vp, oe, op = test_bundle2._SIGNERS[pqc]
    entries = [imc_entry(2, hashlib.sha384(MCU + bytes(2)).digest(), exec_bit=2)]
    for i, img in enumerate(SOC):
        entries.append(
            imc_entry(0x1000 + i, hashlib.sha384(img).digest(), component_id=i, load_stage=2)
        )
    man = build_atm2(
        pqc,
        entries,
        (ve[2], vp[1]),
        (oe, op),
        _pair(pqc, 7000),
        _pair(pqc, 8000),
        **kw,  # type: ignore[arg-type]
    )
    flash = build_flash2(
        [(0, cal), (1, man), (2, MCU)] + [(0x1000 + i, img) for i, img in enumerate(SOC)]
    )
    _CACHE[key] = (cal, man, flash)
    return _CACHE[key]


def run(capsys: pytest.CaptureFixture[str], path: Path, *args: str) -> tuple[int, dict]:
    capsys.readouterr()
    rc = main(["verify", str(path), "--json", *args])
    return rc, json.loads(capsys.readouterr().out)


def failed(doc: dict) -> list[str]:
    return [c["id"] for c in doc["checks"] if c["status"] == "FAIL"]


@pytest.mark.parametrize("pqc", PQCS)
def test_independent_checks_of_test_outputs(pqc: str) -> None:
    cal, man, flash = build(pqc)
    indep2.check_atm2_structure(man)
    cov = indep2.atm2_covered(man)
    p = 2592 if pqc == "mldsa" else 48
    for sig, key, tbs in (
        ("vnd_pub_sig", cal[1752:1848], "vendor_pub"),
        ("own_pub_sig", cal[9168:9264], "owner_pub"),
        ("vnd_imc_sig", man[20:116], "vendor_imc"),
        ("own_imc_sig", man[7432:7528], "owner_imc"),
    ):
        assert indep2.ecc_verify_hw(key, cov[tbs], indep2.atm2_field(man, f"{sig}_ecc", 96))
    for sig, key, tbs in (
        ("vnd_pub_sig", cal[1852:4444], "vendor_pub"),
        ("own_pub_sig", cal[9264:11856], "owner_pub"),
        ("vnd_imc_sig", man[116:2708], "vendor_imc"),
        ("own_imc_sig", man[7528:10120], "owner_imc"),
    ):
        slot = indep2.atm2_field(man, f"{sig}_pqc", 4628)
        assert indep2.pqc_verify(pqc, key, cov[tbs], slot), sig
    assert len(key[:p]) == p
    entries = indep2.check_flash2(flash)
    assert [e.identifier for e in entries] == [0, 1, 2, 0x1000, 0x1001]


@pytest.mark.parametrize("pqc", PQCS)
@pytest.mark.parametrize("what", ["manifest", "flash"])
def test_verify_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pqc: str, what: str
) -> None:
    cal, man, flash = build(pqc)
    (tmp_path / "caliptra-fw.bin").write_bytes(cal)
    f = tmp_path / f"{what}.bin"
    f.write_bytes(man if what == "manifest" else flash)
    args = ["--fuses", str(fuses_file(tmp_path, cal))]
    if what == "manifest":
        args += ["--caliptra-fw", str(tmp_path / "caliptra-fw.bin")]
    rc, doc = run(capsys, f, *args)
    assert rc == 0, failed(doc)
    ids = {c["id"]: c for c in doc["checks"]}
    for party in ("vendor", "owner"):
        for kind in ("pub", "imc"):
            for algo in ("ecc", pqc):
                assert ids[f"manifest.sig.{party}_{kind}.{algo}"]["status"] == "ok"
    assert "879608b9" in ids["target"]["detail"]
    assert "fw-2.1.2" in ids["manifest.imc.generation"]["detail"]
    if what == "flash":
        assert ids["flash.image.0x1000.digest"]["status"] == "ok"
        assert "padded" in ids["flash.image.0x2.digest"]["detail"]


def test_no_anchor_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, man, flash = build("mldsa")
    for data in (man, flash):
        f = tmp_path / "x.bin"
        f.write_bytes(data)
        rc, doc = run(capsys, f)
        assert rc == 1 and "trust.anchor" in failed(doc)


@pytest.mark.parametrize("pqc", PQCS)
def test_byte_flips_over_every_region(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pqc: str
) -> None:
    cal, man, flash = build(pqc)
    fz = fuses_file(tmp_path, cal)
    base = 16 + 20 * 5
    regions = {"header": (0, 16), "table": (16, base)}
    off = base
    parts = [("bundle", cal), ("manifest", man), ("mcu", MCU + bytes(2))]
    parts += [(f"soc{i}", s + bytes(-len(s) % 4)) for i, s in enumerate(SOC)]
    for name, data in parts:
        regions[name] = (off, off + len(data))
        off += len(data)
    assert off == len(flash)
    mregions = {k: v for k, v in ATM2.items() if k != "len"}
    starts = sorted(mregions.values()) + [ATM2["len"]]
    offsets: list[int] = []
    for lo, hi in regions.values():
        offsets += [lo, (lo + hi) // 2, hi - 1]
    mo = regions["manifest"][0]
    for a, b in zip(starts, starts[1:], strict=False):
        offsets += [mo + a, mo + (a + b) // 2, mo + b - 1]
    imc = mo + ATM2["imc"]
    offsets += [imc + 4 + 80 * 126 + 79]  # the last unused IMC slot
    f = tmp_path / "m.bin"
    for o in sorted(set(offsets)):
        m = bytearray(flash)
        m[o] ^= 0x10
        f.write_bytes(bytes(m))
        capsys.readouterr()
        rc = main(["verify", str(f), "--fuses", str(fz), "-q"])
        out = capsys.readouterr()
        assert rc != 0, f"byte {o} flipped: verify passed\n{out.out}"


@pytest.mark.parametrize("pqc", PQCS)
def test_signature_over_wrong_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pqc: str
) -> None:
    """Owner IMC PQC signature over the first 4 + 80 x 80 IMC bytes (a later runtime's
    range) and vendor pubkey ECC signature including the marker and size: both rejected."""
    cal, man, _ = build(pqc)
    (tmp_path / "cal.bin").write_bytes(cal)
    signer = _pair(pqc, 8000)
    imc = man[ATM2["imc"] : ATM2["imc"] + indep2.IMC_LEN]
    bad = bytearray(man)
    s = signer[1](imc[: indep2.IMC_LEN_80])  # type: ignore[operator]
    o = ATM2["own_imc_sig_pqc"]
    bad[o : o + 4628] = s + bytes(4628 - len(s))
    f = tmp_path / "m.bin"
    f.write_bytes(bytes(bad))
    rc, doc = run(
        capsys,
        f,
        "--fuses",
        str(fuses_file(tmp_path, cal)),
        "--caliptra-fw",
        str(tmp_path / "cal.bin"),
    )
    assert rc == 1 and f"manifest.sig.owner_imc.{pqc}" in failed(doc)
    assert not indep2.pqc_verify(pqc, man[7528:10120], imc, bytes(bad[o : o + 4628]))
    import test_bundle2

    ve = test_bundle2._SIGNERS[pqc][0]
    bad = bytearray(man)
    o = ATM2["vnd_pub_sig_ecc"]
    bad[o : o + 96] = ve[2](hashlib.sha384(man[0:2708]).digest())
    f.write_bytes(bytes(bad))
    rc, doc = run(
        capsys,
        f,
        "--fuses",
        str(fuses_file(tmp_path, cal)),
        "--caliptra-fw",
        str(tmp_path / "cal.bin"),
    )
    assert rc == 1 and "manifest.sig.vendor_pub.ecc" in failed(doc)


def test_flash_checksums_and_fw_toc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cal, man, flash = build("mldsa")
    m = bytearray(flash)
    m[12] ^= 1
    f = tmp_path / "f.bin"
    f.write_bytes(bytes(m))
    rc = main(["verify", str(f), "--integrity-only", "-q"])
    assert rc != 0
    # a fw_toc built from the spec: verify checks it on its own
    names = [b"caliptra-fw.bin", b"manifest.bin", b"mcu.bin", b"soc0.bin", b"soc1.bin"]
    toc = bytearray(indep2.TOC_LEN)
    toc[0:16] = (0x434F5441).to_bytes(4, "little") + flash[4:12] + bytes(4)
    for i in range(5):
        o = 16 + 20 * i
        e = bytearray(flash[o : o + 20])
        e[4:8] = (656 + 64 * i).to_bytes(4, "little")
        e[16:20] = indep2.neg_sum(bytes(e[:16])).to_bytes(4, "little")
        toc[o : o + 20] = e
        toc[656 + 64 * i : 656 + 64 * i + len(names[i])] = names[i]
    toc[12:16] = indep2.neg_sum(bytes(toc[:12])).to_bytes(4, "little")
    assert [n for _, n in indep2.check_fw_toc(bytes(toc), flash)][0] == "caliptra-fw.bin"
    t = tmp_path / "fw_toc.bin"
    t.write_bytes(bytes(toc))
    rc, doc = run(capsys, t, "--integrity-only")
    assert rc == 0, failed(doc)
    toc[656 : 656 + 64] = bytes(64)  # slot 0 without a name
    t.write_bytes(bytes(toc))
    rc, doc = run(capsys, t, "--integrity-only")
    assert rc == 1 and "toc.entries" in failed(doc)
    toc[16 + 4] ^= 1  # an entry's name offset (and so its checksum)
    t.write_bytes(bytes(toc))
    rc, doc = run(capsys, t, "--integrity-only")
    assert rc == 1 and "toc.entries" in failed(doc)


def test_keygen_mldsa_round_trips_through_other_implementations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """keygen --algo mldsa: raw 2592/4896-byte files; dilithium-py signs with the expanded
    private key file and OpenSSL verifies with the public key file; the tool's signature
    verifies with OpenSSL and dilithium-py; a different message or key does not verify."""
    from cryptography.hazmat.primitives.asymmetric import mldsa as ossl
    from dilithium_py.ml_dsa import ML_DSA_87

    from imgtool.keys import mldsa

    assert main(["keygen", "--algo", "mldsa", "--out", str(tmp_path / "k")]) == 0
    priv = (tmp_path / "k-prvk.bin").read_bytes()
    pub = (tmp_path / "k-pubk.bin").read_bytes()
    assert (len(priv), len(pub)) == (4896, 2592)
    msg = b"covered bytes of an ATM2 manifest" * 30
    sig = bytes(ML_DSA_87.sign(priv, msg, deterministic=True))
    ossl.MLDSA87PublicKey.from_public_bytes(pub).verify(sig, msg)  # raises if invalid
    assert indep2.mldsa_verify_openssl(pub, msg, sig + b"\0")
    ours = mldsa.MldsaPrivateKey.load(tmp_path / "k-prvk.bin").sign(msg)
    assert ours == sig  # deterministic: the same signature as dilithium-py's deterministic mode
    assert indep2.pqc_verify("mldsa", pub, msg, ours + b"\0")
    assert not indep2.pqc_verify("mldsa", pub, msg + b"!", ours + b"\0")
    other = ossl.MLDSA87PrivateKey.from_seed_bytes(bytes(32)).public_key().public_bytes_raw()
    assert not indep2.mldsa_verify_openssl(other, msg, ours + b"\0")
